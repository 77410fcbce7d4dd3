"""Properties of the feed-forward SCSA networks (pure ``scsa_core.feedforward``, no ComfyUI, no
../shared): attention restricted to regions, single label = plain attention, no NaN for any
label layout, any image size and aspect ratio, the plain baselines, and the weight checks.

Weights: random, in the official key layout (``tests/feedforward_weights.py``), built once.
Images are small (tens of pixels), so every forward pass takes well under a second.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import feedforward_weights as fw
from scsa_core.attention import pair_labels
from scsa_core.feedforward import (SCSAWeights, WeightsError, build_model, combine_parts, identify_part,
                                   parts_from_combined, parts_from_files, stylize, working_size)
from scsa_core.feedforward.weights import check_part, part_key_shapes
from scsa_core.labels import SemanticLabels, labels_from_masks, map_size_note

VARIANTS = ("sanet", "stytr2")


def _state_dicts(variant: str, include_vgg: bool = False) -> dict:
    """Random weights (seed 0), built once per process: models copy them when loading."""
    return fw.state_dicts(variant, include_vgg=include_vgg)


@pytest.fixture(scope="module")
def models():
    return {variant: build_model(variant, _state_dicts(variant)) for variant in VARIANTS}


def _random_image(height, width, seed, batch=1):
    g = torch.Generator().manual_seed(seed)
    # smooth random colours: a small random image upsampled, like a photo's large structures
    small = torch.rand(batch, 3, max(2, height // 8), max(2, width // 8), generator=g)
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def _band_masks(height, width, bands, vertical=False):
    """``[bands, H, W]`` masks of equal horizontal (or vertical) bands."""
    masks = torch.zeros(bands, height, width)
    size = width if vertical else height
    for i in range(bands):
        lo, hi = i * size // bands, (i + 1) * size // bands
        if vertical:
            masks[i, :, lo:hi] = 1
        else:
            masks[i, lo:hi] = 1
    return masks


# ------------------------------------------------------------------- attention, module level
def _probe_tokens(labels, channels_per_head, heads, seed, size=512):
    """Random tokens whose channels ``h * channels_per_head + l`` hold the indicator of label l:
    with identity value/output projections an attention output's channels there are the
    attention mass each head gives to each label."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, labels.numel(), size, generator=g, dtype=torch.float64)
    count = int(labels.max()) + 1
    for head in range(heads):
        for label in range(count):
            tokens[0, :, head * channels_per_head + label] = (labels == label).double()
    return tokens


def _identity(conv_or_linear):
    with torch.no_grad():
        weight = conv_or_linear.weight
        weight.zero_()
        weight.view(weight.shape[0], -1)[:, :weight.shape[0]].copy_(torch.eye(weight.shape[0]))
        conv_or_linear.bias.zero_()


def _label_mass(out, labels_count, heads, channels_per_head):
    """``[heads, N, L]`` attention mass per label from probe outputs ``[1, N, C]``."""
    return torch.stack([out[0, :, h * channels_per_head:h * channels_per_head + labels_count] for h in range(heads)])


@pytest.mark.parametrize("seed", range(2))
def test_sanet_scsa_puts_no_attention_mass_across_labels(models, seed):
    module = copy.deepcopy(models["sanet"].transformer.sanet5_1).double()
    _identity(module.h)
    _identity(module.out_conv)
    g = torch.Generator().manual_seed(seed)
    content_labels = torch.randint(0, 4, (70,), generator=g)    # label 3 has no style token
    style_labels = torch.randint(0, 3, (50,), generator=g)
    style = _probe_tokens(style_labels, 512, 1, seed)
    content = torch.randn(1, 70, 512, generator=g, dtype=torch.float64)
    content_sem, style_sem = torch.randn_like(content), torch.randn_like(style)
    trace = {}
    module.scsa(content, style, content_sem, style_sem, content_labels, style_labels, SCSAWeights(0.7, 0.3),
                trace, "5_1")
    mass = _label_mass(trace["sca_5_1"], 3, 1, 512)[0]
    matched = content_labels < 3
    expected = F.one_hot(content_labels[matched], 3).double()
    torch.testing.assert_close(mass[matched], expected, rtol=0, atol=1e-12)
    # the unmatched region (label 3) attends to the whole style: its mass spreads over all labels
    assert bool((mass[~matched] > 0).all()) and torch.allclose(mass[~matched].sum(-1), torch.ones(int((~matched).sum()), dtype=torch.float64))
    picks = trace["ssa_argmax_5_1"][0]
    assert torch.equal(style_labels[picks[matched]], content_labels[matched])


