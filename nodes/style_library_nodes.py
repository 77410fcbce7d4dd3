"""A library of inverted styles: Save Style Inversion and Load Style Inversion.

  SCSAInvert -> inversion -> SCSASaveStyleInversion(style 1, its colour map)  -> models/scsa_styles/
  SCSALoadStyleInversion -> inverted_style (SCSA_STYLE_INVERSION) -> SCSAInvert's inverted_style
                         -> style_map_image (IMAGE)               -> SCSASemanticPair's style_map

The inversion travels as its own type. Graphs made before it existed link the style and
style_map LATENT outputs to SCSAInvert's latent sockets; those still work: that LATENT carries the
same inversion (``style_reuse.SAVED_STYLE_KEY``). SCSAInvert checks the style against its model
before using it. Files are safetensors, checked from their header
when the prompt is queued and read with the safe loader (style_reuse: the file format).
"""
from __future__ import annotations

import logging
import os

import torch

import folder_paths
from comfy_api.latest import io, ui

from ..scsa_core.styles import MAX_STYLES
from .diffusion_nodes import Inversion, StyleInversion
from .model_folders import register_model_folder
from .semantic_nodes import CATEGORY, _image_to_rgb, _to_image
from .style_reuse import (FILE_GONE, MISSING_MAP_KEY, SAVED_STYLE_KEY, StyleFileError, check_style_file, load_style,
                          save_style)

log = logging.getLogger("scsa")

FOLDER = "scsa_styles"


register_model_folder(FOLDER, {".safetensors"})


class SCSASaveStyleInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSASaveStyleInversion", display_name="Save Style Inversion (SCSA)", category=CATEGORY,
            description="Saves one style's inversion from SCSAInvert to models/scsa_styles, for a library of "
                        "styles that survives restarts: Load Style Inversion gives it back without inverting "
                        "again. With 'recompute' storage the file holds latents only (a few MB); with "
                        "'memory' or 'offload' it holds the recorded features too (GBs, faster sampling).",
            inputs=[
                Inversion.Input("inversion", tooltip="From SCSAInvert."),
                io.String.Input("filename_prefix", default="scsa_style",
                                tooltip="File name in models/scsa_styles (a number is appended); "
                                        "sub-folders allowed, e.g. 'paintings/monet'."),
                io.Int.Input("style", default=1, min=1, max=MAX_STYLES,
                             tooltip="Which of SCSAInvert's style images to save (1: style, 2: style_2, ...)."),
                io.Image.Input("style_map_image", optional=True,
                               tooltip="The style's colour map (the image given to SCSASemanticPair), saved with "
                                       "it so that Load Style Inversion gives it back. Needed for SCSA styles."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inversion, filename_prefix, style, style_map_image=None):
        part = inversion.style_part(style)
        if part.map_latent is not None and style_map_image is None:
            raise ValueError("style_map_image: connect the style's colour map (the image you gave "
                             "SCSASemanticPair for this style); a saved SCSA style needs it for its semantics.")
        map_rgb = None if style_map_image is None else torch.from_numpy(
            _image_to_rgb(style_map_image, "style_map_image").copy())
        base = folder_paths.get_folder_paths(FOLDER)[0]
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, base)
        os.makedirs(folder, exist_ok=True)
        while True:   # another save may take the number between the folder scan and the write
            path = os.path.join(folder, f"{name}_{counter:05}.safetensors")
            try:
                save_style(path, part, map_rgb)
                break
            except FileExistsError:
                counter += 1
        log.info("SCSA: saved style %d's inversion (%s storage) to %s", style, part.storage, path)
        shown = os.path.relpath(path, base)
        return io.NodeOutput(ui=ui.PreviewText(f"saved {shown}"))


class SCSALoadStyleInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSALoadStyleInversion", display_name="Load Style Inversion (SCSA)", category=CATEGORY,
            description="Loads a style saved by Save Style Inversion. Connect inverted_style to "
                        "SCSAInvert's inverted_style (instead of the VAE-encoded style and map) and "
                        "style_map_image to SCSASemanticPair: SCSAInvert then inverts the content only. It "
                        "refuses a file made with another model, steps or blocks. (The style / style_map "
                        "latent outputs do the same, for graphs made before inverted_style existed.)",
            inputs=[io.Combo.Input("style_file", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A file in models/scsa_styles (refresh after saving one).")],
            outputs=[io.Latent.Output("style", display_name="style"),
                     io.Latent.Output("style_map", display_name="style_map"),
                     io.Image.Output("style_map_image", display_name="style_map_image"),
                     # Appended: graphs saved before keep their links (outputs are linked by position).
                     StyleInversion.Output("inverted_style", display_name="inverted_style")],
        )

    @classmethod
    def execute(cls, style_file):
        path = folder_paths.get_full_path(FOLDER, style_file)
        if path is None:
            raise StyleFileError(f"style file {style_file!r}: {FILE_GONE}; it is not in the {FOLDER} folders "
                                 f"({', '.join(folder_paths.get_folder_paths(FOLDER))})")
        style, map_rgb = load_style(path, style_file)
        style_latent = {"samples": style.latent, SAVED_STYLE_KEY: style}
        if style.map_latent is not None:
            map_latent = {"samples": style.map_latent}
        else:
            map_latent = {"samples": torch.zeros_like(style.latent),
                          MISSING_MAP_KEY: f"{style_file} was saved without a semantic map (StyleID); "
                                           "disconnect style_map, or save the style from an SCSA inversion."}
        if map_rgb is None:
            height, width = style.latent.shape[-2:]
            map_rgb = torch.zeros(height * 8, width * 8, 3, dtype=torch.uint8)
        return io.NodeOutput(style_latent, map_latent, _to_image(map_rgb), style)

    @classmethod
    def fingerprint_inputs(cls, style_file):
        path = folder_paths.get_full_path(FOLDER, style_file)
        try:
            return None if path is None else (path, os.path.getmtime(path), os.path.getsize(path))
        except OSError:   # gone since: execute says so
            return None

    @classmethod
    def validate_inputs(cls, style_file):
        # When the prompt is queued: a damaged, foreign or newer file is refused from its header
        # (a few KB read), before SCSAInvert spends minutes on the content. A value that arrives
        # through a link is not known yet.
        if not isinstance(style_file, str):
            return True
        path = folder_paths.get_full_path(FOLDER, style_file)
        if path is None:
            return f"style_file: {style_file!r} was not found in models/{FOLDER}"
        try:
            check_style_file(path, style_file)
        except StyleFileError as e:
            return str(e)
        return True


NODES = [SCSASaveStyleInversion, SCSALoadStyleInversion]
