"""The example inputs the repository ships (workflows/inputs/, painted by
scripts/make_example_inputs.py) and how the pack hands them to ComfyUI.

- the committed PNGs decode to exactly the pixels the script paints now, stay small, and the
  content's and the first style's maps share their region colours (the labelling the nodes use
  pairs every region);
- the second style's map shares only part of the content's regions: labelled jointly, it has some
  of the content's labels, lacks one and has one the content lacks (several styles by region);
- the paintings look painted: their regions carry other colours and more brush texture than the
  photo's, so a user sees a style being transferred, and the two styles differ in colour;
- every image the templates load is one of them;
- nodes/example_inputs.py copies them into an input folder and never replaces a user's file;
- through a real ComfyUI server (each version the suite runs on): after start-up the files are
  in the server's input folder and offered by Load Image, a user's file of the same name is
  untouched, and a template's API twin, changed only in checkpoint and steps, runs on them.
"""
from __future__ import annotations

import importlib.util
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import workflow_inputs as wi
from scripts import comfyui_runtime as rt
from scripts import make_example_inputs as examples
from scripts import make_workflows as mw
from scsa_core.labels import label_color_maps, labels_from_color_maps

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_TOTAL_BYTES = 1_600_000    # the six files together; the registry archive carries them
LOADERS = ("LoadImage", "SCSALoadSemanticMap")


def _installer():
    """nodes/example_inputs.py, loaded from its file: imported as ``nodes.example_inputs`` it
    would clash with ComfyUI's own top-level ``nodes`` module when ComfyUI runs in this process."""
    spec = importlib.util.spec_from_file_location("scsa_example_inputs_under_test",
                                                  REPO_ROOT / "nodes" / "example_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the files
def test_committed_files_are_what_the_script_paints():
    painted = examples.render()
    assert sorted(painted) == sorted(examples.EXAMPLE_FILES)
    assert set(examples.ROLE_FILES.values()) < set(painted)
    assert {"scsa_example_style2.png", "scsa_example_style2_map.png"} <= set(painted)
    assert examples.stale_files() == [], "run: .venv/bin/python scripts/make_example_inputs.py"
    total = 0
    for name, pixels in painted.items():
        path = examples.OUT_DIR / name
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (examples.SIZE, examples.SIZE)), name
        assert np.array_equal(examples.read(path), pixels), name
        total += path.stat().st_size
    assert total < MAX_TOTAL_BYTES, f"the example inputs take {total} bytes"


def test_the_check_notices_a_changed_pixel(tmp_path):
    """stale_files compares pixels: one changed pixel is reported, a re-encoded PNG is not."""
    examples.write(tmp_path)
    assert examples.stale_files(tmp_path) == []
    name = examples.ROLE_FILES["style_map"]
    pixels = examples.read(tmp_path / name).copy()
    Image.fromarray(pixels).save(tmp_path / name, compress_level=1)     # other bytes, same pixels
    assert examples.stale_files(tmp_path) == []
    pixels[7, 9] = (1, 2, 3)
    Image.fromarray(pixels).save(tmp_path / name)
    assert examples.stale_files(tmp_path) == [f"{tmp_path / name} differs from what "
                                              "scripts/make_example_inputs.py paints"]


def test_the_maps_share_their_regions():
    images = {role: examples.read(examples.OUT_DIR / name) for role, name in examples.ROLE_FILES.items()}
    labels = labels_from_color_maps(images["content_map"], images["style_map"])
    palette = [tuple(c) for c in labels.palette.tolist()]
    assert sorted(palette) == sorted(examples.REGIONS.values())
    assert labels.matched.all(), "every region must occur in both maps"
    for side in ("content", "style"):
        found = labels.palette.numpy()[getattr(labels, side).numpy()]
        assert np.array_equal(found, images[f"{side}_map"]), f"{side}: a pixel got another region's label"
    # two compositions, not one map twice
    assert (images["content_map"] != images["style_map"]).any(axis=-1).mean() > 0.1


