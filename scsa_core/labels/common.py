"""What the label modules share: input checks, the nearest palette colour, label counts, and the
bound on working memory."""
from __future__ import annotations

import numpy as np
import torch

# Bounded working memory for the pixel x palette distance matrices and vote tables (elements
# per chunk). Read at call time (``common.CHUNK_ELEMENTS``), so a test can shrink it.
CHUNK_ELEMENTS = 1 << 22


def as_rgb_uint8(image, name: str) -> np.ndarray:
    """A colour map as ``uint8 [H, W, 3]`` (numpy), or a ValueError that names ``name``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: expected an H x W x 3 uint8 array (numpy or torch), "
                         f"got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        rgba = image.ndim == 3 and image.shape[2] == 4
        hint = " (drop the alpha channel, e.g. PIL's .convert('RGB'))" if rgba else ""
        raise ValueError(f"{name}: expected shape H x W x 3 (RGB), got {tuple(image.shape)}{hint}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8 (0-255), got {image.dtype}; "
                         "convert float images in [0, 1] with (x * 255).round().astype(uint8)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: the map is empty ({image.shape[0]} x {image.shape[1]} pixels)")
    return image


def as_label_map(labels) -> torch.Tensor:
    """A label map ``[H, W]`` of any integer dtype as ``int64`` on the CPU."""
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        raise ValueError(f"expected a label map [H, W], got "
                         f"{tuple(labels.shape) if hasattr(labels, 'shape') else type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"a label map must have an integer dtype, got {labels.dtype}")
    if labels.numel() == 0:
        raise ValueError("cannot resample an empty label map")
    return labels.detach().cpu().to(torch.int64)


def as_palette(palette, what: str) -> torch.Tensor:
    """Validated palette as ``int64 [L, 3]`` with values in 0-255."""
    if palette is None:
        raise ValueError(f"{what} needs the palette (uint8 [L, 3], e.g. SemanticLabels.palette): it "
                         "paints every label with its colour and snaps the resized colours back to it")
    if isinstance(palette, np.ndarray):
        palette = torch.from_numpy(palette)
    palette = torch.as_tensor(palette)
    if palette.dim() != 2 or palette.shape[1] != 3:
        raise ValueError(f"{what}: palette must be [L, 3] RGB, got shape {tuple(palette.shape)}")
    if palette.is_floating_point() and palette.numel() and bool((palette != palette.round()).any()):
        raise ValueError(f"{what}: palette colours must be integers 0-255 (uint8), got fractional values")
    palette = palette.detach().cpu().to(torch.int64)
    if palette.numel() and (int(palette.min()) < 0 or int(palette.max()) > 255):
        raise ValueError(f"{what}: palette colours must lie in 0-255")
    return palette


def nearest_colour(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour (Euclidean RGB, ties -> lowest index), chunked.

    colours: ``[N, 3]`` integer; palette: ``[K, 3]`` integer, ``K >= 1``. Returns ``int64 [N]``.
    """
    # |c|^2 - 2 c.p + |p|^2 in float32 is exact here (all terms are integers below 2^24),
    # so ties break exactly as an integer computation would.
    pal = palette.astype(np.float32)
    pal_sq = (pal * pal).sum(1)
    out = np.empty(len(colours), dtype=np.int64)
    step = max(1, CHUNK_ELEMENTS // max(1, len(pal)))
    for start in range(0, len(colours), step):
        block = colours[start:start + step].astype(np.float32)
        dist = pal_sq[None, :] - 2.0 * block @ pal.T
        out[start:start + step] = dist.argmin(1)
    return out


def label_counts(label_map: torch.Tensor, num_labels: int) -> np.ndarray:
    """Pixels per label, ``int64 [num_labels]`` (-1 and out-of-range values ignored)."""
    # numpy's bincount is far faster than torch's on CPU.
    counts = np.bincount(label_map.detach().cpu().reshape(-1).numpy() + 1, minlength=num_labels + 1)
    return counts[1:num_labels + 1]


def matched_labels(content: torch.Tensor, style: torch.Tensor, num_labels: int) -> torch.Tensor:
    """``bool [num_labels]``: the label occurs in both maps."""
    both = (label_counts(content, num_labels) > 0) & (label_counts(style, num_labels) > 0)
    return torch.from_numpy(both)
