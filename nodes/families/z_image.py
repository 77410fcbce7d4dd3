"""The Z-Image / Lumina 2 family: ComfyUI's ``comfy.ldm.lumina.model.NextDiT``. Experimental: no
real Z-Image weights were ever run through it.

Blocks are ``("double", i)``, one per main layer: ComfyUI publishes ``block_type`` "double" and
``block_index`` in ``transformer_options`` for the main layers only, so the context and noise
refiners (which run before them, without a block index) are never touched. This model takes no
block replace and no attn1 patch: the attention override is the only way in, and the reference
rows ride to the last layer.

The override sees q, k, v ``[B, H, L, D]`` after the fused QK-norm and RoPE (GQA heads already
repeated), tokens ``[caption (padded) | image (h * w) | padding]``: Z-Image pads the image tokens
up to a multiple of ``pad_tokens_multiple`` (32) at the end; Lumina 2 does not pad. RoPE ids are
(caption position, row, col).
"""
from __future__ import annotations

import comfy.ldm.lumina.model

from .joint import JointAttentionFamily


class ZImageFamily(JointAttentionFamily):
    name = "Z-Image / Lumina 2 (experimental)"
    MODEL_CLASS = comfy.ldm.lumina.model.NextDiT
    BLOCKS = "layers"                # the main layers; auto: the last third (Z-Image: double 20-29)
    BLOCKS_EXAMPLE = "double 20-29 (or 20-29)"
    REPLACE_SLOTS = None

    def image_tokens(self, length: int, grid: tuple[int, int], transformer_options: dict) -> slice:
        """The image tokens end where their padding (to a multiple of ``pad_tokens_multiple``)
        begins, at the end of the sequence."""
        tokens = grid[0] * grid[1]
        multiple = getattr(self.diffusion_model, "pad_tokens_multiple", None)
        padding = (-tokens) % multiple if multiple else 0
        return slice(length - padding - tokens, length - padding)

    def rope(self) -> tuple[tuple[int, ...], float]:
        return tuple(self.diffusion_model.axes_dims), float(self.diffusion_model.rope_embedder.theta)