@pytest.mark.parametrize("seed", range(2))
def test_stytr2_scsa_puts_no_attention_mass_across_labels(models, seed):
    attention = copy.deepcopy(models["stytr2"].transformer.decoder.layers[1].multihead_attn).double()
    with torch.no_grad():   # W_v = identity, b_v = 0, W_o = identity, b_o = 0
        attention.in_proj_weight[1024:].copy_(torch.eye(512))
        attention.in_proj_bias[1024:].zero_()
    _identity(attention.out_proj)
    g = torch.Generator().manual_seed(10 + seed)
    content_labels = torch.randint(-1, 3, (64,), generator=g)   # -1: unlabelled content tokens
    style_labels = torch.randint(0, 3, (40,), generator=g)
    memory = _probe_tokens(style_labels, 64, 8, seed)
    sem_query = torch.randn(1, 64, 512, generator=g, dtype=torch.float64)
    sem_key = torch.randn(1, 40, 512, generator=g, dtype=torch.float64)
    query = torch.randn(1, 64, 512, generator=g, dtype=torch.float64)
    weights = SCSAWeights(1.2, 0.5, 0.7)
    pairing = pair_labels(content_labels, style_labels)
    trace = {}
    attention.scsa(query, attention.sca_terms(sem_query, sem_key, memory, pairing, weights), weights, trace, "c")
    mass = _label_mass(trace["c.sca"], 3, 8, 64)           # [heads, N, L]
    labelled = content_labels >= 0
    expected = F.one_hot(content_labels[labelled], 3).double().expand(8, -1, -1)
    torch.testing.assert_close(mass[:, labelled], expected, rtol=0, atol=1e-12)
    assert bool((mass[:, ~labelled] > 0).all())             # unlabelled: the whole style
    picks = trace["c.ssa_argmax"][0]                        # [heads, N]
    assert torch.equal(style_labels[picks[:, labelled]], content_labels[labelled].expand(8, -1))


def test_single_label_is_plain_attention(models):
    """One region everywhere: SANet's SCA is its unmasked attention (unscaled logits), SSA the
    global argmax; StyTr2's SCA is torch's own multi-head attention with the same weights."""
    module = copy.deepcopy(models["sanet"].transformer.sanet4_1).double()
    g = torch.Generator().manual_seed(3)
    content, style = torch.randn(1, 30, 512, generator=g).double(), torch.randn(1, 24, 512, generator=g).double()
    content_sem, style_sem = torch.randn_like(content), torch.randn_like(style)
    zeros_c, zeros_s = torch.zeros(30, dtype=torch.long), torch.zeros(24, dtype=torch.long)
    trace = {}
    module.scsa(content, style, content_sem, style_sem, zeros_c, zeros_s, SCSAWeights(0.7, 0.3), trace, "x")

    def conv(c, x):
        return x @ c.weight.flatten(1).T + c.bias

    def mvn(x):
        return (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-5)
    value = conv(module.h, style)
    dense = torch.softmax(conv(module.f, mvn(content_sem)) @ conv(module.g, mvn(style_sem)).transpose(1, 2), -1)
    torch.testing.assert_close(trace["sca_x"], conv(module.out_conv, dense @ value), rtol=1e-10, atol=1e-10)
    restyled = (content - content.mean(1, keepdim=True)) / torch.sqrt(content.var(1, unbiased=False, keepdim=True) + 1e-5) \
        * torch.sqrt(style.var(1, unbiased=False, keepdim=True) + 1e-5) + style.mean(1, keepdim=True)
    torch.testing.assert_close(trace["sadain_x"], restyled, rtol=1e-10, atol=1e-10)
    scores = conv(module.f, mvn(restyled)) @ conv(module.g, mvn(style)).transpose(1, 2)
    assert torch.equal(trace["ssa_argmax_x"][0], scores[0].argmax(-1))

    attention = copy.deepcopy(models["stytr2"].transformer.decoder.layers[0].multihead_attn).double()
    reference = torch.nn.MultiheadAttention(512, 8, batch_first=True).double().eval()
    reference.load_state_dict(attention.state_dict())
    query, key, memory = (torch.randn(1, n, 512, generator=g).double() for n in (30, 24, 24))
    zeros_q = torch.zeros(30, dtype=torch.long)
    terms = attention.sca_terms(query, key, memory, pair_labels(zeros_q, zeros_s), SCSAWeights(1.0, 0.0))
    expected, _ = reference(query, key, memory, need_weights=False)
    torch.testing.assert_close(attention.out_proj(terms.sca), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attention.attend(query, key, memory), expected, rtol=1e-10, atol=1e-10)


