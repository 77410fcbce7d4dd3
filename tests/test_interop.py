"""SCSA beside the patches artists stack on the same model, on both ComfyUI versions.

UNet (tiny SD1.5): ComfyUI's own HyperTile, ToMe and (0.33.0) NAGuidance nodes, and sentinel
attn1 output and middle patches, each put on the model before and after SCSAApply. SCSA installs its patches when it
samples, on its own clone, so the patches of either placement are already there: each test
records, in every transformer block call, the block input, what each of the other patches saw,
and what SCSA's middle patch got, and asserts that the other patch saw what it sees without
SCSA (the real attention output of its own layout; the block's hidden state after attention,
which on SCSA's injected blocks is the injected one) and that SCSA got the exact block input.

DiT (tiny Flux.1 and Qwen-Image): an attention override set after SCSAApply sees every call SCSA
makes and SCSA still injects; a hook that drops SCSA's override, ComfyUI's EasyCache (which
skips whole model calls) and a First-Block-Cache-style cache (which skips blocks) stop the
sampler with InjectionLost naming what happened, after a warning that names the cache.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from scripts import tiny_models
from scripts.comfy_inprocess import pack_module

LATENT = (1, 4, 16, 12)   # full-resolution blocks: a 16 x 12 token grid (HyperTile tiles it, ToMe merges it)
STEPS = 3
OVERRIDE_KEY = "optimized_attention_override"


# ------------------------------------------------------------------------------ UNet helpers
def _semantics():
    """Content: label 0 on the top half, 1 on the bottom; the style the other way round."""
    labels = pack_module("scsa_core/labels/__init__.py")
    masks = torch.zeros(2, 64, 48)
    masks[0, :32], masks[1, 32:] = 1, 1
    return labels.labels_from_masks(masks, masks.flip(1), threshold=0.5)


def _unet_latents():
    generator = torch.Generator().manual_seed(4)
    return {name: {"samples": torch.randn(LATENT, generator=generator)}
            for name in ("content", "style", "content_map", "style_map")}


def _unet_apply(model, **settings):
    nodes = pack_module("nodes/diffusion_nodes.py")
    values = dict(semantics=_semantics(), preset="default", sca_weight=0.8, ssa_weight=0.2, semantic_share=0.3,
                  content_share=0.5, temperature=1.2, gamma=0.75)
    values.update(settings)
    return nodes.SCSAApply.execute(model=model, **values).result[0]


def _unet_invert(model, storage="memory"):
    nodes = pack_module("nodes/diffusion_nodes.py")
    return nodes.SCSAInvert.execute(model=model, conditioning=[[torch.zeros(1, 77, 768), {}]], steps=STEPS,
                                    blocks="auto", storage=storage, **_unet_latents()).result[0]


def _unet_sample(model, inversion):
    nodes = pack_module("nodes/diffusion_nodes.py")
    return nodes.SCSAStyleSampler.execute(model=model, inversion=inversion, init="auto",
                                          timesteps="aligned").result[0]["samples"]


def _node_model(output):
    """The MODEL a ComfyUI node returned (an io.NodeOutput, or a tuple on older nodes)."""
    return output.result[0] if hasattr(output, "result") else output[0]


def _placed(patcher, where: str, patch):
    """SCSAApply's model with ``patch(model) -> model`` applied before or after SCSAApply."""
    return _unet_apply(patch(patcher)) if where == "before" else patch(_unet_apply(patcher))


class BlockCalls:
    """Every BasicTransformerBlock call of a model: its input ``x`` (a forward pre-hook), and what
    spied patches saw and returned there (``calls[i][label] = (input, output)``); ``scsa`` is
    SCSA's run object's middle (block input, hidden state it returned)."""

    def __init__(self, diffusion_model, monkeypatch):
        from comfy.ldm.modules.attention import BasicTransformerBlock
        self.calls: list[dict] = []
        self.handles = [module.register_forward_pre_hook(self._enter, with_kwargs=True)
                        for module in diffusion_model.modules() if isinstance(module, BasicTransformerBlock)]
        injection = pack_module("nodes/injection.py")
        middle = injection.InjectRun.middle

        def spied_middle(run, patch, block_input, attn_output, key, extra_options):
            out = middle(run, patch, block_input, attn_output, key, extra_options)
            self.calls[-1]["scsa"] = (block_input.clone(), out.clone())
            return out
        monkeypatch.setattr(injection.InjectRun, "middle", spied_middle)

    def _enter(self, module, args, kwargs):
        self.calls.append({"block": module, "x": args[0].clone()})

    def spy(self, function, label):
        def copied(value):
            return tuple(map(copied, value)) if isinstance(value, tuple) else \
                value.clone() if isinstance(value, torch.Tensor) else value

        def spied(*args):
            seen = copied(args[:-1])
            out = function(*args)
            self.calls[-1][label] = (seen, copied(out))
            return out
        return spied

    def spy_on(self, model, name, label):
        """Spy on every ``name`` patch (attn1_patch, attn1_output_patch, middle_patch) on ``model``
        now (they must not be SCSA's: SCSA installs its own later)."""
        patches = model.model_options["transformer_options"]["patches"]
        assert len(patches[name]) == 1, patches[name]
        patches[name] = [self.spy(patches[name][0], label)]

    def close(self):
        for handle in self.handles:
            handle.remove()


