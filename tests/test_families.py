"""SD1.x, SD2.x (v-prediction) and SDXL: block presets and whole runs on tiny random UNets.

The models are built through ComfyUI's own model classes (``comfy.supported_models``) with
SD-family layouts at a small width, randomly initialised; nodes are called directly.
"""
from __future__ import annotations

import math

import pytest
import torch

from scripts import tiny_models
from scripts.comfy_inprocess import pack_module

LATENT = (1, 4, 16, 12)  # a non-square latent: grids 16x12, 8x6, 4x3


def _patcher(family: str, dtype=torch.float32):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    common = dict(in_channels=4, out_channels=4, model_channels=32, use_checkpoint=False, image_size=32,
                  use_spatial_transformer=True, legacy=False, use_temporal_attention=False,
                  use_temporal_resblock=False, use_linear_in_transformer=True)
    if family == "sd15":  # as tiny_models.build_tiny_sd15_patcher(seed=1), in any dtype
        model_config = sm.SD15(tiny_models.sd15_unet_config())
        state = {}
    elif family == "sd2":
        config = dict(common, num_res_blocks=[2] * 4, channel_mult=[1, 2, 4, 4],
                      transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                      transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],  # popped: output 11 first
                      transformer_depth_middle=1, context_dim=64, adm_in_channels=None)
        model_config = sm.SD20(config)
        # output 11's norm1 bias spread is how ComfyUI tells SD2's v-prediction models apart
        state = {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.randn(32) * 0.5}
    else:
        config = dict(common, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                      transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
                      transformer_depth_middle=2, context_dim=64, adm_in_channels=2816,
                      num_classes="sequential")
        model_config = sm.SDXL(config)
        state = {}
    if family != "sd15":
        model_config.unet_config["num_head_channels"] = 8
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model(state)
    tiny_models.init_weights_(model.diffusion_model, 1 if family == "sd15" else 3, prefix="model.diffusion_model.")
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _conditioning(family: str, dtype=torch.float32):
    context = 768 if family == "sd15" else 64
    extra = {"pooled_output": torch.zeros(1, 1280, dtype=dtype)} if family == "sdxl" else {}
    return [[torch.zeros(1, 77, context, dtype=dtype), extra]]


EXPECTED_AUTO = {
    "sd15": {("output", n, 0) for n in range(6, 12)},
    "sd2": {("output", n, 0) for n in range(6, 12)},
    "sdxl": {("output", n, i) for n in range(3, 6) for i in range(1)},
}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("latent_size", [(9, 13), (7, 5), (16, 12)])
def test_token_grid_is_the_grid_attention_runs_at(family, latent_size, comfy):
    """The family's token grid of every self-attention block is the one the UNet runs it at, odd
    latent sizes included (each stride-2 convolution rounds up: 9 x 13 -> 5 x 7 -> 3 x 4)."""
    families = pack_module("nodes/families/__init__.py")
    patcher = _patcher(family)
    unet = families.family_of(patcher)
    seen = {}

    def tokens(key):   # a pre-hook that returns None leaves the call as it is
        return lambda module, args: seen.update({key: args[0].shape[1]})
    hooks = [unet.transformer_block(key).attn1.register_forward_pre_hook(tokens(key))
             for key in unet.attention_blocks()]
    context = _conditioning(family)[0][0]
    try:
        with torch.inference_mode():
            patcher.model.diffusion_model(torch.zeros(1, 4, *latent_size), torch.tensor([10.0]), context,
                                          y=torch.zeros(1, 2816) if family == "sdxl" else None)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {key: math.prod(unet.token_grid(key, latent_size)) for key in unet.attention_blocks()}


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_family_auto_blocks_and_full_run(family, comfy):
    diffusion_nodes = pack_module("nodes/diffusion_nodes.py")
    families = pack_module("nodes/families/__init__.py")
    labels = pack_module("scsa_core/labels/__init__.py")
    patcher = _patcher(family)
    if family == "sd2":
        import comfy.model_base
        assert patcher.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    blocks = families.family_of(patcher).resolve_blocks("auto")
    assert blocks == EXPECTED_AUTO[family]

    g = torch.Generator().manual_seed(4)
    latents = {name: {"samples": torch.randn(LATENT, generator=g)} for name in
               ("content", "style", "content_map", "style_map")}
    masks = torch.zeros(2, 64, 48)
    masks[0, :32], masks[1, 32:] = 1, 1
    semantics = labels.labels_from_masks(masks, masks.flip(1), threshold=0.5)
    with torch.inference_mode():
        inversion = diffusion_nodes.SCSAInvert.execute(
            model=patcher, conditioning=_conditioning(family), steps=3, blocks="auto", **latents).result[0]
        assert set(inversion.bank.blocks) == blocks
        outputs, models = {}, {}
        for mode, kwargs in (("scsa", {"semantics": semantics}), ("styleid", {})):
            models[mode] = diffusion_nodes.SCSAApply.execute(
                model=patcher, preset="default", sca_weight=0.8, ssa_weight=0.2, semantic_share=0.3,
                content_share=0.5, temperature=1.2, gamma=0.75, **kwargs).result[0]
            outputs[mode] = diffusion_nodes.SCSAStyleSampler.execute(
                model=models[mode], inversion=inversion, init="auto", timesteps="aligned").result[0]["samples"]
    for latent in outputs.values():
        assert latent.shape == LATENT and torch.isfinite(latent).all() and latent.std() > 0
    assert not torch.allclose(outputs["scsa"], outputs["styleid"])
@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_family_recompute_injects_what_memory_storage_does(family, comfy):
    """recompute storage (references in the sampling batch) injects the same features as
    memory storage. In float64: in fp32 the two batch layouts round differently, which can flip
    an SSA choice between near-equal style tokens of these random models (seen on SDXL: 1.1e-5),
    and that would say nothing about the features."""
    diffusion_nodes = pack_module("nodes/diffusion_nodes.py")
    labels = pack_module("scsa_core/labels/__init__.py")
    dtype = torch.float64
    patcher = _patcher(family, dtype)
    g = torch.Generator().manual_seed(4)
    latents = {name: {"samples": torch.randn(LATENT, generator=g, dtype=dtype)} for name in
               ("content", "style", "content_map", "style_map")}
    masks = torch.zeros(2, 64, 48)
    masks[0, :32], masks[1, 32:] = 1, 1
    semantics = labels.labels_from_masks(masks, masks.flip(1), threshold=0.5)
    model = diffusion_nodes.SCSAApply.execute(
        model=patcher, semantics=semantics, preset="default", sca_weight=0.8, ssa_weight=0.2, semantic_share=0.3,
        content_share=0.5, temperature=1.2, gamma=0.75).result[0]
    samples = {}
    with torch.inference_mode():
        for storage in ("memory", "recompute"):
            inversion = diffusion_nodes.SCSAInvert.execute(
                model=patcher, conditioning=_conditioning(family, dtype), steps=3, blocks="auto", storage=storage,
                **latents).result[0]
            assert (inversion.bank.nbytes == 0) == (storage == "recompute")
            assert inversion.bank.dtype == dtype
            samples[storage] = diffusion_nodes.SCSAStyleSampler.execute(
                model=model, inversion=inversion, init="auto", timesteps="aligned").result[0]["samples"]
    difference = ((samples["recompute"] - samples["memory"]).norm() / samples["memory"].norm()).item()
    assert difference <= 1e-5, f"recompute differs from memory storage by {difference:.2e}"
