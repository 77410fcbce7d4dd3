"""SCSA on every joint-attention DiT family (experimental): Flux.1, Flux.2, Qwen-Image, Z-Image and
SD3.5, as tiny random-weight models built through ComfyUI's own classes
(``scripts/tiny_models.build_tiny_dit_patcher``), through the pack's nodes and pipeline, on CPU.

The same properties on each family: the flow plumbing through ComfyUI's sampler path (a zero
velocity inverts exactly, a constant one round-trips), a run with injection switched off is a
stock SamplerCustom euler run bit for bit, an attention override installed before SCSA runs on
every call, the nodes inject, refinement, saved styles. And, from inside a real injected model
call: the sample's image rows equal a dense float64 reference written plainly here from that
call's q/k/v and the family's token layout (tests/test_dit_layout.py probes that layout), and
no attention mass crosses labels. Flux-only behaviour (guidance, its block names):
tests/test_flux.py.
"""
from __future__ import annotations

import pytest
import torch

from scripts import tiny_models
from scripts.comfy_inprocess import pack_module
from test_joint_attention import _dense_reference
from test_style_reuse import style_folder  # noqa: F401  (a fixture)

VARIANTS = list(tiny_models.DIT_VARIANTS)
LATENT_HW = (8, 6)   # patch 2: a 4 x 3 token grid (Z-Image pads its 12 image tokens to 32); Flux.2: 8 x 6
STEPS = 3
# The module whose weight and bias make the model's output (a constant output = a constant velocity).
OUTPUT_LAYER = {"flux1": "final_layer.linear", "flux2": "final_layer.linear", "qwen_image": "proj_out",
                "z_image": "final_layer.linear", "sd35": "final_layer.linear"}
# Token layout, as tests/test_dit_layout.py probes it: image tokens after the text, Z-Image's
# padded to a multiple of 32 at the end; SD3 calls attention with [B, L, H * D].
PADDED_TO = {"z_image": 32}
FLAT_QKV = {"sd35"}
NO_ROPE = {"sd35"}
RUN_KEY = "scsa_run"


def _publishes_z_image_block_index(comfy_core) -> bool:
    """ComfyUI 0.3.75's Z-Image / Lumina layers publish no block_index (0.33.0's do)."""
    return tuple(int(part) for part in comfy_core.version.split(".")[:3]) > (0, 3, 75)


def _patcher(request, variant):
    if variant == "z_image" and not _publishes_z_image_block_index(request.getfixturevalue("comfy_core")):
        pytest.skip("ComfyUI 0.3.75's Z-Image layers publish no block index, so SCSA stops with a clear error "
                    "there (test_z_image_on_comfyui_0_3_75_stops_with_a_clear_error)")
    return request.getfixturevalue(f"tiny_{variant}_patcher")


def _latents(variant, seed=4):
    return {name: {"samples": tiny_models.tiny_dit_latent(variant, *LATENT_HW, seed=seed + index)}
            for index, name in enumerate(("content", "style", "content_map", "style_map"))}


def _semantics():
    """Content: label 0 on the top half, 1 on the bottom; the style the other way round."""
    labels = pack_module("scsa_core/labels/__init__.py")
    masks = torch.zeros(2, 64, 48)
    masks[0, :32], masks[1, 32:] = 1, 1
    return labels.labels_from_masks(masks, masks.flip(1), threshold=0.5)


def _apply(patcher, **settings):
    nodes = pack_module("nodes/diffusion_nodes.py")
    values = dict(preset="default", sca_weight=0.8, ssa_weight=0.2, semantic_share=0.3, content_share=0.5,
                  temperature=1.2, gamma=0.75)
    values.update(settings)
    return nodes.SCSAApply.execute(model=patcher, **values).result[0]


