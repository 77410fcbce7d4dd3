#!/usr/bin/env python3
"""Generate the pack's example workflows, UI and API format, from ONE description per graph.

    .venv/bin/python scripts/make_workflows.py            # (re)write workflows/
    .venv/bin/python scripts/make_workflows.py --check    # exit 1 if the files are stale
    .venv/bin/python scripts/make_workflows.py --server http://127.0.0.1:8188   # use a running ComfyUI

Each graph below is described once (nodes, positions, links, the widget values that differ from
the nodes' defaults) and rendered from node definitions in ComfyUI's ``/object_info`` format
(scripts/workflow_format.py), so widget order, the frontend's extra widgets and the defaults
follow the nodes' schemas. The files must be one truth for every supported ComfyUI version, so
the definitions come from what does not change between them:

- this pack's nodes: from a headless ComfyUI with this pack (started when no ``--server`` is
  given): their schemas are ours, the same on every version;
- ComfyUI's core nodes (Load Checkpoint, Load Image, ...): from ``CORE_NODES`` below, written
  down once as every supported version lays them out. A newer ComfyUI that shows more of a core
  node (SaveImage gained an IMAGE output in 0.33) does not change the files; one whose layout
  no longer fits them is reported by ``core_node_problems`` (tests/test_server.py runs it on
  every version), because the files would then load wrongly there.

Written:

  workflows/<name>.json      UI format: drag into ComfyUI, or Workflow > Browse Templates
  workflows/<name>.jpg       its thumbnail (a drawing of the graph)
  workflows/api/<name>.json  API format: POST /prompt, or scripts/run_workflow.py

ComfyUI lists a pack's ``workflows/*.json`` as templates (app/custom_node_manager.py globs only
that level), so the API twins in ``api/`` and the example inputs in ``inputs/``
(scripts/make_example_inputs.py) are not offered as templates.

tests/test_server.py checks that the committed files equal what this script produces now.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scripts import make_example_inputs as examples  # noqa: E402
from scripts import workflow_format as wf  # noqa: E402
from scripts.workflow_format import File, Graph  # noqa: E402

OUT_DIR = REPO_ROOT / "workflows"
API_DIR = OUT_DIR / "api"

# What artists have. The images are the example inputs the pack puts into ComfyUI's input
# folder (nodes/example_inputs.py), so a template runs as soon as it is opened.
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
IMAGES = dict(examples.ROLE_FILES, style_2=examples.file_name("style2"), style_map_2=examples.file_name("style2", True))
# Region -> colour of the example maps as ImageColorToMask takes it (0xRRGGBB, matched exactly).
REGION_COLOURS = {name: (r << 16) | (g << 8) | b for name, (r, g, b) in examples.REGIONS.items()}

# ComfyUI's core nodes that the graphs use, in /object_info's format, reduced to what the files
# depend on: sockets and widgets in order (the UI file's widgets_values are positional), the
# outputs that links point at, the display name. Checked on 0.3.75 and 0.33.0: both lay these out
# alike, except that 0.33's SaveImage also has an IMAGE output (nothing links from it). File
# lists (checkpoints, images) are empty: their values are given as File(...) and never checked.
CORE_NODES = {
    "CheckpointLoaderSimple": {
        "display_name": "Load Checkpoint",
        "input": {"required": {"ckpt_name": [[], {}]}}, "input_order": {"required": ["ckpt_name"]},
        "output": ["MODEL", "CLIP", "VAE"], "output_name": ["MODEL", "CLIP", "VAE"]},
    "CLIPTextEncode": {
        "display_name": "CLIP Text Encode (Prompt)",
        "input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]}},
        "input_order": {"required": ["text", "clip"]},
        "output": ["CONDITIONING"], "output_name": ["CONDITIONING"]},
    "LoadImage": {
        "display_name": "Load Image",
        "input": {"required": {"image": [[], {"image_upload": True}]}}, "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"]},
    "VAEEncode": {
        "display_name": "VAE Encode",
        "input": {"required": {"pixels": ["IMAGE", {}], "vae": ["VAE", {}]}},
        "input_order": {"required": ["pixels", "vae"]}, "output": ["LATENT"], "output_name": ["LATENT"]},
    "VAEDecode": {
        "display_name": "VAE Decode",
        "input": {"required": {"samples": ["LATENT", {}], "vae": ["VAE", {}]}},
        "input_order": {"required": ["samples", "vae"]}, "output": ["IMAGE"], "output_name": ["IMAGE"]},
    "SaveImage": {
        "display_name": "Save Image",
        "input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "input_order": {"required": ["images", "filename_prefix"]}, "output": [], "output_name": []},
    "UNETLoader": {
        "display_name": "Load Diffusion Model",
        "input": {"required": {"unet_name": [[], {}],
                               "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {}]}},
        "input_order": {"required": ["unet_name", "weight_dtype"]}, "output": ["MODEL"], "output_name": ["MODEL"]},
    "DualCLIPLoader": {
        "display_name": "DualCLIPLoader",
        "input": {"required": {"clip_name1": [[], {}], "clip_name2": [[], {}], "type": [["flux"], {}]},
                  "optional": {"device": [["default", "cpu"], {"advanced": True}]}},
        "input_order": {"required": ["clip_name1", "clip_name2", "type"], "optional": ["device"]},
        "output": ["CLIP"], "output_name": ["CLIP"]},
    "CLIPLoader": {
        "display_name": "Load CLIP",
        "input": {"required": {"clip_name": [[], {}], "type": [["flux2", "qwen_image", "lumina2"], {}]},
                  "optional": {"device": [["default", "cpu"], {"advanced": True}]}},
        "input_order": {"required": ["clip_name", "type"], "optional": ["device"]},
        "output": ["CLIP"], "output_name": ["CLIP"]},
    "VAELoader": {
        "display_name": "Load VAE",
        "input": {"required": {"vae_name": [[], {}]}}, "input_order": {"required": ["vae_name"]},
        "output": ["VAE"], "output_name": ["VAE"]},
    "FluxGuidance": {
        "display_name": "FluxGuidance",
        "input": {"required": {"conditioning": ["CONDITIONING", {}],
                               "guidance": ["FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1}]}},
        "input_order": {"required": ["conditioning", "guidance"]},
        "output": ["CONDITIONING"], "output_name": ["CONDITIONING"]},
    "ModelSamplingAuraFlow": {
        "display_name": "ModelSamplingAuraFlow",
        "input": {"required": {"model": ["MODEL", {}],
                               "shift": ["FLOAT", {"default": 1.73, "min": 0.0, "max": 100.0, "step": 0.01}]}},
        "input_order": {"required": ["model", "shift"]}, "output": ["MODEL"], "output_name": ["MODEL"]},
    "ImageColorToMask": {
        "display_name": "ImageColorToMask",
        "input": {"required": {"image": ["IMAGE", {}], "color": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFF}]}},
        "input_order": {"required": ["image", "color"]}, "output": ["MASK"], "output_name": ["MASK"]},
}

NOTE_SCSA = """SCSA semantic style transfer (SD1.5)

