"""Several style images by region (README, *Several style images*; docs/method.md §11): the labels,
the attention over the union of styles, the nodes inside a real ComfyUI, and the two-styles
example workflow."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import make_example_inputs as examples
from scripts.comfy_inprocess import PromptError, pack_module
from scsa_core.adain import region_mean_std, semantic_adain
from scsa_core.attention import pair_labels, semantic_continuous_attention, semantic_sparse_attention
from scsa_core.labels import label_color_maps, labels_from_color_maps, labels_from_masks

SIZE = 64
STEPS = 4
SKY, MOUNTAINS, MEADOW, SUN = (examples.REGIONS[name] for name in ("sky", "mountains", "meadow", "sun"))


# ------------------------------------------------------------------------------ the labels
def _map(height, width, bands):
    """A colour map of horizontal bands: ``[(colour, rows), ...]``."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    top = 0
    for colour, rows in bands:
        rgb[top:top + rows] = colour
        top += rows
    return rgb


@pytest.fixture(scope="module")
def three_maps():
    """Content: sky, mountains, meadow. Style 1: sky, mountains. Style 2: sky, meadow, sun."""
    content = _map(24, 24, [(SKY, 8), (MOUNTAINS, 8), (MEADOW, 8)])
    style_1 = _map(16, 16, [(SKY, 10), (MOUNTAINS, 6)])
    style_2 = _map(20, 12, [(SKY, 6), (SUN, 4), (MEADOW, 10)])
    return content, style_1, style_2


def _label(semantics, colour) -> int:
    return int(((semantics.palette.int() - torch.tensor(colour)) ** 2).sum(1).argmin())


def test_one_style_map_labels_exactly_as_a_pair(three_maps):
    """The pair labelling (now the one-style case of the set) is the joint labelling of the two
    maps and nothing more: same labels and palette as ``label_color_maps``, no extra styles."""
    content, style_1, _ = three_maps
    pair = labels_from_color_maps(content, style_1)
    (content_labels, style_labels), palette = label_color_maps({"content map": content, "style map": style_1})
    assert torch.equal(pair.content, content_labels) and torch.equal(pair.style, style_labels)
    assert torch.equal(pair.palette, palette)
    assert torch.equal(pair.matched, torch.tensor([bool((content_labels == label).any() and (style_labels == label).any())
                                                   for label in range(len(palette))]))
    assert torch.equal(pair.content_colors, torch.from_numpy(content)) and \
        torch.equal(pair.style_colors, torch.from_numpy(style_1))
    assert pair.num_styles == 1 and pair.more_styles == () and pair.sources is None


def test_labels_are_found_jointly_over_every_map(three_maps):
    content, style_1, style_2 = three_maps
    semantics = labels_from_color_maps(content, style_1, style_2)
    assert semantics.num_styles == 2 and semantics.num_labels == 4
    sun, sky = _label(semantics, SUN), _label(semantics, SKY)
    lends = semantics.lends
    assert lends[:, sky].tolist() == [True, True]
    assert lends[:, sun].tolist() == [False, True]
    # matched: in the content and lent by some style; the sun is in style 2 only, not the content
    assert semantics.matched[_label(semantics, MEADOW)] and not semantics.matched[sun]


def test_masks_label_several_styles_in_the_same_order():
    content = torch.zeros(2, 8, 8)
    content[0, :4], content[1, 4:] = 1, 1
    style_1, style_2 = content.clone(), torch.zeros(2, 6, 6)
    style_2[1] = 1
    semantics = labels_from_masks(content, style_1, style_2)
    assert semantics.num_styles == 2 and semantics.lends.tolist() == [[True, True], [False, True]]
    with pytest.raises(ValueError, match="style 2 need the same number of masks"):
        labels_from_masks(content, style_1, torch.zeros(3, 6, 6))


# ---------------------------------------------------------------- attention over the union
def _union(semantics, grids):
    """Content labels [N] and every style's labels side by side [sum M], at the maps' own size."""
    content = semantics.content_labels_at(*semantics.content.shape).flatten()
    styles = torch.cat([semantics.style_labels_at(i, *grid).flatten() for i, grid in enumerate(grids)])
    return content, styles


