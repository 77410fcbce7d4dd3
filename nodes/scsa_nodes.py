"""The pack's ComfyUI nodes (V3 schema): thin adapters from sockets to ``scsa_core``.

Data flow of a graph:
  SCSALoadSemanticMap x2 -> SCSASemanticPair ------------------------> semantics
  (or MASK batches -> SCSASemanticFromMasks) ------------------------^
  Load Checkpoint -> SCSAInvert(content, style, map latents) --------> inversion
  Load Checkpoint -> SCSAApply(semantics, weights) -> SCSAStyleSampler(inversion) -> LATENT

SCSAInvert takes the *unpatched* model, so changing SCSAApply's weights or the sampler's
settings re-runs sampling only: ComfyUI keeps the inversion in its cache.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

import comfy.model_management
import folder_paths
import node_helpers
from comfy_api.latest import io, ui

from ..scsa_core.adain import adain, semantic_adain
from ..scsa_core.block import PRESETS, SCSAParams
from ..scsa_core.features import STREAMS, FeatureBank
from ..scsa_core.labels import (SemanticLabels, label_preview, labels_from_color_maps,
                                labels_from_masks)
from ..scsa_core.schedules import (TIMESTEP_MODES, ddim_invert, ddim_sample, inversion_schedule,
                                   sampling_schedule)
from .injection import (ApplySettings, AttentionPatch, InjectRun, RecordRun, StyleIDParams,
                        attention_blocks, find_patch, grid_labels, remove_patches)
from .sampling import alphas_cumprod, preview_reporter, run_ddim
from .validation import (check_conditioning, inversion_batches, log_map_sizes, map_file_error,
                         name_the_maps)

CATEGORY = "SCSA"
log = logging.getLogger("scsa")
Semantics = io.Custom("SCSA_SEMANTICS")
Inversion = io.Custom("SCSA_INVERSION")

INIT_MODES = ("auto", "semantic AdaIN", "AdaIN", "none")


@dataclass(frozen=True)
class SCSAInversion:
    """What SCSAInvert hands to SCSAStyleSampler (read-only once built)."""
    bank: FeatureBank         # recorded block inputs; empty with recompute storage
    trajectory: dict          # t -> {stream: [1, C, h, w]} latents in the model's scaled space
    streams: tuple            # the inverted streams, from scsa_core.features.STREAMS
    batches: tuple            # how the streams were batched (content side first when sizes differ)
    steps: int
    blocks: frozenset         # ComfyUI keys (name, number, index) where features were recorded
    conditioning: list        # the (empty-prompt) conditioning the inversion used
    latent_shape: tuple       # the content latent's shape
    style_shape: tuple        # the style latent's shape
    storage: str = "memory"   # memory / offload (features in `bank`) or recompute (trajectory only)

    def latent_at(self, t: int, stream: str) -> torch.Tensor:
        """The inverted latent of ``stream`` at timestep ``t``: ``[1, C, h, w]``."""
        return self.trajectory[t][stream]

    def latents_at(self, t: int, streams) -> torch.Tensor:
        """The inverted latents of ``streams`` (same size) at ``t``, stacked: ``[S, C, h, w]``."""
        return torch.cat([self.trajectory[t][name] for name in streams])

    @property
    def trajectory_bytes(self) -> int:
        return sum(x.numel() * x.element_size() for row in self.trajectory.values() for x in row.values())


# ------------------------------------------------------------------------------ images/maps
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


# --------------------------------------------------------------------------- model blocks
_BLOCK_ITEM = re.compile(r"^(input|middle|output)\s*(\d+)?(?:\s*-\s*(\d+))?$")


def parse_blocks(text: str) -> list[tuple[str, int]]:
    """``"output 6-11"`` / ``"output 6, output 7; input 4-5"`` -> ``[("output", 6), ...]``."""
    blocks, name = [], None
    for item in re.split(r"[,;]", text):
        item = item.strip().lower()
        if not item:
            continue
        if item[:1].isdigit() and name:  # "output 6, 9-10": the block name carries over
            item = f"{name} {item}"
        match = _BLOCK_ITEM.match(item)
        if not match:
            raise ValueError(f'blocks: cannot read "{item}". Write e.g. "output 6-11" or '
                             f'"output 6, output 9-11", or "auto".')
        name = match.group(1)
        first = int(match.group(2) or 0)
        last = int(match.group(3) or first)
        blocks += [(name, number) for number in range(first, last + 1)]
    return blocks


def default_blocks(keys: list[tuple], model_channels: int) -> list[tuple]:
    """StyleID's choice generalised: the decoder's finest attention level, plus the next coarser
    level when the finest one runs at the latent's full resolution.

    ``keys``: ``(name, number, index, channels)``. SD1.x/SD2.x: output 6-11 (64 and 32 token
    grids at 512 px). SDXL has no attention at full resolution: output 3-5 (its finest
    attention, 64 x 64 tokens at 1024 px, like SD1.x's output 9-11 at 512 px); its 10-deep
    output 0-2 would add 30 layout-level blocks and several GB of features, so it is left to
    the ``blocks`` input.
    """
    levels: list[list] = []
    for key in (key for key in keys if key[0] == "output"):
        if levels and levels[-1][-1][1] in (key[1], key[1] - 1) and levels[-1][-1][3] == key[3]:
            levels[-1].append(key)
        else:
            levels.append([key])
    if not levels:
        return []
    chosen = levels[-2:] if levels[-1][0][3] == model_channels else levels[-1:]
    return [key for level in chosen for key in level]


def resolve_blocks(model_patcher, text: str) -> frozenset:
    """ComfyUI block keys ``(name, number, index)`` for SCSAInvert's ``blocks`` input."""
    diffusion_model = model_patcher.model.diffusion_model
    keys = attention_blocks(diffusion_model)
    if not keys or not hasattr(diffusion_model, "output_blocks"):
        family = type(model_patcher.model.model_config).__name__
        raise ValueError(f"model: {family} has no SD-style UNet self-attention blocks. SCSA supports "
                         "UNet models: SD1.x, SD2.x and SDXL (and their fine-tunes).")
    if text.strip().lower() in ("", "auto"):
        channels = {key: _channels(diffusion_model, key) for key in keys}
        tagged = [key + (channels[key],) for key in keys]
        return frozenset(key[:3] for key in default_blocks(tagged, diffusion_model.model_channels))
    wanted = parse_blocks(text)
    chosen = {key for key in keys if key[:2] in set(wanted)}
    missing = sorted(set(wanted) - {key[:2] for key in chosen})
    if missing:
        available = sorted({f"{k[0]} {k[1]}" for k in keys})
        raise ValueError(f"blocks: {', '.join(f'{n} {i}' for n, i in missing)} has no self-attention in "
                         f"this model. Blocks with self-attention: {', '.join(available)}.")
    return frozenset(chosen)


def _channels(diffusion_model, key) -> int:
    from .injection import transformer_block
    return transformer_block(diffusion_model, key).norm1.normalized_shape[0]


# ------------------------------------------------------------------------------ inversion
def _latent(latent: dict | None, name: str) -> torch.Tensor | None:
    if latent is None:
        return None
    samples = latent["samples"]
    if samples.dim() != 4:
        raise ValueError(f"{name}: expected an image latent [batch, channels, height, width], got {tuple(samples.shape)}")
    if samples.shape[0] != 1:
        raise ValueError(f"{name}: has a batch of {samples.shape[0]} images; SCSAInvert takes one image per "
                         "input. Use 'Latent From Batch' to pick one.")
    return samples


STORAGE_MODES = ("auto", "memory", "offload", "recompute")


def choose_storage(mode: str, model_patcher, bytes_needed: int) -> tuple[str, torch.device]:
    """Where the recorded features go: ``(storage, device)``.

    memory: the model's device; offload: CPU RAM; recompute: nothing is stored (the
    trajectories are recomputed through at sampling time). auto: memory when the features take
    under half the device memory left once the model is loaded, else offload when they take
    under half the free RAM, else recompute.
    """
    device, cpu = model_patcher.load_device, torch.device("cpu")
    free_ram = comfy.model_management.get_free_memory(cpu)
    if device.type == "cpu":
        free_device = free_ram
    else:
        weights_to_load = max(0, model_patcher.model_size() - model_patcher.loaded_size())
        free_device = max(0, comfy.model_management.get_free_memory(device) - weights_to_load)
    fixed = {"memory": (device, free_device, f"for the features on {device}",
                        "'offload' (CPU RAM), 'recompute'"),
             "offload": (cpu, free_ram, "of RAM for the features", "'recompute'")}
    if mode in fixed:
        target, free, where, alternatives = fixed[mode]
        if bytes_needed > 0.9 * free:
            raise ValueError(f"storage: '{mode}' needs {bytes_needed / 2 ** 30:.2f} GB {where}, but only "
                             f"{free / 2 ** 30:.2f} GB is free. Choose {alternatives} (a few MB, slower "
                             "sampling), 'auto', or fewer steps.")
        return mode, target
    if mode == "recompute":
        return mode, device
    if mode != "auto":
        raise ValueError(f"storage: must be one of {STORAGE_MODES}, got {mode!r}")
    if bytes_needed < 0.5 * free_device:
        return "memory", device
    if device.type != "cpu" and bytes_needed < 0.5 * free_ram:
        return "offload", cpu
    return "recompute", device


class SCSAInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSAInvert", display_name="Invert Content & Style (SCSA)", category=CATEGORY,
            description="DDIM-inverts the content, style and semantic-map latents in one batch (two when "
                        "content and style differ in size) and records "
                        "the self-attention features that SCSAStyleSampler injects. Connect the model "
                        "straight from Load Checkpoint (not from SCSAApply), so tweaking SCSAApply or the "
                        "sampler re-runs sampling only.",
            inputs=[
                io.Model.Input("model", tooltip="The unpatched model (from Load Checkpoint / LoRA loaders)."),
                io.Conditioning.Input("conditioning", tooltip="The empty prompt: CLIP Text Encode with no text."),
                io.Latent.Input("content", tooltip="VAE-encoded content image."),
                io.Latent.Input("style", tooltip="VAE-encoded style image (any size; its map must match it)."),
                io.Latent.Input("content_map", optional=True,
                                tooltip="VAE-encoded content semantic map (the colour map image). Needed for SCSA."),
                io.Latent.Input("style_map", optional=True,
                                tooltip="VAE-encoded style semantic map. Needed for SCSA."),
                io.Int.Input("steps", default=50, min=2, max=1000,
                             tooltip="DDIM steps of the inversion and of the sampling (StyleID/SCSA use 50)."),
                io.String.Input("blocks", default="auto",
                                tooltip='Where features are recorded and later injected. "auto": the decoder\'s '
                                        'two finest attention levels (SD1.x: output 6-11). Or e.g. "output 6-11".'),
                io.Combo.Input("storage", options=list(STORAGE_MODES), default="auto", optional=True,
                               tooltip="Where the recorded features live (SD1.5, 512 px, 50 steps: about 2.2 GB "
                                       "in fp16). memory: GPU, fastest. offload: CPU RAM. recompute: keeps only "
                                       "the inverted latents (a few MB) and recomputes the features while "
                                       "sampling, in the same batch (the whole run takes about 1.6x longer). "
                                       "auto: memory if it fits easily, else offload, else recompute. All give "
                                       "the same image."),
            ],
            outputs=[Inversion.Output("inversion", display_name="inversion")],
        )

    @classmethod
    def execute(cls, model, conditioning, content, style, steps, blocks, content_map=None, style_map=None,
                storage="auto"):
        latents = {"content": _latent(content, "content"), "style": _latent(style, "style"),
                   "content_map": _latent(content_map, "content_map"),
                   "style_map": _latent(style_map, "style_map")}
        if (latents["content_map"] is None) != (latents["style_map"] is None):
            raise ValueError("content_map / style_map: connect both semantic map latents, or neither (StyleID).")
        streams = tuple(name for name in STREAMS if latents[name] is not None)
        # One batch when every latent has the same size; else content side and style side
        # (content and style may differ in size, each map must match its own image).
        batches = inversion_batches({name: latents[name] for name in streams})
        check_conditioning(conditioning)
        keys = resolve_blocks(model, blocks)
        recorder = model.clone()
        remove_patches(recorder)

        dtype = recorder.model.get_dtype()
        dtype = dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float16
        estimate = sum(_bank_bytes(recorder.model.diffusion_model, keys, len(batch), latents[batch[0]].shape,
                                   steps, dtype) for batch in batches)
        storage, device = choose_storage(storage, recorder, estimate)
        log.info("SCSAInvert: %s storage on %s (features of %d steps: %.2f GB)", storage, device, steps,
                 estimate / 2 ** 30)
        recording = storage != "recompute"
        bank = FeatureBank(streams if recording else (), dtype=dtype, device=device)
        if recording:
            AttentionPatch(recorder.model.diffusion_model).install(recorder, sorted(keys))
        alphas = alphas_cumprod(recorder)
        schedule = inversion_schedule(steps)
        trajectory: dict[int, dict[str, torch.Tensor]] = {}
        for batch in batches:
            def loop(eps_fn, x):
                for t, stacked in ddim_invert(eps_fn, x, schedule, alphas).items():
                    rows = trajectory.setdefault(t, {})
                    rows.update({name: stacked[row:row + 1].detach().to(device) for row, name in enumerate(batch)})
                return x

            run = RecordRun(bank, keys, streams=batch) if recording else None
            run_ddim(recorder, conditioning, torch.cat([latents[name] for name in batch]), loop, run,
                     total_steps=len(schedule))
        return io.NodeOutput(SCSAInversion(bank, trajectory, streams, batches, steps, keys, conditioning,
                                           tuple(latents["content"].shape), tuple(latents["style"].shape), storage))


