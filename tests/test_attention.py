"""Properties of S-AdaIN, SCA, SSA and StyleID injection against dense reference formulas."""
from __future__ import annotations

import math

import pytest
import torch

from scsa_core.adain import adain, instance_normalize, semantic_adain
from scsa_core.attention import (pair_labels, plain_attention, semantic_continuous_attention,
                                 semantic_sparse_attention, split_heads, styleid_attention)

HEADS = 4


def _dense_scores(query, key, heads, temperature=1.0):
    q, k = split_heads(query, heads), split_heads(key, heads)
    return q @ k.transpose(-1, -2) * temperature / math.sqrt(q.shape[-1])


def _random(tokens, keys, channels=32, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, tokens, channels, generator=g, dtype=torch.float64),
            torch.randn(1, keys, channels, generator=g, dtype=torch.float64),
            torch.randn(1, keys, channels, generator=g, dtype=torch.float64))


def _dense_sca(query, key, value, q_labels, k_labels, heads, temperature):
    """Masked softmax with an explicit mask; rows without a same-label key attend to all keys."""
    scores = _dense_scores(query, key, heads, temperature)
    allowed = (q_labels[:, None] == k_labels[None, :]) & (q_labels[:, None] >= 0)
    allowed = torch.where(allowed.any(dim=1, keepdim=True), allowed, torch.ones_like(allowed))
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    out = weights @ split_heads(value, heads).expand(query.shape[0], -1, -1, -1)
    return out.transpose(1, 2).reshape(query.shape), weights


@pytest.mark.parametrize("seed", range(4))
def test_sca_equals_masked_softmax_and_puts_no_mass_on_other_labels(seed):
    g = torch.Generator().manual_seed(100 + seed)
    q_labels = torch.randint(-1, 4, (37,), generator=g)
    k_labels = torch.randint(0, 3, (29,), generator=g)  # label 3 has no key: unmatched
    query, key, value = _random(37, 29, batch=2, seed=seed)
    pairing = pair_labels(q_labels, k_labels)
    out = semantic_continuous_attention(query, key, value, pairing, HEADS, temperature=1.2)
    expected, _ = _dense_sca(query, key, value, q_labels, k_labels, HEADS, 1.2)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    matched = (q_labels[:, None] == k_labels[None, :]).any(dim=1)
    # Changing the values of other-label keys cannot change a matched query's output.
    changed = value.clone()
    changed[:, k_labels == 0] += 100.0
    out_changed = semantic_continuous_attention(query, key, changed, pairing, HEADS, temperature=1.2)
    keep = matched & (q_labels != 0)
    torch.testing.assert_close(out_changed[:, keep], out[:, keep])
    assert not torch.allclose(out_changed[:, q_labels == 0], out[:, q_labels == 0])


def _attention_by_hand(query, key, value, heads, temperature):
    """Softmax attention written out in float64, head by head, from the definition: head ``h``
    owns channels ``h * d`` to ``(h + 1) * d``; logits ``q . k * temperature / sqrt(d)``."""
    query, key, value = query.double(), key.double(), value.double()
    d = query.shape[-1] // heads
    out = torch.zeros_like(query)
    for b in range(query.shape[0]):
        k_b, v_b = key[min(b, key.shape[0] - 1)], value[min(b, value.shape[0] - 1)]
        for h in range(heads):
            channels = slice(h * d, (h + 1) * d)
            logits = query[b, :, channels] @ k_b[:, channels].T * (temperature / math.sqrt(d))
            weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            weights = weights / weights.sum(dim=1, keepdim=True)
            out[b, :, channels] = weights @ v_b[:, channels]
    return out


