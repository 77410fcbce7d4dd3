"""Labels from region masks (a segmentation node's MASK batches): mask ``i`` is region ``i`` in
every map, drawn in ``distinct_palette`` colours."""
from __future__ import annotations

import colorsys
import math

import numpy as np
import torch

from ..styles import MAX_STYLES, numbered
from .common import matched_labels
from .container import SemanticLabels

__all__ = ["labels_from_masks", "distinct_palette"]


def distinct_palette(count: int) -> torch.Tensor:
    """``count`` deterministic, well separated display colours, ``uint8 [count, 3]``.

    Hues step by the golden angle so that any prefix is spread over the colour wheel;
    saturation and value cycle so that neighbouring hues differ in brightness too.
    """
    colours = []
    for index in range(count):
        hue = (index * 0.618033988749895) % 1.0
        saturation = (0.85, 0.55, 1.0)[index % 3]
        value = (0.95, 0.75, 0.55)[(index // 3) % 3]
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    return torch.tensor(colours, dtype=torch.uint8).reshape(count, 3)


def _as_mask_stack(masks, name: str) -> torch.Tensor:
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"{name}: expected an L x H x W array (numpy or torch), got {type(masks).__name__}")
    if masks.dim() == 2:
        raise ValueError(f"{name}: expected a stack of masks L x H x W, got one H x W mask; "
                         "add a leading dimension (masks[None]) for a single region")
    if masks.dim() != 3:
        raise ValueError(f"{name}: expected shape L x H x W, got {tuple(masks.shape)}")
    if masks.is_complex():
        raise ValueError(f"{name}: complex masks are not supported")
    return masks.detach().cpu().to(torch.float32)


def labels_from_masks(content_masks, style_masks, *more_style_masks, threshold: float = 0.5) -> SemanticLabels:
    """Label maps from stacks of region masks; region ``i`` of the content matches region ``i`` of
    every style.

    content_masks: ``[L, Hc, Wc]``; style_masks: ``[L, Hs, Ws]``, and up to ``MAX_STYLES - 1``
    more stacks for styles 2.. (each in the content's order); float (soft or hard; bool and
    integer are accepted), numpy or torch. Masks may overlap, leave pixels uncovered or be empty.
    A pixel takes the strongest mask among those ``>= threshold`` (ties -> lowest index), else
    ``-1``. ``matched[i]``: region ``i`` owns at least one pixel in the content and in style 1
    after that choice (in some style that lends it, with several). The palette is
    ``distinct_palette(L)``.
    """
    stacks = (style_masks,) + more_style_masks
    if len(stacks) > MAX_STYLES:
        raise ValueError(f"give between 1 and {MAX_STYLES} style mask stacks, got {len(stacks)}")
    content = _as_mask_stack(content_masks, "content masks")
    styles = [_as_mask_stack(masks, numbered("style masks", number, " "))
              for number, masks in enumerate(stacks, start=1)]
    for number, style in enumerate(styles, start=1):
        if content.shape[0] != style.shape[0]:
            which = numbered("style", number, " ")
            raise ValueError(f"content and {which} need the same number of masks (region i of one matches "
                             f"region i of the other): got {content.shape[0]} content and "
                             f"{style.shape[0]} {which} masks")

    def to_labels(stack: torch.Tensor) -> torch.Tensor:
        if stack.shape[0] == 0:
            return torch.full(stack.shape[1:], -1, dtype=torch.int64)
        # NaN never passes the threshold.
        strength = torch.where(stack >= threshold, stack, torch.full_like(stack, -math.inf))
        best, index = strength.max(0)
        return torch.where(best > -math.inf, index, torch.full_like(index, -1)).to(torch.int64)

    content_labels, style_labels = to_labels(content), [to_labels(style) for style in styles]
    count = content.shape[0]
    pair = SemanticLabels(content_labels, style_labels[0], distinct_palette(count),
                          matched_labels(content_labels, style_labels[0], count))
    return pair.with_more_styles(style_labels[1:])
