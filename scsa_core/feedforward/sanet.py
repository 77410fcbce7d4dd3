"""SANet (style-attentional network) and SANet+SCSA, forward passes on pretrained weights.

Network: VGG-19 features at relu4_1 and relu5_1 of content and style; at each level one SANet
module (1 x 1 convs f, g, h, out_conv: query, key, value, output) lets every content position
attend to the style; the two levels are merged by a 3 x 3 conv (reflection padded) after
upsampling relu5_1 by 2, and the CNN decoder turns the result into an image.

Plain SANet at one level (what runs without semantic maps):
``Y = out_conv( softmax_j( f(MVN(C))_i . g(MVN(S))_j ) h(S)_j ) + C`` with unscaled logits
(SANet's design: no 1/sqrt(d)) and MVN = per-channel mean/variance normalisation over the
positions with the unbiased variance + 1e-5 (``scsa_core.adain.instance_normalize``).

SANet+SCSA at one level (both levels), with the same weights (SCSA adds no parameters):
``C' = S-AdaIN(C, S)`` per region; SCA lets each content position attend to the style positions
of its own region, with query/key from the *semantic maps'* VGG features and value ``h(S)``;
SSA copies, per content position, the value of the best-matching style position of its region,
with query ``f(MVN(C'))`` and key ``g(MVN(S))``. ``Y = t1 out_conv(SCA) + t2 out_conv(SSA) + C'``,
computed as ``W_o (t1 SCA + t2 SSA) + (t1 + t2) b_o + C'`` (the same sum: the official code
applies the output conv, bias included, to each branch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..adain import instance_normalize, semantic_adain
from ..attention import (LabelPairing, pair_labels, plain_attention, semantic_continuous_attention,
                         semantic_sparse_attention)
from .cnn_decoder import CNNDecoder
from .common import (LabelsAt, SCSAWeights, Trace, check_map_sizes, conv1x1_tokens, flat_labels, record,
                     to_feature_map, to_tokens)
from .vgg import VGGEncoder

__all__ = ["SANetModule", "SANetStyleSide", "SANetTransform", "SANetModel", "scsa_branches",
           "sanet_transformer_key_shapes", "SANET_DEFAULT_WEIGHTS", "SANET_LEVELS"]

CHANNELS = 512
SANET_LEVELS = ("4_1", "5_1")           # relu4_1 (1/8 resolution) and relu5_1 (1/16)
SANET_DEFAULT_WEIGHTS = SCSAWeights(sca_weight=0.7, ssa_weight=0.3)   # the official t1, t2
# SANet's logits are unscaled: the pack's attention scales by temperature / sqrt(d), so a
# temperature of sqrt(d) gives a scale of exactly 1 (single head of width 512).
_UNSCALED = math.sqrt(CHANNELS)


def sanet_transformer_key_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of ``transformer_iter_500000.pth`` (SANet's attention modules and merge conv)."""
    shapes = {}
    for level in SANET_LEVELS:
        for conv in ("f", "g", "h", "out_conv"):
            shapes[f"sanet{level}.{conv}.weight"] = (CHANNELS, CHANNELS, 1, 1)
            shapes[f"sanet{level}.{conv}.bias"] = (CHANNELS,)
    shapes["merge_conv.weight"] = (CHANNELS, CHANNELS, 3, 3)
    shapes["merge_conv.bias"] = (CHANNELS,)
    return shapes


