"""The Flux family: ComfyUI's ``comfy.ldm.flux.model.Flux``, which Flux.1 (dev, schnell, Krea) and
Flux.2 (dev, Klein) share. Experimental: no real Flux weights were ever run through it.

Blocks are ``("double", i)`` and ``("single", i)``, as ComfyUI names them in
``transformer_options`` (``block_type``, ``block_index``). SCSA reaches a block's joint
attention only through ComfyUI's attention override (``optimized_attention_override``), the one
hook inside Flux blocks on every supported ComfyUI (0.3.75 calls no attn1 patch there). It
chains to an override installed before it: every call SCSA does not change goes to that
override, or to ComfyUI's own attention.

The override sees q, k, v ``[B, H, L, D]`` after QK-norm and RoPE, tokens text first:
``[text (T) | image (h * w, row-major)]`` with ``h = (H + p // 2) // p`` for a latent of
``H x W`` and patch size ``p`` (2 for Flux.1, 1 for Flux.2). Features are never stored: the
reference latents ride in the sampling batch (``recompute`` storage), and the run object takes
their q/k/v from the same call (``nodes/injection.py``, ``InjectRun.joint_attention``).
"""
from __future__ import annotations

import dataclasses
import logging

import comfy.ldm.flux.model
import torch

from ..injection import RUN_KEY
from ..parameterisations import FlowEuler
from .blocks import parse_blocks

OVERRIDE_KEY = "optimized_attention_override"
DEFAULT_GUIDANCE = 3.5   # what ComfyUI's Flux model uses for a conditioning without guidance

log = logging.getLogger("scsa")