def test_stytr2_encoder_layer_is_torchs_post_norm_layer(models):
    """Without a position term the encoder layer is torch's TransformerEncoderLayer (post-norm,
    ReLU, eval), loaded from the same state dict: the published parameter names match."""
    layer = copy.deepcopy(models["stytr2"].transformer.encoder_s.layers[1]).double()
    reference = torch.nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, batch_first=True).double().eval()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(1, 20, 512, generator=torch.Generator().manual_seed(5)).double()
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------- whole networks
def _semantics(content_hw, style_hw, content_bands=3, style_bands=3, vertical=False):
    return labels_from_masks(_band_masks(*content_hw, content_bands, vertical),
                             _band_masks(*style_hw, style_bands, vertical))


def _one_pixel_region(height, width):
    """Two masks: everything but one pixel, and that pixel (a 1-pixel region; official pairs 28,
    50 and 51 have 1-token regions)."""
    speck = torch.zeros(height, width)
    speck[height // 3, width // 3] = 1
    return torch.stack([1 - speck, speck])


LAYOUTS = {
    "content label missing in style": lambda c, s: labels_from_masks(
        _band_masks(*c, 3), torch.cat([_band_masks(*s, 2), torch.zeros(1, *s)])),
    "style-only label": lambda c, s: labels_from_masks(
        torch.cat([_band_masks(*c, 2), torch.zeros(1, *c)]), _band_masks(*s, 3)),
    "unlabelled content pixels": lambda c, s: labels_from_masks(_band_masks(*c, 3)[[0, 2]], _band_masks(*s, 3)[[0, 2]]),
    "no label at all in content": lambda c, s: labels_from_masks(torch.zeros(2, *c), _band_masks(*s, 2)),
    "one-pixel region": lambda c, s: labels_from_masks(_one_pixel_region(*c), _one_pixel_region(*s)),
    "single label": lambda c, s: labels_from_masks(torch.ones(1, *c), torch.ones(1, *s)),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_no_nan_for_any_label_layout(models, variant, layout):
    content_hw, style_hw = (48, 64), (64, 48)
    semantics = LAYOUTS[layout](content_hw, style_hw)
    result = stylize(models[variant], _random_image(*content_hw, 1), _random_image(*style_hw, 2), semantics,
                     size=64)
    assert result.image.shape == (1, *content_hw, 3)
    assert bool(torch.isfinite(result.image).all()) and result.image.std() > 0
    if layout == "one-pixel region":
        assert int((semantics.content == 1).sum()) == 1 and int((semantics.style == 1).sum()) == 1
    falls_back = layout in ("content label missing in style", "unlabelled content pixels", "no label at all in content")
    assert any("whole style" in note for note in result.notes) == falls_back, result.notes


def test_only_a_stretched_map_is_noted(models):
    """A map of another size is resampled like its image, silently; one of another aspect ratio
    is stretched onto it, and the notes say so (the map-size note the diffusion path logs)."""
    content, style = _random_image(48, 64, 1), _random_image(48, 64, 2)
    smaller = stylize(models["sanet"], content, style, _semantics((24, 32), (48, 64)), size=64)
    assert not any("semantic map" in note for note in smaller.notes), smaller.notes
    square = stylize(models["sanet"], content, style, _semantics((48, 48), (48, 64)), size=64)
    note = map_size_note((48, 48), (48, 64), "content")
    assert note.stretched and [n for n in square.notes if "semantic map" in n] == [note.text]


@pytest.mark.parametrize("variant", VARIANTS)
def test_any_size_and_aspect_ratio(models, variant):
    model = models[variant]
    content, style = _random_image(40, 72, 3), _random_image(56, 32, 4)
    semantics = _semantics((40, 72), (56, 32), vertical=True)
    out = stylize(model, content, style, semantics, size=80)
    assert out.image.shape == (1, 40, 72, 3) and bool(torch.isfinite(out.image).all())
    working = stylize(model, content, style, semantics, size=80, output_size="working")
    assert working.image.shape[1:3] == working_size(40, 72, 80, model.size_multiple, "default")
    official = stylize(model, content, style, semantics, size=64, preset="official", output_size="working")
    assert official.image.shape[1:3] == (64, 64)   # the official code stretches both images to a square
    plain = stylize(model, content, style, None, size=80)
    assert plain.image.shape == out.image.shape and not torch.allclose(plain.image, out.image)


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_square_grids_keep_rows_and_columns(models, variant):
    """On a wide content grid and a tall style grid of other sizes, every SSA pick of a labelled
    token lies in its own region: label maps are laid out row-major at each side's own grid."""
    from scsa_core.feedforward.stylize import _GridLabels
    model = models[variant].double()
    try:
        content = torch.rand(1, 3, 48, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        style = torch.rand(1, 3, 80, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        semantics = _semantics((48, 96), (80, 32), vertical=True)
        labels_at = _GridLabels(semantics, "default")
        images = [p.permute(2, 0, 1)[None].double() for p in
                  (semantics.palette[semantics.content.clamp_min(0)] / 255.0, semantics.palette[semantics.style.clamp_min(0)] / 255.0)]
        trace = {}
        with torch.no_grad():
            model.forward_scsa(content, style, *images, labels_at, model.default_weights, trace=trace)
        keys = [k for k in trace if "ssa_argmax" in k]
        assert keys
        for key in keys:
            picks = trace[key][0].reshape(-1, trace[key].shape[-1])
            tokens = picks.shape[-1]
            (content_grid, style_grid), (content_labels, style_labels) = next(
                (grids, value) for grids, value in labels_at.cache.items() if grids[0][0] * grids[0][1] == tokens)
            assert content_grid[1] > content_grid[0] and style_grid[0] > style_grid[1]
            content_flat, style_flat = content_labels.flatten(), style_labels.flatten()
            matched = torch.isin(content_flat, style_flat)   # a thin band can vanish at a coarse grid
            assert int(matched.sum()) >= tokens // 2, key
            assert torch.equal(style_flat[picks[:, matched]], content_flat[matched].expand(picks.shape[0], -1)), key
    finally:
        model.float()


@pytest.mark.parametrize("variant", VARIANTS)
def test_batches_and_progress(models, variant):
    model = models[variant]
    content = _random_image(32, 48, 5, batch=2)
    ticks = []
    semantics = _semantics((32, 48), (32, 32))
    out = stylize(model, content, _random_image(32, 32, 6), semantics, size=48, progress=lambda: ticks.append(1))
    assert out.image.shape == (2, 32, 48, 3)
    assert len(ticks) == 2 * model.progress_steps(True)
    single = stylize(model, content[1:], _random_image(32, 32, 6), semantics, size=48)
    torch.testing.assert_close(out.image[1:], single.image)
    # one style for the batch: the style's and the maps' features are computed once
    encoder = model.vgg if variant == "sanet" else model.transformer.encoder_c
    name = "relu4_1" if variant == "sanet" else "forward"
    calls = []
    original = getattr(encoder, name)
    try:
        setattr(encoder, name, lambda *a, **k: calls.append(1) or original(*a, **k))
        stylize(model, _random_image(32, 48, 7, batch=3), _random_image(32, 32, 6), semantics, size=48)
    finally:
        delattr(encoder, name)
    # SANet: content+map, style+map, then each further content alone; StyTr2 (encoder_c): the
    # style's second pass once, then content+map per image
    assert len(calls) == (2 + 2 if variant == "sanet" else 1 + 3), calls


def test_sanet_batch_computes_the_style_side_once(models, monkeypatch):
    """One style for a batch: each level's pairing and SCA are computed for the first image only
    (a cache that misses would compute them per image), and every image comes out as it would
    alone; the cached SCA of a later image is the uncached one."""
    import scsa_core.feedforward.sanet as sanet
    from scsa_core.feedforward.stylize import _GridLabels, resize_images, semantic_images
    model = models["sanet"]
    content, style = _random_image(32, 48, 11, batch=3), _random_image(32, 32, 12)
    semantics = _semantics((32, 48), (32, 32))
    calls = {"pair_labels": 0, "semantic_continuous_attention": 0}
    for name in calls:
        original = getattr(sanet, name)
        monkeypatch.setattr(sanet, name, lambda *a, _name=name, _original=original, **k:
                            calls.__setitem__(_name, calls[_name] + 1) or _original(*a, **k))
    batch = stylize(model, content, style, semantics, size=48)
    assert calls == {"pair_labels": 2, "semantic_continuous_attention": 2}, calls   # two levels
    for index in range(3):
        single = stylize(model, content[index:index + 1], style, semantics, size=48)
        torch.testing.assert_close(batch.image[index:index + 1], single.image)

    maps = [resize_images(m, *hw) for m, hw in zip(semantic_images(semantics), ((32, 48), (32, 32)))]
    images = [x.permute(0, 3, 1, 2) for x in (content, style)]
    cache, traces = {}, []
    with torch.no_grad():
        for index in range(3):
            traces.append({})
            model.forward_scsa(images[0][index:index + 1], images[1], *maps, _GridLabels(semantics, "default"),
                               trace=traces[-1], reference_cache=cache)
        alone = {}
        model.forward_scsa(images[0][2:], images[1], *maps, _GridLabels(semantics, "default"), trace=alone)
    assert {key[:2] for key in cache if key[0] == "style_side"} == {("style_side", "4_1"), ("style_side", "5_1")}
    for key in ("sca_4_1", "sca_5_1"):
        torch.testing.assert_close(traces[2][key], alone[key])
    # A later image's VGG runs without the content map beside it: float rounding differs
    for key in ("fused_4_1", "fused_5_1", "output_raw"):
        torch.testing.assert_close(traces[2][key], alone[key], rtol=1e-4, atol=1e-4)
    assert torch.equal(traces[2]["sca_5_1"], traces[0]["sca_5_1"])   # the first image's, reused


def test_working_size_and_input_errors(models):
    assert working_size(600, 800, 512, 16, "default") == (384, 512)
    assert working_size(600, 800, 512, 8, "official") == (512, 512)
    assert working_size(1000, 10, 512, 16, "default") == (512, 16)
    with pytest.raises(ValueError, match="preset must be one of"):
        working_size(10, 10, 512, 8, "fast")
    model = models["sanet"]
    image = _random_image(32, 32, 0)
    with pytest.raises(ValueError, match=r"content: expected an image \[batch, height, width, 3\]"):
        stylize(model, image[0, :, :, 0], image)
    bad = image.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="style: the image holds NaN"):
        stylize(model, image, bad)
    with pytest.raises(ValueError, match="a batch of 2 images for 1 content images"):
        stylize(model, image, torch.cat([image, image]))
    with pytest.raises(ValueError, match="sca_weight must be a finite number"):
        SCSAWeights(float("nan"), 0.3)
    planar = image.permute(0, 3, 1, 2)
    with pytest.raises(ValueError, match=r"the style semantic map is \(1, 3, 16, 32\) but the style image is"):
        model.forward_scsa(planar, planar, planar, planar[..., :16, :], lambda c, s: (None, None))


# --------------------------------------------------------------------------------- weights
def test_test_builder_has_the_published_layout():
    """The tests' independent key tables agree with the pack's (and with the oracle's builder,
    when ../shared is there)."""
    for variant in VARIANTS:
        for part, sd in _state_dicts(variant, include_vgg=True).items():
            expected = part_key_shapes(variant, part)
            assert {k: tuple(v.shape) for k, v in sd.items()} == expected, (variant, part)
    counts = {part: sum(v.numel() for v in sd.values()) for part, sd in _state_dicts("stytr2", include_vgg=True).items()}
    assert counts == {"embedding": 98_816, "decoder": 3_505_219, "transformer": 31_790_080, "vgg": 20_024_396}
    assert sum(v.numel() for v in _state_dicts("sanet")["transformer"].values()) == 4_461_056


def test_files_are_recognised_by_their_keys():
    sanet, stytr2 = _state_dicts("sanet"), _state_dicts("stytr2", include_vgg=True)
    assert identify_part(sanet["transformer"]) == ("sanet", "transformer")
    assert identify_part(stytr2["transformer"]) == ("stytr2", "transformer")
    assert identify_part(stytr2["embedding"]) == ("stytr2", "embedding")
    assert identify_part(sanet["vgg"]) == (None, "vgg")
    assert identify_part(sanet["decoder"]) == (None, "decoder")
    renamed = {f"file{i}.pth": sd for i, sd in enumerate(stytr2.values())}
    variant, parts, notes = parts_from_files(renamed)
    assert variant == "stytr2" and set(parts) == {"embedding", "decoder", "transformer"}
    assert any("VGG only in training" in note for note in notes)
    with pytest.raises(WeightsError, match="not a SANet or StyTr2 weight file"):
        identify_part({"foo.weight": torch.zeros(3)}, "foo.pth")


def _files(variant):
    names = fw.OFFICIAL_FILES[variant]
    return {names[part] + ".pth": sd for part, sd in _state_dicts(variant).items()}


def test_refusals_name_what_is_wrong():
    files = _files("sanet")
    missing = dict(files)
    missing["transformer_iter_500000.pth"] = {k: v for k, v in files["transformer_iter_500000.pth"].items()
                                              if k != "sanet5_1.g.bias"}
    with pytest.raises(WeightsError, match=r"transformer_iter_500000.pth .*missing 1 key\(s\): sanet5_1.g.bias \[512\]"):
        parts_from_files(missing)

    wrong = dict(files)
    wrong["decoder_iter_500000.pth"] = dict(files["decoder_iter_500000.pth"], **{"14.weight": torch.zeros(128, 256, 1, 1)})
    with pytest.raises(WeightsError, match=r"14.weight is \[128, 256, 1, 1\], expected \[128, 256, 3, 3\]"):
        parts_from_files(wrong)

    extra = dict(files)
    extra["vgg_normalised.pth"] = dict(files["vgg_normalised.pth"], **{"53.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match=r"1 unexpected key\(s\): 53.weight"):
        parts_from_files(extra)

    incomplete = {k: v for k, v in files.items() if not k.startswith("vgg")}
    with pytest.raises(WeightsError, match=r"SANet set is incomplete: missing vgg_normalised.pth .*GlebSBrykin/SANET"):
        parts_from_files(incomplete)

    mixed = dict(files, **{"embedding_iter_160000.pth": _state_dicts("stytr2")["embedding"]})
    with pytest.raises(WeightsError, match="mixes SANet and StyTr2 files"):
        parts_from_files(mixed)

    two_decoders = dict(files, **{"decoder_copy.pth": files["decoder_iter_500000.pth"]})
    with pytest.raises(WeightsError, match="holds 2 decoder files"):
        parts_from_files(two_decoders)

    damaged = dict(files)
    damaged["transformer_iter_500000.pth"] = dict(files["transformer_iter_500000.pth"])
    damaged["transformer_iter_500000.pth"]["merge_conv.bias"] = torch.full((512,), float("nan"))
    with pytest.raises(WeightsError, match="hold NaN or infinity .*merge_conv.bias"):
        parts_from_files(damaged)

    with pytest.raises(WeightsError, match="entries are not tensors"):
        parts_from_files({"x.pth": {"iteration": 5, "weight": torch.zeros(1)}})
    with pytest.raises(WeightsError, match="no transformer file"):
        parts_from_files({"vgg_normalised.pth": files["vgg_normalised.pth"]})

    variant, parts, _ = parts_from_files(files)
    with pytest.raises(WeightsError, match="these are SANet weights, not StyTr2"):
        build_model(variant, parts, expected_variant="stytr2")


def test_combined_file_round_trip_and_refusals(models):
    variant, parts, _ = parts_from_files(_files("sanet"))
    combined, metadata = combine_parts(variant, parts)
    assert metadata["variant"] == "sanet" and not any(k.startswith("vgg.45") for k in combined)
    again_variant, again, _ = parts_from_combined(combined, metadata)
    model = build_model(again_variant, again)
    for (name, a), (_, b) in zip(model.state_dict().items(), models["sanet"].state_dict().items()):
        assert torch.equal(a, b), name
    # module. prefixes (DataParallel saves) are stripped
    prefixed = {f"module.{k}": v for k, v in parts["decoder"].items()}
    assert set(check_part("sanet", "decoder", prefixed)) == set(parts["decoder"])

    with pytest.raises(WeightsError, match=r"metadata says variant 'stytr2' but its transformer keys are SANet's"):
        parts_from_combined(combined, {"variant": "stytr2"})
    without_decoder = {k: v for k, v in combined.items() if not k.startswith("decoder.")}
    with pytest.raises(WeightsError, match="missing decoder_iter_500000.pth"):
        parts_from_combined(without_decoder)
    with pytest.raises(WeightsError, match="only the SANet transformer file"):
        parts_from_combined(parts["transformer"], source="sanet.safetensors")
    stytr2 = {f"{part}.{k}": v for part, sd in _state_dicts("stytr2").items() for k, v in sd.items()}
    variant, _, notes = parts_from_combined(dict(stytr2, **{f"vgg.{k}": v for k, v in _state_dicts("stytr2", True)["vgg"].items()}))
    assert variant == "stytr2" and any("VGG only in training" in n for n in notes)


def test_deduplicated_encoding_equals_the_full_pass(models):
    """A flat-colour map's tokens repeat: encoding the distinct ones (log-count logit bias) gives
    what the full pass gives, token for token."""
    encoder = copy.deepcopy(models["stytr2"].transformer.encoder_s).double()
    g = torch.Generator().manual_seed(7)
    distinct = torch.randn(5, 512, generator=g, dtype=torch.float64)
    tokens = distinct[torch.randint(0, 5, (60,), generator=g)][None]
    with torch.no_grad():
        torch.testing.assert_close(encoder.deduplicated(tokens), encoder(tokens), rtol=1e-12, atol=1e-12)
        varied = torch.randn(1, 12, 512, generator=g, dtype=torch.float64)   # no repeats: the plain pass
        torch.testing.assert_close(encoder.deduplicated(varied), encoder(varied), rtol=0, atol=0)


def test_converter_writes_one_loadable_file(models, tmp_path):
    """scripts/convert_feedforward_weights.py: a folder of published .pth files -> one
    .safetensors that loads to the same model; a code-executing pickle is refused."""
    from safetensors import safe_open
    from scripts.convert_feedforward_weights import main
    folder = fw.write_official_folder(tmp_path / "sanet", "sanet", extension=".pth")
    out = tmp_path / "sanet.safetensors"
    main([str(folder), str(out)])
    with safe_open(str(out), "pt") as f:
        metadata, combined = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    variant, parts, _ = parts_from_combined(combined, metadata)
    assert variant == "sanet" and metadata["variant"] == "sanet"
    for (key, a), (_, b) in zip(build_model(variant, parts).state_dict().items(), models["sanet"].state_dict().items()):
        assert torch.equal(a, b), key
    torch.save({"model": _CodeNeeded()}, str(folder / "transformer_iter_500000.pth"))
    with pytest.raises(SystemExit, match="refused, the file is a pickle that needs to run code"):
        main([str(folder), str(tmp_path / "again.safetensors")])


class _CodeNeeded:
    """Unpickling this needs this class: torch.load(weights_only=True) refuses it."""
