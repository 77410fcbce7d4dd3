"""Property-based fuzzing (hypothesis) of the label and mask pipeline and of the attention maths.

Random colour maps and masks, random grids and random label layouts never crash (a
``ValueError`` with a message is the only accepted refusal) and never produce NaN or inf:
``labels_from_color_maps`` -> ``content_labels_at`` / ``style_labels_at`` / ``resample_labels``
-> ``pair_labels`` -> ``semantic_adain`` / SCA / SSA / a whole ``scsa_block`` on grids of
different sizes. Pure
``scsa_core``: no ComfyUI. Bounded and derandomised, so it runs in seconds and every CI run
sees the same examples.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scsa_core.adain import semantic_adain
from scsa_core.attention import pair_labels, semantic_continuous_attention, semantic_sparse_attention
from scsa_core.block import BlockLayers, ReferenceInputs, SCSAParams, scsa_block
from scsa_core.labels import RESAMPLE_MODES, labels_from_color_maps, labels_from_masks, resample_labels
from scsa_core.presets import label_resampling

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
sizes = st.integers(min_value=1, max_value=20)


@st.composite
def colour_maps(draw, min_size=1, max_size=24):
    """A random "semantic map": flat regions (blocks or per-pixel), optional noise or JPEG."""
    height = draw(st.integers(min_size, max_size))
    width = draw(st.integers(min_size, max_size))
    count = draw(st.integers(1, 6))
    colours = np.array(draw(st.lists(st.tuples(*[st.integers(0, 255)] * 3), min_size=count, max_size=count)),
                       dtype=np.uint8)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # large blocks: a coarse random layout, upsampled
        coarse = rng.integers(0, count, (rng.integers(1, 4), rng.integers(1, 4)))
        layout = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.NEAREST))
    else:
        layout = rng.integers(0, count, (height, width))
    image = colours[layout]
    noise = draw(st.sampled_from([0, 0, 3, 12, 60]))
    if noise:
        image = np.clip(image.astype(int) + rng.integers(-noise, noise + 1, image.shape), 0, 255).astype(np.uint8)
    if draw(st.booleans()) and height >= 2 and width >= 2:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=draw(st.sampled_from([20, 50, 90])))
        image = np.asarray(Image.open(buffer).convert("RGB"))
    return image


def _check_labels(labels, content_shape, style_shape):
    num = labels.num_labels
    assert tuple(labels.content.shape) == tuple(content_shape) and tuple(labels.style.shape) == tuple(style_shape)
    for side in (labels.content, labels.style):
        assert side.dtype == torch.int64 and int(side.min()) >= -1 and int(side.max()) < num
    present_c = set(torch.unique(labels.content).tolist())
    present_s = set(torch.unique(labels.style).tolist())
    assert labels.matched.tolist() == [(i in present_c and i in present_s) for i in range(num)]


@FUZZ
@given(content=colour_maps(), style=colour_maps(), max_labels=st.sampled_from([1, 3, 64]))
def test_colour_maps_label_or_refuse_clearly(content, style, max_labels):
    try:
        labels = labels_from_color_maps(content, style, max_labels=max_labels)
    except ValueError as error:
        assert str(error), "a refusal without a message"
        return
    _check_labels(labels, content.shape[:2], style.shape[:2])
    assert 1 <= labels.num_labels <= max_labels
    assert int(labels.content.min()) >= 0 and int(labels.style.min()) >= 0  # colour maps label every pixel


@st.composite
def mask_stacks(draw):
    count = draw(st.integers(0, 5))
    stacks = []
    for _ in range(2):
        height, width = draw(sizes), draw(sizes)
        rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
        kind = draw(st.sampled_from(["soft", "binary", "empty", "full", "wild"]))
        if kind == "soft":
            masks = rng.random((count, height, width))
        elif kind == "binary":
            masks = (rng.random((count, height, width)) > 0.6).astype(np.float64)
        elif kind == "empty":
            masks = np.zeros((count, height, width))
        elif kind == "full":
            masks = np.ones((count, height, width))
        else:  # values no mask should have
            masks = rng.choice([np.nan, np.inf, -np.inf, -3.0, 7.0, 0.5], size=(count, height, width))
        stacks.append(torch.from_numpy(masks).float())
    return stacks


@FUZZ
@given(stacks=mask_stacks(), threshold=st.floats(0.0, 1.0))
def test_masks_always_label(stacks, threshold):
    content, style = stacks
    labels = labels_from_masks(content, style, threshold=threshold)
    _check_labels(labels, content.shape[1:], style.shape[1:])
    assert labels.num_labels == content.shape[0]


@st.composite
def semantic_pairs(draw):
    """SemanticLabels from colour maps (with their colours) or from masks (with -1 pixels)."""
    if draw(st.booleans()):
        content, style = draw(colour_maps(min_size=2, max_size=16)), draw(colour_maps(min_size=2, max_size=16))
        try:
            return labels_from_color_maps(content, style)
        except ValueError:
            pass
    content, style = draw(mask_stacks())
    if content.shape[0] == 0:
        content, style = torch.ones(1, 3, 3), torch.ones(1, 2, 5)
    return labels_from_masks(content, style, threshold=0.5)


@FUZZ
@given(labels=semantic_pairs(), height=sizes, width=sizes, mode=st.sampled_from(RESAMPLE_MODES))
def test_labels_at_any_grid(labels, height, width, mode):
    content, style = labels.content_labels_at(height, width, mode), labels.style_labels_at(0, height, width, mode)
    for grid in (content, style):
        assert tuple(grid.shape) == (height, width)
        assert int(grid.min()) >= -1 and int(grid.max()) < labels.num_labels
    # the label map itself, at any grid, with or without the palette
    again = resample_labels(labels.content, height, width, mode=mode, palette=labels.palette)
    assert tuple(again.shape) == (height, width)


def _features(seed: int, tokens: int, channels: int, scale: float, constant: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, channels, generator=g) * scale
    return x[:, :1].expand_as(x).clone() if constant else x


@FUZZ
@given(labels=semantic_pairs(), grid=st.tuples(sizes, sizes), style_grid=st.tuples(sizes, sizes),
       seed=st.integers(0, 1000), scale=st.sampled_from([1e-3, 1.0, 1e3]), constant=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_semantic_adain_is_finite(labels, grid, style_grid, seed, scale, constant, dtype):
    content_labels = labels.content_labels_at(*grid).flatten()
    style_labels = labels.style_labels_at(0, *style_grid).flatten()
    content = _features(seed, content_labels.numel(), 8, scale, constant).to(dtype)
    style = _features(seed + 1, style_labels.numel(), 8, scale, False).to(dtype)
    out = semantic_adain(content, style, content_labels, style_labels)
    assert out.shape == content.shape and out.dtype == dtype
    assert torch.isfinite(out).all()


@FUZZ
@given(query_labels=st.lists(st.integers(-1, 4), min_size=1, max_size=40),
       key_labels=st.lists(st.integers(-1, 4), min_size=1, max_size=40),
       heads=st.sampled_from([1, 2, 4]), unmatched=st.sampled_from(["all", "official"]),
       temperature=st.sampled_from([0.1, 1.2, 5.0]), batch=st.integers(1, 2), seed=st.integers(0, 1000))
def test_sca_and_ssa_are_finite_and_stay_in_their_label(query_labels, key_labels, heads, unmatched,
                                                        temperature, batch, seed):
    q_labels, k_labels = torch.tensor(query_labels), torch.tensor(key_labels)
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, len(query_labels), 8, generator=g)
    key, value = torch.randn(1, len(key_labels), 8, generator=g), torch.randn(1, len(key_labels), 8, generator=g)
    pairing = pair_labels(q_labels, k_labels)
    sca = semantic_continuous_attention(query, key, value, pairing, heads, temperature, unmatched)
    ssa, chosen = semantic_sparse_attention(query, key, value, pairing, heads, unmatched, return_index=True)
    assert sca.shape == ssa.shape == query.shape
    assert torch.isfinite(sca).all() and torch.isfinite(ssa).all()
    has_key = torch.tensor([(label >= 0 and label in key_labels) for label in query_labels])
    # Rows without a same-label key: the official preset averages every value (index -1).
    copies = has_key if unmatched == "official" else torch.ones_like(has_key)
    assert (chosen[..., ~copies] == -1).all()
    assert (chosen[..., copies] >= 0).all() and (chosen < len(key_labels)).all()
    picked = k_labels[chosen.clamp(min=0)]  # [B, H, N]
    assert (picked[..., has_key] == q_labels[has_key]).all(), "SSA copied a token of another label"


_LAYERS: dict = {}


def _layers(channels: int, seed: int) -> BlockLayers:
    """Random linear projections of width ``channels`` (a stand-in for a transformer block)."""
    if seed not in _LAYERS:
        g = torch.Generator().manual_seed(seed)
        linear = [torch.nn.Linear(channels, channels) for _ in range(4)]
        for layer in linear:
            torch.nn.init.normal_(layer.weight, std=channels ** -0.5, generator=g)
        _LAYERS[seed] = BlockLayers(torch.nn.LayerNorm(channels), *linear)
    return _LAYERS[seed]


@FUZZ
@given(labels=semantic_pairs(), grid=st.tuples(st.integers(1, 8), st.integers(1, 8)),
       style_grid=st.tuples(st.integers(1, 8), st.integers(1, 8)), seed=st.integers(0, 1000),
       preset=st.sampled_from(["default", "official"]), semantic_share=st.sampled_from([0.0, 0.3, 1.0]))
def test_scsa_block_on_grids_of_different_sizes_is_finite(labels, grid, style_grid, seed, preset, semantic_share):
    channels, heads = 8, 2
    mode = label_resampling(preset)
    content_labels = labels.content_labels_at(*grid, mode).flatten()
    style_labels = labels.style_labels_at(0, *style_grid, mode).flatten()
    n, m = content_labels.numel(), style_labels.numel()
    g = torch.Generator().manual_seed(seed)
    refs = ReferenceInputs(content=torch.randn(1, n, channels, generator=g), style=torch.randn(1, m, channels, generator=g),
                           content_map=torch.randn(1, n, channels, generator=g),
                           style_map=torch.randn(1, m, channels, generator=g))
    x_t = torch.randn(2, n, channels, generator=g)
    params = SCSAParams(preset=preset, semantic_share=semantic_share)
    with torch.no_grad():
        out = scsa_block(_layers(channels, seed % 4), x_t, refs, content_labels, style_labels,
                         pair_labels(content_labels, style_labels), heads, params)
    assert out.shape == x_t.shape and torch.isfinite(out).all()
