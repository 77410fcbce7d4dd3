"""Flux.1 / Flux.2 layout probes: what each ComfyUI hook sees inside the tiny Flux models.

The SCSA Flux path is built on ComfyUI's hooks (attention override, attn1 patches, the "dit" block
replace) and on facts about the token layout that upstream does not promise: text tokens first,
the image grid row-major at (H/p)x(W/p), block_type / block_index / total_blocks / img_slice in
transformer_options, q/k/v as [B, H, L, D], RoPE applied after the attn1 patch and before the
override. These tests record those facts from inside the hooks, installed through the public
ModelPatcher API on a clone, during one model call made by comfy.sample.sample_custom with the
stock euler KSAMPLER, so that an upstream change fails here first, with the fact that changed.

Where 0.3.75 and 0.33.0 differ (the attn1 patches and img_slice exist only in 0.33.0, the float32
cast of noise and latent before the sampler function), the expectation follows the running
version: 0.3.75 and older have the old behaviour, anything newer must have 0.33.0's.
"""
from __future__ import annotations

import pytest
import torch

from layout_probes import block_order, block_position
from scripts import tiny_models

VARIANTS = ("flux1", "flux2")
LATENT_HW = {"flux1": (16, 12), "flux2": (8, 6)}  # non-square, so rows and columns cannot swap
PATCH = {"flux1": 2, "flux2": 1}
TEXT_TOKENS = 7
# model_base.Flux2.extra_conds left-pads the text with zeros to 512 tokens.
TEXT_LEN = {"flux1": TEXT_TOKENS, "flux2": 512}
HEADS = tiny_models.FLUX_TINY_HEADS
HEAD_DIM = tiny_models.FLUX_TINY_HIDDEN // tiny_models.FLUX_TINY_HEADS
DOUBLE_BLOCKS, SINGLE_BLOCKS = 2, 3
BLOCK_ORDER = [("double", i, DOUBLE_BLOCKS) for i in range(DOUBLE_BLOCKS)] + \
              [("single", i, SINGLE_BLOCKS) for i in range(SINGLE_BLOCKS)]
ONE_STEP = [1.0, 0.0]  # one euler step: one model call, at sigma 1 where x is the noise itself


def _version_tuple(version: str) -> tuple:
    return tuple(int(part) for part in version.split(".")[:3])


@pytest.fixture
def flux_hooks_in_blocks(comfy_core) -> bool:
    """Whether the Flux blocks call attn1_patch / attn1_output_patch and publish img_slice
    (added after 0.3.75; present in 0.33.0)."""
    return _version_tuple(comfy_core.version) > (0, 3, 75)


@pytest.fixture
def sampler_gets_float32(comfy_core) -> bool:
    """Whether CFGGuider.outer_sample casts noise and latent to float32 before the sampler
    function (0.33.0; 0.3.75 keeps their dtype)."""
    return _version_tuple(comfy_core.version) > (0, 3, 75)


