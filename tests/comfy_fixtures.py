"""Helpers behind the ComfyUI fixtures in conftest.py (importable without ComfyUI).

Everything that touches ComfyUI imports it lazily, inside functions, after ``start_comfy`` has
put ComfyUI on ``sys.path`` in the order ComfyUI needs (see shared/docs/comfyui_notes.md §5.2).

Contents
  * ``start_comfy(comfy_dir, tmp_dir)`` -> ``ComfyRuntime``: in-process ComfyUI on CPU, started
    the way main.py starts it (a real ``PromptServer``, never listening, that records every
    message instead of sending it; the extra nodes; one ``PromptExecutor`` for the session, so
    its node cache persists between prompts). Version differences: tests/comfy_versions.py.
  * ``ComfyRuntime.load_pack(path)``: register a custom node pack; raises ``PackLoadError`` with
    ComfyUI's traceback when it does not import (ComfyUI itself only logs a warning).
  * ``ComfyRuntime.run_prompt(prompt, outputs=None)`` -> ``PromptResult`` (a dict of node outputs
    with ``.ui``, ``.executed``, ``.cached``, ``.messages``).
  * Tiny random-weight models built from ComfyUI's own classes, initialised explicitly with a
    seeded, order-independent normal init (ComfyUI's ops leave weights uninitialised):
    ``build_tiny_sd15_patcher``, ``build_tiny_vae``, ``write_tiny_checkpoint``.
  * ``build_oracle_checkpoint``: shared/oracle/make_checkpoint.py into .cache/models/, once.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
import time
import traceback
import uuid
import zlib
from pathlib import Path

import comfy_versions

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_CACHE = REPO_ROOT / ".cache" / "models"

# Bump when the tiny checkpoint's layout or init changes: the file name carries it, so a stale
# cached file is never reused.
TINY_CKPT_VERSION = 1
ORACLE_SEED = 20250601
ORACLE_CKPT_NAME = f"sd15_random_s{ORACLE_SEED}_fp16.safetensors"

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

    Follows the order that works (comfyui_notes.md §5.2): cli_args.cpu before model_management,
    ``utils.extra_config`` before ``nodes``, then ``init_extra_nodes`` without custom/API nodes.
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


# ==================================================================================== weights
def _key_seed(seed: int, key: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2 ** 63)


def init_weights_(module, seed: int = 0, prefix: str = ""):
    """Seeded normal init of every parameter, independent of module order; returns ``module``.

    Each tensor gets its own generator seeded from (seed, crc32(name)) (as in
    shared/oracle/make_checkpoint.py): weights with >= 2 dims N(0, 1/fan_in), embeddings N(0, 1),
    norm weights 1 + N(0, 0.1^2), other 1-d params (biases, norm biases) N(0, 0.05^2); scalars
    named ``vae_scale``/``vae_shift`` (TAESD) are set to 1 and 0. Non-zero "zero_module" layers
    make outputs input-dependent and let every attention layer matter.
    """
    import torch
    with torch.no_grad():
        for name, p in module.named_parameters():
            full = prefix + name
            if name.endswith("vae_scale"):
                p.fill_(1.0)
                continue
            if name.endswith("vae_shift"):
                p.fill_(0.0)
                continue
            g = torch.Generator(device="cpu").manual_seed(_key_seed(seed, full))
            z = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
            low = name.lower()
            if "embedding" in low and p.ndim == 2:
                v = z
            elif p.ndim >= 2:
                v = z / math.sqrt(max(1, math.prod(p.shape[1:])))
            elif p.ndim == 0:
                v = z * 0.05
            elif "norm" in low and name.endswith("weight"):
                v = 1.0 + 0.1 * z
            else:
                v = 0.05 * z
            p.copy_(v.to(p.dtype))
    return module


# SD1.5 layout (comfy format: transformer_depth per input res block, transformer_depth_output
# per output block, deepest first), at any width.
def sd15_unet_config(model_channels=32, context_dim=768, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                     attention_levels=(0, 1, 2), middle_attention=True):
    levels = len(channel_mult)
    td = [1 if lvl in attention_levels else 0 for lvl in range(levels) for _ in range(num_res_blocks)]
    tdo = [1 if lvl in attention_levels else 0 for lvl in range(levels) for _ in range(num_res_blocks + 1)]
    return dict(in_channels=4, out_channels=4, model_channels=model_channels,
                num_res_blocks=[num_res_blocks] * levels, channel_mult=list(channel_mult),
                transformer_depth=td, transformer_depth_output=tdo,
                transformer_depth_middle=1 if middle_attention else -1, context_dim=context_dim,
                use_linear_in_transformer=False, adm_in_channels=None, use_temporal_attention=False,
                use_temporal_resblock=False, use_checkpoint=False, image_size=32,
                use_spatial_transformer=True, legacy=False)


# Smallest UNet that ComfyUI's detection still calls SD15 (model_channels 320 and context 768 are
# checked; a transformer in an input block is needed for context_dim): one level, one res block,
# no middle block; attention in input block 1 and output blocks 0 and 1.
TINY_CKPT_UNET_CONFIG = dict(in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                             channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1],
                             transformer_depth_middle=-2, context_dim=768,
                             use_linear_in_transformer=False, adm_in_channels=None,
                             use_temporal_attention=False, use_temporal_resblock=False,
                             use_checkpoint=False, image_size=32, use_spatial_transformer=True,
                             legacy=False)


def build_sd15_model(unet_config: dict, seed: int = 0):
    """comfy.model_base.BaseModel (EPS, ModelSamplingDiscrete, SD15 latent format), fp32, CPU."""
    import torch
    import comfy.supported_models
    mc = comfy.supported_models.SD15(unet_config)
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({})
    init_weights_(model.diffusion_model, seed, prefix="model.diffusion_model.")
    model.eval()
    return model


def build_tiny_sd15_patcher(seed: int = 0, model_channels: int = 32, context_dim: int = 768):
    """ModelPatcher around a random-init SD1.5-structured UNet (4 levels, 2 res blocks, attention
    at levels 0-2 and middle, 8 heads) of width ``model_channels``: output blocks 0..11 and the
    attention layers ("input",1/2/4/5/7/8), ("middle",0), ("output",3..11) exist as in SD1.5.
    Default: 10.4 M params; a 16x16 latent step takes ~0.1 s on 2 CPU cores."""
    import comfy.model_management as mm
    import comfy.model_patcher
    model = build_sd15_model(sd15_unet_config(model_channels=model_channels, context_dim=context_dim), seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build_taesd(seed: int = 0):
    """comfy.taesd.taesd.TAESD(latent_channels=4), random-init (vae_scale 1, vae_shift 0)."""
    import comfy.taesd.taesd
    t = comfy.taesd.taesd.TAESD(latent_channels=4)
    init_weights_(t, seed, prefix="taesd.")
    return t.eval()


def build_tiny_vae(seed: int = 0):
    """comfy.sd.VAE around a random-init TAESD: 2.4 M params, encodes [B,H,W,3] -> [B,4,H/8,W/8]."""
    import comfy.sd
    return comfy.sd.VAE(sd=build_taesd(seed).state_dict())


def tiny_checkpoint_name(with_clip: bool = True, seed: int = 0) -> str:
    return f"sd15_tiny_v{TINY_CKPT_VERSION}_s{seed}{'' if with_clip else '_noclip'}.safetensors"


def build_tiny_checkpoint_state_dict(with_clip: bool = True, seed: int = 0) -> dict:
    """A single-file SD1.x checkpoint state dict (fp16): tiny UNet + TAESD VAE (+ CLIP-L)."""
    import torch
    sd = {}
    model = build_sd15_model(TINY_CKPT_UNET_CONFIG, seed)
    for k, v in model.diffusion_model.state_dict().items():
        sd["model.diffusion_model." + k] = v
    for k, v in build_taesd(seed).state_dict().items():
        sd["first_stage_model." + k] = v
    if with_clip:
        # The text encoder's size is fixed by comfy/sd1_clip_config.json (CLIP ViT-L/14 text,
        # 123 M params): a smaller one does not load, and missing keys would stay uninitialised.
        import comfy.sd1_clip
        clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
        init_weights_(clip, seed, prefix="clip.")
        for k, v in clip.state_dict().items():
            if k.endswith("logit_scale") or k.endswith("text_projection.weight"):
                continue
            assert k.startswith("clip_l."), k
            sd["cond_stage_model." + k[len("clip_l."):]] = v
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = \
            torch.arange(77, dtype=torch.int64)[None]
    return {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def _atomic_write_safetensors(sd: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(sd, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_tiny_checkpoint(path: str | os.PathLike | None = None, with_clip: bool = True,
                          seed: int = 0, force: bool = False) -> Path:
    """Write (once) a tiny SD1.5 checkpoint that CheckpointLoaderSimple loads and detects as SD15.

    UNet: 320 channels, one level (detection checks only model_channels 320 and context 768);
    VAE: TAESD keys under first_stage_model.; CLIP: full CLIP-L text encoder (random) unless
    ``with_clip=False`` (then the loader returns clip=None). fp16, deterministic for a given torch.
    Default location: .cache/models/<tiny_checkpoint_name()>; reused when present.
    """
    path = Path(path) if path else MODELS_CACHE / tiny_checkpoint_name(with_clip, seed)
    if path.is_file() and not force:
        return path
    sd = build_tiny_checkpoint_state_dict(with_clip=with_clip, seed=seed)
    import torch
    _atomic_write_safetensors(sd, path, metadata={
        "generator": "tests/comfy_fixtures.py write_tiny_checkpoint",
        "version": str(TINY_CKPT_VERSION), "seed": str(seed), "torch": torch.__version__})
    return path


# ===================================================================================== oracle
def oracle_dir() -> Path:
    """shared/oracle: $SCSA_ORACLE_DIR, else <repo>/../shared/oracle (may not exist)."""
    env = os.environ.get("SCSA_ORACLE_DIR", "").strip()
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared" / "oracle").resolve()


def build_oracle_checkpoint(oracle: Path | None = None, out_dir: Path | None = None,
                            python: str | None = None, timeout: float = 1800) -> Path:
    """Run oracle/make_checkpoint.py (random-weight SD1.x, 2.1 GB, ~30 s) into .cache/models/
    unless the file is already there. Written to a temp name and renamed, so an interrupted
    build never leaves a truncated checkpoint behind."""
    oracle = Path(oracle) if oracle else oracle_dir()
    out_dir = Path(out_dir) if out_dir else MODELS_CACHE
    out = out_dir / ORACLE_CKPT_NAME
    if out.is_file():
        return out
    script = oracle / "make_checkpoint.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{ORACLE_CKPT_NAME}.{os.getpid()}.tmp.safetensors"
    try:
        proc = subprocess.run([python or sys.executable, str(script), "--out", str(tmp),
                               "--seed", str(ORACLE_SEED), "--dtype", "fp16"],
                              capture_output=True, text=True, timeout=timeout, cwd=str(out_dir))
        if proc.returncode != 0:
            raise RuntimeError(f"make_checkpoint.py failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def timed(fn, *a, **kw):
    """(result, seconds)"""
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t


def format_exc() -> str:
    return traceback.format_exc()
