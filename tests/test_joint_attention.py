"""SCSA on one DiT joint-attention call (scsa_core.joint_attention) against a dense float64
reference written plainly from the method, and its label isolation; no ComfyUI.

The reference builds the whole ``N x (T + M)`` logit matrix, an explicit label mask, an explicit
argmax, and plain per-label S-AdaIN / IN / RoPE loops: nothing from scsa_core but the params.
"""
from __future__ import annotations

import math

import pytest
import torch

import scsa_core.joint_attention as joint
from scsa_core.attention import pair_labels, semantic_continuous_attention
from scsa_core.block import SCSAParams
from scsa_core.joint_attention import (JointReferences, joint_queries, joint_sca, joint_ssa,
                                       scsa_joint_attention)

EPS = 1e-5
HEADS, DIM = 3, 8


# ----------------------------------------------------------------- the dense reference
def _plain_sadain(content, style, content_labels, style_labels):
    """S-AdaIN per label, head and channel: content [H, N, D], style [H, M, D]. Population
    variance + eps; content without a same-label style (or unlabelled) takes the global style
    statistics and its own region's."""
    out = torch.empty_like(content)
    for label in content_labels.unique().tolist():
        rows = content_labels == label
        c = content[:, rows]
        style_rows = (style_labels == label) if label >= 0 else torch.zeros_like(style_labels, dtype=torch.bool)
        s = style[:, style_rows] if style_rows.any() else style
        c_mean, c_std = c.mean(1, keepdim=True), (c.var(1, unbiased=False, keepdim=True) + EPS).sqrt()
        s_mean, s_std = s.mean(1, keepdim=True), (s.var(1, unbiased=False, keepdim=True) + EPS).sqrt()
        out[:, rows] = (c - c_mean) / c_std * s_std + s_mean
    return out


def _plain_instance_norm(x):
    """Per channel over tokens, unbiased variance + eps: x [..., N, D]."""
    return (x - x.mean(-2, keepdim=True)) / (x.var(-2, unbiased=True, keepdim=True) + EPS).sqrt()


def _plain_rotate(x, angles):
    """RoPE by explicit angles [N, D/2]: pair (2k, 2k+1) turned by angles[:, k]."""
    if angles is None:
        return x
    cos, sin = angles.cos(), angles.sin()
    out = torch.empty_like(x)
    out[..., 0::2] = cos * x[..., 0::2] - sin * x[..., 1::2]
    out[..., 1::2] = sin * x[..., 0::2] + cos * x[..., 1::2]
    return out


def _allowed(content_labels, style_labels):
    """M[i, j] = same label; a row with no allowed key (unmatched, or label -1) allows every key."""
    same = (content_labels[:, None] == style_labels[None, :]) & (content_labels[:, None] >= 0)
    return same | ~same.any(dim=1, keepdim=True)


