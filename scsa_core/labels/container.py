"""The label container: a content map, 1 to ``MAX_STYLES`` style maps, their shared palette,
and each map's labels at any token grid."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..styles import MAX_STYLES
from .common import label_counts
from .resample import resample_color_map_official, resample_labels

__all__ = ["SemanticLabels"]


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
        return torch.from_numpy(np.stack([label_counts(m, self.num_labels) > 0 for m in self.style_maps]))

    @property
    def lends(self) -> torch.Tensor:
        """``bool [styles, L]``: style ``s`` lends label ``l`` (has it, and ``sources`` allows it)."""
        return self.present if self.sources is None else self.present & self.sources

    def _at_grid(self, labels: torch.Tensor, colors: torch.Tensor | None, height: int, width: int,
                 mode: str) -> torch.Tensor:
        """One map's labels at a grid: ``mode="official"`` resizes the colour map itself when it
        is known (exactly the official code's labels), otherwise the palette-painted label map."""
        if mode == "official" and colors is not None:
            return resample_color_map_official(colors, self.palette, height, width)
        return resample_labels(labels, height, width, mode=mode, palette=self.palette)

    def content_labels_at(self, height: int, width: int, mode: str = "majority") -> torch.Tensor:
        """The content label map ``int64 [height, width]`` at one token grid; ``mode``: a
        ``RESAMPLE_MODES`` entry (a preset's is ``scsa_core.presets.label_resampling``)."""
        return self._at_grid(self.content, self.content_colors, height, width, mode)

    def style_labels_at(self, index: int, height: int, width: int, mode: str = "majority") -> torch.Tensor:
        """Style ``index``'s (0-based) label map ``int64 [height, width]`` at one token grid.

        Labels this style does not lend (``sources``) are ``-1`` there: no content token attends
        to those tokens by label, and S-AdaIN leaves them out of that label's statistics.
        """
        labels = self._at_grid(self.style_maps[index], self._style_colors(index), height, width, mode)
        if self.sources is not None:
            allowed = torch.cat([torch.zeros(1, dtype=torch.bool), self.sources[index]])
            labels = torch.where(allowed[labels + 1], labels, torch.full_like(labels, -1))
        return labels

    def with_sources(self, sources: torch.Tensor | None) -> "SemanticLabels":
        """The same maps with ``sources`` (``bool [styles, L]``, None: automatic); ``matched``
        becomes "in the content and lent by some style"."""
        trial = replace(self, sources=sources)
        lent = trial.lends.any(0)
        return replace(trial, matched=torch.from_numpy(label_counts(self.content, self.num_labels) > 0) & lent)

    def with_more_styles(self, more_styles, more_style_colors=()) -> "SemanticLabels":
        """These maps (content + style 1) with styles 2.. added; unchanged when there are none."""
        if not more_styles:
            return self
        return replace(self, more_styles=tuple(more_styles),
                       more_style_colors=tuple(more_style_colors)).with_sources(None)