def _bank_bytes(diffusion_model, keys, streams: int, latent_shape, steps: int, dtype) -> int:
    """Bytes the feature bank will take: each block's tokens x channels, per stream and step.

    A block with ``c = model_channels * 2^k`` channels runs at the latent grid downsampled 2^k.
    """
    total = 0
    for key in keys:
        channels = _channels(diffusion_model, key)
        level = max(0, round(math.log2(channels / diffusion_model.model_channels)))
        tokens = math.ceil(latent_shape[-2] / 2 ** level) * math.ceil(latent_shape[-1] / 2 ** level)
        total += streams * tokens * channels
    return total * steps * torch.finfo(dtype).bits // 8


# ---------------------------------------------------------------------------------- apply
class SCSAApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSAApply", display_name="Apply SCSA", category=CATEGORY,
            description="Patches a copy of the model's self-attention with SCSA (with semantics) or StyleID "
                        "(without). The input model is not changed; with a stock KSampler the patched model "
                        "behaves exactly like the original.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (from Load Checkpoint or LoRA loaders). "
                                                "Use the same base model as SCSAInvert."),
                Semantics.Input("semantics", optional=True,
                                tooltip="From SCSASemanticPair or SCSASemanticFromMasks. Without it: StyleID."),
                io.Combo.Input("preset", options=list(PRESETS), default="default",
                               tooltip="default: the paper's maths with its defects fixed (regions missing "
                                       "from the style use the whole style). official: reproduces the "
                                       "official code exactly, quirks included."),
                io.Float.Input("sca_weight", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="t1: weight of continuous attention (smooth, region-wise style)."),
                io.Float.Input("ssa_weight", default=0.2, min=0.0, max=2.0, step=0.05,
                               tooltip="t2: weight of sparse attention (sharp textures copied from the "
                                       "best-matching style spot of the same region)."),
                io.Float.Input("semantic_share", default=0.3, min=0.0, max=1.0, step=0.05,
                               tooltip="a1: how much the semantic maps' features steer continuous attention."),
                io.Float.Input("content_share", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="a2: share of the content image (vs the current latent) in sparse "
                                       "attention's query. Higher keeps more content structure."),
                io.Float.Input("temperature", default=1.2, min=0.1, max=5.0, step=0.05,
                               tooltip="T: sharpens SCSA's continuous attention (> 1 = stronger style)."),
                io.Float.Input("gamma", default=0.75, min=0.0, max=1.0, step=0.05,
                               tooltip="StyleID mode (no semantics): share of the content query. Higher "
                                       "preserves content."),
                io.Float.Input("styleid_temperature", default=1.5, min=0.1, max=5.0, step=0.05, optional=True,
                               tooltip="StyleID mode: attention temperature (StyleID's default 1.5)."),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model")],
        )

    @classmethod
    def execute(cls, model, preset, sca_weight, ssa_weight, semantic_share, content_share, temperature,
                gamma, semantics=None, styleid_temperature=1.5):
        settings = ApplySettings(
            semantics=semantics,
            params=SCSAParams(preset=preset, sca_weight=sca_weight, ssa_weight=ssa_weight,
                              semantic_share=semantic_share, content_share=content_share,
                              temperature=temperature),
            styleid=StyleIDParams(gamma=gamma, temperature=styleid_temperature))
        patched = model.clone()
        remove_patches(patched)
        keys = attention_blocks(patched.model.diffusion_model)
        if not keys:
            resolve_blocks(patched, "auto")  # raises the unsupported-family error
        # Self-attention itself is replaced by SCSAStyleSampler, on the inverted blocks only.
        AttentionPatch(patched.model.diffusion_model, settings).install(patched, ())
        return io.NodeOutput(patched)


