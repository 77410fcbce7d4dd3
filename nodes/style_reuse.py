"""A style's inversion, kept for the next content: the in-process cache and saved style files.

An SCSA run inverts the content and every style image. When only the content changes between
two prompts (or a batch of contents meets one style), the style's inversion is the same, so
:func:`pipeline.invert <.pipeline.invert>` takes it from here instead of paying for it again:

* :class:`StyleCache` (one per process, :data:`STYLE_CACHE`) holds the last few style
  inversions, keyed on everything they depend on: the model's weights (the same
  ``BaseModel``, held weakly, and ModelPatcher's ``patches_uuid``, which changes with every
  LoRA or weight patch), every other patch on the model (compared by identity), the
  conditioning, the latents, steps, blocks and storage. A key that cannot be checked is a miss.
  It is bounded in entries and in the bytes of stored features.
* :func:`save_style` / :func:`load_style` write a style's inversion to a safetensors file and
  read it back (the format below; the file is checked from its header before any tensor is
  read, every problem is a :class:`StyleFileError`). A loaded style is checked against the model it meets
  (steps, blocks, latent channels, and one model call on its trajectory: another model, or
  another conditioning, predicts another noise) before it is used.

A style travels between nodes attached to its LATENT dict (:data:`SAVED_STYLE_KEY`), so a
loaded style plugs into SCSAInvert's ordinary ``style`` socket; SCSAInvert uses it only when the
latent it is attached to is still the style's clean latent.
"""
from __future__ import annotations

import json
import logging
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..scsa_core.features import FeatureBank
from ..scsa_core.schedules import inversion_schedule
from .safetensors_file import FLOAT_DTYPES, Header, SafetensorsFileError, read_header, write_new

log = logging.getLogger("scsa")

SAVED_STYLE_KEY = "scsa_style_inversion"
MISSING_MAP_KEY = "scsa_missing_map"    # on the map LATENT of a style saved without one
# Another model, or another prompt, changes the predicted noise by tens of percent; fp16 against
# fp32 on another device by a fraction of one percent.
MODEL_CHECK_TOLERANCE = 0.05


@dataclass(frozen=True)
class InvertedStyle:
    """One style image's inversion: what a further content needs from it.

    latent / map_latent: ``[1, C, h, w]`` the clean style and map latents (as ComfyUI's LATENT
    holds them, unscaled), map None without semantic maps. trajectory: ``t -> {"style": x_t,
    "style_map": x_t}`` in the model's scaled space. bank: the recorded block inputs of streams
    "style" / "style_map", None with recompute storage. parameterisation: the inversion's kind
    ("ddim": keys are DDIM timesteps; "flow": keys are step indices), with its refine_steps.
    """
    latent: torch.Tensor
    map_latent: torch.Tensor | None
    trajectory: dict
    bank: FeatureBank | None
    steps: int
    blocks: frozenset
    storage: str
    parameterisation: str = "ddim"
    refine_steps: int = 0

    @property
    def feature_bytes(self) -> int:
        return 0 if self.bank is None else self.bank.nbytes

    def matches(self, latent: torch.Tensor, map_latent: torch.Tensor | None) -> bool:
        """True when ``latent`` / ``map_latent`` are exactly this style's clean latents."""
        same_map = (map_latent is None) == (self.map_latent is None) and \
            (map_latent is None or _same_tensor(map_latent, self.map_latent))
        return _same_tensor(latent, self.latent) and same_map


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())


def saved_style_of(latent: dict | None, samples: torch.Tensor | None, map_samples: torch.Tensor | None,
                   name: str) -> InvertedStyle | None:
    """The saved inversion a LATENT from Load Style Inversion carries, when it still belongs to
    these latents (a node between them that changed the latent makes it a plain latent)."""
    attached = latent.get(SAVED_STYLE_KEY) if isinstance(latent, dict) else None
    if attached is None:
        return None
    if attached.matches(samples, map_samples):
        return attached
    log.warning("SCSAInvert: %s comes from Load Style Inversion but was changed since (or its map latent is "
                "another one); inverting it again.", name)
    return None


