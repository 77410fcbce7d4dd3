"""The test runtime itself works: ComfyUI imports, tiny models run, checkpoints load, server serves."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from scripts import comfy_inprocess as inprocess
from scripts import tiny_models

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
from scripts import comfyui_runtime as rt

# The oldest ComfyUI the pack claims (pyproject's requires-comfyui), read from there so that the
# claim and this check cannot drift apart.
MIN_COMFYUI = rt.version_tuple(tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml")
                                             .read_text(encoding="utf-8"))["tool"]["comfy"]["requires-comfyui"]
                               .lstrip(">="))


# ------------------------------------------------------------------------ path resolution
def test_comfyui_path_resolves_to_a_checkout(comfyui_dir):
    for entry in ("main.py", "comfy", "comfy_api"):
        assert (comfyui_dir / entry).exists(), entry
    assert rt.comfyui_path() == comfyui_dir


def test_comfyui_path_env_var_is_validated(monkeypatch, tmp_path):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(rt.ComfyUINotFound, match="missing main.py"):
        rt.comfyui_path()
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nope"))
    with pytest.raises(rt.ComfyUINotFound, match="does not exist"):
        rt.comfyui_path()
    (tmp_path / "main.py").write_text("")
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy_api").mkdir()
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    assert rt.comfyui_path() == tmp_path.resolve()


def test_version_compare():
    assert rt.version_tuple("0.3.75") >= MIN_COMFYUI
    assert rt.version_tuple("0.3.9") < MIN_COMFYUI
    assert rt.version_tuple("0.10.0") > MIN_COMFYUI


# ------------------------------------------------------------------------------ in-process
def test_comfyui_imports_and_is_recent_enough(comfy_core, comfyui_dir):
    import comfy.model_management as mm
    import nodes
    assert Path(nodes.__file__).resolve().parent == comfyui_dir.resolve()
    assert rt.version_tuple(comfy_core.version) >= MIN_COMFYUI, comfy_core.version
    assert rt.comfyui_version(comfyui_dir) == comfy_core.version
    assert mm.get_torch_device().type == "cpu"
    # core and comfy_extras nodes registered (custom sampler nodes are V3 in 0.3.75)
    for n in ("CheckpointLoaderSimple", "KSampler", "VAEDecode", "SamplerCustom", "FlipSigmas",
              "BasicScheduler", "LoadImage", "ImageColorToMask"):
        assert n in nodes.NODE_CLASS_MAPPINGS, n
    from comfy_api.latest import ComfyExtension, io  # noqa: F401  V3 API importable


def _ddim_step(patcher, latent, cond):
    import comfy.sample
    import comfy.samplers
    sampler = comfy.samplers.sampler_object("ddim")
    ms = patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "normal", 1)  # one step: sigma_max -> 0
    assert sigmas.shape == (2,) and float(sigmas[-1]) == 0.0
    return comfy.sample.sample_custom(patcher, torch_zeros_like(latent), 1.0, sampler, sigmas,
                                      cond, [], latent, disable_pbar=True, seed=0)


def torch_zeros_like(x):
    import torch
    return torch.zeros_like(x)


def test_tiny_sd15_unet_ddim_step(tiny_sd15_patcher):
    import torch
    import comfy.model_base
    import comfy.supported_models
    p = tiny_sd15_patcher
    assert isinstance(p.model, comfy.model_base.BaseModel)
    assert isinstance(p.model.model_config, comfy.supported_models.SD15)
    assert p.model.model_type == comfy.model_base.ModelType.EPS
    dm = p.model.diffusion_model
    assert len(dm.output_blocks) == 12 and len(dm.input_blocks) == 12
    n_params = sum(q.numel() for q in dm.parameters())
    assert n_params < 20_000_000, n_params

    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 4, 16, 16, generator=g)
    b = torch.randn(1, 4, 16, 16, generator=g)
    cond = [[torch.randn(1, 77, 768, generator=g), {}]]
    out_a = _ddim_step(p, a, cond)
    out_a2 = _ddim_step(p, a, cond)
    out_b = _ddim_step(p, b, cond)
    assert out_a.shape == a.shape
    assert torch.isfinite(out_a).all() and torch.isfinite(out_b).all()
    assert torch.equal(out_a, out_a2), "same input must give the same output (deterministic)"
    # the model did something, and what it did depends on the input
    assert (out_a - a).abs().mean() > 1e-3
    assert (out_a - out_b).abs().mean() > 1e-3
    # not just a fixed function of the latent: the prediction changes with the conditioning too
    out_c = _ddim_step(p, a, [[cond[0][0] * 0 + 1.0, {}]])
    assert (out_a - out_c).abs().max() > 1e-5


def test_tiny_sd15_attention_layers_match_sd15_block_map(tiny_sd15_patcher):
    """attn1 replace patches fire at the SD1.5 keys the pack will use (block map: docs/method.md §6)."""
    import torch
    p = tiny_sd15_patcher.clone()
    seen = []

    def make(block):
        def patch(q, k, v, extra_options):
            seen.append((extra_options["block"], tuple(extra_options["activations_shape"][-2:])))
            import comfy.ldm.modules.attention as attn
            return attn.optimized_attention(q, k, v, extra_options["n_heads"])
        return patch

    for i in range(6, 12):
        p.set_model_attn1_replace(make(("output", i)), "output", i)
    g = torch.Generator().manual_seed(1)
    _ddim_step(p, torch.randn(1, 4, 16, 16, generator=g), [[torch.randn(1, 77, 768, generator=g), {}]])
    blocks = sorted({b for b, _ in seen})
    assert blocks == [("output", i) for i in range(6, 12)]
    shapes = dict(seen)
    assert shapes[("output", 6)] == (8, 8) and shapes[("output", 11)] == (16, 16)


def test_tiny_vae_roundtrip_shapes(tiny_vae):
    import torch
    img = torch.rand(1, 64, 72, 3, generator=torch.Generator().manual_seed(0))
    lat = tiny_vae.encode(img)
    assert tuple(lat.shape) == (1, 4, 8, 9)
    dec = tiny_vae.decode(lat)
    assert tuple(dec.shape) == (1, 64, 72, 3)
    assert torch.isfinite(lat).all() and torch.isfinite(dec).all()
    assert torch.equal(tiny_models.build_tiny_vae(seed=0).encode(img), lat), "seeded init must be deterministic"


def test_tiny_checkpoint_loads_as_sd15(comfy_core, tiny_checkpoint):
    import torch
    import comfy.model_base
    import comfy.supported_models
    size_mb = tiny_checkpoint.stat().st_size / 2**20
    assert size_mb < 400, size_mb
    loader = comfy_core.node_class("CheckpointLoaderSimple")
    model, clip, vae = loader().load_checkpoint(tiny_checkpoint.name)
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert isinstance(model.model, comfy.model_base.BaseModel)
    assert clip is not None and vae is not None
    assert type(vae.first_stage_model).__name__ == "TAESD"
    # the CLIP weights are all in the file (none left uninitialised): encoding is finite and
    # reproducible
    tokens = clip.tokenize("a photo")
    c1 = clip.encode_from_tokens(tokens)
    c2 = clip.encode_from_tokens(clip.tokenize("a photo"))
    assert c1.shape == (1, 77, 768) and torch.isfinite(c1).all() and torch.equal(c1, c2)


def test_executor_runs_a_prompt_and_reuses_cache(comfy_core, tiny_checkpoint):
    """A txt2img graph on the tiny checkpoint through validate_prompt + PromptExecutor;
    queuing it again executes nothing (everything comes from the executor's cache)."""
    import torch
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint.name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": 1, "steps": 2, "cfg": 2.0, "sampler_name": "ddim", "scheduler": "ddim_uniform",
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    r1 = comfy_core.run_prompt(prompt)
    assert set(r1.executed) == set(prompt), r1.executed
    img = r1["6"][0]
    assert tuple(img.shape) == (1, 64, 64, 3) and torch.isfinite(img).all()
    assert r1["5"][0]["samples"].shape == (1, 4, 8, 8)
    assert "7" in r1.ui and r1.ui["7"]["images"]

    r2 = comfy_core.run_prompt(prompt)
    assert r2.executed == [] and set(r2.cached) == set(prompt)
    assert torch.equal(r2["6"][0], img)

    # change one widget: only that node and its dependants run again
    prompt["5"]["inputs"]["seed"] = 2
    r3 = comfy_core.run_prompt(prompt)
    assert set(r3.executed) == {"5", "6", "7"}, r3.executed
    assert {"1", "2", "3", "4"} <= set(r3.cached)

    # explicit targets: non-output nodes can be executed and read back
    r4 = comfy_core.run_prompt({"1": prompt["1"]}, outputs=["1"])
    assert type(r4["1"][0].model.model_config).__name__ == "SD15"


def test_run_prompt_reports_errors(comfy_core):
    bad = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
           "2": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(inprocess.PromptError, match="NoSuchNode"):
        comfy_core.run_prompt(bad)
    del bad["2"]
    with pytest.raises(inprocess.PromptError, match="missing.safetensors"):
        comfy_core.run_prompt(bad, outputs=["1"])


def test_pack_loads_into_comfyui(comfy):
    added = comfy.loaded_packs[str(inprocess.REPO_ROOT)]
    assert added, "the pack registered no node"
    for node_id in added:
        cls = comfy.node_class(node_id)
        assert cls.INPUT_TYPES() is not None


# ---------------------------------------------------------------------------------- server
def test_server_answers_object_info(comfy_server, server, tiny_checkpoint):
    with urllib.request.urlopen(server + "/object_info", timeout=60) as r:
        info = json.loads(r.read())
    assert "CheckpointLoaderSimple" in info
    ckpts = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
    names = ckpts[0] if isinstance(ckpts[0], list) else ckpts[1].get("options", [])
    assert tiny_checkpoint.name in names, names
    stats = comfy_server.get_json("/system_stats")
    assert stats["devices"][0]["type"] == "cpu"
    assert rt.version_tuple(stats["system"]["comfyui_version"]) >= MIN_COMFYUI


def test_server_loads_the_pack(comfy_server):
    log = comfy_server.log_tail(200_000)
    failed = [ln for ln in log.splitlines() if "IMPORT FAILED" in ln and rt.PACK_NAME in ln]
    assert not failed, log[-6000:]
    assert "Cannot import" not in "\n".join(ln for ln in log.splitlines() if rt.PACK_NAME in ln), log[-6000:]
    info = comfy_server.get_json("/object_info")
    pack_nodes = [k for k, v in info.items() if v.get("python_module", "").endswith(rt.PACK_NAME)]
    assert pack_nodes, f"no node from custom_nodes.{rt.PACK_NAME} in /object_info\n{log[-4000:]}"


def test_server_runs_a_prompt(comfy_server, tiny_checkpoint):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint.name}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "rt"}},
    }
    outputs = comfy_server.run_prompt(prompt, timeout=300)
    files = outputs["4"]["images"]
    assert files and (comfy_server.output_dir / files[0]["subfolder"] / files[0]["filename"]).is_file()