1. Load Checkpoint: any SD1.x checkpoint.
2. Content + style images, and a semantic map for each: flat colours, one per region; the same colour marks the same region in both maps (PNG). The example images (scsa_example_*.png) are already in your input folder: Run to try them.
3. Queue. The preview of "Semantic Pair" shows the regions found (hatched = no counterpart in the other map).

Each semantic map must have the size of its own image (content and style may differ). Tweak Apply SCSA or the sampler and re-queue: the inversion is cached."""

NOTE_STYLEID = """StyleID style transfer (SD1.5), no semantic maps

The same graph as SCSA, without semantics: Apply SCSA then runs StyleID (gamma, styleid_temperature).
Content and style images may have different sizes."""

NOTE_SDXL = """SCSA semantic style transfer (SDXL)

The SD1.5 graph with an SDXL checkpoint: use images around 1024 px (the example images loaded here are 512 px: enough for a first try). Invert's blocks "auto" picks SDXL's finest attention level (output 3-5); type e.g. "output 0-5" to also inject in the deep layout blocks (several GB of features).

Each semantic map must have the size of its own image. Tweak Apply SCSA or the sampler and re-queue: the inversion is cached."""

NOTE_MASKS = """SCSA driven by masks

Each "Image Color To Mask" picks one region of a colour-coded map (exact colour, 0xRRGGBB). Any MASK works instead, e.g. from a segmentation node.
Mask Batch stacks them in socket order: content mask i and style mask i are the same region, so keep the same order on both sides.

No colour map? Disconnect content_map / style_map from Invert and set Apply SCSA's semantic_share to 0."""


# ------------------------------------------------------------------------------- the graphs
def _model_and_images(g: Graph, maps: str | None, checkpoint: str = CHECKPOINT):
    """Load Checkpoint, empty prompt, content/style images and (optionally) the two maps."""
    ckpt = g.add("CheckpointLoaderSimple", (40, 60), (320, 98), ckpt_name=File(checkpoint))
    empty = g.add("CLIPTextEncode", (40, 210), (320, 110), title="Empty prompt", text="", clip=ckpt[1])
    return (ckpt, empty, *_images(g, maps))


def _images(g: Graph, maps: str | None):
    """Content/style images and (optionally) the two maps."""
    content = g.add("LoadImage", (400, 60), (300, 330), title="Content image", image=File(IMAGES["content"]))
    style = g.add("LoadImage", (720, 60), (300, 330), title="Style image", image=File(IMAGES["style"]))
    content_map = style_map = None
    if maps == "color":
        content_map = g.add("SCSALoadSemanticMap", (400, 440), (300, 330), title="Content semantic map",
                            image=File(IMAGES["content_map"]))
        style_map = g.add("SCSALoadSemanticMap", (720, 440), (300, 330), title="Style semantic map",
                          image=File(IMAGES["style_map"]))
    elif maps == "masks":
        content_map = g.add("LoadImage", (400, 440), (300, 330), title="Content semantic map",
                            image=File(IMAGES["content_map"]))
        style_map = g.add("LoadImage", (720, 440), (300, 330), title="Style semantic map",
                          image=File(IMAGES["style_map"]))
    return content, style, content_map, style_map