# --------------------------------------------------------------------------- model identity
def _leaves(value, path=""):
    """Every non-container object in ``value`` (model_options, object_patches) with its path."""
    if isinstance(value, dict):
        for key in sorted(value, key=repr):
            yield from _leaves(value[key], f"{path}/{key!r}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}/{index}")
    else:
        yield path, value


def _reference(value):
    """A weak reference to ``value``, or None when it cannot have one."""
    try:
        return weakref.WeakMethod(value) if hasattr(value, "__self__") and hasattr(value, "__func__") \
            else weakref.ref(value)
    except TypeError:
        return None


_PLAIN = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class ModelState:
    """What a model computes with, held weakly: its weights (``patches_uuid`` of its
    ``BaseModel``) and every patch and option object on it (identity)."""
    patches_uuid: object
    plain: tuple          # (path, value) of plain options
    objects: tuple        # (path, id, weak reference) of the other option objects

    @classmethod
    def of(cls, model_patcher) -> "ModelState | None":
        """None when some option object cannot be referenced weakly (then nothing is cached)."""
        plain, objects = [], []
        options = {"model_options": model_patcher.model_options,
                   "object_patches": getattr(model_patcher, "object_patches", {})}
        for path, value in _leaves(options):
            if isinstance(value, _PLAIN):
                plain.append((path, value))
                continue
            reference = _reference(value)
            if reference is None:
                return None
            objects.append((path, id(value), reference))
        return cls(getattr(model_patcher, "patches_uuid", None), tuple(plain), tuple(objects))

    def same_as(self, other: "ModelState") -> bool:
        if self.patches_uuid != other.patches_uuid or self.plain != other.plain:
            return False
        if len(self.objects) != len(other.objects):
            return False
        for (path, ident, reference), (other_path, other_ident, _) in zip(self.objects, other.objects):
            if path != other_path or ident != other_ident or reference() is None:
                return False
        return True


# ------------------------------------------------------------------------------ the cache
@dataclass(frozen=True)
class _Entry:
    model: weakref.ref          # the BaseModel
    state: ModelState
    conditioning: tuple         # the conditioning tensors (compared by value)
    storage: tuple              # (storage, device, dtype)
    style: InvertedStyle


def _conditioning_tensors(conditioning) -> tuple:
    return tuple(entry[0].detach().cpu() for entry in conditioning)


