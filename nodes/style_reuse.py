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
  read it back (the safe loader only). A loaded style is checked against the model it meets
  (steps, blocks, latent channels, and one model call on its trajectory: another model, or
  another conditioning, predicts another noise) before it is used.

A style travels between nodes attached to its LATENT dict (:data:`SAVED_STYLE_KEY`), so a
loaded style plugs into SCSAInvert's ordinary ``style`` socket; SCSAInvert uses it only when the
latent it is attached to is still the style's clean latent.
"""
from __future__ import annotations

import json
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..scsa_core.features import FeatureBank

log = logging.getLogger("scsa")

SAVED_STYLE_KEY = "scsa_style_inversion"
MISSING_MAP_KEY = "scsa_missing_map"    # on the map LATENT of a style saved without one
FILE_FORMAT = "scsa-style-inversion/1"
# Another model, or another prompt, changes the predicted noise by tens of percent; fp16 against
# fp32 on another device by a fraction of one percent.
MODEL_CHECK_TOLERANCE = 0.05


@dataclass(frozen=True)
class InvertedStyle:
    """One style image's inversion: what a further content needs from it.

    latent / map_latent: ``[1, C, h, w]`` the clean style and map latents (as ComfyUI's LATENT
    holds them, unscaled), map None without semantic maps. trajectory: ``t -> {"style": x_t,
    "style_map": x_t}`` in the model's scaled space. bank: the recorded block inputs of streams
    "style" / "style_map", None with recompute storage.
    """
    latent: torch.Tensor
    map_latent: torch.Tensor | None
    trajectory: dict
    bank: FeatureBank | None
    steps: int
    blocks: frozenset
    storage: str

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
def _block_name(block) -> str:
    name, number, index = block
    return f"{name}.{number}.{index}"


def _parse_block(text: str) -> tuple:
    name, number, index = text.split(".")
    return (name, int(number), int(index))


def save_style(path: str, style: InvertedStyle, map_image: torch.Tensor | None) -> None:
    """Write ``style`` (and its colour map ``uint8 [H, W, 3]``) to a safetensors file at ``path``."""
    from safetensors.torch import save_file

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
    metadata = {"format": FILE_FORMAT, "steps": str(style.steps), "storage": style.storage,
                "blocks": json.dumps(sorted(_block_name(b) for b in style.blocks)),
                "feature_dtype": "" if style.bank is None else str(style.bank.dtype).replace("torch.", "")}
    save_file(tensors, path, metadata=metadata)


def load_style(path: str) -> tuple[InvertedStyle, torch.Tensor | None]:
    """Read a file :func:`save_style` wrote: ``(style, its colour map uint8 [H, W, 3] or None)``."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as file:
        metadata = file.metadata() or {}
        if metadata.get("format") != FILE_FORMAT:
            raise ValueError(f"{path}: not an SCSA style inversion (saved by 'Save Style Inversion (SCSA)')")
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    steps, storage = int(metadata["steps"]), metadata["storage"]
    blocks = frozenset(_parse_block(b) for b in json.loads(metadata["blocks"]))
    trajectory: dict[int, dict[str, torch.Tensor]] = {}
    for name, x in tensors.items():
        if name.startswith("trajectory."):
            _, t, stream = name.split(".")
            trajectory.setdefault(int(t), {})[stream] = x
    bank = None
    if any(name.startswith("features.") for name in tensors):
        dtype = getattr(torch, metadata.get("feature_dtype") or "float16")
        streams = [s for s in ("style", "style_map") if any(n.endswith(f".{s}") and n.startswith("features.")
                                                           for n in tensors)]
        bank = FeatureBank(streams, dtype=dtype)
        for name, x in tensors.items():
            if name.startswith("features."):
                _, t, block_name, number, index, stream = name.split(".")
                block = _parse_block(f"{block_name}.{number}.{index}")
                grid = tensors.get(f"grid.{_block_name(block)}.{stream}")
                bank.record(int(t), block, x, streams=[stream], grid=None if grid is None else tuple(grid.tolist()))
    style = InvertedStyle(tensors["latent"], tensors.get("map_latent"), trajectory, bank, steps, blocks, storage)
    return style, tensors.get("map_image")

