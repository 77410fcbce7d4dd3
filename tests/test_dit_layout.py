"""Qwen-Image / Z-Image / SD3.5 layout probes: what each ComfyUI hook sees inside the tiny models.

As tests/test_flux_layout.py does for Flux: an SCSA path for these families would rest on
ComfyUI's hooks (the attention override, attn1 patches, the "dit" double_block replace, the
double_block / noise_refiner patches) and on token-layout facts upstream does not promise. These
tests record those facts from inside the hooks, installed through the public ModelPatcher API on
a clone, during one model call made by comfy.sample.sample_custom with the stock euler KSAMPLER
(cfg 1, sigmas [1, 0]: at sigma 1 the model's input is the noise itself), and check the layout by
value (recomputing rows from the latent, the text and the model's own layers), so an upstream
change fails here first, with the fact that changed.

Where 0.3.75 and 0.33.0 differ the expectation follows the running version (0.3.75 and older:
the old behaviour; anything newer: 0.33.0's):
  * Qwen-Image: the attn1 patch (pre-RoPE, extra_options with img_slice) and the text attention
    mask exist from 0.33.0 on;
  * Z-Image: 0.33.0 publishes block_type "double" / block_index / total_blocks for the main layers
    and calls the double_block and noise_refiner patches; 0.3.75's NextDiT publishes nothing and
    calls no patch.
"""
from __future__ import annotations

import pytest
import torch

from layout_probes import block_order, block_position
from scripts import tiny_models

TEXT_TOKENS = 7
ONE_STEP = [1.0, 0.0]
# Latent sizes (latent pixels). Qwen-Image: odd height (circular padding to the 2x2 patch),
# non-square; Z-Image / SD3: 5 x 7 = 35 tokens, not a multiple of 32 (Z-Image pads them).
LATENT_HW = {"qwen_image": (9, 12), "z_image": (10, 14), "sd35": (10, 14)}
QWEN = dict(heads=2, head_dim=32, hidden=64, blocks=3)
ZIMG = dict(heads=2, head_dim=128, dim=256, refiners=2, layers=3, multiple=32)
SD3 = dict(heads=2, head_dim=64, hidden=128, blocks=4, x_blocks=(0, 1))


def _version_tuple(version: str) -> tuple:
    return tuple(int(part) for part in version.split(".")[:3])


@pytest.fixture
def newer_comfy(comfy_core) -> bool:
    """Whether the running ComfyUI is past 0.3.75 (has 0.33.0's hooks for these families)."""
    return _version_tuple(comfy_core.version) > (0, 3, 75)


def _grid(variant):
    h, w = LATENT_HW[variant]
    return (h + 1) // 2, (w + 1) // 2


def _noise(variant, seed=1):
    h, w = LATENT_HW[variant]
    return tiny_models.tiny_dit_latent(variant, h, w, seed=seed)


