"""Access to the pack's modules as ComfyUI imported them (under the checkout's folder name)."""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def pack_module(relative: str):
    """The loaded module for ``relative`` (e.g. ``"nodes/pipeline.py"``); needs the ``comfy`` fixture."""
    target = (REPO_ROOT / relative).resolve()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve() == target:
            return module
    raise LookupError(f"{relative} is not loaded: use the `comfy` fixture, which loads the pack")