def test_the_second_style_shares_part_of_the_contents_regions():
    """Content, style and style2 maps labelled jointly (as the several-styles nodes do): style2
    shares some of the content's regions, lacks one (a content region only the first style can
    give) and has one the content lacks (a style region no content pixel asks for)."""
    maps = {name: examples.read(examples.OUT_DIR / examples.file_name(name, True))
            for name in ("content", "style", "style2")}
    label_maps, palette = label_color_maps(maps)
    palette = [tuple(c) for c in palette.tolist()]
    assert sorted(palette) == sorted(examples.ALL_REGIONS.values())
    for (name, pixels), labels in zip(maps.items(), label_maps):
        assert np.array_equal(np.asarray(palette, dtype=np.uint8)[labels.numpy()], pixels), \
            f"{name}: a pixel got another region's label"
    content, style, style2 = (set(np.unique(labels.numpy()).tolist()) for labels in label_maps)
    assert content & style2, "style2 shares no region with the content"
    assert content - style2, "style2 has every content region"
    assert style2 - content, "style2 has no region the content lacks"
    assert content <= style | style2, "a content region is in neither style"
    # as the script names them: sky, sun and meadow shared, no mountains, a lake
    name_of = {colour: name for name, colour in examples.ALL_REGIONS.items()}
    assert {name_of[palette[i]] for i in content & style2} == {"sky", "sun", "meadow"}
    assert {name_of[palette[i]] for i in content - style2} == {"mountains"}
    assert {name_of[palette[i]] for i in style2 - content} == {"lake"}