def _features(count, channels=16, seed=0):
    return torch.randn(1, count, channels, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chosen", [None, "sky from style 2"])
def test_a_token_attends_only_to_same_label_tokens_of_the_styles_that_lend_it(three_maps, chosen):
    content_rgb, style_1, style_2 = three_maps
    semantics = labels_from_color_maps(content_rgb, style_1, style_2)
    sky, meadow, mountains = (_label(semantics, c) for c in (SKY, MEADOW, MOUNTAINS))
    if chosen:
        sources = torch.ones(2, semantics.num_labels, dtype=torch.bool)
        sources[0, sky] = False
        semantics = semantics.with_sources(sources)
    grids = [style_1.shape[:2], style_2.shape[:2]]
    content_labels, style_labels = _union(semantics, grids)
    first = style_1.shape[0] * style_1.shape[1]
    pairing = pair_labels(content_labels, style_labels)
    query, key, value = _features(len(content_labels), seed=1), _features(len(style_labels), seed=2), \
        _features(len(style_labels), seed=3)
    _, picked = semantic_sparse_attention(query, key, value, pairing, heads=2, return_index=True)
    for label in (sky, meadow, mountains):
        rows = content_labels == label
        keys = picked[0][:, rows].flatten()
        assert (style_labels[keys] == label).all(), "a content token picked a style token of another label"
        if label == meadow:  # in style 2 only: only style 2's tokens
            assert (keys >= first).all()
        if label == mountains:  # in style 1 only
            assert (keys < first).all()
        if label == sky:
            assert ((keys >= first).all() if chosen else (keys < first).any() and (keys >= first).any())
    # SCA: changing the values of other labels' tokens (or of a style that may not lend the
    # label) leaves a region's output exactly as it was.
    output = semantic_continuous_attention(query, key, value, pairing, heads=2)
    for label in (sky, meadow):
        other = style_labels != label
        changed = value.clone()
        changed[0, other] += 100.0
        again = semantic_continuous_attention(query, key, changed, pairing, heads=2)
        rows = content_labels == label
        assert torch.equal(again[0, rows], output[0, rows])


def test_semantic_adain_takes_the_statistics_of_the_union_of_the_styles(three_maps):
    content_rgb, style_1, style_2 = three_maps
    semantics = labels_from_color_maps(content_rgb, style_1, style_2)
    grids = [style_1.shape[:2], style_2.shape[:2]]
    content_labels, style_labels = _union(semantics, grids)
    content, style = _features(len(content_labels), seed=4), _features(len(style_labels), seed=5) * 3 + 1
    out = semantic_adain(content, style, content_labels, style_labels)
    sky = _label(semantics, SKY)
    union = style[:, style_labels == sky]
    mean, std, _ = region_mean_std(union, torch.zeros(union.shape[1], dtype=torch.long), 1)
    rows = out[:, content_labels == sky]
    assert torch.allclose(rows.mean(1), mean[:, 0], atol=1e-4)
    assert torch.allclose(rows.var(1, unbiased=False).sqrt(), std[:, 0], rtol=1e-3, atol=1e-4)


def test_extra_styles_cost_only_their_tokens(three_maps):
    """Every label group holds exactly the keys of that label over all styles: no padding, no
    dense content x styles mask, so a second style adds the work of its own tokens."""
    content_rgb, style_1, style_2 = three_maps
    semantics = labels_from_color_maps(content_rgb, style_1, style_2)
    grids = [style_1.shape[:2], style_2.shape[:2]]
    content_labels, style_labels = _union(semantics, grids)
    pairing = pair_labels(content_labels, style_labels)
    per_style = [semantics.style_labels_at(i, *g).flatten() for i, g in enumerate(grids)]
    for group in pairing.groups:
        expected = sum(int((labels == group.label).sum()) for labels in per_style)
        assert (0 if group.key_index is None else group.key_index.numel()) == expected
    assert pairing.num_keys == sum(h * w for h, w in grids)


# ----------------------------------------------------------------------- inside ComfyUI
@pytest.fixture(scope="module")
def two_style_images(comfy):
    """The example content, style and second style with their maps, at SIZE px, in the input folder."""
    input_dir = comfy.folder_paths.get_input_directory()
    names = {}
    for role, image, is_map in (("content", "content", False), ("style", "style", False),
                                ("style2", "style2", False), ("content_map", "content", True),
                                ("style_map", "style", True), ("style2_map", "style2", True)):
        picture = Image.open(examples.OUT_DIR / examples.file_name(image, is_map)).convert("RGB")
        picture = picture.resize((SIZE, SIZE), Image.NEAREST if is_map else Image.BICUBIC)
        names[role] = f"two_{role}.png"
        picture.save(os.path.join(input_dir, names[role]))
    return names


def two_style_prompt(checkpoint: str, names: dict, styles: int = 2, sources: str = "", **invert) -> dict:
    def encode(node):
        return {"class_type": "VAEEncode", "inputs": {"pixels": [node, 0], "vae": ["ckpt", 2]}}
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "pair": {"class_type": "SCSASemanticPair", "inputs": {
            "content_map": ["content_map", 0], "style_map": ["style_map", 0], "sources": sources}},
        "invert": {"class_type": "SCSAInvert", "inputs": dict({
            "model": ["ckpt", 0], "conditioning": ["empty", 0], "content": ["z_content", 0],
            "style": ["z_style", 0], "content_map": ["z_content_map", 0], "style_map": ["z_style_map", 0],
            "steps": STEPS, "blocks": "auto"}, **invert)},
        "apply": {"class_type": "SCSAApply", "inputs": {
            "model": ["ckpt", 0], "semantics": ["pair", 0], "preset": "default", "sca_weight": 0.8,
            "ssa_weight": 0.2, "semantic_share": 0.3, "content_share": 0.5, "temperature": 1.2, "gamma": 0.75}},
        "sample": {"class_type": "SCSAStyleSampler", "inputs": {
            "model": ["apply", 0], "inversion": ["invert", 0], "init": "auto", "timesteps": "official"}},
    }
    roles = ["content", "style"] + (["style2"] if styles == 2 else [])
    for role in roles:
        prompt[role] = {"class_type": "LoadImage", "inputs": {"image": names[role]}}
        prompt[f"{role}_map"] = {"class_type": "SCSALoadSemanticMap", "inputs": {"image": names[f"{role}_map"]}}
        prompt[f"z_{role}"], prompt[f"z_{role}_map"] = encode(role), encode(f"{role}_map")
    if styles == 2:
        prompt["invert"]["inputs"].update(style_2=["z_style2", 0], style_map_2=["z_style2_map", 0])
        prompt["pair"]["inputs"]["style_map_2"] = ["style2_map", 0]
    return prompt


