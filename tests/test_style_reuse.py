"""Reuse of a style's inversion (README, *Reusing a style*): across prompts in one ComfyUI (the
cache), and across restarts (Save / Load Style Inversion), with the checks that keep it from
being stale."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

from scripts.comfy_inprocess import PromptError, pack_module
from test_several_styles import two_style_images  # noqa: F401  (a fixture, used by name)
from test_several_styles import two_style_prompt


def _other_content(comfy, names: dict) -> dict:
    """The same style with another content: the content image flipped left-right."""
    from PIL import Image
    folder = comfy.folder_paths.get_input_directory()
    for role in ("content", "content_map"):
        Image.open(os.path.join(folder, names[role])).transpose(Image.FLIP_LEFT_RIGHT).save(
            os.path.join(folder, f"flipped_{names[role]}"))
    return dict(names, content=f"flipped_{names['content']}", content_map=f"flipped_{names['content_map']}")


def _run(comfy, prompt):
    result = comfy.run_prompt(prompt, outputs=["sample", "invert"])
    return result["invert"][0], result["sample"][0]["samples"]


def _fresh(comfy, prompt):
    """The prompt run with nothing cached anywhere."""
    comfy.reset_cache()
    pack_module("nodes/style_reuse.py").STYLE_CACHE.clear()
    return _run(comfy, prompt)


@pytest.mark.parametrize("storage", ["memory", "recompute"])
def test_a_new_content_reuses_the_styles_inversion(comfy, tiny_checkpoint, two_style_images, storage):
    cache = pack_module("nodes/style_reuse.py").STYLE_CACHE
    first = two_style_prompt(tiny_checkpoint.name, two_style_images, storage=storage)
    second = two_style_prompt(tiny_checkpoint.name, _other_content(comfy, two_style_images), storage=storage)
    inversion, _ = _fresh(comfy, first)
    assert inversion.reused == () and len(cache) == 2   # both styles cached
    reused, latent = _run(comfy, second)
    assert set(reused.reused) == {"style", "style_2"}
    # The styles' features are the very tensors of the first run (shared, not copied).
    if storage == "memory":
        t, block = inversion.bank.timesteps[0], inversion.bank.blocks[0]
        assert reused.bank._entries[(t, block)]["style"] is inversion.bank._entries[(t, block)]["style"]
    _, fresh = _fresh(comfy, second)
    # The content alone is inverted in a smaller batch than with the styles: the same result up
    # to float rounding.
    assert torch.allclose(latent, fresh, rtol=1e-4, atol=1e-5), (latent - fresh).abs().max()


def test_reuse_is_never_stale(comfy, tiny_checkpoint, two_style_images):
    """The styles are reused when nothing about them changed (only the content: SCSAInvert runs
    again); another model (weights patched by a merge), other steps, blocks or storage: no reuse."""
    base = two_style_prompt(tiny_checkpoint.name, two_style_images)
    _fresh(comfy, base)
    other_content = _other_content(comfy, two_style_images)
    for change in (None, "steps", "blocks", "storage", "model"):
        prompt = two_style_prompt(tiny_checkpoint.name, other_content)
        if change == "steps":
            prompt["invert"]["inputs"]["steps"] = 5
        elif change == "blocks":
            prompt["invert"]["inputs"]["blocks"] = "output 1"
        elif change == "storage":
            prompt["invert"]["inputs"]["storage"] = "recompute"
        elif change == "model":
            prompt["merged"] = {"class_type": "ModelMergeSimple",
                                "inputs": {"model1": ["ckpt", 0], "model2": ["ckpt", 0], "ratio": 0.5}}
            prompt["invert"]["inputs"]["model"] = ["merged", 0]
        inversion, _ = _run(comfy, prompt)
        if change is None:
            assert set(inversion.reused) == {"style", "style_2"}, \
                f"nothing about the styles changed, yet reused {inversion.reused}: the cache never hits"
        else:
            assert inversion.reused == (), f"a style was reused after a change of {change}"


def test_the_cache_is_bounded_and_forgets_a_model_that_is_gone(comfy):
    import gc

    from scripts import tiny_models
    style_reuse = pack_module("nodes/style_reuse.py")
    features = pack_module("scsa_core/features.py")
    cache = style_reuse.StyleCache(max_entries=2, max_feature_bytes=1 << 20)
    conditioning = [[torch.zeros(1, 77, 768), {}]]
    key = ("memory", "cpu", "torch.float32")
    model = tiny_models.build_tiny_sd15_patcher(seed=0)

    def style(seed, tokens=0):
        latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        bank = None
        if tokens:
            bank = features.FeatureBank(["style"], dtype=torch.float32)
            bank.record(1, ("output", 9, 0), torch.zeros(1, tokens, 64), streams=["style"])
        return style_reuse.InvertedStyle(latent, None, {}, bank, 4, frozenset(), "memory")

    def get(patcher, wanted):
        return cache.get(patcher, conditioning, wanted.latent, None, 4, frozenset(), key)

    styles = [style(seed) for seed in range(3)]
    for s in styles:
        cache.put(model, conditioning, key, s)
    assert len(cache) == 2 and get(model, styles[0]) is None and get(model, styles[2]) is styles[2]
    # Over the byte budget (2 x 4096 x 64 x 4 bytes = 2 MB > 1 MB): only the newest stays.
    cache.put(model, conditioning, key, style(5, tokens=4096))
    cache.put(model, conditioning, key, style(6, tokens=4096))
    assert len(cache) == 1
    # Another conditioning, or a patched clone (a new patches_uuid): no match.
    cache.put(model, conditioning, key, styles[1])
    assert get(model, styles[1]) is styles[1]
    assert cache.get(model, [[torch.ones(1, 77, 768), {}]], styles[1].latent, None, 4, frozenset(), key) is None
    patched = model.clone()
    patched.add_patches({next(iter(patched.model_state_dict())): (torch.zeros(1),)}, 1.0)
    assert get(patched, styles[1]) is None
    # The model is gone: its entries go with it at once (what "free model and node cache" relies
    # on to free the features), and hold nothing of it.
    assert len(cache) == 2
    del model, patched
    gc.collect()
    assert len(cache) == 0
    other = tiny_models.build_tiny_sd15_patcher(seed=1)
    cache.put(other, conditioning, key, styles[0])
    assert len(cache) == 1 and get(other, styles[0]) is styles[0]


# ------------------------------------------------------------------------ saved styles
@pytest.fixture
def style_folder(comfy, tmp_path_factory):
    """A fresh models/scsa_styles for this test (registered first, so saves go there).

    A session temp folder, not tmp_path: ComfyUI's file-list cache keeps the folder's mtime and
    stats it again later, so the folder must outlive the test (pytest deletes a passed test's
    tmp_path at once)."""
    folder = tmp_path_factory.mktemp("scsa_styles")
    folder_paths = comfy.folder_paths
    paths, extensions = folder_paths.folder_names_and_paths["scsa_styles"]
    folder_paths.folder_names_and_paths["scsa_styles"] = ([str(folder)] + list(paths), extensions)
    try:
        yield folder
    finally:
        folder_paths.folder_names_and_paths["scsa_styles"] = (paths, extensions)


def _save_prompt(prompt: dict, prefix: str) -> dict:
    prompt = dict(prompt)
    prompt["save_style"] = {"class_type": "SCSASaveStyleInversion", "inputs": {
        "inversion": ["invert", 0], "filename_prefix": prefix, "style": 1, "style_map_image": ["style_map", 0]}}
    return prompt


def _load_prompt(prompt: dict, file_name: str, typed: bool = True) -> dict:
    """The prompt with style 1 (its inversion and colour map) from a saved file: through the typed
    inverted_style socket, or (``typed=False``, graphs made before it) the style / style_map
    LATENT outputs into SCSAInvert's latent sockets."""
    prompt = {key: dict(node, inputs=dict(node["inputs"])) for key, node in prompt.items()}
    prompt["load_style"] = {"class_type": "SCSALoadStyleInversion", "inputs": {"style_file": file_name}}
    if typed:
        del prompt["invert"]["inputs"]["style"], prompt["invert"]["inputs"]["style_map"]
        prompt["invert"]["inputs"]["inverted_style"] = ["load_style", 3]
    else:
        prompt["invert"]["inputs"].update(style=["load_style", 0], style_map=["load_style", 1])
    prompt["pair"]["inputs"]["style_map"] = ["load_style", 2]
    for node in ("style", "z_style", "z_style_map"):
        del prompt[node]
    return prompt


