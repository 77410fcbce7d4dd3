"""Inputs and checks shared by the workflow tests (server, browser, runner).

The example workflows read ``scsa_example_content.png``, ``scsa_example_style.png``,
``scsa_example_content_map.png`` and ``scsa_example_style_map.png`` from ComfyUI's input folder
(the pack puts the 512 px originals there at start-up); ``place_images`` overwrites them there
with 64 x 64 px versions (8 x 8 latents, fast on a CPU): pair 29 of the SCSA dataset
(``$SCSA_SEM_PAIRS_DIR`` or ``../shared/data/sem_pairs``), or the shipped synthetic example
(scripts/make_example_inputs.py, same four region colours) when that folder is absent.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import numpy as np
from PIL import Image

from oracle_data import sem_pairs_dir
from scripts import comfyui_runtime as rt
from scripts import make_example_inputs as examples
from scripts import make_workflows as mw
from scripts import run_workflow
from scripts import workflow_format as wf

SIZE = 64
STEPS = 4
PAIR = "29"
WORKFLOWS = tuple(mw.GRAPHS)
PACK_NODES = ("SCSALoadSemanticMap", "SCSASemanticPair", "SCSASemanticFromMasks", "SCSAInvert",
              "SCSAApply", "SCSAStyleSampler", "SCSAMaskBatch", "SCSAFeedForwardLoader", "SCSASANetStylize",
              "SCSAStyTr2Stylize", "SCSASaveStyleInversion", "SCSALoadStyleInversion")
PACK_MODULE = "custom_nodes.scsa-style-transfer"


def pair_files(folder: Path | None = None) -> dict[str, Path] | None:
    """Pair 29's four files, or None when the data set is not there."""
    folder = (folder or sem_pairs_dir()) / PAIR
    files = {"content": folder / f"{PAIR}.jpg", "style": folder / f"{PAIR}_paint.jpg",
             "content_map": folder / f"{PAIR}_sem.png", "style_map": folder / f"{PAIR}_paint_sem.png"}
    return files if all(p.is_file() for p in files.values()) else None


@functools.lru_cache(maxsize=1)
def _example_pixels() -> dict[str, np.ndarray]:
    return examples.role_images()


def synthetic_pair(size: int = SIZE) -> dict[str, Image.Image]:
    """role -> the shipped example image (scripts/make_example_inputs.py) at ``size`` px:
    images resampled with Lanczos, maps without interpolation (their colours stay exact)."""
    out = {}
    for role, pixels in _example_pixels().items():
        image = Image.fromarray(pixels, "RGB")
        out[role] = image.resize((size, size), Image.NEAREST if role.endswith("map") else Image.LANCZOS)
    return out


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


# The feed-forward stylize nodes' working resolution in tests: random weights, so small is enough.
FEEDFORWARD_TEST_SIZE = 128
FEEDFORWARD_NODES = ("SCSASANetStylize", "SCSAStyTr2Stylize")


def for_test_api(api: dict, checkpoint: str, steps: int = STEPS, dit_stand_ins: dict | None = None) -> dict:
    """A copy of an API prompt with few steps, a small working size and the test checkpoint; a DiT
    graph (``run_workflow.dit_variant``: Flux, Qwen-Image, Z-Image, an SD3.5 checkpoint) keeps its
    file names, or, when the ``dit_stand_ins`` fixture is given, gets the runner's stand-ins."""
    api = copy.deepcopy(api)
    variant = run_workflow.dit_variant(run_workflow.workflow_loaders(api))
    if variant is not None and dit_stand_ins is not None:
        dit_stand_ins[variant].rewrite(api)
    for node in api.values():
        if node["class_type"] == "CheckpointLoaderSimple" and variant is None:
            node["inputs"]["ckpt_name"] = checkpoint
        if node["class_type"] == "SCSAInvert":
            node["inputs"]["steps"] = steps
        if node["class_type"] in FEEDFORWARD_NODES:
            node["inputs"]["size"] = FEEDFORWARD_TEST_SIZE
    return api


def for_test_ui(ui: dict, defs: dict, checkpoint: str, steps: int = STEPS) -> dict:
    """The same for a UI workflow (set by widget name); a DiT graph keeps its file names."""
    ui = copy.deepcopy(ui)
    if run_workflow.dit_variant(run_workflow.workflow_loaders(ui)) is None:
        for node_id in wf.nodes_of_type(ui, "CheckpointLoaderSimple"):
            wf.set_widget(ui, defs, node_id, "ckpt_name", checkpoint)
    for node_id in wf.nodes_of_type(ui, "SCSAInvert"):
        wf.set_widget(ui, defs, node_id, "steps", steps)
    for node_type in FEEDFORWARD_NODES:
        for node_id in wf.nodes_of_type(ui, node_type):
            wf.set_widget(ui, defs, node_id, "size", FEEDFORWARD_TEST_SIZE)
    return ui


def expected_failure(name: str, comfyui_dir: Path) -> str | None:
    """The error an example workflow must stop with on this ComfyUI, where its family cannot run
    there; None where it must run. Z-Image: SCSA reaches it only through the attention override,
    which learns the block from ComfyUI's ``transformer_options["block_index"]``; ComfyUI 0.3.75's
    NextDiT publishes none, so SCSA raises InjectionLost at the first sampling step (not a silent
    run without style)."""
    if name == "scsa_z_image" and \
            "block_index" not in (Path(comfyui_dir) / "comfy" / "ldm" / "lumina" / "model.py").read_text(encoding="utf-8"):
        return "SCSA injected nothing in this sampling step"
    return None


def execution_error(entry: dict) -> dict:
    """The execution_error message of a failed prompt's /history entry ({} if none)."""
    return next((data for kind, data in entry["status"].get("messages", []) if kind == "execution_error"), {})


def check_expected_failure(entry: dict, failure: str) -> None:
    """The prompt failed in SCSAStyleSampler with SCSA's InjectionLost saying ``failure``."""
    assert entry["status"]["status_str"] == "error", json.dumps(entry["status"], indent=1)[:3000]
    error = execution_error(entry)
    assert error.get("node_type") == "SCSAStyleSampler", error
    assert error.get("exception_type", "").endswith("InjectionLost"), error
    assert failure in error.get("exception_message", ""), error


# ---------------------------------------------------------------------------------- checks
def wait_history(base_url: str, prompt_id: str, timeout: float = 240.0) -> dict:
    """The /history entry of a prompt queued by someone else (the browser), once it is done."""
    return rt.ComfyClient(base_url).wait_for(prompt_id, timeout)


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
