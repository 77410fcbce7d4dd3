"""Inputs and checks shared by the workflow tests (server, browser, runner).

The example workflows read ``scsa_content.png``, ``scsa_style.png``, ``scsa_content_map.png``
and ``scsa_style_map.png`` from ComfyUI's input folder; ``place_images`` writes them there at
64 x 64 px (8 x 8 latents): pair 29 of the SCSA dataset (``$SCSA_SEM_PAIRS_DIR`` or
``../shared/data/sem_pairs``), or a synthetic pair painted with the same four region colours
(230-valued primaries) when that folder is absent.
"""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from oracle_data import sem_pairs_dir
from scripts import make_workflows as mw
from scripts import workflow_format as wf

SIZE = 64
STEPS = 4
PAIR = "29"
WORKFLOWS = tuple(mw.GRAPHS)
PACK_NODES = ("SCSALoadSemanticMap", "SCSASemanticPair", "SCSASemanticFromMasks", "SCSAInvert",
              "SCSAApply", "SCSAStyleSampler", "SCSAMaskBatch")
PACK_MODULE = "custom_nodes.scsa-style-transfer"


def pair_files(folder: Path | None = None) -> dict[str, Path] | None:
    """Pair 29's four files, or None when the data set is not there."""
    folder = (folder or sem_pairs_dir()) / PAIR
    files = {"content": folder / f"{PAIR}.jpg", "style": folder / f"{PAIR}_paint.jpg",
             "content_map": folder / f"{PAIR}_sem.png", "style_map": folder / f"{PAIR}_paint_sem.png"}
    return files if all(p.is_file() for p in files.values()) else None


def synthetic_pair(size: int = SIZE, seed: int = 0) -> dict[str, Image.Image]:
    """A content/style pair with maps in the example workflows' four region colours."""
    rng = np.random.default_rng(seed)
    colours = [tuple((c >> s) & 255 for s in (16, 8, 0)) for c in mw.REGION_COLOURS]
    y, x = np.mgrid[0:size, 0:size] / size
    images = {}
    for side, (tilt, shift) in {"content": (0.3, 0.0), "style": (-0.2, 0.1)}.items():
        labels = np.zeros((size, size), dtype=np.int64)          # sky
        labels[y > 0.35 + tilt * (x - 0.5) + shift] = 1        # hills
        labels[(y > 0.7 + shift / 2) & (x < 0.6)] = 2           # field
        labels[(x - 0.75) ** 2 + (y - 0.2) ** 2 < 0.012] = 3    # sun
        images[f"{side}_map"] = Image.fromarray(np.array(colours, dtype=np.uint8)[labels])
        base = np.array([[90, 140, 220], [60, 120, 60], [200, 180, 60], [250, 220, 120]], dtype=np.float64)
        if side == "style":
            base = base[:, ::-1] * 0.9
        pixels = base[labels] + rng.normal(0, 18 if side == "style" else 6, (size, size, 3))
        pixels += 40 * np.sin(8 * x + 5 * y)[..., None]
        images[side] = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return images


def pair_images(size: int = SIZE, synthetic: bool = False) -> dict[str, Image.Image]:
    """role -> RGB image of ``size`` px (maps resized without interpolation)."""
    files = None if synthetic else pair_files()
    if files is None:
        return synthetic_pair(size)
    return {role: Image.open(path).convert("RGB").resize(
        (size, size), Image.NEAREST if role.endswith("map") else Image.LANCZOS) for role, path in files.items()}


def place_images(input_dir: Path, size: int = SIZE, synthetic: bool = False) -> dict[str, str]:
    """Write the example workflows' four input files into ``input_dir``; role -> file name."""
    input_dir = Path(input_dir)
    names = {}
    for role, image in pair_images(size, synthetic).items():
        names[role] = mw.IMAGES[role]
        image.save(input_dir / names[role])
    return names


def write_pair_files(folder: Path, name: str, size: int = SIZE, synthetic: bool = False) -> dict[str, Path]:
    """A pair laid out like the data set: <name>.jpg, <name>_paint.jpg, <name>_sem.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    images = pair_images(size, synthetic)
    paths = {"content": folder / f"{name}.jpg", "style": folder / f"{name}_paint.jpg",
             "content_map": folder / f"{name}_sem.png", "style_map": folder / f"{name}_paint_sem.png"}
    for role, path in paths.items():
        images[role].save(path, quality=95) if path.suffix == ".jpg" else images[role].save(path)
    return paths


# ------------------------------------------------------------------------------- workflows
def committed(name: str) -> tuple[dict, dict]:
    """The committed (UI, API) files of one example workflow."""
    p = mw.paths(name)
    return (json.loads(p["ui"].read_text(encoding="utf-8")), json.loads(p["api"].read_text(encoding="utf-8")))


def for_test_api(api: dict, checkpoint: str, steps: int = STEPS) -> dict:
    """A copy of an API prompt with the test checkpoint and few steps."""
    api = wf.deep_copy(api)
    for node in api.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = checkpoint
        if node["class_type"] == "SCSAInvert":
            node["inputs"]["steps"] = steps
    return api


def for_test_ui(ui: dict, defs: dict, checkpoint: str, steps: int = STEPS) -> dict:
    """A copy of a UI workflow with the test checkpoint and few steps (set by widget name)."""
    ui = wf.deep_copy(ui)
    for node_id in wf.nodes_of_type(ui, "CheckpointLoaderSimple"):
        wf.set_widget(ui, defs, node_id, "ckpt_name", checkpoint)
    for node_id in wf.nodes_of_type(ui, "SCSAInvert"):
        wf.set_widget(ui, defs, node_id, "steps", steps)
    return ui


# ---------------------------------------------------------------------------------- checks
def wait_history(base_url: str, prompt_id: str, timeout: float = 240.0) -> dict:
    """Poll /history/<id> (bounded) until the prompt is done; returns the entry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base_url}/history/{prompt_id}", timeout=30) as r:
            entry = json.loads(r.read()).get(prompt_id)
        if entry and (entry.get("status", {}).get("completed")
                      or entry.get("status", {}).get("status_str") in ("success", "error")):
            return entry
        time.sleep(0.25)
    raise TimeoutError(f"prompt {prompt_id} not finished within {timeout:.0f} s")


def saved_images(entry: dict, output_dir: Path) -> list[Path]:
    """Files the prompt's SaveImage nodes wrote (type "output")."""
    return [Path(output_dir) / img.get("subfolder", "") / img["filename"]
            for out in entry.get("outputs", {}).values() for img in out.get("images", [])
            if img.get("type") == "output"]


def check_image(path: Path, size: int = SIZE) -> np.ndarray:
    """The image exists, has the workflow's size, is finite and not constant."""
    assert Path(path).is_file(), f"{path} was not written"
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (size, size, 3), f"{path}: shape {pixels.shape}, expected {(size, size, 3)}"
    assert np.isfinite(pixels).all()
    assert pixels.std() > 0.5, f"{path} is (nearly) constant: std {pixels.std():.3f}"
    return pixels
