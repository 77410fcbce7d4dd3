"""Semantic labels: from colour-coded maps or masks to integer label maps at any grid.

A *label map* is ``int64 [H, W]`` with values in ``[0, L)`` and ``-1`` for "no label". Labels are
shared by the content and the style map: label ``i`` means the same semantic region on both sides,
and ``palette[i]`` is its display colour (for colour maps, the colour it was drawn with).

Palette discovery (``labels_from_color_maps``) works on both maps jointly:

1. Colour clusters are seeded greedily from the joint histogram of exact colours, most frequent
   first; every colour within ``merge_distance`` of a seed joins it. A seed is the most frequent
   exact colour of its neighbourhood, so lossless maps give back their exact palette.
2. Every pixel takes its nearest cluster. A cluster is a region colour only if some of its pixels
   are *interior*: the whole 3 x 3 neighbourhood has the same cluster. Anti-aliased edges, JPEG
   ringing and drawn outlines are bands one or two pixels wide, so their clusters have (almost) no
   interior, however many pixels they hold; a real region, even a thin one, has an interior.
3. Clusters must also cover ``min_area_fraction`` of one of the two maps, which removes stray
   pixels. Every pixel then takes the nearest kept colour (Euclidean RGB), exactly as the dataset
   authors label a map with their hand-written palette.

Grids: SD's UNet halves the latent grid with stride-2 convolutions of padding 1, i.e. with ceil
rounding (``token_grid_size``). ``resample_labels`` brings a label map to any grid; its
``"official"`` mode reproduces the official SCSA code (bilinear resize of the colour image, as
OpenCV does on uint8, then nearest palette colour).
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "SemanticLabels",
    "labels_from_color_maps",
    "labels_from_masks",
    "token_grid_size",
    "resample_labels",
    "opencv_resize_linear_uint8",
    "distinct_palette",
    "label_preview",
    "RESAMPLE_MODES",
]

RESAMPLE_MODES = ("majority", "nearest", "official")

# Bounded working memory for the pixel x palette distance matrices (elements per chunk).
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SemanticLabels:
    """Label maps of a content/style pair with their shared palette.

    content: ``int64 [Hc, Wc]``, values in ``[-1, L)`` (``-1`` = no label).
    style: ``int64 [Hs, Ws]``, same convention; the two sizes may differ.
    palette: ``uint8 [L, 3]`` RGB, label ``i`` is drawn with ``palette[i]``.
    matched: ``bool [L]``, label occurs in both maps.
    """

    content: torch.Tensor
    style: torch.Tensor
    palette: torch.Tensor
    matched: torch.Tensor

    def __post_init__(self):
        for name in ("content", "style"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.dim() != 2:
                raise ValueError(f"SemanticLabels.{name} must be an int64 tensor [H, W]")
        if self.palette.dtype != torch.uint8 or self.palette.dim() != 2 or self.palette.shape[1] != 3:
            raise ValueError("SemanticLabels.palette must be a uint8 tensor [L, 3]")
        if self.matched.dtype != torch.bool or tuple(self.matched.shape) != (self.palette.shape[0],):
            raise ValueError("SemanticLabels.matched must be a bool tensor [L], one flag per palette colour")

    @property
    def num_labels(self) -> int:
        return int(self.palette.shape[0])

    @property
    def shared_labels(self) -> list[int]:
        """Labels present in both maps."""
        return torch.nonzero(self.matched).flatten().tolist()

    @property
    def content_only(self) -> list[int]:
        """Labels present in the content map but not in the style map."""
        return sorted(set(_present(self.content, self.num_labels)) - set(self.shared_labels))

    @property
    def style_only(self) -> list[int]:
        """Labels present in the style map but not in the content map."""
        return sorted(set(_present(self.style, self.num_labels)) - set(self.shared_labels))

    def resized(self, content_size: tuple[int, int], style_size: tuple[int, int],
                mode: str = "majority") -> "SemanticLabels":
        """Both maps resampled to ``(height, width)`` grids; ``matched`` recomputed there.

        A small region can vanish at a coarse grid, so a label matched at full resolution may be
        unmatched at 32 x 32: consumers of a grid must use that grid's ``matched``.
        """
        content = resample_labels(self.content, *content_size, mode=mode, palette=self.palette)
        style = resample_labels(self.style, *style_size, mode=mode, palette=self.palette)
        return SemanticLabels(content, style, self.palette, _matched(content, style, self.num_labels))


def _present(label_map: torch.Tensor, num_labels: int) -> list[int]:
    counts = torch.bincount(label_map[label_map >= 0].flatten(), minlength=num_labels)
    return torch.nonzero(counts).flatten().tolist()


def _matched(content: torch.Tensor, style: torch.Tensor, num_labels: int) -> torch.Tensor:
    def occurs(label_map):
        return torch.bincount(label_map[label_map >= 0].flatten(), minlength=num_labels)[:num_labels] > 0
    return occurs(content) & occurs(style)


# --------------------------------------------------------------------------------------------
# Colour maps
# --------------------------------------------------------------------------------------------
def _as_rgb_uint8(image, name: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: expected an H x W x 3 uint8 array (numpy or torch), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        hint = " (drop the alpha channel, e.g. PIL's .convert('RGB'))" if image.ndim == 3 and image.shape[2] == 4 else ""
        raise ValueError(f"{name}: expected shape H x W x 3 (RGB), got {tuple(image.shape)}{hint}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8 (0-255), got {image.dtype}; "
                         "convert float images in [0, 1] with (x * 255).round().astype(uint8)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: the map is empty ({image.shape[0]} x {image.shape[1]} pixels)")
    return image


def _pack_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> int32 [...] key 0xRRGGBB."""
    rgb = image.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack_rgb(keys: np.ndarray) -> np.ndarray:
    return np.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], axis=-1).astype(np.int32)