def _latent(result):
    return result["sample"][0]["samples"]


def test_two_styles_run_and_the_sources_choose_where_a_region_draws_from(comfy, tiny_checkpoint,
                                                                       two_style_images):
    one = _latent(comfy.run_prompt(two_style_prompt(tiny_checkpoint.name, two_style_images, styles=1),
                                   outputs=["sample"]))
    automatic = comfy.run_prompt(two_style_prompt(tiny_checkpoint.name, two_style_images), outputs=["sample", "pair"])
    sky_colour = "#%02x%02x%02x" % SKY
    chosen = comfy.run_prompt(two_style_prompt(tiny_checkpoint.name, two_style_images, sources=f"{sky_colour}: 2"),
                              outputs=["sample", "pair"])
    for latent in (_latent(automatic), _latent(chosen)):
        assert latent.shape == one.shape and torch.isfinite(latent).all()
    assert not torch.equal(_latent(automatic), one), "a second style changed nothing"
    assert not torch.equal(_latent(chosen), _latent(automatic)), "the sources line changed nothing"

    semantics = chosen["pair"][0]
    sky = _label(semantics, SKY)
    mountains = _label(semantics, MOUNTAINS)
    assert semantics.lends[:, sky].tolist() == [False, True]
    assert semantics.lends[:, mountains].tolist() == [True, False]   # style 2 has no mountains
    # The preview's lower row: under each style, the content regions it styles (the others faded).
    preview = (chosen["pair"][1][0] * 255).round().to(torch.uint8)
    content_map = np.array(Image.open(os.path.join(comfy.folder_paths.get_input_directory(),
                                                   two_style_images["content_map"])))
    height, width = content_map.shape[:2]
    gap = 8
    under = {index: preview[height + gap:2 * height + gap, (width + gap) * (index + 1):(width + gap) * (index + 1) + width]
             for index in (0, 1)}
    sky_pixel = tuple(int(v) for v in np.argwhere((content_map == SKY).all(-1))[0])
    mountain_pixel = tuple(int(v) for v in np.argwhere((content_map == MOUNTAINS).all(-1))[0])
    assert tuple(under[1][sky_pixel].tolist()) == SKY and tuple(under[0][sky_pixel].tolist()) != SKY
    assert tuple(under[0][mountain_pixel].tolist()) == MOUNTAINS
    assert tuple(under[1][mountain_pixel].tolist()) != MOUNTAINS


