"""Saved style files (issue 20): a library of styles survives upgrades, and a damaged or foreign
file gets a clear answer.

The frozen file tests/fixtures/style_v1_tiny.safetensors was written by the code of the day the
format was ``scsa-style-inversion/1`` (scripts/make_style_fixture.py); every later version must
load it and give what a fresh inversion of the same style gives.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from scripts import make_style_fixture as frozen
from scripts import tiny_models
from test_style_reuse import _fresh, style_folder  # noqa: F401  (style_folder: a fixture, used by name)


@pytest.fixture(scope="module")
def frozen_checkpoint(comfy) -> str:
    """The tiny checkpoint the frozen file was made with."""
    path = tiny_models.write_tiny_checkpoint(with_clip=True, seed=0)
    assert path.name == frozen.CHECKPOINT, (
        f"the tiny checkpoint is now {path.name}; the frozen style was made with {frozen.CHECKPOINT}, "
        "so keep a way to build that one for this test")
    return path.name


@pytest.fixture(scope="module")
def frozen_images(comfy) -> dict:
    return frozen.write_images(comfy.folder_paths.get_input_directory())


def _frozen_tensors() -> dict:
    with safe_open(str(frozen.FIXTURE), framework="pt") as file:
        return {name: file.get_tensor(name) for name in file.keys()}


def _as_loaded_latent(comfy, name: str, samples: torch.Tensor) -> str:
    """``samples`` as a .latent file in the input folder, which LoadLatent reads back exactly."""
    path = f"{comfy.folder_paths.get_input_directory()}/{name}.latent"
    save_file({"latent_tensor": samples.contiguous(), "latent_format_version_0": torch.tensor([])}, path)
    return f"{name}.latent"


def test_the_frozen_v1_style_gives_what_a_fresh_inversion_gives(comfy, frozen_checkpoint, frozen_images,
                                                                style_folder):
    tensors = _frozen_tensors()
    # Fresh: the file's own clean latents and colour map, inverted now.
    fresh = frozen.style_prompt(frozen_checkpoint, frozen_images)
    Image.fromarray(tensors["map_image"].numpy()).save(
        f"{comfy.folder_paths.get_input_directory()}/frozen_style_map.png")
    fresh["z_style"] = {"class_type": "LoadLatent",
                        "inputs": {"latent": _as_loaded_latent(comfy, "frozen_style", tensors["latent"])}}
    fresh["z_style_map"] = {"class_type": "LoadLatent",
                            "inputs": {"latent": _as_loaded_latent(comfy, "frozen_style_map", tensors["map_latent"])}}
    fresh["style_map"]["inputs"]["image"] = "frozen_style_map.png"
    del fresh["style"]
    inverted, reference = _fresh(comfy, fresh)
    assert inverted.reused == ()

    # Loaded: the frozen file from the style library.
    shutil.copyfile(frozen.FIXTURE, style_folder / "frozen_v1.safetensors")
    loading = frozen.style_prompt(frozen_checkpoint, frozen_images)
    loading["load_style"] = {"class_type": "SCSALoadStyleInversion", "inputs": {"style_file": "frozen_v1.safetensors"}}
    loading["invert"]["inputs"].update(style=["load_style", 0], style_map=["load_style", 1])
    loading["pair"]["inputs"]["style_map"] = ["load_style", 2]
    for node in ("style", "style_map", "z_style", "z_style_map"):
        del loading[node]
    loaded, latent = _fresh(comfy, loading)
    assert loaded.reused == ("style",), "the frozen style was inverted again instead of loaded"
    assert torch.equal(loaded.latent_at(999, "style"), tensors["trajectory.999.style"])
    assert np.array_equal(comfy.last_result["load_style"][2][0].mul(255).round().byte().numpy(),
                          tensors["map_image"].numpy())
    # The content is inverted alone (not beside the style): equal up to float rounding.
    assert torch.allclose(latent, reference, rtol=1e-4, atol=1e-5), (latent - reference).abs().max()