def _encode(g: Graph, ckpt, image, pos, title):
    return g.add("VAEEncode", pos, (210, 46), title=title, pixels=image[0], vae=ckpt[2])


def _encode_pair(g: Graph, ckpt, content, style, content_map, style_map) -> dict:
    """VAE Encode of the content, the style and their maps, keyed by SCSAInvert's sockets."""
    return {"content": _encode(g, ckpt, content, (1060, 60), "Encode content"),
            "style": _encode(g, ckpt, style, (1060, 150), "Encode style"),
            "content_map": _encode(g, ckpt, content_map, (1060, 440), "Encode content map"),
            "style_map": _encode(g, ckpt, style_map, (1060, 530), "Encode style map")}


def _scsa_tail(g: Graph, ckpt, empty, latents: dict, semantics, x: float, prefix: str, **invert_values):
    invert = g.add("SCSAInvert", (x, 60), (330, 230), model=ckpt[0], conditioning=empty[0],
                   **{socket: encoded[0] for socket, encoded in latents.items()}, **invert_values)
    apply = g.add("SCSAApply", (x, 330), (330, 290), model=ckpt[0],
                  semantics=semantics[0] if semantics is not None else None)
    sampler = g.add("SCSAStyleSampler", (x + 370, 60), (300, 120), model=apply[0], inversion=invert[0])
    decode = g.add("VAEDecode", (x + 370, 220), (210, 46), samples=sampler[0], vae=ckpt[2])
    g.add("SaveImage", (x + 370, 310), (380, 420), images=decode[0], filename_prefix=prefix)
    return invert, apply, sampler


def scsa_color_maps(name: str = "scsa_sd15_color_maps", checkpoint: str = CHECKPOINT,
                    note: str = NOTE_SCSA, prefix: str = "scsa") -> Graph:
    g = Graph(name, view=(0.75, (20.0, 20.0)))
    ckpt, empty, content, style, content_map, style_map = _model_and_images(g, "color", checkpoint)
    latents = _encode_pair(g, ckpt, content, style, content_map, style_map)
    pair = g.add("SCSASemanticPair", (1060, 640), (420, 360), content_map=content_map[0],
                 style_map=style_map[0])
    _scsa_tail(g, ckpt, empty, latents, pair, 1520, prefix)
    g.note(note, (40, 380), (330, 390))
    g.group("Model", (20, -10, 360, 350))
    g.group("Images and semantic maps", (380, -10, 660, 800))
    g.group("SCSA", (1500, -10, 770, 760))
    return g


def styleid() -> Graph:
    g = Graph("styleid_sd15", view=(0.8, (20.0, 20.0)))
    ckpt, empty, content, style, _, _ = _model_and_images(g, None)
    latents = {"content": _encode(g, ckpt, content, (1060, 60), "Encode content"),
               "style": _encode(g, ckpt, style, (1060, 150), "Encode style")}
    _scsa_tail(g, ckpt, empty, latents, None, 1320, "styleid")
    g.note(NOTE_STYLEID, (40, 380), (330, 200))
    g.group("Model", (20, -10, 360, 350))
    g.group("Images", (380, -10, 660, 420))
    g.group("StyleID", (1300, -10, 770, 760))
    return g


def scsa_masks() -> Graph:
    g = Graph("scsa_sd15_masks", view=(0.6, (20.0, 20.0)))
    ckpt, empty, content, style, content_map, style_map = _model_and_images(g, "masks")
    batches = []
    for side, (image, y) in {"content": (content_map, 870), "style": (style_map, 1310)}.items():
        masks = [g.add("ImageColorToMask", (400, y + 100 * i), (300, 58),
                       title=f"{side} mask {i + 1} ({region})", image=image[0], color=colour)
                 for i, (region, colour) in enumerate(REGION_COLOURS.items())]
        batches.append(g.add("SCSAMaskBatch", (740, y), (280, 230), title=f"{side.capitalize()} masks",
                             **{f"mask_{i + 1}": m[0] for i, m in enumerate(masks)}))
    latents = _encode_pair(g, ckpt, content, style, content_map, style_map)
    pair = g.add("SCSASemanticFromMasks", (1060, 870), (420, 360), content_masks=batches[0][0],
                 style_masks=batches[1][0])
    _scsa_tail(g, ckpt, empty, latents, pair, 1520, "scsa_masks")
    g.note(NOTE_MASKS, (40, 380), (330, 330))
    g.group("Model", (20, -10, 360, 350))
    g.group("Images and semantic maps", (380, -10, 660, 800))
    g.group("Masks: one per region, same order on both sides", (380, 800, 660, 900))
    g.group("SCSA", (1500, -10, 770, 760))
    return g


