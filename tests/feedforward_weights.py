"""Deterministic random weights for SANet and StyTr2 in the official files' key layout.

For the tests that must run without ``../shared`` (a user's clone): the key tables here are
written out from the published checkpoints' layout (docs/method.md §17, the published files),
independently of ``scsa_core.feedforward``'s own tables, so a wrong table in
the pack shows up as a loader refusal. Every tensor has its own generator seeded from the seed
and ``"<file>:<key>"``: values do not depend on the order of generation.

Scales keep a random network non-degenerate (finite, varied activations; attention neither
uniform nor one-hot): He-style std for convs followed by a ReLU, small query/key gains, a last
decoder conv that puts the raw image around 0.5.
"""
from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import torch

# (module index, in, out, kernel) of vgg_normalised.pth: a 1 x 1 colour conv, then 3 x 3 convs
VGG = [(0, 3, 3, 1), (2, 3, 64, 3), (5, 64, 64, 3), (9, 64, 128, 3), (12, 128, 128, 3), (16, 128, 256, 3),
       (19, 256, 256, 3), (22, 256, 256, 3), (25, 256, 256, 3), (29, 256, 512, 3), (32, 512, 512, 3),
       (35, 512, 512, 3), (38, 512, 512, 3), (42, 512, 512, 3), (45, 512, 512, 3), (48, 512, 512, 3),
       (51, 512, 512, 3)]
# (module index, in, out) of decoder_iter_*.pth, all 3 x 3
DECODER = [(1, 512, 256), (5, 256, 256), (8, 256, 256), (11, 256, 256), (14, 256, 128), (18, 128, 128),
           (21, 128, 64), (25, 64, 64), (28, 64, 3)]
OFFICIAL_FILES = {
    "sanet": {"vgg": "vgg_normalised", "decoder": "decoder_iter_500000", "transformer": "transformer_iter_500000"},
    "stytr2": {"embedding": "embedding_iter_160000", "decoder": "decoder_iter_160000",
               "transformer": "transformer_iter_160000", "vgg": "vgg_normalised"},
}


