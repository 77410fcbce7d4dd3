"""Feed-forward weight files that cannot be used (README, *Feed-forward semantic style transfer*): a
cut-off copy, a pickle under a .safetensors name, a damaged archive, missing keys, shapes of
another network, a dtype name that is no dtype. Each gets a message naming the set, the file and
what is wrong: when the prompt is queued where the first bytes tell, else when the set is loaded.

Weights: random, in the official key layout (tests/feedforward_weights.py); only the parts a
case needs, so the files stay small.
"""
from __future__ import annotations

import json
import re
import struct

import pytest
import torch
from safetensors.torch import save_file

import feedforward_weights as fw
from scripts.comfy_inprocess import PromptError, pack_module
from test_feedforward_nodes import images, stylize_prompt  # noqa: F401  (images: a fixture, used by name)


def _transformer(width: int = 512) -> dict:
    """SANet's transformer part under its combined-file prefix, at another width when asked."""
    sd = fw.state_dicts("sanet")["transformer"]
    if width == 512:
        return {f"transformer.{k}": v.contiguous() for k, v in sd.items()}
    return {f"transformer.{k}": torch.zeros([width if n == 512 else n for n in v.shape]) for k, v in sd.items()}


def _cut(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _make_sets(root):
    """One set per case in ``root``: name -> what the loader must say about it."""
    save_file(_transformer(), str(root / "cut.safetensors"), metadata={"variant": "sanet"})
    _cut(root / "cut.safetensors", 0.9)
    torch.save(fw.state_dicts("sanet")["decoder"], str(root / "pickle.safetensors"))
    missing = _transformer()
    del missing["transformer.sanet4_1.h.weight"]
    save_file(missing, str(root / "missing_key.safetensors"))
    save_file(_transformer(256), str(root / "narrower.safetensors"))
    header = json.dumps({"transformer.merge_conv.bias": {"dtype": "F99", "shape": [512],
                                                         "data_offsets": [0, 2048]}}).encode()
    (root / "no_dtype.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(2048))
    for name, legacy in (("cut_archive", False), ("cut_pickle", True)):
        folder = root / name
        folder.mkdir()
        torch.save(fw.state_dicts("sanet")["decoder"], str(folder / "decoder_iter_500000.pth"),
                   _use_new_zipfile_serialization=not legacy)
        _cut(folder / "decoder_iter_500000.pth")
    return {
        "cut.safetensors": (r"cut\.safetensors: the file is cut off: its tensors need \d+ bytes after the header, "
                            r"but only \d+ follow \(an interrupted copy or download\?\)", True),
        "pickle.safetensors": (r"pickle\.safetensors: this is a PyTorch checkpoint \(a zip archive from "
                               r"torch\.save\), not a safetensors file \(renamed\?\)\. Pickles can run code when "
                               r"loaded, so it is not read", True),
        "no_dtype.safetensors": (r"no_dtype\.safetensors: tensor 'transformer\.merge_conv\.bias' has dtype 'F99', "
                                 r"which is no dtype this pack reads", True),
        "cut_archive/": (r"decoder_iter_500000\.pth: the file is cut off or damaged: its zip archive has no "
                         r"directory at the end", True),
        "cut_pickle/": (r"decoder_iter_500000\.pth: cannot be read as weights: the file is damaged or cut off "
                        r"\(an interrupted download\?\); download it again", False),
        "missing_key.safetensors": (r"missing_key\.safetensors \(transformer\.\) is not a valid SANet transformer "
                                    r"file .*: missing 1 key\(s\): sanet4_1\.h\.weight \[512, 512, 1, 1\]", False),
        "narrower.safetensors": (r"narrower\.safetensors \(transformer\.\) is not a valid SANet transformer file "
                                 r".*: 18 wrong shape\(s\): sanet4_1\.f\.weight is \[256, 256, 1, 1\], expected "
                                 r"\[512, 512, 1, 1\]", False),
    }


@pytest.fixture(scope="module")
def broken_sets(comfy, tmp_path_factory):
    root = tmp_path_factory.mktemp("style_transfer_broken")
    cases = _make_sets(root)
    comfy.folder_paths.add_model_folder_path("style_transfer", str(root))
    return cases


@pytest.fixture(scope="module")
def feedforward(comfy):
    return pack_module("nodes/feedforward.py")


def test_every_broken_set_gets_a_message_naming_the_set_the_file_and_the_problem(comfy, feedforward, broken_sets):
    loader = comfy.node_class("SCSAFeedForwardLoader")
    for name, (message, from_first_bytes) in broken_sets.items():
        expected = rf"^model_name '{name}': {message}"
        with pytest.raises(feedforward.WeightsError, match=expected):
            feedforward.load_model_set(name)
        queued = loader.validate_inputs(name)
        if from_first_bytes:
            assert isinstance(queued, str) and re.match(expected, queued), (name, queued)
        else:
            assert queued is True, (name, queued)


def test_the_user_sees_the_message_in_comfyui(comfy, broken_sets, images):
    with pytest.raises(PromptError, match=r"(?s)prompt failed validation: .*model_name - "
                                          r"model_name 'cut\.safetensors': "
                                          r"cut\.safetensors: the file is cut off"):
        comfy.run_prompt(stylize_prompt(images, "cut.safetensors"))
    with pytest.raises(PromptError, match=r"node loader \(SCSAFeedForwardLoader\) failed: \S*WeightsError: model_name "
                                          r"'missing_key\.safetensors': missing_key\.safetensors \(transformer\.\) is "
                                          r"not a valid SANet transformer file"):
        comfy.run_prompt(stylize_prompt(images, "missing_key.safetensors"))


def test_the_converter_refuses_a_cut_off_file_and_never_overwrites(comfy, tmp_path):
    from scripts.convert_feedforward_weights import main
    folder = tmp_path / "sanet"
    folder.mkdir()
    save_file(_transformer(), str(folder / "transformer.safetensors"))
    _cut(folder / "transformer.safetensors")
    with pytest.raises(SystemExit, match=r"transformer\.safetensors: the file is cut off"):
        main([str(folder), str(tmp_path / "out.safetensors")])
    (tmp_path / "taken.safetensors").write_bytes(b"someone's file")
    with pytest.raises(SystemExit, match=r"taken\.safetensors: exists already"):
        main([str(folder), str(tmp_path / "taken.safetensors")])
    assert (tmp_path / "taken.safetensors").read_bytes() == b"someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sanet", "taken.safetensors"]
