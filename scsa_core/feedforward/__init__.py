"""The paper's feed-forward SCSA variants: SANet+SCSA (CNN) and StyTr2+SCSA (transformer).

Pure torch, no ComfyUI, no file access. One network pass per image, no inversion.

  weights     key tables, variant detection, strict checks -> SANetModel / StyTr2Model
  sanet       VGG relu4_1/relu5_1 + two SANet attention modules + merge + CNN decoder
  stytr2      patch embedding, CAPE, two encoders, decoder with SCSA, CNN decoder
  stylize     images and semantics in, image out: working size, labels per grid, presets
  vgg, cnn_decoder, common   the shared pieces

SCSA reuses the pack's S-AdaIN (``scsa_core.adain``) and label-grouped attention
(``scsa_core.attention``): no N x N mask is ever built.
"""
from .common import SCSAWeights
from .sanet import SANET_DEFAULT_WEIGHTS, SANetModel
from .stylize import StylizeResult, stylize, working_size
from .stytr2 import STYTR2_DEFAULT_WEIGHTS, StyTr2Model
from .weights import (WeightsError, build_model, check_part, combine_parts, identify_part,
                      parts_from_combined, parts_from_files)

__all__ = ["SCSAWeights", "SANetModel", "StyTr2Model", "SANET_DEFAULT_WEIGHTS", "STYTR2_DEFAULT_WEIGHTS",
           "StylizeResult", "stylize", "working_size", "WeightsError", "build_model",
           "check_part", "combine_parts", "identify_part", "parts_from_combined", "parts_from_files"]