# -------------------------------------------------------------------------------- sampler
def initial_latent(inversion: SCSAInversion, settings: ApplySettings, start_from: int, init: str) -> torch.Tensor:
    """The latent sampling starts from: ``[1, C, H, W]`` in the model's scaled space."""
    content = inversion.latent_at(start_from, "content")
    style = inversion.latent_at(start_from, "style")
    if init == "auto":
        init = "semantic AdaIN" if settings.semantics is not None else "AdaIN"
    if init == "none":
        return content
    batch, channels, height, width = content.shape
    tokens = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  [1, C, H, W] -> [1, HW, C]
    if init == "AdaIN":
        mixed = adain(tokens(content), tokens(style))
    else:
        if settings.semantics is None:
            raise ValueError("init: 'semantic AdaIN' needs semantics on SCSAApply. Connect a semantic pair, "
                             "or choose 'AdaIN' (StyleID).")
        content_labels, style_labels = grid_labels(settings.semantics, settings.params, height, width,
                                                   tuple(style.shape[-2:]))
        mixed = semantic_adain(tokens(content), tokens(style), content_labels.flatten().to(content.device),
                               style_labels.flatten().to(content.device))
    return mixed.transpose(1, 2).reshape(batch, channels, height, width)


class SCSAStyleSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSAStyleSampler", display_name="Style Sampler (SCSA)", category=CATEGORY,
            description="Denoises from the inverted content with the style features injected into the "
                        "blocks SCSAInvert recorded. Decode the result with VAE Decode.",
            inputs=[
                io.Model.Input("model", tooltip="The model from SCSAApply."),
                Inversion.Input("inversion", tooltip="From SCSAInvert, on the same base model."),
                io.Combo.Input("init", options=list(INIT_MODES), default="auto",
                               tooltip="Starting latent: semantic AdaIN (region-wise colour statistics of "
                                       "the style; SCSA's), AdaIN (global; StyleID's), none (the inverted "
                                       "content). auto: semantic AdaIN with semantics, else AdaIN."),
                io.Combo.Input("timesteps", options=list(TIMESTEP_MODES), default="official",
                               tooltip="official: StyleID's schedule (skips the first step, as the papers "
                                       "did). aligned: starts at the first inverted step, one step more."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent")],
        )

    @classmethod
    def execute(cls, model, inversion, init, timesteps):
        patch = find_patch(model)
        if patch is None or patch.settings is None:
            raise ValueError("model: connect the MODEL output of SCSAApply; this model has no SCSA patch.")
        settings = patch.settings
        if settings.semantics is not None and settings.params.semantic_share > 0 and \
                not {"content_map", "style_map"} <= set(inversion.streams):
            raise ValueError("inversion: SCSA with semantic_share > 0 needs the semantic map latents. Connect "
                             "content_map and style_map to SCSAInvert, or set semantic_share to 0.")
        if settings.semantics is not None:
            log_map_sizes(settings.semantics, inversion.latent_shape, inversion.style_shape)
        schedule = sampling_schedule(inversion.steps, timesteps)
        start = initial_latent(inversion, settings, schedule.start_from, init)
        alphas = alphas_cumprod(model)
        model = model.clone()
        patch.install_attention(model, sorted(inversion.blocks))
        device = comfy.model_management.get_torch_device()

        if inversion.storage == "recompute":
            # The content side rides in the sampling batch; a style side of another size is
            # recorded into a one-step bank by its own call just before.
            inline = inversion.batches[0]
            others = inversion.batches[1:]
            step_bank = FeatureBank(tuple(name for side in others for name in side),
                                    dtype=inversion.bank.dtype, device=inversion.bank.device)
            run = InjectRun(step_bank, inversion.blocks, settings, inline_streams=inline)
            recorders = [(side, RecordRun(step_bank, inversion.blocks, streams=side)) for side in others]

            def eps_with_references(eps_fn, x, t):
                step_bank.clear()
                for side, recorder in recorders:
                    eps_fn(inversion.latents_at(t, side).to(x), t, recorder)
                return eps_fn(torch.cat([x, inversion.latents_at(t, inline).to(x)]), t)[:x.shape[0]]
            largest_call = 1 + len(inline)
        else:
            run = InjectRun(inversion.bank, inversion.blocks, settings)

            def eps_with_references(eps_fn, x, t):
                return eps_fn(x, t)
            largest_call = 1

        report = preview_reporter(model, len(schedule.steps))

        def loop(eps_fn, _):
            return ddim_sample(lambda x, t: eps_with_references(eps_fn, x, t), start.to(device), schedule, alphas,
                               on_step=lambda index, t, x, predicted_x0: report(index, predicted_x0))

        # The shape tells ComfyUI how much memory the largest model call needs.
        shape = (largest_call,) + tuple(inversion.latent_shape[1:])
        latent = run_ddim(model, inversion.conditioning, torch.zeros(shape), loop, run,
                          total_steps=len(schedule.steps), scaled_input=False, count_calls=False)
        samples = model.model.process_latent_out(latent.to(torch.float32)).cpu()
        return io.NodeOutput({"samples": samples})


NODES = [SCSALoadSemanticMap, SCSASemanticPair, SCSASemanticFromMasks, SCSAInvert, SCSAApply, SCSAStyleSampler]
