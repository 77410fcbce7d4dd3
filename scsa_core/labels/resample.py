"""Label maps at any grid, and the resampling that reproduces the official SCSA code's.

``resample_labels`` brings a label map to any grid: ``"majority"`` (the pack's default),
``"nearest"``, or ``"official"``, which reproduces the official code (OpenCV bilinear resize of
the colour image, then nearest palette colour); ``resample_color_map_official`` does so from the
colour map itself, bit for bit. ``map_size_note`` says when a map is not its image's size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import common
from .common import as_label_map, as_palette, as_rgb_uint8, nearest_colour

__all__ = ["RESAMPLE_MODES", "resample_labels", "resample_color_map_official", "opencv_resize_linear_uint8",
           "MapSizeNote", "map_size_note"]

RESAMPLE_MODES = ("majority", "nearest", "official")


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
    # Target rows in bands, so that the vote table stays within common.CHUNK_ELEMENTS.
    rows_per_band = max(1, common.CHUNK_ELEMENTS // (width * num_values))
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


def _snap_to_palette(rgb: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Nearest palette colour (ties -> lowest index) of ``uint8 [h, w, 3]``: ``int64 [h, w]``."""
    nearest = nearest_colour(rgb.reshape(-1, 3).numpy().astype(np.int32), palette.numpy())
    return torch.from_numpy(nearest).view(rgb.shape[0], rgb.shape[1])


def resample_color_map_official(color_map, palette, height: int, width: int) -> torch.Tensor:
    """The official SCSA labels of a colour map at a grid: ``int64 [height, width]``.

    color_map: ``uint8 [H, W, 3]`` (the semantic map as drawn); palette: ``[L, 3]``.
    ``cv2.resize`` INTER_LINEAR of the colours themselves, then the nearest palette colour
    (ties -> lowest palette index, so the palette order decides exact midpoints). This is what
    the official code computes; ``resample_labels(mode="official")`` does the same from a label
    map, which loses only the anti-aliased edge colours.
    """
    palette = as_palette(palette, "resample_color_map_official")
    if palette.shape[0] == 0:
        raise ValueError("resample_color_map_official: the palette is empty")
    image = as_rgb_uint8(color_map, "color map")
    return _snap_to_palette(opencv_resize_linear_uint8(image, height, width), palette)


def _resample_official(labels: torch.Tensor, height: int, width: int, palette) -> torch.Tensor:
    palette = as_palette(palette, 'resample_labels(mode="official")')
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
    label_map = as_label_map(labels)
    if int(label_map.min()) < -1:
        raise ValueError(f"labels must be >= -1 (-1 = no label), found {int(label_map.min())}")
    if mode == "nearest":
        return _resample_nearest(label_map, height, width).contiguous()
    if mode == "majority":
        return _resample_majority(label_map, height, width)
    return _resample_official(label_map, height, width, palette)


@dataclass(frozen=True)
class MapSizeNote:
    """A semantic map that is not the size of its image. ``text``: one sentence that says so;
    ``stretched``: the aspect ratios differ by more than 2 %, so the map is stretched onto the
    image and its regions may not line up with it."""
    text: str
    stretched: bool


def map_size_note(map_size: tuple[int, int], image_size: tuple[int, int], side: str,
                  approximate: bool = False) -> MapSizeNote | None:
    """The note for a ``side`` ("content", "style") semantic map of ``map_size`` on an image of
    ``image_size`` (both ``(height, width)`` in pixels), or None when the sizes agree.
    ``approximate``: the image size is known only to 8 pixels (from its latent)."""
    if tuple(map_size) == tuple(image_size):
        return None
    map_ratio, image_ratio = map_size[1] / map_size[0], image_size[1] / image_size[0]
    stretched = abs(map_ratio / image_ratio - 1.0) > 0.02
    text = (f"the {side} semantic map is {map_size[1]}x{map_size[0]} px but the {side} image is "
            f"{'about ' if approximate else ''}{image_size[1]}x{image_size[0]} px; its labels are resampled to "
            "each attention grid")
    if stretched:
        text += (f" and STRETCHED (aspect ratio {map_ratio:.2f} vs {image_ratio:.2f}): regions may not line up "
                 "with the image; paint the map at the image's size")
    return MapSizeNote(text + ".", stretched)