def _real_attention(call, attn1_label=None):
    """What the block's self-attention gives for this call: on the attn1 patch's outputs (its
    layout) if one ran, else on norm1 of the block input."""
    block = call["block"]
    if attn1_label is None:
        return block.attn1(block.norm1(call["x"]))
    _, (n, context, value) = call[attn1_label]
    return block.attn1(n, context=context, value=value)


def _check_attention_seen(calls, output_label, attn1_label=None):
    """The other pack's attn1 output patch saw the real attention output in every block call, SCSA's
    injected ones included (not the zeros SCSA's attn1 replace hands on where it skips the sample
    rows), and its attn1 patch saw norm1 of the exact block input."""
    seen = [call for call in calls if output_label in call]
    assert seen and any("scsa" in call for call in seen), "no block call of an injected block had the patch"
    for call in seen:
        if attn1_label is not None:
            (n, _, _), _ = call[attn1_label]
            assert torch.equal(n, call["block"].norm1(call["x"]))
        (got,), _ = call[output_label]
        expected = _real_attention(call, attn1_label)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), \
            f"the output patch saw a tensor {(got - expected).abs().max():.3g} off the attention output"


def _check_scsa_got_the_block_input(calls):
    injected = [call for call in calls if "scsa" in call]
    assert injected, "SCSA injected nothing"
    for call in injected:
        block_input, _ = call["scsa"]
        assert torch.equal(block_input, call["x"]), "SCSA's middle patch did not get the exact block input"


# ------------------------------------------------------------------------------------ UNet
def _sentinel_beside_scsa(patcher, monkeypatch, where, set_sentinel, patch_list, check_calls):
    """SCSA alone, and SCSA with a sentinel patch (``set_sentinel(model)`` puts it in ComfyUI's
    ``patch_list``) set before or after SCSAApply (``where``); ``check_calls`` gets what every
    block call saw. Returns ``(alone, together)``, the two sampled latents."""
    def with_sentinel(model):
        model = model.clone()
        set_sentinel(model)
        return model

    with torch.inference_mode():
        inversion = _unet_invert(patcher)
        alone = _unet_sample(_unet_apply(patcher), inversion)
        model = _placed(patcher, where, with_sentinel)
        calls = BlockCalls(patcher.model.diffusion_model, monkeypatch)
        calls.spy_on(model, patch_list, "sentinel")
        try:
            together = _unet_sample(model, inversion)
            check_calls(calls.calls)
        finally:
            calls.close()
    return alone, together