def test_sca_with_one_label_everywhere_is_plain_attention():
    """One label on every query and key: SCA takes its shortcut (plain attention over all keys),
    which must be softmax attention as written out by hand."""
    query, key, value = _random(50, 40, batch=2)
    labels_q, labels_k = torch.zeros(50, dtype=torch.long), torch.zeros(40, dtype=torch.long)
    pairing = pair_labels(labels_q, labels_k)
    assert pairing.single_group_all_keys, "one label everywhere should take the plain-attention shortcut"
    out = semantic_continuous_attention(query, key, value, pairing, HEADS, 1.3)
    torch.testing.assert_close(out, _attention_by_hand(query, key, value, HEADS, 1.3), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_ssa_picks_argmax_among_same_label_keys(seed):
    g = torch.Generator().manual_seed(200 + seed)
    q_labels = torch.randint(-1, 5, (45,), generator=g)
    k_labels = torch.randint(0, 4, (33,), generator=g)
    query, key, value = _random(45, 33, batch=2, seed=seed)
    pairing = pair_labels(q_labels, k_labels)
    out, chosen = semantic_sparse_attention(query, key, value, pairing, HEADS, return_index=True)
    scores = _dense_scores(query, key, HEADS)
    allowed = (q_labels[:, None] == k_labels[None, :]) & (q_labels[:, None] >= 0)
    allowed = torch.where(allowed.any(dim=1, keepdim=True), allowed, torch.ones_like(allowed))
    expected = scores.masked_fill(~allowed, float("-inf")).argmax(dim=-1)
    assert torch.equal(chosen, expected)
    matched = allowed.all(dim=1) == False  # noqa: E712  rows restricted to their label
    assert (k_labels[chosen[..., matched]] == q_labels[matched]).all()
    v = split_heads(value, HEADS).expand(2, -1, -1, -1)
    gathered = torch.stack([v[b, h, chosen[b, h]] for b in range(2) for h in range(HEADS)])
    assert torch.equal(out, gathered.view(2, HEADS, 45, -1).transpose(1, 2).reshape(out.shape))


def test_ssa_chunking_does_not_change_the_choice(monkeypatch):
    import scsa_core.attention as attention
    query, key, value = _random(300, 200, seed=3)
    labels_q = torch.arange(300) % 3
    labels_k = torch.arange(200) % 3
    pairing = pair_labels(labels_q, labels_k)
    _, whole = semantic_sparse_attention(query, key, value, pairing, HEADS, return_index=True)
    monkeypatch.setattr(attention, "SSA_SCORE_BUDGET", 7 * HEADS * 70)
    _, chunked = semantic_sparse_attention(query, key, value, pairing, HEADS, return_index=True)
    assert torch.equal(whole, chunked)


def test_official_unmatched_rows_reproduce_the_fully_masked_behaviour():
    query, key, value = _random(10, 8)
    q_labels = torch.tensor([0] * 5 + [7] * 5)   # label 7: no style token
    k_labels = torch.zeros(8, dtype=torch.long)
    pairing = pair_labels(q_labels, k_labels)
    sca = semantic_continuous_attention(query, key, value, pairing, HEADS, unmatched="official")
    assert torch.allclose(sca[0, 5:], value[0].mean(dim=0).expand(5, -1))
    ssa, chosen = semantic_sparse_attention(query, key, value, pairing, HEADS, unmatched="official",
                                            return_index=True)
    # The official code's fully masked SSA row: all logits equal, so the softmax its argmax is
    # scattered into is uniform: the mean of every style value, not style token 0.
    torch.testing.assert_close(ssa[0, 5:], value[0].mean(dim=0).expand(5, -1))
    assert not torch.allclose(ssa[0, 5:], value[0, :1].expand(5, -1))
    assert (chosen[..., 5:] == -1).all() and (chosen[..., :5] >= 0).all()
    torch.testing.assert_close(ssa[0, :5], semantic_sparse_attention(query, key, value, pairing, HEADS)[0, :5])
    default = semantic_continuous_attention(query, key, value, pairing, HEADS)
    torch.testing.assert_close(default[:, 5:], plain_attention(query, key, value, HEADS)[:, 5:])


def test_styleid_blends_queries_and_scales_logits():
    query, key, value = _random(20, 16)
    content_query = torch.randn_like(query)
    out = styleid_attention(query, content_query, key, value, HEADS, gamma=0.75, temperature=1.5)
    blended = 0.75 * content_query + 0.25 * query
    scores = _dense_scores(blended, key, HEADS, 1.5)
    expected = (scores.softmax(-1) @ split_heads(value, HEADS)).transpose(1, 2).reshape(query.shape)
    torch.testing.assert_close(out, expected)


def _dense_sadain(content, style, c_labels, s_labels, eps=1e-5):
    out = torch.empty_like(content)
    g_mean, g_var = style.mean(dim=1), style.var(dim=1, unbiased=False)
    for label in c_labels.unique().tolist():
        cm = c_labels == label
        c = content[:, cm]
        if label >= 0 and (s_labels == label).any():
            s = style[:, s_labels == label]
            s_mean, s_var = s.mean(dim=1), s.var(dim=1, unbiased=False)
        else:
            s_mean, s_var = g_mean, g_var
        normed = (c - c.mean(dim=1, keepdim=True)) / (c.var(dim=1, unbiased=False, keepdim=True) + eps).sqrt()
        out[:, cm] = normed * (s_var[:, None] + eps).sqrt() + s_mean[:, None]
    return out


def test_semantic_adain_matches_per_region_formula_with_fallback():
    g = torch.Generator().manual_seed(5)
    content = torch.randn(2, 60, 8, generator=g, dtype=torch.float64) * 3 + 1
    style = torch.randn(1, 50, 8, generator=g, dtype=torch.float64) * 0.5 - 2
    c_labels = torch.randint(-1, 4, (60,), generator=g)
    s_labels = torch.randint(0, 3, (50,), generator=g)  # label 3 only in content
    out = semantic_adain(content, style, c_labels, s_labels)
    torch.testing.assert_close(out, _dense_sadain(content, style, c_labels, s_labels))


def test_adain_and_instance_norm_statistics():
    g = torch.Generator().manual_seed(6)
    content = torch.randn(1, 100, 4, generator=g) * 2 + 3
    style = torch.randn(1, 80, 4, generator=g) * 0.3 - 1
    out = adain(content, style)
    torch.testing.assert_close(out.mean(1), style.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(1), style.std(1), atol=1e-4, rtol=1e-3)
    normed = instance_normalize(content)
    torch.testing.assert_close(normed.mean(1), torch.zeros(1, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.std(1), torch.ones(1, 4), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (7, 7), (9, 13), (16, 16)])
@pytest.mark.parametrize("layout", ["one_label", "random_with_empty", "single_pixels", "unlabelled"])
def test_no_nan_for_any_label_layout_and_grid(height, width, layout):
    g = torch.Generator().manual_seed(height * 100 + width)
    n = height * width
    if layout == "one_label":
        c_labels = torch.zeros(n, dtype=torch.long)
        s_labels = torch.zeros(n, dtype=torch.long)
    elif layout == "random_with_empty":
        c_labels = torch.randint(0, 6, (n,), generator=g)
        s_labels = torch.randint(3, 9, (n,), generator=g)
    elif layout == "single_pixels":
        c_labels = torch.arange(n)
        s_labels = torch.arange(n).flip(0)
    else:
        c_labels = torch.full((n,), -1)
        s_labels = torch.full((n,), -1)
    content = torch.randn(2, n, 16, generator=g)
    style = torch.zeros(1, n, 16)  # constant style: zero variance everywhere
    pairing = pair_labels(c_labels, s_labels)
    for preset in ("all", "official"):
        outputs = [semantic_adain(content, style, c_labels, s_labels),
                   semantic_adain(style.expand(2, -1, -1), content, c_labels, s_labels),
                   semantic_continuous_attention(content, style + 1, content[:1], pairing, HEADS, 1.2, preset),
                   semantic_sparse_attention(content, content[:1], style, pairing, HEADS, preset),
                   adain(content, style), instance_normalize(style)]
        for out in outputs:
            assert torch.isfinite(out).all()
