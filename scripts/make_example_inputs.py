#!/usr/bin/env python3
"""Paint the pack's example inputs: a synthetic landscape "photo", a "painting" of another
landscape, and a semantic colour map for each.

    .venv/bin/python scripts/make_example_inputs.py           # (re)write workflows/inputs/
    .venv/bin/python scripts/make_example_inputs.py --check   # exit 1 if the files are stale

Everything is drawn here from integer arithmetic, so the pictures are ours (same licence as the
pack) and every machine paints the same pixels: no random generator whose stream may change
between numpy releases, no sin/exp whose last bit depends on the CPU, no Pillow drawing whose
anti-aliasing may change between releases. tests/test_example_inputs.py checks that the committed
files decode to exactly what this script paints now.

Written (``SIZE`` x ``SIZE`` RGB PNG, in ``workflows/inputs/``):

  scsa_example_content.png       the content: a landscape photo (sky, sun, mountains, meadow)
  scsa_example_content_map.png   its semantic map: one flat colour per region
  scsa_example_style.png         the style: a painting with brush strokes, another composition
  scsa_example_style_map.png     its semantic map, in the same colours (same colour = same region)
  scsa_example_style2.png        a second style for the several-styles workflows: a pointillist
                                 sunset (sky, sun, meadow and a lake; no mountains)
  scsa_example_style2_map.png    its semantic map: it shares sky, sun and meadow with the content,
                                 lacks the mountains and adds the lake, which the content lacks

The pack copies them into ComfyUI's input folder at start-up (nodes/example_inputs.py), the
example workflows' Load Image nodes name them, and scripts/run_workflow.py uses them when it is
given no images.

Adding an image (e.g. a second style whose regions differ in part, like ``style2``): give a new
region its colour in ``MORE_REGIONS`` (at least 48 RGB units from every other colour:
``labels_from_color_maps`` merges closer ones; ``REGIONS`` stays the four regions the content and
the first style share, which the masks workflow builds one mask each for), teach the painters that
region (``PHOTO_REGION_PAINTERS``, ``PAINT_REGION_STYLES``, ``DOT_REGION_STYLES``: only those that
paint it), give ``Landscape`` and ``Landscape.labels`` its shape if the landscape needs one, and
add an ``ExampleImage`` with its own ``layout`` to ``EXAMPLES``. Its files are then
``scsa_example_<name>.png`` and ``scsa_example_<name>_map.png``. New regions go at the end of
``REGION_NAMES`` and images without them paint no pixel differently.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "workflows" / "inputs"
SIZE = 512
FILE_PREFIX = "scsa_example_"

# Region name -> its flat colour in the semantic maps. The 230-valued primaries of the SCSA data
# set: the masks workflow picks each region with ImageColorToMask by exactly these values.
REGIONS: dict[str, tuple[int, int, int]] = {
    "sky": (0, 0, 230),
    "mountains": (230, 0, 0),
    "meadow": (0, 230, 0),
    "sun": (230, 230, 0),
}
# Regions only some examples have (style2's lake), after the shared ones: the labels of the four
# above keep their indices, so the content and the first style paint the same pixels as before.
MORE_REGIONS: dict[str, tuple[int, int, int]] = {
    "lake": (0, 230, 230),
}
ALL_REGIONS: dict[str, tuple[int, int, int]] = {**REGIONS, **MORE_REGIONS}
REGION_NAMES = tuple(ALL_REGIONS)


def file_name(image: str, is_map: bool = False) -> str:
    """``scsa_example_<image>.png`` or ``scsa_example_<image>_map.png``."""
    return f"{FILE_PREFIX}{image}{'_map' if is_map else ''}.png"


# Workflow role -> file name: what the example workflows' loaders name and the runner fills in.
ROLE_FILES = {"content": file_name("content"), "style": file_name("style"),
              "content_map": file_name("content", True), "style_map": file_name("style", True)}


# ---------------------------------------------------------------------------- integer tools
def _np():
    import numpy as np   # imported late: the runner reads ROLE_FILES without numpy's import cost
    return np


def hash2(x, y, seed: int):
    """A well-mixed uint32 per (x, y, seed); x, y integer arrays (broadcast). Integer ops only,
    so the same on every machine."""
    np = _np()
    h = (np.asarray(x, dtype=np.uint32) * np.uint32(0x27D4EB2D)) \
        ^ (np.asarray(y, dtype=np.uint32) * np.uint32(0x165667B1)) \
        ^ np.uint32((seed * 0x9E3779B1) & 0xFFFFFFFF)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x2C1B3C6D)
    h = h ^ (h >> np.uint32(12))
    h = h * np.uint32(0x297A2D39)
    return h ^ (h >> np.uint32(15))


def value_noise(height: int, width: int, cell: int, seed: int):
    """Smooth noise, int64 ``[height, width]`` in 0..255: random values on a grid of ``cell``
    pixels, blended with an integer smoothstep."""
    np = _np()
    ys, xs = np.mgrid[0:height, 0:width].astype(np.int64)
    gx, gy, fx, fy = xs // cell, ys // cell, xs % cell, ys % cell

    def corner(dx, dy):
        return (hash2(gx + dx, gy + dy, seed) & np.uint32(255)).astype(np.int64)

    def smooth(f):   # 3t^2 - 2t^3 on t = f / cell, scaled to 0..cell^3
        return f * f * (3 * cell - 2 * f)

    wx, wy, full = smooth(fx), smooth(fy), cell ** 3
    top = corner(0, 0) * (full - wx) + corner(1, 0) * wx
    bottom = corner(0, 1) * (full - wx) + corner(1, 1) * wx
    return (top * (full - wy) + bottom * wy) // (full * full)


def fractal_noise(height: int, width: int, cells: tuple[int, ...], seed: int):
    """Octaves of ``value_noise`` (coarse first, each half the weight), int64 in 0..255."""
    total, weight_sum = 0, 0
    for octave, cell in enumerate(cells):
        weight = 2 ** (len(cells) - octave)
        total = total + weight * value_noise(height, width, cell, seed + 101 * octave)
        weight_sum += weight
    return total // weight_sum


def polyline(points: tuple[tuple[int, int], ...], width: int):
    """y of the polyline through ``points`` (x ascending, in pixels) at every column: int64 [width]."""
    np = _np()
    xs = np.arange(width, dtype=np.int64)
    out = np.zeros(width, dtype=np.int64)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        inside = (xs >= x0) & (xs <= x1)
        out[inside] = y0 + (y1 - y0) * (xs[inside] - x0) // (x1 - x0)
    return out


def mix(a, b, t, scale: int):
    """Per-pixel blend of colours ``a`` and ``b`` (``[3]`` or ``[..., 3]``) by ``t / scale``."""
    np = _np()
    a, b, t = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64), np.asarray(t, dtype=np.int64)
    return (a * (scale - t[..., None]) + b * t[..., None]) // scale


class SplitMix64:
    """A tiny deterministic random stream in Python integers (stroke positions, sizes, colours)."""

    def __init__(self, seed: int):
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def between(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return lo + self.below(hi - lo + 1)


# ---------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Landscape:
    """Where the regions of one landscape lie, in pixels of a ``SIZE`` x ``SIZE`` image.

    ridge: the mountains' top edge, a polyline ``((x, y), ...)`` with x from 0 to SIZE; None: no
      mountains;
    meadow: the meadow's top edge, likewise (below the ridge everywhere);
    sun: ``(centre x, centre y, radius)`` of the sun disc, inside the sky;
    lake: ``(centre x, centre y, half width, half height)`` of a lake, an ellipse inside the
      meadow; None (default): no lake.
    """
    ridge: tuple[tuple[int, int], ...] | None
    meadow: tuple[tuple[int, int], ...]
    sun: tuple[int, int, int]
    lake: tuple[int, int, int, int] | None = None

    def labels(self, size: int = SIZE):
        """int64 ``[size, size]``: index into ``REGION_NAMES`` of every pixel."""
        np = _np()
        ys, xs = np.mgrid[0:size, 0:size].astype(np.int64)
        labels = np.full((size, size), REGION_NAMES.index("sky"), dtype=np.int64)
        cx, cy, r = self.sun
        labels[(xs - cx) ** 2 + (ys - cy) ** 2 <= r * r] = REGION_NAMES.index("sun")
        if self.ridge:
            labels[ys >= polyline(self.ridge, size)[None, :]] = REGION_NAMES.index("mountains")
        labels[ys >= polyline(self.meadow, size)[None, :]] = REGION_NAMES.index("meadow")
        if self.lake:
            lx, ly, rx, ry = self.lake
            labels[((xs - lx) * ry) ** 2 + ((ys - ly) * rx) ** 2 <= (rx * ry) ** 2] = REGION_NAMES.index("lake")
        return labels

    def peaks(self) -> list[int]:
        """x of the ridge's tops: points above both neighbours (an end point above its one
        neighbour is a mountain cut by the frame). One more than ``valleys``."""
        pts = self.ridge or ()
        return [x for i, (x, y) in enumerate(pts)
                if (i == 0 or y < pts[i - 1][1]) and (i == len(pts) - 1 or y < pts[i + 1][1])]

    def valleys(self) -> list[int]:
        """x of the ridge's bottoms between two peaks."""
        pts = self.ridge or ()
        return [x for (_, y0), (x, y), (_, y1) in zip(pts, pts[1:], pts[2:]) if y > y0 and y > y1]