class SANetModule(nn.Module):
    """One SANet attention module: 1 x 1 convs ``f`` (query), ``g`` (key), ``h`` (value) and
    ``out_conv``; every call works on tokens ``[B, N, 512]``."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.f = nn.Conv2d(channels, channels, 1)
        self.g = nn.Conv2d(channels, channels, 1)
        self.h = nn.Conv2d(channels, channels, 1)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def plain(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Plain SANet. content: ``[B, N, C]``; style: ``[1, M, C]`` -> ``[B, N, C]``."""
        query = conv1x1_tokens(self.f, instance_normalize(content))
        key = conv1x1_tokens(self.g, instance_normalize(style))
        value = conv1x1_tokens(self.h, style)
        attended = plain_attention(query, key, value, heads=1, temperature=_UNSCALED)
        return conv1x1_tokens(self.out_conv, attended) + content

    def scsa(self, content: torch.Tensor, style: torch.Tensor, content_sem: torch.Tensor,
             style_sem: torch.Tensor, content_labels: torch.Tensor, style_labels: torch.Tensor,
             weights: SCSAWeights, trace: Trace | None = None, level: str = "") -> torch.Tensor:
        """SANet+SCSA at one level.

        content: ``[B, N, C]``; style: ``[1, M, C]``; content_sem: ``[1, N, C]`` and style_sem:
        ``[1, M, C]`` (VGG features of the semantic maps at this level); content_labels:
        ``int64 [N]``, style_labels: ``int64 [M]`` (-1 = no label) -> ``[B, N, C]``.
        """
        side = self.style_side(style, content_sem, style_sem, content_labels, style_labels,
                               *scsa_branches(weights, trace))
        return self.scsa_with_side(content, side, weights, trace, level)

    def style_side(self, style: torch.Tensor, content_sem: torch.Tensor, style_sem: torch.Tensor,
                   content_labels: torch.Tensor, style_labels: torch.Tensor, with_sca: bool,
                   with_ssa: bool) -> "SANetStyleSide":
        """Everything of :meth:`scsa` that does not read the content image (shapes as there):
        the same for every image of a batch with one style and one pair of maps. ``with_sca`` /
        ``with_ssa``: whether the SCA output / the SSA key are needed (:func:`scsa_branches`)."""
        value = conv1x1_tokens(self.h, style)
        pairing = pair_labels(content_labels, style_labels)
        sca = key = None
        if with_sca:
            # SCA: regions decide where to look (semantic query/key), the style gives the value.
            sem_query = conv1x1_tokens(self.f, instance_normalize(content_sem))
            sem_key = conv1x1_tokens(self.g, instance_normalize(style_sem))
            sca = semantic_continuous_attention(sem_query, sem_key, value, pairing, heads=1,
                                                temperature=_UNSCALED)
        if with_ssa:
            key = conv1x1_tokens(self.g, instance_normalize(style))
        return SANetStyleSide(style, content_labels, style_labels, pairing, value, key, sca)

    def scsa_with_side(self, content: torch.Tensor, side: "SANetStyleSide", weights: SCSAWeights,
                       trace: Trace | None = None, level: str = "") -> torch.Tensor:
        """:meth:`scsa` with its style side computed beforehand (:meth:`style_side`, with the
        branches :func:`scsa_branches` asks for): content ``[B, N, C]`` -> ``[B, N, C]``."""
        restyled = semantic_adain(content, side.style, side.content_labels, side.style_labels)
        record(trace, f"sadain_{level}", restyled)
        w_out, b_out = self.out_conv.weight.flatten(1), self.out_conv.bias
        t1, t2 = weights.sca_weight, weights.ssa_weight
        with_sca, with_ssa = scsa_branches(weights, trace)
        if (with_sca and side.sca is None) or (with_ssa and side.key is None):
            raise ValueError("the style side lacks a branch this call computes: build it with "
                             "style_side(..., *scsa_branches(weights, trace))")
        mixed = torch.zeros_like(restyled)
        if with_sca:
            sca = side.sca
            record(trace, f"sca_{level}", lambda: F.linear(sca, w_out, b_out))
            mixed = mixed + t1 * sca
        if with_ssa:
            # SSA: the restyled content picks the single best style position of its region.
            query = conv1x1_tokens(self.f, instance_normalize(restyled))
            ssa, chosen = semantic_sparse_attention(query, side.key, side.value, side.pairing, heads=1,
                                                    return_index=True)
            record(trace, f"ssa_{level}", lambda: F.linear(ssa, w_out, b_out))
            record(trace, f"ssa_argmax_{level}", chosen[:, 0])
            mixed = mixed + t2 * ssa
        fused = F.linear(mixed, w_out) + (t1 + t2) * b_out + restyled
        record(trace, f"fused_{level}", fused)
        return fused


