"""The graph and inputs of the format-1 style file that tests/test_style_files.py builds and
checks (a library of saved styles must survive upgrades: README, *Style files*).

The tiny random checkpoint of scripts/tiny_models.py (``sd15_tiny_v1_s0``: one 320-channel
UNet level, TAESD, CLIP-L), the empty prompt, the example style image and its colour map scaled to
32 x 32 px (4 x 4 latents), 4 DDIM steps, blocks "auto" and 'recompute' storage, so a saved style
holds latents only. The run is an ordinary prompt in an in-process ComfyUI: Load Checkpoint, CLIP
Text Encode, the images VAE-encoded, SCSAInvert, SCSAApply, SCSAStyleSampler.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CHECKPOINT = "sd15_tiny_v1_s0.safetensors"   # tiny_models.tiny_checkpoint_name() when format 1 was made
SIZE = 32
STEPS = 4
STORAGE = "recompute"
# Input-folder names of the example images at SIZE px, by role.
IMAGES = {"content": "fixture_content.png", "content_map": "fixture_content_map.png",
          "style": "fixture_style.png", "style_map": "fixture_style_map.png"}


def write_images(input_dir: str | Path) -> dict[str, str]:
    """The example content, style and their colour maps at SIZE x SIZE px in ``input_dir``."""
    from PIL import Image

    from scripts import make_example_inputs as examples
    for role, name in IMAGES.items():
        image, is_map = role.replace("_map", ""), role.endswith("_map")
        picture = Image.open(examples.OUT_DIR / examples.file_name(image, is_map)).convert("RGB")
        picture.resize((SIZE, SIZE), Image.NEAREST if is_map else Image.BICUBIC).save(Path(input_dir) / name)
    return dict(IMAGES)


def style_prompt(checkpoint: str, images: dict[str, str]) -> dict:
    """The SCSA graph at the fixture's settings; the style comes from ``images["style"]`` and
    ``images["style_map"]`` (VAE-encoded). Node ids: "invert", "pair", "sample", "z_style",
    "z_style_map", "style_map" (the style's colour map IMAGE)."""
    def encode(node):
        return {"class_type": "VAEEncode", "inputs": {"pixels": [node, 0], "vae": ["ckpt", 2]}}
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "pair": {"class_type": "SCSASemanticPair", "inputs": {
            "content_map": ["content_map", 0], "style_map": ["style_map", 0]}},
        "invert": {"class_type": "SCSAInvert", "inputs": {
            "model": ["ckpt", 0], "conditioning": ["empty", 0], "content": ["z_content", 0],
            "style": ["z_style", 0], "content_map": ["z_content_map", 0], "style_map": ["z_style_map", 0],
            "steps": STEPS, "blocks": "auto", "storage": STORAGE}},
        "apply": {"class_type": "SCSAApply", "inputs": {
            "model": ["ckpt", 0], "semantics": ["pair", 0], "preset": "default", "sca_weight": 0.8,
            "ssa_weight": 0.2, "semantic_share": 0.3, "content_share": 0.5, "temperature": 1.2, "gamma": 0.75}},
        "sample": {"class_type": "SCSAStyleSampler", "inputs": {
            "model": ["apply", 0], "inversion": ["invert", 0], "init": "auto", "timesteps": "official"}},
    }
    for role in ("content", "style"):
        prompt[role] = {"class_type": "LoadImage", "inputs": {"image": images[role]}}
        prompt[f"{role}_map"] = {"class_type": "SCSALoadSemanticMap", "inputs": {"image": images[f"{role}_map"]}}
        prompt[f"z_{role}"], prompt[f"z_{role}_map"] = encode(role), encode(f"{role}_map")
    return prompt


