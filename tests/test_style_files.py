"""Saved style files (README, *Style files*): a library of styles survives upgrades, and a damaged or
foreign file gets a clear answer.

A format-1 file (``scsa-style-inversion/1``) is written in the tests by a frozen writer of that
layout (``frozen_file``), not by today's save_style; every later version must load it and give
what a fresh inversion of the same style gives.
"""
from __future__ import annotations

import json
import shutil
import struct
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import frozen_style as frozen
from scripts.comfy_inprocess import PromptError, pack_module
from scripts import tiny_models
from test_style_reuse import _fresh, _load_prompt, _save_prompt, style_folder  # noqa: F401  (style_folder: a fixture)


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


@pytest.fixture(scope="module")
def frozen_file(comfy, frozen_checkpoint, frozen_images, tmp_path_factory):
    """A style file in format 1, as Save Style Inversion wrote it when format 1 was the only one:
    a 4-step 'recompute' inversion of the example style at 32 px (tests/frozen_style.py's
    graph), written by the frozen writer below, not by today's save_style. Built here rather than
    committed: the repository tracks no tensor files."""
    inversion, _ = _fresh(comfy, frozen.style_prompt(frozen_checkpoint, frozen_images))
    colours = Image.open(f"{comfy.folder_paths.get_input_directory()}/{frozen_images['style_map']}").convert("RGB")
    path = tmp_path_factory.mktemp("frozen") / "style_v1.safetensors"
    _write_format_1(path, inversion.style_part(1), torch.from_numpy(np.asarray(colours).copy()))
    return path


def _write_format_1(path, style, map_image: torch.Tensor) -> None:
    """Format ``scsa-style-inversion/1`` as the README's *Style files* describes it, written plainly
    (latents only)."""
    tensors = {"latent": style.latent, "map_latent": style.map_latent, "map_image": map_image}
    for t, row in style.trajectory.items():
        for stream, x in row.items():
            tensors[f"trajectory.{t}.{stream}"] = x
    metadata = {"format": "scsa-style-inversion/1", "steps": str(style.steps), "storage": "recompute",
                "blocks": json.dumps(sorted(".".join(str(part) for part in block) for block in style.blocks)),
                "feature_dtype": ""}
    save_file({name: x.contiguous().cpu() for name, x in tensors.items()}, str(path), metadata=metadata)


def _frozen_tensors(frozen_file) -> dict:
    with safe_open(str(frozen_file), framework="pt") as file:
        return {name: file.get_tensor(name) for name in file.keys()}


def _as_loaded_latent(comfy, name: str, samples: torch.Tensor) -> str:
    """``samples`` as a .latent file in the input folder, which LoadLatent reads back exactly."""
    path = f"{comfy.folder_paths.get_input_directory()}/{name}.latent"
    save_file({"latent_tensor": samples.contiguous(), "latent_format_version_0": torch.tensor([])}, path)
    return f"{name}.latent"


def test_the_frozen_v1_style_gives_what_a_fresh_inversion_gives(comfy, frozen_checkpoint, frozen_images,
                                                                style_folder, frozen_file):
    tensors = _frozen_tensors(frozen_file)
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
    shutil.copyfile(frozen_file, style_folder / "frozen_v1.safetensors")
    loaded, latent = _fresh(comfy, _load_prompt(frozen.style_prompt(frozen_checkpoint, frozen_images),
                                                "frozen_v1.safetensors"))
    assert loaded.reused == ("style",), "the frozen style was inverted again instead of loaded"
    assert torch.equal(loaded.latent_at(999, "style"), tensors["trajectory.999.style"])
    assert np.array_equal(comfy.last_result["load_style"][2][0].mul(255).round().byte().numpy(),
                          tensors["map_image"].numpy())
    # The content is inverted alone (not beside the style): equal up to float rounding.
    assert torch.allclose(latent, reference, rtol=1e-4, atol=1e-5), (latent - reference).abs().max()


