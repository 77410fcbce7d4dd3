"""Semantic labels: from colour-coded maps or masks to integer label maps at any grid.

A *label map* is ``int64 [H, W]`` with values in ``[0, L)`` and ``-1`` for "no label". Labels are
shared by the content and the style map: label ``i`` is the same semantic region on both sides,
and ``palette[i]`` is its display colour (for colour maps, the colour it was painted with).

Palette discovery (``labels_from_color_maps``) looks at both maps together:

1. Colour clusters are seeded from the joint histogram: at the densest spot of the colours not
   yet taken, the most frequent exact colour becomes a cluster and takes every colour within
   ``merge_distance``. On a lossless map the clusters are exactly the painted colours.
2. Every pixel joins its nearest cluster. A cluster is a region colour only if a fair share of
   its pixels are *interior* (their whole 3 x 3 window, wider for large maps, has that
   cluster). Anti-aliased edges, JPEG ringing and drawn outlines form bands one or two pixels
   wide, so their clusters have almost no interior however many pixels they hold, while a real
   region, even a thin stripe, has one. Stray specks fail a minimum area, and a region colour
   within twice ``merge_distance`` of a larger one is JPEG noise spilling over and merges in.
3. Pixels close to a region colour take it (the nearest colour, as the dataset authors label
   their maps). Pixels far from all of them (edge blends, JPEG colour bleeding, outlines) take,
   among the regions right around them, the one nearest in colour, so bleeding at a boundary
   never invents a third region.

Grids: SD's UNet halves the latent grid with stride-2 convolutions of padding 1, i.e. with ceil
rounding (``token_grid_size``). ``resample_labels`` brings a label map to any grid; its
``"official"`` mode reproduces the official SCSA code (OpenCV bilinear resize of the colour
image, then nearest palette colour), and ``resample_color_map_official`` does so from the colour
map itself, bit for bit.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = [
    "SemanticLabels",
    "labels_from_color_maps",
    "labels_from_masks",
    "token_grid_size",
    "resample_labels",
    "opencv_resize_linear_uint8",
    "resample_color_map_official",
    "distinct_palette",
    "label_preview",
    "RESAMPLE_MODES",
    "MAX_STYLES",
    "labels_from_color_map_set",
    "labels_from_mask_set",
]

RESAMPLE_MODES = ("majority", "nearest", "official")
MAX_STYLES = 4

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
    content_colors, style_colors: ``uint8 [H, W, 3]`` the colour maps as drawn, when the labels
    came from colour maps (None from masks): the official resampling resizes colours, not labels.
    """

    content: torch.Tensor
    style: torch.Tensor
    palette: torch.Tensor
    matched: torch.Tensor
    content_colors: torch.Tensor | None = None
    style_colors: torch.Tensor | None = None
    # Several style images (up to MAX_STYLES): styles 2.. as label maps (and colour maps), and
    # which style may lend which label (None: every style that has it). See ``style_labels_at``.
    more_styles: tuple = ()
    more_style_colors: tuple = ()
    sources: torch.Tensor | None = None

    def __post_init__(self):
        palette, matched = self.palette, self.matched
        if not isinstance(palette, torch.Tensor) or palette.dtype != torch.uint8 or palette.dim() != 2 \
                or palette.shape[1] != 3:
            raise ValueError("SemanticLabels.palette must be a uint8 tensor [L, 3]")
        if not isinstance(matched, torch.Tensor) or matched.dtype != torch.bool \
                or tuple(matched.shape) != (palette.shape[0],):
            raise ValueError("SemanticLabels.matched must be a bool tensor [L], one flag per palette colour")
        named = [("content", self.content), ("style", self.style)]
        named += [(f"more_styles[{i}]", value) for i, value in enumerate(self.more_styles)]
        for name, value in named:
            if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.dim() != 2:
                raise ValueError(f"SemanticLabels.{name} must be an int64 tensor [H, W]")
            values = value.detach().cpu().numpy()
            if values.size and (values.min() < -1 or values.max() >= palette.shape[0]):
                raise ValueError(f"SemanticLabels.{name} values must lie in [-1, {palette.shape[0]})")
        if self.num_styles > MAX_STYLES:
            raise ValueError(f"SemanticLabels: at most {MAX_STYLES} style maps, got {self.num_styles}")
        if self.more_style_colors and len(self.more_style_colors) != len(self.more_styles):
            raise ValueError("SemanticLabels.more_style_colors needs one colour map per extra style")
        if self.sources is not None and (self.sources.dtype != torch.bool
                                         or tuple(self.sources.shape) != (self.num_styles, palette.shape[0])):
            raise ValueError(f"SemanticLabels.sources must be a bool tensor [styles, labels] = "
                             f"[{self.num_styles}, {palette.shape[0]}]")

    def labels_at(self, height: int, width: int, mode: str = "majority"):
        """Content and style label maps ``int64 [height, width]`` at one token grid.

        ``mode="official"`` resizes the colour maps themselves when they are known (exactly the
        official code's labels), otherwise the palette-painted label maps.
        """
        if mode == "official" and self.content_colors is not None and self.style_colors is not None:
            return (resample_color_map_official(self.content_colors, self.palette, height, width),
                    resample_color_map_official(self.style_colors, self.palette, height, width))
        return (resample_labels(self.content, height, width, mode=mode, palette=self.palette),
                resample_labels(self.style, height, width, mode=mode, palette=self.palette))

    @property
    def num_labels(self) -> int:
        return int(self.palette.shape[0])

    @property
    def num_styles(self) -> int:
        return 1 + len(self.more_styles)

    @property
    def style_maps(self) -> tuple[torch.Tensor, ...]:
        """The label maps of every style image, style 1 first."""
        return (self.style,) + tuple(self.more_styles)

    def _style_colors(self, index: int) -> torch.Tensor | None:
        return self.style_colors if index == 0 else (self.more_style_colors[index - 1]
                                                     if self.more_style_colors else None)

    @property
    def present(self) -> torch.Tensor:
        """``bool [styles, L]``: style ``s``'s map has label ``l`` (whatever ``sources`` says)."""
        return torch.from_numpy(np.stack([_label_counts(m, self.num_labels) > 0 for m in self.style_maps]))

    @property
    def lends(self) -> torch.Tensor:
        """``bool [styles, L]``: style ``s`` lends label ``l`` (has it, and ``sources`` allows it)."""
        return self.present if self.sources is None else self.present & self.sources

    def content_labels_at(self, height: int, width: int, mode: str = "majority") -> torch.Tensor:
        """The content label map ``int64 [height, width]`` at one token grid (see ``labels_at``)."""
        if mode == "official" and self.content_colors is not None:
            return resample_color_map_official(self.content_colors, self.palette, height, width)
        return resample_labels(self.content, height, width, mode=mode, palette=self.palette)

    def style_labels_at(self, index: int, height: int, width: int, mode: str = "majority") -> torch.Tensor:
        """Style ``index``'s (0-based) label map ``int64 [height, width]`` at one token grid.

        Labels this style does not lend (``sources``) are ``-1`` there: no content token attends
        to those tokens by label, and S-AdaIN leaves them out of that label's statistics.
        """
        colors = self._style_colors(index)
        if mode == "official" and colors is not None:
            labels = resample_color_map_official(colors, self.palette, height, width)
        else:
            labels = resample_labels(self.style_maps[index], height, width, mode=mode, palette=self.palette)
        if self.sources is not None:
            allowed = torch.cat([torch.zeros(1, dtype=torch.bool), self.sources[index]])
            labels = torch.where(allowed[labels + 1], labels, torch.full_like(labels, -1))
        return labels

    def with_sources(self, sources: torch.Tensor | None) -> "SemanticLabels":
        """The same maps with ``sources`` (``bool [styles, L]``, None: automatic); ``matched``
        becomes "in the content and lent by some style"."""
        trial = replace(self, sources=sources)
        lent = trial.lends.any(0)
        return replace(trial, matched=torch.from_numpy(_label_counts(self.content, self.num_labels) > 0) & lent)

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


