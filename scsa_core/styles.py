"""How many style images a run takes, and what each style's streams and inputs are called.

A run has one content image and 1 to :data:`MAX_STYLES` style images, each with its semantic
map. Style ``n`` (1-based) names everything it has with :func:`numbered`: style 1 keeps the
plain names (``style``, ``style_map``, ``inverted_style``), style ``n > 1`` appends ``_n``
(``style_2``, ``style_map_2``, ``inverted_style_2``). Streams, node inputs and the workflow
runner's image roles all come from here. Torch-free: the runner imports it.
"""
from __future__ import annotations

__all__ = ["MAX_STYLES", "STYLE_NUMBERS", "numbered", "STYLE_IMAGES", "MAP_OF", "STREAMS"]

MAX_STYLES = 4
STYLE_NUMBERS = tuple(range(1, MAX_STYLES + 1))


def numbered(name: str, number: int, separator: str = "_") -> str:
    """Style ``number``'s ``name``: ``numbered("style_map", 1) == "style_map"``,
    ``numbered("style_map", 3) == "style_map_3"`` (``separator=" "`` for prose: "style map 3")."""
    if number not in STYLE_NUMBERS:
        raise ValueError(f"style numbers run from 1 to {MAX_STYLES}, got {number}")
    return name if number == 1 else f"{name}{separator}{number}"


# The style images' streams (style 1 first) and each image's semantic-map stream.
STYLE_IMAGES = tuple(numbered("style", number) for number in STYLE_NUMBERS)
MAP_OF = {"content": "content_map", **{numbered("style", n): numbered("style_map", n) for n in STYLE_NUMBERS}}
# Every stream an inversion can record, in the order of an inversion batch.
STREAMS = ("content", "style", "content_map", "style_map") + tuple(
    stream for image in STYLE_IMAGES[1:] for stream in (image, MAP_OF[image]))
