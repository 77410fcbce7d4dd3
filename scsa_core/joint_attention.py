"""SCSA on one DiT joint-attention call (docs/method.md §14), per label, without an N x N mask.

In a DiT block (Flux double/single blocks, SD3 joint blocks) every token attends over the
concatenation ``[text ; image]``. SCSA replaces only the sample's *image queries*: each attends
to the sample's own text keys/values and, instead of the sample's image tokens, to the style's
image tokens of its own label. Text queries and every reference row are left to the model.

For an image query ``i`` of label ``c`` and a head (``d`` = head dim, ``T`` = temperature):

* SCA: ``softmax([q1 . K_txt ; T * q1 . K1[label == c]] / sqrt(d))`` over ``[V_txt ; V_s[label == c]]``;
* SSA: the same joint softmax with the style part reduced to the one key
  ``j* = argmax_{j : label_j == c} q2 . K_s[j]`` (per head, ties to the lowest index):
  ``softmax([q2 . K_txt ; T * q2 . K_s[j*]] / sqrt(d))`` over ``[V_txt ; V_s[j*]]``;
* ``out = t1 * O_sca + t2 * O_ssa`` (at strength ``s < 1``: ``s t1 O_sca + s t2 O_ssa + (1 - s) O_plain``),
  written into the image rows of the attention output *before* the block's output projection.

Design decisions (flagged; docs/method.md §14 says why):

* One query per softmax: the text logits use the same SCSA query (``q1`` or ``q2``) as the style
  logits, so each branch is one attention of one query over ``[K_txt ; K_style]`` with a per-label
  key mask. Without text tokens it is exactly the UNet's SCA/SSA.
* The temperature multiplies the image (style) logits only; the text logits keep ``1 / sqrt(d)``.
  SSA's argmax does not depend on ``T > 0``, but its style logit in the joint softmax does.
* Label pairing and the unmatched fallback are the UNet's (:func:`scsa_core.attention.pair_labels`):
  a content label with no style token (and unlabelled content, ``-1``) attends to all style tokens.
  The ``official`` preset reproduces the UNet reference code's defects and has no DiT meaning: refused.

SCA runs one fused attention (``scaled_dot_product_attention``) per label over that label's
keys ``[K_txt ; T * K1[label == c]]``: scaling the style keys by ``T`` is scaling their logits.
SSA's style part is one key per query and head, so it is merged with a text-only partial
attention by log-sum-exp; that partial materialises scores in query chunks of at most
:data:`SCORE_BUDGET` elements. No ``N x (T + M)`` score tensor is built, and a label's queries
never read another label's keys or values, so no mass crosses labels by construction.

q-space S-AdaIN (a *DiT approximation*, docs/method.md §14): the UNet applies S-AdaIN to the
block input and re-projects it; a DiT's QK-RMSNorm makes q a non-affine function of its input,
so here the statistics are matched on the queries themselves, per label, head and channel:

* ``Q_c' = S-AdaIN(Q_c, Q_s)`` on the content/style queries;
* ``Q1 = a1 Q_csem + (1 - a1) Q_c'``, ``K1 = a1 K_ssem + (1 - a1) K_s``;
* ``Q2 = a2 Q_c' + (1 - a2) IN_tokens(q_sample)`` (per-channel normalisation over tokens of the
  sample's query standing in for ``W_q(IN(x_t))``);
* queries come either before RoPE, with ``query_rotation`` given: they are rotated to the
  content's positions after the blend (RoPE is linear, so blending before or after the rotation
  is the same); or already positioned, with ``query_rotation=None``. The families pass the
  latter: ComfyUI's attention override sees q after RoPE, so the statistics are those of rotated
  queries (docs/method.md §14). Keys arrive positioned (RoPE applied, style positions shifted).

``lite``: no map streams, ``a1`` taken as 0 (two reference rows instead of four).

Layout: heads first. Sample tensors are batched ``[B, H, L, D]`` (``B`` sample rows that share
one content/style pair, e.g. cond and uncond); references are one pair, ``[H, L, D]``. ``N``
image tokens of the content/sample grid, ``M`` of the style grid, ``T`` text tokens. SCA runs in
the input dtype through PyTorch's ``scaled_dot_product_attention``; SSA's text partial keeps its
softmax statistics in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adain import instance_normalize, semantic_adain
from .attention import LabelPairing, merge_heads, semantic_sparse_attention, split_heads
from .block import SCSAParams, fuse
from .rope import apply_rotation

__all__ = ["SCORE_BUDGET", "JointReferences", "JointQueries", "JointParts", "joint_queries",
           "partial_attention", "merge_partial_attentions", "joint_sca", "joint_ssa", "fuse_joint",
           "scsa_joint_attention"]

# Upper bound on the score block one partial attention materialises at once (elements):
# 128 MiB in float32, far below the 1.5 GiB of Flux.1's dense 24 x 4096 x 4096 logits.
SCORE_BUDGET = 1 << 25


@dataclass(frozen=True)
class JointReferences:
    """The reference rows' projections in this block at the sample's sigma (one content/style pair).

    Queries are in the same frame as ``sample_query``: pre-RoPE when the caller passes a
    ``query_rotation``, else as the model had them (post-RoPE, the families' case); keys are *positioned* (RoPE applied, style positions shifted as ``rope_mode`` says); values
    need no position. The map streams may be None in ``lite`` mode or when ``semantic_share`` is 0.
    """
    content_query: torch.Tensor                  # [H, N, D] q of the content row
    style_query: torch.Tensor                    # [H, M, D] q of the style row (statistics only)
    style_key: torch.Tensor                      # [H, M, D] k of the style row, positioned
    style_value: torch.Tensor                    # [H, M, D] v of the style row
    content_map_query: torch.Tensor | None = None  # [H, N, D] q of the content-map row
    style_map_key: torch.Tensor | None = None      # [H, M, D] k of the style-map row, positioned


@dataclass(frozen=True)
class JointQueries:
    """The SCSA queries and SCA's keys, positioned: what :func:`joint_sca` / :func:`joint_ssa` read."""
    sca_query: torch.Tensor   # [1, H, N, D] Q1
    sca_key: torch.Tensor     # [1, H, M, D] K1
    ssa_query: torch.Tensor   # [B, H, N, D] Q2


@dataclass(frozen=True)
class JointParts:
    """Both branches of one call, before fusion (for tests and debugging)."""
    sca: torch.Tensor         # [B, H, N, D]
    ssa: torch.Tensor         # [B, H, N, D]
    ssa_index: torch.Tensor   # int64 [B, H, N]: the style token each head of each query copies


def _stats_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_preset(params: SCSAParams) -> None:
    if params.preset != "default":
        raise ValueError(f"preset {params.preset!r} reproduces the UNet reference code, which has no "
                         "DiT counterpart: use the default preset on DiT models")


def _check_temperature(temperature: float) -> None:
    # SSA picks its key by argmax and then scores it with T: the pick is the masked maximum of the
    # T-scaled logits only when T > 0.
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def joint_queries(sample_query: torch.Tensor, refs: JointReferences, content_labels: torch.Tensor,
                  style_labels: torch.Tensor, params: SCSAParams, lite: bool = False,
                  query_rotation: torch.Tensor | None = None) -> JointQueries:
    """q-space S-AdaIN and the SCA/SSA queries (module docstring, "q-space S-AdaIN").

    sample_query: the sample rows' image queries ``[B, H, N, D]``, pre-RoPE if query_rotation is
    given, else used as they are; content_labels ``int64 [N]``, style_labels ``int64 [M]``;
    query_rotation: RoPE of the content's image positions ``[1, 1, N, D/2, 2, 2]`` (the image
    slice of Flux's ``pe``), or None: the queries are not rotated (no RoPE, or already applied).
    """
    _check_preset(params)
    batch, heads, tokens, dim = sample_query.shape
    restyled = semantic_adain(refs.content_query, refs.style_query, content_labels, style_labels)
    sca_query, sca_key = restyled, refs.style_key
    a1 = 0.0 if lite else params.semantic_share
    if a1 != 0.0:
        if refs.content_map_query is None or refs.style_map_key is None:
            raise ValueError("semantic_share > 0 needs the content-map and style-map streams: "
                             "pass them, or use lite mode (or semantic_share 0)")
        sca_query = a1 * refs.content_map_query + (1 - a1) * restyled
        sca_key = a1 * refs.style_map_key + (1 - a1) * sca_key

    a2 = params.content_share
    # Heads as batch rows: IN normalises each (row, head, channel) over the tokens.
    sample_normed = instance_normalize(sample_query.reshape(batch * heads, tokens, dim))
    ssa_query = a2 * restyled + (1 - a2) * sample_normed.reshape(batch, heads, tokens, dim)

    sca_query = sca_query.unsqueeze(0)
    if query_rotation is not None:
        sca_query = apply_rotation(sca_query, query_rotation)
        ssa_query = apply_rotation(ssa_query, query_rotation)
    return JointQueries(sca_query, sca_key.unsqueeze(0), ssa_query)


def partial_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp, for merging with another partial attention.

    query ``[B|1, H, n, D]``; key, value ``[B|1, H, m, D]`` (m >= 1); logits ``scale * q . k``.
    Returns ``(out [B, H, n, D], lse [B, H, n])`` in the statistics dtype (float32, or float64).
    Scores are built ``SCORE_BUDGET`` elements at a time, so memory is ``O(chunk x m)``.
    """
    dtype = _stats_dtype(query, key, value)
    batch, heads = max(query.shape[0], key.shape[0]), query.shape[1]
    keys_t = key.to(dtype).transpose(-1, -2)
    values = value.to(dtype)
    rows_per_chunk = max(1, SCORE_BUDGET // max(1, batch * heads * key.shape[2]))
    outs, lses = [], []
    for start in range(0, query.shape[2], rows_per_chunk):
        # In place on the one score block: exp over it is the cost here, so it is read and
        # written as few times as possible (about 2x faster than logsumexp, then exp(s - lse)).
        scores = torch.matmul(query[:, :, start:start + rows_per_chunk].to(dtype), keys_t).mul_(scale)
        top = scores.amax(dim=-1, keepdim=True)
        weights = scores.sub_(top).exp_()
        total = weights.sum(dim=-1, keepdim=True)
        outs.append(torch.matmul(weights, values).div_(total))
        lses.append((top + total.log()).squeeze(-1))
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def merge_partial_attentions(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                             lse_b: torch.Tensor) -> torch.Tensor:
    """One softmax over the union of two disjoint key sets, from each set's attention.

    out ``[B, H, n, D]`` and lse ``[B, H, n]`` of each part (broadcast) -> ``[B, H, n, D]``.
    """
    top = torch.maximum(lse_a, lse_b)
    weight_a = torch.exp(lse_a - top).unsqueeze(-1)
    weight_b = torch.exp(lse_b - top).unsqueeze(-1)
    return (weight_a * out_a + weight_b * out_b) / (weight_a + weight_b)


def _with_text(style_out: torch.Tensor, style_lse: torch.Tensor, query: torch.Tensor,
               text_key: torch.Tensor, text_value: torch.Tensor, scale: float) -> torch.Tensor:
    """Merge a style partial with the text partial of the same queries (none when T = 0)."""
    if text_key.shape[2] == 0:
        return style_out.expand(max(style_out.shape[0], text_key.shape[0]), *style_out.shape[1:])
    text_out, text_lse = partial_attention(query, text_key, text_value, scale)
    return merge_partial_attentions(text_out, text_lse, style_out, style_lse)


def _check_shapes(query: torch.Tensor, style_key: torch.Tensor, text_key: torch.Tensor,
                  pairing: LabelPairing) -> None:
    if pairing.num_queries != query.shape[2] or pairing.num_keys != style_key.shape[2]:
        raise ValueError(f"the pairing is for {pairing.num_queries} content x {pairing.num_keys} style "
                         f"tokens, but the call has {query.shape[2]} x {style_key.shape[2]}")
    if text_key.ndim != 4 or text_key.shape[1] != query.shape[1]:
        raise ValueError(f"text keys must be [B, H, T, D] with H = {query.shape[1]}, got {tuple(text_key.shape)}")


def joint_sca(sca_query: torch.Tensor, sca_key: torch.Tensor, style_value: torch.Tensor,
              text_key: torch.Tensor, text_value: torch.Tensor, pairing: LabelPairing,
              temperature: float) -> torch.Tensor:
    """SCA in joint attention: one softmax over the text and the same-label style tokens.

    sca_query ``[1|B, H, N, D]``; sca_key, style_value ``[1|B, H, M, D]``; text_key, text_value
    ``[B, H, T, D]``; ``pairing = pair_labels(content_labels, style_labels)`` -> ``[B, H, N, D]``
    in the query's dtype.
    """
    _check_shapes(sca_query, sca_key, text_key, pairing)
    scale = 1.0 / math.sqrt(sca_query.shape[-1])
    batch = max(sca_query.shape[0], sca_key.shape[0], text_key.shape[0])

    def batched(x: torch.Tensor) -> torch.Tensor:
        return x.expand(batch, *x.shape[1:])

    # The temperature goes on the style keys: T * (q . k) = q . (T k), so the text logits keep
    # the model's 1 / sqrt(d) and each label is one fused attention over [text ; style].
    text_key, text_value = batched(text_key), batched(text_value)
    tempered_key = sca_key * temperature
    out = sca_query.new_empty(batch, *sca_query.shape[1:])
    for group in pairing.groups:
        if group.key_index is None:  # unmatched: the UNet's fallback, all style tokens
            keys, values = tempered_key, style_value
        else:
            keys, values = tempered_key.index_select(2, group.key_index), style_value.index_select(2, group.key_index)
        keys = torch.cat([text_key, batched(keys)], dim=2)
        values = torch.cat([text_value, batched(values)], dim=2)
        queries = batched(sca_query.index_select(2, group.query_index))
        out.index_copy_(2, group.query_index, F.scaled_dot_product_attention(queries, keys, values, scale=scale))
    return out


def joint_ssa(ssa_query: torch.Tensor, style_key: torch.Tensor, style_value: torch.Tensor,
              text_key: torch.Tensor, text_value: torch.Tensor, pairing: LabelPairing,
              temperature: float, return_index: bool = False):
    """SSA in joint attention: the joint softmax over the text and one style token per head,
    the best-scoring same-label one (:func:`scsa_core.attention.semantic_sparse_attention`).

    ssa_query ``[B, H, N, D]``; style_key, style_value ``[1|B, H, M, D]``; text ``[B, H, T, D]``
    -> ``[B, H, N, D]`` in the query's dtype (and with ``return_index`` the picks ``int64 [B, H, N]``).
    """
    _check_shapes(ssa_query, style_key, text_key, pairing)
    heads, dim = ssa_query.shape[1], ssa_query.shape[-1]
    scale = 1.0 / math.sqrt(dim)
    picked, chosen = semantic_sparse_attention(merge_heads(ssa_query), merge_heads(style_key),
                                               merge_heads(style_value), pairing, heads,
                                               unmatched="all", return_index=True)
    dtype = _stats_dtype(ssa_query, style_key, style_value)
    style_out = split_heads(picked, heads).to(dtype)
    picked_keys = torch.gather(style_key.expand(chosen.shape[0], -1, -1, -1), 2,
                               chosen.unsqueeze(-1).expand(-1, -1, -1, dim))
    # A one-key softmax: its output is the key's value and its log-sum-exp the key's logit.
    style_lse = (ssa_query.to(dtype) * picked_keys.to(dtype)).sum(dim=-1) * (temperature * scale)
    out = _with_text(style_out, style_lse, ssa_query, text_key, text_value, scale).to(ssa_query.dtype)
    return (out, chosen) if return_index else out


def fuse_joint(sca: torch.Tensor, ssa: torch.Tensor, params: SCSAParams, strength: float = 1.0,
               plain_output: torch.Tensor | None = None) -> torch.Tensor:
    """``s t1 O_sca + s t2 O_ssa + (1 - s) O_plain``, each ``[B, H, N, D]``; ``plain_output`` (the
    sample's own attention output of its image queries) is needed when ``s < 1``.

    The block's :func:`scsa_core.block.fuse` with no residual: in a DiT the fusion happens before
    the output projection and the block adds its residual (and gate) itself. With ``t1 + t2 = 1``
    (and any ``s``) the weights sum to 1, so fusing before the projection equals fusing after it.
    """
    if strength != 1.0 and plain_output is None:
        raise ValueError(f"injection strength {strength} < 1 keeps a share of the plain attention: "
                         "pass plain_output")
    # Adding 0.0 is exact, so this is bitwise fuse's own weighted sum.
    return fuse(0.0, sca, ssa, params, strength, plain_output)


def scsa_joint_attention(sample_query: torch.Tensor, text_key: torch.Tensor, text_value: torch.Tensor,
                         refs: JointReferences, content_labels: torch.Tensor, style_labels: torch.Tensor,
                         pairing: LabelPairing, params: SCSAParams, *, lite: bool = False,
                         query_rotation: torch.Tensor | None = None, strength: float = 1.0,
                         plain_output: torch.Tensor | None = None, return_parts: bool = False):
    """SCSA's replacement for the attention output of the sample's image queries.

    sample_query: image queries of the sample rows ``[B, H, N, D]`` (see :func:`joint_queries`
    for their frame); text_key,
    text_value: the sample rows' text keys (positioned) and values ``[B, H, T, D]``; refs: see
    :class:`JointReferences`; content_labels ``int64 [N]``, style_labels ``int64 [M]``,
    ``pairing = pair_labels(content_labels, style_labels)``; query_rotation: the content's
    image-position RoPE ``[1, 1, N, D/2, 2, 2]`` or None; plain_output: the model's own attention
    output for these queries ``[B, H, N, D]`` (needed when ``strength < 1``).
    Returns ``[B, H, N, D]`` (and :class:`JointParts` with ``return_parts``). At ``strength == 0``
    it returns ``plain_output`` itself without computing SCSA.
    """
    if strength == 0.0 and not return_parts:
        if plain_output is None:
            raise ValueError("injection strength 0 is plain attention: pass plain_output")
        return plain_output
    _check_temperature(params.temperature)
    queries = joint_queries(sample_query, refs, content_labels, style_labels, params, lite, query_rotation)
    style_value = refs.style_value.unsqueeze(0)
    sca = joint_sca(queries.sca_query, queries.sca_key, style_value, text_key, text_value, pairing,
                    params.temperature)
    ssa, ssa_index = joint_ssa(queries.ssa_query, refs.style_key.unsqueeze(0), style_value, text_key,
                               text_value, pairing, params.temperature, return_index=True)
    sca = sca.expand_as(ssa)
    fused = fuse_joint(sca, ssa, params, strength, plain_output)
    return (fused, JointParts(sca, ssa, ssa_index)) if return_parts else fused