def _patcher(comfy_core, variant, **overrides):
    """A tiny patcher with unet_config overrides (skips where the class is missing)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    try:
        model = tiny_models.build_tiny_dit_model(variant, seed=0, overrides=overrides)
    except tiny_models.VariantUnavailable as e:
        pytest.skip(f"ComfyUI {comfy_core.version}: {e}")
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _sample(patcher, variant, noise, conditioning=None, sigmas=ONE_STEP):
    import comfy.sample
    import comfy.samplers
    cond = conditioning if conditioning is not None else \
        tiny_models.tiny_dit_conditioning(variant, tokens=TEXT_TOKENS)
    sigmas = sigmas if torch.is_tensor(sigmas) else torch.tensor(sigmas)
    # cfg 1: ComfyUI skips the negative, so there is exactly one model call per step
    return comfy.sample.sample_custom(patcher, noise, 1.0, comfy.samplers.ksampler("euler"), sigmas,
                                      cond, cond, torch.zeros_like(noise), disable_pbar=True, seed=0)


def _install_override(patcher, record: list, events: list | None = None):
    """A recording attention override chained to any earlier one (else ComfyUI's ``func``).
    ``heads`` comes positionally (args[3]) or as a keyword, ``mask`` positionally (args[4]) or as
    a keyword, depending on the family: both are recorded with where they came from."""
    options = patcher.model_options["transformer_options"]
    previous = options.get("optimized_attention_override")

    def recording_override(func, *args, **kwargs):
        q, k, v = args[:3]
        mask = args[4] if len(args) > 4 else kwargs.get("mask")
        record.append(dict(block_position(kwargs["transformer_options"]), q=q.clone(), k=k.clone(), v=v.clone(),
                           n_args=len(args), heads_positional=len(args) > 3,
                           heads=args[3] if len(args) > 3 else kwargs.get("heads"),
                           kwargs=sorted(k_ for k_ in kwargs if k_ != "_inside_attn_wrapper"),
                           skip_reshape=kwargs.get("skip_reshape"),
                           mask=None if mask is None else mask.clone()))
        if events is not None:
            events.append(("attention", q.shape[-2] if q.ndim == 4 else q.shape[1]))
        out = previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
        record[-1]["out_shape"] = tuple(out.shape)
        return out

    options["optimized_attention_override"] = recording_override


def _sentinel(patcher, calls: list):
    """An override installed first, as another pack would: the recorder must chain to it."""
    def sentinel_override(func, *args, **kwargs):
        calls.append(kwargs["transformer_options"].get("block_index"))
        return func(*args, **kwargs)
    patcher.model_options["transformer_options"]["optimized_attention_override"] = sentinel_override


def _sample_behind_a_sentinel(patcher, variant: str):
    """One stock sampling run of ``variant`` with the recording override chained to a sentinel
    override set first. Returns ``(latent, records, sentinel block indices)``."""
    model = patcher.clone()
    sentinel, record = [], []
    _sentinel(model, sentinel)
    _install_override(model, record)
    return _sample(model, variant, _noise(variant)), record, sentinel


def _record_block_inputs(patcher, blocks, record: dict):
    """A dit double_block replace on ``blocks`` that stores the args it gets and runs the block."""
    def make(i):
        def replace(args, extra):
            record[i] = dict(args=dict(args), where=block_position(args["transformer_options"]),
                             arg_keys=sorted(args), extra_keys=sorted(extra))
            out = extra["original_block"](args)
            record[i]["out"] = dict(out)
            return out
        return replace
    for i in blocks:
        patcher.set_model_patch_replace(make(i), "dit", "double_block", i)


def _changed_rows(a, b, axis=2):
    """Token rows (along ``axis``: 2 for [B, H, L, D]) that differ between two tensors."""
    diff = (a != b).movedim(axis, 0).reshape(a.shape[axis], -1)
    return torch.nonzero(diff.any(dim=1)).flatten().tolist()


def _rows_differ(a, b):
    return not torch.allclose(a, b, atol=1e-4)


# =================================================================================== Qwen-Image
def _qwen_patchify(x5):
    """[B, C, 1, H, W] -> [B, h*w, C*4]: circular pad to even H, W, token i*w + j, feature
    c*4 + a*2 + b (pixel (2i + a, 2j + b)), computed here independently of ComfyUI."""
    x = x5[:, :, 0]
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="circular")
    b, c, hh, ww = x.shape
    x = x.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (hh // 2) * (ww // 2), c * 4)


def _qwen_modulated(norm, mod, stream):
    shift, scale, _gate = mod.chunk(3, dim=-1)
    return norm(stream) * (1 + scale[:, None]) + shift[:, None]


def test_qwen_override_sees_every_block_with_joint_layout(tiny_qwen_image_patcher):
    out, record, sentinel = _sample_behind_a_sentinel(tiny_qwen_image_patcher, "qwen_image")

    assert torch.isfinite(out).all()
    assert block_order(record) == [("double", i, QWEN["blocks"]) for i in range(QWEN["blocks"])]
    assert sentinel == [0, 1, 2], "the earlier override was not reached"
    h, w = _grid("qwen_image")
    length = TEXT_TOKENS + h * w
    for r in record:
        where = r["block_index"]
        for name in ("q", "k", "v"):
            assert tuple(r[name].shape) == (1, QWEN["heads"], length, QWEN["head_dim"]), (where, name)
        # optimized_attention_masked(q, k, v, heads, mask, skip_reshape=True, transformer_options=...)
        assert r["n_args"] == 5 and r["heads_positional"] and r["heads"] == QWEN["heads"], where
        assert r["mask"] is None and r["skip_reshape"] is True, where
        assert r["kwargs"] == ["skip_reshape", "transformer_options"], where
        assert r["img_slice"] is None, where  # only the attn1 patch's extra_options copy has it
        assert r["out_shape"] == (1, length, QWEN["hidden"]), where


def test_qwen_latent_is_5d_and_tokens_are_text_then_padded_grid_by_value(tiny_qwen_image_patcher):
    """The sampler takes the 5-D latent (what KSampler makes of EmptySD3LatentImage's 4-D one);
    block 0's v = [text rows | image rows], the image rows exactly the projection of the
    circularly padded, patchified latent (grid (H+1)//2 x (W+1)//2, row-major)."""
    import comfy.sample
    patcher = tiny_qwen_image_patcher
    h_lat, w_lat = LATENT_HW["qwen_image"]
    noise = _noise("qwen_image")
    assert tuple(noise.shape) == (1, 16, 1, h_lat, w_lat)
    empty_4d = torch.zeros(1, 16, h_lat, w_lat)  # EmptySD3LatentImage's samples
    assert tuple(comfy.sample.fix_empty_latent_channels(patcher, empty_4d).shape) == tuple(noise.shape)

    model = patcher.clone()
    record, inputs = [], {}
    _install_override(model, record)
    _record_block_inputs(model, [0], inputs)
    out = _sample(model, "qwen_image", noise)
    assert out.shape == noise.shape

    dm = patcher.model.diffusion_model
    block = dm.transformer_blocks[0]
    context = tiny_models.tiny_dit_conditioning("qwen_image", tokens=TEXT_TOKENS)[0][0]
    args = inputs[0]["args"]
    with torch.no_grad():
        img = dm.img_in(_qwen_patchify(noise))
        txt = dm.txt_in(dm.txt_norm(context))
        torch.testing.assert_close(args["img"], img, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(args["txt"], txt, rtol=1e-5, atol=1e-5)
        img_mod1 = block.img_mod(args["vec"]).chunk(2, dim=-1)[0]
        txt_mod1 = block.txt_mod(args["vec"]).chunk(2, dim=-1)[0]
        heads = lambda t: t.view(1, -1, QWEN["heads"], QWEN["head_dim"]).transpose(1, 2)  # noqa: E731
        v_img = heads(block.attn.to_v(_qwen_modulated(block.img_norm1, img_mod1, args["img"])))
        v_txt = heads(block.attn.add_v_proj(_qwen_modulated(block.txt_norm1, txt_mod1, args["txt"])))
    v = record[0]["v"]
    torch.testing.assert_close(v[:, :, :TEXT_TOKENS], v_txt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v[:, :, TEXT_TOKENS:], v_img, rtol=1e-5, atol=1e-5)

    # one latent pixel moves one token row ... unless it is in latent row 0 of an odd height: the
    # circular padding copies row 0 into the last token row as well
    h, w = _grid("qwen_image")

    def first_v(poked):
        rec = []
        m = patcher.clone()
        _install_override(m, rec)
        _sample(m, "qwen_image", poked)
        return rec[0]["v"]

    for row, col, tokens in ((4, 5, [(2, 2)]), (0, 5, [(0, 2), (h - 1, 2)])):
        poked = noise.clone()
        poked[0, 3, 0, row, col] += 1.0
        assert _changed_rows(v, first_v(poked)) == [TEXT_TOKENS + i * w + j for i, j in tokens], (row, col)


def test_qwen_attn1_patch_runs_before_rope_with_img_slice(tiny_qwen_image_patcher, newer_comfy):
    from comfy.ldm.flux.math import apply_rope1
    before, after, override = [], [], []
    model = tiny_qwen_image_patcher.clone()

    def attn1_recorder(q, k, v, pe=None, attn_mask=None, extra_options=None):
        before.append(dict(block_position(extra_options), q=q.clone(), k=k.clone(), v=v.clone(), pe=pe,
                           attn_mask=attn_mask))
        return {}

    model.set_model_attn1_patch(attn1_recorder)
    model.set_model_attn1_output_patch(lambda attn, extra_options: after.append(1) or attn)
    _install_override(model, override)
    _sample(model, "qwen_image", _noise("qwen_image"))

    assert after == []  # no attn1_output patch in QwenImageTransformer2DModel (either version)
    if not newer_comfy:
        assert before == []  # 0.3.75: only the override (post-RoPE)
        return
    h, w = _grid("qwen_image")
    length = TEXT_TOKENS + h * w
    assert block_order(before) == block_order(override)
    for pre, post in zip(before, override):
        where = pre["block_index"]
        assert pre["img_slice"] == [TEXT_TOKENS, length] and pre["attn_mask"] is None, where
        assert tuple(pre["q"].shape) == (1, QWEN["heads"], length, QWEN["head_dim"]), where
        assert torch.equal(pre["v"], post["v"]), where
        torch.testing.assert_close(post["q"], apply_rope1(pre["q"], pre["pe"]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(post["k"], apply_rope1(pre["k"], pre["pe"]), rtol=1e-5, atol=1e-6)
        assert _rows_differ(post["q"], pre["q"]), where  # RoPE sits between the two


def test_qwen_dit_replace_and_double_block_patch(tiny_qwen_image_patcher):
    h, w = _grid("qwen_image")
    inputs, patch_calls = {}, []
    model = tiny_qwen_image_patcher.clone()
    _record_block_inputs(model, range(QWEN["blocks"]), inputs)

    def double_block_patch(args):
        patch_calls.append(dict(keys=sorted(args), block_index=args["block_index"],
                                img=tuple(args["img"].shape), x=tuple(args["x"].shape)))
        return {"img": args["img"], "txt": args["txt"]}

    model.set_model_patch(double_block_patch, "double_block")
    noise = _noise("qwen_image")
    replaced = _sample(model, "qwen_image", noise)

    assert sorted(inputs) == list(range(QWEN["blocks"]))
    for i, entry in inputs.items():
        assert entry["arg_keys"] == ["img", "pe", "transformer_options", "txt", "vec"], i
        assert entry["extra_keys"] == ["original_block"], i
        assert entry["where"]["block_type"] == "double" and entry["where"]["block_index"] == i, i
        assert tuple(entry["args"]["img"].shape) == (1, h * w, QWEN["hidden"]), i
        assert tuple(entry["args"]["txt"].shape) == (1, TEXT_TOKENS, QWEN["hidden"]), i
        assert tuple(entry["args"]["pe"].shape)[:3] == (1, 1, TEXT_TOKENS + h * w), i
        assert sorted(entry["out"]) == ["img", "txt"], i
    assert [c["block_index"] for c in patch_calls] == list(range(QWEN["blocks"]))
    for c in patch_calls:
        assert c["keys"] == ["block_index", "img", "transformer_options", "txt", "x"]
        assert c["img"] == (1, h * w, QWEN["hidden"]) and c["x"] == tuple(noise.shape)
    assert torch.equal(replaced, _sample(tiny_qwen_image_patcher.clone(), "qwen_image", noise))


def test_qwen_text_attention_mask(tiny_qwen_image_patcher, newer_comfy):
    """A conditioning ``attention_mask`` with masked text tokens: 0.33.0 hands the override an
    additive mask [B, 1, L] (0 for kept tokens and the image, -finfo.max for masked text); 0.3.75
    drops it (mask None)."""
    context, _ = tiny_models.tiny_dit_conditioning("qwen_image", tokens=TEXT_TOKENS)[0]
    text_mask = torch.tensor([[1] * (TEXT_TOKENS - 2) + [0, 0]])
    record = []
    model = tiny_qwen_image_patcher.clone()
    _install_override(model, record)
    _sample(model, "qwen_image", _noise("qwen_image"), conditioning=[[context, {"attention_mask": text_mask}]])
    h, w = _grid("qwen_image")
    for r in record:
        if not newer_comfy:
            assert r["mask"] is None
            continue
        mask = r["mask"]
        assert tuple(mask.shape) == (1, 1, TEXT_TOKENS + h * w) and r["n_args"] == 5
        assert torch.all(mask[0, 0, TEXT_TOKENS - 2:TEXT_TOKENS] == -torch.finfo(torch.float32).max)
        assert torch.all(mask[0, 0, :TEXT_TOKENS - 2] == 0) and torch.all(mask[0, 0, TEXT_TOKENS:] == 0)


# ====================================================================================== Z-Image
def _z_lengths():
    h, w = _grid("z_image")
    m = ZIMG["multiple"]
    cap = TEXT_TOKENS + (-TEXT_TOKENS) % m
    pad = (-(h * w)) % m
    return cap, h * w, pad


def _z_patchify(x):
    """[B, C, H, W] -> [B, h*w, 4*C]: token i*w + j, feature (a*2 + b)*C + c (pixel (2i+a, 2j+b))."""
    b, c, hh, ww = x.shape
    return x.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, (hh // 2) * (ww // 2), 4 * c)


def _z_v(layer, x):
    """v [B, H, L, D] of a NextDiT JointTransformerBlock for its (normalised, modulated) input."""
    att = layer.attention
    kv = att.n_local_kv_heads * att.head_dim
    v = att.qkv(x)[..., att.n_local_heads * att.head_dim + kv:]
    v = v.view(x.shape[0], x.shape[1], att.n_local_kv_heads, att.head_dim)
    return v.repeat_interleave(att.n_local_heads // att.n_local_kv_heads, dim=2).movedim(1, 2)


def test_z_image_call_order_block_keys_and_shapes(tiny_z_image_patcher, newer_comfy):
    """Context refiner (caption only), noise refiner (image + padding), then the main layers; only
    the main layers carry block keys, and only from 0.33.0 on. Every call: q/k/v [B, H, L, D],
    skip_reshape, heads and mask positional, mask None."""
    cap, hw, pad = _z_lengths()
    model = tiny_z_image_patcher.clone()
    sentinel, record = [], []
    _sentinel(model, sentinel)
    _install_override(model, record)
    _sample(model, "z_image", _noise("z_image"))

    refiners = 2 * ZIMG["refiners"]
    assert [tuple(r["q"].shape)[2] for r in record] == \
        [cap] * ZIMG["refiners"] + [hw + pad] * ZIMG["refiners"] + [cap + hw + pad] * ZIMG["layers"]
    assert len(sentinel) == len(record), "the earlier override was not reached"
    assert block_order(record[:refiners]) == [(None, None, None)] * refiners
    main = [("double", i, ZIMG["layers"]) for i in range(ZIMG["layers"])] if newer_comfy \
        else [(None, None, None)] * ZIMG["layers"]
    assert block_order(record[refiners:]) == main
    for r in record:
        length = r["q"].shape[2]
        for name in ("q", "k", "v"):
            assert tuple(r[name].shape) == (1, ZIMG["heads"], length, ZIMG["head_dim"]), name
        assert r["n_args"] == 5 and r["heads_positional"] and r["heads"] == ZIMG["heads"]
        assert r["mask"] is None and r["skip_reshape"] is True and r["img_slice"] is None
        assert r["kwargs"] == ["skip_reshape", "transformer_options"]
        assert r["out_shape"] == (1, length, ZIMG["dim"])

    # a second model call gets fresh transformer_options: its refiners carry no block keys either
    record.clear()
    _sample(model, "z_image", _noise("z_image"), sigmas=[1.0, 0.5, 0.0])
    per_call = refiners + ZIMG["layers"]
    assert len(record) == 2 * per_call
    assert block_order(record[per_call:per_call + refiners]) == [(None, None, None)] * refiners


def test_z_image_padding_layout_by_value(tiny_z_image_patcher):
    """Caption padded to a multiple of 32 with cap_pad_token, image tokens padded to a multiple of
    32 at the end with x_pad_token: rows recomputed from the text, the latent and the pad tokens;
    in the main layers the image slice is exactly [L - pad - h*w, L - pad)."""
    cap, hw, pad = _z_lengths()
    length = cap + hw + pad
    patcher = tiny_z_image_patcher
    dm = patcher.model.diffusion_model
    noise = _noise("z_image")
    context = tiny_models.tiny_dit_conditioning("z_image", tokens=TEXT_TOKENS)[0][0]
    refiners = 2 * ZIMG["refiners"]

    def run(noise_, conditioning=None):
        record = []
        m = patcher.clone()
        _install_override(m, record)
        _sample(m, "z_image", noise_, conditioning=conditioning)
        return record[0]["v"], record[ZIMG["refiners"]]["v"], record[refiners]["v"]

    context_v, noise_v, main_v = run(noise)
    with torch.no_grad():
        # context refiner 0 (no modulation): caption rows, then cap_pad_token rows
        layer = dm.context_refiner[0]
        caption = torch.cat([dm.cap_embedder(context), dm.cap_pad_token[None].expand(1, cap - TEXT_TOKENS, -1)], 1)
        torch.testing.assert_close(context_v, _z_v(layer, layer.attention_norm1(caption)), rtol=1e-5, atol=1e-5)
        # noise refiner 0 (modulated by the timestep embedding): image rows, then x_pad_token rows
        layer = dm.noise_refiner[0]
        timestep = patcher.get_model_object("model_sampling").timestep(torch.tensor([ONE_STEP[0]]))
        t = dm.t_embedder((1.0 - timestep) * dm.time_scale, dtype=torch.float32)
        scale_msa = layer.adaLN_modulation(t).chunk(4, dim=1)[0]
        tokens = torch.cat([dm.x_embedder(_z_patchify(noise)), dm.x_pad_token[None].expand(1, pad, -1)], 1)
        expected = _z_v(layer, layer.attention_norm1(tokens) * (1 + scale_msa[:, None]))
        torch.testing.assert_close(noise_v, expected, rtol=1e-5, atol=1e-5)

    # main layer 0: [caption | image | padding]; the padding rows are all one token, not an image row
    image = slice(length - pad - hw, length - pad)
    assert (image.start, image.stop) == (cap, cap + hw)
    pad_rows = main_v[:, :, image.stop:]
    assert torch.allclose(pad_rows, pad_rows[:, :, :1].expand_as(pad_rows), atol=1e-6)
    assert _rows_differ(main_v[:, :, image.stop - 1], main_v[:, :, image.stop])
    assert _rows_differ(main_v[:, :, image.start], main_v[:, :, image.start - 1])

    # one latent pixel: exactly its token in the noise refiner; only image + padding in the main layer
    h, w = _grid("z_image")
    row, col = 7, 3
    poked = noise.clone()
    poked[0, 5, row, col] += 1.0
    _, poked_noise_v, poked_main_v = run(poked)
    assert _changed_rows(noise_v, poked_noise_v) == [(row // 2) * w + col // 2]
    moved = _changed_rows(main_v, poked_main_v)
    assert moved and min(moved) >= image.start and image.start + (row // 2) * w + col // 2 in moved
    # the text: only caption rows (real and padded) in the main layer, all real ones
    other = [[torch.randn(context.shape, generator=torch.Generator().manual_seed(5)),
              {"attention_mask": torch.ones((1, TEXT_TOKENS), dtype=torch.long)}]]
    _, other_noise_v, other_main_v = run(noise, other)
    assert torch.equal(other_noise_v, noise_v)
    moved = _changed_rows(main_v, other_main_v)
    assert set(range(TEXT_TOKENS)) <= set(moved) and max(moved) < image.start


def test_z_image_grouped_query_heads_arrive_repeated(comfy_core):
    """With n_kv_heads < n_heads (Lumina 2's GQA; Z-Image itself has 30/30) the override gets k and
    v already repeated to n_heads: q heads differ, k and v heads are copies."""
    patcher = _patcher(comfy_core, "z_image", n_kv_heads=1)
    record = []
    model = patcher.clone()
    _install_override(model, record)
    _sample(model, "z_image", _noise("z_image"))
    assert len(record) == 2 * ZIMG["refiners"] + ZIMG["layers"]
    for r in record:
        assert r["heads"] == ZIMG["heads"] and r["k"].shape[1] == r["v"].shape[1] == ZIMG["heads"]
        assert torch.equal(r["k"][:, 0], r["k"][:, 1]) and torch.equal(r["v"][:, 0], r["v"][:, 1])
        assert _rows_differ(r["q"][:, 0], r["q"][:, 1])


def test_z_image_patches_and_replace(tiny_z_image_patcher, newer_comfy):
    """0.33.0: the noise_refiner patch runs after each noise-refiner layer (block_index i,
    block_type "noise_refiner" in its args, img = image + padding), before any main layer; the
    double_block patch after each main layer with img = the rows after the caption (image +
    padding). 0.3.75 calls neither. Neither version consults a dit block replace or attn1 patch."""
    cap, hw, pad = _z_lengths()
    dim = ZIMG["dim"]
    events, record, replaced, attn1 = [], [], [], []
    model = tiny_z_image_patcher.clone()
    _install_override(model, record, events)

    def noise_refiner_patch(args):
        events.append(("noise_refiner", args["block_index"], args.get("block_type"), sorted(args),
                       tuple(args["img"].shape), tuple(args["txt"].shape)))
        return {"img": args["img"]}

    def double_block_patch(args):
        events.append(("double_block", args["block_index"], sorted(args),
                       tuple(args["img"].shape), tuple(args["txt"].shape)))
        return {}

    def replace(args, extra):
        replaced.append(1)
        return extra["original_block"](args)

    model.set_model_patch(noise_refiner_patch, "noise_refiner")
    model.set_model_patch(double_block_patch, "double_block")
    model.set_model_attn1_patch(lambda q, k, v, **kw: attn1.append(1) or {})
    for i in range(ZIMG["layers"]):
        model.set_model_patch_replace(replace, "dit", "double_block", i)
    _sample(model, "z_image", _noise("z_image"))

    assert replaced == [] and attn1 == []
    refiner_attention = [("attention", cap)] * ZIMG["refiners"]
    if not newer_comfy:
        assert events == refiner_attention + [("attention", hw + pad)] * ZIMG["refiners"] + \
            [("attention", cap + hw + pad)] * ZIMG["layers"]
        return
    nr_keys = ["block_index", "block_type", "img", "img_input", "pe", "transformer_options", "txt", "vec", "x"]
    db_keys = ["block_index", "img", "img_input", "pe", "transformer_options", "txt", "vec", "x"]
    expected = list(refiner_attention)
    for i in range(ZIMG["refiners"]):
        expected += [("attention", hw + pad),
                     ("noise_refiner", i, "noise_refiner", nr_keys, (1, hw + pad, dim), (1, cap, dim))]
    for i in range(ZIMG["layers"]):
        expected += [("attention", cap + hw + pad),
                     ("double_block", i, db_keys, (1, hw + pad, dim), (1, cap, dim))]
    assert events == expected


# ======================================================================================== SD3.5
def _sd3_expected_calls():
    """(kind, block, L) per attention call: a joint call per block, and in MMDiT-X blocks a second,
    image-only call after it."""
    h, w = _grid("sd35")
    calls = []
    for i in range(SD3["blocks"]):
        calls.append(("joint", i, TEXT_TOKENS + h * w))
        if i in SD3["x_blocks"]:
            calls.append(("image", i, h * w))
    return calls


def test_sd35_override_fires_in_every_joint_block_without_block_keys(tiny_sd35_patcher):
    out, record, sentinel = _sample_behind_a_sentinel(tiny_sd35_patcher, "sd35")

    assert torch.isfinite(out).all()
    calls = _sd3_expected_calls()
    assert [r["q"].shape[1] for r in record] == [length for _, _, length in calls]
    assert len(sentinel) == len(record), "the earlier override was not reached"
    hidden = SD3["hidden"]
    for r, (kind, i, length) in zip(record, calls):
        where = (kind, i)
        assert block_order([r]) == [(None, None, None)] and r["img_slice"] is None, where
        # optimized_attention(q, k, v, heads=..., transformer_options=...): q, k [B, L, H*D] (the
        # qk RMSNorm is applied per head, then flattened), v still [B, L, H, D]; no skip_reshape
        assert tuple(r["q"].shape) == tuple(r["k"].shape) == (1, length, hidden), where
        assert tuple(r["v"].shape) == (1, length, SD3["heads"], SD3["head_dim"]), where
        assert r["n_args"] == 3 and not r["heads_positional"] and r["heads"] == SD3["heads"], where
        assert r["kwargs"] == ["heads", "transformer_options"] and r["skip_reshape"] is None, where
        assert r["mask"] is None and r["out_shape"] == (1, length, hidden), where


def test_sd35_layout_by_value_context_then_image_no_rope(tiny_sd35_patcher):
    """Block 0's joint q/k/v = [context rows | image rows], each recomputed from the block's own
    pre-attention on its inputs, which are recomputed from the latent (patch embed + the centre
    crop of pos_embed) and the text: nothing (no RoPE) acts between projection and the override.
    The MMDiT-X call right after it is attn2 on the image rows alone."""
    import torch.nn.functional as F
    patcher = tiny_sd35_patcher
    dm = patcher.model.diffusion_model
    noise = _noise("sd35")
    context = tiny_models.tiny_dit_conditioning("sd35", tokens=TEXT_TOKENS)[0][0]
    model = patcher.clone()
    record, inputs = [], {}
    _install_override(model, record)
    _record_block_inputs(model, [0], inputs)
    _sample(model, "sd35", noise)

    args = inputs[0]["args"]
    assert inputs[0]["arg_keys"] == ["img", "transformer_options", "txt", "vec"]  # no "pe"
    h, w = _grid("sd35")
    size = dm.pos_embed_max_size
    proj = dm.x_embedder.proj
    with torch.no_grad():
        patches = F.conv2d(noise, proj.weight, proj.bias, stride=2).flatten(2).transpose(1, 2)
        table = dm.pos_embed.reshape(1, size, size, -1)
        top, left = (size - h) // 2, (size - w) // 2
        pos = table[:, top:top + h, left:left + w].reshape(1, h * w, -1)
        torch.testing.assert_close(args["img"], patches + pos, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(args["txt"], dm.context_embedder(context), rtol=1e-5, atol=1e-5)
        block = dm.joint_blocks[0]
        context_qkv, _ = block.context_block.pre_attention(args["txt"], args["vec"])
        image_qkv, image_qkv2, _ = block.x_block.pre_attention_x(args["img"], args["vec"])
    joint, image_only = record[0], record[1]
    for t, name in enumerate(("q", "k", "v")):
        torch.testing.assert_close(joint[name][:, :TEXT_TOKENS], context_qkv[t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(joint[name][:, TEXT_TOKENS:], image_qkv[t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(image_only[name], image_qkv2[t], rtol=1e-5, atol=1e-6)


def test_sd35_block_index_only_through_a_replace_copy(tiny_sd35_patcher):
    """MMDiT publishes no block keys; a ("double_block", i) dit replace that calls original_block
    with a copy of transformer_options carrying block_index = i makes the override see it, in the
    joint and the MMDiT-X call of that block, and leaves the output bit for bit."""
    seen_by_replace, record = [], []
    model = tiny_sd35_patcher.clone()
    _install_override(model, record)

    def make(i):
        def replace(args, extra):
            seen_by_replace.append((sorted(args), block_position(args["transformer_options"])))
            options = dict(args["transformer_options"], block_index=i, block_type="double",
                           total_blocks=SD3["blocks"])
            out = extra["original_block"](dict(args, transformer_options=options))
            seen_by_replace[-1] += (sorted(out), out["txt"] is None)
            return out
        return replace

    for i in range(SD3["blocks"]):
        model.set_model_patch_replace(make(i), "dit", "double_block", i)
    noise = _noise("sd35")
    replaced = _sample(model, "sd35", noise)

    assert [r["block_index"] for r in record] == [i for _, i, _ in _sd3_expected_calls()]
    assert all(r["block_type"] == "double" and r["total_blocks"] == SD3["blocks"] for r in record)
    last = SD3["blocks"] - 1
    for i, (keys, where, out_keys, txt_none) in enumerate(seen_by_replace):
        assert keys == ["img", "transformer_options", "txt", "vec"], i
        assert where == {"block_type": None, "block_index": None, "total_blocks": None, "img_slice": None}, i
        assert out_keys == ["img", "txt"] and txt_none == (i == last), i  # the last context block is pre_only
    assert torch.equal(replaced, _sample(tiny_sd35_patcher.clone(), "sd35", noise))


def test_sd35_registers_come_first(comfy_core):
    """register_length > 0 (no SD3 checkpoint sets it): [registers | context | image]."""
    registers = 2
    patcher = _patcher(comfy_core, "sd35", register_length=registers)
    h, w = _grid("sd35")
    model = patcher.clone()
    record, inputs = [], {}
    _install_override(model, record)
    _record_block_inputs(model, [0], inputs)
    _sample(model, "sd35", _noise("sd35"))
    txt = inputs[0]["args"]["txt"]
    assert tuple(txt.shape) == (1, registers + TEXT_TOKENS, SD3["hidden"])
    assert torch.equal(txt[:, :registers], patcher.model.diffusion_model.register.detach())
    assert record[0]["q"].shape[1] == registers + TEXT_TOKENS + h * w
    assert record[1]["q"].shape[1] == h * w  # the MMDiT-X call stays image-only


# ================================================================================ all three
FAMILIES = ("qwen_image", "z_image", "sd35")


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def dit(family, request):
    return request.getfixturevalue(f"tiny_{family}_patcher")


def test_model_sampling_and_latent_format(dit, family):
    import comfy.latent_formats
    import comfy.model_sampling
    sampling = dit.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.CONST)
    expected_class, shift, multiplier = {
        "qwen_image": (comfy.model_sampling.ModelSamplingFlux, 1.15, 1.0),
        "z_image": (comfy.model_sampling.ModelSamplingDiscreteFlow, 3.0, 1.0),
        "sd35": (comfy.model_sampling.ModelSamplingDiscreteFlow, 3.0, 1000.0)}[family]
    assert isinstance(sampling, expected_class)
    assert sampling.shift == pytest.approx(shift)
    assert float(sampling.timestep(torch.tensor(0.25))) == pytest.approx(0.25 * multiplier)
    latent_format = dit.get_model_object("latent_format")
    assert type(latent_format) is {"qwen_image": comfy.latent_formats.Wan21, "z_image": comfy.latent_formats.Flux,
                                   "sd35": comfy.latent_formats.SD3}[family]
    assert latent_format.latent_channels == tiny_models.tiny_dit_latent_channels(family) == 16
    assert latent_format.latent_dimensions == (3 if family == "qwen_image" else 2)


def test_stock_euler_run_is_deterministic(dit, family):
    import comfy.samplers
    sigmas = comfy.samplers.calculate_sigmas(dit.get_model_object("model_sampling"), "simple", 3)
    noise = _noise(family)
    first = _sample(dit.clone(), family, noise, sigmas=sigmas)
    assert first.shape == noise.shape and torch.isfinite(first).all()
    assert torch.equal(first, _sample(dit.clone(), family, noise, sigmas=sigmas))
    assert not torch.allclose(first, noise, atol=1e-3)


def test_stand_in_layout_runs_on_clip_l_conditioning(comfy_core, family):
    """The runner's stand-in (CLIP-L text [B, 77, 768] and pooled [B, 768]) samples a step."""
    try:
        patcher = tiny_models.build_tiny_dit_patcher(family, seed=0, stand_in=True)
    except tiny_models.VariantUnavailable as e:
        pytest.skip(f"ComfyUI {comfy_core.version}: {e}")
    g = torch.Generator().manual_seed(0)
    cond = [[torch.randn((1, 77, 768), generator=g), {"pooled_output": torch.randn((1, 768), generator=g)}]]
    noise = tiny_models.tiny_dit_latent(family, 8, 8, seed=3)
    out = _sample(patcher, family, noise, conditioning=cond)
    assert out.shape == noise.shape and torch.isfinite(out).all()
