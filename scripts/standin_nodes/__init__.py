"""Stand-in nodes for runs without real weights: loaded only by servers that
scripts/comfyui_runtime.py starts with ``stand_ins=True`` (the runner's random-weight fallback,
the tests), never by an artist's ComfyUI (the pack's own ``__init__.py`` does not import it).

TinyRandomDiT stands in for Load Diffusion Model (or an SD3.5 Load Checkpoint) on a DiT workflow:
Flux.1, Flux.2, Qwen-Image, Z-Image, SD3.5 (``variant``). ComfyUI's model detection fixes some of
these models' widths (0.3.75: Flux at 3072), so no tiny *file* loads through the real loaders on
every version, while a model built from ComfyUI's own classes (scripts/tiny_models.py,
``build_tiny_dit_patcher``) does.
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


class TinyRandomDiT:
    """A DiT transformer of the given family with seeded RANDOM weights (a few blocks, the real
    models' head sizes, CLIP-L's text width; scripts/tiny_models.py). Its output is noise: it only
    shows that a graph runs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"variant": (list(_tiny_models().DIT_VARIANTS),),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "SCSA/stand-ins (random weights)"

    def build(self, variant, seed):
        tiny_models = _tiny_models()
        try:
            return (tiny_models.build_tiny_dit_patcher(variant, seed, stand_in=True),)
        except tiny_models.VariantUnavailable as e:
            raise RuntimeError(f"this ComfyUI cannot build the random-weight {variant} stand-in: {e}") from e


NODE_CLASS_MAPPINGS = {"TinyRandomDiT": TinyRandomDiT}
NODE_DISPLAY_NAME_MAPPINGS = {"TinyRandomDiT": "Tiny RANDOM DiT (stand-in, not real weights)"}