@pytest.mark.parametrize("storage, typed", [("recompute", True), ("memory", True), ("recompute", False)])
def test_a_saved_style_round_trips_across_a_restart(comfy, tiny_checkpoint, two_style_images, style_folder,
                                                    storage, typed):
    prompt = two_style_prompt(tiny_checkpoint.name, two_style_images, styles=1, storage=storage)
    inversion, reference = _fresh(comfy, prompt)
    comfy.run_prompt(_save_prompt(prompt, "library/example"), outputs=["save_style"])
    files = sorted(style_folder.rglob("*.safetensors"))
    assert [f.relative_to(style_folder).as_posix() for f in files] == ["library/example_00001.safetensors"]
    with safe_open(str(files[0]), framework="pt") as f:
        names = list(f.keys())
    has_features = any(n.startswith("features.") for n in names)
    assert has_features == (storage == "memory")
    if storage == "recompute":   # latents only: 2 streams x (steps + 1) latents + the clean ones + the map
        assert os.path.getsize(files[0]) < 2 * 1024 * 1024

    # "Restart": nothing cached, in ComfyUI or in the pack.
    loaded, latent = _fresh(comfy, _load_prompt(prompt, "library/example_00001.safetensors", typed))
    assert loaded.reused == ("style",)
    assert torch.equal(loaded.latent_at(999, "style"), inversion.latent_at(999, "style"))
    # The content is inverted alone (not beside the style): equal up to float rounding.
    assert torch.allclose(latent, reference, rtol=1e-4, atol=1e-5), (latent - reference).abs().max()


