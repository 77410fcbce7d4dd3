"""AdaIN, semantic AdaIN (S-AdaIN) and instance normalisation over token sequences.

Features are token sequences ``[B, N, C]`` (tokens row-major on an ``h x w`` grid); label vectors
are ``int64 [N]`` with ``-1`` for "no label". Statistics are always computed in float32 (or
float64 if the input is float64) and the result is cast back to the input dtype.

Fallback (documented in the README): S-AdaIN never produces NaN. A content region whose label
has no style token at this grid, and unlabelled content tokens (``-1``), are normalised with
their own region's statistics and re-styled with the *global* style statistics. Labels present
only in the style are simply unused.
"""
from __future__ import annotations

import torch

__all__ = ["adain", "semantic_adain", "instance_normalize", "region_mean_std"]

SADAIN_EPS = 1e-5


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def region_mean_std(features: torch.Tensor, labels: torch.Tensor, num_regions: int,
                    eps: float = SADAIN_EPS, unbiased: bool = False):
    """Per-region, per-channel mean and std of ``features``.

    features: ``[B, N, C]``; labels: ``int64 [N]`` in ``[0, num_regions)``.
    Returns ``(mean, std, count)``: ``[B, R, C]``, ``[B, R, C]``, ``[R]``;
    ``std = sqrt(var + eps)`` (population variance unless ``unbiased``). Empty regions get
    mean 0, std sqrt(eps) and count 0: callers decide what an empty region means.
    """
    x = features.to(_stat_dtype(features))
    batch, _, channels = x.shape
    count = torch.zeros(num_regions, dtype=x.dtype, device=x.device)
    count.index_add_(0, labels, torch.ones_like(labels, dtype=x.dtype))
    sums = x.new_zeros(batch, num_regions, channels).index_add_(1, labels, x)
    mean = sums / count.clamp_min(1)[None, :, None]
    # Two passes (centre, then square) keep the variance exact for large-mean features.
    centred = x - mean[:, labels]
    sq = x.new_zeros(batch, num_regions, channels).index_add_(1, labels, centred * centred)
    denom = (count - 1 if unbiased else count).clamp_min(1)
    std = torch.sqrt(sq / denom[None, :, None] + eps)
    return mean, std, count


def instance_normalize(features: torch.Tensor, eps: float = SADAIN_EPS) -> torch.Tensor:
    """Per-channel normalisation over tokens with unbiased variance + eps (the official ``IN``).

    features: ``[B, N, C]`` -> ``[B, N, C]``.
    """
    labels = torch.zeros(features.shape[1], dtype=torch.long, device=features.device)
    mean, std, _ = region_mean_std(features, labels, 1, eps=eps, unbiased=True)
    return ((features.to(mean.dtype) - mean) / std).to(features.dtype)


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = SADAIN_EPS) -> torch.Tensor:
    """Global AdaIN over tokens (StyleID's latent initialisation: unbiased std).

    content: ``[B, N, C]``; style: ``[B or 1, M, C]`` -> ``[B, N, C]``.
    """
    c_labels = torch.zeros(content.shape[1], dtype=torch.long, device=content.device)
    s_labels = torch.zeros(style.shape[1], dtype=torch.long, device=style.device)
    c_mean, c_std, _ = region_mean_std(content, c_labels, 1, eps=eps, unbiased=True)
    s_mean, s_std, _ = region_mean_std(style, s_labels, 1, eps=eps, unbiased=True)
    out = (content.to(c_mean.dtype) - c_mean) / c_std * s_std + s_mean
    return out.to(content.dtype)


def semantic_adain(content: torch.Tensor, style: torch.Tensor, content_labels: torch.Tensor,
                   style_labels: torch.Tensor, eps: float = SADAIN_EPS) -> torch.Tensor:
    """S-AdaIN: AdaIN per semantic region, population variance + eps (docs/method.md §4).

    content: ``[B, N, C]``; style: ``[B or 1, M, C]``; content_labels: ``int64 [N]``;
    style_labels: ``int64 [M]`` (``-1`` = no label) -> ``[B, N, C]``.
    Content tokens without a style counterpart fall back to the global style statistics.
    """
    num_labels = int(max(content_labels.max().item(), style_labels.max().item(), -1)) + 1
    # Region index num_labels collects unlabelled tokens; it never matches a style region.
    unlabelled = num_labels
    c_regions = torch.where(content_labels < 0, unlabelled, content_labels)
    s_regions = torch.where(style_labels < 0, unlabelled, style_labels)
    c_mean, c_std, _ = region_mean_std(content, c_regions, num_labels + 1, eps=eps)
    s_mean, s_std, s_count = region_mean_std(style, s_regions, num_labels + 1, eps=eps)

    all_style = torch.zeros_like(style_labels)
    g_mean, g_std, _ = region_mean_std(style, all_style, 1, eps=eps)
    has_style = s_count > 0
    has_style[unlabelled] = False
    s_mean = torch.where(has_style[None, :, None], s_mean, g_mean)
    s_std = torch.where(has_style[None, :, None], s_std, g_std)

    # One fused multiply-add per token: out = x * scale + shift with per-region scale/shift.
    scale = s_std / c_std
    shift = s_mean - c_mean * scale
    out = torch.addcmul(shift[:, c_regions], content.to(scale.dtype), scale[:, c_regions])
    return out.to(content.dtype)
