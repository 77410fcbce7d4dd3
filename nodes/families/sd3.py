"""The SD3 family: ComfyUI's MMDiT (``comfy.ldm.modules.diffusionmodules.mmdit``), as SD3 Medium
and SD3.5 Medium / Large / Large Turbo use it. Experimental: no real SD3.5 weights were ever run
through it.

Blocks are ``("double", i)``, one per joint block. ComfyUI publishes no block index inside these
blocks, so SCSA puts a ``dit`` block replace on each injected block that hands the block a copy
of ``transformer_options`` naming it (:class:`PublishBlockIndex`); the attention override reads
that. The override sees q, k, v as ``[B, L, H * D]`` (no ``skip_reshape``), tokens
``[registers | text | image (h * w)]``. SD3.5 Medium's MMDiT-X blocks make a second, image-only
attention call after the joint one (``L = h * w``): in an injected block SCSA replaces its image
queries too (with no text keys, SCSA's UNet form).

No RoPE: positions are a learned absolute embedding added once at the input, so the style's
tokens keep the positions of their own grid and ``rope_mode`` has nothing to move (the UNet's
situation; within a label the style's layout can show through).
"""
from __future__ import annotations

import comfy.ldm.modules.diffusionmodules.mmdit

from .joint import ChainedBlockReplace, JointAttentionFamily


class SD3Family(JointAttentionFamily):
    name = "SD3 / SD3.5 (experimental)"
    MODEL_CLASS = comfy.ldm.modules.diffusionmodules.mmdit.MMDiT
    BLOCKS = "joint_blocks"          # auto: the last third (SD3.5 Large: double 26-37)
    BLOCKS_EXAMPLE = "double 16-23 (or 16-23)"

    def install(self, model_patcher, blocks) -> None:
        options = model_patcher.model_options.setdefault("transformer_options", {})
        replaced = options.get("patches_replace", {}).get("dit", {})
        for name, index in blocks:
            model_patcher.set_model_patch_replace(PublishBlockIndex(index, replaced.get(("double_block", index))),
                                                  "dit", "double_block", index)
        super().install(model_patcher, blocks)


class PublishBlockIndex(ChainedBlockReplace):
    """A joint block's replace that runs it (or the replace installed before) with a copy of
    ``transformer_options`` that names the block, as other families' models do themselves."""

    def __init__(self, index: int, previous=None):
        super().__init__(previous)
        self.index = index

    def __call__(self, args, extra):
        options = dict(args.get("transformer_options") or {}, block_type="double", block_index=self.index)
        return self.run_block(dict(args, transformer_options=options), extra)