class StyleCache:
    """The last few style inversions of this process (least recently used goes first).

    Bounded by ``max_entries`` and by ``max_feature_bytes`` of stored features (recompute
    storage keeps only latents: a few MB). Entries of a model that is gone are dropped as soon
    as the model is collected, so ComfyUI's "free model and node cache" (which drops the loaded
    checkpoint and collects garbage) also frees the features held here. Entries whose patch
    objects are gone never match and are dropped on the next store.
    """

    def __init__(self, max_entries: int = 4, max_feature_bytes: int | None = None):
        self.max_entries = max_entries
        # None: a quarter of the memory of the device that holds the features, at most 4 GB
        # (held features stay allocated between prompts, so they must leave the sampler room).
        self.max_feature_bytes = max_feature_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0

    def _key(self, model_patcher, conditioning, storage: tuple):
        state = ModelState.of(model_patcher)
        return None if state is None else (model_patcher.model, state, _conditioning_tensors(conditioning), storage)

    def get(self, model_patcher, conditioning, latent, map_latent, steps: int, blocks: frozenset,
            storage: tuple) -> InvertedStyle | None:
        key = self._key(model_patcher, conditioning, storage)
        if key is not None:
            model, state, condition, storage = key
            for number, entry in self._entries.items():
                style = entry.style
                if (entry.model() is model and entry.storage == storage and style.steps == steps
                        and style.blocks == blocks and entry.state.same_as(state)
                        and len(entry.conditioning) == len(condition)
                        and all(_same_tensor(a, b) for a, b in zip(entry.conditioning, condition))
                        and style.matches(latent, map_latent)):
                    if number in self._entries:   # unless _model_gone dropped it meanwhile
                        self._entries.move_to_end(number)
                    return style
        return None

    def _budget(self, style: InvertedStyle) -> int:
        if self.max_feature_bytes is not None:
            return self.max_feature_bytes
        if style.bank is None:
            return 4 << 30
        import comfy.model_management
        return min(4 << 30, comfy.model_management.get_total_memory(style.bank.device) // 4)

    def put(self, model_patcher, conditioning, storage: tuple, style: InvertedStyle) -> None:
        key = self._key(model_patcher, conditioning, storage)
        budget = self._budget(style)
        if key is None or style.feature_bytes > budget:
            return
        model, state, condition, storage = key
        self._entries[self._next] = _Entry(weakref.ref(model, self._model_gone), state, condition, storage, style)
        self._next += 1
        for number in [n for n, e in self._entries.items() if e.model() is None]:
            self._entries.pop(number, None)
        while len(self._entries) > self.max_entries or \
                sum(e.style.feature_bytes for e in self._entries.values()) > budget:
            self._entries.popitem(last=False)

    def _model_gone(self, reference: weakref.ref) -> None:
        # A weakref callback runs inside garbage collection, possibly while get() or put() walks
        # the entries: rebind a filtered copy instead of deleting from the dict being walked.
        self._entries = OrderedDict((n, e) for n, e in self._entries.items() if e.model is not reference)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


STYLE_CACHE = StyleCache()


# ------------------------------------------------------------------------------ the files
# A style file is a safetensors file (read with bounded reads and checked before any tensor is
# read: safetensors_file.read_header) whose metadata "format" names its layout and version.
# Version 1 (its layout is frozen in tests/test_style_files.py's own writer of it):
#   metadata  steps, storage, blocks (JSON list of "name.number.index"), feature_dtype ("" or
#             float16 / bfloat16 / float32)
#   latent [1, C, h, w], map_latent [1, C, h, w] (SCSA styles), map_image uint8 [H, W, 3]
#   trajectory.<t>.<style|style_map>   [1, C, h, w] at every timestep of the inversion
#   features.<t>.<name.number.index>.<style|style_map>   [1, tokens, channels] ('memory' and
#             'offload' storage), grid.<name.number.index>.<stream>   int64 [2] (their token grid)
# Version 2 (flow inversions: Flux): version 1's layout, plus metadata "parameterisation" ("ddim"
# or "flow") and "refine_steps". A flow trajectory is keyed by step index 0..steps, not by DDIM
# timestep, holds latents only (storage recompute), and its blocks are "name.index" (Flux's
# "single.19"). DDIM inversions are still written as version 1, so that older packs read them.
# A later version adds its reader to _READERS and keeps the older ones, so old files still load.
FORMAT_NAME = "scsa-style-inversion"
FORMAT_VERSION = 2
FILE_FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
PARAMETERISATIONS = ("ddim", "flow")
_STYLE_STREAMS = ("style", "style_map")
# metadata feature_dtype -> (the torch dtype, its safetensors name)
_FEATURE_DTYPES = {"float16": (torch.float16, "F16"), "bfloat16": (torch.bfloat16, "BF16"),
                   "float32": (torch.float32, "F32")}
_MAX_STEPS = 1000
_LISTED = 4
FILE_GONE = "the file is gone (deleted or moved after the prompt was queued?)"


class StyleFileError(ValueError):
    """A style file that cannot be used; the message names the file and says what is wrong."""


def _block_name(block) -> str:
    return ".".join(str(part) for part in block)


# parameterisation -> how its families name blocks: UNet ("output.6.0"), Flux ("single.19")
_BLOCK_PARTS = {"ddim": 3, "flow": 2}
_BLOCK_EXAMPLE = {"ddim": "output.6.0", "flow": "single.19"}


def _parse_block(text: str, parts_wanted: int = 3) -> tuple | None:
    """``"output.6.0"`` -> ``("output", 6, 0)``, or with ``parts_wanted`` 2 ``"single.19"`` ->
    ``("single", 19)``; None when ``text`` is not in that form."""
    parts = text.split(".") if isinstance(text, str) else ()
    if len(parts) != parts_wanted or not parts[0].isidentifier() or not all(_is_count(p) for p in parts[1:]):
        return None
    return (parts[0], *(int(p) for p in parts[1:]))


def _is_count(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 6


def save_style(path: str, style: InvertedStyle, map_image: torch.Tensor | None) -> None:
    """Write ``style`` (and its colour map ``uint8 [H, W, 3]``) to a new safetensors file at
    ``path``: whole or not at all, never over an existing file (``FileExistsError``)."""
    tensors = {"latent": style.latent.contiguous().cpu()}
    if style.map_latent is not None:
        tensors["map_latent"] = style.map_latent.contiguous().cpu()
    if map_image is not None:
        tensors["map_image"] = map_image.contiguous().cpu()
    for t, row in style.trajectory.items():
        for stream, x in row.items():
            tensors[f"trajectory.{t}.{stream}"] = x.contiguous().cpu()
    if style.bank is not None:
        for stream in style.bank.streams:
            entries = style.bank.entries(stream)
            for (t, block), x in entries.items():
                tensors[f"features.{t}.{_block_name(block)}.{stream}"] = x.contiguous().cpu()
            for block in {block for _, block in entries}:
                grid = style.bank.grid(block, stream)
                if grid is not None:
                    tensors[f"grid.{_block_name(block)}.{stream}"] = torch.tensor(grid, dtype=torch.int64)
    metadata = {"format": f"{FORMAT_NAME}/1", "steps": str(style.steps), "storage": style.storage,
                "blocks": json.dumps(sorted(_block_name(b) for b in style.blocks)),
                "feature_dtype": "" if style.bank is None else str(style.bank.dtype).replace("torch.", "")}
    if style.parameterisation != "ddim":
        metadata.update({"format": f"{FORMAT_NAME}/2", "parameterisation": style.parameterisation,
                         "refine_steps": str(style.refine_steps)})
    write_new(path, tensors, metadata)


@dataclass(frozen=True)
class StyleFileLayout:
    """What a style file's header says, checked: everything but the tensors' values."""
    path: str
    name: str                                   # as the user knows it (relative to the styles folder)
    steps: int
    storage: str
    blocks: frozenset
    feature_dtype: torch.dtype | None
    trajectory: dict                            # tensor name -> (t, stream)
    features: dict                              # tensor name -> (t, block, stream)
    grids: dict                                 # tensor name -> (block, stream)
    parameterisation: str = "ddim"
    refine_steps: int = 0


def check_style_file(path: str, name: str | None = None) -> StyleFileLayout:
    """Check the style file at ``path`` from its header alone (bounded reads, no tensor read):
    format, metadata, tensor names, dtypes and shapes against its latent. Raises
    :class:`StyleFileError` naming the file (``name``, else its file name)."""
    name = name or os.path.basename(path)

    def fail(problem: str):
        raise StyleFileError(f"style file {name!r}: {problem}")
    try:
        header = read_header(path)
    except SafetensorsFileError as e:
        fail(str(e))
    except FileNotFoundError:
        fail(f"{FILE_GONE}; refresh the node list and choose a file that is there")
    except OSError as e:
        fail(f"cannot be read ({e.strerror or e})")
    metadata = header.metadata
    written = metadata.get("format")
    if not isinstance(written, str) or not written.startswith(f"{FORMAT_NAME}/"):
        fail(f"not an SCSA style inversion: its metadata has no format '{FORMAT_NAME}/<version>' (style files are "
             "written by 'Save Style Inversion (SCSA)')")
    version = written[len(FORMAT_NAME) + 1:]
    if not _is_count(version) or int(version) < 1:
        fail(f"its format {written!r} is not one any version of the SCSA pack writes")
    if int(version) > FORMAT_VERSION:
        fail(f"an SCSA style inversion of a newer format ({written}) than this version of the SCSA node pack "
             f"reads ({FILE_FORMAT} and older): update the SCSA node pack to load it")
    return _READERS[int(version)](path, name, header, fail)


def _layout_v2(path: str, name: str, header: Header, fail) -> StyleFileLayout:
    metadata = header.metadata
    parameterisation = metadata.get("parameterisation")
    if parameterisation not in PARAMETERISATIONS:
        fail(f"its metadata 'parameterisation' is {str(parameterisation)[:40]!r}, not one of "
             f"{', '.join(PARAMETERISATIONS)}")
    refine_steps = metadata.get("refine_steps", "0")
    if not _is_count(refine_steps):
        fail(f"its metadata 'refine_steps' is {refine_steps[:40]!r}, not a number of refinements")
    return _layout_v1(path, name, header, fail, parameterisation, int(refine_steps))


def _layout_v1(path: str, name: str, header: Header, fail, parameterisation: str = "ddim",
               refine_steps: int = 0) -> StyleFileLayout:
    metadata, tensors = header.metadata, header.tensors
    steps, storage, blocks, feature_dtype = _metadata_v1(metadata, fail, parameterisation)
    latent = tensors.get("latent")
    if latent is None:
        fail("it has no 'latent' tensor (the style's clean latent)")
    # 5-D: one frame of a video VAE's latent (Qwen-Image), [1, channels, 1, height, width]
    image_latent = len(latent.shape) == 4 or (len(latent.shape) == 5 and latent.shape[2] == 1)
    if latent.dtype not in FLOAT_DTYPES or not image_latent or latent.shape[0] != 1 or 0 in latent.shape:
        fail(f"its latent is {latent.dtype} {list(latent.shape)}, not a floating-point [1, channels, height, "
             "width] (or [1, channels, 1, height, width]) latent")
    streams = _STYLE_STREAMS if "map_latent" in tensors else _STYLE_STREAMS[:1]
    map_latent = tensors.get("map_latent")
    if map_latent is not None and (map_latent.shape != latent.shape or map_latent.dtype != latent.dtype):
        fail(f"its map_latent is {map_latent.dtype} {list(map_latent.shape)}, but its latent is {latent.dtype} "
             f"{list(latent.shape)}")
    image = tensors.get("map_image")
    if image is not None and (image.dtype != "U8" or len(image.shape) != 3 or image.shape[2] != 3):
        fail(f"its map_image is {image.dtype} {list(image.shape)}, not a colour map (U8 [height, width, 3])")

    if parameterisation == "ddim":
        schedule = inversion_schedule(steps)
        evaluated = [t for t, _ in schedule]
        visited = set(evaluated) | {t_next for _, t_next in schedule}
    else:   # a flow trajectory: one latent per step index; its features are never stored
        if storage != "recompute":
            fail(f"its metadata says {storage!r} storage, but a {parameterisation} inversion holds latents only "
                 "('recompute')")
        evaluated, visited = list(range(steps)), set(range(steps + 1))
    trajectory, features, grids, unknown = {}, {}, {}, []
    for tensor in tensors:
        if tensor in ("latent", "map_latent", "map_image"):
            continue
        kind, _, rest = tensor.partition(".")
        parsed = _parse_tensor_name(kind, rest)
        if parsed is None:
            unknown.append(tensor)
        elif kind == "trajectory":
            trajectory[tensor] = parsed
        elif kind == "features":
            features[tensor] = parsed
        else:
            grids[tensor] = parsed
    if unknown:
        fail(f"{len(unknown)} tensor name(s) that are not in its format's layout ({_listed(unknown)}); expected "
             "latent, map_latent, map_image, trajectory.<timestep>.<style|style_map>, "
             "features.<timestep>.<block>.<style|style_map>, grid.<block>.<style|style_map>")
    misplaced = [tensor for tensor, (*_, stream) in {**trajectory, **features, **grids}.items()
                 if stream not in streams]
    if misplaced:
        fail(f"it has style_map tensors ({_listed(misplaced)}) but no map_latent")
    wrong = [tensor for tensor in trajectory
             if tensors[tensor].shape != latent.shape or tensors[tensor].dtype != latent.dtype]
    if wrong:
        fail(f"{len(wrong)} trajectory latent(s) do not fit its latent {latent.dtype} {list(latent.shape)} "
             f"({', '.join(f'{t} is {tensors[t].dtype} {list(tensors[t].shape)}' for t in wrong[:_LISTED])})")
    missing = [f"trajectory.{t}.{stream}" for t in sorted(visited) for stream in streams
               if (t, stream) not in set(trajectory.values())]
    extra = [tensor for tensor, (t, _) in trajectory.items() if t not in visited]
    if missing or extra:
        fail(f"its trajectory is not the one of a {steps}-step inversion"
             + (f": missing {_listed(missing)}" if missing else "")
             + (f"; timesteps it should not have: {_listed(extra)}" if extra else ""))
    _check_features_v1(tensors, latent.shape, steps, evaluated, storage, blocks, feature_dtype, streams,
                       features, grids, fail)
    return StyleFileLayout(path, name, steps, storage, blocks, _FEATURE_DTYPES[feature_dtype][0] if feature_dtype
                           else None, trajectory, features, grids, parameterisation, refine_steps)


def _metadata_v1(metadata: dict, fail, parameterisation: str = "ddim") -> tuple:
    def field(key: str, what: str) -> str:
        if key not in metadata:
            fail(f"its metadata has no {key!r} ({what}): the file is damaged, or was not written by "
                 "'Save Style Inversion (SCSA)'")
        return metadata[key]
    steps = field("steps", "the number of inversion steps")
    if not _is_count(steps) or not 1 <= int(steps) <= _MAX_STEPS:
        fail(f"its metadata 'steps' is {steps!r}, not a number of steps from 1 to {_MAX_STEPS}")
    storage = field("storage", "the storage it was inverted with")
    from .pipeline import STORAGE_MODES   # here: pipeline imports this module
    saved_storages = [mode for mode in STORAGE_MODES if mode != "auto"]
    if storage not in saved_storages:
        fail(f"its metadata 'storage' is {storage!r}, not one of {', '.join(saved_storages)}")
    text = field("blocks", "the blocks it was recorded at")
    try:
        names = json.loads(text)
    except (ValueError, RecursionError):
        names = None
    blocks = [_parse_block(b, _BLOCK_PARTS[parameterisation]) for b in names] \
        if isinstance(names, list) and names else [None]
    if None in blocks:
        fail(f"its metadata 'blocks' is {text[:80]!r}, not a JSON list of blocks like "
             f"\"{_BLOCK_EXAMPLE[parameterisation]}\"")
    dtype_name = field("feature_dtype", "the dtype of its features")
    if dtype_name and dtype_name not in _FEATURE_DTYPES:
        fail(f"its metadata 'feature_dtype' is {dtype_name[:40]!r}, which is no feature dtype (expected "
             f"{', '.join(_FEATURE_DTYPES)}, or empty for a file without features)")
    return int(steps), storage, frozenset(blocks), dtype_name


def _parse_tensor_name(kind: str, rest: str) -> tuple | None:
    """The parts of a trajectory / features / grid tensor's name, or None."""
    parts = rest.split(".")
    stream = parts[-1]
    if stream not in _STYLE_STREAMS:
        return None
    if kind == "trajectory" and len(parts) == 2 and _is_count(parts[0]):
        return int(parts[0]), stream
    if kind == "features" and len(parts) == 5 and _is_count(parts[0]):
        block = _parse_block(".".join(parts[1:4]))
        return None if block is None else (int(parts[0]), block, stream)
    if kind == "grid" and len(parts) == 4:
        block = _parse_block(".".join(parts[:3]))
        return None if block is None else (block, stream)
    return None


def _latent_grids(height: int, width: int) -> set:
    """The token grids of a latent's attention levels: halved (rounded up) per downsampling."""
    grids = set()
    for _ in range(8):
        grids.add((height, width))
        height, width = (height + 1) // 2, (width + 1) // 2
    return grids


def _check_features_v1(tensors: dict, latent_shape: tuple, steps: int, evaluated: list, storage: str,
                       blocks: frozenset, feature_dtype: str, streams: tuple, features: dict, grids: dict,
                       fail) -> None:
    if storage == "recompute":
        if features or grids:
            fail("its metadata says 'recompute' storage (latents only), but it holds features")
        return
    if not features:
        fail(f"its metadata says {storage!r} storage, but it holds no features (a 'recompute' file holds "
             "latents only)")
    if not feature_dtype:
        fail("it holds features but its metadata 'feature_dtype' is empty")
    dtype_name = _FEATURE_DTYPES[feature_dtype][1]
    expected = {(t, block, stream) for t in evaluated for block in blocks for stream in streams}
    have = set(features.values())
    if have != expected:
        absent = sorted(f"features.{t}.{_block_name(b)}.{s}" for t, b, s in expected - have)
        alien = sorted(f"features.{t}.{_block_name(b)}.{s}" for t, b, s in have - expected)
        fail(f"its features are not those of a {steps}-step inversion at its {len(blocks)} blocks"
             + (f": missing {_listed(absent)}" if absent else "")
             + (f"; not expected: {_listed(alien)}" if alien else ""))
    latent_grids = _latent_grids(*latent_shape[-2:])
    tokens_of = {}
    for tensor, (t, block, stream) in features.items():
        entry = tensors[tensor]
        shape = entry.shape
        if entry.dtype != dtype_name or len(shape) != 3 or shape[0] != 1 or 0 in shape:
            fail(f"feature {tensor!r} is {entry.dtype} {list(shape)}, not {dtype_name} [1, tokens, channels]")
        if not any(h * w == shape[1] for h, w in latent_grids):
            fail(f"feature {tensor!r} has {shape[1]} tokens, which is no attention grid of its "
                 f"{latent_shape[-2]} x {latent_shape[-1]} latent")
        if tokens_of.setdefault((block, stream), shape[1:]) != shape[1:]:
            fail(f"feature {tensor!r} is {list(shape)}, unlike the same block's other timesteps")
    for tensor, key in grids.items():
        if key not in tokens_of or tensors[tensor].dtype != "I64" or tensors[tensor].shape != (2,):
            fail(f"grid {tensor!r} is {tensors[tensor].dtype} {list(tensors[tensor].shape)}, not the I64 [2] "
                 "grid of a recorded block")


def _listed(names: list) -> str:
    return ", ".join(names[:_LISTED]) + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


_READERS = {1: _layout_v1, 2: _layout_v2}   # format version -> its layout check (each builds the same InvertedStyle)


def load_style(path: str, name: str | None = None) -> tuple[InvertedStyle, torch.Tensor | None]:
    """Read a style file: ``(style, its colour map uint8 [H, W, 3] or None)``.

    The header is checked first (:func:`check_style_file`); then the tensors are read with the
    safe loader (never a pickle) and their values checked (finite, grids that fit). Raises
    :class:`StyleFileError` naming the file (``name``: as the user knows it).
    """
    from safetensors import safe_open

    layout = check_style_file(path, name)

    def fail(problem: str):
        raise StyleFileError(f"style file {layout.name!r}: {problem}")
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            tensors = {tensor: file.get_tensor(tensor) for tensor in file.keys()}
    except FileNotFoundError:
        fail("the file is gone (deleted or moved while it was read)")
    except Exception as e:   # the file changed between the check and the read
        fail(f"cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__}); it may have "
             "changed while it was read")
    broken = [tensor for tensor, x in tensors.items() if x.is_floating_point() and not bool(torch.isfinite(x).all())]
    if broken:
        fail(f"{len(broken)} tensor(s) hold NaN or infinity ({_listed(sorted(broken))}): the file is damaged")
    trajectory: dict[int, dict[str, torch.Tensor]] = {}
    for tensor, (t, stream) in layout.trajectory.items():
        trajectory.setdefault(t, {})[stream] = tensors[tensor]
    bank = None
    if layout.features:
        streams = [s for s in _STYLE_STREAMS if any(stream == s for *_, stream in layout.features.values())]
        bank = FeatureBank(streams, dtype=layout.feature_dtype)
        grid_of = {key: tuple(tensors[tensor].tolist()) for tensor, key in layout.grids.items()}
        for tensor, (t, block, stream) in layout.features.items():
            grid = grid_of.get((block, stream))
            if grid is not None and grid[0] * grid[1] != tensors[tensor].shape[1]:
                fail(f"grid 'grid.{_block_name(block)}.{stream}' is {list(grid)}, which does not hold the "
                     f"{tensors[tensor].shape[1]} tokens of its features")
            bank.record(t, block, tensors[tensor], streams=[stream], grid=grid)
    style = InvertedStyle(tensors["latent"], tensors.get("map_latent"), trajectory, bank, layout.steps,
                          layout.blocks, layout.storage, layout.parameterisation, layout.refine_steps)
    return style, tensors.get("map_image")
