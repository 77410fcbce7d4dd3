"""Input checks of the SCSA nodes, run before any tensor work.

Every bad input gets a ``ValueError`` that names the input, says what is wrong and how to fix
it, instead of a shape error from deep inside torch. Inputs that are unusual but workable
(a semantic map of another size than its image, ...) are accepted and explained in the log.
"""
from __future__ import annotations

import logging

import torch

from ..scsa_core.labels import NotASemanticMap, map_size_note
from ..scsa_core.styles import MAP_OF, STYLE_IMAGES

__all__ = ["inversion_batches", "check_conditioning", "log_map_sizes", "map_file_error", "name_the_maps"]

log = logging.getLogger("scsa")

# What a semantic map latent must match: its own image.
_IMAGE_OF = {stream: image for image, stream in MAP_OF.items()}


def _size(latent: torch.Tensor) -> tuple[int, int]:
    return tuple(int(n) for n in latent.shape[-2:])


def inversion_batches(latents: dict[str, torch.Tensor | None]) -> tuple[tuple[str, ...], ...]:
    """The batches SCSAInvert inverts, after checking the latents against each other.

    ``latents``: stream name -> ``[1, C, H, W]`` or None (not connected). Each semantic map must
    have the size of its own image, and either every image has its map or none does; images may
    differ in size. Returns one batch per latent size (in ``latents``' order within a batch),
    the content's size first: one batch of every connected stream when all sizes agree.
    """
    connected = {name: x for name, x in latents.items() if x is not None}
    channels = connected["content"].shape[1]
    for name, latent in connected.items():
        if latent.shape[1] != channels:
            raise ValueError(f"{name}: latent has {latent.shape[1]} channels but content has {channels}. "
                             "Encode every image with the same VAE (the one of the model's checkpoint).")
    for name, image in _IMAGE_OF.items():
        if name in connected and image not in connected:
            raise ValueError(f"{name}: connected without {image}. Connect the {image} latent too, or "
                             f"disconnect {name}.")
        if name in connected and _size(connected[name]) != _size(connected[image]):
            raise ValueError(
                f"{name}: latent is {_size(connected[name])} but {image} is {_size(connected[image])} "
                f"(in latent pixels). A semantic map must have the size of its own image: resize the "
                f"map to the {image} image's size before VAE Encode (e.g. 'Upscale Image' with "
                "nearest-exact, which keeps its colours flat).")
    with_maps = "content_map" in connected
    for image in ("content",) + STYLE_IMAGES:
        if image in connected and (MAP_OF[image] in connected) != with_maps:
            raise ValueError(f"{MAP_OF[image]}: {'connect' if with_maps else 'disconnect'} it. SCSA needs the "
                             "semantic map latent of every image (content and each style); StyleID needs none.")
    sizes = list(dict.fromkeys(_size(x) for x in connected.values()))
    return tuple(tuple(name for name, x in connected.items() if _size(x) == size) for size in sizes)


def check_conditioning(conditioning, name: str = "conditioning") -> None:
    """The inversion conditioning: ComfyUI CONDITIONING whose prompts have a batch of one.

    A batch of prompts would be spread over the inverted images (ComfyUI repeats a conditioning
    batch to the latent batch), so each image would be inverted with another prompt.
    """
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"{name}: expected a CONDITIONING (e.g. CLIP Text Encode with an empty text), "
                         f"got {type(conditioning).__name__}{' (empty)' if not conditioning else ''}")
    for entry in conditioning:
        tensor = entry[0] if isinstance(entry, (list, tuple)) and entry else None
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
            raise ValueError(f"{name}: expected a CONDITIONING (e.g. CLIP Text Encode with an empty text); "
                             "one of its entries is not a [batch, tokens, channels] tensor")
        if tensor.shape[0] != 1:
            raise ValueError(
                f"{name}: has a batch of {tensor.shape[0]} prompts; the inversion runs every image with "
                "one prompt. Connect a single CLIP Text Encode with an empty text (the prompt StyleID "
                "and SCSA use).")


def log_map_sizes(semantics, content_latent: tuple, style_latent: tuple) -> list[str]:
    """Log (and return) ``scsa_core.labels.map_size_note`` for both maps of ``semantics``
    against their images (known from the latents, ``[..., h, w]``, to 8 pixels): a warning
    when a map is stretched, else a line of information."""
    texts = []
    for labels, latent, side in ((semantics.content, content_latent, "content"),
                                 (semantics.style, style_latent, "style")):
        image = (latent[-2] * 8, latent[-1] * 8)
        note = map_size_note(tuple(labels.shape), image, side, approximate=True)
        if note is not None:
            texts.append(f"SCSA: {note.text}")
            (log.warning if note.stretched else log.info)(texts[-1])
    return texts


def map_file_error(filename: str, error: ValueError) -> ValueError:
    """A semantic-map error raised while loading one file, re-worded for that file."""
    if isinstance(error, NotASemanticMap):
        error = error.seen_in("this map")
    return ValueError(f'semantic map "{filename}": {error}')


def name_the_maps(error: ValueError, maps: dict, label_maps) -> ValueError:
    """A :class:`NotASemanticMap` of a map pair, prefixed with the input(s) at fault (any other
    error is returned as it is).

    Palette discovery looks at both maps together, so some of its errors cannot say which map
    is a photo; labelling each map alone (``label_maps(rgb, rgb)``, only on this error path)
    finds out. ``maps``: input name -> ``uint8 [H, W, 3]``.
    """
    if not isinstance(error, NotASemanticMap):
        return error
    faulty = {}
    for name, rgb in maps.items():
        try:
            label_maps(rgb, rgb)
        except NotASemanticMap as alone:
            faulty[name] = str(alone.seen_in("this map"))
        except ValueError as alone:
            faulty[name] = str(alone)
    if not faulty:
        return error
    message = next(iter(faulty.values())) if len(faulty) == 1 else str(error)
    return ValueError(f"{' and '.join(faulty)}: {message}")
