"""Reliability (README, *Troubleshooting*, *Fallbacks*): every bad input gets a clear answer, Cancel
and long sessions leak nothing.

Every case runs through ComfyUI's executor (or its server) on the tiny random SD1.5 checkpoint
(64 px images, 8 x 8 latents, 2 steps) and ends either in a clear error raised by the pack's
own validation (which input, what is wrong, how to fix it) or in a documented fallback whose
output is finite and not constant. Test-only nodes (registered by the ``extra_nodes`` fixture)
supply models that no checkpoint file gives cheaply: a 4-level SD1.5-shaped UNet (attention at
several grids, a middle block for SAG/PAG), a tiny PixArt DiT, a conditioning batch.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import os
import struct
import threading
import time
import warnings
import weakref
import zlib

import numpy as np
import psutil
import pytest
import torch
from PIL import Image, ImageDraw

from scripts import tiny_models
from scripts.comfy_inprocess import PromptError
from scripts.comfy_inprocess import pack_module

SIZE = 64       # pixels: 8 x 8 latents
STEPS = 2
RED, GREEN, BLUE, YELLOW, MAGENTA = (230, 0, 0), (0, 200, 0), (0, 0, 230), (230, 230, 0), (230, 0, 230)


# ------------------------------------------------------------------------------ input files
def _photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random picture (upsampled noise): stands in for a content or style photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def _bands(height: int, width: int, colours, axis: int = 0, cuts=(0.375, 0.6875)) -> np.ndarray:
    """A flat-colour semantic map: ``len(colours)`` bands along ``axis`` (0: rows, 1: columns)."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    size = out.shape[axis]
    edges = [0] + [round(c * size) for c in cuts[:len(colours) - 1]] + [size]
    for colour, start, stop in zip(colours, edges, edges[1:]):
        index = [slice(None), slice(None)]
        index[axis] = slice(start, stop)
        out[tuple(index)] = colour
    return out