def scsa_two_styles() -> Graph:
    """One content, two style images: each region takes its style from the styles whose map has it."""
    g = Graph("scsa_two_styles", view=(0.6, (20.0, 20.0)))
    ckpt, empty, content, style, content_map, style_map = _model_and_images(g, "color")
    style2 = g.add("LoadImage", (400, 820), (300, 330), title="Style image 2", image=File(IMAGES["style_2"]))
    style2_map = g.add("SCSALoadSemanticMap", (720, 820), (300, 330), title="Style 2 semantic map",
                       image=File(IMAGES["style_map_2"]))
    latents = dict(_encode_pair(g, ckpt, content, style, content_map, style_map),
                   style_2=_encode(g, ckpt, style2, (1060, 820), "Encode style 2"),
                   style_map_2=_encode(g, ckpt, style2_map, (1060, 910), "Encode style 2 map"))
    pair = g.add("SCSASemanticPair", (1060, 1010), (420, 420), content_map=content_map[0],
                 style_map=style_map[0], style_map_2=style2_map[0], sources=f"#{REGION_COLOURS['sky']:06x}: 2")
    _scsa_tail(g, ckpt, empty, latents, pair, 1520, "scsa_two_styles")
    g.note(NOTE_TWO_STYLES, (40, 380), (330, 520))
    g.group("Model", (20, -10, 360, 350))
    g.group("Content, style 1 and their semantic maps", (380, -10, 660, 800))
    g.group("Style 2 and its semantic map", (380, 800, 660, 380))
    g.group("SCSA", (1500, -10, 770, 760))
    return g


NOTE_TWO_STYLES = """SCSA with two style images, by region (SD1.5)

Each region of the content takes its style from the style images whose semantic map has that region's colour: here the meadow and the sun from both paintings, the mountains from style 1 (style 2 has none), and the sky, by the "sources" line of Semantic Pair, from style 2 only (#0000e6: 2). Clear "sources" to let the sky draw from both.

Add up to four styles: style_2 .. style_4 on Invert (each with its map latent) and style_map_2 .. style_map_4 on Semantic Pair, in the same order. The lower row of Semantic Pair's preview shows, under each style, the content regions it styles.

A region no style has falls back to the whole styles. Change only the content and re-queue: the styles are not inverted again."""


def scsa_sdxl() -> Graph:
    return scsa_color_maps("scsa_sdxl_color_maps", SDXL_CHECKPOINT, NOTE_SDXL, prefix="scsa_sdxl")


# What ComfyUI's own Flux templates load. Flux.1: Load Diffusion Model + DualCLIPLoader (CLIP-L and
# T5-XXL, type flux) + Load VAE; Flux.2: its Mistral text encoder through Load CLIP (type flux2).
FLUX_FILES = {
    "flux1": dict(model="flux1-dev.safetensors", text_encoders=("clip_l.safetensors", "t5xxl_fp16.safetensors"),
                  vae="ae.safetensors", steps=28),
    "flux2": dict(model="flux2_dev_fp8mixed.safetensors", text_encoders=("mistral_3_small_flux2_bf16.safetensors",),
                  vae="flux2-vae.safetensors", steps=28),
}


def scsa_flux(variant: str) -> Graph:
    """SCSA on Flux.1 / Flux.2 (experimental): the colour-map graph on Flux's loaders, with the
    distilled guidance set once (FluxGuidance) for inversion and sampling."""
    files = FLUX_FILES[variant]
    g = Graph(f"scsa_{variant}", view=(0.75, (20.0, 20.0)))
    # Explicit titles: ComfyUI renamed some of these nodes' display names between versions, and
    # an untitled node's API title is its display name.
    unet = g.add("UNETLoader", (40, 60), (320, 82), title="Load Diffusion Model", unet_name=File(files["model"]))
    if variant == "flux1":
        clip = g.add("DualCLIPLoader", (40, 180), (320, 130), title="Load text encoders (CLIP-L + T5)",
                     clip_name1=File(files["text_encoders"][0]), clip_name2=File(files["text_encoders"][1]),
                     type="flux")
    else:
        clip = g.add("CLIPLoader", (40, 180), (320, 106), title="Load text encoder",
                     clip_name=File(files["text_encoders"][0]), type="flux2")
    vae = g.add("VAELoader", (40, 340), (320, 58), title="Load VAE", vae_name=File(files["vae"]))
    empty = g.add("CLIPTextEncode", (40, 430), (320, 110), title="Empty prompt", text="", clip=clip[0])
    guidance = g.add("FluxGuidance", (40, 570), (320, 58), title="Flux guidance (inversion and sampling)",
                     conditioning=empty[0])
    loaders = (unet[0], clip[0], vae[0])
    content, style, content_map, style_map = _images(g, "color")
    latents = _encode_pair(g, loaders, content, style, content_map, style_map)
    pair = g.add("SCSASemanticPair", (1060, 640), (420, 360), content_map=content_map[0], style_map=style_map[0])
    _scsa_tail(g, loaders, guidance, latents, pair, 1520, f"scsa_{variant}", steps=files["steps"])
    g.note(NOTE_FLUX[variant], (40, 660), (330, 420))
    g.group("Model", (20, -10, 360, 1100))
    g.group("Images and semantic maps", (380, -10, 660, 800))
    g.group("SCSA (experimental on Flux)", (1500, -10, 770, 760))
    return g


