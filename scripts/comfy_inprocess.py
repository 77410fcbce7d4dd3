"""ComfyUI in this process, for tests and benchmarks (importable without ComfyUI).

Everything that touches ComfyUI imports it lazily, inside functions, after ``start_comfy`` has
put ComfyUI on ``sys.path`` and imported it in the order ComfyUI needs (see ``start_comfy``).

  * ``start_comfy(comfy_dir, tmp_dir)`` -> ``ComfyRuntime``: in-process ComfyUI on CPU, started
    the way main.py starts it (a real ``PromptServer``, never listening, that records every
    message instead of sending it; the extra nodes; one ``PromptExecutor`` for the session, so
    its node cache persists between prompts). Version differences: scripts/comfy_versions.py.
  * ``ComfyRuntime.load_pack(path)``: register a custom node pack; raises ``PackLoadError`` with
    ComfyUI's traceback when it does not import (ComfyUI itself only logs a warning).
  * ``ComfyRuntime.run_prompt(prompt, outputs=None)`` -> ``PromptResult`` (a dict of node outputs
    with ``.ui``, ``.executed``, ``.cached``, ``.messages``).
  * ``pack_module("nodes/pipeline.py")``: a module of the loaded pack.

Random-weight models to run it with: scripts/tiny_models.py.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
import uuid
from pathlib import Path

from scripts import comfy_versions

REPO_ROOT = Path(__file__).resolve().parent.parent

# Top-level module names that ComfyUI owns. If one of them is already imported from elsewhere
# (e.g. this repo's own ``nodes/`` package imported as a top-level ``nodes``), ComfyUI's imports
# would get the wrong module.
_COMFY_TOPLEVEL = ("nodes", "execution", "server", "utils", "app", "folder_paths", "comfy",
                   "comfy_api", "comfy_execution", "comfy_extras", "comfy_config", "node_helpers",
                   "latent_preview", "comfyui_version", "protocol", "middleware", "api_server")


# ============================================================================ in-process ComfyUI
class PackLoadError(RuntimeError):
    """The custom node pack did not import or registered no node."""


class PromptError(RuntimeError):
    """A prompt failed validation or execution; ``.details`` holds ComfyUI's error data."""

    def __init__(self, message: str, details=None):
        super().__init__(message)
        self.details = details


class PromptResult(dict):
    """Outputs of one prompt run: ``result[node_id]`` is a tuple with one value per output slot.

    ComfyUI stores each slot as a list (one item unless the node outputs a list); a one-item list
    is unwrapped, so ``result["3"][0]`` is e.g. the LATENT dict of node "3".
    Attributes:
      ui       {node_id: ui dict} as in /history (what output nodes show: images, text, ...)
      executed node ids whose code ran in this run, in execution order
      cached   node ids taken from the executor's cache (nothing recomputed)
      messages every (event, data) the executor sent during this run
      raw      {node_id: execution.CacheEntry} (``.outputs`` = per-slot lists, ``.ui``)
    """

    def __init__(self, prompt_id: str):
        super().__init__()
        self.prompt_id = prompt_id
        self.ui: dict = {}
        self.executed: list[str] = []
        self.cached: list[str] = []
        self.messages: list[tuple[str, object]] = []
        self.raw: dict = {}


