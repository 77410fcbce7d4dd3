"""SCSA on Flux.1 and Flux.2 (experimental): tiny random-weight models built through ComfyUI's own
classes (scripts/tiny_models.py), the pack's nodes and pipeline, on CPU.

What is checked without real weights: the flow plumbing through ComfyUI's sampler path, that a
run with injection switched off is a stock SamplerCustom euler run bit for bit, that SCSA's
attention override chains to one installed before it, and that the nodes run end to end and
inject. The attention itself is checked against a dense float64 reference in
tests/test_joint_attention.py; the hooks and token layout in tests/test_flux_layout.py.
"""
from __future__ import annotations

import pytest
import torch

from scripts import tiny_models
from scripts.comfy_inprocess import pack_module
from test_style_reuse import style_folder  # noqa: F401  (a fixture)

VARIANTS = ["flux1", "flux2"]
LATENT_HW = (8, 6)   # Flux.1 (patch 2): a 4 x 3 token grid; Flux.2 (patch 1): 8 x 6
STEPS = 3


def _patcher(request, variant):
    return request.getfixturevalue(f"tiny_{variant}_patcher")


def _latents(variant, seed=4):
    channels = tiny_models.tiny_flux_latent_channels(variant)
    generator = torch.Generator().manual_seed(seed)
    return {name: {"samples": torch.randn((1, channels) + LATENT_HW, generator=generator)}
            for name in ("content", "style", "content_map", "style_map")}


def _semantics():
    labels = pack_module("scsa_core/labels.py")
    masks = torch.zeros(2, 64, 48)
    masks[0, :32], masks[1, 32:] = 1, 1
    return labels.labels_from_masks(masks, masks.flip(1), threshold=0.5)


def _apply(patcher, **settings):
    nodes = pack_module("nodes/diffusion_nodes.py")
    values = dict(preset="default", sca_weight=0.8, ssa_weight=0.2, semantic_share=0.3, content_share=0.5,
                  temperature=1.2, gamma=0.75)
    values.update(settings)
    return nodes.SCSAApply.execute(model=patcher, **values).result[0]


def _invert(patcher, variant, latents, blocks="auto"):
    nodes = pack_module("nodes/diffusion_nodes.py")
    return nodes.SCSAInvert.execute(model=patcher, conditioning=tiny_models.tiny_flux_conditioning(variant),
                                    steps=STEPS, blocks=blocks, **latents).result[0]


def _sample(model, inversion, init="auto"):
    nodes = pack_module("nodes/diffusion_nodes.py")
    return nodes.SCSAStyleSampler.execute(model=model, inversion=inversion, init=init,
                                          timesteps="official").result[0]["samples"]


