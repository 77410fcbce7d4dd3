"""The feed-forward SCSA nodes inside a real ComfyUI (in-process executor): the loader reads a
registered ``style_transfer`` folder (official files or one converted .safetensors) with the
safe loader only, the stylize nodes run SANet(+SCSA) and StyTr2(+SCSA) on small images, with
semantics from the pack's own map nodes, progress and Cancel.

Weights: random, in the official key layout, written by the tests (tests/feedforward_weights.py).
"""
from __future__ import annotations

import importlib
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import feedforward_weights as fw

from scripts.comfy_inprocess import PromptError

SIZE = 48   # content is SIZE x (SIZE * 4 // 3); style is square


class _Pickled:
    """A custom class: its pickle needs code execution to load."""

    def __init__(self):
        self.weight = torch.zeros(2)


@pytest.fixture(scope="module")
def feedforward(comfy):
    """The pack's loaded nodes/feedforward.py module (as ComfyUI imported it)."""
    return sys.modules[comfy.node_class("SCSAFeedForwardLoader").__module__]


@pytest.fixture(scope="module")
def weight_sets(comfy, feedforward, tmp_path_factory):
    """A style_transfer folder registered with ComfyUI (as extra_model_paths.yaml would), holding:
    sanet/ (official .pth files), stytr2/ (official names as .safetensors), sanet_one.safetensors
    (converted), pickled/ (a pickle needing code execution), broken/ (a key missing)."""
    root = tmp_path_factory.mktemp("style_transfer")
    fw.write_official_folder(root / "sanet", "sanet", extension=".pth")
    fw.write_official_folder(root / "stytr2", "stytr2", extension=".safetensors")
    fw.write_combined(root / "sanet_one.safetensors", "sanet")
    (root / "pickled").mkdir()
    torch.save({"model": _Pickled()}, str(root / "pickled" / "transformer_iter_500000.pth"))
    (root / "broken").mkdir()
    transformer = dict(fw.state_dicts("sanet")["transformer"])
    del transformer["sanet4_1.h.weight"]
    torch.save(transformer, str(root / "broken" / "transformer_iter_500000.pth"))
    comfy.folder_paths.add_model_folder_path("style_transfer", str(root))
    return root


