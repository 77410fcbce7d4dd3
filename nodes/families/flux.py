"""The Flux family: ComfyUI's ``comfy.ldm.flux.model.Flux``, which Flux.1 (dev, schnell, Krea) and
Flux.2 (dev, Klein) share. Experimental: no real Flux weights were ever run through it.

Blocks are ``("double", i)`` and ``("single", i)``, as ComfyUI names them in
``transformer_options`` (``block_type``, ``block_index``), and both take a ``dit`` block replace.
The attention override (``joint.py``) sees q, k, v ``[B, H, L, D]`` after QK-norm and RoPE,
tokens text first: ``[text (T) | image (h * w, row-major) | references]`` with
``h = ceil(H / p)`` for a latent of ``H x W`` and patch size ``p`` (2 for Flux.1, 1 for Flux.2).
RoPE ids are (index, row, col) on Flux.1 and (t, row, col, l) on Flux.2.
"""
from __future__ import annotations

import logging

import comfy.ldm.flux.model

from .joint import JointAttentionFamily

DEFAULT_GUIDANCE = 3.5   # what ComfyUI's Flux model uses for a conditioning without guidance

log = logging.getLogger("scsa")


class FluxFamily(JointAttentionFamily):
    name = "Flux (Flux.1, Flux.2; experimental)"
    BLOCK_NAMES = ("double", "single")
    BLOCKS_EXAMPLE = "single 19-37, double 14-18"
    REPLACE_SLOTS = {"double": "double_block", "single": "single_block"}

    MODEL_CLASS = comfy.ldm.flux.model.Flux

    def __init__(self, diffusion_model):
        super().__init__(diffusion_model)
        self.params = diffusion_model.params
        self.patch_size = self.params.patch_size

    def attention_blocks(self) -> list[tuple]:
        """The double blocks, then the single ones."""
        return ([("double", i) for i in range(len(self.diffusion_model.double_blocks))] +
                [("single", i) for i in range(len(self.diffusion_model.single_blocks))])

    def auto_blocks(self) -> frozenset:
        """The second half of the single blocks (Flux.1-dev: single 19-37): a starting point
        (docs/method.md §13), to be swept on real weights, not a measured optimum."""
        singles = len(self.diffusion_model.single_blocks)
        return frozenset(("single", i) for i in range(singles // 2, singles))

    def rope(self) -> tuple[tuple[int, ...], float]:
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