def scsa_branches(weights: SCSAWeights, trace: Trace | None) -> tuple[bool, bool]:
    """Whether an SCSA call computes SCA and SSA: a branch of weight 0 is skipped, unless the
    call is traced (the trace holds both branches)."""
    traced = trace is not None
    return weights.sca_weight != 0.0 or traced, weights.ssa_weight != 0.0 or traced


@dataclass(frozen=True)
class SANetStyleSide:
    """The part of one level's SCSA that depends only on the style, the two semantic maps and
    their labels (:meth:`SANetModule.style_side`).

    style: ``[1, M, C]``; content_labels ``int64 [N]``, style_labels ``int64 [M]``; pairing: the
    label groups; value: ``h(S)`` ``[1, M, C]``; key: SSA's ``g(MVN(S))`` ``[1, M, C]`` (None
    without SSA); sca: SCA before ``out_conv`` ``[1, N, C]`` (None without SCA).
    """
    style: torch.Tensor
    content_labels: torch.Tensor
    style_labels: torch.Tensor
    pairing: LabelPairing
    value: torch.Tensor
    key: torch.Tensor | None
    sca: torch.Tensor | None


class SANetTransform(nn.Module):
    """The ``transformer_iter_500000.pth`` part: both SANet modules and the merge conv."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.sanet4_1 = SANetModule(channels)
        self.sanet5_1 = SANetModule(channels)
        self.merge_conv = nn.Conv2d(channels, channels, 3)

    def merge(self, fused4: torch.Tensor, fused5: torch.Tensor) -> torch.Tensor:
        """``merge_conv(reflect_pad(Y4 + nearest_up(Y5)))``: ``[B, C, h4, w4]``, ``[B, C, h5, w5]``
        -> ``[B, C, h4, w4]``. Y5 is upsampled to Y4's grid, which is x2 when the image sides are
        multiples of 16 (the official code requires that and crashes otherwise)."""
        upsampled = F.interpolate(fused5, size=fused4.shape[-2:], mode="nearest")
        return self.merge_conv(F.pad(fused4 + upsampled, (1, 1, 1, 1), mode="reflect"))


class SANetModel(nn.Module):
    """SANet weights (``vgg``, ``transformer``, ``decoder``: the three published files) and its
    two forward passes. Images are ``[B, 3, H, W]`` RGB in [0, 1]; H and W multiples of
    :attr:`size_multiple` (16: two ceil-mode poolings below relu4_1 must halve evenly)."""

    variant = "sanet"
    display_name = "SANet"
    size_multiple = 16
    default_weights = SANET_DEFAULT_WEIGHTS

    def __init__(self):
        super().__init__()
        self.vgg = VGGEncoder()
        self.transformer = SANetTransform()
        self.decoder = CNNDecoder()

    @staticmethod
    def progress_steps(semantic: bool) -> int:
        """How many times a forward pass calls ``progress``."""
        return 5

    def _encode(self, images: torch.Tensor, names: tuple, trace: Trace | None):
        """VGG relu4_1 / relu5_1 of a batch, split back per name: ``{name: (tokens4, tokens5)}``
        and the two grids ``(h4, w4), (h5, w5)``. Images of one side (an image and its semantic
        map) share the working size, so they run as one batch."""
        relu4 = self.vgg.relu4_1(images)
        relu5 = self.vgg.relu5_1(relu4)
        tokens4, tokens5 = to_tokens(relu4), to_tokens(relu5)
        features, start = {}, 0
        for name, count in names:
            features[name] = (tokens4[start:start + count], tokens5[start:start + count])
            record(trace, f"vgg4_{name}", features[name][0])
            record(trace, f"vgg5_{name}", features[name][1])
            start += count
        return features, tuple(relu4.shape[-2:]), tuple(relu5.shape[-2:])

    def _decode(self, fused4, grid4, fused5, grid5, trace: Trace | None) -> torch.Tensor:
        merged = self.transformer.merge(to_feature_map(fused4, *grid4), to_feature_map(fused5, *grid5))
        record(trace, "transform_out", lambda: to_tokens(merged))
        image = self.decoder(merged)
        record(trace, "output_raw", image)
        return image

    def forward_plain(self, content: torch.Tensor, style: torch.Tensor, trace: Trace | None = None,
                      progress: Callable[[], None] | None = None) -> torch.Tensor:
        """Plain SANet: content ``[B, 3, H, W]``, style ``[1, 3, Hs, Ws]`` -> raw image
        ``[B, 3, H, W]`` (not clamped)."""
        tick = progress or (lambda: None)
        c, grid4, grid5 = self._encode(content, (("content", content.shape[0]),), trace)
        tick()
        s, _, _ = self._encode(style, (("style", 1),), trace)
        tick()
        fused4 = self.transformer.sanet4_1.plain(c["content"][0], s["style"][0])
        record(trace, "fused_4_1", fused4)
        tick()
        fused5 = self.transformer.sanet5_1.plain(c["content"][1], s["style"][1])
        record(trace, "fused_5_1", fused5)
        tick()
        image = self._decode(fused4, grid4, fused5, grid5, trace)
        tick()
        return image

    def forward_scsa(self, content: torch.Tensor, style: torch.Tensor, content_sem: torch.Tensor,
                     style_sem: torch.Tensor, labels_at: LabelsAt, weights: SCSAWeights = SANET_DEFAULT_WEIGHTS,
                     trace: Trace | None = None, progress: Callable[[], None] | None = None,
                     reference_cache: dict | None = None) -> torch.Tensor:
        """SANet+SCSA. content ``[B, 3, H, W]``; style ``[1, 3, Hs, Ws]``; content_sem / style_sem:
        the semantic maps as images of the content's / style's size; ``labels_at(content_grid,
        style_grid)`` gives the label maps at each level's grids -> raw image ``[B, 3, H, W]``.

        ``reference_cache``: a dict kept by the caller across calls with the *same* style, maps
        and labels (e.g. the images of a batch): the style's and both maps' VGG features and each
        level's style side (labels, pairing, style value and key, SCA) are computed on the first
        call only, so later images pay the content's VGG, S-AdaIN, SSA and the decoder.
        """
        check_map_sizes(content, style, content_sem, style_sem)
        cache = {} if reference_cache is None else reference_cache
        tick = progress or (lambda: None)
        batch = content.shape[0]
        if "content_sem" in cache:
            c, grid4, grid5 = self._encode(content, (("content", batch),), trace)
            c["content_sem"] = cache["content_sem"]
        else:   # an image and its map share a size: one VGG call per side
            c, grid4, grid5 = self._encode(torch.cat([content, content_sem]),
                                           (("content", batch), ("content_sem", 1)), trace)
            cache["content_sem"] = c["content_sem"]
        tick()
        if "style" not in cache:
            cache["style"] = self._encode(torch.cat([style, style_sem]), (("style", 1), ("style_sem", 1)), trace)
        s, style_grid4, style_grid5 = cache["style"]
        tick()
        branches = scsa_branches(weights, trace)
        fused = []
        for index, (level, module, c_grid, s_grid) in enumerate((
                ("4_1", self.transformer.sanet4_1, grid4, style_grid4),
                ("5_1", self.transformer.sanet5_1, grid5, style_grid5))):
            side_key = ("style_side", level, branches)
            if side_key not in cache:
                content_labels, style_labels = labels_at(c_grid, s_grid)
                cache[side_key] = module.style_side(
                    s["style"][index], c["content_sem"][index], s["style_sem"][index],
                    flat_labels(content_labels, c_grid, "content", content.device),
                    flat_labels(style_labels, s_grid, "style", content.device), *branches)
            fused.append(module.scsa_with_side(c["content"][index], cache[side_key], weights, trace, level))
            tick()
        image = self._decode(fused[0], grid4, fused[1], grid5, trace)
        tick()
        return image