@pytest.fixture(scope="module")
def images(comfy):
    """Content (4:3), style (square) and two-region colour maps in ComfyUI's input folder."""
    input_dir = comfy.folder_paths.get_input_directory()
    g = torch.Generator().manual_seed(0)
    sizes = {"content": (SIZE, SIZE * 4 // 3), "style": (SIZE, SIZE)}
    names = {}
    for role, (h, w) in sizes.items():
        small = torch.rand(3, h // 8, w // 8, generator=g)
        pixels = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bilinear")[0]
        Image.fromarray((pixels.permute(1, 2, 0) * 255).byte().numpy()).save(os.path.join(input_dir, f"ff_{role}.png"))
        colours = np.zeros((h, w, 3), np.uint8)
        colours[: h // 2] = (230, 30, 30)
        colours[h // 2:] = (30, 30, 230)
        Image.fromarray(colours).save(os.path.join(input_dir, f"ff_{role}_map.png"))
        names[role], names[f"{role}_map"] = f"ff_{role}.png", f"ff_{role}_map.png"
    return names


def stylize_prompt(images, model_name="sanet/", node="SCSASANetStylize", semantics=True, **settings):
    inputs = {"model": ["loader", 0], "content": ["content", 0], "style": ["style", 0], "preset": "default",
              "sca_weight": 0.7, "ssa_weight": 0.3, "size": 64}
    if node == "SCSAStyTr2Stylize":
        inputs.update(sca_weight=1.2, ssa_weight=0.5, adain_mix=0.7)
    inputs.update(settings)
    prompt = {
        "loader": {"class_type": "SCSAFeedForwardLoader", "inputs": {"model_name": model_name}},
        "content": {"class_type": "LoadImage", "inputs": {"image": images["content"]}},
        "style": {"class_type": "LoadImage", "inputs": {"image": images["style"]}},
        "content_map": {"class_type": "SCSALoadSemanticMap", "inputs": {"image": images["content_map"]}},
        "style_map": {"class_type": "SCSALoadSemanticMap", "inputs": {"image": images["style_map"]}},
        "pair": {"class_type": "SCSASemanticPair",
                 "inputs": {"content_map": ["content_map", 0], "style_map": ["style_map", 0]}},
        "stylize": {"class_type": node, "inputs": inputs},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["stylize", 0], "filename_prefix": "scsa_ff_test"}},
    }
    if semantics:
        inputs["semantics"] = ["pair", 0]
    else:
        for name in ("content_map", "style_map", "pair"):
            del prompt[name]
    return prompt


def test_loader_lists_and_loads_every_layout(comfy, feedforward, weight_sets):
    listed = feedforward.list_model_sets()
    assert {"sanet/", "stytr2/", "sanet_one.safetensors", "pickled/", "broken/"} <= set(listed)
    schema_options = comfy.node_class("SCSAFeedForwardLoader").define_schema().inputs[0].options
    assert "sanet/" in schema_options
    folder_model = feedforward.load_model_set("sanet/")
    # cached between prompts: the same object while the files are unchanged
    assert feedforward.load_model_set("sanet/") is folder_model
    combined_model = feedforward.load_model_set("sanet_one.safetensors")
    assert folder_model.variant == combined_model.variant == "sanet"
    assert feedforward.load_model_set("stytr2/").variant == "stytr2"
    for (key, a), (_, b) in zip(folder_model.patcher.model.state_dict().items(),
                                combined_model.patcher.model.state_dict().items()):
        assert torch.equal(a, b), key
    model_management = importlib.import_module("comfy.model_management")
    assert folder_model.patcher.load_device == model_management.get_torch_device()
    assert folder_model.patcher.offload_device == model_management.unet_offload_device()


def _image(result, node="stylize"):
    return result[node][0]


@pytest.mark.parametrize("node, model_name", [("SCSASANetStylize", "sanet/"), ("SCSAStyTr2Stylize", "stytr2/")])
def test_stylize_runs_with_and_without_semantics(comfy, weight_sets, images, node, model_name):
    scsa = comfy.run_prompt(stylize_prompt(images, model_name, node))
    image = _image(scsa)
    assert image.shape == (1, SIZE, SIZE * 4 // 3, 3)
    assert bool(torch.isfinite(image).all()) and image.min() >= 0 and image.max() <= 1 and image.std() > 0
    assert scsa.ui["save"]["images"], "SaveImage wrote no file"
    # new weights re-run the stylize node only; the loader and the semantics come from the cache
    again = comfy.run_prompt(stylize_prompt(images, model_name, node, sca_weight=0.2))
    assert "stylize" in again.executed and "loader" not in again.executed and "pair" not in again.executed
    assert not torch.allclose(_image(again), image)
    plain = _image(comfy.run_prompt(stylize_prompt(images, model_name, node, semantics=False)))
    assert plain.shape == image.shape and not torch.allclose(plain, image)
    working = _image(comfy.run_prompt(stylize_prompt(images, model_name, node, preset="official",
                                                     output_size="working")))
    assert working.shape == (1, 64, 64, 3)


def test_loader_and_stylize_refusals(comfy, weight_sets, images):
    with pytest.raises(PromptError, match=r"refused\. The file is a pickle that needs to run code"):
        comfy.run_prompt(stylize_prompt(images, "pickled/"))
    with pytest.raises(PromptError, match=r"missing 1 key\(s\): sanet4_1.h.weight \[512, 512, 1, 1\]"):
        comfy.run_prompt(stylize_prompt(images, "broken/"))
    with pytest.raises(PromptError, match="holds StyTr2 weights; this node runs SANet"):
        comfy.run_prompt(stylize_prompt(images, "stytr2/"))
    with pytest.raises(PromptError, match="holds SANet weights; this node runs StyTr2"):
        comfy.run_prompt(stylize_prompt(images, "sanet_one.safetensors", "SCSAStyTr2Stylize"))


def test_cancel_stops_at_the_next_stage(comfy, weight_sets, images, monkeypatch):
    mm = importlib.import_module("comfy.model_management")
    utils = importlib.import_module("comfy.utils")
    calls = []

    def hook(value, total, preview, node_id=None):
        calls.append(value)
        if len(calls) == 1:
            mm.interrupt_current_processing(True)   # what the Cancel button does
    monkeypatch.setattr(utils, "PROGRESS_BAR_HOOK", hook)
    prompt = stylize_prompt(images, size=80)   # a size no other test used: not cached
    try:
        with pytest.raises(PromptError):
            comfy.run_prompt(prompt)
    finally:
        mm.interrupt_current_processing(False)
    events = [(event, data) for event, data in comfy.last_result.messages
              if event in ("execution_interrupted", "execution_error")]
    assert events and events[0][0] == "execution_interrupted" and events[0][1]["node_id"] == "stylize", events
    assert len(calls) == 1, "the node went on after Cancel"
    monkeypatch.setattr(utils, "PROGRESS_BAR_HOOK", None)
    assert _image(comfy.run_prompt(prompt)).shape == (1, SIZE, SIZE * 4 // 3, 3)