_NOTE_FLUX_COMMON = """Experimental: no real {name} weights were run through SCSA when this was made. It runs; what looks best is unmeasured. A real-weight run should tune: Invert's blocks (auto = the second half of the single blocks), FluxGuidance (used for inversion and sampling alike), Apply SCSA's rope_mode (shift / shared) and the number of steps.

Content and style must have the same size on Flux; each semantic map the size of its own image. Storage is always recompute (a feature bank would not fit at 1024 px)."""

NOTE_FLUX = {
    "flux1": "SCSA semantic style transfer on Flux.1 (dev, schnell, Krea)\n\n1. Load Diffusion Model: the Flux.1 "
             "model; DualCLIPLoader: clip_l + t5xxl (type flux); Load VAE: ae.\n2. Content, style and their colour "
             "maps, as for SD1.5.\n\n" + _NOTE_FLUX_COMMON.format(name="Flux.1"),
    "flux2": "SCSA semantic style transfer on Flux.2 (dev, Klein)\n\n1. Load Diffusion Model: the Flux.2 model; "
             "Load CLIP: its text encoder (type flux2); Load VAE: the Flux.2 VAE.\n2. Content, style and their "
             "colour maps, as for SD1.5.\n\n" + _NOTE_FLUX_COMMON.format(name="Flux.2"),
}


# What ComfyUI's own templates load for the other DiT families (image_qwen_image,
# image_z_image_turbo, sd3.5_simple_example in comfyui-workflow-templates): Qwen-Image and
# Z-Image-Turbo through Load Diffusion Model + Load CLIP (type qwen_image / lumina2) + Load VAE,
# with ModelSamplingAuraFlow (shift 3.1 / 3); SD3.5 through one Load Checkpoint of the file that
# carries its text encoders. Steps: the templates' (Z-Image-Turbo: its model card's 9).
DIT_FILES = {
    "qwen_image": dict(model="qwen_image_fp8_e4m3fn.safetensors",
                       text_encoder=("qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image"),
                       vae="qwen_image_vae.safetensors", shift=3.1, steps=20),
    "z_image": dict(model="z_image_turbo_bf16.safetensors", text_encoder=("qwen_3_4b.safetensors", "lumina2"),
                    vae="ae.safetensors", shift=3.0, steps=9),
    "sd35": dict(checkpoint="sd3.5_large_fp8_scaled.safetensors", steps=20),
}
DIT_NAMES = {"qwen_image": "Qwen-Image", "z_image": "Z-Image", "sd35": "SD3.5"}


def scsa_dit(variant: str) -> Graph:
    """SCSA on Qwen-Image / Z-Image / SD3.5 (experimental): the colour-map graph on the loaders
    ComfyUI's own template for that model uses."""
    files = DIT_FILES[variant]
    g = Graph(f"scsa_{variant}", view=(0.75, (20.0, 20.0)))
    if "checkpoint" in files:   # SD3.5: one file with the model, its three text encoders and the VAE
        ckpt = g.add("CheckpointLoaderSimple", (40, 60), (320, 98), title="Load Checkpoint",
                     ckpt_name=File(files["checkpoint"]))
        loaders = (ckpt[0], ckpt[1], ckpt[2])
        empty = g.add("CLIPTextEncode", (40, 210), (320, 110), title="Empty prompt", text="", clip=ckpt[1])
        note_at, model_height = (40, 380), 1030
    else:
        # Explicit titles, as on the Flux graphs: an untitled node's API title is its display name.
        unet = g.add("UNETLoader", (40, 60), (320, 82), title="Load Diffusion Model", unet_name=File(files["model"]))
        shift = g.add("ModelSamplingAuraFlow", (40, 180), (320, 58), title="Model sampling (shift)",
                      model=unet[0], shift=files["shift"])
        encoder, kind = files["text_encoder"]
        clip = g.add("CLIPLoader", (40, 280), (320, 106), title="Load text encoder", clip_name=File(encoder),
                     type=kind)
        vae = g.add("VAELoader", (40, 430), (320, 58), title="Load VAE", vae_name=File(files["vae"]))
        loaders = (shift[0], clip[0], vae[0])
        empty = g.add("CLIPTextEncode", (40, 530), (320, 110), title="Empty prompt", text="", clip=clip[0])
        note_at, model_height = (40, 680), 1130
    content, style, content_map, style_map = _images(g, "color")
    latents = _encode_pair(g, loaders, content, style, content_map, style_map)
    pair = g.add("SCSASemanticPair", (1060, 640), (420, 360), content_map=content_map[0], style_map=style_map[0])
    _scsa_tail(g, loaders, empty, latents, pair, 1520, f"scsa_{variant}", steps=files["steps"])
    g.note(NOTE_DIT[variant], note_at, (330, model_height - note_at[1] - 20))
    g.group("Model", (20, -10, 360, model_height))
    g.group("Images and semantic maps", (380, -10, 660, 800))
    g.group(f"SCSA (experimental on {DIT_NAMES[variant]})", (1500, -10, 770, 760))
    return g


