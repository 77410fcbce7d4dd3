"""Feed-forward semantic style transfer: SANet+SCSA and StyTr2+SCSA in one network pass.

  Load Style Transfer Model (SCSA) -> SCSA_FF_MODEL --+
  Load Image x2 (content, style) ---------------------+-> SANet / StyTr2 Stylize (SCSA) -> IMAGE
  SCSASemanticPair / SCSASemanticFromMasks (optional) +

Thin adapters over ``scsa_core.feedforward``: this module reads the weight files (with
ComfyUI's safe loader only), caches the models, places them with ComfyUI's device management,
and reports progress; the networks, the checks of the weights and the presets live in the core.

Weights go in ``models/style_transfer/`` (or any folder registered for ``style_transfer`` in
``extra_model_paths.yaml``): a sub-folder per set, holding the files as their authors publish
them (SANet: vgg_normalised.pth, decoder_iter_500000.pth, transformer_iter_500000.pth;
StyTr2: embedding_iter_160000.pth, decoder_iter_160000.pth, transformer_iter_160000.pth), or
one converted ``.safetensors`` holding every part under the prefixes ``vgg.``, ``embedding.``,
``decoder.``, ``transformer.``. Nothing is downloaded.
"""
from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..scsa_core.feedforward import (SCSAWeights, WeightsError, build_model, parts_from_combined, parts_from_files,
                                     stylize, working_size)
from ..scsa_core.feedforward.stylize import OUTPUT_SIZES, progress_total
from ..scsa_core.presets import PRESETS
from .model_folders import register_model_folder
from .safetensors_file import SAFETENSORS_EXTENSIONS, SafetensorsFileError, check_before_loading
from .semantic_nodes import Semantics

CATEGORY = "SCSA"
FOLDER = "style_transfer"
log = logging.getLogger("scsa")
FeedForwardModelType = io.Custom("SCSA_FF_MODEL")

# Activation memory per working-resolution pixel (content + style) that ComfyUI is asked to free
# before a run. Measured (scripts/bench_feedforward.py, CPU peak resident-set growth of one call):
# SANet 623 MB at 512 x 512 (1.19 kB/px), 1789 MB at 1024 x 1024 (0.85 kB/px); StyTr2 605 MB
# (1.15 kB/px) and 1524 MB (0.73 kB/px). The CNN decoder at full resolution sets the peak, with or
# without semantics. Rounded up to 2 kB for allocator slack on a GPU.
ACTIVATION_BYTES_PER_PIXEL = {"sanet": 2048, "stytr2": 2048}
_CACHE_SIZE = 2   # loaded sets kept between prompts (the executor's own cache keeps the last output)
_CACHE: OrderedDict = OrderedDict()


register_model_folder(FOLDER, folder_paths.supported_pt_extensions)


def _is_weight_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in folder_paths.supported_pt_extensions


def _is_combined_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in SAFETENSORS_EXTENSIONS


def list_model_sets() -> list[str]:
    """Every set in the style_transfer folders: sub-folders holding weight files (``name/``)
    and single ``.safetensors`` files."""
    entries = set()
    for base in folder_paths.get_folder_paths(FOLDER):
        if not os.path.isdir(base):
            continue
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if os.path.isdir(path) and any(_is_weight_file(f) and os.path.isfile(os.path.join(path, f))
                                           for f in os.listdir(path)):
                entries.add(name + "/")
            elif os.path.isfile(path) and _is_combined_file(name):
                entries.add(name)
    return sorted(entries)


def resolve_model_set(name: str) -> str:
    """The path of a listed set (the first style_transfer folder that holds it)."""
    plain = name.rstrip("/")
    if not plain or os.path.basename(plain) != plain or plain in (".", ".."):
        raise ValueError(f"model_name: {name!r} is not a set in the {FOLDER} folder")
    for base in folder_paths.get_folder_paths(FOLDER):
        path = os.path.join(base, plain)
        if (name.endswith("/") and os.path.isdir(path)) or (not name.endswith("/") and os.path.isfile(path)):
            return path
    folders = ", ".join(folder_paths.get_folder_paths(FOLDER))
    raise ValueError(f"model_name: {name!r} was not found in the {FOLDER} folders ({folders}); "
                     "refresh the node list after adding files")


def _files_of(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path)
                      if _is_weight_file(f) and os.path.isfile(os.path.join(path, f)))
    return [path]


