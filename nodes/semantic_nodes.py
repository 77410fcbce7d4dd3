"""Semantic maps and masks: the nodes that turn colour maps or MASK batches into SCSA's labels.

  SCSALoadSemanticMap x2 -> SCSASemanticPair ----> SEMANTICS (labels, palette) -> SCSAApply
  MASK batches ---------> SCSASemanticFromMasks -^

All the work is in ``scsa_core.labels``; these nodes read files and IMAGEs, name the input at
fault in errors, and draw previews.
"""
from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import torch
from PIL import Image, ImageOps

import folder_paths
import node_helpers
from comfy_api.latest import io, ui

from ..scsa_core.labels import SemanticLabels, label_preview, labels_from_color_maps, labels_from_masks
from .validation import map_file_error, name_the_maps

CATEGORY = "SCSA"
Semantics = io.Custom("SCSA_SEMANTICS")


def _image_files() -> list[str]:
    input_dir = folder_paths.get_input_directory()
    files = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
    return sorted(folder_paths.filter_files_content_types(files, ["image"]))


def read_map_rgb(path: str) -> np.ndarray:
    """A semantic map file as ``uint8 [H, W, 3]``, losslessly.

    16-bit images are reduced to 8 bits by their high byte; alpha is dropped (a map's regions
    are its colours); palette and greyscale images are expanded to RGB.
    """
    image = node_helpers.pillow(Image.open, path)
    image = node_helpers.pillow(ImageOps.exif_transpose, image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.int64)
        scale = 257 if wide.max() > 255 else 1
        grey = np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _image_to_rgb(image: torch.Tensor, name: str) -> np.ndarray:
    """ComfyUI IMAGE ``[B, H, W, C]`` float 0..1 -> ``uint8 [H, W, 3]`` of its first item."""
    if image.dim() != 4 or image.shape[-1] < 3:
        raise ValueError(f"{name}: expected an IMAGE [batch, height, width, 3], got shape {tuple(image.shape)}")
    return (image[0, ..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _to_image(rgb: torch.Tensor) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> ComfyUI IMAGE ``[1, H, W, 3]``."""
    return (rgb.float() / 255.0)[None]


def pair_preview(semantics: SemanticLabels, gap: int = 8) -> torch.Tensor:
    """Both label maps side by side, matched labels in their colours, unmatched hatched."""
    left = label_preview(semantics.content, semantics.palette, semantics.matched)
    right = label_preview(semantics.style, semantics.palette, semantics.matched)
    height = max(left.shape[0], right.shape[0])
    canvas = torch.full((height, left.shape[1] + gap + right.shape[1], 3), 255, dtype=torch.uint8)
    canvas[:left.shape[0], :left.shape[1]] = left
    canvas[:right.shape[0], left.shape[1] + gap:] = right
    return _to_image(canvas)


class SCSALoadSemanticMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSALoadSemanticMap", display_name="Load Semantic Map (SCSA)", category=CATEGORY,
            description="Loads a colour-coded semantic map losslessly (PNG recommended): paint each "
                        "region in one flat colour; the same colour in the style map marks the same region.",
            inputs=[io.Combo.Input("image", options=_image_files(), upload=io.UploadType.image,
                                   tooltip="A semantic map in ComfyUI's input folder. Flat colours, "
                                           "one per region; anti-aliased edges and JPEG noise are tolerated.")],
            outputs=[io.Image.Output("map", display_name="map", tooltip="The map as an IMAGE (exact colours)."),
                     io.Image.Output("preview", display_name="preview", tooltip="The regions found, one colour per label.")],
        )

    @classmethod
    def execute(cls, image):
        rgb = read_map_rgb(folder_paths.get_annotated_filepath(image))
        try:
            labels = labels_from_color_maps(rgb, rgb)
        except ValueError as error:
            raise map_file_error(image, error) from None
        preview = _to_image(label_preview(labels.content, labels.palette))
        return io.NodeOutput(_to_image(torch.from_numpy(rgb.copy())), preview, ui=ui.PreviewImage(preview, cls=cls))

    @classmethod
    def fingerprint_inputs(cls, image):
        with open(folder_paths.get_annotated_filepath(image), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @classmethod
    def validate_inputs(cls, image):
        if not folder_paths.exists_annotated_filepath(image):
            return f"Invalid semantic map file: {image}"
        return True


_HEX_COLOUR = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_palette(text: str) -> list[list[int]] | None:
    """``"#00e600, #e6e600"`` -> ``[[0, 230, 0], [230, 230, 0]]``; empty -> None (detect)."""
    items = [item.strip() for item in re.split(r"[,;\s]+", text or "") if item.strip()]
    if not items:
        return None
    colours = []
    for item in items:
        match = _HEX_COLOUR.match(item)
        if not match:
            raise ValueError(f'palette: cannot read "{item}". Write colours as hex, e.g. "#00e600, #e6e600", '
                             "or leave it empty to detect them.")
        value = int(match.group(1), 16)
        colours.append([value >> 16, (value >> 8) & 255, value & 255])
    return colours


class SCSASemanticPair(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSASemanticPair", display_name="Semantic Pair (SCSA)", category=CATEGORY,
            description="Finds the shared palette of a content map and a style map and labels every "
                        "pixel: the same colour in both maps is the same region.",
            inputs=[
                io.Image.Input("content_map", tooltip="Semantic map of the content image."),
                io.Image.Input("style_map", tooltip="Semantic map of the style image, painted with the same colours."),
                io.Int.Input("max_labels", default=64, min=1, max=256, optional=True,
                             tooltip="More region colours than this means the input is not a semantic map."),
                io.Float.Input("min_region", default=0.02, min=0.0, max=10.0, step=0.01, optional=True,
                               tooltip="Smallest region kept, in percent of the image; smaller specks "
                                       "of colour are treated as stray pixels."),
                io.Float.Input("merge_distance", default=24.0, min=1.0, max=128.0, step=1.0, optional=True,
                               tooltip="Colours closer than this (RGB, 0-255) are one region. Raise it "
                                       "for noisy maps, lower it if two similar colours are merged."),
                io.String.Input("palette", default="", optional=True,
                                tooltip="Optional: the region colours to use instead of detecting them, "
                                        "e.g. '#00e600, #e6e600'. Their order breaks exact ties of the "
                                        "official preset's resampling. Leave empty to detect."),
            ],
            outputs=[Semantics.Output("semantics", display_name="semantics"),
                     io.Image.Output("preview", display_name="preview", tooltip="Content map (left) and style map (right); "
                                     "regions without a counterpart are hatched.")],
        )

    @classmethod
    def execute(cls, content_map, style_map, max_labels=64, min_region=0.02, merge_distance=24.0,
                palette=""):
        maps = {"content_map": _image_to_rgb(content_map, "content_map"),
                "style_map": _image_to_rgb(style_map, "style_map")}

        def label_maps(content_rgb, style_rgb):
            return labels_from_color_maps(content_rgb, style_rgb, max_labels=max_labels,
                                          min_area_fraction=min_region / 100.0,
                                          merge_distance=merge_distance, palette=parse_palette(palette))
        try:
            semantics = label_maps(maps["content_map"], maps["style_map"])
        except ValueError as error:
            raise name_the_maps(error, maps, label_maps) from None
        preview = pair_preview(semantics)
        return io.NodeOutput(semantics, preview, ui=ui.PreviewImage(preview, cls=cls))


class SCSASemanticFromMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSASemanticFromMasks", display_name="Semantic Pair from Masks (SCSA)", category=CATEGORY,
            description="Semantic regions from two MASK batches (e.g. from a segmentation node): "
                        "content mask i and style mask i are the same region.",
            inputs=[io.Mask.Input("content_masks", tooltip="A batch of L masks over the content image."),
                    io.Mask.Input("style_masks", tooltip="A batch of L masks over the style image, in the same order."),
                    io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01, optional=True,
                                   tooltip="A pixel belongs to the strongest mask at or above this value; "
                                           "pixels under every mask stay unlabelled.")],
            outputs=[Semantics.Output("semantics", display_name="semantics"),
                     io.Image.Output("preview", display_name="preview")],
        )

    @classmethod
    def execute(cls, content_masks, style_masks, threshold=0.5):
        semantics = labels_from_masks(content_masks, style_masks, threshold=threshold)
        preview = pair_preview(semantics)
        return io.NodeOutput(semantics, preview, ui=ui.PreviewImage(preview, cls=cls))


NODES = [SCSALoadSemanticMap, SCSASemanticPair, SCSASemanticFromMasks]