_NOTE_DIT_COMMON = """Experimental: no real {name} weights were run through SCSA when this was made. It runs; what looks best is unmeasured. A real-weight run should tune: Invert's blocks (auto = the last third of the {blocks}), {tune} and the number of steps.

Content and style must have the same size; each semantic map the size of its own image. Storage is always recompute (the reference rows ride along in the sampling batch)."""

NOTE_DIT = {
    "qwen_image": "SCSA semantic style transfer on Qwen-Image\n\n1. Load Diffusion Model: the Qwen-Image model; "
                  "Load text encoder: qwen_2.5_vl_7b (type qwen_image); Load VAE: the Qwen-Image VAE. Model "
                  "sampling (shift) 3.1 as in ComfyUI's own Qwen-Image template.\n2. Content, style and their "
                  "colour maps, as for SD1.5.\n\n" + _NOTE_DIT_COMMON.format(
                      name="Qwen-Image", blocks="transformer blocks: double 40-59",
                      tune="the shift, Apply SCSA's rope_mode (shift / shared)"),
    "z_image": "SCSA semantic style transfer on Z-Image (Turbo)\n\n1. Load Diffusion Model: the Z-Image model; "
               "Load text encoder: qwen_3_4b (type lumina2); Load VAE: ae (the Flux VAE). Model sampling (shift) "
               "3 as in ComfyUI's own Z-Image-Turbo template.\n2. Content, style and their colour maps, as for "
               "SD1.5.\n\nNeeds a ComfyUI whose Z-Image layers publish their block index (0.33 does; 0.3.75 "
               "does not, and SCSA then stops with \"SCSA injected nothing\").\n\n" + _NOTE_DIT_COMMON.format(
                   name="Z-Image", blocks="main layers: double 20-29; the refiners are never touched",
                   tune="the shift, Apply SCSA's rope_mode (shift / shared)"),
    "sd35": "SCSA semantic style transfer on SD3.5 (Large, Medium)\n\n1. Load Checkpoint: an SD3.5 file that "
            "carries its text encoders (e.g. sd3.5_large_fp8_scaled, as in ComfyUI's own SD3.5 template). A file "
            "without them: Load Diffusion Model + TripleCLIPLoader (clip_g, clip_l, t5xxl) + Load VAE instead.\n"
            "2. Content, style and their colour maps, as for SD1.5.\n\nSD3.5 has no RoPE (learned absolute "
            "positions): Apply SCSA's rope_mode has no effect, and within a region the style's layout can show "
            "through.\n\n" + _NOTE_DIT_COMMON.format(name="SD3.5", blocks="joint blocks: double 26-37 on Large",
                                                       tune="the SCSA weights"),
}


def feedforward(variant: str) -> Graph:
    """SANet+SCSA or StyTr2+SCSA: one network pass, no diffusion model."""
    node_type, weights, note = FEEDFORWARD[variant]
    g = Graph(f"scsa_{variant}", view=(0.75, (20.0, 20.0)))
    loader = g.add("SCSAFeedForwardLoader", (40, 60), (320, 60), model_name=File(weights))
    content = g.add("LoadImage", (400, 60), (300, 330), title="Content image", image=File(IMAGES["content"]))
    style = g.add("LoadImage", (720, 60), (300, 330), title="Style image", image=File(IMAGES["style"]))
    content_map = g.add("SCSALoadSemanticMap", (400, 440), (300, 330), title="Content semantic map",
                        image=File(IMAGES["content_map"]))
    style_map = g.add("SCSALoadSemanticMap", (720, 440), (300, 330), title="Style semantic map",
                      image=File(IMAGES["style_map"]))
    pair = g.add("SCSASemanticPair", (1060, 440), (420, 360), content_map=content_map[0], style_map=style_map[0])
    stylize = g.add(node_type, (1060, 60), (330, 260), model=loader[0], content=content[0], style=style[0],
                    semantics=pair[0])
    g.add("SaveImage", (1520, 60), (380, 420), images=stylize[0], filename_prefix=f"scsa_{variant}")
    g.note(note, (40, 170), (330, 390))
    g.group("Model", (20, -10, 360, 590))
    g.group("Images and semantic maps", (380, -10, 660, 800))
    g.group(f"{variant.capitalize() if variant == 'sanet' else 'StyTr2'} + SCSA", (1040, -10, 880, 820))
    return g


NOTE_SANET = """SANet + SCSA: semantic style transfer in one network pass (no diffusion model)

1. Put SANet's weights in models/style_transfer/sanet/: vgg_normalised.pth, decoder_iter_500000.pth, transformer_iter_500000.pth (as published with SANet), or one converted .safetensors (scripts/convert_feedforward_weights.py). Refresh, then pick the set in the loader.
2. The example images (scsa_example_*.png) are in your input folder: Run.

Without semantics (disconnect it) the node runs plain SANet. sca_weight / ssa_weight: smooth region-wise style vs copied texture (SCSA's defaults 0.7 / 0.3)."""

