"""Semantic continuous attention (SCA), semantic sparse attention (SSA) and StyleID injection.

All functions work on projected tensors ``[B, N, C]`` with ``C = heads * d`` (channel
``= head * d + j``, as in ComfyUI and the official code), so an attn1 replace patch can call
them directly. Content tokens are queries, style tokens are keys/values.

Masks are never materialised: a :class:`LabelPairing` groups query and key tokens by label once
per grid, and each group attends only within itself. This is exact (tokens of other labels get
zero weight in a masked softmax and are never argmax candidates), needs no ``N x M`` mask, and
is faster than dense attention: with ``L`` balanced labels the work is about ``1 / L`` of it.

Presets differ only where the official code is defective (docs/method.md §5, §12):
``unmatched="all"`` (default preset): a query whose label has no key attends to all keys.
``unmatched="official"``: such a row reproduces what a fully masked row does in the official
code: every score is filled with the same value, so SCA averages all values uniformly, and so
does SSA (the official code's softmax over that row is uniform too). Finite, but meaningless;
kept only to reproduce the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "LabelPairing", "pair_labels", "split_heads", "merge_heads",
    "semantic_continuous_attention", "semantic_sparse_attention", "styleid_attention",
    "plain_attention",
]

UNMATCHED_MODES = ("all", "official")

# Upper bound on the score block SSA materialises at once (elements): O(chunk x M) memory, and
# small enough to stay in cache between the matmul that writes it and the argmax that reads it.
SSA_SCORE_BUDGET = 1 << 21


@dataclass(frozen=True)
class LabelGroup:
    """Query tokens of one label and the key tokens they may attend to.

    ``key_index`` is None when no key has this label (the group is *unmatched*).
    """
    label: int
    query_index: torch.Tensor  # int64 [n], ascending
    key_index: torch.Tensor | None  # int64 [m], ascending


@dataclass(frozen=True)
class LabelPairing:
    """Same-label groups between ``num_queries`` query tokens and ``num_keys`` key tokens."""
    groups: tuple[LabelGroup, ...]
    num_queries: int
    num_keys: int

    @property
    def single_group_all_keys(self) -> bool:
        """True when the pairing is plain attention (one label everywhere on both sides)."""
        return (len(self.groups) == 1 and self.groups[0].key_index is not None
                and self.groups[0].key_index.numel() == self.num_keys
                and self.groups[0].query_index.numel() == self.num_queries)


def pair_labels(query_labels: torch.Tensor, key_labels: torch.Tensor) -> LabelPairing:
    """Group tokens by label: ``M[i, j] = (query_labels[i] == key_labels[j])``.

    query_labels: ``int64 [N]``; key_labels: ``int64 [M]``; ``-1`` (no label) never matches.
    Built once per token grid and reused by every call at that grid.
    """
    query_labels = query_labels.reshape(-1).long()
    key_labels = key_labels.reshape(-1).long()
    groups = []
    for label in torch.unique(query_labels).tolist():
        query_index = torch.nonzero(query_labels == label).flatten()
        key_index = torch.nonzero(key_labels == label).flatten() if label >= 0 else None
        if key_index is not None and key_index.numel() == 0:
            key_index = None
        groups.append(LabelGroup(label, query_index, key_index))
    return LabelPairing(tuple(groups), query_labels.numel(), key_labels.numel())


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, H * d]`` -> ``[B, H, N, d]``."""
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, heads, channels // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, d]`` -> ``[B, N, H * d]``."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _check_unmatched(unmatched: str) -> None:
    if unmatched not in UNMATCHED_MODES:
        raise ValueError(f"unmatched must be one of {UNMATCHED_MODES}, got {unmatched!r}")


def _broadcast_batch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    batch = max(query.shape[0], key.shape[0])
    return (query.expand(batch, *query.shape[1:]), key.expand(batch, *key.shape[1:]),
            value.expand(batch, *value.shape[1:]))


def plain_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int,
                    temperature: float = 1.0) -> torch.Tensor:
    """Softmax attention with logits scaled by ``temperature / sqrt(d)``.

    query: ``[B, N, C]``; key, value: ``[B or 1, M, C]`` -> ``[B, N, C]``.
    """
    query, key, value = _broadcast_batch(query, key, value)
    dim = query.shape[-1] // heads
    out = F.scaled_dot_product_attention(split_heads(query, heads), split_heads(key, heads),
                                         split_heads(value, heads),
                                         scale=temperature / math.sqrt(dim))
    return merge_heads(out)