# ------------------------------------------------------------------ damaged and foreign files
@pytest.fixture(scope="module")
def style_reuse(comfy):
    return pack_module("nodes/style_reuse.py")


def _features_style(style_reuse):
    """A small style with features ('memory' storage): 2 steps, one block at half the latent's grid."""
    features = pack_module("scsa_core/features.py")
    g = torch.Generator().manual_seed(0)
    latent, map_latent = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    bank = features.FeatureBank(["style", "style_map"], dtype=torch.float16)
    trajectory = {}
    for t in (1, 501, 999):
        trajectory[t] = {stream: torch.randn(1, 4, 8, 8, generator=g) for stream in ("style", "style_map")}
    for t in (1, 501):
        for stream in ("style", "style_map"):
            bank.record(t, ("output", 1, 0), torch.randn(1, 16, 8, generator=g), streams=[stream], grid=(4, 4))
    return style_reuse.InvertedStyle(latent, map_latent, trajectory, bank, 2, frozenset({("output", 1, 0)}), "memory")


@pytest.fixture(scope="module")
def features_file(style_reuse, tmp_path_factory):
    path = tmp_path_factory.mktemp("styles") / "with_features.safetensors"
    style_reuse.save_style(str(path), _features_style(style_reuse), torch.zeros(64, 64, 3, dtype=torch.uint8))
    return path