def _signature(path: str) -> tuple:
    """What identifies a set's contents on disk: each file's name, size and modification time."""
    return tuple((f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in _files_of(path))


def check_weight_file(path: str) -> None:
    """What one weight file's first bytes tell before it is loaded (a cut-off copy, another kind
    of file under a weight file's name), as a WeightsError naming the file."""
    try:
        check_before_loading(path)
    except SafetensorsFileError as e:
        raise WeightsError(f"{os.path.basename(path)}: {e}") from None


def read_weights(path: str) -> tuple[dict, dict]:
    """One weight file as ``(state dict, metadata)``, with ComfyUI's safe loader only.

    ``.pth`` files go through ``torch.load(weights_only=True)``: a pickle that would need to run
    code (a whole pickled model, custom classes) is refused, never loaded another way.
    """
    name = os.path.basename(path)
    check_weight_file(path)
    try:
        state_dict, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{name}: refused. The file is a pickle that needs to run code to load (e.g. a whole model "
            f"saved with torch.save(model)), and this pack only loads weights safely. Use the file as its "
            f"authors publish it (a plain state dict), or convert it to .safetensors on a machine you "
            f"trust. ({str(e).splitlines()[0]})") from None
    except Exception as e:   # damaged inside (the first bytes looked right): name the file
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{name}: cannot be read as weights: the file is damaged or cut off (an interrupted "
                           f"download?); download it again ({detail})") from None
    return state_dict, dict(metadata or {})


@dataclass
class FeedForwardModel:
    """What the loader hands to the stylize nodes."""
    name: str
    variant: str
    patcher: "comfy.model_patcher.ModelPatcher"
    notes: list = field(default_factory=list)

    @property
    def display_name(self) -> str:
        return self.patcher.model.display_name


def load_model_set(name: str) -> FeedForwardModel:
    """Read, check and build a set (cached by its files' sizes and dates)."""
    path = resolve_model_set(name)
    signature = _signature(path)
    if signature in _CACHE:
        _CACHE.move_to_end(signature)
        return _CACHE[signature]
    try:
        if os.path.isdir(path):
            files = {os.path.basename(f): read_weights(f)[0] for f in _files_of(path)}
            variant, parts, notes = parts_from_files(files)
        else:
            state_dict, metadata = read_weights(path)
            variant, parts, notes = parts_from_combined(state_dict, metadata, source=os.path.basename(path))
        model = build_model(variant, parts)
    except WeightsError as e:
        raise WeightsError(f"model_name {name!r}: {e}") from None
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    loaded = FeedForwardModel(name, variant, patcher, notes)
    for note in notes:
        log.info("SCSA: %s", note)
    log.info("SCSA: loaded %s weights from %s", model.display_name, path)
    _CACHE[signature] = loaded
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return loaded


class SCSAFeedForwardLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSAFeedForwardLoader", display_name="Load Style Transfer Model (SCSA)", category=CATEGORY,
            description="Loads SANet or StyTr2 weights from models/style_transfer: a folder holding the files "
                        "as their authors publish them, or one converted .safetensors. The variant is "
                        "recognised from the weights; every tensor is checked. Only safe loading is used.",
            inputs=[io.Combo.Input("model_name", options=list_model_sets(),
                                   tooltip="A sub-folder of models/style_transfer (e.g. sanet/ with "
                                           "vgg_normalised.pth, decoder_iter_500000.pth, "
                                           "transformer_iter_500000.pth) or a single .safetensors.")],
            outputs=[FeedForwardModelType.Output("model", display_name="model")],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name):
        """Reload when a file of the set changes on disk."""
        try:
            return _signature(resolve_model_set(model_name))
        except (ValueError, OSError):
            return None

    @classmethod
    def validate_inputs(cls, model_name):
        # When the prompt is queued: a missing set, or a cut-off or foreign file (from its first
        # bytes; the keys and shapes are checked when the set is loaded). A value that arrives
        # through a link is not known yet.
        if not isinstance(model_name, str):
            return True
        try:
            for path in _files_of(resolve_model_set(model_name)):
                check_weight_file(path)
        except WeightsError as e:
            return f"model_name {model_name!r}: {e}"
        except (ValueError, OSError) as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model_name):
        return io.NodeOutput(load_model_set(model_name))


# ----------------------------------------------------------------------------------- stylize
def _check_model(model, variant: str, other: str) -> FeedForwardModel:
    if not isinstance(model, FeedForwardModel):
        raise ValueError("model: connect the output of 'Load Style Transfer Model (SCSA)'")
    if model.variant != variant:
        raise ValueError(f"model: {model.name!r} holds {model.display_name} weights; this node runs "
                         f"{'SANet' if variant == 'sanet' else 'StyTr2'}. Use '{other}' for it, or load a "
                         f"{'SANet' if variant == 'sanet' else 'StyTr2'} set")
    return model