def _invert(patcher, variant, latents, blocks="auto", conditioning=None, **inputs):
    nodes = pack_module("nodes/diffusion_nodes.py")
    conditioning = conditioning if conditioning is not None else tiny_models.tiny_dit_conditioning(variant)
    return nodes.SCSAInvert.execute(model=patcher, conditioning=conditioning, steps=STEPS, blocks=blocks, **inputs,
                                    **latents).result[0]


def _sample(model, inversion, init="auto"):
    nodes = pack_module("nodes/diffusion_nodes.py")
    return nodes.SCSAStyleSampler.execute(model=model, inversion=inversion, init=init,
                                          timesteps="official").result[0]["samples"]


def _all_blocks(patcher) -> str:
    family = pack_module("nodes/families/__init__.py").family_of(patcher)
    return ", ".join(f"{name} {index}" for name, index in family.attention_blocks())


def _constant_output(patcher, variant, bias_std: float) -> None:
    """The model's output layer made to ignore its input: a linear layer with zero weight and a
    bias of ``bias_std`` spread (a layer without bias is swapped for one that has it)."""
    *path, name = OUTPUT_LAYER[variant].split(".")
    owner = patcher.model.diffusion_model
    for part in path:
        owner = getattr(owner, part)
    old = getattr(owner, name)
    layer = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.normal_(0.0, bias_std, generator=torch.Generator().manual_seed(1)) if bias_std else \
            layer.bias.zero_()
    setattr(owner, name, layer)


# ------------------------------------------------------------------------ flow plumbing
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_zero_velocity_model_inverts_to_its_input_exactly(request, variant, comfy):
    """The model predicts no velocity: every latent of the inversion is the clean latent as
    ComfyUI scaled it in. Catches a sampler that starts from anything but the real latent."""
    patcher = _patcher(request, variant)
    _constant_output(patcher, variant, 0.0)
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
    _constant_output(patcher, variant, 0.5)
    latents = _latents(variant)
    with torch.inference_mode():
        inversion = _invert(patcher, variant, {"content": latents["content"], "style": latents["style"]})
        assert not torch.equal(inversion.latent_at(STEPS, "content"), inversion.latent_at(0, "content"))
        back = _sample(_apply(patcher, start=0.0, end=0.0), inversion, init="none")
    content = latents["content"]["samples"]
    assert back.shape == content.shape
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