def _contents(path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as file:
        return {name: file.get_tensor(name) for name in file.keys()}, dict(file.metadata() or {})


def _raw(header: dict, data: bytes) -> bytes:
    """A safetensors file written by hand (header JSON as given)."""
    return _raw_text(json.dumps(header), data)


def _raw_text(header: str, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header.encode() + data


def _changed(base: str, change) -> Callable:
    """A case made from a valid file: ``change(tensors, metadata)`` edits them in place."""
    def make(path, bases):
        tensors, metadata = _contents(bases[base])
        change(tensors, metadata)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return make


def _bytes(content) -> Callable:
    """A case written as bytes: ``content`` or ``content(frozen file's bytes)``."""
    def make(path, bases):
        path.write_bytes(content(bases["frozen"].read_bytes()) if callable(content) else content)
    return make


def _pickled(**options) -> Callable:
    def make(path, bases):
        torch.save(_contents(bases["frozen"])[0], str(path), **options)
    return make


def _rename(old: str, new: str) -> Callable:
    def change(tensors, metadata):
        tensors[new] = tensors.pop(old)
    return change


def _set(**values) -> Callable:
    def change(tensors, metadata):
        for key, value in values.items():
            if value is None:
                metadata.pop(key)
            else:
                metadata[key] = value
    return change


def _tensor(name: str, value) -> Callable:
    def change(tensors, metadata):
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value(tensors[name]) if callable(value) else value
    return change


def _nan(x):
    x = x.clone()
    x.view(-1)[0] = float("nan")
    return x


F32_64 = {"dtype": "F32", "shape": [1, 4, 4, 4], "data_offsets": [0, 256]}
# (case, how the file is made, what the message says, whether the header alone tells)
CASES = [
    ("empty", _bytes(b""), r"the file has 0 bytes, too few for a safetensors file", True),
    ("an interrupted copy", _bytes(lambda b: b[:-1000]),
     r"the file is cut off: its tensors need 6144 bytes after the header, but only 5144 follow", True),
    ("cut off in its header", _bytes(lambda b: b[:300]), r"the file is cut off: its header alone should take", True),
    ("a pickle renamed", _pickled(_use_new_zipfile_serialization=False),
     r"this is a Python pickle .*not a safetensors file \(renamed\?\)\. Pickles can run code", True),
    ("a torch.save checkpoint renamed", _pickled(),
     r"this is a PyTorch checkpoint \(a zip archive from torch.save\), not a safetensors file", True),
    ("a text file", _bytes(b"these are not the tensors you are looking for"),
     r"not a safetensors file: its first 8 bytes do not give", True),
    ("a header that is no JSON", _bytes(struct.pack("<Q", 12) + b"{not json!} "),
     r"not a safetensors file, or a damaged one: its header is not JSON", True),
    ("a dtype name that is no dtype", _bytes(_raw({"latent": dict(F32_64, dtype="F99")}, bytes(256))),
     r"tensor 'latent' has dtype 'F99', which is no dtype this pack reads", True),
    ("a shape its bytes do not hold", _bytes(_raw({"latent": dict(F32_64, shape=[1, 4, 4, 5])}, bytes(256))),
     r"damaged header: tensor 'latent' \(F32 \[1, 4, 4, 5\]\) needs 320 bytes, but its data_offsets give 256", True),
    ("a tensor named twice", _bytes(_raw_text('{"latent": %s, "latent": %s}' % ((json.dumps(F32_64),) * 2),
                                               bytes(256))), r"damaged header: it names 'latent' twice", True),
    ("bytes after the last tensor", _bytes(lambda b: b + b"more"), r"the file has 4 bytes after its last tensor", True),
    ("no metadata", _changed("frozen", lambda t, m: m.clear()),
     r"not an SCSA style inversion: its metadata has no format 'scsa-style-inversion/<version>'", True),
    ("another kind of safetensors file", _changed(
        "frozen", lambda t, m: (t.clear(), m.clear(), t.update({"model.diffusion_model.out.weight": torch.zeros(2)}))),
     r"not an SCSA style inversion", True),
    ("a newer format", _changed("frozen", _set(format="scsa-style-inversion/3")),
     r"an SCSA style inversion of a newer format \(scsa-style-inversion/3\) than this version of the SCSA node "
     r"pack reads \(scsa-style-inversion/2 and older\): update the SCSA node pack to load it", True),
    ("a format that never was", _changed("frozen", _set(format="scsa-style-inversion/one")),
     r"its format 'scsa-style-inversion/one' is not one any version of the SCSA pack writes", True),
    ("no steps", _changed("frozen", _set(steps=None)),
     r"its metadata has no 'steps' \(the number of inversion steps\): the file is damaged", True),
    ("steps that are no number", _changed("frozen", _set(steps="four")),
     r"its metadata 'steps' is 'four', not a number of steps from 1 to 1000", True),
    ("another number of steps than its trajectory", _changed("frozen", _set(steps="5")),
     r"its trajectory is not the one of a 5-step inversion: missing trajectory\.201\.style, .*; timesteps it "
     r"should not have: trajectory\.251\.style", True),
    ("an unknown storage", _changed("frozen", _set(storage="disk")),
     r"its metadata 'storage' is 'disk', not one of memory, offload, recompute", True),
    ("blocks that are no list", _changed("frozen", _set(blocks="output 6-11")),
     r"its metadata 'blocks' is 'output 6-11', not a JSON list of blocks", True),
    ("a block that does not parse", _changed("frozen", _set(blocks='["output.0"]')),
     r"its metadata 'blocks' is .*not a JSON list of blocks", True),
    ("a feature dtype that is no dtype", _changed("features", _set(feature_dtype="float99")),
     r"its metadata 'feature_dtype' is 'float99', which is no feature dtype", True),
    ("a feature dtype that is a torch name but no dtype", _changed("features", _set(feature_dtype="Tensor")),
     r"its metadata 'feature_dtype' is 'Tensor', which is no feature dtype", True),
    ("a trajectory name that does not parse", _changed("frozen", _rename("trajectory.1.style", "trajectory.1.x.style")),
     r"1 tensor name\(s\) that are not in its format's layout \(trajectory\.1\.x\.style\)", True),
    ("a timestep that is no number", _changed("frozen", _rename("trajectory.1.style", "trajectory.one.style")),
     r"1 tensor name\(s\) that are not in its format's layout \(trajectory\.one\.style\)", True),
    ("features named in another layout",
     _changed("features", _rename("features.1.output.1.0.style", "features.1.style")),
     r"1 tensor name\(s\) that are not in its format's layout \(features\.1\.style\); expected latent, "
     r"map_latent, map_image, trajectory\.<timestep>\.<style\|style_map>", True),
    ("a missing trajectory step", _changed("frozen", _tensor("trajectory.999.style", None)),
     r"its trajectory is not the one of a 4-step inversion: missing trajectory\.999\.style", True),
    ("a trajectory latent of another shape", _changed("frozen", _tensor("trajectory.1.style", torch.zeros(1, 4, 4, 5))),
     r"1 trajectory latent\(s\) do not fit its latent F32 \[1, 4, 4, 4\] "
     r"\(trajectory\.1\.style is F32 \[1, 4, 4, 5\]\)",
     True),
    ("a map latent of another size", _changed("frozen", _tensor("map_latent", torch.zeros(1, 4, 8, 8))),
     r"its map_latent is F32 \[1, 4, 8, 8\], but its latent is F32 \[1, 4, 4, 4\]", True),
    ("style_map tensors without a map latent", _changed("frozen", _tensor("map_latent", None)),
     r"it has style_map tensors \(trajectory\.1\.style_map, .*\) but no map_latent", True),
    ("a map image that is no colour map",
     _changed("frozen", _tensor("map_image", torch.zeros(32, 32, 4, dtype=torch.uint8))),
     r"its map_image is U8 \[32, 32, 4\], not a colour map", True),
    ("a latent that is no latent", _changed("frozen", _tensor("latent", torch.zeros(4, 4, 4))),
     r"its latent is F32 \[4, 4, 4\], not a floating-point \[1, channels, height, width\] \(or \[1, channels, 1, "
     r"height, width\]\) latent", True),
    ("a video latent of two frames", _changed("frozen", _tensor("latent", torch.zeros(1, 4, 2, 4, 4))),
     r"its latent is F32 \[1, 4, 2, 4, 4\], not a floating-point", True),
    ("an integer latent", _changed("frozen", _tensor("latent", lambda x: x.long())),
     r"its latent is I64 \[1, 4, 4, 4\], not a floating-point", True),
    ("no latent", _changed("frozen", _tensor("latent", None)), r"it has no 'latent' tensor", True),
    ("features that fit no grid of the latent", _changed(
        "features", _tensor("features.1.output.1.0.style", torch.zeros(1, 15, 8, dtype=torch.float16))),
     r"feature 'features\.1\.output\.1\.0\.style' has 15 tokens, which is no attention grid of its 8 x 8 latent", True),
    ("features of another dtype than its metadata", _changed(
        "features", _tensor("features.1.output.1.0.style", lambda x: x.float())),
     r"feature 'features\.1\.output\.1\.0\.style' is F32 \[1, 16, 8\], not F16 \[1, tokens, channels\]", True),
    ("features at a step the inversion has not", _changed(
        "features", _rename("features.1.output.1.0.style", "features.2.output.1.0.style")),
     r"its features are not those of a 2-step inversion at its 1 blocks: missing features\.1\.output\.1\.0\.style; "
     r"not expected: features\.2\.output\.1\.0\.style", True),
    ("'recompute' storage with features", _changed("features", _set(storage="recompute")),
     r"its metadata says 'recompute' storage \(latents only\), but it holds features", True),
    ("'memory' storage without features", _changed("frozen", _set(storage="memory")),
     r"its metadata says 'memory' storage, but it holds no features", True),
    ("a NaN in its latent", _changed("frozen", _tensor("latent", _nan)),
     r"1 tensor\(s\) hold NaN or infinity \(latent\): the file is damaged", False),
    ("a grid that does not hold its features", _changed(
        "features", _tensor("grid.output.1.0.style", torch.tensor([3, 3]))),
     r"grid 'grid\.output\.1\.0\.style' is \[3, 3\], which does not hold the 16 tokens of its features", False),
]


@pytest.mark.parametrize("case, make, message, from_header", CASES, ids=[case[0] for case in CASES])
def test_a_damaged_or_foreign_style_file_gets_a_clear_error(style_reuse, features_file, frozen_file, tmp_path, case, make,
                                                            message, from_header):
    path = tmp_path / "library" / "shared.safetensors"
    path.parent.mkdir()
    make(path, {"frozen": frozen_file, "features": features_file})
    expected = r"^style file 'library/shared\.safetensors': " + message
    with pytest.raises(style_reuse.StyleFileError, match=expected):
        style_reuse.load_style(str(path), "library/shared.safetensors")
    if from_header:   # what the node says when the prompt is queued, before anything runs
        with pytest.raises(style_reuse.StyleFileError, match=expected):
            style_reuse.check_style_file(str(path), "library/shared.safetensors")
    else:
        style_reuse.check_style_file(str(path), "library/shared.safetensors")


def test_the_valid_files_of_the_table_load(style_reuse, features_file, frozen_file):
    """The bases the cases are made from are good files: each case's error is its change's."""
    style, map_image = style_reuse.load_style(str(features_file))
    assert style.storage == "memory" and style.bank.grid(("output", 1, 0), "style_map") == (4, 4)
    assert map_image.shape == (64, 64, 3)
    style, map_image = style_reuse.load_style(str(frozen_file))
    assert style.steps == frozen.STEPS and style.bank is None and sorted(style.trajectory) == [1, 251, 501, 751, 999]


# --------------------------------------------------------------------------------- fuzzing
@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _load_or_refuse(style_reuse, path):
    """Loading ``path`` gives a style or a StyleFileError naming it: never another exception."""
    try:
        return style_reuse.load_style(str(path), "fuzzed.safetensors")
    except style_reuse.StyleFileError as e:
        assert str(e).startswith("style file 'fuzzed.safetensors': "), e
        return None


_GOOD_METADATA = {"format": "scsa-style-inversion/1", "steps": "4", "storage": "recompute",
                  "blocks": '["output.0.0", "output.1.0"]', "feature_dtype": ""}
_METADATA_VALUES = st.one_of(st.text(max_size=12), st.sampled_from(
    list(_GOOD_METADATA.values()) + ["scsa-style-inversion/2", "flow", "ddim", "scsa-style-inversion/3",
                                     "scsa-style-inversion/0", "scsa-style-inversion/",
                                     "0", "-4", "4.0", "١", "1001", "memory", "offload", "[]", '["output"]', "{}",
                                     '["output.0.0"', "float16", "Tensor", "float99"]))


@settings(max_examples=60, deadline=None)
@given(metadata=st.dictionaries(st.one_of(st.sampled_from(sorted(_GOOD_METADATA) + ["parameterisation", "refine_steps"]),
                                          st.text(max_size=6)),
                                _METADATA_VALUES, max_size=7),
       keep=st.sets(st.sampled_from(sorted(_GOOD_METADATA))))
def test_fuzzed_metadata_loads_or_gets_a_clear_error(style_reuse, fuzz_folder, frozen_file, metadata, keep):
    metadata = dict(metadata, **{key: _GOOD_METADATA[key] for key in keep})
    tensors, _ = _contents(frozen_file)
    path = fuzz_folder / "metadata.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    loaded = _load_or_refuse(style_reuse, path)
    if loaded is not None:   # only the metadata today's code writes is accepted
        assert {key: metadata[key] for key in _GOOD_METADATA} == _GOOD_METADATA


_NAMES = st.one_of(st.text(alphabet="trajectoryfeaturesgridstylemapoutpin._0123456789", max_size=40), st.sampled_from([
    "latent", "map_latent", "map_image", "trajectory.1.style", "trajectory.999.style_map", "trajectory.1.2.style",
    "trajectory..style", "features.1.output.1.0.style", "features.1.output.1.style", "features.1.style",
    "grid.output.1.0.style", "grid.output.1.0", "trajectory.00001.style", "trajectory.1.style.style"]))


@settings(max_examples=60, deadline=None)
@given(base=st.sampled_from(["frozen", "features"]), renames=st.lists(st.tuples(st.integers(0, 64), _NAMES),
                                                                     min_size=1, max_size=3))
def test_fuzzed_tensor_names_load_or_get_a_clear_error(style_reuse, features_file, frozen_file, fuzz_folder, base,
                                                       renames):
    tensors, metadata = _contents(frozen_file if base == "frozen" else features_file)
    for index, name in renames:
        old = sorted(tensors)[index % len(tensors)]
        tensors[name] = tensors.pop(old)
    path = fuzz_folder / "names.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    _load_or_refuse(style_reuse, path)


_SIZES = st.integers(-2, 70)


@settings(max_examples=60, deadline=None)
@given(entries=st.dictionaries(st.sampled_from(["latent", "map_latent", "trajectory.1.style", "__metadata__"]),
                               st.fixed_dictionaries({
                                   "dtype": st.one_of(st.sampled_from(["F32", "F16", "U8", "I64", "F99", "f32", ""]),
                                                      st.integers()),
                                   "shape": st.one_of(st.lists(_SIZES, max_size=4), st.text(max_size=3)),
                                   "data_offsets": st.lists(_SIZES, min_size=0, max_size=3)}), max_size=3),
       data=st.binary(max_size=80))
def test_fuzzed_headers_load_or_get_a_clear_error(style_reuse, fuzz_folder, entries, data):
    path = fuzz_folder / "header.safetensors"
    path.write_bytes(_raw(entries, data))
    _load_or_refuse(style_reuse, path)


# ----------------------------------------------------------------------------------- saving
def test_saving_never_overwrites_a_file(style_reuse, frozen_file, tmp_path):
    path = tmp_path / "kept.safetensors"
    shutil.copyfile(frozen_file, path)
    style, map_image = style_reuse.load_style(str(path))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="kept.safetensors exists already; it is never overwritten"):
        style_reuse.save_style(str(path), style, map_image)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["kept.safetensors"]
    style_reuse.save_style(str(tmp_path / "again.safetensors"), style, map_image)
    again, again_map = style_reuse.load_style(str(tmp_path / "again.safetensors"))
    assert torch.equal(again.trajectory[999]["style"], style.trajectory[999]["style"])
    assert torch.equal(again_map, map_image)


def _files(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("stop", ["Cancel", "a crash"])
def test_a_save_stopped_midway_leaves_no_file(comfy, frozen_checkpoint, frozen_images, style_folder, monkeypatch,
                                             stop):
    import comfy.model_management as mm
    files = pack_module("nodes/safetensors_file.py")
    real_save_file = files.save_file

    def stopped_midway(tensors, path, metadata=None):
        real_save_file(tensors, path, metadata=metadata)
        with open(path, "r+b") as written:   # half of it is on the disk when the stop comes
            written.truncate(written.seek(0, 2) // 2)
        if stop == "Cancel":
            mm.interrupt_current_processing(True)   # what the Cancel button does
            mm.throw_exception_if_processing_interrupted()
        raise OSError(28, "No space left on device")

    prompt = _save_prompt(frozen.style_prompt(frozen_checkpoint, frozen_images), f"stopped_{stop[-5:]}")
    monkeypatch.setattr(files, "save_file", stopped_midway)
    try:
        with pytest.raises(PromptError, match=None if stop == "Cancel" else "No space left on device"):
            comfy.run_prompt(prompt, outputs=["save_style"])
    finally:
        mm.interrupt_current_processing(False)
    events = [event for event, data in comfy.last_result.messages
              if event in ("execution_interrupted", "execution_error") and data.get("node_id") == "save_style"]
    assert events == ["execution_interrupted" if stop == "Cancel" else "execution_error"]
    assert _files(style_folder) == [], "a stopped save left a file"
    monkeypatch.setattr(files, "save_file", real_save_file)
    comfy.run_prompt(prompt, outputs=["save_style"])
    assert _files(style_folder) == [f"stopped_{stop[-5:]}_00001.safetensors"]


def test_a_save_takes_the_next_number_when_its_name_was_taken_meanwhile(comfy, frozen_checkpoint, frozen_images,
                                                                        style_folder, frozen_file, monkeypatch):
    shutil.copyfile(frozen_file, style_folder / "race_00001.safetensors")
    before = (style_folder / "race_00001.safetensors").read_bytes()
    real = comfy.folder_paths.get_save_image_path

    def scanned_before_the_other_save(prefix, folder, *args, **kwargs):
        found = real(prefix, folder, *args, **kwargs)
        return found[:2] + (1,) + found[3:]   # the number the other save has taken since
    monkeypatch.setattr(comfy.folder_paths, "get_save_image_path", scanned_before_the_other_save)
    comfy.run_prompt(_save_prompt(frozen.style_prompt(frozen_checkpoint, frozen_images), "race"),
                     outputs=["save_style"])
    assert _files(style_folder) == ["race_00001.safetensors", "race_00002.safetensors"]
    assert (style_folder / "race_00001.safetensors").read_bytes() == before


# ------------------------------------------------------------------- what a user sees in ComfyUI
@pytest.mark.parametrize("case, message", [
    ("an interrupted copy", r"style_file - style file 'shared/damaged\.safetensors': the file is cut off: its "
                            r"tensors need 6144 bytes after the header, but only 5144 follow"),
    ("a newer format", r"style_file - style file 'shared/damaged\.safetensors': an SCSA style inversion of a newer "
                       r"format \(scsa-style-inversion/3\) .*: update the SCSA node pack to load it"),
    ("no steps", r"style_file - style file 'shared/damaged\.safetensors': its metadata has no 'steps'"),
])
def test_a_damaged_style_file_is_refused_when_the_prompt_is_queued(comfy, frozen_checkpoint, frozen_images,
                                                                   style_folder, features_file, frozen_file, case,
                                                                   message):
    (style_folder / "shared").mkdir(exist_ok=True)
    path = style_folder / "shared" / "damaged.safetensors"
    path.unlink(missing_ok=True)
    next(make for name, make, *_ in CASES if name == case)(path, {"frozen": frozen_file, "features": features_file})
    with pytest.raises(PromptError, match=r"prompt failed validation: .*" + message) as refused:
        comfy.run_prompt(_load_prompt(frozen.style_prompt(frozen_checkpoint, frozen_images),
                                      "shared/damaged.safetensors"), outputs=["sample"])
    assert "load_style" in refused.value.details["node_errors"]


def test_a_style_file_deleted_between_queue_and_run_gets_a_clear_error(comfy, frozen_checkpoint, frozen_images,
                                                                       style_folder, frozen_file, monkeypatch):
    path = style_folder / "gone.safetensors"
    shutil.copyfile(frozen_file, path)
    real = comfy.validate

    def validate_then_delete(*args, **kwargs):
        targets = real(*args, **kwargs)
        path.unlink()   # the user tidies the library while the prompt waits in the queue
        return targets
    monkeypatch.setattr(comfy, "validate", validate_then_delete)
    comfy.reset_cache()
    with pytest.raises(PromptError, match=r"node load_style \(SCSALoadStyleInversion\) failed: \S*StyleFileError: "
                                          r"style file 'gone\.safetensors': the file is gone \(deleted or moved "
                                          r"after the prompt was queued\?\)"):
        comfy.run_prompt(_load_prompt(frozen.style_prompt(frozen_checkpoint, frozen_images), "gone.safetensors"),
                         outputs=["sample"])


def test_every_format_up_to_todays_has_a_reader(style_reuse):
    """A newer format must keep the readers of the older ones: libraries outlive versions."""
    assert sorted(style_reuse._READERS) == list(range(1, style_reuse.FORMAT_VERSION + 1))
    assert style_reuse.FILE_FORMAT == f"scsa-style-inversion/{style_reuse.FORMAT_VERSION}"