def _changed_only_by_a_changing_sentinel(identity: bool, alone, together) -> None:
    if identity:
        assert torch.equal(together, alone)
    else:
        assert not torch.allclose(together, alone, rtol=0, atol=1e-4)


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("kind", ["identity", "scaled"])
def test_unet_sentinel_attn1_output_patch(tiny_sd15_patcher, comfy, monkeypatch, where, kind):
    """A NAG-style attn1 output patch sees the real attention output in every block (SCSA's
    injected ones too) and SCSA gets the exact block input; an identity patch leaves SCSA's
    latent bit for bit, a patch that scales the output changes it."""
    factor = 1.0 if kind == "identity" else 0.5

    def sentinel(n, extra_options):
        return n if factor == 1.0 else n * factor

    def check(calls):
        _check_attention_seen(calls, "sentinel")
        _check_scsa_got_the_block_input(calls)

    alone, together = _sentinel_beside_scsa(tiny_sd15_patcher, monkeypatch, where,
                                            lambda model: model.set_model_attn1_output_patch(sentinel),
                                            "attn1_output_patch", check)
    _changed_only_by_a_changing_sentinel(kind == "identity", alone, together)


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("kind", ["identity", "shifted"])
def test_unet_sentinel_middle_patch(tiny_sd15_patcher, comfy, monkeypatch, where, kind):
    """A middle patch sees the block's hidden state after its self-attention: the block input plus
    the attention output, or on SCSA's injected blocks exactly the hidden state SCSA made; SCSA
    gets the exact block input, whatever the middle patch does. An identity patch leaves SCSA's
    latent bit for bit, a shifting one changes it."""
    shift = 0.0 if kind == "identity" else 0.05

    def sentinel(x, extra_options):
        return x if shift == 0.0 else x + shift

    def check(calls):
        _check_scsa_got_the_block_input(calls)
        seen = [call for call in calls if "sentinel" in call]
        assert len(seen) == len(calls)
        for call in seen:
            (got,), _ = call["sentinel"]
            if "scsa" in call:
                assert torch.equal(got, call["scsa"][1]), "the middle patch did not see SCSA's hidden state"
            else:
                expected = call["x"] + _real_attention(call)
                assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), "the middle patch missed the attention"

    alone, together = _sentinel_beside_scsa(tiny_sd15_patcher, monkeypatch, where,
                                            lambda model: model.set_model_patch(sentinel, "middle_patch"),
                                            "middle_patch", check)
    _changed_only_by_a_changing_sentinel(kind == "identity", alone, together)


@pytest.mark.parametrize("where", ["before", "after"])
def test_unet_attn1_replace_on_an_injected_block_still_runs(tiny_sd15_patcher, comfy, where):
    """Another pack's attn1 replace on a block SCSA injects into (the slot holds one): SCSA's replace
    runs it for the block's attention, so it sees every call of that block, with the q/k/v
    ComfyUI hands a replace; an identity one leaves SCSA's latent bit for bit."""
    from comfy.ldm.modules.attention import optimized_attention
    patcher = tiny_sd15_patcher
    seen = []

    def replace(q, k, v, extra_options):
        seen.append(q.shape)
        return optimized_attention(q, k, v, extra_options["n_heads"])

    def with_replace(model):
        model = model.clone()
        model.set_model_attn1_replace(replace, "output", 9, 0)
        return model

    with torch.inference_mode():
        inversion = _unet_invert(patcher)
        alone = _unet_sample(_unet_apply(patcher), inversion)
        together = _unet_sample(_placed(patcher, where, with_replace), inversion)
    assert ("output", 9, 0) in inversion.blocks
    assert len(seen) == STEPS and all(shape[0] == LATENT[0] for shape in seen), seen
    assert torch.equal(together, alone)


def _hypertile(model):
    nodes = importlib.import_module("comfy_extras.nodes_hypertile")
    # tile_size 32: 4-token tiles at the 16 x 12 full-resolution grid; swap_size 1: no random choice
    return _node_model(nodes.HyperTile.execute(model, tile_size=32, swap_size=1, max_depth=0, scale_depth=False))


def _tome(model):
    nodes = importlib.import_module("comfy_extras.nodes_tomesd")
    return _node_model(nodes.TomePatchModel.execute(model, ratio=0.5))


@pytest.mark.parametrize("storage", ["memory", "recompute"])
@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("node", ["HyperTile", "ToMe"])
def test_unet_comfyui_hypertile_and_tome(tiny_sd15_patcher, comfy, monkeypatch, node, where, storage):
    """ComfyUI's HyperTile (tiles the queries: the batch grows) and ToMe (merges tokens) on the
    model before or after SCSAApply: their attn1 patch sees norm1 of the block input, their
    output patch the real attention output of their own layout, in SCSA's injected blocks too;
    SCSA gets the exact block input and injects (the latent differs from the run without
    injection), and the node still acts (its layout differs from the block's, and the latent
    from SCSA's alone)."""
    patcher = tiny_sd15_patcher
    patch = {"HyperTile": _hypertile, "ToMe": _tome}[node]
    with torch.inference_mode():
        inversion = _unet_invert(patcher, storage)
        alone = _unet_sample(_unet_apply(patcher), inversion)
        plain = _unet_sample(_unet_apply(patch(patcher), start=0.0, end=0.0), inversion)
        model = _placed(patcher, where, patch)
        calls = BlockCalls(patcher.model.diffusion_model, monkeypatch)
        calls.spy_on(model, "attn1_patch", "in")
        calls.spy_on(model, "attn1_output_patch", "out")
        try:
            together = _unet_sample(model, inversion)
            _check_attention_seen(calls.calls, "out", attn1_label="in")
            _check_scsa_got_the_block_input(calls.calls)
            changed = [call for call in calls.calls if "in" in call and call["in"][1][0].shape != call["x"].shape]
            assert any("scsa" in call for call in changed), f"{node} did not act on an injected block"
        finally:
            calls.close()
    assert torch.isfinite(together).all()
    assert not torch.allclose(together, plain, rtol=0, atol=1e-4)
    assert not torch.allclose(together, alone, rtol=0, atol=1e-4)


