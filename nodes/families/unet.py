"""The UNet family: ComfyUI's ``openaimodel.UNetModel`` as SD1.x, SD2.x (v-prediction too) and
SDXL use it. What the pack knows about these models lives here (the interface: ``__init__.py``).

Blocks are ComfyUI's ``(name, number, index)`` keys (``("output", 6, 0)``); SCSA reaches a
block's self-attention through the attn1 replace, attn1 output and middle patches
(``nodes/injection.py``), and its q/k/v from the block's own ``norm1`` and projections
(:meth:`UNetFamily.layers`). Noise: VP (eps or v), inverted and sampled with StyleID's DDIM.
"""
from __future__ import annotations

import math

import torch

from ...scsa_core.block import BlockLayers
from ..injection import AttentionPatch
from ..parameterisations import VPDDIM
from .blocks import parse_blocks

BlockKey = tuple  # ("output", 6, 0): ComfyUI's block name, block number, index inside the transformer


def default_blocks(keys: list[tuple], model_channels: int) -> list[tuple]:
    """StyleID's choice generalised: the decoder's finest attention level, plus the next coarser
    level when the finest one runs at the latent's full resolution.

    ``keys``: ``(name, number, index, channels)``. SD1.x/SD2.x: output 6-11 (64 and 32 token
    grids at 512 px). SDXL has no attention at full resolution: output 3-5 (its finest
    attention, 64 x 64 tokens at 1024 px, like SD1.x's output 9-11 at 512 px); its 10-deep
    output 0-2 would add 30 layout-level blocks and several GB of features, so it is left to
    the ``blocks`` input.
    """
    levels: list[list] = []
    for key in (key for key in keys if key[0] == "output"):
        if levels and levels[-1][-1][1] in (key[1], key[1] - 1) and levels[-1][-1][3] == key[3]:
            levels[-1].append(key)
        else:
            levels.append([key])
    if not levels:
        return []
    chosen = levels[-2:] if levels[-1][0][3] == model_channels else levels[-1:]
    return [key for level in chosen for key in level]


class UNetFamily:
    """SD1.x, SD2.x and SDXL: ``input_blocks`` / ``middle_block`` / ``output_blocks`` stages whose
    ``SpatialTransformer`` layers hold ``BasicTransformerBlock``s with self-attention ``attn1``."""

    name = "UNet (SD1.x, SD2.x, SDXL)"
    STAGES = (("input", "input_blocks"), ("middle", "middle_block"), ("output", "output_blocks"))
    parameterisation = VPDDIM()
    storage_modes = ("memory", "offload", "recompute")
    experimental = False

    def __init__(self, diffusion_model: torch.nn.Module):
        self.diffusion_model = diffusion_model
        self._layers: dict[BlockKey, BlockLayers] = {}

    @classmethod
    def matches(cls, diffusion_model: torch.nn.Module) -> bool:
        return all(hasattr(diffusion_model, stage) for _, stage in cls.STAGES) and \
            bool(cls(diffusion_model).attention_blocks())

    def attention_blocks(self) -> list[BlockKey]:
        """Every self-attention block, as ComfyUI keys, in execution order."""
        keys = []
        for name, stage_name in self.STAGES:
            stages = getattr(self.diffusion_model, stage_name, None)
            if stages is None:
                continue
            for number, stage in enumerate([stages] if name == "middle" else stages):
                for layer in stage:
                    for index, block in enumerate(getattr(layer, "transformer_blocks", [])):
                        if getattr(block, "attn1", None) is not None:
                            keys.append((name, 0 if name == "middle" else number, index))
        return keys

    def transformer_block(self, key: BlockKey) -> torch.nn.Module:
        """The ``BasicTransformerBlock`` that ComfyUI calls ``key``."""
        name, number, index = key
        stages = getattr(self.diffusion_model, dict(self.STAGES)[name])
        for layer in (stages if name == "middle" else stages[number]):
            if hasattr(layer, "transformer_blocks"):
                return layer.transformer_blocks[index]
        raise KeyError(f"block {key} has no transformer")

    def layers(self, key: BlockKey) -> BlockLayers:
        """The block's ``norm1`` and self-attention projections (looked up once)."""
        if key not in self._layers:
            block = self.transformer_block(key)
            self._layers[key] = BlockLayers(norm1=block.norm1, to_q=block.attn1.to_q, to_k=block.attn1.to_k,
                                            to_v=block.attn1.to_v, to_out=block.attn1.to_out)
        return self._layers[key]

    def channels(self, key: BlockKey) -> int:
        return self.transformer_block(key).norm1.normalized_shape[0]

    def token_grid(self, key: BlockKey, latent_size: tuple[int, int]) -> tuple[int, int]:
        """The block's token grid for a latent of ``latent_size`` ``(h, w)``: a block with
        ``model_channels * 2^k`` channels runs at the latent downsampled ``2^k`` times; the middle
        block at the deepest level (SD1.x's two deepest levels have the same width). Each stride-2
        convolution rounds up, and the up path restores the same sizes."""
        if key[0] == "middle":
            level = len(self.diffusion_model.channel_mult) - 1
        else:
            level = max(0, round(math.log2(self.channels(key) / self.diffusion_model.model_channels)))
        return math.ceil(latent_size[0] / 2 ** level), math.ceil(latent_size[1] / 2 ** level)

    def auto_blocks(self) -> frozenset:
        keys = self.attention_blocks()
        tagged = [key + (self.channels(key),) for key in keys]
        return frozenset(key[:3] for key in default_blocks(tagged, self.diffusion_model.model_channels))

    def resolve_blocks(self, text: str) -> frozenset:
        """The block keys for SCSAInvert's ``blocks`` input (``"auto"`` or e.g. ``"output 6-11"``)."""
        if text.strip().lower() in ("", "auto"):
            return self.auto_blocks()
        keys = self.attention_blocks()
        wanted = parse_blocks(text, [name for name, _ in self.STAGES], example="output 6-11")
        chosen = {key for key in keys if key[:2] in set(wanted)}
        missing = sorted(set(wanted) - {key[:2] for key in chosen})
        if missing:
            available = sorted({f"{k[0]} {k[1]}" for k in keys})
            raise ValueError(f"blocks: {', '.join(f'{n} {i}' for n, i in missing)} has no self-attention in "
                             f"this model. Blocks with self-attention: {', '.join(available)}.")
        return frozenset(chosen)

    def feature_bytes(self, keys, streams: int, latent_size: tuple[int, int], steps: int,
                      dtype: torch.dtype) -> int:
        """Bytes an inversion records: each block's tokens x channels, per stream and step."""
        per_step = sum(math.prod(self.token_grid(key, latent_size)) * self.channels(key) for key in keys)
        return streams * per_step * steps * torch.finfo(dtype).bits // 8

    @staticmethod
    def prepare_conditioning(conditioning):
        return conditioning

    @staticmethod
    def block_key(extra_options: dict) -> BlockKey | None:
        """The block a ComfyUI attention patch is called for, from its ``extra_options``."""
        block = extra_options.get("block")
        if block is None:
            return None
        return (block[0], block[1], extra_options.get("block_index", 0))

    def install(self, model_patcher, blocks) -> None:
        """SCSA's patches on ``model_patcher`` (a clone only the pack's sampler uses) for ``blocks``."""
        AttentionPatch(self).install(model_patcher, sorted(blocks))