NOTE_STYTR2 = """StyTr2 + SCSA: semantic style transfer with a transformer, in one pass (no diffusion model)

1. Put StyTr2's weights in models/style_transfer/stytr2/: embedding_iter_160000.pth, decoder_iter_160000.pth, transformer_iter_160000.pth (as published with StyTR-2), or one converted .safetensors. Refresh, then pick the set in the loader.
2. The example images (scsa_example_*.png) are in your input folder: Run.

Without semantics (disconnect it) the node runs plain StyTr2 (SCSA's defaults: 1.2 / 0.5)."""

# variant -> (stylize node, weight set the template names, note)
FEEDFORWARD = {"sanet": ("SCSASANetStylize", "sanet/", NOTE_SANET),
               "stytr2": ("SCSAStyTr2Stylize", "stytr2/", NOTE_STYTR2)}

GRAPHS = {"scsa_sd15_color_maps": scsa_color_maps, "styleid_sd15": styleid, "scsa_sd15_masks": scsa_masks,
          "scsa_sdxl_color_maps": scsa_sdxl, "scsa_sanet": lambda: feedforward("sanet"),
          "scsa_stytr2": lambda: feedforward("stytr2"), "scsa_two_styles": scsa_two_styles,
          "scsa_flux1": lambda: scsa_flux("flux1"), "scsa_flux2": lambda: scsa_flux("flux2"),
          "scsa_qwen_image": lambda: scsa_dit("qwen_image"), "scsa_z_image": lambda: scsa_dit("z_image"),
          "scsa_sd35": lambda: scsa_dit("sd35")}


# ---------------------------------------------------------------------- node definitions
def used_node_types() -> set[str]:
    """Every node type the graphs use (notes excluded)."""
    return {node.type for build in GRAPHS.values() for node in build().nodes
            if node.type not in wf.VIRTUAL_TYPES}


def node_defs(live: dict) -> dict:
    """The definitions the files are rendered from: this pack's nodes from ``live`` (a server's
    /object_info), the core nodes from ``CORE_NODES`` whatever ``live`` says about them."""
    defs = {}
    for node_type in sorted(used_node_types()):
        if node_type in CORE_NODES:
            defs[node_type] = CORE_NODES[node_type]
        elif node_type.startswith("SCSA"):
            defs[node_type] = wf.node_def(live, node_type)
        else:
            raise wf.WorkflowError(f"{node_type} is a core node: write it down in CORE_NODES (as every "
                                   "supported ComfyUI lays it out), so the files stay version-independent")
    return defs


def core_node_problems(live: dict) -> list[str]:
    """Where this ComfyUI's core nodes no longer fit ``CORE_NODES`` (empty list = the files
    load correctly here): a different socket or widget layout, a changed output that a link
    may point at, or a missing node. More outputs after the pinned ones are fine."""
    problems = []
    for node_type, pinned in CORE_NODES.items():
        if node_type not in live:
            problems.append(f"{node_type}: not in this ComfyUI")
            continue
        here = live[node_type]

        def sockets(definition):
            return [(i.name, i.type, i.optional) for i in wf.input_defs(definition) if not i.is_widget]

        def widgets(definition):
            return [(i.name, i.type, i.optional) for i in wf.input_defs(definition) if i.is_widget]

        for what, of in (("sockets", sockets), ("widgets", widgets), ("widget layout", wf.widget_layout)):
            if of(here) != of(pinned):
                problems.append(f"{node_type}: {what} {of(here)} here, {of(pinned)} in CORE_NODES")
        for key in ("output", "output_name"):
            if list(here[key][:len(pinned[key])]) != list(pinned[key]):
                problems.append(f"{node_type}: {key} {here[key]} here, CORE_NODES expects it to start "
                                f"with {pinned[key]}")
    return problems


# ----------------------------------------------------------------------------- rendering
def render(live: dict) -> dict:
    """``{name: (ui dict, api dict)}`` for every graph; ``live``: a server's /object_info (its
    SCSA nodes are used, see ``node_defs``)."""
    defs = node_defs(live)
    out = {}
    for name, build in GRAPHS.items():
        graph = build()
        assert graph.name == name
        out[name] = (graph.to_ui(defs), graph.to_api(defs))
    return out