def _png16_rgb(path: str, rgb16: np.ndarray) -> None:
    """Write a 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    height, width, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _antialiased_map(size: int) -> np.ndarray:
    """Three regions with anti-aliased curved borders (drawn at 4x, downsampled)."""
    big = Image.new("RGB", (4 * size, 4 * size), RED)
    draw = ImageDraw.Draw(big)
    draw.ellipse((size, size // 2, 3 * size, 3 * size), fill=GREEN)
    draw.polygon([(0, 4 * size), (4 * size, 2 * size), (4 * size, 4 * size)], fill=BLUE)
    return np.asarray(big.resize((size, size), Image.LANCZOS))


@pytest.fixture(scope="module")
def files(comfy):
    """Every input file of this module, written into ComfyUI's input folder; name -> file name."""
    folder = comfy.folder_paths.get_input_directory()
    names = {}

    def save(name, array, **kw):
        Image.fromarray(array).save(os.path.join(folder, name), **kw)
        names[name] = name

    save("rel_content.png", _photo(SIZE, SIZE, 1))
    save("rel_style.png", _photo(SIZE, SIZE, 2))
    save("rel_style_small.png", _photo(40, SIZE, 3))                       # 64 x 40: latent 5 x 8
    content_map = _bands(SIZE, SIZE, (RED, GREEN, BLUE))
    save("rel_map_c.png", content_map)
    save("rel_map_s.png", _bands(SIZE, SIZE, (RED, GREEN, BLUE), axis=1))
    save("rel_map_s_small.png", _bands(40, SIZE, (RED, GREEN, BLUE), axis=1))
    save("rel_map_c_big.png", np.repeat(np.repeat(content_map, 2, 0), 2, 1))  # 128 x 128, same labels
    save("rel_map_c_wide.png", _bands(SIZE, 96, (RED, GREEN, BLUE)))          # 96 x 64: stretched
    save("rel_content128.png", _photo(128, 128, 1))                          # 16 x 16 latents
    save("rel_style128.png", _photo(128, 128, 2))
    save("rel_map_c128.png", _bands(128, 128, (RED, GREEN, BLUE)))
    save("rel_map_s128.png", _bands(128, 128, (RED, GREEN, BLUE), axis=1))
    # blue only in the content, magenta only in the style, yellow: a 1-pixel region in the content
    save("rel_map_s_yellow.png", _bands(SIZE, SIZE, (RED, GREEN, YELLOW, MAGENTA), axis=1, cuts=(0.375, 0.6875, 0.85)))
    speck = content_map.copy()
    speck[5, 5] = YELLOW
    save("rel_map_c_speck.png", speck)
    # formats
    save("rel_one_colour.png", np.full((SIZE, SIZE, 3), GREEN, dtype=np.uint8))
    rng = np.random.default_rng(7)
    dither = np.clip(content_map.astype(int) + rng.integers(-3, 4, content_map.shape), 0, 255).astype(np.uint8)
    save("rel_noisy.png", dither)
    heavy = np.clip(content_map.astype(int) + rng.normal(0, 40, content_map.shape), 0, 255).astype(np.uint8)
    save("rel_heavy_noise.png", heavy)
    save("rel_aa.png", _antialiased_map(128))
    save("rel_aa_q50.jpg", _antialiased_map(128), quality=50)
    rgba = np.dstack([content_map, np.where(np.arange(SIZE)[:, None] < 32, 255, 60) * np.ones((1, SIZE))]).astype(np.uint8)
    save("rel_alpha.png", rgba)
    _png16_rgb(os.path.join(folder, "rel_rgb16.png"), content_map.astype(np.uint16) * 257)
    names["rel_rgb16.png"] = "rel_rgb16.png"
    grey_levels = np.array([0, 30000, 65535], dtype=np.uint16)
    grey16 = grey_levels[np.digitize(np.arange(SIZE), [24, 44])][:, None] * np.ones((1, SIZE), dtype=np.uint16)
    Image.fromarray(grey16.astype(np.uint16)).save(os.path.join(folder, "rel_grey16.png"))
    names["rel_grey16.png"] = "rel_grey16.png"
    save("rel_grey8.png", (grey16 // 257).astype(np.uint8))
    save("rel_photo.png", _photo(SIZE, SIZE, 9))
    across, down = np.meshgrid(np.arange(SIZE) * 4, np.arange(SIZE) * 4)
    save("rel_gradient.png", np.dstack([across, down, np.full((SIZE, SIZE), 90)]).astype(np.uint8))
    # masks (red channel), 64 x 64: overlapping, not covering, empty, 1 pixel
    def mask(setter, size=(SIZE, SIZE)):
        m = np.zeros(size + (3,), dtype=np.uint8)
        setter(m)
        return m
    save("rel_mc0.png", mask(lambda m: m.__setitem__((slice(None), slice(0, 40)), 255)))    # left 40
    save("rel_mc1.png", mask(lambda m: m.__setitem__((slice(None), slice(24, None)), 255)))  # right 40: overlap 16
    save("rel_mc2.png", mask(lambda m: None))                                               # empty
    save("rel_ms0.png", mask(lambda m: m.__setitem__((slice(0, 20), slice(None)), 255)))    # top 20
    save("rel_ms1.png", mask(lambda m: m.__setitem__((slice(44, None), slice(None)), 255)))  # bottom 20: middle uncovered
    save("rel_ms2.png", mask(lambda m: m.__setitem__((30, 30), 255)))                       # one pixel
    # 8 x 8 masks: one pixel is one attention token at the 8 x 8 latent
    def half(rows, hole):
        def setter(m):
            m[rows] = 255
            m[hole] = 0
        return setter
    save("rel_t0.png", mask(half(slice(0, 4), (2, 3)), (8, 8)))       # top half but one token
    save("rel_t1.png", mask(half(slice(4, None), (6, 1)), (8, 8)))     # bottom half but one token
    save("rel_t2.png", mask(lambda m: m.__setitem__((2, 3), 255), (8, 8)))                 # one token
    save("rel_t3.png", mask(lambda m: m.__setitem__((6, 1), 255), (8, 8)))
    return names


# ---------------------------------------------------------------------------- test-only nodes
_MODELS: dict = {}


def _tiny_unet():
    """The 4-level SD1.5-shaped UNet (32 channels): attention at 8x8, 4x4, 2x2, 1x1 and middle."""
    if "unet" not in _MODELS:
        _MODELS["unet"] = tiny_models.build_tiny_sd15_patcher(seed=0)
    return _MODELS["unet"]


def _tiny_dit():
    """A random PixArt-alpha DiT (1 block, width 64): a model family without UNet attention."""
    if "dit" not in _MODELS:
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.supported_models as sm
        config = sm.PixArtAlpha({"image_model": "pixart_alpha", "hidden_size": 64, "depth": 1, "num_heads": 2,
                                 "patch_size": 2, "in_channels": 4, "input_size": 8, "caption_channels": 768,
                                 "pe_interpolation": 1.0, "micro_condition": False, "model_max_length": 77})
        config.set_inference_dtype(torch.float32, None)
        model = config.get_model({})
        tiny_models.init_weights_(model.diffusion_model, 0)
        _MODELS["dit"] = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                          offload_device=mm.unet_offload_device())
    return _MODELS["dit"]


class _TestTinyUNet:
    CATEGORY, FUNCTION, RETURN_TYPES = "testing", "load", ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (_tiny_unet(),)


class _TestTinyDiT(_TestTinyUNet):
    def load(self):
        return (_tiny_dit(),)


class _TestConditioningBatch:
    CATEGORY, FUNCTION, RETURN_TYPES = "testing", "repeat", ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "amount": ("INT", {"default": 2, "min": 1})}}

    def repeat(self, conditioning, amount):
        return ([[c.repeat(amount, 1, 1), dict(extra)] for c, extra in conditioning],)


_EXTRA_NODES = {"SCSATestTinyUNet": _TestTinyUNet, "SCSATestTinyDiT": _TestTinyDiT,
                "SCSATestConditioningBatch": _TestConditioningBatch}


@pytest.fixture(scope="module")
def extra_nodes(comfy):
    for name, cls in _EXTRA_NODES.items():
        comfy.nodes.NODE_CLASS_MAPPINGS[name] = cls
    yield
    for name in _EXTRA_NODES:
        comfy.nodes.NODE_CLASS_MAPPINGS.pop(name, None)
    comfy.reset_cache()
    _MODELS.clear()
    gc.collect()


# ------------------------------------------------------------------------------------ prompts
def _encode(node):
    return {"class_type": "VAEEncode", "inputs": {"pixels": [node, 0], "vae": ["ckpt", 2]}}


