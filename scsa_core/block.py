"""One SCSA attention call in an injected transformer block (docs/method.md §7).

The work splits in two, because half of it never reads the current latent:

* :func:`reference_terms` depends only on the inversion features recorded at this timestep
  (content, style, content map, style map block inputs): the SCA output, SSA's content query
  and the style keys/values. A sampler computes it once per (step, block) and shares it
  across the batch and the cond/uncond passes.
* :func:`ssa_output` mixes in the current block input ``x_t`` and picks, per head, the best
  same-label style token.

:func:`inject` assembles the block's new hidden state ``x_t + t1 * O1 + t2 * O2`` where
``O = to_out(.)``: the one place that does, for the sampler (stored or recomputed references),
the tests and the benchmark. :func:`scsa_block` runs the whole call.

StyleID (no semantics) has the same two halves: :func:`styleid_terms` from the references,
:func:`styleid_inject` for the current latent.

Injection strength (``scsa_core.schedules.injection_strengths``): at strength ``s`` a share
``s`` of the block's self-attention output is the injected one and ``1 - s`` the model's own
(``plain_projected = to_out(softmax(q k^T) v)`` of ``x_t``), so ``s = 1`` is the papers'
injection, computed exactly as without a schedule, and ``s = 0`` is plain attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .adain import instance_normalize, semantic_adain
from .attention import (LabelPairing, semantic_continuous_attention, semantic_sparse_attention,
                        styleid_attention)
from .presets import check_preset

__all__ = ["SCSAParams", "BlockLayers", "ReferenceInputs", "ReferenceProjections",
           "ReferenceTerms", "project_references", "reference_terms", "ssa_output", "fuse", "inject",
           "scsa_block", "StyleIDTerms", "styleid_terms", "styleid_inject"]

Layer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SCSAParams:
    """SCSA hyper-parameters; defaults are the official diffusion-variant values."""
    preset: str = "default"
    sca_weight: float = 0.8       # t1
    ssa_weight: float = 0.2       # t2
    semantic_share: float = 0.3   # a1: share of the semantic-map query/key in SCA
    content_share: float = 0.5    # a2: share of the S-AdaIN content query in SSA
    temperature: float = 1.2      # T: multiplies SCA logits (SSA's argmax ignores it)

    def __post_init__(self):
        check_preset(self.preset)

    @property
    def unmatched(self) -> str:
        return "official" if self.preset == "official" else "all"


@dataclass(frozen=True)
class BlockLayers:
    """The block's own layers, each ``[B, N, C] -> [B, N, C]``: ``norm1`` and attn1's projections."""
    norm1: Layer
    to_q: Layer
    to_k: Layer
    to_v: Layer
    to_out: Layer


@dataclass(frozen=True)
class ReferenceInputs:
    """Block inputs (before ``norm1``) recorded by the inversions at the current timestep.

    ``content``: ``[1, N, C]``; ``style``: ``[1, M, C]``; the semantic-map inputs have the same
    shapes as content and style and may be None when ``semantic_share == 0``.
    """
    content: torch.Tensor
    style: torch.Tensor
    content_map: torch.Tensor | None = None
    style_map: torch.Tensor | None = None


@dataclass(frozen=True)
class ReferenceProjections:
    """The projections SCSA reads from the references; see :func:`project_references`."""
    style_key: torch.Tensor                     # [1, M, C] W_k(LN1(style))
    style_value: torch.Tensor                   # [1, M, C] W_v(LN1(style))
    content_map_query: torch.Tensor | None      # [1, N, C] W_q(LN1(content_map))
    style_map_key: torch.Tensor | None          # [1, M, C] W_k(LN1(style_map))


@dataclass(frozen=True)
class ReferenceTerms:
    """What one SCSA call needs that does not depend on the current latent."""
    sca: torch.Tensor                  # [1, N, C] SCA output before to_out
    ssa_content_query: torch.Tensor    # [1, N, C] W_q(LN1(S-AdaIN(content, style)))
    style_key: torch.Tensor            # [1, M, C]
    style_value: torch.Tensor          # [1, M, C]
    pairing: LabelPairing


def project_references(layers: BlockLayers, refs: ReferenceInputs) -> ReferenceProjections:
    """Style keys/values and the semantic-map query/key from recorded block inputs."""
    style_normed = layers.norm1(refs.style)
    map_query = None if refs.content_map is None else layers.to_q(layers.norm1(refs.content_map))
    map_key = None if refs.style_map is None else layers.to_k(layers.norm1(refs.style_map))
    return ReferenceProjections(layers.to_k(style_normed), layers.to_v(style_normed),
                                map_query, map_key)


def reference_terms(layers: BlockLayers, refs: ReferenceInputs, projections: ReferenceProjections,
                    content_labels: torch.Tensor, style_labels: torch.Tensor,
                    pairing: LabelPairing, heads: int, params: SCSAParams) -> ReferenceTerms:
    """SCA output and SSA's latent-independent inputs.

    content_labels: ``int64 [N]``, style_labels: ``int64 [M]`` at this block's grid;
    ``pairing = pair_labels(content_labels, style_labels)``.
    """
    a1 = params.semantic_share
    restyled = semantic_adain(refs.content, refs.style, content_labels, style_labels)
    content_query = layers.to_q(layers.norm1(restyled))
    sca_query, sca_key = content_query, projections.style_key
    if a1 != 0.0:
        if projections.content_map_query is None or projections.style_map_key is None:
            raise ValueError("semantic_share > 0 needs the content-map and style-map features: "
                             "connect both semantic map latents to SCSAInvert, or set semantic_share to 0")
        sca_query = a1 * projections.content_map_query + (1 - a1) * content_query
        sca_key = a1 * projections.style_map_key + (1 - a1) * sca_key
    sca = semantic_continuous_attention(sca_query, sca_key, projections.style_value, pairing,
                                        heads, params.temperature, params.unmatched)

    ssa_content_query = content_query
    if params.preset == "official":
        # The official code writes the first S-AdaIN back in place, so SSA sees it applied twice.
        restyled = semantic_adain(restyled, refs.style, content_labels, style_labels)
        ssa_content_query = layers.to_q(layers.norm1(restyled))
    return ReferenceTerms(sca, ssa_content_query, projections.style_key,
                          projections.style_value, pairing)


def ssa_output(layers: BlockLayers, x_t: torch.Tensor, terms: ReferenceTerms, heads: int,
               params: SCSAParams) -> torch.Tensor:
    """SSA output before ``to_out`` for the current block input ``x_t`` ``[B, N, C]``."""
    a2 = params.content_share
    query = a2 * terms.ssa_content_query + (1 - a2) * layers.to_q(instance_normalize(x_t))
    return semantic_sparse_attention(query, terms.style_key, terms.style_value, terms.pairing,
                                     heads, params.unmatched)


def _check_strength(strength: float, plain_projected: torch.Tensor | None) -> None:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"injection strength must be in [0, 1], got {strength}")
    if strength != 1.0 and plain_projected is None:
        raise ValueError(f"injection strength {strength} < 1 keeps a share of the plain attention: "
                         "pass plain_projected")


def _add_plain_share(hidden: torch.Tensor, strength: float,
                     plain_projected: torch.Tensor | None) -> torch.Tensor:
    """``hidden + (1 - s) O_plain``. At full strength nothing is added (and ``plain_projected``
    may be None), so ``s = 1`` is computed exactly as the papers' injection."""
    return hidden if strength == 1.0 else hidden + (1.0 - strength) * plain_projected