def dumps(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def paths(name: str, out_dir: Path = OUT_DIR) -> dict:
    return {"ui": out_dir / f"{name}.json", "thumbnail": out_dir / f"{name}.jpg",
            "api": out_dir / "api" / f"{name}.json"}


def stale_files(defs: dict, out_dir: Path = OUT_DIR) -> list[str]:
    """Files that differ from what the generator produces (empty list = up to date)."""
    problems = []
    for name, (ui, api) in render(defs).items():
        p = paths(name, out_dir)
        for key, data in (("ui", ui), ("api", api)):
            if not p[key].is_file():
                problems.append(f"{p[key]} is missing")
            elif json.loads(p[key].read_text(encoding="utf-8")) != json.loads(dumps(data)):
                problems.append(f"{p[key]} differs from the generator's output")
        if not p["thumbnail"].is_file():
            problems.append(f"{p['thumbnail']} is missing")
    return problems


def write(defs: dict, out_dir: Path = OUT_DIR) -> list[Path]:
    written = []
    for name, (ui, api) in render(defs).items():
        p = paths(name, out_dir)
        p["api"].parent.mkdir(parents=True, exist_ok=True)
        p["ui"].write_text(dumps(ui), encoding="utf-8")
        p["api"].write_text(dumps(api), encoding="utf-8")
        thumbnail(ui, node_defs(defs)).save(p["thumbnail"], "JPEG", quality=85, optimize=True)
        written += [p["ui"], p["api"], p["thumbnail"]]
    return written


# ---------------------------------------------------------------------------- thumbnails
TYPE_COLOURS = {"MODEL": (178, 160, 255), "CLIP": (255, 210, 64), "VAE": (255, 99, 99),
                "CONDITIONING": (255, 160, 49), "LATENT": (255, 156, 249), "IMAGE": (100, 181, 246),
                "MASK": (129, 200, 132), "SCSA_SEMANTICS": (77, 208, 225), "SCSA_INVERSION": (240, 98, 146)}


def thumbnail(ui: dict, defs: dict, width: int = 640, height: int = 400):
    """A drawing of the graph (node boxes, titles, links coloured by type) on ComfyUI's dark
    canvas. Made from the workflow itself, so it needs no model and no images."""
    from PIL import Image, ImageDraw, ImageFont
    nodes = {n["id"]: n for n in ui["nodes"]}
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in ui["nodes"]]
    boxes += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in ui["groups"]]
    x0, y0 = min(b[0] for b in boxes) - 20, min(b[1] for b in boxes) - 20
    x1, y1 = max(b[2] for b in boxes) + 20, max(b[3] for b in boxes) + 20
    scale = min(width / (x1 - x0), height / (y1 - y0))
    ox, oy = (width - (x1 - x0) * scale) / 2, (height - (y1 - y0) * scale) / 2

    def at(x, y):
        return ox + (x - x0) * scale, oy + (y - y0) * scale

    image = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=max(8, int(round(15 * scale * 1.6))))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    radius = max(1, int(6 * scale))
    for g in ui["groups"]:
        bx, by, bw, bh = g["bounding"]
        colour = tuple(int(g["color"][i:i + 2], 16) for i in (1, 3, 5))
        draw.rounded_rectangle((*at(bx, by), *at(bx + bw, by + bh)), radius=radius,
                               fill=tuple(c // 4 + 24 for c in colour), outline=colour)
        draw.text(at(bx + 10, by + 6), g["title"], fill=(200, 200, 200), font=font)
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        a, b = nodes[src], nodes[dst]
        start = at(a["pos"][0] + a["size"][0], a["pos"][1] + 14 + 20 * src_slot)
        end = at(b["pos"][0], b["pos"][1] + 14 + 20 * dst_slot)
        mid = (start[0] + end[0]) / 2
        draw.line([start, (mid, start[1]), (mid, end[1]), end], fill=TYPE_COLOURS.get(kind, (200, 200, 200)),
                  width=max(1, int(3 * scale * 1.5)))
    for n in ui["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        is_note = n["type"] in ("Note", "MarkdownNote")
        body = (101, 85, 51) if is_note else (53, 53, 53)
        head = (68, 51, 34) if is_note else (34, 34, 34)
        draw.rounded_rectangle((*at(x, y - 30), *at(x + w, y + h)), radius=radius, fill=body,
                               outline=(90, 90, 90))
        draw.rounded_rectangle((*at(x, y - 30), *at(x + w, y)), radius=radius, fill=head)
        title = n.get("title") or defs.get(n["type"], {}).get("display_name") or n["type"]
        draw.text(at(x + 8, y - 26), title, fill=(220, 220, 220), font=font)
    return image


# ------------------------------------------------------------------------- node definitions
def fetch_defs(server: str | None = None) -> dict:
    """``/object_info`` of a running ComfyUI, or of a headless one started for this call."""
    from scripts import comfyui_runtime as rt
    if server:
        import urllib.request
        with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=120) as r:
            return json.loads(r.read())
    with rt.ComfyServer() as srv:
        return srv.get_json("/object_info")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    ap.add_argument("--server", help="URL of a running ComfyUI with this pack (default: start one)")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: workflows/)")
    a = ap.parse_args(argv)
    defs = fetch_defs(a.server)
    mismatched = core_node_problems(defs)
    if mismatched:   # the files would not load right in this ComfyUI: say so, write nothing
        print("this ComfyUI's core nodes do not fit CORE_NODES in scripts/make_workflows.py:\n  "
              + "\n  ".join(mismatched), file=sys.stderr)
        return 1
    if a.check:
        problems = stale_files(defs, a.out)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("run: .venv/bin/python scripts/make_workflows.py", file=sys.stderr)
        return 1 if problems else 0
    for path in write(defs, a.out):
        print(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