CONTENT_LAYOUT = Landscape(
    ridge=((0, 300), (70, 236), (150, 272), (240, 166), (310, 232), (372, 200), (440, 252), (512, 214)),
    meadow=((0, 402), (130, 388), (260, 396), (390, 384), (512, 392)),
    sun=(128, 104, 40))
STYLE_LAYOUT = Landscape(
    ridge=((0, 262), (96, 150), (188, 236), (262, 270), (336, 226), (420, 280), (512, 262)),
    meadow=((0, 354), (120, 346), (250, 372), (380, 350), (512, 340)),
    sun=(396, 96, 54))
# No mountains; a lake in the meadow below a low sunset sun.
STYLE2_LAYOUT = Landscape(
    ridge=None,
    meadow=((0, 296), (110, 284), (232, 300), (364, 288), (512, 302)),
    sun=(296, 212, 48),
    lake=(270, 404, 206, 60))


# -------------------------------------------------------------------------------- the photo
def _sun_glow(xs, ys, layout: Landscape, reach_radii: int, strength: int):
    """0..strength, falling off quadratically over ``reach_radii`` sun radii around the sun."""
    np = _np()
    cx, cy, r = layout.sun
    reach = (reach_radii * r) ** 2
    return np.clip(reach - ((xs - cx) ** 2 + (ys - cy) ** 2), 0, None) * strength // reach