class FluxFamily:
    name = "Flux (Flux.1, Flux.2; experimental)"
    parameterisation = FlowEuler()
    storage_modes = ("recompute",)   # a feature bank at 1024 px would take tens of GB
    experimental = True              # no real weights were run: the log says so once per run
    BLOCK_NAMES = ("double", "single")

    def __init__(self, diffusion_model):
        self.diffusion_model = diffusion_model
        self.params = diffusion_model.params

    @classmethod
    def matches(cls, diffusion_model) -> bool:
        return isinstance(diffusion_model, comfy.ldm.flux.model.Flux)

    def attention_blocks(self) -> list[tuple]:
        """Every joint-attention block, in execution order: the double blocks, then the single ones."""
        return ([("double", i) for i in range(len(self.diffusion_model.double_blocks))] +
                [("single", i) for i in range(len(self.diffusion_model.single_blocks))])

    def auto_blocks(self) -> frozenset:
        """The second half of the single blocks (Flux.1-dev: single 19-37): a starting point from
        the design study, to be swept on real weights, not a measured optimum."""
        singles = len(self.diffusion_model.single_blocks)
        return frozenset(("single", i) for i in range(singles // 2, singles))

    def resolve_blocks(self, text: str) -> frozenset:
        """The block keys for SCSAInvert's ``blocks`` input (``"auto"`` or e.g. ``"single 19-37"``)."""
        if text.strip().lower() in ("", "auto"):
            return self.auto_blocks()
        available = self.attention_blocks()
        wanted = set(parse_blocks(text, self.BLOCK_NAMES, example="single 19-37, double 14-18"))
        missing = sorted(wanted - set(available))
        if missing:
            counts = f"double 0-{len(self.diffusion_model.double_blocks) - 1}, " \
                     f"single 0-{len(self.diffusion_model.single_blocks) - 1}"
            raise ValueError(f"blocks: {', '.join(f'{n} {i}' for n, i in missing)} does not exist in this model. "
                             f"Its blocks: {counts}.")
        return frozenset(wanted)

    def feature_bytes(self, keys, streams: int, latent_size: tuple[int, int], steps: int, dtype) -> int:
        return 0   # nothing is recorded: the references are recomputed in the sampling batch

    def token_grid(self, latent_size: tuple[int, int]) -> tuple[int, int]:
        """The image token grid ``(h, w)`` of a latent of ``latent_size`` ``(H, W)``."""
        patch = self.params.patch_size
        return (latent_size[0] + patch // 2) // patch, (latent_size[1] + patch // 2) // patch

    def style_key_offset(self, latent_size: tuple[int, int]) -> tuple[int, ...]:
        """The RoPE id offset that moves the style's image tokens beside the content's (AlignedGen's
        ShiftPE): one content width along the column axis (axis 2 of Flux.1's (index, row, col)
        and Flux.2's (t, row, col, l) ids)."""
        offset = [0] * len(self.params.axes_dim)
        offset[2] = self.token_grid(latent_size)[1]
        return tuple(offset)

    def rope(self) -> tuple[tuple[int, ...], float]:
        """``(axes_dim, theta)`` of the model's RoPE."""
        return tuple(self.params.axes_dim), float(self.params.theta)

    def prepare_conditioning(self, conditioning):
        """The conditioning with Flux's distilled guidance set explicitly, so inversion and
        sampling use the same value: the one given (FluxGuidance before SCSAInvert), else
        :data:`DEFAULT_GUIDANCE`, ComfyUI's own default."""
        if not getattr(self.diffusion_model.params, "guidance_embed", False):
            return conditioning   # schnell / Klein-distilled: no guidance input
        if all("guidance" in entry[1] for entry in conditioning):
            return conditioning
        log.info("SCSA: Flux guidance %.1f for inversion and sampling (set it with FluxGuidance before "
                 "SCSAInvert)", DEFAULT_GUIDANCE)
        return [[entry[0], {"guidance": DEFAULT_GUIDANCE, **entry[1]}] for entry in conditioning]

    @staticmethod
    def block_key(transformer_options: dict):
        block_type, index = transformer_options.get("block_type"), transformer_options.get("block_index")
        return None if block_type is None or index is None else (block_type, index)

    stop_reference_rows = True   # after the last injected block (tests switch it off to compare)

    def install(self, model_patcher, blocks) -> None:
        """The chained attention override on ``model_patcher`` (a clone only the pack's sampler
        uses), and on every block after the last of ``blocks`` a block replace that runs the
        sample rows only: the reference rows riding in the batch are needed up to the last
        injected block, and their outputs are never read. The run object decides per call."""
        options = model_patcher.model_options.setdefault("transformer_options", {})
        options[OVERRIDE_KEY] = JointAttentionOverride(self, options.get(OVERRIDE_KEY))
        order = self.attention_blocks()
        injected = [order.index(key) for key in blocks if key in order]
        if not self.stop_reference_rows or not injected:
            return
        replaced = options.get("patches_replace", {}).get("dit", {})
        for block_type, index in order[max(injected) + 1:]:
            name = f"{block_type}_block"
            model_patcher.set_model_patch_replace(SampleRowsOnly(replaced.get((name, index))), "dit", name, index)


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


class SampleRowsOnly:
    """A Flux block replace (ComfyUI's ``patches_replace["dit"]``) for a block after the last
    injected one: while references ride in the batch, the block (or the replace installed before
    this one) runs on the sample rows only, and the reference rows pass through unchanged."""

    def __init__(self, previous=None):
        self.previous = previous

    def __deepcopy__(self, memo):   # ModelPatcher.clone() deep-copies model_options on 0.3.75
        return self

    def run_block(self, args, extra):
        return self.previous(args, extra) if self.previous is not None else extra["original_block"](args)

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
            merged[key] = args[key].clone()
            merged[key][rows] = value.to(merged[key].dtype)
        return merged


class JointAttentionOverride:
    """ComfyUI's attention override for SCSA on a joint-attention DiT: a call in an injected
    block, during an injecting step, goes to the run object; every other call goes on to the
    override installed before this one, or to ComfyUI's attention function."""

    def __init__(self, family: FluxFamily, previous=None):
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
        return run.joint_attention(self.family, lambda *a, **kw: self.pass_through(func, *a, **kw),
                                   args, kwargs, key)