def _dense_reference(case, params, lite=False, strength=1.0, plain_output=None):
    q, k_txt, v_txt, refs, cl, sl, angles = case
    d = q.shape[-1]
    t = params.temperature
    a1 = 0.0 if lite else params.semantic_share
    a2 = params.content_share
    restyled = _plain_sadain(refs.content_query, refs.style_query, cl, sl)
    q1 = _plain_rotate(a1 * (refs.content_map_query if a1 else 0) + (1 - a1) * restyled, angles)
    k1 = a1 * (refs.style_map_key if a1 else 0) + (1 - a1) * refs.style_key
    q2 = _plain_rotate(a2 * restyled + (1 - a2) * _plain_instance_norm(q), angles)
    allowed = _allowed(cl, sl)                                   # [N, M]
    text_allowed = torch.ones(len(cl), k_txt.shape[2], dtype=torch.bool)

    # SCA: one softmax over [text ; T * same-label style] logits
    logits1 = torch.cat([q1 @ k_txt.transpose(-1, -2), t * (q1 @ k1.transpose(-1, -2)).expand(len(q), -1, -1, -1)],
                        dim=-1) / math.sqrt(d)
    mask1 = torch.cat([text_allowed, allowed], dim=1)
    weights1 = logits1.masked_fill(~mask1, float("-inf")).softmax(-1)
    sca = weights1 @ torch.cat([v_txt, refs.style_value.expand(len(q), -1, -1, -1)], dim=2)

    # SSA: explicit masked argmax of q2 . K_s, then the joint softmax over [text ; that one key]
    style_scores = (q2 @ refs.style_key.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    picks = style_scores.argmax(-1)                             # [B, H, N]
    logits2 = torch.cat([q2 @ k_txt.transpose(-1, -2), t * (q2 @ refs.style_key.transpose(-1, -2))],
                        dim=-1) / math.sqrt(d)
    one_key = torch.nn.functional.one_hot(picks, refs.style_key.shape[1]).bool()
    mask2 = torch.cat([text_allowed.expand(*picks.shape, -1), one_key], dim=-1)
    weights2 = logits2.masked_fill(~mask2, float("-inf")).softmax(-1)
    ssa = weights2 @ torch.cat([v_txt, refs.style_value.expand(len(q), -1, -1, -1)], dim=2)

    fused = strength * params.sca_weight * sca + strength * params.ssa_weight * ssa
    if strength != 1.0:
        fused = fused + (1 - strength) * plain_output
    return fused, sca, ssa, picks


# ----------------------------------------------------------------- cases
def _case(seed, batch=2, tokens=20, style_tokens=16, text=5, rope=True, unmatched=True, unlabelled=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    content_labels = torch.randint(0, 3, (tokens,), generator=g)
    style_labels = torch.randint(0, 3, (style_tokens,), generator=g)
    content_labels[:3] = torch.tensor([0, 1, 2])
    style_labels[:2] = torch.tensor([0, 1])
    if unmatched:  # label 3 has no style token: the fallback attends to all of them
        content_labels[3:5] = 3
    if unlabelled:
        content_labels[5] = -1
    if not unmatched:
        style_labels[2] = 2
    refs = JointReferences(
        content_query=r(HEADS, tokens, DIM) * 2 + 0.5, style_query=r(HEADS, style_tokens, DIM) * 0.7 - 1,
        style_key=r(HEADS, style_tokens, DIM), style_value=r(HEADS, style_tokens, DIM),
        content_map_query=r(HEADS, tokens, DIM), style_map_key=r(HEADS, style_tokens, DIM))
    angles = r(tokens, DIM // 2) * 3 if rope else None
    return (r(batch, HEADS, tokens, DIM) * 1.5 + 0.3, r(batch, HEADS, text, DIM), r(batch, HEADS, text, DIM),
            refs, content_labels, style_labels, angles)


def _rotation(angles):
    """Flux's pe layout [1, 1, N, D/2, 2, 2] from explicit angles."""
    if angles is None:
        return None
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(1, 1, *angles.shape, 2, 2)


def _production(case, params, **kwargs):
    q, k_txt, v_txt, refs, cl, sl, angles = case
    return scsa_joint_attention(q, k_txt, v_txt, refs, cl, sl, pair_labels(cl, sl), params,
                                query_rotation=_rotation(angles), return_parts=True, **kwargs)


# ----------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("lite", [False, True])
@pytest.mark.parametrize("text", [5, 0])
def test_matches_the_dense_reference(seed, lite, text):
    case = _case(seed, text=text)
    params = SCSAParams()
    fused, parts = _production(case, params, lite=lite)
    ref_fused, ref_sca, ref_ssa, ref_picks = _dense_reference(case, params, lite=lite)
    assert torch.equal(parts.ssa_index, ref_picks)
    torch.testing.assert_close(parts.sca, ref_sca, rtol=0, atol=1e-10)
    torch.testing.assert_close(parts.ssa, ref_ssa, rtol=0, atol=1e-10)
    torch.testing.assert_close(fused, ref_fused, rtol=0, atol=1e-10)


@pytest.mark.parametrize("temperature", [0.6, 2.5])
def test_matches_the_dense_reference_at_other_settings(temperature):
    case = _case(7, rope=False, unmatched=False, unlabelled=False)
    params = SCSAParams(sca_weight=0.55, ssa_weight=0.3, semantic_share=0.8, content_share=0.1,
                        temperature=temperature)
    plain = torch.randn(case[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fused, parts = _production(case, params, strength=0.4, plain_output=plain)
    ref_fused, _, _, ref_picks = _dense_reference(case, params, strength=0.4, plain_output=plain)
    assert torch.equal(parts.ssa_index, ref_picks)
    torch.testing.assert_close(fused, ref_fused, rtol=0, atol=1e-10)


def test_no_mass_crosses_labels():
    """Changing the style tokens of label 1 leaves the outputs of label-0 content tokens bitwise
    unchanged, in SCA and in SSA; the label-1 content tokens do change."""
    case = _case(3)
    q, k_txt, v_txt, refs, cl, sl, angles = case
    params = SCSAParams()
    _, before = _production(case, params)
    other = (sl == 1)
    g = torch.Generator().manual_seed(99)

    def perturbed(x):
        x = x.clone()
        x[:, other] = torch.randn(x[:, other].shape, generator=g, dtype=x.dtype) * 5
        return x

    refs_b = JointReferences(refs.content_query, perturbed(refs.style_query), perturbed(refs.style_key),
                             perturbed(refs.style_value), refs.content_map_query, perturbed(refs.style_map_key))
    _, after = _production((q, k_txt, v_txt, refs_b, cl, sl, angles), params)
    label_a, label_b = cl == 0, cl == 1
    assert label_a.any() and (sl == 0).any()
    for name in ("sca", "ssa", "ssa_index"):
        assert torch.equal(getattr(after, name)[:, :, label_a], getattr(before, name)[:, :, label_a]), name
    assert not torch.equal(after.sca[:, :, label_b], before.sca[:, :, label_b])
    assert not torch.equal(after.ssa[:, :, label_b], before.ssa[:, :, label_b])


def test_ssa_picks_stay_within_the_label():
    case = _case(5)
    _, parts = _production(case, SCSAParams())
    cl, sl = case[4], case[5]
    matched = torch.isin(cl, sl) & (cl >= 0)
    picked_labels = sl[parts.ssa_index]                          # [B, H, N]
    assert torch.equal(picked_labels[:, :, matched], cl[matched].expand(*picked_labels.shape[:2], -1))


def test_without_text_sca_is_the_unet_sca():
    """With no text token the joint SCA is the UNet's masked-softmax SCA of the same q/k/v."""
    case = _case(11, batch=1, text=0)
    q, k_txt, v_txt, refs, cl, sl, angles = case
    params = SCSAParams()
    pairing = pair_labels(cl, sl)
    queries = joint_queries(q, refs, cl, sl, params, query_rotation=_rotation(angles))
    sca = joint_sca(queries.sca_query, queries.sca_key, refs.style_value[None], k_txt, v_txt, pairing,
                    params.temperature)

    def flat(x):  # [1, H, L, D] -> [1, L, H * D], the UNet layout
        return x.transpose(1, 2).reshape(1, x.shape[2], -1)

    unet = semantic_continuous_attention(flat(queries.sca_query), flat(queries.sca_key),
                                         flat(refs.style_value[None]), pairing, HEADS, params.temperature)
    torch.testing.assert_close(flat(sca), unet, rtol=0, atol=1e-12)


def test_score_chunking_does_not_change_the_result(monkeypatch):
    case = _case(2)
    whole, _ = _production(case, SCSAParams())
    monkeypatch.setattr(joint, "SCORE_BUDGET", 7)
    chunked, _ = _production(case, SCSAParams())
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-13)


def test_strength_zero_is_the_plain_output_itself():
    case = _case(1)
    q, k_txt, v_txt, refs, cl, sl, _ = case
    plain = torch.randn_like(q)
    out = scsa_joint_attention(q, k_txt, v_txt, refs, cl, sl, pair_labels(cl, sl), SCSAParams(),
                               strength=0.0, plain_output=plain)
    assert out is plain
    with pytest.raises(ValueError, match="plain_output"):
        scsa_joint_attention(q, k_txt, v_txt, refs, cl, sl, pair_labels(cl, sl), SCSAParams(), strength=0.5)


def test_refusals():
    q, k_txt, v_txt, refs, cl, sl, _ = _case(1)
    no_maps = JointReferences(refs.content_query, refs.style_query, refs.style_key, refs.style_value)
    pairing = pair_labels(cl, sl)
    with pytest.raises(ValueError, match="map"):
        scsa_joint_attention(q, k_txt, v_txt, no_maps, cl, sl, pairing, SCSAParams())
    scsa_joint_attention(q, k_txt, v_txt, no_maps, cl, sl, pairing, SCSAParams(), lite=True)  # lite needs none
    with pytest.raises(ValueError, match="preset"):
        scsa_joint_attention(q, k_txt, v_txt, refs, cl, sl, pairing, SCSAParams(preset="official"))
    with pytest.raises(ValueError, match="temperature"):
        scsa_joint_attention(q, k_txt, v_txt, refs, cl, sl, pairing, SCSAParams(temperature=0.0))
    with pytest.raises(ValueError, match="pairing"):
        scsa_joint_attention(q, k_txt, v_txt, refs, cl, sl, pair_labels(cl[:-1], sl), SCSAParams())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype(dtype):
    q, k_txt, v_txt, refs, cl, sl, angles = _case(4)
    cast = JointReferences(*(getattr(refs, f).to(dtype) for f in
                             ("content_query", "style_query", "style_key", "style_value",
                              "content_map_query", "style_map_key")))
    out, parts = scsa_joint_attention(q.to(dtype), k_txt.to(dtype), v_txt.to(dtype), cast, cl, sl,
                                      pair_labels(cl, sl), SCSAParams(), query_rotation=_rotation(angles).float(),
                                      return_parts=True)
    _, exact = _production((q, k_txt, v_txt, refs, cl, sl, angles), SCSAParams())
    assert out.dtype == dtype and parts.sca.dtype == dtype and parts.ssa.dtype == dtype
    assert torch.isfinite(out).all()
    if dtype == torch.float32:  # SSA's pick may flip on a near-tie in float32: compare SCA only
        torch.testing.assert_close(parts.sca.double(), exact.sca, rtol=1e-4, atol=1e-4)