def _photo_sky(labels, xs, ys, layout: Landscape):
    np = _np()
    size = labels.shape[0]
    horizon = 300
    t = np.clip(ys * 256 // horizon, 0, 256)
    sky = mix((38, 92, 172), (176, 204, 228), t, 256)
    glow = _sun_glow(xs, ys, layout, 3, 90)
    sky = sky + glow[..., None] * np.array([1, 1, 0], dtype=np.int64) + glow[..., None] // 2
    clouds = fractal_noise(size, size, (96, 48, 24, 12), seed=7)
    cloud = np.clip((clouds - 140) * 3, 0, 160)      # only the noise's upper part makes clouds
    return mix(sky, (246, 246, 250), cloud, 256)


def _photo_sun(labels, xs, ys, layout: Landscape):
    cx, cy, r = layout.sun
    d2 = (xs - cx) ** 2 + (ys - cy) ** 2
    return mix((255, 253, 236), (255, 226, 150), d2 * 256 // (r * r), 256)


def _photo_mountains(labels, xs, ys, layout: Landscape):
    np = _np()
    size = labels.shape[0]
    ridge = polyline(layout.ridge, size)[None, :]
    depth = np.clip(ys - ridge, 0, 255)                         # pixels below the ridge
    rock = fractal_noise(size, size, (32, 16, 8, 4), seed=11)
    # The sun is on the left: the left flank of each peak is lit. The boundary between the
    # flanks runs down from the peak and drifts sideways, like a ridge seen from the front.
    # Each mountain spans from valley to valley; the seam in a valley leans too.
    peaks = np.array(layout.peaks() or [size // 2], dtype=np.int64)
    valleys = np.array(layout.valleys(), dtype=np.int64)
    mountain = np.searchsorted(valleys, xs - depth // 3)
    lit = xs < peaks[mountain] + depth // 4 + (rock - 128) // 6
    base = np.where(lit[..., None], np.array([140, 128, 124]), np.array([70, 72, 96]))
    colour = base + ((rock - 128) // 3)[..., None]
    haze = np.clip(ys - 220, 0, 180)                            # lower = farther away = hazier
    colour = mix(colour, (150, 168, 190), haze, 256)
    # snow on the high parts, its lower edge ragged with the rock noise
    snow = (ys + (rock - 128) // 2 < 236) & (depth < 70)
    snow_colour = np.where(lit[..., None], np.array([238, 242, 248]), np.array([178, 188, 214]))
    colour = np.where(snow[..., None], snow_colour + ((rock - 128) // 8)[..., None], colour)
    return colour


def _photo_meadow(labels, xs, ys, layout: Landscape):
    np = _np()
    size = labels.shape[0]
    t = np.clip((ys - 340) * 256 // (size - 340), 0, 256)
    colour = mix((126, 170, 72), (46, 98, 34), t, 256)
    patches = fractal_noise(size, size, (64, 32), seed=23) - 128
    blades = (hash2(xs, ys // 3, seed=29) & np.uint32(31)).astype(np.int64) - 16   # grass: vertical streaks
    return colour + (patches // 3 + blades)[..., None]


PHOTO_REGION_PAINTERS: dict[str, Callable] = {
    "sky": _photo_sky, "sun": _photo_sun, "mountains": _photo_mountains, "meadow": _photo_meadow}


def paint_photo(layout: Landscape, seed: int, size: int = SIZE):
    """A landscape photograph of ``layout``: uint8 ``[size, size, 3]``."""
    np = _np()
    labels = layout.labels(size)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.int64)
    image = np.zeros((size, size, 3), dtype=np.int64)
    for index, name in enumerate(REGION_NAMES):
        inside = labels == index
        if inside.any():
            image[inside] = PHOTO_REGION_PAINTERS[name](labels, xs, ys, layout)[inside]
    grain = (hash2(xs, ys, seed) % np.uint32(7)).astype(np.int64) - 3      # sensor noise
    return np.clip(image + grain[..., None], 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the painting
# Directions of strokes as integer vectors of length ~16 (no trigonometry, see the docstring).
DIRECTIONS = ((16, 0), (15, 6), (11, 11), (6, 15), (0, 16), (-6, 15), (-11, 11), (-15, 6))


def _nearest_direction(dx: int, dy: int) -> tuple[int, int]:
    """The entry of DIRECTIONS (or its opposite) closest to the vector (dx, dy)."""
    return max(DIRECTIONS, key=lambda d: abs(d[0] * dx + d[1] * dy))


@dataclass(frozen=True)
class RegionStyle:
    """How one region is painted: three paint colours blended by smooth noise (the
    underpainting), then strokes of ``length`` x ``width`` half-sizes following ``flow``."""
    colours: tuple[tuple[int, int, int], ...]
    length: tuple[int, int]
    width: tuple[int, int]
    flow: Callable[[int, int, Landscape], tuple[int, int]]   # (x, y, layout) -> direction


def _swirl(x: int, y: int, layout: Landscape) -> tuple[int, int]:
    """Around the sun near it, then around two eddies: the sky of a late Van Gogh."""
    cx, cy, r = layout.sun
    centres = ((cx, cy), (150, 120), (60, 60))
    centre = min(centres, key=lambda c: (x - c[0]) ** 2 + (y - c[1]) ** 2)
    return _nearest_direction(-(y - centre[1]), x - centre[0])


def _rings(x: int, y: int, layout: Landscape) -> tuple[int, int]:
    cx, cy, _ = layout.sun
    return _nearest_direction(-(y - cy), x - cx)


def _slopes(x: int, y: int, layout: Landscape) -> tuple[int, int]:
    """Down the flank: left of a peak down-left, right of it down-right."""
    peaks = layout.peaks()
    peak = min(peaks, key=lambda p: abs(p - x)) if peaks else SIZE // 2
    return (11, 11) if x >= peak else (-11, 11)


def _grass(x: int, y: int, layout: Landscape) -> tuple[int, int]:
    return DIRECTIONS[3] if (x // 40) % 2 else DIRECTIONS[5]


PAINT_REGION_STYLES: dict[str, RegionStyle] = {
    "sky": RegionStyle(((34, 62, 146), (76, 128, 196), (222, 196, 102)), (7, 14), (2, 3), _swirl),
    "sun": RegionStyle(((252, 230, 84), (250, 176, 48), (255, 246, 196)), (5, 10), (2, 3), _rings),
    "mountains": RegionStyle(((76, 52, 112), (136, 82, 136), (40, 40, 86)), (6, 12), (2, 4), _slopes),
    "meadow": RegionStyle(((198, 160, 48), (118, 138, 40), (214, 112, 36)), (5, 10), (1, 3), _grass),
}


def _underpainting(labels, seed: int):
    """Each region's three colours blended by smooth noise: int64 ``[H, W, 3]``."""
    np = _np()
    size = labels.shape[0]
    image = np.zeros((size, size, 3), dtype=np.int64)
    a = fractal_noise(size, size, (80, 40), seed)
    b = fractal_noise(size, size, (60, 30), seed + 1)
    for index, name in enumerate(REGION_NAMES):
        inside = labels == index
        if not inside.any():
            continue
        c0, c1, c2 = PAINT_REGION_STYLES[name].colours
        colour = mix(mix(c0, c1, np.clip((a - 64) * 2, 0, 256), 256), c2, np.clip((b - 150) * 4, 0, 256), 256)
        image[inside] = colour[inside]
    return image


def paint_painting(layout: Landscape, seed: int, size: int = SIZE, strokes: int = 9000):
    """A painting of ``layout``: uint8 ``[size, size, 3]``.

    Underpainting, then ``strokes`` oval brush strokes, each in one colour picked from the
    underpainting under its centre and shifted a little, with bristle streaks along it and a darker
    rim. A stroke only covers pixels of its own region, so the map stays exact."""
    np = _np()
    labels = layout.labels(size)
    under = _underpainting(labels, seed)
    image = under.copy()
    rng = SplitMix64(seed)
    for stroke in range(strokes):
        x, y = rng.below(size), rng.below(size)
        region = int(labels[y, x])
        style = PAINT_REGION_STYLES[REGION_NAMES[region]]
        half_len, half_wid = rng.between(*style.length), rng.between(*style.width)
        dx, dy = style.flow(x, y, layout)
        colour = under[y, x] + np.array([rng.between(-22, 22) for _ in range(3)], dtype=np.int64)
        x0, x1 = max(0, x - half_len), min(size, x + half_len + 1)
        y0, y1 = max(0, y - half_len), min(size, y + half_len + 1)
        wy, wx = np.mgrid[y0:y1, x0:x1].astype(np.int64)
        along = (wx - x) * dx + (wy - y) * dy          # both scaled by |d| ~ 16
        across = (wx - x) * dy - (wy - y) * dx
        # inside the oval: (along / L)^2 + (across / W)^2 <= 16^2, in integers
        reach = along * along * half_wid * half_wid + across * across * half_len * half_len
        limit = (16 * half_len * half_wid) ** 2
        inside = (reach <= limit) & (labels[y0:y1, x0:x1] == region)
        if not inside.any():
            continue
        bristle = (hash2(across // 12, stroke, seed + 5) % np.uint32(25)).astype(np.int64) - 12
        rim = np.where(reach * 10 > limit * 7, -18, 0)   # the outer 30 % of the oval: a darker rim
        paint = colour[None, None, :] + (bristle + rim)[..., None]
        image[y0:y1, x0:x1][inside] = paint[inside]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.int64)
    canvas = np.where((xs % 3 == 0) ^ (ys % 3 == 0), -6, 0)    # the weave of the canvas
    return np.clip(image + canvas[..., None], 0, 255).astype(np.uint8)


# ------------------------------------------------------------------- the pointillist painting
def gradient(stops: tuple[tuple[int, tuple[int, int, int]], ...], t):
    """Piecewise-linear colour ramp: ``stops`` ``((t, colour), ...)`` with t ascending; t an integer
    array (clipped to the stops' range) -> int64 ``[..., 3]``."""
    np = _np()
    t = np.clip(np.asarray(t, dtype=np.int64), stops[0][0], stops[-1][0])
    out = np.zeros(t.shape + (3,), dtype=np.int64)
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        segment = (t >= t0) & (t <= t1)
        out[segment] = mix(c0, c1, (t - t0) * 256 // (t1 - t0), 256)[segment]
    return out


@dataclass(frozen=True)
class DotStyle:
    """How one region is dotted: ``base`` (xs, ys, layout) -> int64 ``[..., 3]`` gives the colour
    at each dot's centre, and each dot mixes in up to ``accent_max`` / 256 of one of the pure
    ``accents`` (divisionism: the eye blends the neighbouring dots). ``stretch``: a dot is
    ``stretch`` times wider than high (1: round, more: a horizontal dash)."""
    base: Callable
    accents: tuple[tuple[int, int, int], ...]
    accent_max: int
    stretch: int


SUNSET_SKY = ((0, (62, 34, 112)), (110, (178, 58, 124)), (200, (240, 112, 66)), (290, (255, 196, 98)))


def _dot_sky(xs, ys, layout: Landscape):
    return mix(gradient(SUNSET_SKY, ys), (255, 226, 150), _sun_glow(xs, ys, layout, 4, 200), 256)


def _dot_sun(xs, ys, layout: Landscape):
    cx, cy, r = layout.sun
    return mix((255, 250, 222), (255, 178, 70), ((xs - cx) ** 2 + (ys - cy) ** 2) * 256 // (r * r), 256)


def _dot_meadow(xs, ys, layout: Landscape):
    """Hazy mauve at the far edge, olive, then deep green in front; lit warm towards the sun."""
    np = _np()
    top = int(min(y for _, y in layout.meadow))
    near = ((0, (168, 104, 112)), (40, (132, 118, 54)), (140, (84, 104, 36)), (SIZE - top, (40, 66, 34)))
    colour = gradient(near, ys - top)
    lit = np.clip(256 - np.abs(xs - layout.sun[0]) * 256 // 300, 0, 256) * np.clip(120 - (ys - top), 0, 120) // 120
    return mix(colour, (236, 150, 60), lit * 3 // 4, 256)


def _dot_lake(xs, ys, layout: Landscape):
    """The sky mirrored and darkened, with the sun's glitter path running down the water."""
    np = _np()
    top = int(min(y for _, y in layout.meadow))
    mirrored = gradient(SUNSET_SKY, np.clip(2 * top - ys, 0, None) * 3 // 4 + 60)
    water = mix(mirrored, (40, 44, 104), 80, 256)
    cx, _, r = layout.sun
    half_width = r // 2 + (ys - top) // 3                 # the path widens towards the viewer
    path = np.clip(256 - np.abs(xs - cx) * 256 // np.maximum(half_width, 1), 0, 256)
    return mix(water, (255, 214, 120), path * 7 // 8, 256)


DOT_REGION_STYLES: dict[str, DotStyle] = {
    "sky": DotStyle(_dot_sky, ((255, 160, 196), (110, 62, 176), (255, 224, 120), (236, 84, 60)), 110, 1),
    "sun": DotStyle(_dot_sun, ((255, 255, 255), (255, 160, 40), (255, 232, 90)), 90, 1),
    "meadow": DotStyle(_dot_meadow, ((228, 120, 36), (112, 58, 140), (176, 190, 56), (38, 112, 96)), 120, 1),
    "lake": DotStyle(_dot_lake, ((36, 128, 150), (104, 60, 160), (255, 196, 84), (214, 82, 120)), 120, 3),
}


def _dot_layer(image, labels, layout: Landscape, seed: int, cell: int, radius: tuple[int, int]):
    """One layer of dots on ``image`` (int64 ``[H, W, 3]``, changed in place): one dot per
    ``cell`` x ``cell`` cell, its centre, radius (in ``radius``), stacking order and colour from
    a hash of the cell. Every pixel takes the topmost dot covering it, in the colour of the pixel's
    own region, so the map stays exact. Vectorised: each pixel looks at the nearby cells' dots."""
    np = _np()
    size = labels.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.int64)
    stretch = np.array([DOT_REGION_STYLES[n].stretch if n in DOT_REGION_STYLES else 1 for n in REGION_NAMES],
                       dtype=np.int64)[labels]
    reach_x = -(-radius[1] * int(stretch.max()) // cell)      # cells a dot may reach sideways
    reach_y = -(-radius[1] // cell)
    top = np.full((size, size), -1, dtype=np.int64)
    dot_x, dot_y, dot_hash = (np.zeros((size, size), dtype=np.int64) for _ in range(3))
    for oy in range(-reach_y, reach_y + 1):
        for ox in range(-reach_x, reach_x + 1):
            gx, gy = xs // cell + ox, ys // cell + oy
            h = hash2(gx + 64, gy + 64, seed).astype(np.int64)          # cells >= 0 before the cast
            px = gx * cell + (h & 255) * cell // 256
            py = gy * cell + ((h >> 8) & 255) * cell // 256
            r = radius[0] + (h >> 16) % (radius[1] - radius[0] + 1)
            dx, dy = xs - px, ys - py
            inside = dx * dx + (dy * stretch) ** 2 <= (r * stretch) ** 2
            order = (h >> 20) & 4095
            take = inside & (order > top)
            top = np.where(take, order, top)
            dot_x, dot_y, dot_hash = np.where(take, px, dot_x), np.where(take, py, dot_y), np.where(take, h, dot_hash)
    covered = top >= 0
    for index, name in enumerate(REGION_NAMES):
        inside = covered & (labels == index)
        if not inside.any():
            continue
        style = DOT_REGION_STYLES[name]
        accents = np.array(style.accents, dtype=np.int64)[dot_hash % len(style.accents)]
        colour = mix(style.base(dot_x, dot_y, layout), accents, (dot_hash >> 3) % (style.accent_max + 1), 256)
        colour = colour + ((dot_hash >> 10) % 29 - 14)[..., None]                  # a lighter or darker dab
        # a touch of relief: the dab's upper left catches the light, its lower right is in shadow
        light = np.where((xs - dot_x) * 1 + (ys - dot_y) * stretch < 0, 10, -10)
        image[inside] = (colour + light[..., None])[inside]


def paint_pointillist(layout: Landscape, seed: int, size: int = SIZE):
    """A pointillist painting of ``layout`` (after Seurat and Signac, at sunset): uint8
    ``[size, size, 3]``. A warm primed canvas, a layer of larger dots, then one of smaller dots
    over it; some canvas shows between them."""
    np = _np()
    labels = layout.labels(size)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.int64)
    image = np.zeros((size, size, 3), dtype=np.int64) + np.array([236, 216, 184], dtype=np.int64)
    _dot_layer(image, labels, layout, seed, cell=7, radius=(3, 5))
    _dot_layer(image, labels, layout, seed + 1, cell=6, radius=(2, 3))
    canvas = np.where((xs % 4 == 0) | (ys % 4 == 0), -5, 0)     # a coarser weave than the first style's
    return np.clip(image + canvas[..., None], 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- the examples
@dataclass(frozen=True)
class ExampleImage:
    """One example image: its regions (``layout``) and how it is painted."""
    name: str                                   # -> scsa_example_<name>.png / _map.png
    layout: Landscape
    painter: Callable                           # (layout, seed, size) -> uint8 [size, size, 3]
    seed: int

    def semantic_map(self, size: int = SIZE):
        """uint8 ``[size, size, 3]``: every pixel in its region's flat colour."""
        np = _np()
        palette = np.array([ALL_REGIONS[name] for name in REGION_NAMES], dtype=np.uint8)
        return palette[self.layout.labels(size)]

    def image(self, size: int = SIZE):
        return self.painter(self.layout, self.seed, size)


EXAMPLES: dict[str, ExampleImage] = {
    "content": ExampleImage("content", CONTENT_LAYOUT, paint_photo, seed=1),
    "style": ExampleImage("style", STYLE_LAYOUT, paint_painting, seed=2),
    "style2": ExampleImage("style2", STYLE2_LAYOUT, paint_pointillist, seed=3),
}
# Every file written, image then map, in EXAMPLES' order.
EXAMPLE_FILES: tuple[str, ...] = tuple(file_name(name, is_map) for name in EXAMPLES for is_map in (False, True))


def render(size: int = SIZE) -> dict[str, "object"]:
    """File name -> uint8 ``[size, size, 3]`` RGB array, for every example image and its map."""
    out = {}
    for example in EXAMPLES.values():
        out[file_name(example.name)] = example.image(size)
        out[file_name(example.name, True)] = example.semantic_map(size)
    return out


def role_images(size: int = SIZE) -> dict[str, "object"]:
    """Workflow role (content, style, content_map, style_map) -> uint8 ``[size, size, 3]``."""
    files = render(size)
    return {role: files[name] for role, name in ROLE_FILES.items()}


def read(path: Path):
    """A PNG as uint8 ``[H, W, 3]`` RGB (what the committed files are compared by)."""
    from PIL import Image
    np = _np()
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def stale_files(out_dir: Path = OUT_DIR) -> list[str]:
    """Files whose pixels differ from what ``render`` paints now (empty list = up to date)."""
    np = _np()
    problems = []
    for name, pixels in render().items():
        path = Path(out_dir) / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif not np.array_equal(read(path), pixels):
            problems.append(f"{path} differs from what scripts/make_example_inputs.py paints")
    return problems


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    from PIL import Image
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pixels in render().items():
        path = out_dir / name
        Image.fromarray(pixels, "RGB").save(path, "PNG", optimize=True)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that the committed files are up to date")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: workflows/inputs/)")
    a = ap.parse_args(argv)
    if a.check:
        problems = stale_files(a.out)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for path in write(a.out):
        shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        print(f"{shown} ({math.ceil(path.stat().st_size / 1024)} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
