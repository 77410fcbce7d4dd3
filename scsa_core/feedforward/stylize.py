"""Images and semantics in, stylised image out: the feed-forward SCSA entry point.

Presets (``scsa_core.presets``; SCSA's own quirks that matter numerically are kept in both: the
S-AdaIN target, the content map's position, the bias counted t1 + t2 times, unscaled SANet logits):
- ``official``: what the official scripts do. Both images (and maps) are stretched to
  ``size x size`` (512 in the paper); labels at each grid come from an OpenCV-style bilinear
  resize of the colour maps snapped to the nearest palette colour
  (``scsa_core.labels.resample_color_map_official``).
- ``default``: the aspect ratio is kept (long side = ``size``, sides rounded to the network's
  multiple: 16 for SANet, 8 for StyTr2), labels are resampled by majority vote per cell.

Either way the output is clamped to [0, 1] and, with ``output_size="content"``, resized back to
the content image's size. Where the official code breaks (a region missing on one side at a
grid turns its whole image into NaN; a fully masked attention row), both presets use the pack's
fallback: such content tokens take the global style statistics in S-AdaIN and attend to all
style tokens; ``StylizeResult.notes`` says when that happened.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..labels import SemanticLabels, map_size_note
from ..presets import check_preset, label_resampling
from .common import MAX_GRID_TOKENS, SCSAWeights

__all__ = ["OUTPUT_SIZES", "StylizeResult", "stylize", "working_size", "resize_images",
           "semantic_images", "progress_total"]

OUTPUT_SIZES = ("content", "working")
UNLABELLED_GREY = 128   # colour the networks see for pixels no mask covers


@dataclass
class StylizeResult:
    """``image``: ``float32 [B, H, W, 3]`` in [0, 1] (channels last); ``notes``: what the run had
    to adapt (fallbacks, stretched maps), one sentence each."""
    image: torch.Tensor
    notes: list[str] = field(default_factory=list)


def working_size(height: int, width: int, size: int, multiple: int, preset: str) -> tuple[int, int]:
    """The ``(height, width)`` a network runs at.

    ``official``: ``size x size`` (rounded to ``multiple``), the aspect ratio is lost.
    ``default``: long side ``size``, aspect kept, each side rounded to the nearest ``multiple``
    (at least one multiple). E.g. 600 x 800 at 512 for SANet -> 384 x 512.
    """
    check_preset(preset)
    if int(size) != size or size < multiple:
        raise ValueError(f"size must be a whole number of pixels >= {multiple}, got {size}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")

    def snap(n: float) -> int:
        return max(multiple, int(round(n / multiple)) * multiple)
    if preset == "official":
        return snap(size), snap(size)
    scale = size / max(height, width)
    return snap(height * scale), snap(width * scale)


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C, height, width]``, bilinear with antialiasing (what the official
    scripts' PIL resize does); the identity when the size already matches."""
    if tuple(images.shape[-2:]) == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def semantic_images(semantics: SemanticLabels) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantic maps as the networks see them: ``float [1, 3, H, W]`` in [0, 1] per side.

    The maps as drawn when the labels came from colour maps; otherwise (masks) every label
    painted with its palette colour, unlabelled pixels grey. The networks read these colours:
    they steer SCA inside a region; the labels alone decide which regions may match.
    """
    def paint(colors, labels):
        if colors is None:
            palette = torch.cat([semantics.palette.to(torch.int64),
                                 torch.full((1, 3), UNLABELLED_GREY, dtype=torch.int64)])
            colors = palette[torch.where(labels >= 0, labels, palette.shape[0] - 1)]
        return (colors.to(torch.float32) / 255.0).permute(2, 0, 1)[None]
    return (paint(semantics.content_colors, semantics.content),
            paint(semantics.style_colors, semantics.style))


def progress_total(model, batch: int, semantic: bool) -> int:
    """How many progress ticks :func:`stylize` makes for ``batch`` content images."""
    return model.progress_steps(semantic) * batch


def _check_images(images, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4) or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected an image [batch, height, width, 3] (RGB in 0..1), got {shape}")
    if images.dim() == 3:
        images = images[None]
    if images.shape[0] == 0 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"{name}: the image is empty ({tuple(images.shape)})")
    images = images[..., :3]   # alpha is dropped, as the official scripts' convert('RGB') does
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected float pixel values in 0..1, got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name}: the image holds NaN or infinite values; check the node that made it")
    return images


def _hex(palette: torch.Tensor, label: int) -> str:
    r, g, b = (int(v) for v in palette[label])
    return f"#{r:02x}{g:02x}{b:02x}"


class _GridLabels:
    """``labels_at`` for the networks: both sides' label maps at any pair of grids, by preset,
    cached per grid, and the fallbacks each grid needed (for the notes)."""

    def __init__(self, semantics: SemanticLabels, preset: str):
        self.semantics, self.mode = semantics, label_resampling(preset)
        self.cache: dict = {}
        self.notes: list[str] = []

    def __call__(self, content_grid: tuple, style_grid: tuple):
        key = (tuple(content_grid), tuple(style_grid))
        if key not in self.cache:
            content = self.semantics.content_labels_at(*content_grid, self.mode)
            style = self.semantics.style_labels_at(0, *style_grid, self.mode)
            self.cache[key] = (content, style)
            self._note(content, style, content_grid)
        return self.cache[key]

    def _note(self, content: torch.Tensor, style: torch.Tensor, grid: tuple) -> None:
        present_style = set(torch.unique(style).tolist())
        missing = [int(label) for label in torch.unique(content).tolist()
                   if label >= 0 and label not in present_style]
        unlabelled = int((content < 0).sum())
        where = f"at the {grid[1]}x{grid[0]} token grid"
        for label in missing:
            count = int((content == label).sum())
            self.notes.append(f"region {_hex(self.semantics.palette, label)} ({count} content tokens) has no "
                              f"style counterpart {where}: it attends to the whole style and takes the global "
                              "style statistics (the official code would return an all-NaN image)")
        if unlabelled:
            self.notes.append(f"{unlabelled} content tokens {where} are in no region: they attend to the whole "
                              "style and take the global style statistics")


def stylize(model, content: torch.Tensor, style: torch.Tensor, semantics: SemanticLabels | None = None,
            preset: str = "default", weights: SCSAWeights | None = None, size: int = 512,
            output_size: str = "content", progress: Callable[[], None] | None = None) -> StylizeResult:
    """Stylise every content image with the style (semantic style transfer with ``semantics``,
    the plain network without).

    model: :class:`SANetModel` or :class:`StyTr2Model` (runs on its own device and dtype);
    content: ``[B, H, W, 3]``; style: ``[1 or B, Hs, Ws, 3]`` (style ``i`` for content ``i``
    when B styles are given), RGB in [0, 1]; semantics: labels and maps of the pair (sizes may
    differ from the images': they are resampled); weights: ``None`` = the variant's defaults;
    size: working resolution (long side, or both sides with ``official``); output_size:
    ``"content"`` (the content image's size) or ``"working"``; progress: called after every
    stage (:func:`progress_total` times), e.g. to update a bar or to raise on cancel.
    Returns a :class:`StylizeResult` with ``float32 [B, H, W, 3]`` in [0, 1].
    """
    check_preset(preset)
    if output_size not in OUTPUT_SIZES:
        raise ValueError(f"output_size must be one of {OUTPUT_SIZES}, got {output_size!r}")
    content = _check_images(content, "content")
    style = _check_images(style, "style")
    batch = content.shape[0]
    if style.shape[0] not in (1, batch):
        raise ValueError(f"style: a batch of {style.shape[0]} images for {batch} content images; give one "
                         "style, or one per content image")
    if semantics is not None and not isinstance(semantics, SemanticLabels):
        raise ValueError("semantics: expected the output of SCSASemanticPair or SCSASemanticFromMasks")
    weights = weights or model.default_weights
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    multiple = model.size_multiple
    content_hw = working_size(content.shape[1], content.shape[2], size, multiple, preset)
    style_hw = working_size(style.shape[1], style.shape[2], size, multiple, preset)
    tokens = (content_hw[0] // 8) * (content_hw[1] // 8)
    if tokens > MAX_GRID_TOKENS:
        raise ValueError(f"size {size} gives {tokens} attention tokens per image (more than "
                         f"{MAX_GRID_TOKENS}): lower the working resolution")

    def prepare(images, hw):   # [B, H, W, 3] -> [B, 3, h, w] on the model's device
        return resize_images(images.to(device=device, dtype=dtype).permute(0, 3, 1, 2), *hw)

    notes = []
    labels_at = None
    if semantics is not None:
        labels_at = _GridLabels(semantics, preset)
        content_sem, style_sem = (prepare(image.permute(0, 2, 3, 1), hw) for image, hw in
                                  zip(semantic_images(semantics), (content_hw, style_hw)))
        for labels, image, side in ((semantics.content, content, "content"), (semantics.style, style, "style")):
            # A map of another size is resampled like its image; only a stretched one needs a word.
            note = map_size_note(tuple(labels.shape), tuple(image.shape[1:3]), side)
            if note is not None and note.stretched:
                notes.append(note.text)
    outputs = []
    # One style for the whole batch: its features and the maps' are computed once.
    shared_cache: dict = {}
    with torch.no_grad():
        style_prepared = prepare(style, style_hw)
        for index in range(batch):
            one_content = prepare(content[index:index + 1], content_hw)
            one_style = style_prepared[index:index + 1] if style.shape[0] > 1 else style_prepared
            if semantics is None:
                raw = model.forward_plain(one_content, one_style, progress=progress)
            else:
                raw = model.forward_scsa(one_content, one_style, content_sem, style_sem, labels_at, weights,
                                         progress=progress,
                                         reference_cache=shared_cache if style.shape[0] == 1 else None)
            image = raw.float().clamp(0.0, 1.0)
            if output_size == "content":
                image = resize_images(image, content.shape[1], content.shape[2]).clamp(0.0, 1.0)
            outputs.append(image.permute(0, 2, 3, 1).cpu())
    if labels_at is not None:
        notes += list(dict.fromkeys(labels_at.notes))
    return StylizeResult(torch.cat(outputs), notes)
