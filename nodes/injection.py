"""The attention patch that records features during inversion and injects them during sampling.

How it plugs into ComfyUI's ``BasicTransformerBlock.forward`` (all on a model *clone*):

1. attn1 **replace** on each recorded block: receives ``q, k, v`` of the current hidden state
   and returns the attention output before ``to_out``.
2. attn1 **output** patch: sees ``to_out(...)``; we stash it in ``extra_options`` (a dict that
   lives for exactly one block call) and hand zeros on, so that ComfyUI's residual add
   ``x = n + x`` leaves the block input ``x_t`` (before ``norm1``) as it is.
3. **middle** patch: sees that exact ``x_t``, which inversion records and injection needs, and
   returns the block's hidden state: ``stash + x_t`` (what ComfyUI would have computed) or the
   injected one.

What a call does is decided by the run object a sampler puts in ``transformer_options``
under :data:`RUN_KEY`: :class:`RecordRun` (inversion), :class:`InjectRun` (style sampling), or
nothing: then every patch is a pass-through and attention is ComfyUI's own.

Injection has one path for stored and recomputed features: the attention of the sample rows
is skipped in step 1, and step 3 replaces their hidden state with the injected one
(``scsa_core.block.inject`` or ``styleid_inject``). With recompute storage the references ride
in the same batch as the sample (each cond/uncond chunk ends with one row per reference
stream): their rows run plain attention, exactly as in inversion, and step 3 reads their block
inputs before injecting into the sample rows of the same call.

When injection acts: the sampling loop tells the :class:`InjectRun` each step's index before
the step (``begin_step``), and the run takes that step's strength from the table SCSAApply's
timing gives (``scsa_core.schedules.injection_strengths``). At strength 0 (outside the window)
the run sits the step out: every patch passes through, so the step is exactly an un-injected
one. Between 0 and 1 the sample rows also run plain attention, and step 3 keeps its share.

SCSAApply's choices reach the sampler as a ModelPatcher attachment (:data:`SETTINGS_KEY`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from comfy.ldm.modules.attention import optimized_attention

from ..scsa_core.attention import pair_labels
from ..scsa_core.block import (SCSAParams, inject, project_references, reference_terms, styleid_inject,
                               styleid_terms)
from ..scsa_core.joint_attention import JointReferences, scsa_joint_attention
from ..scsa_core.rope import shift_keys
from ..scsa_core.features import FeatureBank
from ..scsa_core.labels import SemanticLabels
from ..scsa_core.presets import label_resampling
from ..scsa_core.schedules import InjectionTiming
from ..scsa_core.styles import MAP_OF, STYLE_IMAGES

RUN_KEY = "scsa_run"

log = logging.getLogger("scsa")


class InjectionLost(RuntimeError):
    """Sampling reached a step that should inject, and an injected block's attention never reached SCSA."""


SKIPPING_CACHES_KEY = "scsa_skipping_caches"


def skipping_caches(model_patcher) -> tuple[str, ...]:
    """The caches on ``model_patcher`` that may skip whole model calls or blocks (ComfyUI's EasyCache
    and LazyCache, TeaCache, First Block Cache, ...): a skipped call never reaches SCSA's hooks.
    Found by what they register: a holder in ``transformer_options`` (named by its ``name``),
    wrappers, a model function wrapper or object patches whose key or function says "cache"."""
    options = model_patcher.model_options
    found = [getattr(value, "name", None) or key for key, value in options.get("transformer_options", {}).items()
             if "cache" in str(key).lower() and key != SKIPPING_CACHES_KEY]
    for kind in getattr(model_patcher, "wrappers", {}).values():
        found += [key for key, wrappers in kind.items() if "cache" in str(key).lower()]
    functions = [options.get("model_function_wrapper"), *getattr(model_patcher, "object_patches", {}).values()]
    for function in functions:
        name = f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', '')}"
        if function is not None and "cache" in name.lower():
            found.append(name.strip("."))
    unique = {}
    for name in found:
        unique.setdefault(name.lower(), name)
    return tuple(unique.values())


def note_skipping_caches(model_patcher) -> None:
    """Warn about block-skipping caches on the model SCSA is installed on, and leave their names
    where the run finds them (:data:`SKIPPING_CACHES_KEY`), for :class:`InjectionLost` to name."""
    caches = skipping_caches(model_patcher)
    if not caches:
        return
    log.warning("SCSA: %s on this model can skip model calls or blocks, and a skipped injected block is not "
                "styled: SCSAStyleSampler stops (InjectionLost) when that happens. Give SCSA a model without the "
                "cache, or let the cache start after SCSAApply's end.", ", ".join(caches))
    model_patcher.model_options.setdefault("transformer_options", {})[SKIPPING_CACHES_KEY] = caches


