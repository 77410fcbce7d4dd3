"""VGG-19 "normalised" encoder (the AdaIN/SANet family's ``vgg_normalised.pth``), up to relu5_1.

The published file is a 53-module ``nn.Sequential``: a 1 x 1 colour conv that bakes in the
input normalisation (inputs are RGB in [0, 1], no mean/std step), then 16 blocks of
(reflection pad 1, 3 x 3 conv, ReLU) with a ceil-mode 2 x 2 max-pool after relu1_2, relu2_2,
relu3_4 and relu4_4. The module indices are the state-dict keys (``"<index>.weight"``), so the
layers below keep the official positions. SANet reads relu4_1 (index 30) and relu5_1 (index 43);
modules 44-52 (three more convs) are in the file but never used, so they are checked by the
loader and then dropped.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG_CONVS", "VGG_USED_MODULES", "RELU4_1_END", "VGGEncoder", "vgg_key_shapes"]

# (module index, in channels, out channels, kernel) of every conv in the published file.
VGG_CONVS = (
    (0, 3, 3, 1), (2, 3, 64, 3), (5, 64, 64, 3), (9, 64, 128, 3), (12, 128, 128, 3),
    (16, 128, 256, 3), (19, 256, 256, 3), (22, 256, 256, 3), (25, 256, 256, 3),
    (29, 256, 512, 3), (32, 512, 512, 3), (35, 512, 512, 3), (38, 512, 512, 3),
    (42, 512, 512, 3), (45, 512, 512, 3), (48, 512, 512, 3), (51, 512, 512, 3),
)
_POOL_AT = (7, 14, 27, 40)      # module indices of the pools after relu1_2, relu2_2, relu3_4, relu4_4
VGG_USED_MODULES = 44           # modules 0..43: up to and including relu5_1
RELU4_1_END = 31                # modules 0..30 give relu4_1


def vgg_key_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the published ``vgg_normalised.pth`` and its shape (34 tensors)."""
    shapes = {}
    for index, c_in, c_out, kernel in VGG_CONVS:
        shapes[f"{index}.weight"] = (c_out, c_in, kernel, kernel)
        shapes[f"{index}.bias"] = (c_out,)
    return shapes


class VGGEncoder(nn.Sequential):
    """Modules 0..43 of the published VGG (state-dict keys ``"<index>.weight|bias"``).

    ``relu4_1(x)``: image ``[B, 3, H, W]`` in [0, 1] -> ``[B, 512, ceil(H/8), ceil(W/8)]``;
    ``relu5_1(relu4_1)`` -> ``[B, 512, ceil(H/16), ceil(W/16)]`` (ceil-mode pooling).
    """

    def __init__(self):
        layers: list[nn.Module] = []
        convs = {index: (c_in, c_out, kernel) for index, c_in, c_out, kernel in VGG_CONVS}
        index = 0
        while index < VGG_USED_MODULES:
            if index == 0:
                layers.append(nn.Conv2d(3, 3, 1))
                index += 1
            elif index in _POOL_AT:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                index += 1
            else:  # pad, conv, relu: the conv sits at index + 1
                c_in, c_out, kernel = convs[index + 1]
                layers += [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, kernel), nn.ReLU()]
                index += 3
        super().__init__(*layers)
        if len(self) != VGG_USED_MODULES:
            raise AssertionError("VGG layout does not match the published module indices")

    def relu4_1(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for layer in list(self)[:RELU4_1_END]:
            x = layer(x)
        return x

    def relu5_1(self, relu4_1: torch.Tensor) -> torch.Tensor:
        x = relu4_1
        for layer in list(self)[RELU4_1_END:VGG_USED_MODULES]:
            x = layer(x)
        return x