def _nearest_colour(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour (Euclidean RGB, ties -> lowest index), chunked.

    colours: ``[N, 3]`` integer; palette: ``[K, 3]`` integer, ``K >= 1``. Returns ``int64 [N]``.
    """
    # |c|^2 - 2 c.p + |p|^2 in float32 is exact here (all terms are integers below 2^24),
    # so ties break exactly as an integer computation would.
    pal = palette.astype(np.float32)
    pal_sq = (pal * pal).sum(1)
    out = np.empty(len(colours), dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(1, len(pal)))
    for start in range(0, len(colours), step):
        block = colours[start:start + step].astype(np.float32)
        dist = pal_sq[None, :] - 2.0 * block @ pal.T
        out[start:start + step] = dist.argmin(1)
    return out


def _interior(label_map: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixel's 3 x 3 neighbourhood (edge-replicated) has its own label."""
    height, width = label_map.shape
    padded = np.pad(label_map, 1, mode="edge")
    inside = np.ones((height, width), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            if dy != 1 or dx != 1:
                inside &= padded[dy:dy + height, dx:dx + width] == label_map
    return inside


def _box_sum_3(volume: np.ndarray) -> np.ndarray:
    """Sum over each cell's 3 x 3 x 3 neighbourhood (zero outside), separably."""
    out = volume
    for axis in range(3):
        padded = np.pad(out, [(1, 1) if a == axis else (0, 0) for a in range(3)])
        size = out.shape[axis]
        out = sum(np.take(padded, np.arange(shift, shift + size), axis=axis) for shift in range(3))
    return out


def _seed_clusters(colours: np.ndarray, counts: np.ndarray, merge_distance: float,
                   min_count: float, max_clusters: int) -> np.ndarray:
    """Greedy mode seeking on a colour histogram.

    colours: ``int32 [U, 3]`` distinct colours, counts: ``[U]`` pixel counts. Returns cluster
    colours ``int32 [K, 3]``. The next seed comes from the densest spot of the colours not yet
    absorbed (pixels within about 24 levels, from a histogram of 8-level bins): there the most
    frequent exact colour becomes the cluster colour (on a lossless map: exactly the painted
    colour), and every colour within ``merge_distance`` of it is absorbed. Seeding stops when the
    densest spot holds fewer than ``min_count`` pixels (the rest is scattered edge and JPEG
    noise), or after ``max_clusters`` seeds.
    """
    radius_sq = merge_distance * merge_distance
    bins = colours >> 3
    bin_index = (bins[:, 0] * 32 + bins[:, 1]) * 32 + bins[:, 2]
    remaining = np.bincount(bin_index, weights=counts, minlength=32 ** 3).reshape(32, 32, 32)
    alive = np.ones(len(colours), dtype=bool)
    seeds = []
    while len(seeds) < max_clusters:
        density = _box_sum_3(remaining)
        densest = np.unravel_index(int(density.argmax()), density.shape)
        if density[densest] < min_count:
            break
        nearby = alive & (np.abs(bins - np.asarray(densest)).max(1) <= 1)
        candidates = np.nonzero(nearby)[0]
        seed = colours[candidates[counts[candidates].argmax()]]
        diff = colours - seed
        absorbed = alive & ((diff * diff).sum(1) <= radius_sq)
        alive &= ~absorbed
        remaining -= np.bincount(bin_index[absorbed], weights=counts[absorbed],
                                 minlength=32 ** 3).reshape(32, 32, 32)
        seeds.append(seed)
    return np.asarray(seeds, dtype=np.int32).reshape(-1, 3)


def labels_from_color_maps(content_rgb, style_rgb, *, max_labels: int = 64,
                           min_area_fraction: float = 2e-4, merge_distance: float = 24.0,
                           min_interior_fraction: float = 0.05, min_flat_fraction: float = 0.6,
                           flat_distance: float = 40.0) -> SemanticLabels:
    """Find the shared palette of two colour-coded semantic maps and label every pixel.

    content_rgb, style_rgb: ``uint8 [H, W, 3]`` RGB (numpy or torch); sizes may differ.

    Options (defaults suit hand-painted maps, anti-aliased or saved as JPEG):
    - ``max_labels``: more region colours than this means the input is not a semantic map.
    - ``min_area_fraction``: a region colour must cover at least this fraction of one of the two
      maps (2e-4 = 52 pixels at 512 x 512); smaller specks are stray pixels.
    - ``merge_distance``: colours closer than this (Euclidean RGB, 0-255) are one colour; JPEG
      noise stays well below it, distinct labels should be further apart than about 2x it.
    - ``min_interior_fraction``: at least this fraction of a colour's pixels must be interior
      (3 x 3 neighbourhood of the same colour). Measured on the dataset: real regions 0.16-0.99
      (a 5-pixel-wide stripe saved as JPEG is the low end), edge blends and JPEG ringing <= 0.01.
    - ``min_flat_fraction`` / ``flat_distance``: at least this fraction of all pixels must lie
      within ``flat_distance`` of a palette colour, which rejects photographs.

    Returns ``SemanticLabels`` with ``content [Hc, Wc]``, ``style [Hs, Ws]`` (no ``-1``: every pixel
    takes its nearest palette colour), ``palette [L, 3]`` ordered by joint area, largest first.
    Raises ``ValueError`` for malformed input and for images that are not flat-colour maps.
    """
    content = _as_rgb_uint8(content_rgb, "content map")
    style = _as_rgb_uint8(style_rgb, "style map")
    if max_labels < 1:
        raise ValueError(f"max_labels must be at least 1, got {max_labels}")

    maps = [content, style]
    keys = [_pack_rgb(m).reshape(-1) for m in maps]
    sizes = [k.size for k in keys]
    unique_keys, inverse, joint_counts = np.unique(np.concatenate(keys), return_inverse=True,
                                                   return_counts=True)
    unique_rgb = _unpack_rgb(unique_keys)
    min_pixels = [max(1, math.ceil(min_area_fraction * s)) for s in sizes]

    # Enough spare seeds for the blend clusters of anti-aliased edges; a photograph exhausts them.
    max_clusters = 4 * max_labels + 64
    seeds = _seed_clusters(unique_rgb, joint_counts, merge_distance, min(min_pixels), max_clusters)
    cluster_of_colour = _nearest_colour(unique_rgb, seeds)

    inverse_per_map = np.split(inverse, np.cumsum(sizes)[:-1])
    area = np.zeros((2, len(seeds)), dtype=np.int64)
    interior = np.zeros(len(seeds), dtype=np.int64)
    for index, (image, inv) in enumerate(zip(maps, inverse_per_map)):
        cluster_map = cluster_of_colour[inv].reshape(image.shape[:2])
        area[index] = np.bincount(cluster_map.reshape(-1), minlength=len(seeds))
        interior += np.bincount(cluster_map[_interior(cluster_map)], minlength=len(seeds))

    large = (area[0] >= min_pixels[0]) | (area[1] >= min_pixels[1])
    keep = large & (interior > 0) & (interior >= min_interior_fraction * area.sum(0))
    if not keep.any():
        # Maps too small (or too fragmented) to have interiors: fall back on area alone.
        keep = large if large.any() else area.sum(0) == area.sum(0).max()
    palette = seeds[keep]
    if len(palette) > max_labels or len(seeds) >= max_clusters:
        found = f"at least {len(seeds)}" if len(seeds) >= max_clusters else str(len(palette))
        raise ValueError(
            f"this does not look like a semantic colour map: found {found} significant colours "
            f"(max_labels={max_labels}). Use a map painted with a few flat colours (one per region, "
            "the same colour for the same region in both maps), not a photograph; or raise max_labels.")

    # Reject photographs whose few largest colour clusters happen to have interiors.
    nearest = _nearest_colour(unique_rgb, palette)
    offset = unique_rgb - palette[nearest]
    flat_pixels = joint_counts[(offset * offset).sum(1) <= flat_distance * flat_distance].sum()
    flat_fraction = flat_pixels / joint_counts.sum()
    if flat_fraction < min_flat_fraction:
        raise ValueError(
            f"this does not look like a semantic colour map: only {100 * flat_fraction:.0f}% of the "
            f"pixels are close to one of the {len(palette)} significant colours found "
            f"(need {100 * min_flat_fraction:.0f}%). Use a map painted with flat colours, not a photograph.")

    # Largest joint area first: label ids are stable under small edits of the maps.
    label_maps = [nearest[inv].reshape(image.shape[:2]) for image, inv in zip(maps, inverse_per_map)]
    joint_area = sum(np.bincount(m.reshape(-1), minlength=len(palette)) for m in label_maps)
    order = np.argsort(-joint_area, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    content_labels = torch.from_numpy(rank[label_maps[0]].astype(np.int64))
    style_labels = torch.from_numpy(rank[label_maps[1]].astype(np.int64))
    palette_t = torch.from_numpy(palette[order].astype(np.uint8))
    return SemanticLabels(content_labels, style_labels, palette_t,
                          _matched(content_labels, style_labels, len(palette)))


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
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


def labels_from_masks(content_masks, style_masks, threshold: float = 0.5) -> SemanticLabels:
    """Label maps from two stacks of region masks; region ``i`` of content matches region ``i`` of style.

    content_masks: ``[L, Hc, Wc]``, style_masks: ``[L, Hs, Ws]``, float (soft or hard; bool and
    integer are accepted), numpy or torch. Masks may overlap, leave pixels uncovered or be empty.
    A pixel takes the strongest mask among those ``>= threshold`` (ties -> lowest index), else
    ``-1``. ``matched[i]``: region ``i`` owns at least one pixel on both sides after that choice.
    The palette is ``distinct_palette(L)``.
    """
    content = _as_mask_stack(content_masks, "content masks")
    style = _as_mask_stack(style_masks, "style masks")
    if content.shape[0] != style.shape[0]:
        raise ValueError(f"content and style need the same number of masks (region i of one matches "
                         f"region i of the other): got {content.shape[0]} content and {style.shape[0]} style masks")

    def to_labels(stack: torch.Tensor) -> torch.Tensor:
        if stack.shape[0] == 0:
            return torch.full(stack.shape[1:], -1, dtype=torch.int64)
        # NaN never passes the threshold.
        strength = torch.where(stack >= threshold, stack, torch.full_like(stack, -math.inf))
        best, index = strength.max(0)
        return torch.where(best > -math.inf, index, torch.full_like(index, -1)).to(torch.int64)

    content_labels, style_labels = to_labels(content), to_labels(style)
    count = content.shape[0]
    return SemanticLabels(content_labels, style_labels, distinct_palette(count),
                          _matched(content_labels, style_labels, count))


# --------------------------------------------------------------------------------------------
# Grids and resampling
# --------------------------------------------------------------------------------------------
def token_grid_size(height: int, width: int, downsample: int) -> tuple[int, int]:
    """Token grid ``(h, w)`` of an SD UNet level that is ``downsample`` (= 2^k) times coarser.

    ``height``, ``width``: size at the finest level (the latent, for UNet levels). Each UNet
    downsampling is a 3 x 3 convolution with stride 2 and padding 1, which maps ``n`` to
    ``ceil(n / 2)``; k of them give ``ceil(n / 2^k)``. The up path restores exactly these sizes
    (it resizes to the skip connection), so output blocks use the same grids.
    Example: latent 64 x 64 -> 32 x 32 at downsample 2; latent 9 x 13 -> 5 x 7 -> 3 x 4 -> 2 x 2.
    (The VAE's own /8 floors, but ComfyUI keeps pixel sizes multiples of 8.)
    """
    if int(downsample) != downsample or downsample < 1 or int(downsample) & (int(downsample) - 1):
        raise ValueError(f"downsample must be a power of two (1, 2, 4, 8, ...), got {downsample}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    downsample = int(downsample)
    return -(-int(height) // downsample), -(-int(width) // downsample)


def _as_label_map(labels) -> torch.Tensor:
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


def _centre_source_index(source: int, target: int) -> torch.Tensor:
    """For each target pixel, the source pixel containing its centre: ``int64 [target]``."""
    index = torch.div((2 * torch.arange(target) + 1) * source, 2 * target, rounding_mode="floor")
    return index.clamp_(0, source - 1)


def _resample_nearest(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    rows = _centre_source_index(labels.shape[0], height)
    cols = _centre_source_index(labels.shape[1], width)
    return labels[rows][:, cols]


def _resample_majority(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    source_h, source_w = labels.shape
    # Each source pixel belongs to the target cell containing its centre; with downsampling every
    # cell receives pixels, with upsampling some receive none and take the nearest source pixel.
    cell_row = _centre_source_index(height, source_h)
    cell_col = _centre_source_index(width, source_w)
    num_values = int(labels.max()) + 2  # -1 -> bin 0
    votes_per_row = width * num_values
    result = _resample_nearest(labels, height, width)
    rows_per_band = max(1, _CHUNK_ELEMENTS // votes_per_row)
    for band_start in range(0, height, rows_per_band):
        band_end = min(height, band_start + rows_per_band)
        source_rows = torch.nonzero((cell_row >= band_start) & (cell_row < band_end)).flatten()
        if source_rows.numel() == 0:
            continue
        band = labels[source_rows] + 1
        cell = (cell_row[source_rows] - band_start)[:, None] * width + cell_col[None, :]
        votes = torch.bincount((cell * num_values + band).flatten(),
                               minlength=(band_end - band_start) * votes_per_row)
        votes = votes.view(band_end - band_start, width, num_values)
        has_pixels = votes.sum(-1) > 0
        # "No label" wins only when nothing else falls in the cell; ties -> lowest label.
        best = votes[..., 1:].argmax(-1)
        labelled = votes[..., 1:].amax(-1) > 0
        choice = torch.where(labelled, best, torch.full_like(best, -1))
        window = result[band_start:band_end]
        window[has_pixels] = choice[has_pixels]
    return result


def _opencv_axis(source: int, target: int):
    """OpenCV INTER_LINEAR taps along one axis: (index0, index1, weight0, weight1), weights x 2048."""
    scale = source / target
    # float32 arithmetic and clamping exactly as cv::resize computes its tables.
    position = ((np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(position).astype(np.int64)
    frac = (position - start.astype(np.float32)).astype(np.float32)
    low = start < 0
    frac[low] = 0
    start[low] = 0
    high = start >= source - 1
    frac[high] = 0
    start[high] = source - 1
    stop = np.minimum(start + 1, source - 1)
    weight1 = np.rint(frac.astype(np.float64) * 2048).astype(np.int64)
    weight0 = np.rint((np.float32(1) - frac).astype(np.float64) * 2048).astype(np.int64)
    return start, stop, weight0, weight1


def opencv_resize_linear_uint8(image, height: int, width: int) -> torch.Tensor:
    """``cv2.resize(image, (width, height))`` (INTER_LINEAR) on a ``uint8 [H, W, C]`` image.

    Half-pixel centres, edge clamping, no antialiasing, fixed-point weights (11 bits) and the
    rounding of OpenCV's SIMD path (16 bytes per step; the row tail uses the scalar formula).
    Returns ``uint8 [height, width, C]``.
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image [H, W, C], got {array.dtype} {tuple(array.shape)}")
    source_h, source_w, channels = array.shape
    src = array.astype(np.int64)
    x0, x1, a0, a1 = _opencv_axis(source_w, width)
    y0, y1, b0, b1 = _opencv_axis(source_h, height)
    # Horizontal pass: exact integers (value x 2048).
    rows = src[:, x0, :] * a0[None, :, None] + src[:, x1, :] * a1[None, :, None]
    top = rows[y0].reshape(height, width * channels)
    bottom = rows[y1].reshape(height, width * channels)
    beta0, beta1 = b0[:, None], b1[:, None]
    # SIMD path: 16-bit multiply-high of (S >> 4) by beta, then a rounding shift by 2.
    simd = (((top >> 4) * beta0) >> 16) + (((bottom >> 4) * beta1) >> 16)
    simd = (simd + 2) >> 2
    scalar = (top * beta0 + bottom * beta1 + (1 << 21)) >> 22
    vector_width = (width * channels) // 16 * 16
    out = np.concatenate([simd[:, :vector_width], scalar[:, vector_width:]], axis=1)
    return torch.from_numpy(np.clip(out, 0, 255).astype(np.uint8).reshape(height, width, channels))


def _resample_official(labels: torch.Tensor, height: int, width: int, palette) -> torch.Tensor:
    if palette is None:
        raise ValueError('resample_labels(mode="official") needs the palette (e.g. labels.palette): '
                         "the official code resizes the colour image and snaps to palette colours")
    palette = palette if isinstance(palette, torch.Tensor) else torch.as_tensor(np.asarray(palette))
    if palette.dim() != 2 or palette.shape[1] != 3 or palette.shape[0] < 1:
        raise ValueError(f"palette must be [L, 3] RGB with L >= 1, got {tuple(palette.shape)}")
    palette = palette.detach().cpu().to(torch.int64).clamp(0, 255)
    num_labels = palette.shape[0]
    if int(labels.max()) >= num_labels:
        raise ValueError(f"label {int(labels.max())} has no palette colour (palette has {num_labels})")
    # Unlabelled pixels get a colour of their own, the cube corner furthest from the palette,
    # and come back as -1 if they stay nearest to it.
    corners = torch.tensor([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)])
    spare = corners[torch.cdist(corners.double(), palette.double()).min(1).values.argmax()]
    colours = torch.cat([palette, spare[None]])
    painted = colours[torch.where(labels >= 0, labels, torch.full_like(labels, num_labels))]
    resized = opencv_resize_linear_uint8(painted.to(torch.uint8), height, width)
    nearest = _nearest_colour(resized.reshape(-1, 3).numpy(), colours.numpy())
    nearest[nearest == num_labels] = -1
    return torch.from_numpy(nearest).view(height, width)


def resample_labels(labels, height: int, width: int, mode: str = "majority",
                    palette=None) -> torch.Tensor:
    """Resample a label map ``[H, W]`` (values ``>= -1``) to ``int64 [height, width]``.

    Any target size, down or up, odd ratios included.
    - ``"majority"``: a target cell holds the source pixels whose centres fall in it; it takes the
      most frequent label among them (ties -> lowest label), ``-1`` only if all are unlabelled.
      Cells that receive no pixel (upsampling) take the nearest source pixel.
    - ``"nearest"``: the source pixel under each target pixel centre.
    - ``"official"``: the official SCSA code. Paint each pixel with ``palette[label]``, resize that
      colour image as ``cv2.resize`` INTER_LINEAR does on uint8, snap to the nearest palette
      colour. Needs ``palette`` (``uint8 [L, 3]``).
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"unknown resampling mode {mode!r}; choose one of {', '.join(RESAMPLE_MODES)}")
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"target size must be positive integers, got {height} x {width}")
    height, width = int(height), int(width)
    label_map = _as_label_map(labels)
    if int(label_map.min()) < -1:
        raise ValueError(f"labels must be >= -1 (-1 = no label), found {int(label_map.min())}")
    if mode == "nearest":
        return _resample_nearest(label_map, height, width).contiguous()
    if mode == "majority":
        return _resample_majority(label_map, height, width)
    return _resample_official(label_map, height, width, palette)


# --------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------
_UNLABELLED_COLOURS = ((128, 128, 128), (255, 0, 255))


def label_preview(label_map, palette, matched=None, scale: int = 1, stripe: int = 4) -> torch.Tensor:
    """RGB preview ``uint8 [H * scale, W * scale, 3]`` of a label map ``[H, W]``.

    Labels take their palette colour. Unlabelled pixels (``-1``) are hatched grey/magenta;
    labels with ``matched[i] == False`` (no counterpart in the other map) keep their colour with
    dark diagonal hatching, so the user sees which regions will fall back. ``scale`` enlarges
    coarse grids (nearest) so a 32 x 32 map stays readable.
    """
    labels = _as_label_map(label_map)
    palette = palette if isinstance(palette, torch.Tensor) else torch.as_tensor(np.asarray(palette))
    palette = palette.detach().cpu().to(torch.uint8).reshape(-1, 3)
    if int(labels.max()) >= palette.shape[0]:
        raise ValueError(f"label {int(labels.max())} has no palette colour (palette has {palette.shape[0]})")
    if scale < 1 or stripe < 1:
        raise ValueError("scale and stripe must be >= 1")
    if scale > 1:
        labels = labels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    height, width = labels.shape
    diagonal = (torch.arange(height)[:, None] + torch.arange(width)[None, :]) // stripe % 2 == 0
    image = palette[labels.clamp_min(0)].clone()
    grey, magenta = (torch.tensor(c, dtype=torch.uint8) for c in _UNLABELLED_COLOURS)
    unlabelled = labels < 0
    image[unlabelled & diagonal] = grey
    image[unlabelled & ~diagonal] = magenta
    if matched is not None:
        matched = torch.as_tensor(matched, dtype=torch.bool).flatten()
        if matched.shape[0] != palette.shape[0]:
            raise ValueError("matched needs one flag per palette colour")
        lonely = ~matched[labels.clamp_min(0)] & ~unlabelled
        dark = lonely & ((torch.arange(height)[:, None] + torch.arange(width)[None, :]) % (2 * stripe) == 0)
        image[dark] = torch.tensor((40, 40, 40), dtype=torch.uint8)
    return image
