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
from ..scsa_core.styles import STYLE_NUMBERS, numbered
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


def _panels(rows: list[list[torch.Tensor | None]], gap: int = 8) -> torch.Tensor:
    """``uint8 [H, W, 3]`` panels (None: empty) on a white canvas, row by row, columns aligned."""
    columns = max(len(row) for row in rows)
    widths = [max((row[c].shape[1] for row in rows if c < len(row) and row[c] is not None), default=0)
              for c in range(columns)]
    heights = [max((p.shape[0] for p in row if p is not None), default=0) for row in rows]
    canvas = torch.full((sum(heights) + gap * (len(rows) - 1), sum(widths) + gap * (columns - 1), 3), 255,
                        dtype=torch.uint8)
    top = 0
    for row, height in zip(rows, heights):
        left = 0
        for column, panel in enumerate(row):
            if panel is not None:
                canvas[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
            left += widths[column] + gap
        top += height + gap
    return canvas


def pair_preview(semantics: SemanticLabels, gap: int = 8) -> torch.Tensor:
    """The label maps side by side (content, then each style), matched labels in their colours,
    unmatched hatched. With several styles (or chosen sources) a second row shows, under each
    style, the content regions that take their style from it (the others faded)."""
    content = label_preview(semantics.content, semantics.palette, semantics.matched)
    styles = [label_preview(labels, semantics.palette, semantics.matched) for labels in semantics.style_maps]
    rows = [[content] + styles]
    if semantics.num_styles > 1 or semantics.sources is not None:
        lends = semantics.lends
        faded = ((content.int() + 3 * 255) // 4).to(torch.uint8)
        drawn = []
        for style in range(semantics.num_styles):
            keep = torch.cat([torch.zeros(1, dtype=torch.bool), lends[style]])[semantics.content + 1]
            drawn.append(torch.where(keep[..., None], content, faded))
        rows.append([None] + drawn)
    return _to_image(_panels(rows, gap))


_SOURCE_ENTRY = re.compile(r"^\s*(#[0-9a-fA-F]{6}|(?:label|mask|region)?\s*\d+)\s*:\s*([\d,\s]+)$")


def parse_sources(text: str, semantics: SemanticLabels) -> torch.Tensor | None:
    """``"#0000e6: 2; #00e600: 1, 3"`` -> ``bool [styles, L]``: the sky only from style 2, the
    meadow from styles 1 and 3, every other region from every style that has it. A region is
    named by its colour in the maps, or by its label / mask number (1-based). Empty -> None."""
    entries = [item for item in re.split(r"[;\n]+", text or "") if item.strip()]
    if not entries:
        return None
    palette = semantics.palette.int()
    sources = torch.ones(semantics.num_styles, semantics.num_labels, dtype=torch.bool)
    present = semantics.present
    for entry in entries:
        match = _SOURCE_ENTRY.match(entry)
        if not match:
            raise ValueError(f'sources: cannot read "{entry.strip()}". Write one region per entry, e.g. '
                             '"#0000e6: 2; #00e600: 1, 3" (region colour or label number, then the style '
                             "numbers it takes its style from).")
        region, styles_text = match.group(1).strip(), match.group(2)
        if not region.startswith("#"):
            digits = re.sub(r"^(label|mask|region)\s*", "", region)
            label = int(digits) - 1
            if not 0 <= label < semantics.num_labels:
                raise ValueError(f"sources: there is no region {digits}; the maps have {semantics.num_labels}.")
            name = f"region {digits}"
        else:
            value = int(region[1:], 16)
            colour = torch.tensor([value >> 16, (value >> 8) & 255, value & 255])
            distance = ((palette - colour) ** 2).sum(1)
            label = int(distance.argmin())
            if int(distance[label]) > 48 ** 2:
                known = ", ".join("#%02x%02x%02x" % tuple(c) for c in semantics.palette.tolist())
                raise ValueError(f"sources: no region has the colour {region}; the maps' regions are {known}.")
            name = region
        chosen = [int(n) for n in re.split(r"[,\s]+", styles_text.strip()) if n]
        if not chosen:
            raise ValueError(f"sources: {name} names no style; give at least one style number.")
        for number in chosen:
            if not 1 <= number <= semantics.num_styles:
                raise ValueError(f"sources: {name} names style {number}, but there are {semantics.num_styles} "
                                 "style maps.")
            if not present[number - 1, label]:
                raise ValueError(f"sources: style {number}'s map has no {name} region, so it cannot lend it. "
                                 f"Choose among the styles whose map has it.")
        sources[:, label] = False
        sources[[n - 1 for n in chosen], label] = True
    return sources


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


def _more_style_names(name: str) -> list[str]:
    """``style_map_2`` .. ``style_map_4`` (or ``style_masks_2`` ..): the inputs of styles 2.."""
    return [numbered(name, number) for number in STYLE_NUMBERS[1:]]


STYLE_MAP_INPUTS = [io.Image.Input(numbered("style_map", number), optional=True,
                                   tooltip=f"Semantic map of style image {number} (several styles by region: "
                                           "a content region takes its style from every style whose map has "
                                           "its colour). Connect the style images to SCSAInvert in the same order.")
                    for number in STYLE_NUMBERS[1:]]
SOURCES_INPUT = io.String.Input(
    "sources", default="", optional=True, multiline=False,
    tooltip="Optional, with several styles: which style(s) a region takes its style from, instead of every "
            "style whose map has it. E.g. '#0000e6: 2; #00e600: 1, 3' (sky from style 2 only, meadow from "
            "styles 1 and 3). Regions by colour, or by number (1-based, as the masks). Empty: automatic.")


def _with_chosen_sources(semantics: SemanticLabels, sources: str) -> SemanticLabels:
    chosen = parse_sources(sources, semantics)
    return semantics if chosen is None else semantics.with_sources(chosen)


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
                # Appended, optional: saved workflows keep their widgets and their result.
                *STYLE_MAP_INPUTS,
                SOURCES_INPUT,
            ],
            outputs=[Semantics.Output("semantics", display_name="semantics"),
                     io.Image.Output("preview", display_name="preview", tooltip="Content map (left) and style "
                                     "map(s); regions without a counterpart are hatched. With several styles, "
                                     "under each style: the content regions that take their style from it.")],
        )

    @classmethod
    def execute(cls, content_map, style_map, max_labels=64, min_region=0.02, merge_distance=24.0,
                palette="", sources="", **more_maps):
        maps = {"content_map": _image_to_rgb(content_map, "content_map"),
                "style_map": _image_to_rgb(style_map, "style_map")}
        maps.update({name: _image_to_rgb(more_maps[name], name) for name in _more_style_names("style_map")
                     if more_maps.get(name) is not None})

        def label_maps(content_rgb, *style_rgbs):
            return labels_from_color_maps(content_rgb, *style_rgbs, max_labels=max_labels,
                                          min_area_fraction=min_region / 100.0,
                                          merge_distance=merge_distance, palette=parse_palette(palette))
        try:
            semantics = label_maps(*maps.values())
        except ValueError as error:
            raise name_the_maps(error, maps, label_maps) from None
        semantics = _with_chosen_sources(semantics, sources)
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
                                           "pixels under every mask stay unlabelled."),
                    *[io.Mask.Input(numbered("style_masks", number), optional=True,
                                    tooltip=f"The L masks over style image {number}, in the same order "
                                            "(for several styles by region).")
                      for number in STYLE_NUMBERS[1:]],
                    SOURCES_INPUT],
            outputs=[Semantics.Output("semantics", display_name="semantics"),
                     io.Image.Output("preview", display_name="preview")],
        )

    @classmethod
    def execute(cls, content_masks, style_masks, threshold=0.5, sources="", **more_masks):
        stacks = [style_masks] + [more_masks[name] for name in _more_style_names("style_masks")
                                  if more_masks.get(name) is not None]
        semantics = _with_chosen_sources(labels_from_masks(content_masks, *stacks, threshold=threshold), sources)
        preview = pair_preview(semantics)
        return io.NodeOutput(semantics, preview, ui=ui.PreviewImage(preview, cls=cls))


NODES = [SCSALoadSemanticMap, SCSASemanticPair, SCSASemanticFromMasks]