class ComfyRuntime:
    """ComfyUI imported in this process (CPU), with one PromptExecutor for the whole session."""

    CLIENT_ID = "scsa-tests"

    def __init__(self, comfy_dir: Path, tmp_dir: Path, server):
        self.comfy_dir = Path(comfy_dir)
        self.tmp_dir = Path(tmp_dir)
        import comfy.model_management
        import comfyui_version
        import execution
        import folder_paths
        import nodes
        self.nodes = nodes
        self.execution = execution
        self.folder_paths = folder_paths
        self.model_management = comfy.model_management
        self.version = comfyui_version.__version__
        self.server = server
        self.executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                                 cache_args=comfy_versions.classic_cache_args())
        self.loaded_packs: dict[str, list[str]] = {}
        self.last_result: PromptResult | None = None

    # -- nodes -------------------------------------------------------------------------------
    def node_class(self, class_type: str):
        """The registered class of a node type (V1 class or V3 io.ComfyNode subclass)."""
        try:
            return self.nodes.NODE_CLASS_MAPPINGS[class_type]
        except KeyError:
            raise KeyError(f"node {class_type!r} is not registered "
                           f"({len(self.nodes.NODE_CLASS_MAPPINGS)} nodes are)") from None

    def load_pack(self, pack_dir: str | os.PathLike) -> list[str]:
        """Register a custom node pack (folder with __init__.py) like ComfyUI does at start-up.

        Returns the node ids it added. Raises PackLoadError with ComfyUI's log (it contains the
        import traceback) when loading fails or registers nothing.
        """
        pack_dir = str(Path(pack_dir).resolve())
        if pack_dir in self.loaded_packs:
            return self.loaded_packs[pack_dir]
        if not os.path.isfile(os.path.join(pack_dir, "__init__.py")):
            raise PackLoadError(f"{pack_dir} has no __init__.py: ComfyUI cannot load it as a node pack")
        before = set(self.nodes.NODE_CLASS_MAPPINGS)
        records: list[logging.LogRecord] = []

        class _Grab(logging.Handler):
            def emit(self, record):
                records.append(record)

        h = _Grab(level=logging.DEBUG)
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(h)
        root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
        try:
            ok = asyncio.run(self.nodes.load_custom_node(pack_dir, module_parent="custom_nodes"))
        finally:
            root.removeHandler(h)
            root.setLevel(old_level)
        added = sorted(set(self.nodes.NODE_CLASS_MAPPINGS) - before)
        log = "\n".join(r.getMessage() for r in records if r.levelno >= logging.WARNING)
        if not ok:
            raise PackLoadError(f"ComfyUI could not load the node pack at {pack_dir}:\n{log}")
        if not added:
            raise PackLoadError(f"the node pack at {pack_dir} loaded but registered no node "
                                f"(all ids already taken, or an empty node list)\n{log}")
        self.loaded_packs[pack_dir] = added
        return added

    # -- models ------------------------------------------------------------------------------
    def add_models_dir(self, path: str | os.PathLike, folders=("checkpoints", "vae")) -> None:
        """Make ComfyUI's loaders (CheckpointLoaderSimple, VAELoader, ...) see files in ``path``."""
        for f in folders:
            self.folder_paths.add_model_folder_path(f, str(path))

    # -- execution ---------------------------------------------------------------------------
    def validate(self, prompt: dict, outputs=None, prompt_id: str = "validate") -> list[str]:
        """Validate like POST /prompt. Returns the node ids to execute; raises PromptError."""
        ex = self.execution
        if outputs is None:
            valid, err, good, node_errors = asyncio.run(ex.validate_prompt(prompt_id, prompt, None))
            if not valid:
                raise PromptError(f"prompt failed validation: {err.get('message')}: "
                                  f"{err.get('details')}\nnode errors: {node_errors}",
                                  {"error": err, "node_errors": node_errors})
            return list(good)
        # Explicit targets (need not be output nodes): validate each one and its inputs.
        outputs = [str(o) for o in outputs]
        for o in outputs:
            if o not in prompt:
                raise PromptError(f"output node {o!r} is not in the prompt")
        for x, node in prompt.items():
            if "class_type" not in node:
                raise PromptError(f"node {x!r} has no class_type")
            if node["class_type"] not in self.nodes.NODE_CLASS_MAPPINGS:
                raise PromptError(f"node {x!r}: type {node['class_type']!r} does not exist")
        validated: dict = {}
        errors = {}
        for o in outputs:
            res = asyncio.run(ex.validate_inputs(prompt_id, prompt, o, validated))
            if res[0] is not True:
                errors[o] = res[1]
        for nid, res in validated.items():
            if res[0] is not True and res[1]:
                errors.setdefault(nid, res[1])
        if errors:
            raise PromptError(f"prompt failed validation: {errors}", {"node_errors": errors})
        return outputs

    def run_prompt(self, prompt: dict, outputs=None, prompt_id: str | None = None) -> PromptResult:
        """Validate and execute an API-format prompt with the session's PromptExecutor.

        ``outputs``: node ids to execute (any nodes, not only output nodes); default: every
        output node, exactly like the server. Returns a PromptResult; raises PromptError with
        ComfyUI's node errors / exception and traceback when validation or execution fails.
        Unchanged nodes of the previous prompt are served from the executor's cache (see
        ``PromptResult.cached``); ``reset_cache()`` forgets it.
        """
        prompt = {str(k): v for k, v in prompt.items()}
        prompt_id = prompt_id or uuid.uuid4().hex
        targets = self.validate(prompt, outputs, prompt_id)
        srv = self.server
        start = len(srv.messages_sent)
        self.executor.execute(prompt, prompt_id, {"client_id": self.CLIENT_ID}, targets)
        msgs = [m for m in srv.messages_sent[start:]
                if not isinstance(m[1], dict) or m[1].get("prompt_id", prompt_id) == prompt_id]
        result = PromptResult(prompt_id)
        result.messages = msgs
        for ev, data in msgs:
            if ev == "executing" and isinstance(data, dict) and data.get("node") is not None:
                result.executed.append(str(data["node"]))
            elif ev == "execution_cached" and isinstance(data, dict):
                result.cached.extend(str(n) for n in data.get("nodes", []))
        self.last_result = result
        if not self.executor.success:
            err = next((d for ev, d in msgs if ev in ("execution_error", "execution_interrupted")), None)
            if err:
                tb = "".join(err.get("traceback") or [])
                raise PromptError(f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
                                  f"{err.get('exception_type')}: {err.get('exception_message')}\n{tb}",
                                  err)
            raise PromptError(f"prompt {prompt_id} failed: {msgs}", msgs)
        result.ui = dict(self.executor.history_result.get("outputs", {}))
        for nid in prompt:
            entry = comfy_versions.cached_node_output(self.executor, nid)
            if entry is None:
                continue
            result.raw[nid] = entry
            result[nid] = tuple(v[0] if isinstance(v, list) and len(v) == 1 else v
                                for v in (entry.outputs or []))
        return result

    def reset_cache(self) -> None:
        """Forget every cached node output (a fresh executor cache)."""
        self.executor.reset()


