"""What every joint-attention DiT family shares (Flux, Qwen-Image, Z-Image, SD3.5): the attention
override SCSA injects through, the block replace that lets the reference rows stop after the
last injected block, and the defaults of the family interface (``__init__.py``).

SCSA reaches a DiT block's attention only through ComfyUI's attention override
(``transformer_options["optimized_attention_override"]``), the one hook inside the blocks of
every such model on every supported ComfyUI. It chains to an override installed before it:
every call SCSA does not change goes to that override, or to ComfyUI's own attention.

A family module says what differs (:class:`JointAttentionFamily`'s class attributes and the
methods it overrides): its model class, its blocks and their ComfyUI names, where the image
tokens sit in the sequence, its token grid, its RoPE (or none), and which blocks take a
``dit`` block replace. Features are never stored: the reference latents ride in the sampling
batch (``recompute`` storage), and the run object takes their q/k/v from the same attention
call (``nodes/injection.py``, ``InjectRun.joint_attention``).
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from ..injection import RUN_KEY, note_skipping_caches
from ..parameterisations import FlowEuler
from .blocks import parse_blocks

OVERRIDE_KEY = "optimized_attention_override"

log = logging.getLogger("scsa")


class JointAttentionFamily:
    """The defaults of a joint-attention DiT family: one stack of blocks (``BLOCKS``, the
    diffusion model's attribute holding them), each called ``("double", i)`` as ComfyUI names
    them, ``auto`` the last third. A subclass gives ``name``, ``MODEL_CLASS``, ``BLOCKS`` and
    ``BLOCKS_EXAMPLE``, and overrides what its model does differently."""

    parameterisation = FlowEuler()
    storage_modes = ("recompute",)   # a feature bank at 1024 px would take tens of GB
    experimental = True              # no real weights were run: the log says so once per run
    patch_size = 2                   # latent cells per token side
    BLOCK_NAMES: tuple = ("double",)
    BLOCKS_EXAMPLE = "double 40-59"
    # dit block replace slot of each block name (ComfyUI's patches_replace["dit"] key), or None
    # where the model takes no block replace (then the reference rows ride to the last block).
    REPLACE_SLOTS: dict | None = {"double": "double_block"}
    stop_reference_rows = True       # after the last injected block (tests switch it off to compare)

    MODEL_CLASS: type = type(None)   # the ComfyUI diffusion model class of the family
    BLOCKS = ""                      # the model's attribute that holds its blocks

    def __init__(self, diffusion_model):
        self.diffusion_model = diffusion_model
        self.patch_size = getattr(diffusion_model, "patch_size", self.patch_size)

    @classmethod
    def matches(cls, diffusion_model) -> bool:
        return isinstance(diffusion_model, cls.MODEL_CLASS)

    # ----------------------------------------------------------------------------- blocks
    def attention_blocks(self) -> list[tuple]:
        """Every injectable block, in execution order."""
        return [("double", i) for i in range(len(getattr(self.diffusion_model, self.BLOCKS)))]

    def auto_blocks(self) -> frozenset:
        """The ``auto`` blocks: the last third (a starting point for the one-stack DiTs,
        docs/method.md §13), to be swept on real weights, not a measured optimum."""
        blocks = self.attention_blocks()
        return frozenset(blocks[len(blocks) - len(blocks) // 3:])

    def block_counts(self) -> str:
        names = {}
        for name, index in self.attention_blocks():
            names.setdefault(name, []).append(index)
        return ", ".join(f"{name} {min(found)}-{max(found)}" for name, found in names.items())

    def resolve_blocks(self, text: str) -> frozenset:
        """The block keys for SCSAInvert's ``blocks`` input (``"auto"``, or e.g. ``"double 40-59"``;
        a family with one block name also takes bare numbers, ``"40-59"``)."""
        if text.strip().lower() in ("", "auto"):
            return self.auto_blocks()
        wanted = set(parse_blocks(text, self.BLOCK_NAMES, example=self.BLOCKS_EXAMPLE,
                                  default_name=self.BLOCK_NAMES[0] if len(self.BLOCK_NAMES) == 1 else None))
        missing = sorted(wanted - set(self.attention_blocks()))
        if missing:
            raise ValueError(f"blocks: {', '.join(f'{n} {i}' for n, i in missing)} does not exist in this model. "
                             f"Its blocks: {self.block_counts()}.")
        return frozenset(wanted)

    @staticmethod
    def block_key(transformer_options: dict):
        """The block an attention call belongs to, as ComfyUI publishes it (None outside the blocks,
        e.g. in Z-Image's refiners)."""
        block_type, index = transformer_options.get("block_type"), transformer_options.get("block_index")
        return None if block_type is None or index is None else (block_type, index)

    def feature_bytes(self, keys, streams: int, latent_size: tuple[int, int], steps: int, dtype) -> int:
        return 0   # nothing is recorded: the references are recomputed in the sampling batch

    def prepare_conditioning(self, conditioning):
        return conditioning

    # ----------------------------------------------------------------------- token layout
    def token_grid(self, latent_size: tuple[int, int]) -> tuple[int, int]:
        """The image token grid ``(h, w)`` of a latent of ``latent_size`` ``(H, W)`` (padded up to
        whole patches, as ComfyUI's ``pad_to_patch_size`` does)."""
        patch = self.patch_size
        return (latent_size[0] + patch - 1) // patch, (latent_size[1] + patch - 1) // patch

    def image_tokens(self, length: int, grid: tuple[int, int], transformer_options: dict) -> slice:
        """Where the ``h * w`` image tokens sit in an attention call's ``length`` tokens. Default:
        right before the reference-image tokens ComfyUI appends (Kontext / edit references, counted
        in ``reference_image_num_tokens``), after the text."""
        references = sum(transformer_options.get("reference_image_num_tokens") or ())
        end = length - references
        return slice(end - grid[0] * grid[1], end)

    def rope(self) -> tuple[tuple[int, ...], float] | None:
        """``(axes_dim, theta)`` of the model's RoPE, or None for a model without RoPE."""
        return None

    def style_key_offset(self, latent_size: tuple[int, int]) -> tuple[int, ...] | None:
        """The RoPE id offset that moves the style's image tokens beside the content's (AlignedGen's
        ShiftPE): one content width along the column axis, the last of (..., row, col) ids."""
        rope = self.rope()
        if rope is None:
            return None
        offset = [0] * len(rope[0])
        offset[self.COLUMN_AXIS] = self.token_grid(latent_size)[1]
        return tuple(offset)

    COLUMN_AXIS = 2   # the RoPE id axis of the image column

    # ---------------------------------------------------------------------------- install
    def install(self, model_patcher, blocks) -> None:
        """The chained attention override on ``model_patcher`` (a clone only the pack's sampler
        uses) and the family's block replaces: on every block after the last of ``blocks`` one
        that runs the sample rows only (the reference rows riding in the batch are needed up to
        the last injected block, and their outputs are never read). The run object decides per
        call."""
        note_skipping_caches(model_patcher)
        options = model_patcher.model_options.setdefault("transformer_options", {})
        options[OVERRIDE_KEY] = JointAttentionOverride(self, options.get(OVERRIDE_KEY))
        order = self.attention_blocks()
        injected = [order.index(key) for key in blocks if key in order]
        if self.REPLACE_SLOTS is None or not self.stop_reference_rows or not injected:
            return
        replaced = options.get("patches_replace", {}).get("dit", {})
        for name, index in order[max(injected) + 1:]:
            slot = self.REPLACE_SLOTS[name]
            model_patcher.set_model_patch_replace(SampleRowsOnly(replaced.get((slot, index))), "dit", slot, index)


def _rows_of(value, rows: list[int], batch: int):
    """``value`` (a block's argument: tensors, tuples of them, Flux.2's modulation dataclasses)
    with only ``rows`` of its batch dimension ``batch``; anything without that dimension as is."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_rows_of(item, rows, batch) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _rows_of(getattr(value, f.name), rows, batch)
                                             for f in dataclasses.fields(value) if f.init})
    return value


class ChainedBlockReplace:
    """A ``dit`` block replace that runs the replace installed before it, else the block."""

    def __init__(self, previous=None):
        self.previous = previous

    def __deepcopy__(self, memo):   # ModelPatcher.clone() deep-copies model_options on 0.3.75
        return self

    def run_block(self, args, extra):
        return self.previous(args, extra) if self.previous is not None else extra["original_block"](args)


class SampleRowsOnly(ChainedBlockReplace):
    """A block replace for a block after the last injected one: while references ride in the
    batch, the block (or the replace installed before this one) runs on the sample rows only,
    and the reference rows pass through unchanged."""

    def __call__(self, args, extra):
        run = (args.get("transformer_options") or {}).get(RUN_KEY)
        batch = args["img"].shape[0]
        sample_rows = getattr(run, "sample_rows", None)
        rows = sample_rows(batch, args.get("transformer_options") or {}) if sample_rows is not None else None
        if rows is None or len(rows) == batch:
            return self.run_block(args, extra)
        out = self.run_block({key: value if key == "transformer_options" else _rows_of(value, rows, batch)
                              for key, value in args.items()}, extra)
        merged = {}
        for key, value in out.items():
            if value is None:   # SD3's last block returns no text stream
                merged[key] = None
                continue
            merged[key] = args[key].clone()
            merged[key][rows] = value.to(merged[key].dtype)
        return merged


def attention_call(args: tuple, kwargs: dict):
    """``q, k, v [B, H, L, D], heads, mask`` of a call to ComfyUI's attention function, whichever
    way the model called it: q/k/v as ``[B, H, L, D]`` with ``skip_reshape`` (Flux, Qwen, Z-Image)
    or ``[B, L, H * D]`` without (SD3; its v is ``[B, L, H, D]``), ``heads`` and ``mask``
    positional or by keyword."""
    q, k, v = args[:3]
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    mask = args[4] if len(args) > 4 else kwargs.get("mask")
    if not kwargs.get("skip_reshape", False):
        # as ComfyUI's attention functions read them: SD3 hands v as [B, L, H, D], q and k flat
        dim_head = q.shape[-1] // heads
        q, k, v = (t.reshape(t.shape[0], -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    return q, k, v, heads, mask


class JointAttentionOverride:
    """ComfyUI's attention override for SCSA on a joint-attention DiT: a call in an injected
    block, during an injecting step, goes to the run object; every other call goes on to the
    override installed before this one, or to ComfyUI's attention function."""

    def __init__(self, family: JointAttentionFamily, previous=None):
        self.family = family
        self.previous = previous

    def __deepcopy__(self, memo):   # ModelPatcher.clone() deep-copies model_options on 0.3.75
        return self

    def pass_through(self, func, *args, **kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        run = options.get(RUN_KEY)
        key = self.family.block_key(options)
        if run is None or key is None or not run.acts_on(key):
            return self.pass_through(func, *args, **kwargs)
        q, k, v, heads, mask = attention_call(args, kwargs)
        return run.joint_attention(self.family, lambda: self.pass_through(func, *args, **kwargs),
                                   q, k, v, mask, options, key)