def run_stylize(model: FeedForwardModel, content, style, semantics, preset: str, weights: SCSAWeights,
                size: int, output_size: str):
    """Place the model with ComfyUI's memory management, run, report progress, honour Cancel."""
    if semantics is not None and semantics.num_styles > 1:
        raise ValueError(f"semantics: has {semantics.num_styles} style maps; the feed-forward networks take one "
                         "style image. Give SCSASemanticPair only the map of the style image connected here "
                         "(several styles by region work with SCSAInvert / SCSAStyleSampler).")
    network = model.patcher.model
    multiple = network.size_multiple
    pixels = sum(h * w for h, w in (working_size(content.shape[1], content.shape[2], size, multiple, preset),
                                    working_size(style.shape[1], style.shape[2], size, multiple, preset)))
    comfy.model_management.load_models_gpu([model.patcher], memory_required=pixels * ACTIVATION_BYTES_PER_PIXEL[model.variant],
                                           force_full_load=True)
    network = model.patcher.model
    bar = comfy.utils.ProgressBar(progress_total(network, content.shape[0], semantics is not None))

    def progress():
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update(1)

    comfy.model_management.throw_exception_if_processing_interrupted()
    result = stylize(network, content, style, semantics, preset=preset, weights=weights, size=size,
                     output_size=output_size, progress=progress)
    for note in result.notes:
        log.warning("SCSA %s: %s", network.display_name, note)
    return io.NodeOutput(result.image.to(comfy.model_management.intermediate_device()))


def _common_inputs(variant: str, sca: float, ssa: float, multiple: int) -> list:
    name = "SANet" if variant == "sanet" else "StyTr2"
    return [
        FeedForwardModelType.Input("model", tooltip=f"{name} weights from 'Load Style Transfer Model (SCSA)'."),
        io.Image.Input("content", tooltip="The image to restyle (a batch is restyled image by image)."),
        io.Image.Input("style", tooltip="The style image (one, or one per content image)."),
        Semantics.Input("semantics", optional=True,
                        tooltip="Regions from SCSASemanticPair or SCSASemanticFromMasks: each content region "
                                f"takes its style from the same region of the style. Without: plain {name}."),
        io.Combo.Input("preset", options=list(PRESETS), default="default",
                       tooltip="default: keeps the aspect ratio (long side = size). official: the paper's "
                               "code, both images stretched to size x size and its label resampling."),
        io.Float.Input("sca_weight", default=sca, min=0.0, max=3.0, step=0.05,
                       tooltip="SCA (continuous): each position takes a mix of its region's style. Official "
                               f"{sca}."),
        io.Float.Input("ssa_weight", default=ssa, min=0.0, max=3.0, step=0.05,
                       tooltip=f"SSA (sparse): each position copies its region's best-matching style feature: "
                               f"crisper texture. Official {ssa}."),
        io.Int.Input("size", default=512, min=64, max=2048, step=multiple,
                     tooltip=f"Working resolution: the long side (default) or both sides (official), a multiple "
                             f"of {multiple}. The networks were trained at 256 and SCSA evaluated at 512; "
                             "larger sizes take quadratically more attention time."),
        io.Combo.Input("output_size", options=list(OUTPUT_SIZES), default="content", optional=True,
                       tooltip="content: resized back to the content image's size; working: as computed."),
    ]


class SCSASANetStylize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSASANetStylize", display_name="SANet Stylize (SCSA)", category=CATEGORY,
            description="SANet+SCSA: semantic style transfer in one network pass (CVPR 2025). Without "
                        "semantics: plain SANet.",
            inputs=_common_inputs("sanet", 0.7, 0.3, 16),
            outputs=[io.Image.Output("image", display_name="image")],
        )

    @classmethod
    def execute(cls, model, content, style, preset, sca_weight, ssa_weight, size, semantics=None,
                output_size="content"):
        model = _check_model(model, "sanet", "StyTr2 Stylize (SCSA)")
        return run_stylize(model, content, style, semantics, preset, SCSAWeights(sca_weight, ssa_weight),
                           size, output_size)


class SCSAStyTr2Stylize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        inputs = _common_inputs("stytr2", 1.2, 0.5, 8)
        inputs.insert(7, io.Float.Input(
            "adain_mix", default=0.7, min=0.0, max=1.0, step=0.05,
            tooltip="Share of the region-wise AdaIN content in the first decoder layer's residual (the rest "
                    "is the plain content). Official 0.7; used with semantics only."))
        return io.Schema(
            node_id="SCSAStyTr2Stylize", display_name="StyTr2 Stylize (SCSA)", category=CATEGORY,
            description="StyTr2+SCSA: semantic style transfer with a transformer, in one network pass "
                        "(CVPR 2025). Without semantics: plain StyTr2.",
            inputs=inputs,
            outputs=[io.Image.Output("image", display_name="image")],
        )

    @classmethod
    def execute(cls, model, content, style, preset, sca_weight, ssa_weight, adain_mix, size, semantics=None,
                output_size="content"):
        model = _check_model(model, "stytr2", "SANet Stylize (SCSA)")
        return run_stylize(model, content, style, semantics, preset,
                           SCSAWeights(sca_weight, ssa_weight, adain_mix), size, output_size)


NODES = [SCSAFeedForwardLoader, SCSASANetStylize, SCSAStyTr2Stylize]