def _stash_conflicting_modules(comfy_dir: Path) -> None:
    """Drop already-imported top-level modules that shadow ComfyUI's (e.g. this repo's nodes/)."""
    cd = str(comfy_dir.resolve())
    for name in list(sys.modules):
        top = name.split(".")[0]
        if top not in _COMFY_TOPLEVEL:
            continue
        mod = sys.modules[name]
        f = getattr(mod, "__file__", None) or ""
        paths = list(getattr(mod, "__path__", []) or [])
        where = [str(Path(p).resolve()) for p in ([f] if f else []) + paths]
        if where and not any(w.startswith(cd + os.sep) or w == cd for w in where):
            del sys.modules[name]


def start_comfy(comfy_dir: str | os.PathLike, tmp_dir: str | os.PathLike) -> ComfyRuntime:
    """Import ComfyUI from ``comfy_dir`` into this process, CPU only, dirs under ``tmp_dir``.

    Follows the order that works: cli_args.cpu before model_management, ``utils.extra_config``
    before ``nodes`` (importing ``nodes`` puts ComfyUI's ``comfy/`` first on ``sys.path``, after
    which ``utils`` would be ``comfy/utils.py``), then ``init_extra_nodes`` without custom/API nodes.
    """
    comfy_dir = Path(comfy_dir).resolve()
    tmp_dir = Path(tmp_dir)
    for sub in ("output", "temp", "input", "user"):
        (tmp_dir / sub).mkdir(parents=True, exist_ok=True)
    _stash_conflicting_modules(comfy_dir)
    if str(comfy_dir) in sys.path:
        sys.path.remove(str(comfy_dir))
    sys.path.insert(0, str(comfy_dir))

    import comfy.options  # noqa: F401  (argument parsing stays off: args are ComfyUI's defaults)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True   # before anything imports comfy.model_management
    # torch's SDPA instead of ComfyUI's CPU default (sub-quadratic attention): several times
    # faster for the full-size oracle UNet, and the same function ComfyUI uses on NVIDIA GPUs.
    comfy.cli_args.args.use_pytorch_cross_attention = True
    import folder_paths
    folder_paths.set_output_directory(str(tmp_dir / "output"))
    folder_paths.set_temp_directory(str(tmp_dir / "temp"))
    folder_paths.set_input_directory(str(tmp_dir / "input"))
    folder_paths.set_user_directory(str(tmp_dir / "user"))
    import utils.extra_config  # noqa: F401  MUST precede `import nodes`
    import nodes
    import comfy.model_management as mm
    if mm.get_torch_device().type != "cpu":
        raise RuntimeError(f"ComfyUI picked {mm.get_torch_device()} although args.cpu was set: "
                           "comfy.model_management was imported before start_comfy()")
    # As main.py: the PromptServer exists before the extra nodes load (some register routes or
    # read PromptServer.instance at load time).
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = _recording_prompt_server(loop)
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    return ComfyRuntime(comfy_dir, tmp_dir, server)


def _recording_prompt_server(loop):
    """ComfyUI's own PromptServer (never started, so nothing listens) that records every message
    as ``(event, data)`` in ``.messages_sent`` instead of queueing it for websocket clients."""
    import server

    class RecordingPromptServer(server.PromptServer):
        def __init__(self, loop):
            super().__init__(loop)
            self.messages_sent: list[tuple[str, object]] = []

        def send_sync(self, event, data, sid=None):
            self.messages_sent.append((event, data))

    return RecordingPromptServer(loop)


def pack_module(relative: str):
    """The pack's module ``relative`` (e.g. ``"nodes/pipeline.py"``) as ComfyUI imported it
    (under the checkout's folder name); the pack must be loaded (``ComfyRuntime.load_pack``)."""
    def file_is(module, path: Path) -> bool:
        return bool(getattr(module, "__file__", None)) and Path(module.__file__).resolve() == path

    modules = list(sys.modules.values())
    # Pure tests import scsa_core under its own name too; only ComfyUI's copy (named under the
    # pack's package) is what the nodes call, so patching the other one would change nothing.
    package = next((module.__name__ for module in modules if file_is(module, REPO_ROOT.resolve() / "__init__.py")), None)
    target = (REPO_ROOT / relative).resolve()
    for module in modules:
        if package is not None and module.__name__.startswith(package + ".") and file_is(module, target):
            return module
    raise LookupError(f"{relative} is not loaded: load the pack first (the tests' `comfy` fixture does)")


def format_exc() -> str:
    return traceback.format_exc()