@pytest.mark.parametrize("where", ["before", "after"])
def test_unet_comfyui_nag(tiny_sd15_patcher, comfy, monkeypatch, where):
    """ComfyUI's Normalized Attention Guidance (ComfyUI 0.33.0; an attn1 output patch that needs the
    cond and uncond rows in one call) before or after SCSAApply: it sees the real attention output
    of both chunks, SCSA's injected blocks included, SCSA gets the exact block input and injects."""
    try:
        nag = importlib.import_module("comfy_extras.nodes_nag")
    except ImportError:
        pytest.skip("this ComfyUI has no NAGuidance node")
    patcher = tiny_sd15_patcher

    def with_nag(model):
        return _node_model(nag.NAGuidance.execute(model, nag_scale=5.0, nag_alpha=0.5, nag_tau=1.5))

    with torch.inference_mode():
        inversion = _unet_invert(patcher)
        plain = _unet_sample(_unet_apply(with_nag(patcher), start=0.0, end=0.0), inversion)
        model = _placed(patcher, where, with_nag)
        calls = BlockCalls(patcher.model.diffusion_model, monkeypatch)
        calls.spy_on(model, "attn1_output_patch", "nag")
        try:
            together = _unet_sample(model, inversion)
            _check_attention_seen(calls.calls, "nag")
            _check_scsa_got_the_block_input(calls.calls)
            assert all(call["x"].shape[0] == 2 for call in calls.calls), "NAG runs cond and uncond in one call"
        finally:
            calls.close()
    assert torch.isfinite(together).all()
    assert not torch.allclose(together, plain, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------- DiT
DIT_LATENT_HW = (8, 6)   # patch 2: a 4 x 3 token grid


def _dit_patcher(request, variant):
    return request.getfixturevalue(f"tiny_{variant}_patcher")


def _dit_invert(patcher, variant, steps=STEPS, blocks="auto"):
    nodes = pack_module("nodes/diffusion_nodes.py")
    latents = {name: {"samples": tiny_models.tiny_dit_latent(variant, *DIT_LATENT_HW, seed=4 + index)}
               for index, name in enumerate(("content", "style", "content_map", "style_map"))}
    return nodes.SCSAInvert.execute(model=patcher, conditioning=tiny_models.tiny_dit_conditioning(variant),
                                    steps=steps, blocks=blocks, **latents).result[0]


def _dit_apply(model, **settings):
    return _unet_apply(model, **settings)   # the same node and settings


def _dit_sample(model, inversion):
    nodes = pack_module("nodes/diffusion_nodes.py")
    return nodes.SCSAStyleSampler.execute(model=model, inversion=inversion, init="auto",
                                          timesteps="official").result[0]["samples"]


def _counting_override(seen: list, previous=None):
    def override(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        seen.append((options.get("block_type"), options.get("block_index"), args[0].shape[0]))
        return previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
    return override


def _with_override(model, override):
    model = model.clone()
    options = model.model_options.setdefault("transformer_options", {})
    options[OVERRIDE_KEY] = override(options.get(OVERRIDE_KEY))
    return model


@pytest.mark.parametrize("variant", ["flux1", "qwen_image"])
def test_dit_override_set_after_scsaapply_sees_every_call(request, variant, comfy):
    """Another node writes its attention override on the model after SCSAApply (the one slot):
    SCSA, installed when it samples, chains to it, so it sees every call (the same calls as one
    set before SCSAApply: every block, the references riding in the batch) and SCSA still
    injects: the latent is the one without the other override, and not the un-injected one."""
    patcher = _dit_patcher(request, variant)
    family = pack_module("nodes/families/__init__.py").family_of(patcher)
    before, after = [], []
    with torch.inference_mode():
        inversion = _dit_invert(patcher, variant)
        alone = _dit_sample(_dit_apply(patcher), inversion)
        off = _dit_sample(_dit_apply(patcher, start=0.0, end=0.0), inversion)
        first = _dit_sample(_dit_apply(_with_override(patcher, lambda p: _counting_override(before, p))), inversion)
        last = _dit_sample(_with_override(_dit_apply(patcher), lambda p: _counting_override(after, p)), inversion)
    blocks = set(family.attention_blocks())
    assert {(kind, index) for kind, index, _ in after if index is not None} == blocks
    assert after == before
    assert max(batch for *_, batch in after) == 1 + len(inversion.batches[0])   # the references ride along
    assert torch.equal(last, alone) and torch.equal(first, alone)
    assert not torch.allclose(last, off, rtol=0, atol=1e-4)


def test_dit_a_hook_that_drops_scsas_override_stops_the_sampler(tiny_flux1_patcher, comfy):
    """A wrapper that puts its own override in the slot while sampling (not chained to SCSA's):
    no injected block reaches SCSA, and the sampler stops with InjectionLost."""
    import comfy.patcher_extension
    injection = pack_module("nodes/injection.py")
    patcher = tiny_flux1_patcher

    def drop_the_override(executor, *args, **kwargs):
        options = kwargs.get("transformer_options") or args[-1]
        options[OVERRIDE_KEY] = lambda func, *a, **k: func(*a, **k)
        return executor(*args, **kwargs)

    with torch.inference_mode():
        inversion = _dit_invert(patcher, "flux1")
        model = _dit_apply(patcher).clone()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "backend", drop_the_override)
        with pytest.raises(injection.InjectionLost, match="SCSA injected nothing in this sampling step"):
            _dit_sample(model, inversion)


@pytest.mark.parametrize("variant", ["sd15", "flux1"])
def test_comfyui_easycache_is_named(request, variant, comfy, caplog):
    """ComfyUI's EasyCache skips whole model calls: SCSA warns when it installs, naming it, and the
    step the cache skips stops the sampler with InjectionLost naming it (instead of a latent
    whose skipped steps were never styled)."""
    injection = pack_module("nodes/injection.py")
    easycache = importlib.import_module("comfy_extras.nodes_easycache")

    def cached(model):
        return _node_model(easycache.EasyCacheNode.execute(model, reuse_threshold=3.0, start_percent=0.0,
                                                           end_percent=1.0, verbose=False))

    with torch.inference_mode():
        if variant == "sd15":
            patcher = request.getfixturevalue("tiny_sd15_patcher")
            inversion = _unet_invert(patcher)
            model, sample = cached(_unet_apply(patcher)), _unet_sample
        else:
            patcher = _dit_patcher(request, variant)
            inversion = _dit_invert(patcher, variant, steps=6)
            model, sample = cached(_dit_apply(patcher)), _dit_sample
        with caplog.at_level("WARNING", logger="scsa"), \
                pytest.raises(injection.InjectionLost, match="EasyCache on this model skips model calls"):
            sample(model, inversion)
    assert "SCSA: EasyCache on this model can skip model calls or blocks" in caplog.text


def test_dit_a_first_block_cache_that_skips_injected_blocks_is_named(tiny_flux1_patcher, comfy, caplog):
    """A First-Block-Cache-style cache runs the first block and skips the others on later steps:
    SCSA injects into double 0 and double 1, the cache skips double 1 from the second step, and
    the sampler stops with InjectionLost naming the skipped block and the cache."""
    import comfy.patcher_extension
    injection = pack_module("nodes/injection.py")
    patcher = tiny_flux1_patcher
    state = {"calls": 0}

    def first_block_cache(executor, *args, **kwargs):
        state["calls"] += 1
        options = kwargs.get("transformer_options") or args[-1]
        options["skip_after_first_block"] = state["calls"] > 1
        return executor(*args, **kwargs)

    def cached_block(args, extra):
        if args["transformer_options"].get("skip_after_first_block"):
            return {"img": args["img"], "txt": args["txt"]}   # the cached residual, say
        return extra["original_block"](args)

    with torch.inference_mode():
        inversion = _dit_invert(patcher, "flux1", blocks="double 0-1")
        model = _dit_apply(patcher).clone()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "first_block_cache",
                                   first_block_cache)
        model.set_model_patch_replace(cached_block, "dit", "double_block", 1)
        with caplog.at_level("WARNING", logger="scsa"), pytest.raises(
                injection.InjectionLost, match=r"only part of the blocks.*\('double', 1\) never reached it\. "
                                               r"first_block_cache on this model skips"):
            _dit_sample(model, inversion)
    assert state["calls"] >= 2
    assert "SCSA: first_block_cache on this model can skip" in caplog.text