@pytest.fixture(params=VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture
def flux(variant, request):
    """The tiny patcher of ``variant`` (its fixture skips where ComfyUI lacks the class)."""
    return request.getfixturevalue(f"tiny_{variant}_patcher")


def _grid(variant):
    h, w = LATENT_HW[variant]
    p = PATCH[variant]
    return (h + p // 2) // p, (w + p // 2) // p


def _noise(variant, seed=0, dtype=torch.float32):
    h, w = LATENT_HW[variant]
    shape = (1, tiny_models.tiny_flux_latent_channels(variant), h, w)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _sample(patcher, variant, noise, sigmas=ONE_STEP, latent=None, conditioning=None, sampler=None):
    import comfy.sample
    import comfy.samplers
    cond = conditioning if conditioning is not None else \
        tiny_models.tiny_flux_conditioning(variant, tokens=TEXT_TOKENS)
    latent = torch.zeros_like(noise) if latent is None else latent
    sampler = sampler if sampler is not None else comfy.samplers.ksampler("euler")
    sigmas = sigmas if torch.is_tensor(sigmas) else torch.tensor(sigmas)
    # cfg 1: ComfyUI skips the negative, so there is exactly one model call per step
    return comfy.sample.sample_custom(patcher, noise, 1.0, sampler, sigmas, cond, cond, latent,
                                      disable_pbar=True, seed=0)


def _install_override(patcher, record: list):
    """A recording attention override that chains to whatever override was installed before it
    (as SCSA must), else to ComfyUI's backend ``func``."""
    options = patcher.model_options["transformer_options"]
    previous = options.get("optimized_attention_override")

    def recording_override(func, *args, **kwargs):
        q, k, v, heads = args[:4]
        record.append(dict(block_position(kwargs["transformer_options"]), q=q.clone(), k=k.clone(), v=v.clone(),
                           heads=heads, n_args=len(args), kwargs=sorted(kwargs),
                           skip_reshape=kwargs.get("skip_reshape"), mask=kwargs.get("mask")))
        out = previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
        record[-1]["out_shape"] = tuple(out.shape)
        return out

    options["optimized_attention_override"] = recording_override


def _install_attn1_patches(patcher, before: list, after: list):
    def attn1_recorder(q, k, v, pe=None, attn_mask=None, extra_options=None):
        before.append(dict(block_position(extra_options), q=q.clone(), k=k.clone(), v=v.clone(), pe=pe))
        return {}  # change nothing

    def attn1_output_recorder(attn, extra_options):
        after.append(dict(block_position(extra_options), shape=tuple(attn.shape)))
        return attn

    patcher.set_model_attn1_patch(attn1_recorder)
    patcher.set_model_attn1_output_patch(attn1_output_recorder)


# ---------------------------------------------------------------------------- the override
def test_override_sees_every_block_in_order_with_joint_layout(flux, variant, flux_hooks_in_blocks):
    sentinel_calls = []

    def sentinel_override(func, *args, **kwargs):  # installed first, as another pack would
        sentinel_calls.append(kwargs["transformer_options"].get("block_type"))
        return func(*args, **kwargs)

    model = flux.clone()
    model.model_options["transformer_options"]["optimized_attention_override"] = sentinel_override
    record = []
    _install_override(model, record)
    out = _sample(model, variant, _noise(variant))

    assert torch.isfinite(out).all()
    assert block_order(record) == BLOCK_ORDER
    assert len(sentinel_calls) == len(record), "chained override was not reached on pass-through"
    text_len = TEXT_LEN[variant]
    h, w = _grid(variant)
    length = text_len + h * w
    for r in record:
        where = (r["block_type"], r["block_index"])
        assert r["n_args"] == 4 and r["heads"] == HEADS, where
        for name in ("q", "k", "v"):
            assert tuple(r[name].shape) == (1, HEADS, length, HEAD_DIM), (where, name)
        assert r["skip_reshape"] is True and r["mask"] is None, where
        assert {"transformer_options", "skip_reshape", "mask"} <= set(r["kwargs"]), where
        assert r["out_shape"] == (1, length, HEADS * HEAD_DIM), where
        # In double blocks img_slice lives only in the attn1 patches' extra_options copy, never in
        # the override's transformer_options; single blocks publish it from 0.33.0 on.
        if r["block_type"] == "single" and flux_hooks_in_blocks:
            assert r["img_slice"] == [text_len, length], where
        else:
            assert r["img_slice"] is None, where


def test_text_tokens_come_first_and_image_is_row_major(flux, variant):
    """In the first double block the image rows of v depend only on their own latent patch (per
    token LayerNorm and linear layers) and the text rows only on the text: changing the text
    moves exactly rows [0, T), changing one latent pixel moves exactly the token
    (row // p) * w + (col // p) after them."""
    text_len = TEXT_LEN[variant]
    h, w = _grid(variant)
    p = PATCH[variant]

    def first_block_v(noise, conditioning=None):
        record = []
        model = flux.clone()
        _install_override(model, record)
        _sample(model, variant, noise, conditioning=conditioning)
        assert (record[0]["block_type"], record[0]["block_index"]) == ("double", 0)
        return record[0]["v"][0]  # [H, L, D]

    def changed_rows(a, b):
        return sorted(set(torch.nonzero((a != b).any(dim=-1).any(dim=0)).flatten().tolist()))

    noise = _noise(variant)
    base = first_block_v(noise)

    # only the token context changes; the pooled vector (Flux.1) modulates the image stream too
    context, options = tiny_models.tiny_flux_conditioning(variant, tokens=TEXT_TOKENS)[0]
    other_text = [[torch.randn(context.shape, generator=torch.Generator().manual_seed(1)), options]]
    moved = changed_rows(base, first_block_v(noise, other_text))
    real_text = range(text_len - TEXT_TOKENS, text_len)  # Flux.2's padding is on the left, constant
    assert moved and set(moved) <= set(range(text_len)) and set(real_text) <= set(moved)

    row, col = LATENT_HW[variant][0] - 3, 1  # a pixel off the diagonal, in a non-square grid
    poked = noise.clone()
    poked[0, 0, row, col] += 1.0
    assert changed_rows(base, first_block_v(poked)) == [text_len + (row // p) * w + (col // p)]


# ---------------------------------------------------------------------------- block replace
def test_dit_block_replace_args_and_return(flux, variant, flux_hooks_in_blocks):
    text_len = TEXT_LEN[variant]
    h, w = _grid(variant)
    hidden = tiny_models.FLUX_TINY_HIDDEN
    record = []

    def make_replace(kind):
        def replace(args, extra):
            options = args["transformer_options"]
            entry = dict(block_position(options), kind=kind, arg_keys=sorted(args), extra_keys=sorted(extra),
                         shapes={k: tuple(args[k].shape) for k in ("img", "txt") if k in args},
                         vec_type=type(args["vec"]).__name__, pe_shape=tuple(args["pe"].shape))
            out = extra["original_block"](args)
            entry["out_keys"] = sorted(out)
            entry["out_shapes"] = {k: tuple(v.shape) for k, v in out.items()}
            record.append(entry)
            return out
        return replace

    model = flux.clone()
    for i in range(DOUBLE_BLOCKS):
        model.set_model_patch_replace(make_replace("double_block"), "dit", "double_block", i)
    for i in range(SINGLE_BLOCKS):
        model.set_model_patch_replace(make_replace("single_block"), "dit", "single_block", i)
    noise = _noise(variant)
    replaced = _sample(model, variant, noise)

    assert block_order(record) == BLOCK_ORDER
    # Flux.2's global modulation hands the blocks ModulationOut tuples instead of a vec tensor.
    double_vec = "tuple" if variant == "flux2" else "Tensor"
    single_vec = "ModulationOut" if variant == "flux2" else "Tensor"
    for r in record:
        where = (r["kind"], r["block_index"])
        assert r["extra_keys"] == ["original_block"], where
        assert r["pe_shape"][:3] == (1, 1, text_len + h * w), where
        if r["kind"] == "double_block":
            assert r["block_type"] == "double" and r["img_slice"] is None, where
            assert r["arg_keys"] == ["attn_mask", "img", "pe", "transformer_options", "txt", "vec"], where
            assert r["shapes"] == {"img": (1, h * w, hidden), "txt": (1, text_len, hidden)}, where
            assert r["out_keys"] == ["img", "txt"] and r["out_shapes"] == r["shapes"], where
            assert r["vec_type"] == double_vec, where
        else:
            assert r["block_type"] == "single", where
            assert r["img_slice"] == ([text_len, text_len + h * w] if flux_hooks_in_blocks else None), where
            assert r["arg_keys"] == ["attn_mask", "img", "pe", "transformer_options", "vec"], where
            assert r["shapes"] == {"img": (1, text_len + h * w, hidden)}, where  # cat(txt, img)
            assert r["out_keys"] == ["img"] and r["out_shapes"] == r["shapes"], where
            assert r["vec_type"] == single_vec, where
    # a replace that only calls original_block is the stock model, bit for bit
    assert torch.equal(replaced, _sample(flux.clone(), variant, noise))


# ---------------------------------------------------------------------------- attn1 patches, RoPE
def test_attn1_patches_see_pre_rope_qkv_and_the_override_post_rope(flux, variant, flux_hooks_in_blocks):
    from comfy.ldm.flux.math import apply_rope
    before, after, override = [], [], []
    model = flux.clone()
    _install_attn1_patches(model, before, after)
    _install_override(model, override)
    _sample(model, variant, _noise(variant))

    assert block_order(override) == BLOCK_ORDER
    if not flux_hooks_in_blocks:
        # 0.3.75's Flux blocks never call them: SCSA has only the override (post-RoPE) there
        assert before == [] and after == []
        return
    text_len = TEXT_LEN[variant]
    h, w = _grid(variant)
    length = text_len + h * w
    assert block_order(before) == BLOCK_ORDER and block_order(after) == BLOCK_ORDER
    for pre, post, out in zip(before, override, after):
        where = (pre["block_type"], pre["block_index"])
        assert pre["img_slice"] == [text_len, length] and out["img_slice"] == [text_len, length], where
        assert tuple(pre["q"].shape) == (1, HEADS, length, HEAD_DIM), where
        assert out["shape"] == (1, length, HEADS * HEAD_DIM), where
        assert torch.equal(pre["v"], post["v"]), where  # v carries no position
        q_roped, k_roped = apply_rope(pre["q"], pre["k"], pre["pe"])
        torch.testing.assert_close(post["q"], q_roped, rtol=1e-5, atol=1e-6, msg=str(where))
        torch.testing.assert_close(post["k"], k_roped, rtol=1e-5, atol=1e-6, msg=str(where))
        image = slice(text_len, length)
        assert not torch.allclose(post["q"][:, :, image], pre["q"][:, :, image], atol=1e-3), where


def test_rope_options_shift_moves_only_image_keys_seen_by_the_override(flux, variant, flux_hooks_in_blocks):
    """set_model_rope_options shifts the image positions only. In the first double block (whose
    inputs do not depend on positions) the override's image q/k move, its text q/k and all of v
    stay, and the attn1 patch's q/k (0.33.0) stay: RoPE is applied between the two."""
    text_len = TEXT_LEN[variant]

    def first_block(shift):
        override, before = [], []
        model = flux.clone()
        if shift:
            model.set_model_rope_options(1.0, 5.0, 1.0, 3.0, 1.0, 0.0)  # scale/shift x, y, t
        _install_attn1_patches(model, before, [])
        _install_override(model, override)
        _sample(model, variant, _noise(variant))
        return override[0], (before[0] if before else None)

    (plain, plain_pre), (shifted, shifted_pre) = first_block(False), first_block(True)
    assert (plain["block_type"], plain["block_index"]) == ("double", 0)
    assert torch.equal(plain["v"], shifted["v"])
    for name in ("q", "k"):
        assert torch.equal(plain[name][:, :, :text_len], shifted[name][:, :, :text_len]), name
        assert not torch.allclose(plain[name][:, :, text_len:], shifted[name][:, :, text_len:], atol=1e-3), name
    if flux_hooks_in_blocks:
        for name in ("q", "k", "v"):
            assert torch.equal(plain_pre[name], shifted_pre[name]), name
    else:
        assert plain_pre is None and shifted_pre is None


# ---------------------------------------------------------------------------- sampling path
def test_model_sampling_and_latent_format(flux, variant):
    import comfy.latent_formats
    import comfy.model_sampling
    sampling = flux.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.ModelSamplingFlux)
    assert isinstance(sampling, comfy.model_sampling.CONST)
    assert sampling.shift == pytest.approx({"flux1": 1.15, "flux2": 2.02}[variant])
    assert float(sampling.sigma_max) == pytest.approx(1.0)
    assert float(sampling.timestep(torch.tensor(0.25))) == pytest.approx(0.25)  # timestep = sigma
    latent_format = flux.get_model_object("latent_format")
    assert type(latent_format) is {"flux1": comfy.latent_formats.Flux, "flux2": comfy.latent_formats.Flux2}[variant]
    assert latent_format.latent_channels == tiny_models.tiny_flux_latent_channels(variant)


def test_what_the_sampler_function_receives_and_how_its_result_is_returned(flux, variant, sampler_gets_float32):
    """sample_custom → CFGGuider → KSAMPLER: x0 = sigma0*noise + (1-sigma0)*process_latent_in(latent),
    sample_sigmas in transformer_options, result = process_latent_out(result / (1 - sigma_last)).
    0.3.75 hands float64 noise and latent through unchanged, 0.33.0 casts them to float32 first."""
    import comfy.samplers
    seen = {}

    def identity_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        seen.update(x=x.clone(), sigmas=sigmas.clone(),
                    sample_sigmas=extra_args["model_options"]["transformer_options"]["sample_sigmas"])
        return x

    noise = _noise(variant, seed=0, dtype=torch.float64)
    latent = _noise(variant, seed=1, dtype=torch.float64)  # non-zero, so process_latent_in applies
    sigmas = torch.tensor([0.75, 0.25], dtype=torch.float64)
    out = _sample(flux.clone(), variant, noise, sigmas=sigmas, latent=latent,
                  sampler=comfy.samplers.KSAMPLER(identity_sampler))

    assert seen["x"].dtype == (torch.float32 if sampler_gets_float32 else torch.float64)
    assert torch.equal(seen["sigmas"], sigmas) and torch.equal(seen["sample_sigmas"], sigmas)
    latent_format = flux.get_model_object("latent_format")
    expected_x = 0.75 * noise + 0.25 * latent_format.process_in(latent)
    torch.testing.assert_close(seen["x"].double(), expected_x, rtol=0, atol=1e-6)
    assert out.dtype == torch.float32
    expected_out = latent_format.process_out(seen["x"].float() / (1.0 - 0.25))
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)


def test_guidance_is_an_input_and_defaults_to_3_5(flux, variant):
    noise = _noise(variant)

    def run(**extra):
        context, options = tiny_models.tiny_flux_conditioning(variant, tokens=TEXT_TOKENS)[0]
        options = {k: v for k, v in options.items() if k != "guidance"}
        return _sample(flux.clone(), variant, noise, conditioning=[[context, dict(options, **extra)]])

    at_1, at_4, default = run(guidance=1.0), run(guidance=4.0), run()
    assert not torch.allclose(at_1, at_4, atol=1e-4)
    assert torch.equal(default, run(guidance=3.5))


def test_stock_euler_run_is_deterministic(flux, variant):
    """A SamplerCustom-style run (own schedule, stock euler) on a fresh clone each time."""
    import comfy.samplers
    sigmas = comfy.samplers.calculate_sigmas(flux.get_model_object("model_sampling"), "simple", 3)
    assert sigmas.shape == (4,) and float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0
    noise = _noise(variant)
    first = _sample(flux.clone(), variant, noise, sigmas=sigmas)
    second = _sample(flux.clone(), variant, noise, sigmas=sigmas)
    assert first.shape == noise.shape and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.allclose(first, noise, atol=1e-3)  # the model moved the latent