# --------------------------------------------------------------------- the nodes inject
@pytest.mark.parametrize("variant", VARIANTS)
def test_an_earlier_attention_override_still_runs_on_every_call(request, variant, comfy):
    """An override installed before SCSA (an attention-backend node) sees every attention call
    of the sampler, injected blocks included (SCSA gets their plain attention through it)."""
    patcher = _patcher(request, variant)
    seen = []

    def sentinel(func, *args, **kwargs):
        seen.append(args[0].shape[0])
        return func(*args, **kwargs)

    backend = patcher.clone()
    backend.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = sentinel
    latents = _latents(variant)
    with torch.inference_mode():
        inversion = _invert(backend, variant, latents)
        seen.clear()
        _sample(_apply(backend, semantics=_semantics(), start=0.0, end=0.0), inversion)
        plain_calls = len(seen)
        seen.clear()
        injected = _sample(_apply(backend, semantics=_semantics()), inversion)
        plain = _sample(_apply(backend, semantics=_semantics(), start=0.0, end=0.0), inversion)
    # the plain run: batch 1 in every call; the injected run: the same calls, the sample and its
    # four references riding along (batch 5) up to the last injected block at least
    assert plain_calls >= STEPS and len(seen) == 2 * plain_calls
    assert sorted(set(seen)) in ([1, 5], [5]), sorted(set(seen))
    assert not torch.allclose(injected, plain, rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_nodes_inject(request, variant, comfy, caplog):
    """SCSAInvert -> SCSAApply -> SCSAStyleSampler: a finite latent of the content's shape that
    SCSA changed, lite mode (no map latents, semantic_share 0) too, and the experimental
    warning. rope_mode moves the style keys where the family has RoPE, and nothing on SD3."""
    patcher = _patcher(request, variant)
    latents = _latents(variant)
    with torch.inference_mode():
        with caplog.at_level("WARNING", logger="scsa"):
            full = _invert(patcher, variant, latents, blocks=_all_blocks(patcher))
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
    assert torch.equal(outputs["scsa"], outputs["shared"]) == (variant in NO_ROPE)


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
                model=patcher, conditioning=tiny_models.tiny_dit_conditioning(variant), steps=8, blocks="auto",
                refine_steps=refine_steps, content=latents["content"], style=latents["style"]).result[0]
            back = _sample(_apply(patcher, start=0.0, end=0.0), inversion, init="none")
            errors[refine_steps] = (back - content).abs().max().item()
    assert errors[4] < errors[0] / 3, errors   # Flux 7-14x, Z-Image's tiny model 3.6x


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_saved_style_loads_checks_its_model_and_is_not_inverted_again(request, variant, comfy, style_folder):
    """Save Style Inversion writes the inversion (format 2: step-index trajectory, refine_steps);
    Load Style Inversion gives it back (its inverted_style output), SCSAInvert reuses it after checking the model (one step
    redone), and the sample equals the fresh run's up to float rounding. Another model's
    velocity is refused by that check."""
    patcher = _patcher(request, variant)
    library = pack_module("nodes/style_library_nodes.py")
    latents = _latents(variant)
    model = _apply(patcher, semantics=_semantics())
    map_image = torch.rand(1, 64, 48, 3, generator=torch.Generator().manual_seed(3))

    with torch.inference_mode():
        inversion = _invert(patcher, variant, latents, refine_steps=1)
        fresh = _sample(model, inversion)
        library.SCSASaveStyleInversion.execute(inversion=inversion, filename_prefix=f"dit_{variant}", style=1,
                                               style_map_image=map_image)
        saved = sorted(style_folder.glob(f"dit_{variant}_*.safetensors"))
        assert len(saved) == 1
        *_, inverted_style = library.SCSALoadStyleInversion.execute(style_file=saved[0].name).result
        loaded = _invert(patcher, variant, {"content": latents["content"], "content_map": latents["content_map"]},
                         refine_steps=1, inverted_style=inverted_style)
        assert loaded.reused == ("style",), "the saved style was inverted again"
        assert loaded.parameterisation == "flow" and loaded.refine_steps == 1
        for key in range(STEPS + 1):
            assert torch.equal(loaded.latent_at(key, "style"), inversion.latent_at(key, "style"))
        again = _sample(model, loaded)
        other = tiny_models.build_tiny_dit_patcher(variant, seed=1)
        with pytest.raises(ValueError, match="made with another model or another conditioning"):
            _invert(other, variant, {"content": latents["content"], "content_map": latents["content_map"]},
                    refine_steps=1, inverted_style=inverted_style)
    assert torch.allclose(again, fresh, rtol=1e-4, atol=1e-5), (again - fresh).abs().max()


# ------------------------------------------------- inside one injected model call
def _recorded_calls(monkeypatch):
    """Every call of SCSA's attention override during sampling: ``(override, func, args, kwargs,
    output, injected, block key)``, the output cloned at return, the key read at call time (the
    model goes on writing into the same transformer_options)."""
    joint = pack_module("nodes/families/joint.py")
    calls = []
    original = joint.JointAttentionOverride.__call__

    def recording(self, func, *args, **kwargs):
        output = original(self, func, *args, **kwargs)
        options = kwargs.get("transformer_options") or {}
        run, key = options.get(RUN_KEY), self.family.block_key(options)
        injected = run is not None and key is not None and run.acts_on(key)
        calls.append((self, func, args, kwargs, output.clone(), injected, key))
        return output

    monkeypatch.setattr(joint.JointAttentionOverride, "__call__", recording)
    return calls


