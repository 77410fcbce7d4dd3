"""Shared helpers of the feed-forward networks: token layout, 1 x 1 convs on tokens, weights.

Feature maps are ``[B, C, H, W]``; token sequences are ``[B, H * W, C]`` with tokens row-major
(token ``y * W + x``), the layout of the pack's attention functions and of the official code's
flattening. Label maps follow ``scsa_core.labels``: ``int64 [h, w]``, ``-1`` = no label.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["to_tokens", "to_feature_map", "conv1x1_tokens", "SCSAWeights", "LabelsAt", "Trace",
           "record", "flat_labels", "check_map_sizes", "MAX_GRID_TOKENS"]

# A content grid larger than this (tokens) would make the attention of one call take minutes
# and gigabytes; callers refuse it with the working resolution to lower (1024 x 1024 px of
# StyTr2 is 16384 tokens).
MAX_GRID_TOKENS = 1 << 16

# labels_at((content_h, content_w), (style_h, style_w)) -> (int64 [ch, cw], int64 [sh, sw]):
# the label maps of both sides at the grids of one network level.
LabelsAt = Callable[[tuple, tuple], tuple]
# Optional dict the forward passes fill with every intermediate stage (name -> tensor).
Trace = dict


def to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H * W, C]`` (row-major tokens)."""
    return feature_map.flatten(2).transpose(1, 2)


def to_feature_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, H * W, C]`` -> ``[B, C, H, W]`` (keeps the grid's own height and width: the
    official code assumed a square grid)."""
    batch, count, channels = tokens.shape
    if count != height * width:
        raise ValueError(f"{count} tokens do not fill a {height} x {width} grid")
    return tokens.transpose(1, 2).reshape(batch, channels, height, width)


def conv1x1_tokens(conv: torch.nn.Conv2d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1 x 1 convolution applied to tokens ``[B, N, C_in]`` -> ``[B, N, C_out]`` (a matmul:
    same result as the conv on the feature map, without the layout round trip)."""
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)


@dataclass(frozen=True)
class SCSAWeights:
    """SCSA's mixing weights: ``t1`` (SCA), ``t2`` (SSA) and, for StyTr2, ``b`` (S-AdaIN share of
    the first decoder layer's residual)."""
    sca_weight: float
    ssa_weight: float
    adain_mix: float = 0.0

    def __post_init__(self):
        for name in ("sca_weight", "ssa_weight", "adain_mix"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                raise ValueError(f"{name} must be a finite number, got {value!r}")


def record(trace: Trace | None, name: str, value) -> None:
    """Store one stage in ``trace`` (a no-op without one). ``value`` may be a callable, so a
    stage that costs extra work (a branch's own output projection) is computed only when
    traced."""
    if trace is not None:
        trace[name] = (value() if callable(value) else value).detach()


def flat_labels(labels: torch.Tensor, grid: tuple, side: str, device) -> torch.Tensor:
    """A label map ``[h, w]`` at ``grid`` as the token label vector ``int64 [h * w]`` on the
    features' device (the label grouping indexes the features with it)."""
    if tuple(labels.shape) != tuple(grid):
        raise ValueError(f"the {side} labels are {tuple(labels.shape)} but the {side} feature grid is "
                         f"{tuple(grid)}: labels_at must return label maps at the grids it is given")
    return labels.reshape(-1).long().to(device)


def check_map_sizes(content: torch.Tensor, style: torch.Tensor, content_sem: torch.Tensor,
                    style_sem: torch.Tensor) -> None:
    """Each semantic map image must have its own image's size (they share the feature grid)."""
    for name, image, sem in (("content", content, content_sem), ("style", style, style_sem)):
        if tuple(sem.shape[-2:]) != tuple(image.shape[-2:]) or sem.shape[0] != 1:
            raise ValueError(f"the {name} semantic map is {tuple(sem.shape)} but the {name} image is "
                             f"{tuple(image.shape)}: give one map [1, 3, H, W] of the image's size "
                             "(scsa_core.feedforward.stylize resizes them)")
