"""The ``preset`` of every SCSA node (diffusion and feed-forward): ``default`` or ``official``.

- ``official`` reproduces the official SCSA code, quirks included. Its labels at a token grid
  are the colour maps resized bilinearly as OpenCV does and snapped to the palette
  (``scsa_core.labels.resample``); a region one side lacks is handled as the official code does
  it; the feed-forward networks stretch both images to ``size x size``.
- ``default`` is the method with the official code's defects fixed: labels by majority vote per
  token cell; a content region the style lacks attends to the whole style; the feed-forward
  networks keep the aspect ratio.
"""
from __future__ import annotations

__all__ = ["PRESETS", "check_preset", "label_resampling"]

PRESETS = ("default", "official")


def check_preset(preset: str) -> str:
    """``preset`` if it is one of :data:`PRESETS`, else a ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    return preset


def label_resampling(preset: str) -> str:
    """How a preset brings the label maps to a token grid (a ``scsa_core.labels`` resampling mode)."""
    return "official" if check_preset(preset) == "official" else "majority"
