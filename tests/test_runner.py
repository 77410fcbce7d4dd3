"""scripts/run_workflow.py (the headless runner) and the UI -> API converter behind it."""
from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import workflow_inputs as wi
from scripts import make_workflows as mw
from scripts import run_workflow as rw
from scripts import workflow_format as wf

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNNER = REPO_ROOT / "scripts" / "run_workflow.py"


def run(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO_ROOT), env=full_env)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    return wi.write_pair_files(tmp_path_factory.mktemp("pair"), "p29")


# ----------------------------------------------------------------------------- with a server
def test_runs_a_ui_workflow_against_a_server(server, tiny_checkpoint, pair, tmp_path):
    out = tmp_path / "out"
    proc = run([str(mw.paths("scsa_sd15_color_maps")["ui"]), "--server", server,
                "--checkpoint", tiny_checkpoint.name, "--content", str(pair["content"]),
                "--style", str(pair["style"]), "--content-map", str(pair["content_map"]),
                "--style-map", str(pair["style_map"]), "--steps", str(wi.STEPS), "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Invert Content & Style (SCSA)" in proc.stdout and f"step {wi.STEPS}/{wi.STEPS}" in proc.stdout, \
        "no per-node progress shown"
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["scsa_sd15_color_maps_p29.png"]
    wi.check_image(files[0])


def test_batch_over_a_folder_of_pairs(server, tiny_checkpoint, tmp_path):
    pairs = tmp_path / "pairs"
    wi.write_pair_files(pairs / "a", "a", size=96)
    wi.write_pair_files(pairs / "b", "b", size=96, synthetic=True)
    out = tmp_path / "out"
    proc = run([str(mw.paths("styleid_sd15")["api"]), "--server", server, "--checkpoint", tiny_checkpoint.name,
                "--pairs", str(pairs), "--size", str(wi.SIZE), "--steps", "3", "--out", str(out), "--quiet"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["styleid_sd15_a.png", "styleid_sd15_b.png"]
    for f in files:
        wi.check_image(f, size=wi.SIZE)   # resized from 96 px by --size


REUSED = "reusing the inversion of style"   # nodes/pipeline.py logs it (INFO, logger "scsa")


def _contents_folder(folder: Path, size: int = wi.SIZE) -> dict[str, Path]:
    """Two different contents of one size with their maps (one <name>_sem.png, one <name>_map.png)
    and, beside the folder, one style and map of ANOTHER size, flipped: an image no other test
    inverts, so the server's style cache cannot hold it before the test."""
    images = wi.pair_images(size)
    mirror = {role: image.transpose(Image.FLIP_LEFT_RIGHT) for role, image in images.items()}
    folder.mkdir(parents=True)
    images["content"].save(folder / "a.png")
    images["content_map"].save(folder / "a_sem.png")
    mirror["content"].save(folder / "b.jpg", quality=95)
    mirror["content_map"].save(folder / "b_map.png")
    style_size = size - 16
    style = images["style"].transpose(Image.FLIP_TOP_BOTTOM).resize((style_size, style_size), Image.LANCZOS)
    style_map = images["style_map"].transpose(Image.FLIP_TOP_BOTTOM).resize((style_size, style_size), Image.NEAREST)
    paths = {"style": folder.parent / "painting.png", "style_map": folder.parent / "painting_sem.png"}
    style.save(paths["style"])
    style_map.save(paths["style_map"])
    return paths


def test_folder_of_contents_against_one_style_reuses_its_inversion(comfy_server, tiny_checkpoint, tmp_path, capsys,
                                                                   monkeypatch):
    """--contents DIR --style IMG --style-map MAP: one prompt per content on the same server;
    the style keeps its own size, so the server inverts it for the first content only (its log
    says so once, in the second prompt), and the runner sends it once."""
    sent = []
    upload = rw.Client.upload_image
    monkeypatch.setattr(rw.Client, "upload_image",
                        lambda client, data, filename: sent.append(filename) or upload(client, data, filename))
    style = _contents_folder(tmp_path / "contents")
    out = tmp_path / "out"
    log_start = comfy_server.log_path.stat().st_size
    code = rw.main([str(mw.paths("scsa_sd15_color_maps")["api"]), "--server", comfy_server.base_url,
                    "--checkpoint", tiny_checkpoint.name, "--contents", str(tmp_path / "contents"),
                    "--style", str(style["style"]), "--style-map", str(style["style_map"]),
                    "--steps", str(wi.STEPS), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    with open(comfy_server.log_path, "rb") as f:
        f.seek(log_start)
        log = f.read().decode("utf-8", "replace")
    assert code == 0, captured.out[-3000:] + captured.err[-3000:] + log[-3000:]
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["scsa_sd15_color_maps_a_painting.png", "scsa_sd15_color_maps_b_painting.png"]
    for f in files:
        wi.check_image(f)   # the contents' size, not the style's
    # (random weights decode to near black whatever the content: compare what went up instead)
    uploaded = {name: np.asarray(Image.open(comfy_server.input_dir / f"scsa_run_{name}.png"))
                for name in ("a_painting_content", "b_painting_content", "painting_style", "painting_style_map")}
    assert np.abs(uploaded["a_painting_content"].astype(int) - uploaded["b_painting_content"]).mean() > 10
    assert uploaded["painting_style"].shape == (wi.SIZE - 16, wi.SIZE - 16, 3), "the style keeps its own size"
    assert sorted(sent) == sorted(f"scsa_run_{name}.png" for name in (
        "a_painting_content", "a_painting_content_map", "b_painting_content", "b_painting_content_map",
        "painting_style", "painting_style_map")), sent
    prompts = log.split("Prompt executed in")
    assert len(prompts) == 3, log[-3000:]
    assert [part.count(REUSED) for part in prompts] == [0, 1, 0], log[-3000:]
    assert "[a_painting] took" in captured.out and "[b_painting] took" in captured.out
    assert "2 content(s) against painting.png: the first took" in captured.out
    assert "the other 1:" in captured.out


def test_contents_without_maps_are_refused_before_anything_runs(server, tiny_checkpoint, tmp_path, capsys):
    style = _contents_folder(tmp_path / "contents")
    (tmp_path / "contents" / "b_map.png").unlink()
    (tmp_path / "contents" / "c.webp").write_bytes((tmp_path / "contents" / "a.png").read_bytes())
    out = tmp_path / "out"
    code = rw.main([str(mw.paths("scsa_sd15_color_maps")["api"]), "--server", server,
                    "--checkpoint", tiny_checkpoint.name, "--contents", str(tmp_path / "contents"),
                    "--style", str(style["style"]), "--style-map", str(style["style_map"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "needs a semantic map per content; none beside b.jpg, c.webp" in err
    assert "<name>_sem.png or <name>_map.png" in err
    assert not out.exists(), "nothing may run before every content has its map"
    # the same contents without their maps suit a workflow without maps (StyleID)
    a = rw.parse_args(["--contents", str(tmp_path / "contents"), "--style", str(style["style"])])
    jobs = rw.plan_jobs(a, print)
    rw.check_jobs(jobs, rw.image_roles(wi.committed("styleid_sd15")[1]), a, print)
    # and an SCSA workflow needs the style's map too
    with pytest.raises(rw.RunError, match="needs style_map too: pass --style-map IMG"):
        rw.check_jobs(jobs[:1], rw.image_roles(wi.committed("scsa_sd15_color_maps")[1]), a, print)


def test_explains_a_missing_checkpoint(server, pair, tmp_path, tiny_checkpoint):
    proc = run(["--server", server, "--checkpoint", "no_such_model.safetensors", "--content", str(pair["content"]),
                "--style", str(pair["style"]), "--content-map", str(pair["content_map"]),
                "--style-map", str(pair["style_map"]), "--out", str(tmp_path)])
    assert proc.returncode == 2
    assert "no_such_model.safetensors" in proc.stderr and tiny_checkpoint.name in proc.stderr
    assert "models/checkpoints" in proc.stderr and "--checkpoint" in proc.stderr
    assert not list(tmp_path.glob("*.png"))


def test_asks_for_missing_maps(server, pair, tmp_path, tiny_checkpoint):
    proc = run(["--server", server, "--checkpoint", tiny_checkpoint.name, "--content", str(pair["content"]),
                "--style", str(pair["style"]), "--out", str(tmp_path)])
    assert proc.returncode == 2
    assert "--content-map IMG --style-map IMG" in proc.stderr


@pytest.mark.slow
def test_no_arguments_runs_the_example_on_an_embedded_server(tiny_checkpoint, tmp_path):
    """The README's main job, in short: no server, no checkpoint -> tiny random weights, said
    loudly; no images -> the shipped example inputs (no data set beside the repository needed)."""
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    out = tmp_path / "out"
    proc = run(["--models", str(empty_models), "--steps", "2", "--out", str(out)],
               env={"SCSA_SEM_PAIRS_DIR": str(tmp_path / "no_data_set_here")}, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "RANDOM-WEIGHT" in proc.stdout and "NOISE" in proc.stdout
    assert str(empty_models / "checkpoints") in proc.stdout, "the message must say which folder was searched"
    assert "v1-5-pruned-emaonly.safetensors" in proc.stdout
    assert "using the example images in workflows/inputs" in proc.stdout
    files = list(out.glob("*.png"))
    assert [f.name for f in files] == ["scsa_sd15_color_maps_example.png"]
    wi.check_image(files[0], size=rw.TINY_SIZE)


@pytest.mark.slow
def test_the_flux_workflow_runs_on_stand_ins_when_its_files_are_missing(tmp_path):
    """workflows/scsa_flux1.json with no Flux file anywhere: the runner says so loudly, runs the
    graph on the random-weight stand-ins (Load Diffusion Model -> the stand-in node, Load VAE
    and the text encoder loader -> stand-in files) and writes the image and, with
    --save-latents, the sampler's latent in ComfyUI's .latent format."""
    from safetensors.torch import load_file
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    out, latents = tmp_path / "out", tmp_path / "latents"
    proc = run([str(mw.paths("scsa_flux1")["ui"]), "--models", str(empty_models), "--steps", "2",
                "--out", str(out), "--save-latents", str(latents)], timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "RANDOM-WEIGHT flux1 stand-in" in proc.stdout and "NOISE" in proc.stdout
    for name in ("flux1-dev.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        assert name in proc.stdout, f"the warning must name the missing {name}"
    assert [f.name for f in out.glob("*.png")] == ["scsa_flux1_example.png"]
    saved = load_file(str(latents / "scsa_flux1_example.latent"))
    assert set(saved) == {"latent_tensor", "latent_format_version_0"}   # SaveLatent's format
    latent = saved["latent_tensor"]
    side = rw.TINY_SIZE // 8
    assert latent.shape == (1, 16, side, side) and latent.isfinite().all() and latent.std() > 0.1


# What each of the other DiT workflows loads (the banner must name every missing file) and the
# shape of the latent its sampler returns at the runner's stand-in size (Qwen-Image: 5-D, one frame).
DIT_WORKFLOWS = {
    "qwen_image": (("qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                    "qwen_image_vae.safetensors"), (1, 16, 1)),
    "z_image": (("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors"), (1, 16)),
    "sd35": (("sd3.5_large_fp8_scaled.safetensors",), (1, 16)),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(DIT_WORKFLOWS))
def test_a_dit_workflow_runs_on_stand_ins_when_its_files_are_missing(comfyui_dir, tmp_path, variant):
    """workflows/scsa_<variant>.json with none of its files anywhere: the runner names them and the
    folders searched, loudly, and runs the graph on the random-weight stand-in of that family
    (TinyRandomDiT; for SD3.5's Load Checkpoint also a Load CLIP and a Load VAE), writing the image
    and the sampler's latent. Where the family cannot run on this ComfyUI (Z-Image on 0.3.75), the
    run stops with SCSA's clear error (exit 2) and writes nothing."""
    from safetensors.torch import load_file
    name = f"scsa_{variant}"
    files, shape = DIT_WORKFLOWS[variant]
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    out, latents = tmp_path / "out", tmp_path / "latents"
    proc = run([str(mw.paths(name)["ui"]), "--models", str(empty_models), "--steps", "2",
                "--out", str(out), "--save-latents", str(latents)], timeout=400)
    assert f"RANDOM-WEIGHT {variant} stand-in" in proc.stdout and "NOISE" in proc.stdout, proc.stdout[-3000:]
    for file_name in files:
        assert file_name in proc.stdout, f"the warning must name the missing {file_name}"
    assert str(empty_models) in proc.stdout, "the warning must say which folders were searched"
    failure = wi.expected_failure(name, comfyui_dir)
    if failure is not None:
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "InjectionLost" in proc.stderr and failure in proc.stderr, proc.stderr[-3000:]
        assert not list(out.glob("*.png"))
        return
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert [f.name for f in out.glob("*.png")] == [f"{name}_example.png"]
    wi.check_image(out / f"{name}_example.png", size=rw.TINY_SIZE)
    latent = load_file(str(latents / f"{name}_example.latent"))["latent_tensor"]
    side = rw.TINY_SIZE // 8
    assert latent.shape == (*shape, side, side) and latent.isfinite().all() and latent.std() > 0.1


def test_each_dit_workflow_gets_its_own_stand_in(tmp_path):
    """dit_variant: the variant of every example workflow (None for the UNet and feed-forward
    ones), and of the other ways these models load; the SD3.5 Load Checkpoint becomes the stand-in
    node, its CLIP and VAE outputs re-pointed at an added Load CLIP and Load VAE."""
    expected = {"scsa_flux1": "flux1", "scsa_flux2": "flux2", "scsa_qwen_image": "qwen_image",
                "scsa_z_image": "z_image", "scsa_sd35": "sd35"}
    for name in wi.WORKFLOWS:
        ui, api = wi.committed(name)
        assert rw.dit_variant(rw.workflow_loaders(api)) == expected.get(name), name
        assert rw.dit_variant(rw.workflow_loaders(ui)) == expected.get(name), name
    triple = [("UNETLoader", {"unet_name": "sd3.5_medium.safetensors"}),
              ("TripleCLIPLoader", {"clip_name1": "clip_g.safetensors", "clip_name2": "clip_l.safetensors",
                                    "clip_name3": "t5xxl_fp16.safetensors"}), ("VAELoader", {"vae_name": "v.sft"})]
    assert rw.dit_variant(triple) == "sd35"
    assert rw.dit_variant([("CheckpointLoaderSimple", {"ckpt_name": "sd_xl_base_1.0.safetensors"})]) is None
    assert rw.dit_variant([("UNETLoader", {"unet_name": "x"}), ("CLIPLoader", {"clip_name": "y", "type": "wan"})]) is None

    files = {"vae": [tmp_path / "vae.safetensors"], "text_encoders": [tmp_path / "clip_l.safetensors"]}
    for path in (p for paths in files.values() for p in paths):
        path.write_bytes(b"")
    stand_in = rw.dit_stand_in("sd35", files, tmp_path / "models")
    _, api = wi.committed("scsa_sd35")
    ckpt = next(node_id for node_id, node in api.items() if node["class_type"] == "CheckpointLoaderSimple")
    stand_in.rewrite(api)
    assert api[ckpt] == {"class_type": "TinyRandomDiT", "inputs": {"variant": "sd35", "seed": 0},
                         "_meta": {"title": "Load Checkpoint"}}
    clip, vae = api[f"{ckpt}_standin_clip"], api[f"{ckpt}_standin_vae"]
    assert (clip["class_type"], clip["inputs"]) == ("CLIPLoader", {"clip_name": "clip_l.safetensors",
                                                                   "type": "stable_diffusion"})
    assert (vae["class_type"], vae["inputs"]) == ("VAELoader", {"vae_name": "vae.safetensors"})
    sources = [value for node in api.values() for value in node["inputs"].values() if isinstance(value, list)]
    assert [ckpt, 0] in sources and [f"{ckpt}_standin_clip", 0] in sources and [f"{ckpt}_standin_vae", 0] in sources
    assert not any(value[0] == ckpt and value[1] != 0 for value in sources)
    assert (tmp_path / "models" / "vae" / "vae.safetensors").is_symlink()


def test_saved_latents_tell_runs_apart(server, tiny_checkpoint, pair, tmp_path):
    """--save-latents: mirroring the style map changes the sampled latent, which is how runs on
    random weights (nearly flat 8-bit images) are compared."""
    from safetensors.torch import load_file
    mirrored = tmp_path / "mirrored_map.png"
    Image.open(pair["style_map"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    latents = {}
    for label, style_map in (("plain", pair["style_map"]), ("mirrored", mirrored)):
        folder = tmp_path / label
        proc = run(["--server", server, "--checkpoint", tiny_checkpoint.name, "--content", str(pair["content"]),
                    "--style", str(pair["style"]), "--content-map", str(pair["content_map"]),
                    "--style-map", str(style_map), "--steps", "2", "--size", str(wi.SIZE),
                    "--out", str(folder), "--save-latents", str(folder)])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        files = list(folder.glob("*.latent"))
        assert len(files) == 1, files
        latents[label] = load_file(str(files[0]))["latent_tensor"]
    assert latents["plain"].shape == (1, 4, wi.SIZE // 8, wi.SIZE // 8)
    assert not np.array_equal(latents["plain"].numpy(), latents["mirrored"].numpy())


# ----------------------------------------------------------------------------- pure helpers
def test_finds_pairs_and_image_roles(tmp_path):
    wi.write_pair_files(tmp_path / "x" / "7", "7")
    wi.write_pair_files(tmp_path / "y", "y")
    (tmp_path / "y" / "lonely_paint_sem.png").write_bytes((tmp_path / "y" / "y_paint_sem.png").read_bytes())
    pairs = rw.find_pairs(tmp_path)
    assert sorted(pairs) == ["7", "y"]
    assert pairs["7"]["style"] == tmp_path / "x" / "7" / "7_paint.jpg"
    for name in wi.WORKFLOWS:
        _, api = wi.committed(name)
        roles = rw.image_roles(api)
        assert {api[node]["inputs"]["image"] for node in roles.values()} == \
               {mw.IMAGES[role] for role in roles}
        four = {"content", "style", "content_map", "style_map"}
        expected = {"content", "style"} if name.startswith("styleid") else \
            four | {"style_2", "style_map_2"} if name == "scsa_two_styles" else four
        assert set(roles) == expected, name
    titled = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}, "_meta": {"title": "Style image"}},
              "2": {"class_type": "SCSALoadSemanticMap", "inputs": {"image": "b.png"}, "_meta": {"title": "Content"}}}
    assert rw.image_roles(titled) == {"style": "1", "content_map": "2"}


def test_finds_contents_and_keeps_the_style_size(tmp_path):
    """A folder of contents: images in name order, *_sem.png / *_map.png are maps (the first of
    them beside a content is its map), sub-folders are not searched; the style keeps its own size."""
    style = _contents_folder(tmp_path / "contents", size=wi.SIZE)
    folder = tmp_path / "contents"
    (folder / "a_map.png").write_bytes((folder / "a_sem.png").read_bytes())   # _sem.png wins
    (folder / "0.webp").write_bytes((folder / "a.png").read_bytes())          # no map: none
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.png").write_bytes((folder / "a.png").read_bytes())
    contents = rw.find_contents(folder)
    assert list(contents) == ["0", "a", "b"]
    assert contents["0"] == {"content": folder / "0.webp"}
    assert contents["a"] == {"content": folder / "a.png", "content_map": folder / "a_sem.png"}
    assert contents["b"] == {"content": folder / "b.jpg", "content_map": folder / "b_map.png"}

    a = rw.parse_args(["--contents", str(folder), "--style", str(style["style"]), "--style-map", str(style["style_map"])])
    jobs = rw.plan_jobs(a, print)
    assert [name for name, _ in jobs] == ["0_painting", "a_painting", "b_painting"]
    assert jobs[1][1] == {**contents["a"], **style}
    for size, content_px, style_px in ((None, wi.SIZE, wi.SIZE - 16), (32, 32, 32)):
        pngs = rw.prepare_images(jobs[1][1], size, own_style_size=True)
        sizes = {role: Image.open(io.BytesIO(data)).size for role, data in pngs.items()}
        assert sizes == {"content": (content_px,) * 2, "content_map": (content_px,) * 2,
                         "style": (style_px,) * 2, "style_map": (style_px,) * 2}
    pngs = rw.prepare_images(jobs[1][1], None)   # as for --pairs: everything at the content's size
    assert {Image.open(io.BytesIO(data)).size for data in pngs.values()} == {(wi.SIZE, wi.SIZE)}

    (folder / "a.jpg").write_bytes((folder / "b.jpg").read_bytes())
    with pytest.raises(rw.RunError, match=r"two contents named 'a'.*\(a\.jpg, a\.png\): rename one"):
        rw.find_contents(folder)


@pytest.mark.parametrize("extra, message", [
    (["--pairs", "DIR"], "leave out --pairs"),
    (["--content", "STYLE"], "leave out --content"),
    (["--content-map", "STYLE"], "leave out --content-map"),
    (["--swap"], "leave out --swap"),
])
def test_contents_refuses_other_image_sources(tmp_path, capsys, extra, message):
    style = _contents_folder(tmp_path / "contents")
    extra = [{"DIR": str(tmp_path), "STYLE": str(style["style"])}.get(x, x) for x in extra]
    code = rw.main(["--contents", str(tmp_path / "contents"), "--style", str(style["style"]), *extra,
                    "--out", str(tmp_path / "out")])
    assert code == 2
    assert f"--contents takes the contents (and their maps) from its folder: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_contents_needs_a_style_and_a_folder_with_contents(tmp_path, capsys):
    style = _contents_folder(tmp_path / "contents")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x_sem.png").write_bytes(style["style_map"].read_bytes())   # a map alone is no content
    for args, message in (
            (["--contents", str(tmp_path / "contents")], "--contents needs the one style to run them against: "
                                                          "--style IMG"),
            (["--contents", str(empty), "--style", str(style["style"])], f"no content images in {empty}"),
            (["--contents", str(tmp_path / "nowhere"), "--style", str(style["style"])], "is not a folder"),
            (["--contents", str(empty), "--style", str(tmp_path / "nothing.png")], "nothing.png does not exist")):
        assert rw.main([*args, "--out", str(tmp_path / "out")]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "out").exists()


DEFS = {
    "Loader": {"input": {"required": {"image": [["a.png", "b.png"], {"image_upload": True}]}},
               "input_order": {"required": ["image"]}, "output": ["IMAGE"], "output_name": ["IMAGE"]},
    "Noise": {"input": {"required": {"seed": ["INT", {"default": 0}], "mode": ["COMBO", {"options": ["x", "y"]}],
                                     "image": ["IMAGE", {}]},
                        "optional": {"strength": ["FLOAT", {"default": 0.5}]}},
              "input_order": {"required": ["seed", "mode", "image"], "optional": ["strength"]},
              "output": ["IMAGE"], "output_name": ["IMAGE"]},
    "Save": {"input": {"required": {"images": ["IMAGE", {}], "prefix": ["STRING", {"default": "out"}]}},
             "input_order": {"required": ["images", "prefix"]}, "output": [], "output_name": []},
}


def _graph(mode_of_noise: int = 0) -> dict:
    g = wf.Graph("t")
    load = g.add("Loader", (0, 0), image=wf.File("b.png"))
    noise = g.add("Noise", (300, 0), seed=7, mode="y", image=load[0])
    g.add("Save", (600, 0), images=noise[0], prefix="p")
    g.note("hello", (0, 300))
    ui = g.to_ui(DEFS)
    ui["nodes"][1]["mode"] = mode_of_noise
    return ui


def test_widget_layout_follows_the_frontend_rules():
    assert wf.widget_layout(DEFS["Loader"]) == [("image", "value"), ("image", "upload")]
    assert wf.widget_layout(DEFS["Noise"]) == [("seed", "value"), ("seed", "control"), ("mode", "value"),
                                               ("strength", "value")]
    ui = _graph()
    assert [n["widgets_values"] for n in ui["nodes"]] == [["b.png", "image"], [7, "fixed", "y", 0.5], ["p"], ["hello"]]
    assert [i["name"] for i in ui["nodes"][1]["inputs"]] == ["image", "seed", "mode", "strength"]
    assert ui["links"] == [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]]


def test_converter_handles_notes_bypass_mute_reroute_and_primitives():
    assert wf.ui_to_api(_graph(), DEFS) == {
        "1": {"inputs": {"image": "b.png"}, "class_type": "Loader", "_meta": {"title": "Loader"}},
        "2": {"inputs": {"seed": 7, "mode": "y", "image": ["1", 0], "strength": 0.5}, "class_type": "Noise",
              "_meta": {"title": "Noise"}},
        "3": {"inputs": {"images": ["2", 0], "prefix": "p"}, "class_type": "Save", "_meta": {"title": "Save"}}}
    bypassed = wf.ui_to_api(_graph(wf.MODE_BYPASS), DEFS)
    assert "2" not in bypassed and bypassed["3"]["inputs"]["images"] == ["1", 0]
    muted = wf.ui_to_api(_graph(wf.MODE_NEVER), DEFS)
    assert "2" not in muted and "images" not in muted["3"]["inputs"]

    ui = _graph()   # Loader -> Reroute -> Noise, and a primitive feeding Noise's seed
    ui["nodes"].append({"id": 9, "type": "Reroute", "pos": [0, 0], "size": [75, 26], "mode": 0,
                        "inputs": [{"name": "", "type": "*", "link": 1}],
                        "outputs": [{"name": "", "type": "IMAGE", "links": [3]}]})
    ui["nodes"].append({"id": 10, "type": "PrimitiveNode", "pos": [0, 0], "size": [75, 26], "mode": 0,
                        "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": [4]}],
                        "widgets_values": [123, "fixed"]})
    ui["links"][0][3] = 9
    ui["links"] += [[3, 9, 0, 2, 0, "IMAGE"], [4, 10, 0, 2, 1, "INT"]]
    ui["nodes"][1]["inputs"][0]["link"] = 3
    ui["nodes"][1]["inputs"][1]["link"] = 4
    api = wf.ui_to_api(ui, DEFS)
    assert api["2"]["inputs"]["image"] == ["1", 0] and api["2"]["inputs"]["seed"] == 123
    assert set(api) == {"1", "2", "3"}


# Noise as a later version of the node pack would define it: optional widgets appended, one
# followed by its "control after generate" widget, one by an upload button.
GROWN = {**DEFS, "Noise": {**DEFS["Noise"], "input": {
    "required": DEFS["Noise"]["input"]["required"],
    "optional": {**DEFS["Noise"]["input"]["optional"],
                 "jitter": ["INT", {"default": 3, "control_after_generate": True}],
                 "overlay": [["a.png", "b.png"], {"image_upload": True}],
                 "label": ["STRING", {"default": "new"}]}},
    "input_order": {"required": ["seed", "mode", "image"], "optional": ["strength", "jitter", "overlay", "label"]}}}


def test_converter_fills_optional_widgets_missing_at_the_end():
    """A file saved before optional widgets were appended to a node converts like the frontend
    loads it: the missing trailing widgets take their defaults."""
    assert wf.widget_layout(GROWN["Noise"])[4:] == [("jitter", "value"), ("jitter", "control"),
                                                    ("overlay", "value"), ("overlay", "upload"), ("label", "value")]
    today = wf.ui_to_api(_graph(), DEFS)
    ui = _graph()
    ui["nodes"][1]["widgets_values"] = [7, "fixed", "y"]   # saved before "strength" existed
    ui["nodes"][1]["inputs"] = [i for i in ui["nodes"][1]["inputs"] if i["name"] != "strength"]
    assert wf.ui_to_api(ui, DEFS) == today
    assert today["2"]["inputs"]["strength"] == 0.5   # Noise's default

    grown = {"seed": 7, "mode": "y", "image": ["1", 0], "strength": 0.5, "jitter": 3, "overlay": "a.png",
             "label": "new"}
    for saved in ([7, "fixed", "y"], [7, "fixed", "y", 0.5], [7, "fixed", "y", 0.5, 3],   # the last: no control
                  [7, "fixed", "y", 0.5, 3, "randomize", "a.png"]):                     # no upload button
        ui["nodes"][1]["widgets_values"] = list(saved)
        assert wf.ui_to_api(ui, GROWN)["2"]["inputs"] == grown, saved
    ui["nodes"][1]["widgets_values"] = [7, "fixed", "x", 0.25]
    assert wf.ui_to_api(ui, GROWN)["2"]["inputs"] == {**grown, "mode": "x", "strength": 0.25}
    # set_widget completes the list first, as the frontend would save it after loading
    wf.set_widget(ui, GROWN, 2, "label", "mine")
    assert ui["nodes"][1]["widgets_values"] == [7, "fixed", "x", 0.25, 3, "fixed", "a.png", "image", "mine"]


def test_converter_names_the_node_when_widgets_do_not_fit():
    ui = _graph()
    ui["nodes"][1]["widgets_values"] = [7, "fixed"]   # "mode" is required: no default is guessed
    with pytest.raises(wf.WorkflowError, match=r"node 2 \(Noise\).*2 widget values.*\['mode', 'strength'\] "
                                               r"are missing and \['mode'\] is required.*inputs changed"):
        wf.ui_to_api(ui, DEFS)
    ui["nodes"][1]["widgets_values"] = [7, "fixed", "y", 0.5, 1.0]   # more values than widgets
    with pytest.raises(wf.WorkflowError, match=r"node 2 \(Noise\).*5 widget values.*has 4 widgets.*inputs changed"):
        wf.ui_to_api(ui, DEFS)
    ui["nodes"][1]["widgets_values"] = [7, "fixed", "y"]   # the saved inputs still list "strength"
    with pytest.raises(wf.WorkflowError, match=r"node 2 \(Noise\).*saved inputs list the widget\(s\) \['strength'\]"):
        wf.ui_to_api(ui, DEFS)
    no_default = {**DEFS, "Noise": {**DEFS["Noise"], "input": {**DEFS["Noise"]["input"],
                                                               "optional": {"strength": ["FLOAT", {}]}}}}
    ui["nodes"][1]["inputs"] = [i for i in ui["nodes"][1]["inputs"] if i["name"] != "strength"]
    with pytest.raises(wf.WorkflowError, match=r"node 2 \(Noise\).*optional \['strength'\] has no default"):
        wf.ui_to_api(ui, no_default)
    ui["nodes"][1]["widgets_values"] = {"seed": 7, "mode": "x", "strength": 0.25}   # by name
    assert wf.ui_to_api(ui, DEFS)["2"]["inputs"] == {"seed": 7, "mode": "x", "image": ["1", 0], "strength": 0.25}
    with pytest.raises(wf.WorkflowError, match="not installed"):
        wf.ui_to_api({"nodes": [{"id": 1, "type": "Gone", "mode": 0}], "links": []}, DEFS)


# SCSAApply's inputs added after workflows were first saved (README: *When injection acts*; rope_mode
# for DiTs: *DiT models*).
ADDED_APPLY_WIDGETS = ("start", "end", "strength_schedule", "rope_mode")
APPLY_WORKFLOWS = [n for n in wi.WORKFLOWS if wf.nodes_of_type(wi.committed(n)[0], "SCSAApply")]


@pytest.fixture(scope="module")
def defs(comfy_server) -> dict:
    return comfy_server.get_json("/object_info")


@pytest.mark.parametrize("name", APPLY_WORKFLOWS)
def test_a_workflow_saved_before_the_timing_inputs_converts_with_their_defaults(defs, name):
    """The runner takes a file saved before SCSAApply had start / end / strength_schedule (its
    widgets_values and inputs end at styleid_temperature), as the frontend does
    (test_browser.py): the new widgets get their defaults, the prompt is today's file's."""
    ui, _ = wi.committed(name)
    layout = wf.widget_layout(defs["SCSAApply"])
    assert [w for w, _ in layout[-len(ADDED_APPLY_WIDGETS):]] == list(ADDED_APPLY_WIDGETS)
    defaults = {i.name: i.default for i in wf.input_defs(defs["SCSAApply"]) if i.name in ADDED_APPLY_WIDGETS}
    assert defaults == {"start": 0.0, "end": 1.0, "strength_schedule": "constant", "rope_mode": "shift"}

    old = _drop_apply_widgets(ui, defs, len(ADDED_APPLY_WIDGETS))
    apply_ids = wf.nodes_of_type(old, "SCSAApply")
    assert apply_ids and all(len(n["widgets_values"]) == len(layout) - len(ADDED_APPLY_WIDGETS)
                             for n in old["nodes"] if n["type"] == "SCSAApply")
    prompt = wf.ui_to_api(old, defs)
    for node_id in apply_ids:
        assert {k: prompt[node_id]["inputs"][k] for k in ADDED_APPLY_WIDGETS} == defaults
    assert prompt == wf.ui_to_api(ui, defs)

    # one more widget dropped: gamma, a required input, is missing too -> refused, naming it
    required = [n for n, _ in layout[-len(ADDED_APPLY_WIDGETS) - 2:-len(ADDED_APPLY_WIDGETS) - 1]]
    assert required == ["gamma"] and not {i.name: i for i in wf.input_defs(defs["SCSAApply"])}["gamma"].optional
    too_old = _drop_apply_widgets(ui, defs, len(ADDED_APPLY_WIDGETS) + 2)
    with pytest.raises(wf.WorkflowError, match=rf"node {apply_ids[0]} \(SCSAApply\).*\['gamma', "
                                               r"'styleid_temperature', 'start', 'end', 'strength_schedule', "
                                               r"'rope_mode'\] are missing and \['gamma'\] is required"):
        wf.ui_to_api(too_old, defs)


def _drop_apply_widgets(ui: dict, defs: dict, drop: int) -> dict:
    """The file as it was saved before SCSAApply's last ``drop`` widgets existed (values and the
    widgets' entries in the node's inputs removed)."""
    old = copy.deepcopy(ui)
    dropped = {n for n, _ in wf.widget_layout(defs["SCSAApply"])[-drop:]}
    for node in old["nodes"]:
        if node["type"] == "SCSAApply":
            node["widgets_values"] = node["widgets_values"][:-drop]
            node["inputs"] = [i for i in node["inputs"] if not (i.get("widget") and i["name"] in dropped)]
    return old


def test_generator_refuses_bad_graphs():
    g = wf.Graph("bad")
    g.add("Noise", (0, 0), mode="x", image=None)
    with pytest.raises(wf.WorkflowError, match="image.*not connected"):
        g.to_api(DEFS)
    g = wf.Graph("bad")
    load = g.add("Loader", (0, 0), image=wf.File("c.png"))
    g.add("Noise", (0, 0), mode="z", image=load[0])
    with pytest.raises(wf.WorkflowError, match="'z' is not one of"):
        g.to_api(DEFS)
    g = wf.Graph("bad")
    g.add("Save", (0, 0), images=g.add("Loader", (0, 0), image=wf.File("c.png"))[0], colour=1)
    with pytest.raises(wf.WorkflowError, match="no input"):
        g.to_ui(DEFS)