def test_a_saved_style_is_refused_with_another_model_steps_or_blocks(comfy, tiny_checkpoint, two_style_images,
                                                                     style_folder):
    prompt = two_style_prompt(tiny_checkpoint.name, two_style_images, styles=1, storage="recompute")
    _fresh(comfy, prompt)
    comfy.run_prompt(_save_prompt(prompt, "refuse"), outputs=["save_style"])
    loading = _load_prompt(prompt, "refuse_00001.safetensors")
    for change, message in (("steps", "inverted with 4 steps"), ("blocks", "other blocks"),
                            ("model", "another model"), ("storage", "latents only")):
        bad = {key: dict(node, inputs=dict(node["inputs"])) for key, node in loading.items()}
        if change == "steps":
            bad["invert"]["inputs"]["steps"] = 6
        elif change == "blocks":
            bad["invert"]["inputs"]["blocks"] = "output 1"
        elif change == "storage":
            bad["invert"]["inputs"]["storage"] = "memory"
        else:   # twice the weights: another model of the same architecture
            bad["doubled"] = {"class_type": "ModelMergeAdd", "inputs": {"model1": ["ckpt", 0], "model2": ["ckpt", 0]}}
            bad["invert"]["inputs"]["model"] = ["doubled", 0]
        with pytest.raises(PromptError, match=message):
            comfy.run_prompt(bad, outputs=["sample"])


def test_a_style_given_twice_or_not_at_all_is_refused_by_name(comfy, tiny_checkpoint, two_style_images,
                                                              style_folder):
    prompt = two_style_prompt(tiny_checkpoint.name, two_style_images, styles=1, storage="recompute")
    comfy.run_prompt(_save_prompt(prompt, "twice"), outputs=["save_style"])
    loading = _load_prompt(prompt, "twice_00001.safetensors")
    both = {key: dict(node, inputs=dict(node["inputs"])) for key, node in loading.items()}
    both["z_style"] = prompt["z_style"]
    both["style"] = prompt["style"]
    both["invert"]["inputs"]["style"] = ["z_style", 0]
    with pytest.raises(PromptError, match="style / inverted_style: connect the style's latent or its inversion"):
        comfy.run_prompt(both, outputs=["sample"])
    neither = {key: dict(node, inputs=dict(node["inputs"])) for key, node in loading.items()}
    del neither["invert"]["inputs"]["inverted_style"]
    with pytest.raises(PromptError, match="style: connect the VAE-encoded style image, or inverted_style"):
        comfy.run_prompt(neither, outputs=["sample"])


def test_saving_an_scsa_style_needs_its_colour_map(comfy, tiny_checkpoint, two_style_images, style_folder):
    prompt = _save_prompt(two_style_prompt(tiny_checkpoint.name, two_style_images, styles=1), "nomap")
    del prompt["save_style"]["inputs"]["style_map_image"]
    with pytest.raises(PromptError, match="style_map_image: connect the style's colour map"):
        comfy.run_prompt(prompt, outputs=["save_style"])
    assert not list(style_folder.rglob("*.safetensors"))
