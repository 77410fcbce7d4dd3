"""The CNN decoder shared (in architecture, not weights) by SANet and StyTr2.

512-channel features at 1/8 resolution -> RGB image at full resolution, unclamped. A 29-module
``nn.Sequential`` whose conv indices (1, 5, 8, 11, 14, 18, 21, 25, 28) are the state-dict keys
of ``decoder_iter_*.pth``: (pad, conv 512->256, ReLU), nearest x2, 3 x (pad, conv 256->256,
ReLU), (pad, conv 256->128, ReLU), nearest x2, (pad, conv 128->128, ReLU), (pad, conv 128->64,
ReLU), nearest x2, (pad, conv 64->64, ReLU), (pad, conv 64->3). No output activation.
The two variants' files have identical keys and shapes: a loader cannot tell them apart.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DECODER_CONVS", "CNNDecoder", "decoder_key_shapes"]

DECODER_CONVS = ((1, 512, 256), (5, 256, 256), (8, 256, 256), (11, 256, 256), (14, 256, 128),
                 (18, 128, 128), (21, 128, 64), (25, 64, 64), (28, 64, 3))
_UPSAMPLE_AT = (3, 16, 23)
_LENGTH = 29


def decoder_key_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of a published ``decoder_iter_*.pth`` and its shape (18 tensors)."""
    shapes = {}
    for index, c_in, c_out in DECODER_CONVS:
        shapes[f"{index}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"{index}.bias"] = (c_out,)
    return shapes


class CNNDecoder(nn.Sequential):
    """``[B, 512, h, w]`` -> ``[B, 3, 8h, 8w]`` (raw, not clamped)."""

    def __init__(self):
        convs = {index: (c_in, c_out) for index, c_in, c_out in DECODER_CONVS}
        layers: list[nn.Module] = []
        index = 0
        while index < _LENGTH:
            if index in _UPSAMPLE_AT:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                index += 1
                continue
            c_in, c_out = convs[index + 1]
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3)]
            index += 2
            if index < _LENGTH:   # every conv but the last is followed by a ReLU
                layers.append(nn.ReLU())
                index += 1
        super().__init__(*layers)
        if len(self) != _LENGTH:
            raise AssertionError("decoder layout does not match the published module indices")

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # noqa: D102 (Sequential)
        return super().forward(features)