def _heads_first(variant, tensor, heads, dim):
    """q / k / v of a call as [B, H, L, D] (SD3 hands q, k as [B, L, H * D] and v as [B, L, H, D])."""
    return tensor.reshape(tensor.shape[0], -1, heads, dim).transpose(1, 2) if variant in FLAT_QKV else tensor


def _call_heads(variant, args, kwargs):
    """(heads, head dim) of a recorded attention call."""
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    return heads, (args[0].shape[-1] // heads if variant in FLAT_QKV else args[0].shape[-1])


def _layout(variant, length, grid):
    """The image tokens and every other token (the context the image queries keep) of a call."""
    tokens = grid[0] * grid[1]
    padding = (-tokens) % PADDED_TO[variant] if variant in PADDED_TO else 0
    image = torch.arange(length - padding - tokens, length - padding)
    context = torch.tensor([i for i in range(length) if not (image[0] <= i <= image[-1])], dtype=torch.long)
    return image, context


def _grid(variant):
    patch = 1 if variant == "flux2" else 2
    return LATENT_HW[0] // patch, LATENT_HW[1] // patch


def _grid_labels(grid):
    """The semantics of :func:`_semantics` on a token grid with an even number of rows."""
    rows = torch.arange(grid[0]).repeat_interleave(grid[1])
    top = (rows < grid[0] // 2).long()
    return 1 - top, top   # content: 0 on top; style: 0 at the bottom


def _injected_run(request, variant, monkeypatch, conditioning=None):
    """One injected sampling run with every block injected and rope_mode shared: the recorded
    override calls, the inversion and the settings."""
    patcher = _patcher(request, variant)
    latents = _latents(variant)
    calls = _recorded_calls(monkeypatch)
    model = _apply(patcher, semantics=_semantics(), rope_mode="shared")
    with torch.inference_mode():
        inversion = _invert(patcher, variant, latents, blocks=_all_blocks(patcher), conditioning=conditioning)
        calls.clear()
        _sample(model, inversion)
    settings = pack_module("nodes/injection.py").apply_settings(model)
    return calls, inversion, settings


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_injected_call_matches_the_dense_float64_reference(request, variant, comfy, monkeypatch):
    """Each injected attention call of the first step: the sample's image rows equal SCSA
    computed densely in float64 from that call's q/k/v (the reference rows' projections, the
    sample's context keys by the family's layout, the labels on the token grid); every other row
    is the model's own attention, unchanged. SD3.5's MMDiT-X blocks: their image-only second
    call is checked too (no context keys)."""
    calls, inversion, settings = _injected_run(request, variant, monkeypatch)
    injected = [call for call in calls if call[5]]
    family = pack_module("nodes/families/__init__.py").family_of(_patcher(request, variant))
    per_step = len(family.attention_blocks()) + (2 if variant == "sd35" else 0)   # MMDiT-X: 2 more calls
    assert len(injected) == STEPS * per_step, (len(injected), per_step)
    rows = {name: 1 + index for index, name in enumerate(inversion.batches[0])}
    content_labels, style_labels = _grid_labels(_grid(variant))
    for _, func, args, kwargs, output, *_ in injected[:per_step]:
        heads, dim = _call_heads(variant, args, kwargs)
        q, k, v = (_heads_first(variant, t, heads, dim).to(torch.float64) for t in args[:3])
        image, context = _layout(variant, q.shape[2], _grid(variant))
        refs = pack_module("scsa_core/joint_attention.py").JointReferences(
            content_query=q[rows["content"]][:, image], style_query=q[rows["style"]][:, image],
            style_key=k[rows["style"]][:, image], style_value=v[rows["style"]][:, image],
            content_map_query=q[rows["content_map"]][:, image], style_map_key=k[rows["style_map"]][:, image])
        case = (q[:1][:, :, image], k[:1][:, :, context], v[:1][:, :, context], refs, content_labels, style_labels,
                None)
        expected, *_ = _dense_reference(case, settings.params)
        got = output[:1, image].unflatten(-1, (heads, -1)).transpose(1, 2).to(torch.float64)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (got - expected).abs().max()
        plain = func(*args, **kwargs)
        untouched = torch.ones(output.shape[:2], dtype=torch.bool)
        untouched[0, image] = False
        assert torch.equal(output[untouched], plain[untouched])
    if variant == "sd35":
        assert any(call[2][0].shape[1] == _grid(variant)[0] * _grid(variant)[1] for call in injected[:per_step]), \
            "no image-only MMDiT-X call was injected"


def test_padded_text_stays_out_of_the_image_queries_keys(request, comfy_core, comfy, monkeypatch):
    """Qwen-Image with a text attention mask (ComfyUI 0.33 passes it when the prompt is padded):
    the sample's image rows equal the dense reference over the unmasked text tokens only."""
    if not _publishes_z_image_block_index(comfy_core):   # the same ComfyUI release line
        pytest.skip("ComfyUI 0.3.75's Qwen-Image passes no text attention mask to its attention")
    conditioning = tiny_models.tiny_dit_conditioning("qwen_image")
    mask = torch.ones(1, 7, dtype=torch.long)
    mask[0, -2:] = 0   # the last two text tokens are padding
    conditioning = [[conditioning[0][0], {"attention_mask": mask}]]
    calls, inversion, settings = _injected_run(request, "qwen_image", monkeypatch, conditioning)
    _, func, args, kwargs, output, *_ = next(call for call in calls if call[5])
    assert args[4] is not None, "the text mask did not reach the attention call"
    rows = {name: 1 + index for index, name in enumerate(inversion.batches[0])}
    q, k, v = (t.to(torch.float64) for t in args[:3])
    image, context = _layout("qwen_image", q.shape[2], _grid("qwen_image"))
    context = context[:5]   # the five real text tokens
    refs = pack_module("scsa_core/joint_attention.py").JointReferences(
        content_query=q[rows["content"]][:, image], style_query=q[rows["style"]][:, image],
        style_key=k[rows["style"]][:, image], style_value=v[rows["style"]][:, image],
        content_map_query=q[rows["content_map"]][:, image], style_map_key=k[rows["style_map"]][:, image])
    content_labels, style_labels = _grid_labels(_grid("qwen_image"))
    expected, *_ = _dense_reference((q[:1][:, :, image], k[:1][:, :, context], v[:1][:, :, context], refs,
                                     content_labels, style_labels, None), settings.params)
    got = output[:1, image].unflatten(-1, (q.shape[1], -1)).transpose(1, 2).to(torch.float64)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_attention_mass_crosses_labels_in_a_model_call(request, variant, comfy, monkeypatch):
    """Re-running an injected call with the style's values changed on its label-1 tokens leaves
    every content token of label 0 exactly as it was (and changes the label-1 ones)."""
    calls, inversion, _ = _injected_run(request, variant, monkeypatch)
    override, func, args, kwargs, output, *_ = next(call for call in calls if call[5])
    style_row = 1 + inversion.batches[0].index("style")
    image, _ = _layout(variant, _heads_first(variant, args[0], *_call_heads(variant, args, kwargs)).shape[2],
                       _grid(variant))
    content_labels, style_labels = _grid_labels(_grid(variant))
    values = args[2].clone()
    tokens = image[style_labels == 1]
    if variant in FLAT_QKV:
        values[style_row, tokens] += 10.0
    else:
        values[style_row, :, tokens] += 10.0
    with torch.inference_mode():
        changed = override(func, args[0], args[1], values, *args[3:], **kwargs)
    label_0, label_1 = image[content_labels == 0], image[content_labels == 1]
    assert torch.equal(changed[0, label_0], output[0, label_0])
    assert not torch.allclose(changed[0, label_1], output[0, label_1])


def test_z_image_on_comfyui_0_3_75_stops_with_a_clear_error(tiny_z_image_patcher, comfy_core, comfy):
    """Where the model does not say which layer runs, no call can be injected: the first sampling
    step stops with InjectionLost naming the fix, instead of returning an unstyled image."""
    if _publishes_z_image_block_index(comfy_core):
        pytest.skip("this ComfyUI publishes Z-Image's block index: the other tests inject on Z-Image")
    injection = pack_module("nodes/injection.py")
    latents = _latents("z_image")
    with torch.inference_mode():
        inversion = _invert(tiny_z_image_patcher, "z_image", latents)
        with pytest.raises(injection.InjectionLost, match="update ComfyUI: Z-Image needs a version newer than 0.3.75"):
            _sample(_apply(tiny_z_image_patcher, semantics=_semantics()), inversion)


def test_z_image_refiners_are_left_alone(comfy, monkeypatch, request):
    """Z-Image's context and noise refiners run attention before the main layers, with no block
    index: during injected sampling SCSA's override hands each of those calls to ComfyUI's
    attention unchanged."""
    calls, _, _ = _injected_run(request, "z_image", monkeypatch)
    refiner_calls = [call for call in calls if call[6] is None]
    refiners = _patcher(request, "z_image").model.diffusion_model
    per_step = len(refiners.context_refiner) + len(refiners.noise_refiner)
    assert len(refiner_calls) == STEPS * per_step > 0
    for _, func, args, kwargs, output, injected, _ in refiner_calls:
        assert not injected
        assert torch.equal(output, func(*args, **kwargs))


@pytest.mark.parametrize("variant", ["flux1", "sd35"])
def test_reference_rows_stop_after_the_last_injected_block(request, variant, comfy, monkeypatch):
    """Injecting in the first blocks only: the blocks after them run the sample row alone (an
    attention override installed before SCSA sees batch 1 there, and the sample with its four
    references in the injected blocks), and the sample equals that of a run that keeps the
    references to the last block, up to float rounding. (Families whose model takes a block
    replace: Flux, SD3; Qwen-Image and Z-Image keep the rows.)"""
    patcher = _patcher(request, variant)
    seen = {}

    def earlier_override(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        seen.setdefault(options.get("block_index") is not None and options.get("block_type") == "double"
                        and options.get("block_index") < 2, set()).add(args[0].shape[0])
        return func(*args, **kwargs)

    patcher.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = earlier_override
    family = type(pack_module("nodes/families/__init__.py").family_of(patcher))
    with torch.inference_mode():
        inversion = _invert(patcher, variant, _latents(variant), blocks="double 0-1")
        model = _apply(patcher, semantics=_semantics())
        seen.clear()
        trimmed = _sample(model, inversion)
        trimmed_seen = dict(seen)
        monkeypatch.setattr(family, "stop_reference_rows", False)
        seen.clear()
        full = _sample(model, inversion)
    assert trimmed_seen == {True: {5}, False: {1}}, trimmed_seen
    assert seen == {True: {5}, False: {5}}, seen
    assert torch.allclose(trimmed, full, rtol=1e-5, atol=1e-5), (trimmed - full).abs().max()


def test_blocks_and_refusals_of_the_single_stack_families(tiny_qwen_image_patcher, comfy):
    """One block name ("double", ComfyUI's): bare numbers work, a block beyond the model names
    the valid range, the auto blocks are the last third."""
    family = pack_module("nodes/families/__init__.py").family_of(tiny_qwen_image_patcher)
    blocks = len(family.attention_blocks())
    assert family.resolve_blocks("auto") == {("double", i) for i in range(blocks - blocks // 3, blocks)}
    assert family.resolve_blocks("0-1") == family.resolve_blocks("double 0, 1") == {("double", 0), ("double", 1)}
    with pytest.raises(ValueError, match=rf"double 9 does not exist.*double 0-{blocks - 1}"):
        family.resolve_blocks("double 9")
    with pytest.raises(ValueError, match="cannot read"):
        family.resolve_blocks("single 1")