def fuse(x_t: torch.Tensor, sca_projected: torch.Tensor, ssa_projected: torch.Tensor,
         params: SCSAParams, strength: float = 1.0,
         plain_projected: torch.Tensor | None = None) -> torch.Tensor:
    """The block's hidden state after SCSA self-attention at injection ``strength`` ``s``:

    ``x_t + s t1 O1 + s t2 O2 + (1 - s) O_plain``: the SCA and SSA weights scaled by ``s``, the
    rest of the attention output left to the model's own (``plain_projected``, needed when
    ``s < 1``). At ``s = 1`` this is ``x_t + t1 O1 + t2 O2``, computed exactly as the papers'.
    """
    _check_strength(strength, plain_projected)
    # strength * weight is the weight itself at s = 1 (multiplying by 1.0 is exact)
    hidden = (x_t + (strength * params.sca_weight) * sca_projected
              + (strength * params.ssa_weight) * ssa_projected)
    return _add_plain_share(hidden, strength, plain_projected)


def inject(layers: BlockLayers, x_t: torch.Tensor, terms: ReferenceTerms, heads: int,
           params: SCSAParams, strength: float = 1.0,
           plain_projected: torch.Tensor | None = None) -> torch.Tensor:
    """The block's hidden state after SCSA self-attention, for block inputs ``x_t`` ``[B, N, C]``
    (``strength`` and ``plain_projected``: see :func:`fuse`)."""
    sca_projected = layers.to_out(terms.sca)
    ssa_projected = layers.to_out(ssa_output(layers, x_t, terms, heads, params))
    return fuse(x_t, sca_projected, ssa_projected, params, strength, plain_projected)


def scsa_block(layers: BlockLayers, x_t: torch.Tensor, refs: ReferenceInputs,
               content_labels: torch.Tensor, style_labels: torch.Tensor, pairing: LabelPairing,
               heads: int, params: SCSAParams) -> torch.Tensor:
    """The whole SCSA self-attention step of one block: ``[B, N, C] -> [B, N, C]``."""
    terms = reference_terms(layers, refs, project_references(layers, refs), content_labels,
                            style_labels, pairing, heads, params)
    return inject(layers, x_t, terms, heads, params)


@dataclass(frozen=True)
class StyleIDTerms:
    """What StyleID's injection reads from the references at one (step, block)."""
    content_query: torch.Tensor   # [1, N, C] W_q(LN1(content))
    style_key: torch.Tensor       # [1, M, C] W_k(LN1(style))
    style_value: torch.Tensor     # [1, M, C] W_v(LN1(style))


def styleid_terms(layers: BlockLayers, refs: ReferenceInputs) -> StyleIDTerms:
    """StyleID's reference projections (the semantic maps play no part)."""
    style_normed = layers.norm1(refs.style)
    return StyleIDTerms(layers.to_q(layers.norm1(refs.content)), layers.to_k(style_normed),
                        layers.to_v(style_normed))


def styleid_inject(layers: BlockLayers, x_t: torch.Tensor, terms: StyleIDTerms, heads: int,
                   gamma: float, temperature: float, strength: float = 1.0,
                   plain_projected: torch.Tensor | None = None) -> torch.Tensor:
    """The block's hidden state after StyleID self-attention at injection ``strength`` ``s``:
    ``x_t + s to_out(attention) + (1 - s) O_plain`` (``x_t + to_out(attention)`` at ``s = 1``).

    ``gamma`` and ``temperature`` stay as given at every strength: the strength decides how much
    of StyleID's attention output replaces the model's own, not how StyleID attends.
    """
    _check_strength(strength, plain_projected)
    query = layers.to_q(layers.norm1(x_t))
    attention = styleid_attention(query, terms.content_query, terms.style_key, terms.style_value, heads,
                                  gamma, temperature)
    injected = layers.to_out(attention)
    if strength != 1.0:
        injected = strength * injected
    return _add_plain_share(x_t + injected, strength, plain_projected)
