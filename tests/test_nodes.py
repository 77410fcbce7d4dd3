"""The nodes inside a real ComfyUI (in-process executor), on a tiny random SD1.5 checkpoint."""
from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch
from PIL import Image

from scripts.comfy_inprocess import PromptError
from oracle_data import sem_pairs_dir
from scripts.comfy_inprocess import pack_module

SIZE = 64  # pixels: an 8 x 8 latent keeps every run to seconds on CPU
STEPS = 4


@pytest.fixture(scope="module")
def images(comfy):
    """Content, style and their semantic maps in ComfyUI's input folder (pair 29, or synthetic)."""
    folder = sem_pairs_dir() / "29"
    input_dir = comfy.folder_paths.get_input_directory()
    names = {}
    if folder.is_dir():
        sources = {"content": "29.jpg", "style": "29_paint.jpg", "content_map": "29_sem.png",
                   "style_map": "29_paint_sem.png"}
        for role, source in sources.items():
            resample = Image.NEAREST if role.endswith("map") else Image.BICUBIC
            Image.open(folder / source).convert("RGB").resize((SIZE, SIZE), resample).save(
                os.path.join(input_dir, f"test_{role}.png"))
            names[role] = f"test_{role}.png"
    else:  # a user's clone without ../shared: two-region synthetic pair
        g = torch.Generator().manual_seed(0)
        for role in ("content", "style"):
            pixels = (torch.rand(SIZE, SIZE, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(pixels).save(os.path.join(input_dir, f"test_{role}.png"))
            names[role] = f"test_{role}.png"
        for role, split in (("content_map", SIZE // 2), ("style_map", SIZE // 3)):
            pixels = torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8)
            pixels[:split] = torch.tensor([230, 0, 0], dtype=torch.uint8)
            pixels[split:] = torch.tensor([0, 0, 230], dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(os.path.join(input_dir, f"test_{role}.png"))
            names[role] = f"test_{role}.png"
    small = Image.open(os.path.join(input_dir, names["style"])).resize((SIZE, SIZE * 3 // 4))
    small.save(os.path.join(input_dir, "test_style_small.png"))
    small_map = Image.open(os.path.join(input_dir, names["style_map"])).resize((SIZE, SIZE * 3 // 4), Image.NEAREST)
    small_map.save(os.path.join(input_dir, "test_style_map_small.png"))
    return names


def scsa_prompt(checkpoint: str, images: dict, semantics: bool = True, **apply) -> dict:
    def encode(node):
        return {"class_type": "VAEEncode", "inputs": {"pixels": [node, 0], "vae": ["ckpt", 2]}}
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "content": {"class_type": "LoadImage", "inputs": {"image": images["content"]}},
        "style": {"class_type": "LoadImage", "inputs": {"image": images["style"]}},
        "content_map": {"class_type": "SCSALoadSemanticMap", "inputs": {"image": images["content_map"]}},
        "style_map": {"class_type": "SCSALoadSemanticMap", "inputs": {"image": images["style_map"]}},
        "z_content": encode("content"), "z_style": encode("style"),
        "z_content_map": encode("content_map"), "z_style_map": encode("style_map"),
        "pair": {"class_type": "SCSASemanticPair",
                 "inputs": {"content_map": ["content_map", 0], "style_map": ["style_map", 0]}},
        "invert": {"class_type": "SCSAInvert", "inputs": {
            "model": ["ckpt", 0], "conditioning": ["empty", 0], "content": ["z_content", 0],
            "style": ["z_style", 0], "content_map": ["z_content_map", 0],
            "style_map": ["z_style_map", 0], "steps": STEPS, "blocks": "auto"}},
        "apply": {"class_type": "SCSAApply", "inputs": dict({
            "model": ["ckpt", 0], "semantics": ["pair", 0], "preset": "default", "sca_weight": 0.8,
            "ssa_weight": 0.2, "semantic_share": 0.3, "content_share": 0.5, "temperature": 1.2,
            "gamma": 0.75}, **apply)},
        "sample": {"class_type": "SCSAStyleSampler", "inputs": {
            "model": ["apply", 0], "inversion": ["invert", 0], "init": "auto", "timesteps": "official"}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "scsa_test"}},
    }
    if not semantics:
        del prompt["apply"]["inputs"]["semantics"]
        for node in ("content_map", "style_map", "z_content_map", "z_style_map", "pair"):
            del prompt[node]
        del prompt["invert"]["inputs"]["content_map"], prompt["invert"]["inputs"]["style_map"]
    return prompt


def _latent(result, node="sample"):
    return result[node][0]["samples"]


def test_scsa_runs_is_deterministic_and_changes_the_output(comfy, tiny_checkpoint, images):
    prompt = scsa_prompt(tiny_checkpoint.name, images)
    comfy.reset_cache()
    first = comfy.run_prompt(prompt)
    scsa = _latent(first)
    assert scsa.shape == (1, 4, SIZE // 8, SIZE // 8) and torch.isfinite(scsa).all()
    decoded = first["decode"][0]
    assert torch.isfinite(decoded).all() and decoded.std() > 0
    assert first.ui["save"]["images"], "SaveImage wrote no file"

    comfy.reset_cache()
    again = comfy.run_prompt(prompt)
    assert torch.equal(_latent(again), scsa), "two runs of the same prompt differ"

    # Sampling the same inversion with injection switched off (no blocks) is plain DDIM.
    pipeline = pack_module("nodes/pipeline.py")
    model, inversion = first["apply"][0], first["invert"][0]
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        plain = pipeline.style_sample(model, dataclasses.replace(inversion, blocks=frozenset()), "auto", "official")
    difference = ((plain - scsa).norm() / scsa.norm()).item()
    assert difference > 1e-3, f"SCSA injection changed the latent by only {difference:.2e}"


def test_styleid_mode_without_semantics(comfy, tiny_checkpoint, images):
    styleid = comfy.run_prompt(scsa_prompt(tiny_checkpoint.name, images, semantics=False))
    scsa = comfy.run_prompt(scsa_prompt(tiny_checkpoint.name, images))
    latent = _latent(styleid)
    assert torch.isfinite(latent).all()
    assert styleid["invert"][0].streams == ("content", "style")
    assert not torch.allclose(latent, _latent(scsa))


def test_requeue_with_new_weights_reruns_sampling_only(comfy, tiny_checkpoint, images):
    comfy.run_prompt(scsa_prompt(tiny_checkpoint.name, images))
    changed = comfy.run_prompt(scsa_prompt(tiny_checkpoint.name, images, sca_weight=0.5))
    assert "invert" not in changed.executed and "z_content" not in changed.executed
    assert {"apply", "sample"} <= set(changed.executed)
    sampler_only = scsa_prompt(tiny_checkpoint.name, images, sca_weight=0.5)
    sampler_only["sample"]["inputs"]["timesteps"] = "aligned"
    rerun = comfy.run_prompt(sampler_only)
    assert "invert" not in rerun.executed and "apply" not in rerun.executed and "sample" in rerun.executed


def _fingerprint(model_patcher):
    weights = {k: v.double().sum().item() for k, v in model_patcher.model.state_dict().items()}
    return copy.deepcopy(repr(model_patcher.model_options)), weights


def test_input_model_is_untouched_and_stock_ksampler_is_unchanged(comfy, tiny_checkpoint, images):
    injection = pack_module("nodes/injection.py")
    base = comfy.run_prompt({"ckpt": scsa_prompt(tiny_checkpoint.name, images)["ckpt"]}, outputs=["ckpt"])
    before = _fingerprint(base["ckpt"][0])
    prompt = scsa_prompt(tiny_checkpoint.name, images)
    for name, model in (("ks_plain", ["ckpt", 0]), ("ks_patched", ["apply", 0])):
        prompt[name] = {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 7, "steps": 3, "cfg": 2.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["empty", 0], "negative": ["empty", 0],
            "latent_image": ["z_content", 0], "denoise": 0.6}}
    result = comfy.run_prompt(prompt, outputs=["sample", "ks_plain", "ks_patched"])
    assert _fingerprint(result["ckpt"][0]) == before
    assert injection.apply_settings(result["ckpt"][0]) is None
    assert injection.apply_settings(result["apply"][0]) is not None
    assert torch.equal(_latent(result, "ks_plain"), _latent(result, "ks_patched"))


def test_previews_and_masks(comfy, tiny_checkpoint, images):
    result = comfy.run_prompt(scsa_prompt(tiny_checkpoint.name, images), outputs=["pair", "content_map"])
    preview = result["pair"][1]
    assert preview.shape[0] == 1 and preview.shape[-1] == 3 and preview.shape[2] > 2 * SIZE
    assert result.ui["pair"]["images"], "the pair preview is not shown on the node"
    semantics = result["pair"][0]
    assert semantics.content.shape == (SIZE, SIZE) and int(semantics.matched.sum()) >= 2

    masks_node = comfy.node_class("SCSASemanticFromMasks")
    content = torch.zeros(2, 16, 16)
    content[0, :, :8], content[1, :, 8:] = 1, 1
    style = torch.zeros(2, 16, 20)
    style[0, :4], style[1, 4:] = 1, 1
    out = masks_node.execute(content, style, threshold=0.5)
    labels = out.result[0]
    assert labels.content[:, :8].eq(0).all() and labels.content[:, 8:].eq(1).all()
    assert labels.style[:4].eq(0).all() and bool(labels.matched.all())


def test_clear_errors(comfy, tiny_checkpoint, images):
    mismatched = scsa_prompt(tiny_checkpoint.name, images)
    mismatched["style"]["inputs"]["image"] = "test_style_small.png"
    # content and style may differ in size (tests/test_reliability.py); a map must match its image
    with pytest.raises(PromptError, match=r"style_map: latent is \(8, 8\) but style is \(6, 8\)"):
        comfy.run_prompt(mismatched)

    no_semantics = scsa_prompt(tiny_checkpoint.name, images, semantics=False)
    no_semantics["sample"]["inputs"]["init"] = "semantic AdaIN"
    with pytest.raises(PromptError, match="needs semantics on SCSAApply"):
        comfy.run_prompt(no_semantics)

    unpatched = scsa_prompt(tiny_checkpoint.name, images)
    unpatched["sample"]["inputs"]["model"] = ["ckpt", 0]
    with pytest.raises(PromptError, match="connect the MODEL output of SCSAApply"):
        comfy.run_prompt(unpatched)

    bad_blocks = scsa_prompt(tiny_checkpoint.name, images)
    bad_blocks["invert"]["inputs"]["blocks"] = "output 40"
    with pytest.raises(PromptError, match="has no self-attention in this model"):
        comfy.run_prompt(bad_blocks)


def test_model_without_unet_attention_is_refused(comfy):
    families = pack_module("nodes/families/__init__.py")

    class DiT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    class FakeConfig:
        pass

    class FakeModel:
        diffusion_model = DiT()
        model_config = FakeConfig()

    class FakePatcher:
        model = FakeModel()

    with pytest.raises(ValueError, match=r"It supports: UNet \(SD1.x, SD2.x, SDXL\)"):
        families.family_of(FakePatcher())


def test_block_parsing(comfy):
    blocks = pack_module("nodes/families/blocks.py")
    names, example = ("input", "middle", "output"), "output 6-11"
    assert blocks.parse_blocks("output 6-11", names, example) == [("output", n) for n in range(6, 12)]
    assert blocks.parse_blocks("output 6, 9-10; input 4", names, example) == [
        ("output", 6), ("output", 9), ("output", 10), ("input", 4)]
    with pytest.raises(ValueError, match="cannot read"):
        blocks.parse_blocks("decoder everything", names, example)


# ------------------------------------------------------------------------------ storage modes
def _watch_recording(monkeypatch) -> list:
    """Every feature the inversions record, as ``(bank device, stored tensor, shares storage with
    the block input)``: a bank must hold copies on its own device, never views of activations."""
    features = pack_module("scsa_core/features.py")
    original = features.FeatureBank.record
    seen = []

    def record(self, t, block, block_inputs, streams=None, grid=None):
        original(self, t, block, block_inputs, streams=streams, grid=grid)
        source = (block_inputs.device, block_inputs.untyped_storage().data_ptr())
        for name in (self.streams if streams is None else tuple(streams)):
            stored = self.entries(name)[(int(t), block)]
            seen.append((self.device, stored, (stored.device, stored.untyped_storage().data_ptr()) == source))
    monkeypatch.setattr(features.FeatureBank, "record", record)
    return seen


def _check_bank(inversion, storage: str, device: torch.device, recorded: list) -> None:
    """``inversion`` recorded its features on ``device``, each one a copy of the block input."""
    assert inversion.storage == storage and inversion.reused == (), (inversion.storage, inversion.reused)
    assert inversion.bank.device == device, f"{storage}: features on {inversion.bank.device}, not {device}"
    assert recorded, f"{storage}: the inversion recorded no features"
    assert all(bank_device == device and stored.device == device for bank_device, stored, _ in recorded), \
        f"{storage}: features stored on {sorted({str(stored.device) for _, stored, _ in recorded})}, not {device}"
    views = sum(shared for _, _, shared in recorded)
    assert not views, f"{storage}: {views} of {len(recorded)} recorded features share the block input's storage"
    for name in inversion.bank.streams:
        assert all(t.device == device for t in inversion.bank.entries(name).values()), name


def _memory_and_offload_on(device: torch.device, result, recorded: list) -> None:
    """The same inversion and sampling with the model on ``device`` (a GPU): 'memory' keeps the
    features there, 'offload' copies them to the CPU and back at every sampling step; same latent."""
    import comfy.model_management as mm
    pipeline = pack_module("nodes/pipeline.py")

    def on_device(patcher):
        clone = patcher.clone()
        clone.load_device = device
        if hasattr(clone, "register_load_device"):   # what ComfyUI's own device selector does (0.33)
            clone.register_load_device(device)
        return clone

    cpu_inversion = result["invert"][0]
    model, applied = on_device(result["ckpt"][0]), on_device(result["apply"][0])
    sampled = {}
    try:
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            for storage, where in (("memory", device), ("offload", torch.device("cpu"))):
                recorded.clear()
                inversion = pipeline.invert(model, result["empty"][0], dict(cpu_inversion.clean_latents),
                                            cpu_inversion.steps, "auto", storage, cache=None)
                _check_bank(inversion, storage, where, recorded)
                sampled[storage] = pipeline.style_sample(applied, inversion, "auto", "official")
    finally:
        mm.free_memory(1e30, device)   # the checkpoint's weights go back to the CPU for later tests
    difference = ((sampled["offload"] - sampled["memory"]).norm() / sampled["memory"].norm()).item()
    assert difference <= 1e-6, f"offload from {device} differs from memory by {difference:.2e}"


@pytest.mark.parametrize("semantics", [True, False], ids=["scsa", "styleid"])
@pytest.mark.parametrize("style_size", ["same", "smaller"])
def test_storage_modes_give_the_same_result(comfy, tiny_checkpoint, images, semantics, style_size, monkeypatch):
    """memory, offload and recompute inject the same features: recompute runs the references in
    the sampling batch (same size) or records them one step ahead (a style of another size).
    offload copies the features to the CPU: on this CPU-only ComfyUI that is a copy on the same
    device (checked: each feature in its own storage, not a view of the block input); with a GPU
    the same inversion runs on it, memory keeping the features there and offload in RAM."""
    recorded = _watch_recording(monkeypatch)
    results, records = {}, {}
    for storage in ("memory", "offload", "recompute"):
        prompt = scsa_prompt(tiny_checkpoint.name, images, semantics=semantics)
        prompt["invert"]["inputs"]["storage"] = storage
        if style_size == "smaller":
            prompt["style"]["inputs"]["image"] = "test_style_small.png"
            if semantics:
                prompt["style_map"]["inputs"]["image"] = "test_style_map_small.png"
        recorded.clear()
        results[storage] = comfy.run_prompt(prompt)
        records[storage] = list(recorded)
    memory, recompute = results["memory"], results["recompute"]
    assert memory["invert"][0].bank.nbytes > 0
    model_device = memory["ckpt"][0].load_device
    _check_bank(memory["invert"][0], "memory", model_device, records["memory"])
    _check_bank(results["offload"]["invert"][0], "offload", torch.device("cpu"), records["offload"])
    assert torch.equal(_latent(results["offload"]), _latent(memory))
    inversion = recompute["invert"][0]
    assert inversion.storage == "recompute" and inversion.bank.nbytes == 0
    assert inversion.trajectory_bytes == memory["invert"][0].trajectory_bytes
    difference = ((_latent(recompute) - _latent(memory)).norm() / _latent(memory).norm()).item()
    # Injection itself moves this latent by > 1e-3 (test_scsa_runs_...), so this also shows
    # that recompute injects.
    assert difference <= 1e-5, f"recompute differs from memory by {difference:.2e}"
    if torch.cuda.is_available():
        _memory_and_offload_on(torch.device("cuda", torch.cuda.current_device()), memory, recorded)


def test_storage_choice_by_free_memory(comfy, monkeypatch):
    pipeline = pack_module("nodes/pipeline.py")
    GB = 2 ** 30
    free = {"cpu": 32 * GB, "cuda": 8 * GB}
    monkeypatch.setattr(pipeline.comfy.model_management, "get_free_memory",
                        lambda device=None: free[torch.device(device).type])

    class Patcher:
        load_device = torch.device("cuda", 0)

        def model_size(self):
            return 2 * GB

        def loaded_size(self):  # weights not on the GPU yet: they will take 2 of the 8 GB
            return 0

    gpu = Patcher()
    assert pipeline.choose_storage("auto", gpu, int(2.2 * GB)) == ("memory", gpu.load_device)
    assert pipeline.choose_storage("auto", gpu, 4 * GB) == ("offload", torch.device("cpu"))
    assert pipeline.choose_storage("auto", gpu, 20 * GB) == ("recompute", gpu.load_device)
    assert pipeline.choose_storage("recompute", gpu, 100 * GB) == ("recompute", gpu.load_device)
    with pytest.raises(ValueError, match=r"storage: 'memory' needs 7.00 GB .* only 6.00 GB is free.*'offload'"):
        pipeline.choose_storage("memory", gpu, 7 * GB)
    with pytest.raises(ValueError, match=r"storage: 'offload' needs 40.00 GB of RAM.*'recompute'"):
        pipeline.choose_storage("offload", gpu, 40 * GB)

    cpu = Patcher()
    cpu.load_device = torch.device("cpu")
    free["cpu"] = 10 * GB
    assert pipeline.choose_storage("auto", cpu, 4 * GB) == ("memory", cpu.load_device)
    assert pipeline.choose_storage("auto", cpu, 6 * GB) == ("recompute", cpu.load_device)


def test_inline_reference_rows_per_cond_chunk(comfy):
    """With recompute storage each cond/uncond chunk ends with the reference rows."""
    injection = pack_module("nodes/injection.py")
    references = len(("content", "style"))
    assert injection.chunk_rows(6, {"cond_or_uncond": [1, 0]}, references) == \
        [(slice(0, 1), slice(1, 3)), (slice(3, 4), slice(4, 6))]
    assert injection.chunk_rows(3, {"cond_or_uncond": [0]}, references) == [(slice(0, 1), slice(1, 3))]
