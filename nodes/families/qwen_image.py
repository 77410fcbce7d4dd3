"""The Qwen-Image family: ComfyUI's ``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``
(Qwen-Image, Qwen-Image-Edit). Experimental: no real Qwen-Image weights were ever run through it.

Blocks are ``("double", i)``, one per transformer block (ComfyUI's ``block_type`` "double" and
``block_index``). The attention override sees q, k, v ``[B, H, L, D]`` after QK-norm and RoPE,
tokens ``[text | image (h * w) | edit references]``. The latent is 5-D, ``[B, C, 1, H, W]``
(the Wan 2.1 VAE's, one frame): the grid is ``ceil(H / 2) x ceil(W / 2)``. RoPE ids are
(frame, row, col), centred on the image.

No ``dit`` block replace here: Qwen's block closure carries the text mask and Qwen-Image-Edit's
zero-timestep batch, whose rows a replace cannot cut, so the reference rows ride to the last
block (the ``auto`` blocks end there anyway).
"""
from __future__ import annotations

import comfy.ldm.qwen_image.model

from .joint import JointAttentionFamily


class QwenImageFamily(JointAttentionFamily):
    name = "Qwen-Image (experimental)"
    MODEL_CLASS = comfy.ldm.qwen_image.model.QwenImageTransformer2DModel
    BLOCKS = "transformer_blocks"    # auto: the last third (Qwen-Image: double 40-59)
    BLOCKS_EXAMPLE = "double 40-59 (or 40-59)"
    REPLACE_SLOTS = None

    def rope(self) -> tuple[tuple[int, ...], float]:
        embedder = self.diffusion_model.pe_embedder
        return tuple(embedder.axes_dim), float(embedder.theta)