def _mask_batch(prompt: dict, prefix: str, names: list[str]) -> list:
    """LoadImage per file -> ImageBatch chain -> ImageToMask(red): a MASK batch, in order."""
    link = None
    for index, name in enumerate(names):
        prompt[f"{prefix}{index}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        if link is None:
            link = [f"{prefix}{index}", 0]
        else:
            prompt[f"{prefix}b{index}"] = {"class_type": "ImageBatch",
                                           "inputs": {"image1": link, "image2": [f"{prefix}{index}", 0]}}
            link = [f"{prefix}b{index}", 0]
    prompt[f"{prefix}mask"] = {"class_type": "ImageToMask", "inputs": {"image": link, "channel": "red"}}
    return [f"{prefix}mask", 0]


def scsa_prompt(checkpoint: str, *, semantics: str | None = "maps", content="rel_content.png",
                style="rel_style.png", content_map="rel_map_c.png", style_map="rel_map_s.png",
                pair_maps: tuple | None = None, masks: tuple | None = None, steps: int = STEPS,
                model=("ckpt", 0), apply: dict | None = None, sample: dict | None = None) -> dict:
    """SCSA graph (API format). ``semantics``: "maps" (colour maps, also VAE-encoded for the
    inversion), "masks" (``masks = (content files, style files)`` -> SCSASemanticFromMasks; no
    map latents, so semantic_share 0) or None (StyleID). ``pair_maps`` overrides the map files
    SCSASemanticPair reads (the inversion still encodes ``content_map``/``style_map``)."""
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "content": {"class_type": "LoadImage", "inputs": {"image": content}},
        "style": {"class_type": "LoadImage", "inputs": {"image": style}},
        "z_content": _encode("content"), "z_style": _encode("style"),
        "invert": {"class_type": "SCSAInvert", "inputs": {
            "model": list(model), "conditioning": ["empty", 0], "content": ["z_content", 0],
            "style": ["z_style", 0], "steps": steps, "blocks": "auto"}},
        "apply": {"class_type": "SCSAApply", "inputs": {
            "model": list(model), "preset": "default", "sca_weight": 0.8, "ssa_weight": 0.2,
            "semantic_share": 0.3, "content_share": 0.5, "temperature": 1.2, "gamma": 0.75}},
        "sample": {"class_type": "SCSAStyleSampler", "inputs": {
            "model": ["apply", 0], "inversion": ["invert", 0], "init": "auto", "timesteps": "official"}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
    }
    if semantics == "maps":
        prompt["content_map"] = {"class_type": "SCSALoadSemanticMap", "inputs": {"image": content_map}}
        prompt["style_map"] = {"class_type": "SCSALoadSemanticMap", "inputs": {"image": style_map}}
        prompt["z_content_map"], prompt["z_style_map"] = _encode("content_map"), _encode("style_map")
        pair = ["content_map", 0], ["style_map", 0]
        if pair_maps is not None:
            prompt["pair_content_map"] = {"class_type": "SCSALoadSemanticMap", "inputs": {"image": pair_maps[0]}}
            prompt["pair_style_map"] = {"class_type": "SCSALoadSemanticMap", "inputs": {"image": pair_maps[1]}}
            pair = ["pair_content_map", 0], ["pair_style_map", 0]
        prompt["pair"] = {"class_type": "SCSASemanticPair",
                          "inputs": {"content_map": pair[0], "style_map": pair[1]}}
        prompt["invert"]["inputs"].update(content_map=["z_content_map", 0], style_map=["z_style_map", 0])
        prompt["apply"]["inputs"]["semantics"] = ["pair", 0]
    elif semantics == "masks":
        prompt["pair"] = {"class_type": "SCSASemanticFromMasks", "inputs": {
            "content_masks": _mask_batch(prompt, "mc", list(masks[0])),
            "style_masks": _mask_batch(prompt, "ms", list(masks[1])), "threshold": 0.5}}
        prompt["apply"]["inputs"].update(semantics=["pair", 0], semantic_share=0.0)
    prompt["apply"]["inputs"].update(apply or {})
    prompt["sample"]["inputs"].update(sample or {})
    return prompt


def _samples(result, node="sample") -> torch.Tensor:
    return result[node][0]["samples"]


def assert_sane(result, node="sample", decode="decode"):
    """Finite, not constant, not black: the latent and (if decoded) the image."""
    latent = _samples(result, node)
    assert torch.isfinite(latent).all(), "NaN/inf in the sampled latent"
    assert latent.std() > 1e-4, f"the sampled latent is constant (std {latent.std():.2e})"
    if decode in result:
        image = result[decode][0]
        assert torch.isfinite(image).all() and image.std() > 1e-3 and image.max() > 0.02, \
            f"decoded image is constant or black (std {image.std():.2e}, max {image.max():.3f})"
    return latent


def without_injection(result, model_node="apply") -> torch.Tensor:
    """The same sampler run on the same model and inversion with no block injected."""
    pipeline = pack_module("nodes/pipeline.py")
    model, inversion = result[model_node][0], result["invert"][0]
    with torch.inference_mode():
        return pipeline.style_sample(model, dataclasses.replace(inversion, blocks=frozenset()), "auto", "official")


def assert_injects(result, model_node="apply"):
    scsa = _samples(result)
    plain = without_injection(result, model_node)
    difference = ((plain - scsa).norm() / scsa.norm()).item()
    assert difference > 1e-3, f"injection changed the latent by only {difference:.2e}"


def run(comfy, prompt, outputs=("decode",)):
    return comfy.run_prompt(prompt, outputs=list(outputs))


# ================================================================ semantic maps vs image sizes
def test_semantic_map_of_another_size_is_resampled_and_logged(comfy, tiny_checkpoint, files, caplog):
    native = run(comfy, scsa_prompt(tiny_checkpoint.name))
    caplog.set_level(logging.INFO, logger="scsa")
    caplog.clear()
    # The pair reads the map at 2x (nearest): the same regions, so the same labels at every grid.
    big = run(comfy, scsa_prompt(tiny_checkpoint.name, pair_maps=("rel_map_c_big.png", "rel_map_s.png")))
    assert torch.equal(_samples(big), _samples(native)), "a 2x map gave other labels than the native map"
    assert any("content semantic map is 128x128 px" in r.getMessage() and "resampled" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    # Another aspect ratio: stretched to the image; runs, sane, and says so.
    caplog.clear()
    wide = run(comfy, scsa_prompt(tiny_checkpoint.name, pair_maps=("rel_map_c_wide.png", "rel_map_s.png")))
    assert_sane(wide)
    assert any("STRETCHED" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("model", ["checkpoint", "4-level"])
def test_content_and_style_of_different_sizes(comfy, tiny_checkpoint, files, extra_nodes, model):
    """Style 64 x 40 px (latent 5 x 8) for a 64 x 64 content: inverted in two batches, the style
    labels resampled to the style's own grids (4-level UNet: 5x8 and 3x4 vs 8x8 and 4x4)."""
    node = {"checkpoint": ("ckpt", 0), "4-level": ("unet", 0)}[model]
    prompt = scsa_prompt(tiny_checkpoint.name, style="rel_style_small.png", style_map="rel_map_s_small.png",
                         model=node)
    prompt["unet"] = {"class_type": "SCSATestTinyUNet", "inputs": {}}
    result = run(comfy, prompt)
    latent = assert_sane(result)
    assert latent.shape == (1, 4, SIZE // 8, SIZE // 8)
    inversion = result["invert"][0]
    assert inversion.style_shape[-2:] == (5, 8) and inversion.latent_shape[-2:] == (8, 8)
    grids = {(key, inversion.bank.grid(key, "style"), inversion.bank.grid(key, "content"))
             for key in inversion.bank.blocks}
    expected = {(8, 8): (5, 8), (4, 4): (3, 4)}
    assert all(expected[content] == style for _, style, content in grids), grids
    assert_injects(result)
    # StyleID (no semantics) and the official preset handle it too.
    styleid = scsa_prompt(tiny_checkpoint.name, semantics=None, style="rel_style_small.png", model=node)
    styleid["unet"] = prompt["unet"]
    assert_sane(run(comfy, styleid))
    official = scsa_prompt(tiny_checkpoint.name, style="rel_style_small.png", style_map="rel_map_s_small.png",
                           model=node, apply={"preset": "official"})
    official["unet"] = prompt["unet"]
    assert_sane(run(comfy, official))


def test_map_latent_of_another_size_than_its_image_is_refused(comfy, tiny_checkpoint, files):
    prompt = scsa_prompt(tiny_checkpoint.name, style="rel_style_small.png")  # style map stays 64 x 64
    with pytest.raises(PromptError, match=r"style_map: latent is \(8, 8\) but style is \(5, 8\).*resize the map"):
        run(comfy, prompt)
    prompt = scsa_prompt(tiny_checkpoint.name, content_map="rel_map_s_small.png")
    with pytest.raises(PromptError, match=r"content_map: latent is \(5, 8\) but content is \(8, 8\)"):
        run(comfy, prompt)


# ===================================================================== semantic map files
def _pair(comfy, content_map, style_map="rel_map_s.png"):
    prompt = {"cm": {"class_type": "SCSALoadSemanticMap", "inputs": {"image": content_map}},
              "sm": {"class_type": "SCSALoadSemanticMap", "inputs": {"image": style_map}},
              "pair": {"class_type": "SCSASemanticPair", "inputs": {"content_map": ["cm", 0], "style_map": ["sm", 0]}}}
    return comfy.run_prompt(prompt, outputs=["pair"])["pair"][0]


def _agreement(labels: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of pixels whose label is the one its reference region mostly got (a partition match)."""
    agree = 0
    for region in torch.unique(reference):
        got = labels[reference == region]
        agree += int((got == torch.mode(got).values).sum())
    return agree / reference.numel()


@pytest.mark.parametrize("name, labels, min_agreement", [
    ("rel_map_c.png", 3, 1.0),
    ("rel_alpha.png", 3, 1.0),        # alpha is ignored: the regions are the colours
    ("rel_rgb16.png", 3, 1.0),        # 16-bit RGB: high byte
    ("rel_grey16.png", 3, 1.0),       # 16-bit greyscale (I;16)
    ("rel_grey8.png", 3, 1.0),        # 8-bit greyscale
    ("rel_noisy.png", 3, 1.0),        # hundreds of colours (+-3 dither)
    ("rel_aa_q50.jpg", 3, 0.97),      # anti-aliased edges saved as JPEG quality 50
    ("rel_one_colour.png", 1, 1.0),
])
def test_map_formats(comfy, files, name, labels, min_agreement):
    path = os.path.join(comfy.folder_paths.get_input_directory(), name)
    colours = len(np.unique(np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3), axis=0))
    semantics = _pair(comfy, name, name)
    assert semantics.num_labels == labels, f"{name}: {semantics.num_labels} labels from {colours} colours"
    assert semantics.content.shape == Image.open(path).size[::-1]
    assert int(semantics.content.min()) >= 0
    reference = {"rel_aa_q50.jpg": "rel_aa.png", "rel_one_colour.png": "rel_one_colour.png"}.get(name, "rel_map_c.png")
    expected = _pair(comfy, reference, reference).content
    assert _agreement(semantics.content, expected) >= min_agreement
    if name in ("rel_noisy.png", "rel_aa_q50.jpg"):
        assert colours >= 100, f"{name} has only {colours} colours"


def test_one_colour_and_lossy_maps_run_end_to_end(comfy, tiny_checkpoint, files):
    one = run(comfy, scsa_prompt(tiny_checkpoint.name, content_map="rel_one_colour.png",
                                 style_map="rel_one_colour.png"))
    assert_sane(one)
    assert_injects(one)
    jpeg = run(comfy, scsa_prompt(tiny_checkpoint.name, content_map="rel_noisy.png"))
    assert_sane(jpeg)


@pytest.mark.parametrize("name, message", [
    ("rel_photo.png", r'semantic map "rel_photo.png": this does not look like a semantic colour map: '
                      r"(found at least \d+ significant colours|in this map only \d+% of the pixels have one of the \d+ main colours)"),
    ("rel_gradient.png", r'"rel_gradient.png": this does not look like a semantic colour map: .*\d+'),
    ("rel_heavy_noise.png", r'"rel_heavy_noise.png": this does not look like a semantic colour map: .*\d+'),
])
def test_a_photo_as_map_is_refused_with_the_count(comfy, files, name, message):
    with pytest.raises(PromptError, match=message) as error:
        _pair(comfy, "rel_map_c.png", name)
    assert error.value.details["node_id"] == "sm"
    assert error.value.details["exception_type"].endswith("ValueError")


def test_a_photo_on_the_pair_names_the_input(comfy, files):
    """A photo connected straight to SCSASemanticPair (e.g. the image instead of its map)."""
    prompt = {"photo": {"class_type": "LoadImage", "inputs": {"image": "rel_photo.png"}},
              "cm": {"class_type": "SCSALoadSemanticMap", "inputs": {"image": "rel_map_c.png"}},
              "pair": {"class_type": "SCSASemanticPair", "inputs": {"content_map": ["cm", 0], "style_map": ["photo", 0]}}}
    with pytest.raises(PromptError, match=r"ValueError: style_map: this does not look like a semantic colour map: "
                                          r"found at least \d+ significant colours"):
        comfy.run_prompt(prompt, outputs=["pair"])
    prompt["pair"]["inputs"]["content_map"] = ["photo", 0]
    with pytest.raises(PromptError, match=r"ValueError: content_map and style_map: this does not look like"):
        comfy.run_prompt(prompt, outputs=["pair"])


# ======================================================================= labels and masks
@pytest.mark.parametrize("preset", ["default", "official"])
def test_labels_only_in_one_map_and_one_pixel_regions(comfy, tiny_checkpoint, files, preset):
    semantics = _pair(comfy, "rel_map_c_speck.png", "rel_map_s_yellow.png")
    colour = {tuple(c): label for label, c in enumerate(semantics.palette.tolist())}
    assert semantics.num_labels == 5
    in_content, in_style = (set(side.unique().tolist()) for side in (semantics.content, semantics.style))
    assert in_content - in_style == {colour[BLUE]} and in_style - in_content == {colour[MAGENTA]}
    # the yellow speck is one pixel of a region the style has: a 1-pixel region, not noise
    assert int((semantics.content == colour[YELLOW]).sum()) == 1 and semantics.matched[colour[YELLOW]]
    result = run(comfy, scsa_prompt(tiny_checkpoint.name, content_map="rel_map_c_speck.png",
                                    style_map="rel_map_s_yellow.png", apply={"preset": preset}))
    assert_sane(result)
    assert_injects(result)


def test_masks_overlapping_uncovering_empty_and_one_pixel(comfy, tiny_checkpoint, files):
    prompt = scsa_prompt(tiny_checkpoint.name, semantics="masks",
                         masks=(["rel_mc0.png", "rel_mc1.png", "rel_mc2.png"],
                                ["rel_ms0.png", "rel_ms1.png", "rel_ms2.png"]))
    result = run(comfy, prompt)
    semantics = result["pair"][0]
    assert semantics.matched.tolist() == [True, True, False]      # mask 2: empty vs one pixel
    assert int((semantics.style == -1).sum()) > 0                 # the style's middle is uncovered
    assert_sane(result)
    assert_injects(result)
    # 8 x 8 masks: single-token regions at the attention grid, on both sides
    tokens = scsa_prompt(tiny_checkpoint.name, semantics="masks",
                         masks=(["rel_t0.png", "rel_t1.png", "rel_t2.png", "rel_t3.png"],
                                ["rel_t1.png", "rel_t0.png", "rel_t3.png", "rel_t2.png"]),
                         sample={"init": "semantic AdaIN"})
    result = run(comfy, tokens)
    assert result["pair"][0].matched.all()
    assert_sane(result)


# ================================================================================ batches
def test_batched_latents_are_refused(comfy, tiny_checkpoint, files):
    for name in ("content", "style", "content_map"):
        prompt = scsa_prompt(tiny_checkpoint.name)
        prompt["batch"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": [f"z_{name}", 0], "amount": 2}}
        prompt["invert"]["inputs"][name] = ["batch", 0]
        with pytest.raises(PromptError, match=rf"{name}: has a batch of 2 images; SCSAInvert takes one image"):
            run(comfy, prompt, outputs=["invert"])


def test_conditioning_batch_is_refused_and_combined_conditioning_works(comfy, tiny_checkpoint, files, extra_nodes):
    prompt = scsa_prompt(tiny_checkpoint.name)
    prompt["cond2"] = {"class_type": "SCSATestConditioningBatch", "inputs": {"conditioning": ["empty", 0], "amount": 2}}
    prompt["invert"]["inputs"]["conditioning"] = ["cond2", 0]
    with pytest.raises(PromptError, match="conditioning: has a batch of 2 prompts.*single CLIP Text Encode"):
        run(comfy, prompt, outputs=["invert"])
    # Two conditionings combined (a list of two, each a batch of one) is ordinary ComfyUI input.
    prompt = scsa_prompt(tiny_checkpoint.name)
    prompt["combined"] = {"class_type": "ConditioningCombine",
                          "inputs": {"conditioning_1": ["empty", 0], "conditioning_2": ["empty", 0]}}
    prompt["invert"]["inputs"]["conditioning"] = ["combined", 0]
    assert_sane(run(comfy, prompt))


# ========================================================================== model families
def test_dit_model_is_refused_through_the_executor(comfy, tiny_checkpoint, files, extra_nodes):
    prompt = scsa_prompt(tiny_checkpoint.name, model=("dit", 0))
    prompt["dit"] = {"class_type": "SCSATestTinyDiT", "inputs": {}}
    for node in ("apply", "invert"):
        with pytest.raises(PromptError, match=r"SCSA cannot patch PixArtAlpha models\. It supports: "
                                              r"UNet \(SD1\.x, SD2\.x, SDXL\), Flux"):
            run(comfy, prompt, outputs=[node])


# ====================================================================== other nodes after SCSA
@pytest.fixture(scope="module")
def tiny_lora(comfy, tiny_checkpoint, tmp_path_factory):
    """A rank-4 LoRA on every self-attention projection of the tiny checkpoint's UNet."""
    from safetensors.torch import load_file, save_file
    weights = load_file(str(tiny_checkpoint))
    shapes = {k: v.shape for k, v in weights.items() if ".attn1.to_" in k and k.endswith(".weight")}
    del weights
    assert shapes, "the tiny checkpoint has no attn1 projections"
    g = torch.Generator().manual_seed(0)
    lora = {}
    for key, shape in sorted(shapes.items()):
        base = key[len("model."):-len(".weight")]       # diffusion_model.<...>.attn1.to_q
        lora[f"{base}.lora_up.weight"] = torch.randn(shape[0], 4, generator=g) * 0.1
        lora[f"{base}.lora_down.weight"] = torch.randn(4, shape[1], generator=g) * 0.1
        lora[f"{base}.alpha"] = torch.tensor(4.0)
    folder = tmp_path_factory.mktemp("loras")
    save_file(lora, str(folder / "scsa_test_lora.safetensors"))
    comfy.folder_paths.add_model_folder_path("loras", str(folder))
    return "scsa_test_lora.safetensors"


def test_lora_after_scsa_apply(comfy, tiny_checkpoint, files, tiny_lora):
    prompt = scsa_prompt(tiny_checkpoint.name)
    plain = run(comfy, prompt)
    prompt["lora"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": ["apply", 0], "lora_name": tiny_lora, "strength_model": 1.0}}
    prompt["sample"]["inputs"]["model"] = ["lora", 0]
    result = run(comfy, prompt)
    assert_sane(result)
    assert not torch.allclose(_samples(result), _samples(plain)), "the LoRA changed nothing"
    assert_injects(result, model_node="lora")


@pytest.mark.parametrize("node, inputs", [
    ("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}),
    ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
    ("PerturbedAttentionGuidance", {"scale": 3.0}),
])
@pytest.mark.parametrize("order", ["after", "before"])
def test_other_attention_patches(comfy, tiny_checkpoint, files, extra_nodes, node, inputs, order):
    """On the 4-level UNet (FreeU scales its 64/128-channel levels, SAG and PAG patch the middle
    block): the other node after SCSAApply, or before it. 128 px (16 x 16 latents): FreeU
    divides by the spread of a feature map, which is 0 on the 1 x 1 grid of an 8 x 8 latent."""
    prompt = scsa_prompt(tiny_checkpoint.name, model=("unet", 0), content="rel_content128.png",
                         style="rel_style128.png", content_map="rel_map_c128.png", style_map="rel_map_s128.png")
    prompt["unet"] = {"class_type": "SCSATestTinyUNet", "inputs": {}}
    plain = run(comfy, prompt)
    if order == "after":
        prompt["other"] = {"class_type": node, "inputs": dict(inputs, model=["apply", 0])}
        prompt["sample"]["inputs"]["model"] = ["other", 0]
        final = "other"
    else:
        prompt["other"] = {"class_type": node, "inputs": dict(inputs, model=["unet", 0])}
        prompt["apply"]["inputs"]["model"] = ["other", 0]
        final = "apply"
    result = run(comfy, prompt)
    assert_sane(result)
    assert not torch.allclose(_samples(result), _samples(plain)), f"{node} changed nothing"
    assert_injects(result, model_node=final)


# ================================================================================== Cancel
def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in this process (CPU)."""
    gc.collect()
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance() on torch.distributed's deprecated reduce_op warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        try:
            storage = obj.untyped_storage()
        except (RuntimeError, NotImplementedError):
            continue
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


@pytest.fixture
def tracked(comfy, monkeypatch):
    """Weak references to every RecordRun, InjectRun and FeatureBank created from now on."""
    refs = []
    for module, name in (("nodes/injection.py", "RecordRun"), ("nodes/injection.py", "InjectRun"),
                         ("scsa_core/features.py", "FeatureBank")):
        cls = getattr(pack_module(module), name)
        original = cls.__init__

        def init(self, *args, _original=original, **kwargs):
            _original(self, *args, **kwargs)
            refs.append(weakref.ref(self))
        monkeypatch.setattr(cls, "__init__", init)
    return refs


@pytest.fixture
def interrupter(comfy, monkeypatch):
    """``arm(node, after, thread=False)``: Cancel once ``node`` has made ``after`` progress
    steps, from the progress hook, or (thread=True) from another thread, as the server's
    /interrupt does, while the node waits for it."""
    import comfy.model_management as mm
    import comfy.utils
    from comfy_execution.utils import get_executing_context
    state = {"node": None, "after": 0, "steps": 0, "fired": False, "thread": None}

    def cancel_from_thread(done):
        mm.interrupt_current_processing(True)
        done.set()

    def hook(value, total, preview, node_id=None):
        context = get_executing_context()
        if state["fired"] or context is None or context.node_id != state["node"]:
            return
        state["steps"] += 1
        if state["steps"] == state["after"]:
            state["fired"] = True
            if state["thread"]:
                done = threading.Event()
                threading.Thread(target=cancel_from_thread, args=(done,)).start()
                assert done.wait(30), "the cancelling thread did not run"
            else:
                mm.interrupt_current_processing(True)

    def arm(node, after, thread=False):
        state.update(node=node, after=after, steps=0, fired=False, thread=thread)
        return state
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    yield arm
    state["node"] = None
    mm.interrupt_current_processing(False)


def _assert_interrupted(comfy, prompt, node):
    with pytest.raises(PromptError):
        run(comfy, prompt)
    events = [(event, data) for event, data in comfy.last_result.messages
              if event in ("execution_interrupted", "execution_error")]
    assert events and events[0][0] == "execution_interrupted", events
    assert events[0][1]["node_id"] == node


@pytest.mark.parametrize("stage, node, thread", [("inversion", "invert", False), ("sampling", "sample", True)])
def test_cancel_leaks_nothing_and_the_next_prompt_is_unchanged(comfy, tiny_checkpoint, files, tracked,
                                                               interrupter, stage, node, thread):
    import comfy.model_management as mm
    steps = 6
    prompt = scsa_prompt(tiny_checkpoint.name, steps=steps)
    reference = _samples(run(comfy, prompt)).clone()
    cancelled = scsa_prompt(tiny_checkpoint.name, steps=steps + (stage == "inversion"),
                            sample={"timesteps": "aligned"} if stage == "sampling" else None)
    # Everything the cancelled prompt computes before the cancelled node, so that the
    # measurement compares like with like (same cached nodes before and after).
    before_node = [n for n in cancelled if n not in ("invert", "sample", "decode")] + (["invert"] * (stage == "sampling"))
    run(comfy, cancelled, outputs=before_node)
    _trim()
    tensors_before, rss_before = _tensor_bytes(), psutil.Process().memory_info().rss
    del tracked[:]

    style_cache = pack_module("nodes/style_reuse.py").STYLE_CACHE
    cached_before = len(style_cache)
    # At the node's first progress report: the one report every version sends (0.33 throttles
    # the later ones, so a count of reports would not say how far the node got).
    state = interrupter(node, after=1, thread=thread)
    _assert_interrupted(comfy, cancelled, node)
    assert state["fired"] and not mm.processing_interrupted()
    _trim()
    tensors_after, rss_after = _tensor_bytes(), psutil.Process().memory_info().rss
    created = [ref for ref in tracked]
    alive = [type(ref()).__name__ for ref in created if ref() is not None]
    print(f"\n[cancel during {stage}] tensors {tensors_before / 2**20:.2f} -> {tensors_after / 2**20:.2f} MiB, "
          f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB, SCSA objects created {len(created)}, "
          f"alive {alive}")
    assert created, "the cancelled prompt created no SCSA run object: it was not cancelled inside our node"
    assert not alive, f"still referenced after Cancel: {alive}"
    assert tensors_after <= tensors_before + 64 * 1024, \
        f"tensors grew by {(tensors_after - tensors_before) / 1024:.0f} KiB after Cancel"
    assert rss_after <= rss_before + 64 * 2**20, f"RSS grew by {(rss_after - rss_before) / 2**20:.0f} MiB"

    assert len(style_cache) == cached_before, "the cancelled inversion left a style in the cache"

    state["node"] = None
    # The reference's style is cached (a feature): reusing it inverts the content in a smaller
    # batch, with other float rounding. Without it, the rerun must be the reference bit for bit.
    style_cache.clear()
    again = _samples(run(comfy, prompt))
    assert torch.equal(again, reference), "the first prompt after Cancel gave another result"


# ============================================================================ long sessions
def _server_files(folder) -> None:
    Image.fromarray(_photo(SIZE, SIZE, 1)).save(os.path.join(folder, "rel_content.png"))
    Image.fromarray(_photo(SIZE, SIZE, 2)).save(os.path.join(folder, "rel_style.png"))
    Image.fromarray(_bands(SIZE, SIZE, (RED, GREEN, BLUE))).save(os.path.join(folder, "rel_map_c.png"))
    Image.fromarray(_bands(SIZE, SIZE, (RED, GREEN, BLUE), axis=1)).save(os.path.join(folder, "rel_map_s.png"))


def _server_prompt(checkpoint: str, config: int, steps: int = STEPS) -> dict:
    """Five settings that share the checkpoint but re-run inversion and/or sampling."""
    settings = [dict(),
                dict(apply={"preset": "official"}),
                dict(apply={"sca_weight": 0.5, "ssa_weight": 0.5}, sample={"init": "AdaIN", "timesteps": "aligned"}),
                dict(semantics=None, apply={"gamma": 0.5}),
                dict(steps=steps + 1, apply={"semantic_share": 0.0, "temperature": 2.0})][config]
    prompt = scsa_prompt(checkpoint, **dict({"steps": steps}, **settings))
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0],
                                                            "filename_prefix": f"rel_{config}"}}
    return prompt


def _saved_pixels(server, outputs) -> np.ndarray:
    image = outputs["save"]["images"][0]
    path = server.output_dir / image["subfolder"] / image["filename"]
    return np.asarray(Image.open(path))


def test_fifty_prompts_through_the_server(comfy_server, tiny_checkpoint):
    _server_files(comfy_server.input_dir)
    process = psutil.Process(comfy_server.proc.pid)
    rss, images, started = [], {}, time.monotonic()
    for index in range(50):
        config = index % 5
        outputs = comfy_server.run_prompt(_server_prompt(tiny_checkpoint.name, config), timeout=120)
        pixels = _saved_pixels(comfy_server, outputs)
        assert pixels.std() > 0, f"prompt {index}: constant image"
        if config in images:
            assert np.array_equal(pixels, images[config]), f"prompt {index} (settings {config}) changed its image"
        else:
            images[config] = pixels
        rss.append(process.memory_info().rss)
        assert comfy_server.proc.poll() is None, "the server died"
    elapsed = time.monotonic() - started
    mib = [r / 2**20 for r in rss]
    baseline = float(np.median(mib[5:10]))            # after warm-up (the first five settings twice)
    late = mib[10:]
    print(f"\n[50 prompts] {elapsed:.0f} s; RSS MiB first {mib[0]:.0f}, baseline {baseline:.0f}, "
          f"after warm-up min {min(late):.0f} max {max(late):.0f}, last {mib[-1]:.0f}; "
          f"per 5: {[round(float(np.mean(mib[i:i + 5]))) for i in range(0, 50, 5)]}")
    assert max(late) <= baseline * 1.05 and min(late) >= baseline * 0.95, \
        f"server RSS not flat: baseline {baseline:.0f} MiB, range {min(late):.0f}-{max(late):.0f} MiB"
    assert len(images) == 5


def test_cancel_through_the_server(comfy_server, tiny_checkpoint):
    """POST /interrupt as soon as SCSAInvert reports its first inversion step on the websocket
    (its progress bar): the prompt ends interrupted in SCSAInvert, the server lives on, and the
    next prompt gives the same image as before. No sleep: the Cancel waits for the node's own
    report, so it lands inside SCSAInvert however loaded the machine is (200 inversion steps
    leave it far from its end)."""
    _server_files(comfy_server.input_dir)
    reference = _saved_pixels(comfy_server, comfy_server.run_prompt(_server_prompt(tiny_checkpoint.name, 0)))
    long_prompt = _server_prompt(tiny_checkpoint.name, 0, steps=200)
    invert = next(node for node, spec in long_prompt.items() if spec["class_type"] == "SCSAInvert")
    cancels = []

    def on_message(kind, data):
        if kind == "progress" and str(data.get("node")) == invert and not cancels:
            cancels.append(comfy_server.post_json("/interrupt", {})[0])

    entry = comfy_server.run(long_prompt, on_message=on_message)
    assert cancels, f"no progress message of SCSAInvert (node {invert!r}) came over the websocket"
    assert cancels == [200]
    assert entry["status"]["status_str"] == "error"
    interrupted = [data for kind, data in entry["status"]["messages"] if kind == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_type"] == "SCSAInvert", "the Cancel did not land in SCSAInvert"
    assert comfy_server.proc.poll() is None
    again = _saved_pixels(comfy_server, comfy_server.run_prompt(_server_prompt(tiny_checkpoint.name, 0)))
    assert np.array_equal(again, reference)
