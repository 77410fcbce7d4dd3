"""Model families: everything model-specific, one module each, behind one small interface.

A family object (made for one diffusion model by :func:`family_of`) answers:

  name                     what the log and errors call it
  matches(diffusion_model) classmethod: is this model one of ours?
  resolve_blocks(text)     the ``blocks`` input ("auto", or e.g. "output 6-11") -> frozenset of
                           block keys, or a ValueError that lists the valid blocks
  feature_bytes(keys, streams, latent_size, steps, dtype)
                           what recording those blocks' features would take
  prepare_conditioning(c)  the conditioning the whole run uses (e.g. Flux's guidance set explicitly)
  install(model_patcher, blocks)
                           SCSA's hooks on a clone, for those blocks (where q/k/v come from,
                           the token layout and grid are the family's business)
  storage_modes            which of memory / offload / recompute it can serve
  experimental             True until measured on real weights (the log says so once per run)
  parameterisation         the noise side (``nodes/parameterisations.py``): the model's sigmas,
                           the inversion and sampling loops, how a start latent enters ComfyUI

The pipeline, the nodes and scsa_core only ever call these. A new family is a new module here
plus one entry in :data:`FAMILIES`. The joint-attention DiTs (Flux, Qwen-Image, Z-Image, SD3.5)
share their hooks and defaults in ``joint.py``; each module says what its model does differently.
"""
from __future__ import annotations

from .flux import FluxFamily
from .qwen_image import QwenImageFamily
from .sd3 import SD3Family
from .unet import UNetFamily
from .z_image import ZImageFamily

FAMILIES = (UNetFamily, FluxFamily, QwenImageFamily, ZImageFamily, SD3Family)


def family_names(kind: str | None = None) -> str:
    """The supported families (those whose noise is of ``kind``, "ddim" / "flow"), for messages."""
    return ", ".join(family.name for family in FAMILIES if kind is None or family.parameterisation.kind == kind)


def family_of(model_patcher):
    """The family of a ComfyUI model; a clear error for models SCSA cannot patch."""
    diffusion_model = model_patcher.model.diffusion_model
    for family in FAMILIES:
        if family.matches(diffusion_model):
            return family(diffusion_model)
    name = type(model_patcher.model.model_config).__name__
    raise ValueError(f"model: SCSA cannot patch {name} models. It supports: {family_names()}.")