def test_one_style_through_the_several_styles_inputs_is_bit_identical(comfy, tiny_checkpoint, two_style_images):
    """Naming every region's source as style 1 (what the automatic choice does with one style)
    changes nothing, bit for bit; and the preview keeps its one-row layout without sources."""
    plain = comfy.run_prompt(two_style_prompt(tiny_checkpoint.name, two_style_images, styles=1),
                             outputs=["sample", "pair"])
    every = "; ".join(f"#{r:02x}{g:02x}{b:02x}: 1" for r, g, b in (SKY, MOUNTAINS, MEADOW, SUN))
    comfy.reset_cache()
    pack_module("nodes/style_reuse.py").STYLE_CACHE.clear()
    named = comfy.run_prompt(two_style_prompt(tiny_checkpoint.name, two_style_images, styles=1, sources=every),
                             outputs=["sample"])
    assert torch.equal(_latent(named), _latent(plain))
    assert plain["pair"][1].shape[1] == SIZE


@pytest.mark.parametrize("problem, change, message", [
    ("semantics with one style map", lambda p: p["pair"]["inputs"].pop("style_map_2"), "1 style map"),
    ("style_3 without style_2", lambda p: p["invert"]["inputs"].update(
        style_3=p["invert"]["inputs"].pop("style_2"), style_map_3=p["invert"]["inputs"].pop("style_map_2")),
     "style_3: connected while style_2 is not"),
    ("a style without its map", lambda p: p["invert"]["inputs"].pop("style_map_2"), "style_map_2"),
    ("a source style that lacks the region", lambda p: p["pair"]["inputs"].update(
        sources="#%02x%02x%02x: 2" % MOUNTAINS), "style 2's map has no"),
    ("a source style out of range", lambda p: p["pair"]["inputs"].update(sources="#%02x%02x%02x: 3" % SKY),
     "there are 2 style maps"),
    ("an unknown colour", lambda p: p["pair"]["inputs"].update(sources="#808080: 1"), "no region has the colour"),
])
def test_several_styles_mistakes_get_a_clear_error(comfy, tiny_checkpoint, two_style_images, problem, change, message):
    prompt = two_style_prompt(tiny_checkpoint.name, two_style_images)
    change(prompt)
    with pytest.raises(PromptError, match=message):
        comfy.run_prompt(prompt, outputs=["sample"])


def test_the_feedforward_nodes_refuse_several_styles(comfy):
    feedforward = pack_module("nodes/feedforward.py")
    semantics = labels_from_color_maps(_map(8, 8, [(SKY, 8)]), *[_map(8, 8, [(SKY, 8)])] * 2)
    with pytest.raises(ValueError, match="feed-forward networks take one style image"):
        feedforward.run_stylize(None, None, None, semantics, "default", None, 256, "content")


def test_styles_of_other_sizes_give_the_same_image_with_every_storage(comfy, tiny_checkpoint, two_style_images):
    """Style 2 smaller than the content: it is inverted in its own batch, and with recompute
    storage re-recorded one step ahead while style 1 rides in the sampling batch."""
    folder = comfy.folder_paths.get_input_directory()
    names = dict(two_style_images)
    for role in ("style2", "style2_map"):
        picture = Image.open(os.path.join(folder, names[role]))
        picture.resize((SIZE * 3 // 4, SIZE // 2), Image.NEAREST if role.endswith("map") else Image.BICUBIC).save(
            os.path.join(folder, f"small_{names[role]}"))
        names[role] = f"small_{names[role]}"
    latents = {}
    for storage in ("memory", "recompute"):
        result = comfy.run_prompt(two_style_prompt(tiny_checkpoint.name, names, storage=storage),
                                  outputs=["sample", "invert"])
        inversion = result["invert"][0]
        assert len(inversion.batches) == 2 and inversion.storage == storage
        latents[storage] = _latent(result)
    assert torch.isfinite(latents["memory"]).all()
    assert torch.allclose(latents["recompute"], latents["memory"], rtol=1e-5, atol=1e-6), \
        (latents["recompute"] - latents["memory"]).abs().max()
