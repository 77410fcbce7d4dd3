"""Stand-in nodes for runs without real weights: loaded only by servers that
scripts/comfyui_runtime.py starts with ``stand_ins=True`` (the runner's random-weight fallback,
the tests), never by an artist's ComfyUI (the pack's own ``__init__.py`` does not import it).

TinyRandomFlux stands in for Load Diffusion Model on a Flux workflow: ComfyUI 0.3.75's model
detection fixes Flux's width at 3072, so no tiny Flux *file* loads there, while a model built
from ComfyUI's own classes runs on every supported version.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_TINY_MODELS = Path(__file__).resolve().parent.parent / "tiny_models.py"


def _tiny_models():
    # By file path: ComfyUI imports this folder as a top-level package, so "scripts" is not ours.
    name = "scsa_standin_tiny_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _TINY_MODELS)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class TinyRandomFlux:
    """A Flux.1 or Flux.2 transformer with seeded RANDOM weights (width 256, 2 double and 3
    single blocks; scripts/tiny_models.py). Its output is noise: it only shows that a graph runs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"variant": (["flux1", "flux2"],),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "SCSA/stand-ins (random weights)"

    def build(self, variant, seed):
        return (_tiny_models().build_tiny_flux_patcher(variant, seed, stand_in=True),)


NODE_CLASS_MAPPINGS = {"TinyRandomFlux": TinyRandomFlux}
NODE_DISPLAY_NAME_MAPPINGS = {"TinyRandomFlux": "Tiny RANDOM Flux (stand-in, not real weights)"}