def semantic_continuous_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                  pairing: LabelPairing, heads: int, temperature: float = 1.0,
                                  unmatched: str = "all") -> torch.Tensor:
    """SCA: softmax over the same-label keys only, logits scaled by ``temperature / sqrt(d)``.

    query: ``[B, N, C]``; key, value: ``[B or 1, M, C]`` -> ``[B, N, C]``.
    """
    _check_unmatched(unmatched)
    if pairing.single_group_all_keys:
        return plain_attention(query, key, value, heads, temperature)
    query, key, value = _broadcast_batch(query, key, value)
    q, k, v = split_heads(query, heads), split_heads(key, heads), split_heads(value, heads)
    scale = temperature / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    for group in pairing.groups:
        q_group = q.index_select(2, group.query_index)
        if group.key_index is None and unmatched == "official":
            uniform = v.mean(dim=2, keepdim=True)
            out.index_copy_(2, group.query_index, uniform.expand_as(q_group).contiguous())
            continue
        if group.key_index is None:
            k_group, v_group = k, v
        else:
            k_group, v_group = k.index_select(2, group.key_index), v.index_select(2, group.key_index)
        attended = F.scaled_dot_product_attention(q_group, k_group, v_group, scale=scale)
        out.index_copy_(2, group.query_index, attended)
    return merge_heads(out)


def semantic_sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              pairing: LabelPairing, heads: int, unmatched: str = "all",
                              return_index: bool = False):
    """SSA: per head, each query copies the value of its best-scoring same-label key.

    query: ``[B, N, C]``; key, value: ``[B or 1, M, C]`` -> ``[B, N, C]`` (and, with
    ``return_index``, the chosen key per head ``int64 [B, H, N]``). Ties go to the lowest key
    index. No softmax is needed: a masked argmax and a gather are exact. Scores are computed in
    query chunks, so extra memory is ``O(chunk x M)`` rather than ``O(H x N x M)``.

    Unmatched rows (no key of their label): ``"all"`` takes the argmax over every key;
    ``"official"`` gives the uniform mean of all values, as the official code does (its fully
    masked row is all equal, so the softmax it scatters the argmax into is uniform), and their
    chosen index is -1.
    """
    _check_unmatched(unmatched)
    query, key, value = _broadcast_batch(query, key, value)
    q, k, v = split_heads(query, heads), split_heads(key, heads), split_heads(value, heads)
    batch, _, tokens, dim = q.shape
    chosen = torch.empty(batch, heads, tokens, dtype=torch.long, device=q.device)
    uniform_rows = []
    for group in pairing.groups:
        if group.key_index is None and unmatched == "official":
            chosen[:, :, group.query_index] = 0  # a placeholder for the gather; replaced below
            uniform_rows.append(group.query_index)
            continue
        key_index = group.key_index
        k_group = k if key_index is None else k.index_select(2, key_index)
        k_t = k_group.transpose(-1, -2)
        chunk = max(1, SSA_SCORE_BUDGET // max(1, batch * heads * k_group.shape[2]))
        for start in range(0, group.query_index.numel(), chunk):
            rows = group.query_index[start:start + chunk]
            best = torch.matmul(q.index_select(2, rows), k_t).argmax(dim=-1)
            chosen[:, :, rows] = best if key_index is None else key_index[best]
    picked = torch.gather(v, 2, chosen.unsqueeze(-1).expand(-1, -1, -1, dim))
    if uniform_rows:
        rows = torch.cat(uniform_rows)
        picked[:, :, rows] = v.mean(dim=2, keepdim=True).to(picked.dtype)
        chosen[:, :, rows] = -1
    out = merge_heads(picked)
    return (out, chosen) if return_index else out


def styleid_attention(query: torch.Tensor, content_query: torch.Tensor, style_key: torch.Tensor,
                      style_value: torch.Tensor, heads: int, gamma: float = 0.75,
                      temperature: float = 1.5) -> torch.Tensor:
    """StyleID's injection (docs/method.md §9): query blended with the content's, style K and V.

    query: current ``[B, N, C]``; content_query: ``[B or 1, N, C]``; style_key, style_value:
    ``[B or 1, M, C]`` -> ``[B, N, C]``. Logits are multiplied by ``temperature``.
    """
    blended = gamma * content_query + (1.0 - gamma) * query
    return plain_attention(blended, style_key, style_value, heads, temperature)
