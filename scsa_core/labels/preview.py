"""Previews: a label map drawn in its palette colours, with unlabelled and unmatched regions marked."""
from __future__ import annotations

import numpy as np
import torch

from .common import as_label_map, as_palette

__all__ = ["label_preview"]

_UNLABELLED_HATCH = ((128, 128, 128), (255, 0, 255))  # grey / magenta stripes
_UNMATCHED_STRIPE = (32, 32, 32)


def label_preview(label_map, palette, matched=None, scale: int = 1, stripe: int = 4) -> torch.Tensor:
    """RGB preview ``uint8 [H * scale, W * scale, 3]`` of a label map ``[H, W]``.

    palette: ``[L, 3]``; matched: optional ``bool [L]``. Labels take their palette colour.
    Unlabelled pixels (``-1``) are hatched grey/magenta; labels with ``matched[i] == False``
    (no counterpart in the other map, so they fall back to unmasked attention) keep their
    colour crossed by thin dark diagonals. ``scale`` enlarges coarse grids (nearest neighbour)
    so that a 32 x 32 token grid stays readable; ``stripe`` is the hatch width in output pixels.
    """
    labels = as_label_map(label_map)
    palette = as_palette(palette, "label_preview").to(torch.uint8)
    if int(labels.max()) >= palette.shape[0]:
        raise ValueError(f"label {int(labels.max())} has no palette colour "
                         f"(the palette has {palette.shape[0]})")
    if int(labels.min()) < -1:
        raise ValueError(f"labels must be >= -1 (-1 = no label), found {int(labels.min())}")
    if int(scale) != scale or int(stripe) != stripe or scale < 1 or stripe < 1:
        raise ValueError(f"scale and stripe must be positive integers, got {scale} and {stripe}")
    scale, stripe = int(scale), int(stripe)
    if scale > 1:
        labels = labels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    height, width = labels.shape
    diagonal = torch.arange(height)[:, None] + torch.arange(width)[None, :]
    grey, magenta = (torch.tensor(c, dtype=torch.uint8) for c in _UNLABELLED_HATCH)
    image = torch.cat([grey[None], palette])[labels + 1]
    unlabelled = labels < 0
    image[unlabelled & (diagonal // stripe % 2 == 1)] = magenta
    if matched is not None:
        matched = torch.as_tensor(np.asarray(matched) if not isinstance(matched, torch.Tensor) else matched)
        matched = matched.to(torch.bool).flatten()
        if matched.shape[0] != palette.shape[0]:
            raise ValueError(f"matched needs one flag per palette colour: {matched.shape[0]} flags, "
                             f"{palette.shape[0]} colours")
        lonely = ~torch.cat([torch.ones(1, dtype=torch.bool), matched])[labels + 1]
        image[lonely & (diagonal % (2 * stripe) == 0)] = torch.tensor(_UNMATCHED_STRIPE, dtype=torch.uint8)
    return image