def _texture(pixels: np.ndarray, inside: np.ndarray, block: int = 4) -> float:
    """Texture at brush-stroke scale: the grey image averaged over ``block`` x ``block`` tiles
    (pixel noise such as film grain averages out), then the mean absolute difference between
    horizontally adjacent tiles that lie wholly inside the region. pixels: ``[H, W, 3]``,
    inside: bool ``[H, W]``, H and W multiples of ``block``."""
    h, w = inside.shape
    grey = pixels.astype(np.float64).mean(axis=-1).reshape(h // block, block, w // block, block).mean(axis=(1, 3))
    tiles = inside.reshape(h // block, block, w // block, block).all(axis=(1, 3))
    both = tiles[:, 1:] & tiles[:, :-1]
    return float(np.abs(np.diff(grey, axis=1))[both].mean())


@pytest.mark.parametrize("painting", ["style", "style2"])
def test_the_painting_looks_painted(painting):
    content = examples.EXAMPLES["content"]
    style = examples.EXAMPLES[painting]
    content_px, style_px = content.image(), style.image()
    content_labels, style_labels = content.layout.labels(), style.layout.labels()
    for index, region in enumerate(examples.REGION_NAMES):
        c_in, s_in = content_labels == index, style_labels == index
        if not (c_in.any() and s_in.any()):    # style2 has no mountains, the content no lake
            assert painting != "style" or not (c_in.any() or s_in.any()), f"{region} is in one picture only"
            continue
        c_mean, s_mean = content_px[c_in].mean(axis=0), style_px[s_in].mean(axis=0)
        assert np.abs(c_mean - s_mean).max() > 25, f"{region}: the painting's colours are the photo's"
        assert _texture(style_px, s_in) > 1.3 * _texture(content_px, c_in), f"{region}: no brush texture"
        # a painted region is not a flat fill: the map's colour is not the image's colour
        assert style_px[s_in].std(axis=0).min() > 8, f"{region} is flat in the painting"


def test_the_two_styles_differ():
    """Two styles to pick from per region are worth it only if they look different: in every
    region both have, the mean colours are far apart, and style2's lake is not flat either."""
    first, second = examples.EXAMPLES["style"], examples.EXAMPLES["style2"]
    first_px, second_px = first.image(), second.image()
    first_labels, second_labels = first.layout.labels(), second.layout.labels()
    shared = 0
    for index, region in enumerate(examples.REGION_NAMES):
        a, b = first_labels == index, second_labels == index
        if b.any():
            assert second_px[b].std(axis=0).min() > 8, f"{region} is flat in style2"
        if a.any() and b.any():
            shared += 1
            assert np.abs(first_px[a].mean(axis=0) - second_px[b].mean(axis=0)).max() > 25, \
                f"{region}: style2 has the first style's colours"
    assert shared >= 2


def test_the_templates_load_the_shipped_files():
    shipped = set(examples.EXAMPLE_FILES)
    assert set(mw.IMAGES.values()) == shipped and mw.IMAGES.items() >= examples.ROLE_FILES.items()
    for name in wi.WORKFLOWS:
        ui, api = wi.committed(name)
        loaded = {node["inputs"]["image"] for node in api.values() if node["class_type"] in LOADERS}
        assert loaded and loaded <= shipped, f"{name} loads {loaded}"
        ui_loaded = {n["widgets_values"][0] for n in ui["nodes"] if n["type"] in LOADERS}
        assert ui_loaded == loaded, name


# ------------------------------------------------------------------------ the installer
def test_installer_copies_and_never_overwrites(tmp_path, caplog):
    installer = _installer()
    shipped = installer.example_files()
    assert sorted(p.name for p in shipped) == sorted(examples.EXAMPLE_FILES)

    fresh = tmp_path / "fresh"
    assert installer.install_examples(fresh) == {p.name: "copied" for p in shipped}
    for p in shipped:
        assert (fresh / p.name).read_bytes() == p.read_bytes()
    assert installer.install_examples(fresh) == {p.name: "present" for p in shipped}

    mine = tmp_path / "user"
    mine.mkdir()
    user_file = mine / examples.ROLE_FILES["style"]
    user_file.write_bytes(b"my own picture")
    with caplog.at_level(logging.INFO, logger="scsa"):
        outcomes = installer.install_examples(mine)
    assert outcomes[user_file.name] == "kept"
    assert user_file.read_bytes() == b"my own picture"
    assert any(user_file.name in r.getMessage() and "left as it is" in r.getMessage() for r in caplog.records)
    assert sum(o == "copied" for o in outcomes.values()) == len(shipped) - 1


def test_installer_reports_instead_of_raising(tmp_path):
    installer = _installer()
    blocked = tmp_path / "not_a_folder"
    blocked.write_bytes(b"a file where the input folder should be")
    outcomes = installer.install_examples(blocked)
    assert outcomes and all(o.startswith("failed: ") for o in outcomes.values())


# ------------------------------------------------------------------------- a real server
def _user_style_image() -> bytes:
    """A valid picture of the user's, another than the example (the example style, flipped)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(examples.role_images()["style"][:, ::-1])).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_a_started_server_has_the_examples_and_keeps_the_users_file(comfyui_dir, models_dir, tiny_checkpoint,
                                                                    tmp_path):
    workdir = tmp_path / "comfy"
    (workdir / "input").mkdir(parents=True)
    user_file = workdir / "input" / examples.ROLE_FILES["style"]
    user_bytes = _user_style_image()
    user_file.write_bytes(user_bytes)

    with rt.ComfyServer(models_dir=models_dir, comfy_dir=comfyui_dir, workdir=workdir) as srv:
        for name in examples.EXAMPLE_FILES:
            path = srv.input_dir / name
            assert path.is_file(), f"{name} is not in the server's input folder"
            users = name == user_file.name
            expected = user_bytes if users else (examples.OUT_DIR / name).read_bytes()
            assert path.read_bytes() == expected, \
                f"{name}: {'the user file was replaced' if users else 'not the shipped file'}"
        assert "left as it is" in srv.log_tail(400_000), "no log line about the user's file"
        # what the Load Image combo offers
        options = srv.get_json("/object_info/LoadImage")["LoadImage"]["input"]["required"]["image"]
        listed = options[0] if isinstance(options[0], list) else options[1]["options"]
        assert set(examples.EXAMPLE_FILES) <= set(listed)

        # the SCSA template as a new user runs it: only the checkpoint (none ships) and the steps
        _, api = wi.committed("scsa_sd15_color_maps")
        entry = srv.wait_for(srv.queue_prompt(wi.for_test_api(api, tiny_checkpoint.name, steps=2)), 400)
        files = wi.saved_images(entry, srv.output_dir)
        assert len(files) == 1, json.dumps(entry["outputs"])[:2000]
        pixels = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float64)
        assert pixels.shape == (examples.SIZE, examples.SIZE, 3)
        # random weights at 512 px give a faint picture (std ~0.5 of 255): not constant is the bar
        assert pixels.std() > 0.1, f"{files[0]} is constant"
