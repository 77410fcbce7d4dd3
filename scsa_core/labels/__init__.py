"""Semantic labels: from colour-coded maps or masks to integer label maps at any grid.

A *label map* is ``int64 [H, W]`` with values in ``[0, L)`` and ``-1`` for "no label". Labels are
shared by the content and every style map: label ``i`` is the same semantic region on all sides,
and ``palette[i]`` is its display colour (for colour maps, the colour it was painted with).

  container   SemanticLabels: the maps, their palette, each map's labels at a token grid
  palette     colour maps -> labels (palette detection); NotASemanticMap for photographs & co.
  masks       MASK stacks -> labels, distinct_palette
  resample    any grid: majority, nearest, and the official code's resampling, bit for bit;
              map_size_note (a map of another size than its image)
  preview     a label map drawn in its colours, unlabelled and unmatched regions marked
  common      input checks and helpers the modules share
"""
from .container import SemanticLabels
from .masks import distinct_palette, labels_from_masks
from .palette import NotASemanticMap, label_color_maps, labels_from_color_maps
from .preview import label_preview
from .resample import (RESAMPLE_MODES, MapSizeNote, map_size_note, opencv_resize_linear_uint8,
                       resample_color_map_official, resample_labels)

__all__ = ["SemanticLabels", "labels_from_color_maps", "label_color_maps", "NotASemanticMap",
           "labels_from_masks", "distinct_palette", "resample_labels", "resample_color_map_official",
           "opencv_resize_linear_uint8", "RESAMPLE_MODES", "MapSizeNote", "map_size_note", "label_preview"]