def _label_counts(label_map: torch.Tensor, num_labels: int) -> np.ndarray:
    """Pixels per label, ``int64 [num_labels]`` (-1 and out-of-range values ignored)."""
    # numpy's bincount is far faster than torch's on CPU.
    counts = np.bincount(label_map.detach().cpu().reshape(-1).numpy() + 1, minlength=num_labels + 1)
    return counts[1:num_labels + 1]


def _present(label_map: torch.Tensor, num_labels: int) -> list[int]:
    return np.nonzero(_label_counts(label_map, num_labels))[0].tolist()


def _matched(content: torch.Tensor, style: torch.Tensor, num_labels: int) -> torch.Tensor:
    both = (_label_counts(content, num_labels) > 0) & (_label_counts(style, num_labels) > 0)
    return torch.from_numpy(both)


# --------------------------------------------------------------------------------------------
# Colour maps
# --------------------------------------------------------------------------------------------
def _as_rgb_uint8(image, name: str) -> np.ndarray:
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


def _sliding(values: np.ndarray, radius: int, axis: int, reduce) -> np.ndarray:
    """``reduce`` (np.minimum / np.maximum) over a window of 2 radius + 1 along ``axis``; the
    edge-replicated border is the same as clipping the window."""
    size = values.shape[axis]
    padding = [(0, 0)] * values.ndim
    padding[axis] = (radius, radius)
    padded = np.pad(values, padding, mode="edge")
    window = [slice(None)] * values.ndim
    out = values
    for shift in range(2 * radius + 1):
        window[axis] = slice(shift, shift + size)
        out = reduce(out, padded[tuple(window)])
    return out