SETTINGS_KEY = "scsa_settings"
_STASH_KEY = "scsa_attn1_output"


@dataclass(frozen=True)
class StyleIDParams:
    gamma: float = 0.75        # share of the content query
    temperature: float = 1.5   # multiplies StyleID's attention logits


@dataclass(frozen=True)
class ApplySettings:
    """What SCSAApply chose: semantics (None = StyleID), the weights of either method, and when
    injection acts (default: every step at full strength)."""
    semantics: SemanticLabels | None
    params: SCSAParams
    styleid: StyleIDParams
    timing: InjectionTiming = InjectionTiming()
    rope_mode: str = "shift"   # DiTs with RoPE: where the style's keys sit (scsa_core.rope.ROPE_MODES)


def apply_settings(model_patcher) -> ApplySettings | None:
    """The settings SCSAApply attached to this model (or a clone of it), else None."""
    return model_patcher.get_attachment(SETTINGS_KEY)


def check_style_count(semantics: SemanticLabels, style_images: int) -> None:
    """One style map per inverted style image, else a ValueError that says how to connect them."""
    if semantics.num_styles != style_images:
        raise ValueError(f"semantics: the semantic pair has {semantics.num_styles} style map(s) but "
                         f"SCSAInvert inverted {style_images} style image(s). Give SCSASemanticPair one style "
                         "map per style image, in the same order (style_map, style_map_2, ...).")


