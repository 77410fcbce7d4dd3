#!/usr/bin/env python
"""Write tests/fixtures/style_v1_tiny.safetensors: a saved style inversion exactly as 'Save Style
Inversion (SCSA)' wrote it when the file format was ``scsa-style-inversion/1`` (issue 20).

    .venv/bin/python scripts/make_style_fixture.py [--out PATH]

The file is frozen on purpose: users keep libraries of such files across updates, so every later
version of the pack must still load it and give the same image as a fresh inversion of the same
style (tests/test_style_files.py). Do not re-run this script to make a failing test pass; a change
that breaks the old file needs a conversion on load instead. Re-running it with the code of the
commit that added the file writes the same tensors and metadata (same ComfyUI and torch; the
metadata's order in the header may differ, as safetensors keeps it in a hash map).

It is one of the few tracked ``.safetensors`` files (the repository ignores them: weights are
built at test time), kept to a few KB: the tiny random checkpoint of scripts/tiny_models.py
(``sd15_tiny_v1_s0``: one 320-channel UNet level, TAESD, CLIP-L), the empty prompt, the example
style image and its colour map scaled to 32 x 32 px (4 x 4 latents), 4 DDIM steps, blocks
"auto" and 'recompute' storage, so the file holds latents only (the clean style and map latents,
their trajectory and the colour map).

The run is an ordinary prompt in an in-process ComfyUI (scripts/comfy_inprocess.py), the graph
a user builds: Load Checkpoint, CLIP Text Encode, the images VAE-encoded, SCSAInvert, Save Style
Inversion. The test builds its prompts with :func:`style_prompt` too.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "style_v1_tiny.safetensors"
CHECKPOINT = "sd15_tiny_v1_s0.safetensors"   # tiny_models.tiny_checkpoint_name() when the file was made
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


def make(out: Path) -> Path:
    from scripts import comfy_inprocess, comfyui_runtime, tiny_models

    with tempfile.TemporaryDirectory() as temp:
        comfy = comfy_inprocess.start_comfy(comfyui_runtime.comfyui_path(), Path(temp) / "comfy")
        checkpoint = tiny_models.write_tiny_checkpoint(with_clip=True, seed=0)
        if checkpoint.name != CHECKPOINT:
            raise SystemExit(f"the tiny checkpoint is now {checkpoint.name}, not {CHECKPOINT}: the fixture "
                             "stands for files made with the old one; keep it")
        comfy.add_models_dir(checkpoint.parent)
        comfy.load_pack(REPO_ROOT)
        styles = Path(temp) / "scsa_styles"
        paths, extensions = comfy.folder_paths.folder_names_and_paths["scsa_styles"]
        comfy.folder_paths.folder_names_and_paths["scsa_styles"] = ([str(styles)] + list(paths), extensions)
        prompt = style_prompt(checkpoint.name, write_images(comfy.folder_paths.get_input_directory()))
        prompt["save"] = {"class_type": "SCSASaveStyleInversion", "inputs": {
            "inversion": ["invert", 0], "filename_prefix": "fixture", "style": 1, "style_map_image": ["style_map", 0]}}
        comfy.run_prompt(prompt, outputs=["save"])
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(styles / "fixture_00001.safetensors", out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args(argv)
    path = make(args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