def _interior(label_map: np.ndarray, radius: int = 1) -> np.ndarray:
    """bool [H, W]: the whole (2 radius + 1)^2 window around the pixel (clipped at the border)
    has the pixel's label, i.e. the window's minimum and maximum label are the pixel's."""
    low, high = label_map, label_map
    for axis in (0, 1):
        low = _sliding(low, radius, axis, np.minimum)
        high = _sliding(high, radius, axis, np.maximum)
    return (low == label_map) & (high == label_map)


_BINS = 32  # 8-level colour bins for the density estimate
_DOMINANT_FRACTION = 0.1  # share of a map that makes a flat colour a region outright


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
    reach = int(math.ceil(merge_distance / 8.0)) + 1  # bins a merge can touch, each way
    bins = colours >> 3
    bin_index = (bins[:, 0] * _BINS + bins[:, 1]) * _BINS + bins[:, 2]
    # Colours sorted by bin, so that a box of bins is a few contiguous runs (CSR layout).
    order = np.argsort(bin_index, kind="stable")
    colours, counts, bins, bin_index = colours[order], counts[order], bins[order], bin_index[order]
    bin_start = np.concatenate([[0], np.cumsum(np.bincount(bin_index, minlength=_BINS ** 3))])
    remaining = np.bincount(bin_index, weights=counts, minlength=_BINS ** 3).reshape((_BINS,) * 3)
    density = _box_sum_3(remaining)
    alive = np.ones(len(colours), dtype=bool)

    def members(centre, half_width):
        """Indices of the colours in the box of bins ``centre +- half_width``."""
        axes = [np.arange(max(0, c - half_width), min(_BINS, c + half_width + 1)) for c in centre]
        ids = ((axes[0][:, None, None] * _BINS + axes[1][None, :, None]) * _BINS
               + axes[2][None, None, :]).reshape(-1)
        starts, stops = bin_start[ids], bin_start[ids + 1]
        lengths = stops - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        run_offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        return np.arange(total) + run_offsets

    seeds = []
    while len(seeds) < max_clusters:
        densest = np.unravel_index(int(density.argmax()), density.shape)
        if density[densest] < min_count:
            break
        nearby = members(densest, 1)
        nearby = nearby[alive[nearby]]
        seed = colours[nearby[counts[nearby].argmax()]]
        seed_bin = seed >> 3
        reachable = members(seed_bin, reach)
        diff = colours[reachable] - seed
        absorbed = reachable[alive[reachable] & ((diff * diff).sum(1) <= radius_sq)]
        alive[absorbed] = False
        np.subtract.at(remaining.reshape(-1), bin_index[absorbed], counts[absorbed])
        # Only densities next to the changed bins move.
        lo = np.maximum(seed_bin - reach - 1, 0)
        hi = np.minimum(seed_bin + reach + 2, _BINS)
        plo, phi = np.maximum(lo - 1, 0), np.minimum(hi + 1, _BINS)
        local = _box_sum_3(remaining[plo[0]:phi[0], plo[1]:phi[1], plo[2]:phi[2]])
        density[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = local[lo[0] - plo[0]:hi[0] - plo[0],
                                                               lo[1] - plo[1]:hi[1] - plo[1],
                                                               lo[2] - plo[2]:hi[2] - plo[2]]
        seeds.append(seed)
    return np.asarray(seeds, dtype=np.int32).reshape(-1, 3)


def _label_off_palette_pixels(image: np.ndarray, nearest_label: np.ndarray, offset_sq: np.ndarray,
                              palette: np.ndarray, edge_distance: float,
                              max_radius: int = 32) -> np.ndarray:
    """Labels for pixels far from every palette colour, chosen among the regions around them.

    image: ``uint8 [H, W, 3]``; nearest_label: ``[H, W]`` index of the nearest palette colour;
    offset_sq: ``[H, W]`` squared distance to it. Returns ``int64 [H, W]``.

    Pixels within ``edge_distance`` of a palette colour keep it. The others are edge blends,
    JPEG colour bleeding (4:2:0 chroma keeps a pixel's brightness but averages its colour with
    the neighbour's, which can land nearest to a third palette colour), outlines or stray
    pixels: they take, among the labels of confident pixels within 2 pixels (then 4, 8, ...
    up to ``max_radius``), the one whose colour is nearest to theirs. Where an anti-aliased
    blend sits between its two regions this is the plain nearest colour; where bleeding would
    invent a third region it is not.
    """
    confident = np.where(offset_sq <= edge_distance * edge_distance, nearest_label, -1)
    rows, cols = np.nonzero(confident < 0)
    if len(rows) == 0:
        return nearest_label.astype(np.int64)
    result = confident.astype(np.int64)
    palette = palette.astype(np.int32)
    # A border of "not confident" lets windows reach past the image edge without clipping.
    border = max_radius
    padded = np.pad(confident, border, constant_values=-1)
    pending = np.arange(len(rows))
    radius = 2
    while len(pending) and radius <= max_radius:
        step = max(1, radius // 2)
        span = range(-radius, radius + 1, step)
        # Spatially nearest offsets first, so that colour ties go to the closest region.
        offsets = sorted(((dy, dx) for dy in span for dx in span), key=lambda o: o[0] ** 2 + o[1] ** 2)
        still_pending = []
        chunk = max(1, _CHUNK_ELEMENTS // (3 * len(offsets)))
        for start in range(0, len(pending), chunk):
            part = pending[start:start + chunk]
            y, x = rows[part], cols[part]
            candidates = np.stack([padded[y + (border + dy), x + (border + dx)] for dy, dx in offsets],
                                  axis=1)
            diff = image[y, x].astype(np.int32)[:, None, :] - palette[np.maximum(candidates, 0)]
            dist = (diff * diff).sum(-1)
            dist[candidates < 0] = np.iinfo(np.int32).max
            choice = candidates[np.arange(len(part)), dist.argmin(1)]
            found = choice >= 0
            result[y[found], x[found]] = choice[found]
            still_pending.append(part[~found])
        pending = np.concatenate(still_pending)
        radius *= 2
    # Far from any confident region: fall back on the nearest colour.
    result[rows[pending], cols[pending]] = nearest_label[rows[pending], cols[pending]]
    return result


def _joint_histogram(keys: list[np.ndarray]):
    """Distinct colours over several maps.

    keys: per map ``int32 [N_m]`` packed colours. Returns ``(unique_keys [U], joint_counts [U],
    inverses)`` with ``inverses[m]``: ``int32 [N_m]`` index of each pixel's colour in ``unique_keys``.
    """
    # One map at a time keeps the sort's working memory to one map.
    per_map = [np.unique(k, return_inverse=True, return_counts=True) for k in keys]
    unique_keys = np.unique(np.concatenate([u for u, _, _ in per_map]))
    joint_counts = np.zeros(len(unique_keys), dtype=np.int64)
    inverses = []
    for map_keys, map_inverse, map_counts in per_map:
        position = np.searchsorted(unique_keys, map_keys)
        joint_counts[position] += map_counts
        inverses.append(position.astype(np.int32)[map_inverse.reshape(-1)])
    return unique_keys, joint_counts, inverses


def _not_a_map_error(what: str) -> ValueError:
    return ValueError(
        f"this does not look like a semantic colour map: {what}. A semantic map is painted with a few "
        "flat colours, one per region, the same colour for the same region in the content and the "
        "style map; photographs and gradients do not work. Check that the semantic map, not the "
        "image, is connected to this input.")


def labels_from_color_maps(content_rgb, style_rgb, *, max_labels: int = 64,
                           min_area_fraction: float = 2e-4, merge_distance: float = 24.0,
                           min_interior_fraction: float = 0.05, interior_radius: int | None = None,
                           edge_distance: float = 24.0, flat_distance: float = 6.0,
                           min_flat_fraction: float = 0.5, palette=None) -> SemanticLabels:
    """Find the shared palette of two colour-coded semantic maps and label every pixel.

    content_rgb, style_rgb: ``uint8 [H, W, 3]`` RGB (numpy or torch); the sizes may differ.

    Options (the defaults suit hand-painted maps, anti-aliased or saved as JPEG; distances are
    Euclidean in RGB, 0-255):
    - ``max_labels`` (64): more region colours than this means the input is not a semantic map.
    - ``min_area_fraction`` (2e-4, i.e. 52 pixels at 512 x 512): a region colour must cover at
      least this fraction of one of the two maps; smaller specks are stray pixels.
    - ``merge_distance`` (24): colours closer than this are one colour, and region colours closer
      than twice this are one label. JPEG noise at quality 75 stays well below it; distinct
      labels must be at least 48 apart (the dataset's closest pair is 63 apart).
    - ``min_interior_fraction`` (0.05): at least this fraction of a colour's pixels must be
      interior, i.e. their whole window has that colour. Measured on the dataset: real regions
      0.16-0.99 (the low end is a 5-pixel-wide stripe saved as JPEG), edge blends and JPEG
      ringing at most 0.01. A flat colour covering a tenth of a map needs no interior.
    - ``interior_radius`` (None: 1 per 512 pixels of the longer side, at least 1): half-size of
      that window. Scaling it keeps blends thin relative to it when a map has been enlarged.
    - ``edge_distance`` (24): pixels farther than this from every palette colour (edge blends,
      JPEG colour bleeding, outlines, stray pixels) take the label of an adjacent region, the
      one nearest in colour; the others take the nearest palette colour.
    - ``flat_distance`` (6) / ``min_flat_fraction`` (0.5): in each map at least this fraction of
      the pixels must lie within ``flat_distance`` of a palette colour. Measured: the dataset's
      maps >= 0.74 even as JPEG quality 20, its photographs and paintings 0.02-0.25.

    ``palette``: optional ``[L, 3]`` RGB colours to use instead of detecting them, kept in the
    given order (label ``i`` = ``palette[i]``; with the official resampling, a cell exactly midway
    between two colours takes the earlier one, as in the official code).

    Returns ``SemanticLabels``: ``content [Hc, Wc]``, ``style [Hs, Ws]`` (every pixel labelled, no
    ``-1``), ``palette [L, 3]`` (the painted colours, largest joint area first), ``matched [L]``.
    Raises ``ValueError`` for malformed input and for images that are not flat-colour maps.
    """
    return labels_from_color_map_set(content_rgb, [style_rgb], max_labels=max_labels,
                                     min_area_fraction=min_area_fraction, merge_distance=merge_distance,
                                     min_interior_fraction=min_interior_fraction, interior_radius=interior_radius,
                                     edge_distance=edge_distance, flat_distance=flat_distance,
                                     min_flat_fraction=min_flat_fraction, palette=palette)


def _style_map_name(index: int) -> str:
    return "style map" if index == 0 else f"style map {index + 1}"


def labels_from_color_map_set(content_rgb, style_rgbs, **options) -> SemanticLabels:
    """:func:`labels_from_color_maps` for one content map and 1 to ``MAX_STYLES`` style maps,
    labelled jointly: the same colour is the same label in every map.

    style_rgbs: a list of ``uint8 [H, W, 3]`` (sizes may differ). ``matched[i]``: label ``i`` is
    in the content and in at least one style. With one style map this is exactly
    ``labels_from_color_maps``.
    """
    if not 1 <= len(style_rgbs) <= MAX_STYLES:
        raise ValueError(f"give between 1 and {MAX_STYLES} style maps, got {len(style_rgbs)}")
    maps = {"content map": _as_rgb_uint8(content_rgb, "content map")}
    maps.update({_style_map_name(i): _as_rgb_uint8(rgb, _style_map_name(i)) for i, rgb in enumerate(style_rgbs)})
    label_maps, palette = label_color_maps(maps, **options)
    colours = [torch.from_numpy(np.array(rgb)) for rgb in maps.values()]
    return _with_styles(SemanticLabels(label_maps[0], label_maps[1], palette,
                                       _matched(label_maps[0], label_maps[1], len(palette)),
                                       content_colors=colours[0], style_colors=colours[1]),
                        label_maps[2:], colours[2:])


def _with_styles(semantics: SemanticLabels, more_styles, more_style_colors=()) -> SemanticLabels:
    """``semantics`` (content + style 1) with styles 2.. added; unchanged when there are none."""
    if not more_styles:
        return semantics
    return replace(semantics, more_styles=tuple(more_styles),
                   more_style_colors=tuple(more_style_colors)).with_sources(None)


def label_color_maps(maps: dict[str, np.ndarray], *, max_labels: int = 64, min_area_fraction: float = 2e-4,
                     merge_distance: float = 24.0, min_interior_fraction: float = 0.05,
                     interior_radius: int | None = None, edge_distance: float = 24.0,
                     flat_distance: float = 6.0, min_flat_fraction: float = 0.5,
                     palette=None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Label any number of colour maps jointly: the same colour is the same label in every map.

    maps: name -> ``uint8 [H, W, 3]`` (names appear in errors). Options as in
    :func:`labels_from_color_maps`. Returns the label maps ``int64 [H, W]`` (in ``maps``' order)
    and the palette ``uint8 [L, 3]`` (largest joint area first, or as given).
    """
    if max_labels < 1:
        raise ValueError(f"max_labels must be at least 1, got {max_labels}")
    shapes = [m.shape[:2] for m in maps.values()]
    unique_keys, joint_counts, inverses = _joint_histogram([_pack_rgb(m).reshape(-1) for m in maps.values()])
    unique_rgb = _unpack_rgb(unique_keys)

    given_palette = palette is not None
    if given_palette:
        palette = _as_palette(palette, "labels_from_color_maps").numpy().astype(unique_rgb.dtype)
        if not 1 <= len(palette) <= max_labels:
            raise ValueError(f"palette: give between 1 and {max_labels} colours, got {len(palette)}")
    else:
        palette = _detect_palette(unique_rgb, joint_counts, shapes, inverses, max_labels=max_labels,
                                  min_area_fraction=min_area_fraction, merge_distance=merge_distance,
                                  min_interior_fraction=min_interior_fraction,
                                  interior_radius=interior_radius, flat_distance=flat_distance)

    nearest = _nearest_colour(unique_rgb, palette)
    offset = unique_rgb - palette[nearest]
    offset_sq = (offset * offset).sum(1)
    # Photographs: their colour clusters can have interiors, but their pixels are spread out.
    for name, inverse in zip(maps, inverses):
        flat_fraction = np.count_nonzero(offset_sq[inverse] <= flat_distance * flat_distance) / len(inverse)
        if flat_fraction < min_flat_fraction:
            raise _not_a_map_error(
                f"in the {name} only {100 * flat_fraction:.0f}% of the pixels have one of the "
                f"{len(palette)} main colours found (need {100 * min_flat_fraction:.0f}%)")

    label_maps = [_label_off_palette_pixels(image, nearest[inverse].reshape(image.shape[:2]),
                                            offset_sq[inverse].reshape(image.shape[:2]), palette,
                                            edge_distance)
                  for image, inverse in zip(maps.values(), inverses)]
    # Largest joint area first: label ids stay put under small edits of the maps.
    joint_area = sum(np.bincount(m.reshape(-1), minlength=len(palette)) for m in label_maps)
    order = np.arange(len(palette)) if given_palette else np.argsort(-joint_area, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return [torch.from_numpy(rank[m]) for m in label_maps], torch.from_numpy(palette[order].astype(np.uint8))


def _detect_palette(unique_rgb: np.ndarray, joint_counts: np.ndarray, shapes: list, inverses: list, *,
                    max_labels: int, min_area_fraction: float, merge_distance: float,
                    min_interior_fraction: float, interior_radius: int | None,
                    flat_distance: float) -> np.ndarray:
    """The region colours ``[L, 3]`` of maps given as their joint colour histogram.

    ``unique_rgb [U, 3]`` and ``joint_counts [U]``: every colour of every map and its total
    count; ``inverses``: per map, each pixel's index into ``unique_rgb``; ``shapes``: ``(H, W)``.
    A colour cluster is a region when it is large in some map and has interior pixels (or
    paints a good share of a map flat); close clusters merge, the larger winning.
    """
    min_pixels = [max(1, math.ceil(min_area_fraction * h * w)) for h, w in shapes]
    # Enough spare seeds for the blend clusters of anti-aliased edges; noise exhausts them.
    max_clusters = 4 * max_labels + 64
    seeds = _seed_clusters(unique_rgb, joint_counts, merge_distance, min(min_pixels), max_clusters)
    if len(seeds) >= max_clusters:
        raise _not_a_map_error(f"found at least {len(seeds)} significant colours (max_labels={max_labels})")
    cluster_of_colour = _nearest_colour(unique_rgb, seeds).astype(np.int32)

    seed_offset = unique_rgb - seeds[cluster_of_colour]
    on_seed_colour = (seed_offset * seed_offset).sum(1) <= flat_distance * flat_distance
    area = np.zeros((len(shapes), len(seeds)), dtype=np.int64)
    dominant = np.zeros(len(seeds), dtype=bool)
    interior = np.zeros(len(seeds), dtype=np.int64)
    for index, ((height, width), inverse) in enumerate(zip(shapes, inverses)):
        cluster_map = cluster_of_colour[inverse].reshape(height, width)
        radius = interior_radius if interior_radius is not None else max(1, round(max(height, width) / 512))
        area[index] = np.bincount(cluster_map.reshape(-1), minlength=len(seeds))
        interior += np.bincount(cluster_map[_interior(cluster_map, radius)], minlength=len(seeds))
        # A flat colour painting a tenth of a map is a region even without interior pixels
        # (tiny maps are all edge); edge blends and outlines never come near that share.
        flat_area = np.bincount(cluster_map.reshape(-1), weights=on_seed_colour[inverse],
                                minlength=len(seeds))
        dominant |= flat_area >= _DOMINANT_FRACTION * height * width
    large = np.zeros(len(seeds), dtype=bool)
    for index, pixels in enumerate(min_pixels):
        large |= area[index] >= pixels
    keep = large & (((interior > 0) & (interior >= min_interior_fraction * area.sum(0))) | dominant)
    if not keep.any():
        # Maps too small or too fragmented to have interiors: fall back on area alone.
        keep = large if large.any() else area.sum(0) == area.sum(0).max()
    # Heavy JPEG noise spreads a flat colour past merge_distance, and the spill-over can form a
    # second cluster inside the region: within twice merge_distance, the larger colour wins.
    kept = np.nonzero(keep)[0]
    kept = kept[np.argsort(-area.sum(0)[kept], kind="stable")]
    accepted = []
    for index in kept:
        gap = seeds[accepted] - seeds[index]
        if not accepted or (gap * gap).sum(1).min() >= (2 * merge_distance) ** 2:
            accepted.append(index)
    palette = seeds[np.sort(accepted)]
    if len(palette) > max_labels:
        raise _not_a_map_error(f"found {len(palette)} significant colours (max_labels={max_labels})")
    return palette


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
    return labels_from_mask_set(content_masks, [style_masks], threshold)


def labels_from_mask_set(content_masks, style_mask_stacks, threshold: float = 0.5) -> SemanticLabels:
    """:func:`labels_from_masks` for 1 to ``MAX_STYLES`` style images, each with its mask stack
    ``[L, Hs, Ws]`` in the content's order (mask ``i`` is region ``i`` everywhere)."""
    if not 1 <= len(style_mask_stacks) <= MAX_STYLES:
        raise ValueError(f"give between 1 and {MAX_STYLES} style mask stacks, got {len(style_mask_stacks)}")
    content = _as_mask_stack(content_masks, "content masks")
    styles = [_as_mask_stack(masks, "style masks" if i == 0 else f"style masks {i + 1}")
              for i, masks in enumerate(style_mask_stacks)]
    for index, style in enumerate(styles):
        if content.shape[0] != style.shape[0]:
            which = "style" if index == 0 else f"style {index + 1}"
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
    return _with_styles(SemanticLabels(content_labels, style_labels[0], distinct_palette(count),
                                       _matched(content_labels, style_labels[0], count)), style_labels[1:])


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
    # Each source pixel votes in the target cell that contains its centre. Downsampling fills
    # every cell; upsampling leaves some empty, and those keep the nearest source pixel.
    cell_row = _centre_source_index(height, source_h).numpy()
    cell_col = _centre_source_index(width, source_w).numpy()
    source = labels.numpy() + 1  # -1 -> vote bin 0
    num_values = int(source.max()) + 1
    result = _resample_nearest(labels, height, width).numpy().copy()
    # Target rows in bands, so that the vote table stays within _CHUNK_ELEMENTS.
    rows_per_band = max(1, _CHUNK_ELEMENTS // (width * num_values))
    for band_start in range(0, height, rows_per_band):
        band_end = min(height, band_start + rows_per_band)
        source_rows = np.nonzero((cell_row >= band_start) & (cell_row < band_end))[0]
        if len(source_rows) == 0:
            continue
        cell = (cell_row[source_rows] - band_start)[:, None] * width + cell_col[None, :]
        votes = np.bincount((cell * num_values + source[source_rows]).reshape(-1),
                            minlength=(band_end - band_start) * width * num_values)
        votes = votes.reshape(band_end - band_start, width, num_values)
        has_pixels = votes.sum(-1) > 0
        # "No label" wins only when nothing else is in the cell; ties go to the lowest label.
        labelled_votes = votes[..., 1:]
        choice = np.where(labelled_votes.max(-1, initial=0) > 0,
                          labelled_votes.argmax(-1) if num_values > 1 else -1, -1)
        window = result[band_start:band_end]
        window[has_pixels] = choice[has_pixels]
    return torch.from_numpy(result)


def _opencv_taps(source: int, target: int, clamp_weights: bool):
    """cv::resize INTER_LINEAR taps along one axis: ``(index0, index1, weight0, weight1)``, each
    ``int64 [target]``, weights in 1/2048 units.

    Computed exactly as OpenCV builds its tables: half-pixel centres in float32 from the double
    ``1 / (target / source)``; each weight rounded on its own. Columns outside the image are
    clamped with weights (1, 0); rows are not: OpenCV keeps their fractional weights and only
    clamps the row indices, which rounds differently at the top and bottom rows.
    """
    scale = 1.0 / (target / source)
    position = ((np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(position).astype(np.int64)
    frac = (position - start.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        before, after = start < 0, start >= source - 1
        frac[before | after] = 0
        start[before] = 0
        start[after] = source - 1
    weight1 = np.rint(frac.astype(np.float64) * 2048).astype(np.int64)
    weight0 = np.rint((np.float32(1) - frac).astype(np.float64) * 2048).astype(np.int64)
    return np.clip(start, 0, source - 1), np.clip(start + 1, 0, source - 1), weight0, weight1


def opencv_resize_linear_uint8(image, height: int, width: int) -> torch.Tensor:
    """``cv2.resize(image, (width, height))`` (INTER_LINEAR) on a ``uint8 [H, W, C]`` image.

    Half-pixel centres, no antialiasing, OpenCV's fixed-point arithmetic: 11-bit weights, exact
    integer horizontal pass, vertical pass ``((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16)``
    then ``(+ 2) >> 2`` (its uint8 kernels, SIMD and scalar alike). Bit-exact with OpenCV 4.14 on
    down- and upsampling, odd sizes included. Returns ``uint8 [height, width, C]``.
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.dtype != np.uint8 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"expected a uint8 image [H, W, C], got {array.dtype} {tuple(array.shape)}")
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"target size must be positive, got {height} x {width}")
    source_h, source_w, channels = array.shape
    x0, x1, a0, a1 = _opencv_taps(source_w, width, clamp_weights=True)
    y0, y1, b0, b1 = _opencv_taps(source_h, height, clamp_weights=False)
    src = array.astype(np.int64)
    rows = src[:, x0, :] * a0[None, :, None] + src[:, x1, :] * a1[None, :, None]
    top = rows[y0] >> 4
    bottom = rows[y1] >> 4
    out = ((top * b0[:, None, None]) >> 16) + ((bottom * b1[:, None, None]) >> 16)
    out = (out + 2) >> 2
    return torch.from_numpy(np.clip(out, 0, 255).astype(np.uint8))


def _as_palette(palette, what: str) -> torch.Tensor:
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


def _snap_to_palette(rgb: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Nearest palette colour (ties -> lowest index) of ``uint8 [h, w, 3]``: ``int64 [h, w]``."""
    nearest = _nearest_colour(rgb.reshape(-1, 3).numpy().astype(np.int32), palette.numpy())
    return torch.from_numpy(nearest).view(rgb.shape[0], rgb.shape[1])


def resample_color_map_official(color_map, palette, height: int, width: int) -> torch.Tensor:
    """The official SCSA labels of a colour map at a grid: ``int64 [height, width]``.

    color_map: ``uint8 [H, W, 3]`` (the semantic map as drawn); palette: ``[L, 3]``.
    ``cv2.resize`` INTER_LINEAR of the colours themselves, then the nearest palette colour
    (ties -> lowest palette index, so the palette order decides exact midpoints). This is what
    the official code computes; ``resample_labels(mode="official")`` does the same from a label
    map, which loses only the anti-aliased edge colours.
    """
    palette = _as_palette(palette, "resample_color_map_official")
    if palette.shape[0] == 0:
        raise ValueError("resample_color_map_official: the palette is empty")
    image = _as_rgb_uint8(color_map, "color map")
    return _snap_to_palette(opencv_resize_linear_uint8(image, height, width), palette)


def _resample_official(labels: torch.Tensor, height: int, width: int, palette) -> torch.Tensor:
    palette = _as_palette(palette, 'resample_labels(mode="official")')
    num_labels = palette.shape[0]
    if int(labels.max()) >= num_labels:
        raise ValueError(f"label {int(labels.max())} has no palette colour (the palette has {num_labels})")
    # Unlabelled pixels get a colour of their own, the cube corner furthest from the palette,
    # and come back as -1 where that colour stays nearest.
    corners = torch.tensor([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)])
    if num_labels:
        spare = corners[torch.cdist(corners.double(), palette.double()).min(1).values.argmax()]
    else:
        spare = corners[0]
    colours = torch.cat([palette, spare[None]])
    painted = colours[torch.where(labels >= 0, labels, torch.full_like(labels, num_labels))]
    snapped = _snap_to_palette(opencv_resize_linear_uint8(painted.to(torch.uint8), height, width), colours)
    return torch.where(snapped == num_labels, torch.full_like(snapped, -1), snapped)


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
      colour. Needs ``palette`` (``uint8 [L, 3]``). Like the official code, a cell midway
      between two regions can snap to a third colour that is nearer to the blend.
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
    labels = _as_label_map(label_map)
    palette = _as_palette(palette, "label_preview").to(torch.uint8)
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