def _constant_output(patcher, bias_std: float) -> None:
    """The model's output layer made to ignore its input: a linear layer with zero weight and a
    bias of ``bias_std`` spread (Flux.2's own output layer has no bias, so it is swapped for one)."""
    final_layer = patcher.model.diffusion_model.final_layer
    old = final_layer.linear
    layer = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.normal_(0.0, bias_std, generator=torch.Generator().manual_seed(1)) if bias_std else \
            layer.bias.zero_()
    final_layer.linear = layer


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_zero_velocity_model_inverts_to_its_input_exactly(request, variant, comfy):
    """The model predicts no velocity: every latent of the inversion is the clean latent as
    ComfyUI scaled it in. Catches a sampler that starts from anything but the real latent."""
    patcher = _patcher(request, variant)
    _constant_output(patcher, 0.0)
    latents = _latents(variant)
    with torch.inference_mode():
        inversion = _invert(patcher, variant, {"content": latents["content"], "style": latents["style"]})
    clean = patcher.model.process_latent_in(latents["content"]["samples"])
    assert len(inversion.trajectory) == STEPS + 1
    for key, row in inversion.trajectory.items():
        assert torch.equal(row["content"].cpu(), clean), f"latent {key} moved under a zero velocity"


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_constant_velocity_model_inverts_and_samples_back(request, variant, comfy):
    """A constant velocity is integrated exactly by Euler both ways: inverting and sampling
    back (injection off) returns the content latent up to float rounding."""
    patcher = _patcher(request, variant)
    _constant_output(patcher, 0.5)
    latents = _latents(variant)
    with torch.inference_mode():
        inversion = _invert(patcher, variant, {"content": latents["content"], "style": latents["style"]})
        assert not torch.equal(inversion.latent_at(STEPS, "content"), inversion.latent_at(0, "content"))
        back = _sample(_apply(patcher, start=0.0, end=0.0), inversion, init="none")
    content = latents["content"]["samples"]
    assert torch.allclose(back, content, rtol=0, atol=2e-6), (back - content).abs().max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_injection_is_a_stock_samplercustom_euler_run_bit_for_bit(request, variant, comfy):
    """start = end: the same sigmas and start latent through ComfyUI's own euler sampler give
    the same latent, bit for bit (the override passes everything through)."""
    import comfy.sample
    import comfy.samplers

    patcher = _patcher(request, variant)
    latents = _latents(variant)
    with torch.inference_mode():
        inversion = _invert(patcher, variant, latents)
        ours = _sample(_apply(patcher, semantics=_semantics(), start=0.0, end=0.0), inversion, init="none")
        parameterisation = pack_module("nodes/families/__init__.py").family_of(patcher).parameterisation
        plan = parameterisation.plan_sampling(patcher, STEPS, "official")
        start = inversion.latent_at(plan.start_key, "content")
        stock = comfy.sample.sample_custom(patcher, start, 1.0, comfy.samplers.ksampler("euler"), plan.sigmas,
                                           inversion.conditioning, inversion.conditioning, torch.zeros_like(start),
                                           disable_pbar=True, seed=0)
    assert torch.equal(ours, stock)


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_earlier_attention_override_still_runs_on_every_call(request, variant, comfy):
    """An override installed before SCSA (an attention-backend node) sees every attention call
    of the sampler, injected blocks included (SCSA gets their plain attention through it)."""
    patcher = _patcher(request, variant)
    seen = []

    def sentinel(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        seen.append((options.get("block_type"), options.get("block_index"), args[0].shape[0]))
        return func(*args, **kwargs)

    backend = patcher.clone()
    backend.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = sentinel
    latents = _latents(variant)
    with torch.inference_mode():
        inversion = _invert(backend, variant, latents)
        seen.clear()
        model = _apply(backend, semantics=_semantics())
        injected = _sample(model, inversion)
        plain = _sample(_apply(backend, semantics=_semantics(), start=0.0, end=0.0), inversion)
    diffusion_model = patcher.model.diffusion_model
    blocks = len(diffusion_model.double_blocks) + len(diffusion_model.single_blocks)
    sampling_steps = STEPS
    # injected run: every block of every step, batch 1 + 4 references; plain run: batch 1
    assert len(seen) == 2 * blocks * sampling_steps
    assert sorted({rows for *_, rows in seen}) == [1, 5]
    assert not torch.allclose(injected, plain, rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_nodes_inject_on_flux(request, variant, comfy, caplog):
    """SCSAInvert -> SCSAApply -> SCSAStyleSampler on a Flux model: a finite latent that SCSA
    changed, lite mode (no map latents, semantic_share 0) too, and the experimental warning."""
    patcher = _patcher(request, variant)
    latents = _latents(variant)
    with torch.inference_mode():
        with caplog.at_level("WARNING", logger="scsa"):
            full = _invert(patcher, variant, latents, blocks="double 1, single 0-2")
        assert "experimental" in caplog.text
        lite = _invert(patcher, variant, {"content": latents["content"], "style": latents["style"]})
        outputs = {
            "scsa": _sample(_apply(patcher, semantics=_semantics()), full),
            "lite": _sample(_apply(patcher, semantics=_semantics(), semantic_share=0.0), lite),
            "shared": _sample(_apply(patcher, semantics=_semantics(), rope_mode="shared"), full),
            "plain": _sample(_apply(patcher, semantics=_semantics(), start=0.0, end=0.0), full),
        }
    for name, latent in outputs.items():
        assert latent.shape == latents["content"]["samples"].shape and torch.isfinite(latent).all(), name
    for name in ("scsa", "lite", "shared"):
        difference = ((outputs[name] - outputs["plain"]).norm() / outputs["plain"].norm()).item()
        assert difference > 1e-3, f"{name}: injection changed the latent by only {difference:.2e}"
    assert not torch.equal(outputs["scsa"], outputs["shared"])


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


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_saved_flux_style_loads_checks_its_model_and_is_not_inverted_again(request, variant, comfy,
                                                                             style_folder):
    """Save Style Inversion writes a Flux inversion (format 2: step-index trajectory, refine_steps);
    Load Style Inversion gives it back, SCSAInvert reuses it after checking the model (one step
    redone), and the sample equals the fresh run's up to float rounding. Another model's
    velocity is refused by that check."""
    patcher = _patcher(request, variant)
    nodes = pack_module("nodes/diffusion_nodes.py")
    library = pack_module("nodes/style_library_nodes.py")
    latents = _latents(variant)
    conditioning = tiny_models.tiny_flux_conditioning(variant)
    model = _apply(patcher, semantics=_semantics())
    map_image = torch.rand(1, 64, 48, 3, generator=torch.Generator().manual_seed(3))

    def invert(model_patcher, style, style_map):
        return nodes.SCSAInvert.execute(model=model_patcher, conditioning=conditioning, steps=STEPS,
                                        blocks="auto", refine_steps=1, content=latents["content"],
                                        content_map=latents["content_map"], style=style,
                                        style_map=style_map).result[0]

    with torch.inference_mode():
        inversion = invert(patcher, latents["style"], latents["style_map"])
        fresh = _sample(model, inversion)
        library.SCSASaveStyleInversion.execute(inversion=inversion, filename_prefix=f"flux_{variant}", style=1,
                                               style_map_image=map_image)
        saved = sorted(style_folder.glob(f"flux_{variant}_*.safetensors"))
        assert len(saved) == 1
        style, style_map, _ = library.SCSALoadStyleInversion.execute(style_file=saved[0].name).result
        loaded = invert(patcher, style, style_map)
        assert loaded.reused == ("style",), "the saved Flux style was inverted again"
        assert loaded.parameterisation == "flow" and loaded.refine_steps == 1
        for key in range(STEPS + 1):
            assert torch.equal(loaded.latent_at(key, "style"), inversion.latent_at(key, "style"))
        again = _sample(model, loaded)
        other = tiny_models.build_tiny_flux_patcher(variant, seed=1)
        with pytest.raises(ValueError, match="made with another model or another conditioning"):
            invert(other, style, style_map)
    assert torch.allclose(again, fresh, rtol=1e-4, atol=1e-5), (again - fresh).abs().max()


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


@pytest.mark.parametrize("variant", VARIANTS)
def test_refinement_makes_sampling_retrace_the_inversion(request, variant, comfy):
    """SCSAInvert's refine_steps solves each inversion step as the implicit equation that the
    Euler sampler's step inverts exactly, so sampling back (injection off) lands closer to the
    content than after plain Euler inversion, on the tiny model's non-linear velocity."""
    patcher = _patcher(request, variant)
    nodes = pack_module("nodes/diffusion_nodes.py")
    latents = _latents(variant)
    content = latents["content"]["samples"]
    errors = {}
    with torch.inference_mode():
        for refine_steps in (0, 4):
            inversion = nodes.SCSAInvert.execute(
                model=patcher, conditioning=tiny_models.tiny_flux_conditioning(variant), steps=8, blocks="auto",
                refine_steps=refine_steps, content=latents["content"], style=latents["style"]).result[0]
            back = _sample(_apply(patcher, start=0.0, end=0.0), inversion, init="none")
            errors[refine_steps] = (back - content).abs().max().item()
    assert errors[4] < errors[0] / 4, errors


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_rows_stop_after_the_last_injected_block(request, variant, comfy, monkeypatch):
    """Injecting in the double blocks only: the single blocks after them run the sample row
    alone (an attention override installed before SCSA sees batch 1 there, and the sample
    with its four references in the double blocks), and the sample equals that of a run that
    keeps the references to the last block, up to float rounding."""
    patcher = _patcher(request, variant)
    seen = {}

    def earlier_override(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        seen.setdefault(options.get("block_type"), set()).add(args[0].shape[0])
        return func(*args, **kwargs)

    patcher.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = earlier_override
    flux = pack_module("nodes/families/flux.py")
    with torch.inference_mode():
        inversion = _invert(patcher, variant, _latents(variant), blocks="double 0-1")
        model = _apply(patcher, semantics=_semantics())
        seen.clear()
        trimmed = _sample(model, inversion)
        trimmed_seen = dict(seen)
        monkeypatch.setattr(flux.FluxFamily, "stop_reference_rows", False)
        seen.clear()
        full = _sample(model, inversion)
    assert trimmed_seen == {"double": {5}, "single": {1}}, trimmed_seen
    assert seen == {"double": {5}, "single": {5}}, seen
    assert torch.allclose(trimmed, full, rtol=1e-5, atol=1e-5), (trimmed - full).abs().max()
