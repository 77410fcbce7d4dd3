"""Palette detection: colour-coded semantic maps to integer label maps.

Palette discovery looks at every map of a run together:

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

An image that is no such map (a photograph, a gradient, heavy noise) raises
:class:`NotASemanticMap`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..styles import MAX_STYLES, numbered
from . import common
from .common import as_palette, as_rgb_uint8, matched_labels, nearest_colour
from .container import SemanticLabels

__all__ = ["NotASemanticMap", "labels_from_color_maps", "label_color_maps"]


class NotASemanticMap(ValueError):
    """An image given as a semantic colour map is not one (a photograph, a gradient, heavy noise).

    ``problem``: what gave it away; ``where``: the map it showed in (e.g. "the style map"), None
    when it showed in the maps together. :meth:`seen_in` says it of another map (an input name,
    "this map")."""

    def __init__(self, problem: str, where: str | None = None):
        self.problem, self.where = problem, where
        what = f"in {where} {problem}" if where else problem
        super().__init__(
            f"this does not look like a semantic colour map: {what}. A semantic map is painted with a few "
            "flat colours, one per region, the same colour for the same region in the content and the "
            "style map; photographs and gradients do not work. Check that the semantic map, not the "
            "image, is connected to this input.")

    def __reduce__(self):
        return type(self), (self.problem, self.where)

    def seen_in(self, where: str) -> "NotASemanticMap":
        """The same error, naming ``where`` as the map at fault when it named one."""
        return NotASemanticMap(self.problem, where if self.where else None)


def labels_from_color_maps(content_rgb, style_rgb, *more_style_rgbs, **options) -> SemanticLabels:
    """Find the shared palette of colour-coded semantic maps and label every pixel: the same
    colour is the same label in every map.

    content_rgb, style_rgb: ``uint8 [H, W, 3]`` RGB (numpy or torch), and up to ``MAX_STYLES - 1``
    more style maps for styles 2..; the sizes may differ.

    Options (the defaults suit hand-painted maps, anti-aliased or saved as JPEG; distances are
    Euclidean in RGB, 0-255):
    - ``max_labels`` (64): more region colours than this means the input is not a semantic map.
    - ``min_area_fraction`` (2e-4, i.e. 52 pixels at 512 x 512): a region colour must cover at
      least this fraction of one of the maps; smaller specks are stray pixels.
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

    Returns ``SemanticLabels``: ``content [Hc, Wc]``, ``style [Hs, Ws]`` (and ``more_styles``;
    every pixel labelled, no ``-1``), ``palette [L, 3]`` (the painted colours, largest joint area
    first), ``matched [L]`` (in the content and in some style). Raises ``NotASemanticMap`` for
    images that are not flat-colour maps, ``ValueError`` for other malformed input.
    """
    style_rgbs = (style_rgb,) + more_style_rgbs
    if len(style_rgbs) > MAX_STYLES:
        raise ValueError(f"give between 1 and {MAX_STYLES} style maps, got {len(style_rgbs)}")
    names = ["content map"] + [numbered("style map", number, " ") for number in range(1, len(style_rgbs) + 1)]
    maps = {name: as_rgb_uint8(rgb, name) for name, rgb in zip(names, (content_rgb,) + style_rgbs)}
    label_maps, palette = label_color_maps(maps, **options)
    colours = [torch.from_numpy(np.array(rgb)) for rgb in maps.values()]
    pair = SemanticLabels(label_maps[0], label_maps[1], palette,
                          matched_labels(label_maps[0], label_maps[1], len(palette)),
                          content_colors=colours[0], style_colors=colours[1])
    return pair.with_more_styles(label_maps[2:], colours[2:])


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
        palette = as_palette(palette, "labels_from_color_maps").numpy().astype(unique_rgb.dtype)
        if not 1 <= len(palette) <= max_labels:
            raise ValueError(f"palette: give between 1 and {max_labels} colours, got {len(palette)}")
    else:
        palette = _detect_palette(unique_rgb, joint_counts, shapes, inverses, max_labels=max_labels,
                                  min_area_fraction=min_area_fraction, merge_distance=merge_distance,
                                  min_interior_fraction=min_interior_fraction,
                                  interior_radius=interior_radius, flat_distance=flat_distance)

    nearest = nearest_colour(unique_rgb, palette)
    offset = unique_rgb - palette[nearest]
    offset_sq = (offset * offset).sum(1)
    # Photographs: their colour clusters can have interiors, but their pixels are spread out.
    for name, inverse in zip(maps, inverses):
        flat_fraction = np.count_nonzero(offset_sq[inverse] <= flat_distance * flat_distance) / len(inverse)
        if flat_fraction < min_flat_fraction:
            raise NotASemanticMap(f"only {100 * flat_fraction:.0f}% of the pixels have one of the "
                                  f"{len(palette)} main colours found (need {100 * min_flat_fraction:.0f}%)",
                                  where=f"the {name}")

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
        raise NotASemanticMap(f"found at least {len(seeds)} significant colours (max_labels={max_labels})")
    cluster_of_colour = nearest_colour(unique_rgb, seeds).astype(np.int32)

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
        raise NotASemanticMap(f"found {len(palette)} significant colours (max_labels={max_labels})")
    return palette


def _pack_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> int32 [...] key 0xRRGGBB."""
    rgb = image.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack_rgb(keys: np.ndarray) -> np.ndarray:
    return np.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], axis=-1).astype(np.int32)



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
        chunk = max(1, common.CHUNK_ELEMENTS // (3 * len(offsets)))
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