def grid_labels(semantics: SemanticLabels, params: SCSAParams, height: int, width: int,
                style_grids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Content labels ``int64 [height, width]`` and the labels of every style's tokens at its
    grid, side by side as the keys are (``int64 [sum h_s * w_s]``); ``style_grids``: one
    ``(h, w)`` per style image (default: the content grid for each).

    The preset decides how (``scsa_core.presets.label_resampling``): ``official`` resizes the
    colour maps bilinearly and snaps to the palette (the official code's downsampling);
    ``default`` takes the majority label of each cell.
    """
    mode = label_resampling(params.preset)
    grids = list(style_grids) if style_grids is not None else [(height, width)] * semantics.num_styles
    check_style_count(semantics, len(grids))
    content = semantics.content_labels_at(height, width, mode)
    styles = [semantics.style_labels_at(index, int(h), int(w), mode).flatten() for index, (h, w) in enumerate(grids)]
    return content, styles[0] if len(styles) == 1 else torch.cat(styles)


def _plain_attention(q, k, v, extra_options):
    return optimized_attention(q, k, v, extra_options["n_heads"],
                               attn_precision=extra_options.get("attn_precision"),
                               transformer_options=extra_options)


def chunk_rows(batch: int, extra_options: dict, references_per_chunk: int = 0) -> list[tuple[slice, slice]]:
    """``(sample rows, reference rows)`` of each cond/uncond chunk of a model call's batch.

    ComfyUI stacks one chunk per entry of ``cond_or_uncond``; a sampler that lets references
    ride along puts them at the end of every chunk (``references_per_chunk`` rows).
    """
    chunks = len(extra_options.get("cond_or_uncond") or [0])
    per_chunk = batch // chunks
    samples = per_chunk - references_per_chunk
    return [(slice(start, start + samples), slice(start + samples, start + per_chunk))
            for start in range(0, batch, per_chunk)]


def cond_rows(batch: int, extra_options: dict) -> slice:
    """Rows of the conditional chunk (inversion runs without CFG, so usually all rows)."""
    chunks = extra_options.get("cond_or_uncond") or [0]
    samples, _ = chunk_rows(batch, extra_options)[chunks.index(0) if 0 in chunks else 0]
    return samples


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

    def after_call(self) -> None:
        """A model call ended (nothing to check: inversion records where it can)."""

    def acts_on(self, key) -> bool:
        return key in self.blocks

    def attn1(self, patch, q, k, v, extra_options):
        return _plain_attention(q, k, v, extra_options)

    def middle(self, patch, block_input, attn_output, key, extra_options):
        shape = extra_options.get("activations_shape")
        self.bank.record(self.current_t, key, block_input[cond_rows(block_input.shape[0], extra_options)],
                         streams=self.streams, grid=None if shape is None else tuple(shape[-2:]))
        return attn_output + block_input


class SCSAInjection:
    """SCSA's terms and injection for one block (label-grouped SCA and SSA)."""

    def __init__(self, settings: ApplySettings):
        self.semantics, self.params = settings.semantics, settings.params
        self._labels: dict = {}

    def _labels_at(self, content_grid: tuple[int, int], style_grids: tuple, device):
        """Content labels ``int64 [h*w]``, style labels (every style's, side by side) and their
        pairing, per grid set (cached)."""
        cache_key = (tuple(content_grid), tuple(style_grids))
        if cache_key not in self._labels:
            content, style = grid_labels(self.semantics, self.params, *content_grid, style_grids)
            content, style = content.flatten().to(device), style.to(device)
            self._labels[cache_key] = (content, style, pair_labels(content, style))
        return self._labels[cache_key]

    def terms(self, layers, refs, content_grid, style_grids, heads):
        content, style, pairing = self._labels_at(content_grid, style_grids, refs.content.device)
        return reference_terms(layers, refs, project_references(layers, refs), content, style, pairing,
                               heads, self.params)

    def inject(self, layers, block_input, terms, heads, strength=1.0, plain_projected=None):
        return inject(layers, block_input, terms, heads, self.params, strength, plain_projected)


class StyleIDInjection:
    """StyleID's terms and injection for one block (no semantics)."""

    def __init__(self, settings: ApplySettings):
        self.params = settings.styleid

    def terms(self, layers, refs, content_grid, style_grids, heads):
        return styleid_terms(layers, refs)

    def inject(self, layers, block_input, terms, heads, strength=1.0, plain_projected=None):
        return styleid_inject(layers, block_input, terms, heads, self.params.gamma, self.params.temperature,
                              strength, plain_projected)


def injection_for(settings: ApplySettings) -> SCSAInjection | StyleIDInjection:
    return StyleIDInjection(settings) if settings.semantics is None else SCSAInjection(settings)


@dataclass
class InjectRun:
    """Style sampling: the sample rows' self-attention is replaced by SCSA or StyleID injection.

    The references come from ``bank`` and, with ``inline_streams`` (recompute storage), from the
    sampling batch itself (see the module docstring). Reference terms depend only on
    (t, block): they are computed once and shared by every batch row and by cond/uncond
    passes, then dropped when the step changes.

    ``strengths``: the injection strength of each sampling step, by step index
    (``InjectionTiming.strengths``); empty: full strength at every step.
    """
    bank: FeatureBank
    blocks: frozenset
    settings: ApplySettings
    inline_streams: tuple = ()
    strengths: tuple = ()
    latent_size: tuple = ()   # (H, W) of the content latent: a DiT's token grid comes from it
    current_t: int = -1
    strength: float = 1.0
    _terms: dict = field(default_factory=dict)
    _reached: set = field(default_factory=set)   # injected blocks reached since the last model call ended
    _caches: tuple = ()   # block-skipping caches on the model (note_skipping_caches), for InjectionLost
    style_streams: list = field(init=False)   # the style images' streams in style order (bank or batch)

    def __post_init__(self):
        self.injection = injection_for(self.settings)
        held = set(self.bank.streams) | set(self.inline_streams)
        self.style_streams = [name for name in STYLE_IMAGES if name in held]

    def begin_step(self, index: int) -> None:
        """The sampling loop is about to run step ``index`` (0-based) of its schedule."""
        if self.strengths:
            if not 0 <= index < len(self.strengths):
                raise IndexError(f"step {index} is outside the {len(self.strengths)} steps this run was made for")
            self.strength = self.strengths[index]

    @property
    def injecting(self) -> bool:
        """False on a step outside the window: it runs plain attention and needs no references."""
        return self.strength > 0.0

    def acts_on(self, key) -> bool:
        return self.injecting and key in self.blocks

    def sample_rows(self, batch: int, transformer_options: dict) -> list[int] | None:
        """The sample rows of a call whose batch carries references (recompute storage, an
        injecting step), else None: no rows to leave out."""
        if not (self.injecting and self.inline_streams):
            return None
        return [row for samples, _ in chunk_rows(batch, transformer_options, len(self.inline_streams))
                for row in range(samples.start, samples.stop)]

    def set_step(self, t: int) -> None:
        self.current_t = t
        self._terms.clear()

    def _reach(self, key, options: dict) -> None:
        self._reached.add(key)
        self._caches = options.get(SKIPPING_CACHES_KEY, ())

    def after_call(self) -> None:
        """A model call of an injecting step ended: it must have reached SCSA in every injected
        block. If it did not, a cache skipped the call or the blocks (EasyCache, TeaCache, First
        Block Cache), a node replaced SCSA's attention hook while sampling, or the model does not
        say which block runs: stop, instead of returning a plain image as a styled one."""
        reached, self._reached = self._reached, set()
        if not (self.injecting and self.blocks):   # a run with no injected block has nothing to lose
            return
        caches = f" {', '.join(self._caches)} on this model skips model calls or blocks: give SCSA a model " \
                 "without it, or let it start after SCSAApply's end." if self._caches else ""
        if not reached:
            raise InjectionLost(
                "SCSA injected nothing in this sampling step: no attention call of the injected blocks reached it." +
                (caches or " A cache skipped the model call (EasyCache, TeaCache, First Block Cache, ...), a node "
                 "replaced SCSA's attention hook while sampling, or this ComfyUI's model does not publish which "
                 "block runs (update ComfyUI: Z-Image needs a version newer than 0.3.75)."))
        missing = sorted(self.blocks - reached)
        if missing:
            raise InjectionLost(
                f"SCSA injected into only part of the blocks in this sampling step: {', '.join(map(str, missing))} "
                "never reached it." + (caches or " A node skipped those blocks (a First Block Cache style cache?)."))

    def style_grids(self, key, content_grid: tuple[int, int], style_tokens: int) -> tuple:
        """Each style's token grid at ``key``: as recorded, else the content grid (a style that
        rides in the sampling batch has the content's size)."""
        grids = tuple(self.bank.grid(key, name) or tuple(content_grid) for name in self.style_streams)
        if sum(h * w for h, w in grids) != style_tokens:
            raise ValueError(f"block {key}: the style features have {style_tokens} tokens, which is not "
                             f"the {' + '.join(f'{h} x {w}' for h, w in grids)} grid(s) expected; re-run SCSAInvert")
        return grids

    def attn1(self, patch, q, k, v, extra_options):
        if self.strength < 1.0:
            # Every row needs plain attention: the references' rows as always, and the sample
            # rows keep a share 1 - strength of theirs (the middle patch blends it in).
            return _plain_attention(q, k, v, extra_options)
        # Sample rows: nothing to compute here, the middle patch replaces their hidden state.
        out = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
        for _, rows in chunk_rows(q.shape[0], extra_options, len(self.inline_streams)):
            if rows.stop > rows.start:
                out[rows] = _plain_attention(q[rows], k[rows], v[rows], extra_options).to(out.dtype)
        return out

    def middle(self, patch, block_input, attn_output, key, extra_options):
        self._reach(key, extra_options)
        chunks = chunk_rows(block_input.shape[0], extra_options, len(self.inline_streams))
        if key not in self._terms:
            first_references = block_input[chunks[0][1]]
            given = {name: first_references[row:row + 1] for row, name in enumerate(self.inline_streams)}
            refs = self.bank.references(self.current_t, key, block_input.dtype, block_input.device, given)
            content_grid = tuple(extra_options["activations_shape"][-2:])
            self._terms[key] = self.injection.terms(
                patch.family.layers(key), refs, content_grid,
                self.style_grids(key, content_grid, refs.style.shape[1]), extra_options["n_heads"])
        layers = patch.family.layers(key)
        out = attn_output + block_input  # the reference rows, as ComfyUI computes them
        for samples, _ in chunks:
            # attn_output holds to_out(plain attention) of the sample rows only when strength < 1
            plain_projected = None if self.strength == 1.0 else attn_output[samples]
            injected = self.injection.inject(layers, block_input[samples], self._terms[key], extra_options["n_heads"],
                                             self.strength, plain_projected)
            out[samples] = injected.to(out.dtype)
        return out


    def _joint_labels(self, grid: tuple[int, int], styles: int, device):
        """Content labels ``[h*w]``, every style's labels side by side, and their pairing; without
        semantics one label covers every token (SCSA over the whole image)."""
        if self.settings.semantics is not None:
            return self.injection._labels_at(grid, (grid,) * styles, device)
        content = torch.zeros(grid[0] * grid[1], dtype=torch.long, device=device)
        style = torch.zeros(styles * grid[0] * grid[1], dtype=torch.long, device=device)
        return content, style, pair_labels(content, style)

    def joint_attention(self, family, pass_through, q, k, v, mask, transformer_options: dict, key):
        """One attention call of an injected DiT block (the override ``family.install`` puts in).

        ``q, k, v`` ``[B, H, L, D]`` (RoPE applied where the model has it), ``mask`` the call's
        attention mask (None, or one over keys). Every row runs the model's own attention first
        (``pass_through()``, which chains to other packs' overrides: ``[B, L, H * D]``); then the
        image-query rows of each sample are replaced by SCSA over the reference rows riding in
        the same call. Where the image tokens sit is the family's (``family.image_tokens``); every
        other token of the sample (text, padding, edit references) stays a key of the image
        queries. Text queries, and the reference rows, keep what the model computed.
        """
        self._reach(key, transformer_options)
        output = pass_through()
        batch, heads, length, dim = q.shape
        grid = family.token_grid(self.latent_size)
        image = family.image_tokens(length, grid, transformer_options)
        tokens = grid[0] * grid[1]
        if image.start < 0 or output.shape[1] != length:
            raise ValueError(f"block {key}: {length} tokens cannot hold the {grid[0]} x {grid[1]} image grid of this "
                             "latent; the model's token layout is not what SCSA expects (other tokens appended?)")
        context = torch.cat([torch.arange(0, image.start), torch.arange(image.stop, length)]).to(q.device)
        keep = _context_keys_kept(mask, batch, length, context)
        chunks = chunk_rows(batch, transformer_options, len(self.inline_streams))
        reference_start = chunks[0][1].start
        row_of = {name: reference_start + row for row, name in enumerate(self.inline_streams)}
        rope = family.rope()
        offset = family.style_key_offset(self.latent_size)

        def positioned(stream):   # [H, M, D] keys of a style-side stream, moved as rope_mode says
            keys = k[row_of[stream]:row_of[stream] + 1, :, image]
            return keys[0] if rope is None else shift_keys(keys, offset, *rope, self.settings.rope_mode)[0]

        styles = self.style_streams
        maps = [MAP_OF[name] for name in styles]
        lite = not all(name in row_of for name in maps) or self.settings.params.semantic_share == 0
        refs = JointReferences(
            content_query=q[row_of["content"], :, image],
            style_query=torch.cat([q[row_of[name], :, image] for name in styles], dim=1),
            style_key=torch.cat([positioned(name) for name in styles], dim=1),
            style_value=torch.cat([v[row_of[name], :, image] for name in styles], dim=1),
            content_map_query=None if lite else q[row_of["content_map"], :, image],
            style_map_key=None if lite else torch.cat([positioned(name) for name in maps], dim=1))
        content_labels, style_labels, pairing = self._joint_labels(grid, len(styles), q.device)
        # Rows whose masks differ keep different context keys: one SCSA call per row then.
        groups = [[samples] for samples, _ in chunks] if keep is None else \
            [[slice(row, row + 1) for row in range(samples.start, samples.stop)] for samples, _ in chunks]
        for rows in (rows for group in groups for rows in group):
            count = rows.stop - rows.start
            kept = context if keep is None else context[keep[rows.start]]
            plain_image = output[rows, image].reshape(count, tokens, heads, dim).transpose(1, 2)
            injected = scsa_joint_attention(q[rows, :, image], k[rows][:, :, kept], v[rows][:, :, kept], refs,
                                            content_labels, style_labels, pairing, self.settings.params, lite=lite,
                                            strength=self.strength, plain_output=plain_image)
            output[rows, image] = injected.transpose(1, 2).reshape(count, tokens, heads * dim).to(output.dtype)
        return output


def _context_keys_kept(mask, batch: int, length: int, context: torch.Tensor) -> torch.Tensor | None:
    """Which context keys (``context``: token indices) each row may attend to, ``bool [batch,
    len(context)]``, from an attention call's mask; None: no mask, all of them. A mask must be one
    over keys (the same for every query: padding of the text), boolean or 0 / -large additive."""
    if mask is None:
        return None
    if mask.dim() >= 2 and mask.shape[-2] != 1:
        raise ValueError("SCSA cannot inject into an attention call whose mask differs per query; set SCSAApply's "
                         "end to 0 for this model, or remove the node that adds the mask")
    if mask.dtype == torch.bool:
        keep = mask
    else:
        keep = mask == 0
        if not bool(((mask == 0) | (mask < -1e4)).all()):
            raise ValueError("SCSA cannot inject into an attention call with an additive attention bias (only "
                             "padding masks); remove the node that adds the bias, or set SCSAApply's end to 0")
    if keep.shape[-1] != length:
        raise ValueError(f"SCSA: an attention mask over {keep.shape[-1]} keys in a call of {length} tokens")
    return keep.reshape(-1, length).expand(batch, length)[:, context]


class AttentionPatch:
    """The three patch functions, bound to one diffusion model.

    Holds no features and no per-run state (those live in the run object), and deep-copies to
    itself, so ``ModelPatcher.clone()`` shares it instead of copying it.

    Other packs' patches on the same model (ComfyUI's HyperTile and ToMe, NAG, sentinels) see what
    they would see without SCSA (see :meth:`install`): their attn1 patches run first, the
    attention of every row is computed (through the attn1 replace another pack set on the block
    before SCSA, if any), their attn1 output patches see it, SCSA's output patch runs last and
    its middle patch first, so it reads the exact block input and the other middle patches read
    the hidden state SCSA made of it.
    """

    def __init__(self, family):
        self.family = family   # a UNet family: block keys and each block's layers
        self.others: tuple = ()   # other packs' attn1 / attn1 output patches on the model (see install)
        self.replaced: dict = {}  # block key -> the attn1 replace another pack set there before SCSA

    def __deepcopy__(self, memo):
        return self

    def _active(self, extra_options):
        run = extra_options.get(RUN_KEY)
        key = self.family.block_key(extra_options)
        if run is None or key is None or not run.acts_on(key):
            return None, key
        return run, key

    def attn1_replace(self, q, k, v, extra_options):
        run, key = self._active(extra_options)
        if run is None or self.others:
            # The block's own attention for every row: SCSA's middle patch reads only the block
            # input, and other packs' patches see the real attention output in their layout.
            previous = self.replaced.get(key)
            return previous(q, k, v, extra_options) if previous is not None else \
                _plain_attention(q, k, v, extra_options)
        return run.attn1(self, q, k, v, extra_options)

    def attn1_output(self, n, extra_options):
        run, _ = self._active(extra_options)
        if run is None:
            return n
        extra_options[_STASH_KEY] = n
        return torch.zeros_like(n)

    def middle(self, x, extra_options):
        run, key = self._active(extra_options)
        attn_output = extra_options.pop(_STASH_KEY, None)
        if run is None or attn_output is None:
            return x
        return run.middle(self, x, attn_output, key, extra_options)

    def install(self, model_patcher, blocks) -> None:
        """Register on ``model_patcher`` (a clone that only the sampler uses, so every patch an
        artist's graph set, before or after SCSAApply, is already there) for ``blocks``
        ``(name, number, index)``. Only those blocks get a replace: a replace on every block
        would shadow other packs' patches of blocks SCSA never touches (SAG/PAG on the middle
        block, ...).

        ComfyUI calls each patch list in the order the patches were set. SCSA's output patch is
        the last (it stashes the attention output and hands zeros on, so that the residual add
        leaves the block input as it is) and its middle patch is put first (it reads that block
        input and returns ``stash + input``, or the injected hidden state, to the middle patches
        after it). With another attn1 or attn1 output patch on the model (HyperTile, ToMe, NAG),
        the sample rows' attention is computed too, instead of skipped. An attn1 replace another
        pack set on an injected block runs wherever SCSA does not inject."""
        options = model_patcher.model_options.get("transformer_options", {})
        patches = options.get("patches", {})
        replaced = options.get("patches_replace", {}).get("attn1", {})
        self.replaced = {key: found for key in map(tuple, blocks)
                         if (found := replaced.get(key, replaced.get(key[:2]))) is not None}
        self.others = tuple(patch for name in ("attn1_patch", "attn1_output_patch")
                            for patch in patches.get(name, ())) + tuple(self.replaced.values())
        note_skipping_caches(model_patcher)
        for name, number, index in blocks:
            model_patcher.set_model_attn1_replace(self.attn1_replace, name, number, index)
        model_patcher.set_model_attn1_output_patch(self.attn1_output)
        model_patcher.set_model_patch(self.middle, "middle_patch")
        patches = model_patcher.model_options["transformer_options"]["patches"]
        patches["middle_patch"] = [self.middle] + patches["middle_patch"][:-1]
