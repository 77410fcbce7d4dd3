"""The attention patch that records features during inversion and injects them during sampling.

How it plugs into ComfyUI's ``BasicTransformerBlock.forward`` (all on a model *clone*):

1. attn1 **replace** on each self-attention block: receives ``q, k, v`` of the current hidden
   state and returns the attention output before ``to_out``.
2. attn1 **output** patch: sees ``to_out(...)``; we stash it in ``extra_options`` (a dict that
   lives for exactly one block call) so that step 3 can recover the block input.
3. **middle** patch: sees ``x_t + to_out(...)``. Subtracting the stash gives the block input
   ``x_t`` (before ``norm1``), which inversion records and SSA needs; SSA's output is added here.
   With recompute storage the references ride in the same batch as the sample, and the whole
   injection happens here, once the references' block inputs are known.

What a call does is decided by the run object a sampler puts in ``transformer_options``
under :data:`RUN_KEY`: :class:`RecordRun` (inversion), :class:`InjectRun` (style sampling), or
nothing: then every patch is a pass-through and attention is ComfyUI's own, so a model patched
by SCSAApply and sampled by a stock KSampler gives the unpatched result.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Hashable

import torch

from comfy.ldm.modules.attention import optimized_attention

from ..scsa_core.attention import pair_labels, styleid_attention
from ..scsa_core.block import (BlockLayers, SCSAParams, fuse, project_references,
                               reference_terms, ssa_output)
from ..scsa_core.features import FeatureBank
from ..scsa_core.labels import SemanticLabels

RUN_KEY = "scsa_run"
_STASH_KEY = "scsa_attn1_output"

BlockKey = tuple  # ("output", 6, 0): ComfyUI's block name, block number, index inside the transformer


def block_key(extra_options: dict) -> BlockKey | None:
    block = extra_options.get("block")
    if block is None:
        return None
    return (block[0], block[1], extra_options.get("block_index", 0))


def transformer_block(diffusion_model: torch.nn.Module, key: BlockKey) -> torch.nn.Module:
    """The ``BasicTransformerBlock`` that ComfyUI calls ``key``."""
    name, number, index = key
    container = {"input": "input_blocks", "output": "output_blocks", "middle": "middle_block"}[name]
    blocks = getattr(diffusion_model, container)
    stage = blocks if name == "middle" else blocks[number]
    for layer in stage:
        if hasattr(layer, "transformer_blocks"):
            return layer.transformer_blocks[index]
    raise KeyError(f"block {key} has no transformer")


def attention_blocks(diffusion_model: torch.nn.Module) -> list[BlockKey]:
    """Every self-attention block of a UNet, as ComfyUI keys, in execution order."""
    keys = []
    for name, container in (("input", "input_blocks"), ("middle", "middle_block"), ("output", "output_blocks")):
        stages = getattr(diffusion_model, container, None)
        if stages is None:
            continue
        for number, stage in enumerate([stages] if name == "middle" else stages):
            for layer in stage:
                for index, block in enumerate(getattr(layer, "transformer_blocks", [])):
                    if getattr(block, "attn1", None) is not None:
                        keys.append((name, 0 if name == "middle" else number, index))
    return keys


def block_layers(module: torch.nn.Module) -> BlockLayers:
    return BlockLayers(norm1=module.norm1, to_q=module.attn1.to_q, to_k=module.attn1.to_k,
                       to_v=module.attn1.to_v, to_out=module.attn1.to_out)


def _plain_attention(q, k, v, extra_options):
    return optimized_attention(q, k, v, extra_options["n_heads"],
                               attn_precision=extra_options.get("attn_precision"),
                               transformer_options=extra_options)


def _cond_rows(extra_options: dict, batch: int) -> slice:
    """Rows of the conditional chunk (inversion runs without CFG, so usually all rows)."""
    chunks = extra_options.get("cond_or_uncond") or [0]
    per_chunk = batch // len(chunks)
    position = chunks.index(0) if 0 in chunks else 0
    return slice(position * per_chunk, (position + 1) * per_chunk)


@dataclass
class RecordRun:
    """Inversion: plain attention, and every recorded block's input goes into ``bank``.

    ``streams``: the bank streams of this batch's rows (None: all of them, in the bank's order),
    so that images of different sizes can be inverted in separate batches into one bank.
    """
    bank: FeatureBank
    blocks: frozenset
    current_t: int = -1
    streams: tuple | None = None

    def set_step(self, t: int) -> None:
        self.current_t = t

    def attn1(self, patch, q, k, v, extra_options):
        return _plain_attention(q, k, v, extra_options)

    def middle(self, patch, x, attn_output, key, extra_options):
        block_input = x - attn_output
        shape = extra_options.get("activations_shape")
        self.bank.record(self.current_t, key, block_input[_cond_rows(extra_options, x.shape[0])],
                         streams=self.streams, grid=None if shape is None else tuple(shape[-2:]))
        return x


@dataclass(frozen=True)
class StyleIDParams:
    gamma: float = 0.75        # share of the content query
    temperature: float = 1.5   # multiplies StyleID's attention logits


@dataclass(frozen=True)
class ApplySettings:
    """What SCSAApply chose: semantics (None = StyleID) and the weights of either method."""
    semantics: SemanticLabels | None
    params: SCSAParams
    styleid: StyleIDParams


def grid_labels(semantics: SemanticLabels, params: SCSAParams, height: int, width: int,
                style_size: tuple[int, int] | None = None):
    """Content labels at an ``height x width`` grid and style labels at ``style_size`` (default:
    the same grid), resampled as the preset says.

    ``official`` resizes the colour maps bilinearly and snaps to the palette (the official
    code's downsampling); ``default`` takes the majority label of each cell.
    """
    mode = "official" if params.preset == "official" else "majority"
    content, style = semantics.labels_at(height, width, mode)
    if style_size is not None and tuple(style_size) != (height, width):
        style = semantics.labels_at(int(style_size[0]), int(style_size[1]), mode)[1]
    return content, style


@dataclass
class InjectRun:
    """Style sampling: SCSA (with semantics) or StyleID injection.

    The references come from ``bank`` and, with ``inline_streams`` (recompute storage), from the
    sampling batch itself: each chunk of the batch is ``[sample rows..., one row per inline
    stream]``, the reference rows run plain attention (as in inversion), and the middle patch
    reads their block inputs and injects into the sample rows of the same call. Reference
    terms depend only on (t, block): they are computed once and shared by every batch row and
    by cond/uncond passes, then dropped when the step changes.
    """
    bank: FeatureBank
    blocks: frozenset
    settings: ApplySettings
    inline_streams: tuple = ()
    current_t: int = -1
    _terms: dict = field(default_factory=dict)
    _labels: dict = field(default_factory=dict)

    def set_step(self, t: int) -> None:
        self.current_t = t
        self._terms.clear()

    def labels_at(self, height: int, width: int, device: torch.device,
                  style_size: tuple[int, int] | None = None):
        """Content labels ``int64 [h*w]`` at the content grid, style labels at ``style_size``
        (default: the same grid) and their pairing (cached)."""
        style_size = (height, width) if style_size is None else tuple(style_size)
        cache_key = (height, width) + style_size
        if cache_key not in self._labels:
            content, style = grid_labels(self.settings.semantics, self.settings.params, height, width,
                                         style_size)
            content, style = content.flatten().to(device), style.flatten().to(device)
            self._labels[cache_key] = (content, style, pair_labels(content, style))
        return self._labels[cache_key]

    def style_grid(self, key, height: int, width: int, style_tokens: int) -> tuple[int, int]:
        """The style's token grid at ``key``: as recorded, else the content grid."""
        grid = self.bank.grid(key, "style") or (height, width)
        if grid[0] * grid[1] != style_tokens:
            raise ValueError(f"block {key}: the style features have {style_tokens} tokens, which is not "
                             f"the {grid[0]} x {grid[1]} grid expected; re-run SCSAInvert")
        return grid

    def _terms_at(self, patch, key, like: torch.Tensor, extra_options, given=None):
        """What injection at ``key`` needs from the references at the current step (cached).

        SCSA: :class:`ReferenceTerms`. StyleID: ``(content_query, style_key, style_value)``.
        ``given``: block inputs of inline streams from the current call.
        """
        if key not in self._terms:
            layers = patch.layers(key)
            refs = self.bank.references(self.current_t, key, like.dtype, like.device, given)
            if self.settings.semantics is None:
                projections = project_references(layers, replace(refs, content_map=None, style_map=None))
                self._terms[key] = (layers.to_q(layers.norm1(refs.content)), projections.style_key,
                                    projections.style_value)
            else:
                height, width = extra_options["activations_shape"][-2:]
                style_size = self.style_grid(key, height, width, refs.style.shape[1])
                content_labels, style_labels, pairing = self.labels_at(height, width, like.device, style_size)
                self._terms[key] = reference_terms(
                    layers, refs, project_references(layers, refs), content_labels, style_labels,
                    pairing, extra_options["n_heads"], self.settings.params)
        return self._terms[key]

    def _styleid(self, query, terms, extra_options):
        content_query, style_key, style_value = terms
        return styleid_attention(query, content_query, style_key, style_value, extra_options["n_heads"],
                                 self.settings.styleid.gamma, self.settings.styleid.temperature)

    def _chunks(self, batch: int, extra_options: dict) -> list[tuple[slice, slice]]:
        """``(sample rows, reference rows)`` of each cond/uncond chunk of the batch: a chunk ends
        with one row per inline stream."""
        chunks = len(extra_options.get("cond_or_uncond") or [0])
        per_chunk = batch // chunks
        samples = per_chunk - len(self.inline_streams)
        return [(slice(start, start + samples), slice(start + samples, start + per_chunk))
                for start in range(0, batch, per_chunk)]

    def attn1(self, patch, q, k, v, extra_options):
        if self.inline_streams:
            # Reference rows: plain attention, exactly as in inversion. Sample rows are
            # injected in the middle patch, which is the first place their block input is known.
            out = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
            for _, rows in self._chunks(q.shape[0], extra_options):
                out[rows] = _plain_attention(q[rows], k[rows], v[rows], extra_options).to(out.dtype)
            return out
        terms = self._terms_at(patch, block_key(extra_options), q, extra_options)
        if self.settings.semantics is None:
            return self._styleid(q, terms, extra_options)
        return terms.sca.expand(q.shape[0], -1, -1)

    def middle(self, patch, x, attn_output, key, extra_options):
        if self.inline_streams:
            return self._inject_inline(patch, x, x - attn_output, key, extra_options)
        if self.settings.semantics is None:
            return x
        terms = self._terms[key]
        layers = patch.layers(key)
        block_input = x - attn_output
        params = self.settings.params
        ssa = layers.to_out(ssa_output(layers, block_input, terms, extra_options["n_heads"], params))
        return fuse(block_input, attn_output, ssa, params)

    def _inject_inline(self, patch, x, block_input, key, extra_options):
        chunks = self._chunks(x.shape[0], extra_options)
        first_references = block_input[chunks[0][1]]
        given = {name: first_references[row:row + 1] for row, name in enumerate(self.inline_streams)}
        terms = self._terms_at(patch, key, x, extra_options, given)
        layers = patch.layers(key)
        out = x.clone()
        for rows, _ in chunks:
            sample_input = block_input[rows]
            if self.settings.semantics is None:
                attention = self._styleid(layers.to_q(layers.norm1(sample_input)), terms, extra_options)
                injected = sample_input + layers.to_out(attention)
            else:
                params = self.settings.params
                ssa = ssa_output(layers, sample_input, terms, extra_options["n_heads"], params)
                injected = fuse(sample_input, layers.to_out(terms.sca), layers.to_out(ssa), params)
            out[rows] = injected.to(out.dtype)
        return out


class AttentionPatch:
    """The three patch functions, bound to one diffusion model.

    Holds no features and no per-run state (those live in the run object), and deep-copies to
    itself, so ``ModelPatcher.clone()`` shares it instead of copying it.
    """

    def __init__(self, diffusion_model: torch.nn.Module, settings: ApplySettings | None = None):
        self.diffusion_model = diffusion_model
        self.settings = settings  # None on inversion's recording clone
        self._layers: dict[Hashable, BlockLayers] = {}

    def __deepcopy__(self, memo):
        return self

    def layers(self, key: BlockKey) -> BlockLayers:
        if key not in self._layers:
            self._layers[key] = block_layers(transformer_block(self.diffusion_model, key))
        return self._layers[key]

    @staticmethod
    def _active(extra_options):
        run = extra_options.get(RUN_KEY)
        key = block_key(extra_options)
        if run is None or key is None or key not in run.blocks:
            return None, key
        return run, key

    def attn1_replace(self, q, k, v, extra_options):
        run, _ = self._active(extra_options)
        if run is None:
            return _plain_attention(q, k, v, extra_options)
        return run.attn1(self, q, k, v, extra_options)

    def attn1_output(self, n, extra_options):
        run, _ = self._active(extra_options)
        if run is not None:
            extra_options[_STASH_KEY] = n
        return n

    def middle(self, x, extra_options):
        run, key = self._active(extra_options)
        attn_output = extra_options.pop(_STASH_KEY, None)
        if run is None or attn_output is None:
            return x
        return run.middle(self, x, attn_output, key, extra_options)

    def install(self, model_patcher, blocks) -> None:
        """Register on ``model_patcher`` (a clone) for every ``(name, number, index)`` in ``blocks``."""
        self.install_attention(model_patcher, blocks)
        model_patcher.set_model_attn1_output_patch(self.attn1_output)
        model_patcher.set_model_patch(self.middle, "middle_patch")

    def install_attention(self, model_patcher, blocks) -> None:
        """Only the attn1 replace, on ``blocks``. SCSAApply installs none (it cannot know the
        blocks, and a replace on every block would shadow other packs' patches of blocks SCSA
        never injects, e.g. SAG/PAG on the middle block); SCSAStyleSampler installs it on a
        clone, on the blocks the inversion recorded."""
        for name, number, index in blocks:
            model_patcher.set_model_attn1_replace(self.attn1_replace, name, number, index)


def find_patch(model_patcher) -> AttentionPatch | None:
    """The AttentionPatch installed on ``model_patcher``, if any."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches", {})
    for fn in patches.get("middle_patch", []):
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, AttentionPatch):
            return owner
    return None


def remove_patches(model_patcher) -> None:
    """Drop every SCSA patch from ``model_patcher`` (a clone), so a fresh one can be installed."""
    options = model_patcher.model_options.setdefault("transformer_options", {})
    patches = options.get("patches", {})
    for name in ("attn1_output_patch", "middle_patch"):
        if name in patches:
            patches[name] = [fn for fn in patches[name]
                             if not isinstance(getattr(fn, "__self__", None), AttentionPatch)]
    replace = options.get("patches_replace", {}).get("attn1", {})
    for key in [k for k, fn in replace.items() if isinstance(getattr(fn, "__self__", None), AttentionPatch)]:
        del replace[key]