def _draw(seed: int, tag: str, key: str, shape, std: float, mean: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed((seed * 7919 + zlib.crc32(f"{tag}:{key}".encode())) % (2 ** 62))
    return torch.randn(shape, generator=generator) * std + mean


def _conv(sd, seed, tag, name, c_out, c_in, kernel, gain, bias_mean=0.0):
    fan_in = c_in * kernel * kernel
    sd[f"{name}.weight"] = _draw(seed, tag, f"{name}.weight", (c_out, c_in, kernel, kernel), gain / math.sqrt(fan_in))
    sd[f"{name}.bias"] = _draw(seed, tag, f"{name}.bias", (c_out,), 0.05, bias_mean)


def vgg(seed: int = 0) -> dict:
    sd = {}
    for index, c_in, c_out, kernel in VGG:
        _conv(sd, seed, "vgg", str(index), c_out, c_in, kernel, 1.0 if index == 0 else math.sqrt(2))
    return sd


def decoder(seed: int = 0, tag: str = "decoder") -> dict:
    sd = {}
    for index, c_in, c_out in DECODER:
        last = index == 28
        _conv(sd, seed, tag, str(index), c_out, c_in, 3, 0.3 if last else math.sqrt(2), 0.5 if last else 0.0)
    return sd


def sanet_transformer(seed: int = 0) -> dict:
    sd = {}
    for level in ("sanet4_1", "sanet5_1"):
        for conv, gain in (("f", 0.35), ("g", 0.35), ("h", 1.0), ("out_conv", 1.0)):
            _conv(sd, seed, "sanet", f"{level}.{conv}", 512, 512, 1, gain)
    _conv(sd, seed, "sanet", "merge_conv", 512, 512, 3, 1.0)
    return sd


def _linear(sd, seed, tag, name, c_out, c_in, gain):
    sd[f"{name}.weight"] = _draw(seed, tag, f"{name}.weight", (c_out, c_in), gain / math.sqrt(c_in))
    sd[f"{name}.bias"] = _draw(seed, tag, f"{name}.bias", (c_out,), 0.05)


def _attention(sd, seed, tag, name, qk_gain, out_gain):
    weight = _draw(seed, tag, f"{name}.in_proj_weight", (1536, 512), 1.0 / math.sqrt(512))
    weight[:1024] *= qk_gain
    sd[f"{name}.in_proj_weight"] = weight
    sd[f"{name}.in_proj_bias"] = _draw(seed, tag, f"{name}.in_proj_bias", (1536,), 0.05)
    _linear(sd, seed, tag, f"{name}.out_proj", 512, 512, out_gain)


def _feed_forward_and_norms(sd, seed, tag, prefix, norms, out_gain):
    _linear(sd, seed, tag, f"{prefix}.linear1", 2048, 512, math.sqrt(2))
    _linear(sd, seed, tag, f"{prefix}.linear2", 512, 2048, out_gain)
    for i in range(1, norms + 1):
        sd[f"{prefix}.norm{i}.weight"] = _draw(seed, tag, f"{prefix}.norm{i}.weight", (512,), 0.1, 1.0)
        sd[f"{prefix}.norm{i}.bias"] = _draw(seed, tag, f"{prefix}.norm{i}.bias", (512,), 0.05)


def stytr2_transformer(seed: int = 0) -> dict:
    sd, tag = {}, "stytr2"
    for encoder in ("encoder_c", "encoder_s"):
        for i in range(3):
            prefix = f"{encoder}.layers.{i}"
            _attention(sd, seed, tag, f"{prefix}.self_attn", 3.0, 0.3)
            _feed_forward_and_norms(sd, seed, tag, prefix, 2, 0.3)
    for i in range(3):
        prefix = f"decoder.layers.{i}"
        _attention(sd, seed, tag, f"{prefix}.self_attn", 2.0, 0.5)
        _attention(sd, seed, tag, f"{prefix}.multihead_attn", 2.0, 0.5)
        _feed_forward_and_norms(sd, seed, tag, prefix, 3, 0.5)
    sd["decoder.norm.weight"] = _draw(seed, tag, "decoder.norm.weight", (512,), 0.1, 1.0)
    sd["decoder.norm.bias"] = _draw(seed, tag, "decoder.norm.bias", (512,), 0.05)
    _conv(sd, seed, tag, "new_ps", 512, 512, 1, 1.0)
    return sd


def stytr2_embedding(seed: int = 0) -> dict:
    weight = _draw(seed, "embedding", "proj.weight", (512, 3, 8, 8), 1.0 / math.sqrt(192))
    # zero-sum filters: a flat patch maps to the bias, so tokens differ by image content
    weight = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
    return {"proj.weight": weight, "proj.bias": _draw(seed, "embedding", "proj.bias", (512,), 0.05)}


_BUILT: dict = {}


def state_dicts(variant: str, seed: int = 0, include_vgg: bool = False) -> dict[str, dict]:
    """``{part: state dict}`` of one variant (StyTr2's training-only VGG with ``include_vgg``).

    Built once per process and shared (about 1 s per variant): copy a dict before changing it.
    """
    key = (variant, seed, include_vgg)
    if key not in _BUILT:
        if variant == "sanet":
            parts = {"vgg": vgg(seed), "decoder": decoder(seed, "sanet-decoder"),
                     "transformer": sanet_transformer(seed)}
        else:
            parts = dict(state_dicts(variant, seed)) if include_vgg else {
                "embedding": stytr2_embedding(seed), "decoder": decoder(seed, "stytr2-decoder"),
                "transformer": stytr2_transformer(seed)}
            if include_vgg:
                parts["vgg"] = vgg(seed + 1)
        _BUILT[key] = parts
    return _BUILT[key]


def write_official_folder(folder: os.PathLike, variant: str, seed: int = 0, extension: str = ".pth",
                          include_vgg: bool = False) -> Path:
    """The published files of one variant, under their official names, in ``folder``."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for part, sd in state_dicts(variant, seed, include_vgg).items():
        path = folder / (OFFICIAL_FILES[variant][part] + extension)
        if extension == ".safetensors":
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        else:
            torch.save(sd, str(path))
    return folder


def write_combined(path: os.PathLike, variant: str, seed: int = 0, metadata: dict | None = None) -> Path:
    """One ``.safetensors`` holding every part under its prefix (``vgg.``, ``transformer.``, ...)."""
    from safetensors.torch import save_file
    combined = {f"{part}.{key}": value.contiguous()
                for part, sd in state_dicts(variant, seed).items() for key, value in sd.items()}
    save_file(combined, str(path), metadata=metadata if metadata is not None else {"variant": variant})
    return Path(path)
