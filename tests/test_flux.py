"""SCSA on Flux.1 and Flux.2 (experimental): what only Flux has, its two kinds of blocks and its
distilled guidance. Everything the DiT families share (flow plumbing, stock-sampler identity,
chained overrides, injection, the dense reference inside a model call, saved styles, the
reference rows stopping): tests/test_dit_families.py, on Flux.1 and Flux.2 among the others.
"""
from __future__ import annotations

import pytest
import torch

from scripts import tiny_models
from scripts.comfy_inprocess import pack_module
from test_dit_families import STEPS, _invert, _latents


def test_flux_blocks_and_refusals(tiny_flux1_patcher, comfy):
    families = pack_module("nodes/families/__init__.py")
    family = families.family_of(tiny_flux1_patcher)
    assert family.resolve_blocks("auto") == {("single", 1), ("single", 2)}   # 3 single blocks: the second half
    assert family.resolve_blocks("double 0-1; single 2") == {("double", 0), ("double", 1), ("single", 2)}
    with pytest.raises(ValueError, match=r"single 7 does not exist.*double 0-1, single 0-2"):
        family.resolve_blocks("single 7")
    with pytest.raises(ValueError, match="cannot read"):
        family.resolve_blocks("output 6-11")
    latents = _latents("flux1")
    with pytest.raises(ValueError, match="supports 'recompute'"):
        pack_module("nodes/diffusion_nodes.py").SCSAInvert.execute(
            model=tiny_flux1_patcher, conditioning=tiny_models.tiny_flux_conditioning("flux1"), steps=STEPS,
            blocks="auto", storage="memory", **latents)
    small_style = dict(latents, style={"samples": latents["style"]["samples"][..., :4, :4]},
                       style_map={"samples": latents["style_map"]["samples"][..., :4, :4]})
    with pytest.raises(ValueError, match="must have the content's size"):
        _invert(tiny_flux1_patcher, "flux1", small_style)


def test_guidance_is_set_explicitly_and_kept_for_sampling(tiny_flux1_patcher, comfy):
    """A conditioning without guidance gets ComfyUI's default written in; one with guidance
    (FluxGuidance) keeps it; the inversion hands that conditioning to the sampler."""
    flux = pack_module("nodes/families/flux.py")
    without = [[c, {k: v for k, v in extra.items() if k != "guidance"}]
               for c, extra in tiny_models.tiny_flux_conditioning("flux1")]
    nodes = pack_module("nodes/diffusion_nodes.py")
    latents = _latents("flux1")
    with_guidance = tiny_models.tiny_flux_conditioning("flux1", guidance=1.5)
    with torch.inference_mode():
        for given, expected in ((without, flux.DEFAULT_GUIDANCE), (with_guidance, 1.5)):
            inversion = nodes.SCSAInvert.execute(model=tiny_flux1_patcher, conditioning=given, steps=STEPS,
                                                 blocks="auto", content=latents["content"],
                                                 style=latents["style"]).result[0]
            assert [extra["guidance"] for _, extra in inversion.conditioning] == [expected]
    assert "guidance" not in without[0][1]   # the caller's conditioning is not changed
