"""Weights of the feed-forward networks: key tables, variant detection, strict checks, models.

Pure: state dicts in, models out, no file access (the loader node reads the files with
ComfyUI's safe loader and hands the dicts here).

Two layouts are accepted:
- the files as their authors publish them, one state dict per file (no ``module.`` prefix;
  one is stripped if present). Each file's role is recognised by its keys, not its name:
  SANet ``vgg_normalised.pth``, ``decoder_iter_500000.pth``, ``transformer_iter_500000.pth``
  (GlebSBrykin/SANET); StyTr2 ``embedding_iter_160000.pth``, ``decoder_iter_160000.pth``,
  ``transformer_iter_160000.pth`` (diyiiyiii/StyTR-2; its ``vgg_normalised.pth`` is used only
  in training and is ignored). The two decoders have identical keys and shapes, so the variant
  comes from the transformer file and the decoder must come from the same set;
- one combined dict (a converted ``.safetensors``) whose keys carry the part as a prefix:
  ``vgg.``, ``embedding.``, ``decoder.``, ``transformer.`` (``transform.`` is read as
  ``transformer.``), optionally with metadata ``variant`` = ``sanet`` / ``stytr2``.
Every key and shape is checked; problems are reported by name, with the fix.
"""
from __future__ import annotations

import torch

from .cnn_decoder import decoder_key_shapes
from .sanet import SANetModel, sanet_transformer_key_shapes
from .stytr2 import StyTr2Model, stytr2_embedding_key_shapes, stytr2_transformer_key_shapes
from .vgg import VGG_USED_MODULES, vgg_key_shapes

__all__ = ["WeightsError", "VARIANTS", "PART_FILES", "SOURCES", "part_key_shapes", "identify_part",
           "check_part", "parts_from_files", "parts_from_combined", "build_model", "combine_parts",
           "COMBINED_FORMAT"]

VARIANTS = ("sanet", "stytr2")
DISPLAY = {"sanet": "SANet", "stytr2": "StyTr2"}
# part -> official file name (without extension) of each variant's required files
PART_FILES = {
    "sanet": {"vgg": "vgg_normalised", "decoder": "decoder_iter_500000",
              "transformer": "transformer_iter_500000"},
    "stytr2": {"embedding": "embedding_iter_160000", "decoder": "decoder_iter_160000",
               "transformer": "transformer_iter_160000"},
}
SOURCES = {"sanet": "github.com/GlebSBrykin/SANET", "stytr2": "github.com/diyiiyiii/StyTR-2"}
COMBINED_PREFIXES = {"vgg.": "vgg", "embedding.": "embedding", "decoder.": "decoder",
                     "transformer.": "transformer", "transform.": "transformer"}
COMBINED_FORMAT = "scsa-feedforward/1"
_LISTED = 6   # how many offending keys an error message names


class WeightsError(ValueError):
    """A weight file or set that cannot be used: the message names what is missing or wrong."""


def part_key_shapes(variant: str, part: str) -> dict[str, tuple[int, ...]]:
    """Every key of one published file and its shape."""
    tables = {("sanet", "vgg"): vgg_key_shapes, ("stytr2", "vgg"): vgg_key_shapes,
              ("sanet", "decoder"): decoder_key_shapes, ("stytr2", "decoder"): decoder_key_shapes,
              ("sanet", "transformer"): sanet_transformer_key_shapes,
              ("stytr2", "transformer"): stytr2_transformer_key_shapes,
              ("stytr2", "embedding"): stytr2_embedding_key_shapes}
    if (variant, part) not in tables:
        raise WeightsError(f"{DISPLAY.get(variant, variant)} has no part {part!r}")
    return tables[(variant, part)]()


def _file_name(variant: str, part: str) -> str:
    return PART_FILES[variant].get(part, "vgg_normalised") + ".pth"


def _strip_module_prefix(state_dict: dict) -> dict:
    """``module.x`` -> ``x`` when every key has it (a DataParallel save)."""
    if state_dict and all(isinstance(k, str) and k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _as_state_dict(state_dict, source: str) -> dict:
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{source}: expected a state dict (key -> tensor), got a "
                           f"{type(state_dict).__name__}")
    if not state_dict:
        raise WeightsError(f"{source}: the file holds no tensors")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{source}: {len(bad)} entries are not tensors ({', '.join(map(str, bad[:_LISTED]))}): "
                           "this is not a plain state dict; use the weight files as their authors publish them")
    return _strip_module_prefix(state_dict)


def identify_part(state_dict: dict, source: str = "weights") -> tuple[str | None, str]:
    """The role of one published file from its keys: ``(variant, part)``; ``variant`` is None
    for the VGG and the CNN decoder, which both variants share in layout."""
    sd = _as_state_dict(state_dict, source)
    keys = set(sd)
    if any(k.startswith(("sanet4_1.", "sanet5_1.", "merge_conv.")) for k in keys):
        return "sanet", "transformer"
    if any(k.startswith(("encoder_c.", "encoder_s.", "new_ps.")) for k in keys) or \
            any(k.startswith("decoder.layers.") for k in keys):
        return "stytr2", "transformer"
    if any(k.startswith("proj.") for k in keys):
        return "stytr2", "embedding"
    first = sd.get("0.weight")
    if first is not None and tuple(first.shape) == (3, 3, 1, 1):
        return None, "vgg"
    if "28.weight" in keys or ("1.weight" in keys and tuple(sd["1.weight"].shape) == (256, 512, 3, 3)):
        return None, "decoder"
    if any(k.startswith(tuple(COMBINED_PREFIXES)) for k in keys):
        raise WeightsError(f"{source}: this is a combined file (keys like 'transformer.' / 'decoder.'): "
                           "load it as a single .safetensors, not as part of a folder")
    listed = ", ".join(sorted(keys)[:_LISTED])
    raise WeightsError(f"{source}: not a SANet or StyTr2 weight file (its keys start with: {listed}). "
                       "Expected one of vgg_normalised, decoder_iter_*, transformer_iter_* or "
                       "embedding_iter_* as published by their authors")


def check_part(variant: str, part: str, state_dict: dict, source: str = "") -> dict:
    """Every key and shape of one part, checked: returns the state dict the model loads (the
    VGG's convs after relu5_1 are checked, then dropped: SANet never uses them).

    Raises :class:`WeightsError` naming missing keys, unexpected keys, wrong shapes, non-float
    tensors and non-finite values.
    """
    source = source or _file_name(variant, part)
    sd = _as_state_dict(state_dict, source)
    expected = part_key_shapes(variant, part)
    # The VGG's convs after relu5_1 are never used: a file may leave them out (our converter
    # does); when present they are checked like the rest.
    optional = {k for k in expected if part == "vgg" and int(k.split(".")[0]) >= VGG_USED_MODULES}
    problems = []
    missing = [k for k in expected if k not in sd and k not in optional]
    if missing:
        problems.append(f"missing {len(missing)} key(s): " + ", ".join(
            f"{k} {list(expected[k])}" for k in missing[:_LISTED]) + (" ..." if len(missing) > _LISTED else ""))
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:_LISTED])
                        + (" ..." if len(unexpected) > _LISTED else ""))
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): " + ", ".join(
            f"{k} is {list(sd[k].shape)}, expected {list(expected[k])}" for k in wrong[:_LISTED]))
    not_float = [k for k in expected if k in sd and not sd[k].is_floating_point()]
    if not_float:
        problems.append("non-float tensor(s): " + ", ".join(f"{k} ({sd[k].dtype})" for k in not_float[:_LISTED]))
    if problems:
        raise WeightsError(f"{source} is not a valid {DISPLAY[variant]} {part} file "
                           f"({_file_name(variant, part)} from {SOURCES[variant]}): " + "; ".join(problems))
    broken = [k for k in expected if k in sd and not bool(torch.isfinite(sd[k]).all())]
    if broken:
        raise WeightsError(f"{source}: {len(broken)} tensor(s) hold NaN or infinity ({', '.join(broken[:_LISTED])}): "
                           "the file is damaged; download it again")
    if part == "vgg":
        return {k: v for k, v in sd.items() if int(k.split(".")[0]) < VGG_USED_MODULES}
    return dict(sd)


def _missing_parts_error(variant: str, parts: dict, where: str) -> WeightsError:
    missing = [p for p in PART_FILES[variant] if p not in parts]
    names = ", ".join(_file_name(variant, p) for p in missing)
    return WeightsError(f"{where}: the {DISPLAY[variant]} set is incomplete: missing {names} "
                        f"(from {SOURCES[variant]}; every file of the set goes in the same folder)")


def parts_from_files(files: dict[str, dict]) -> tuple[str, dict[str, dict], list[str]]:
    """A folder of published files: ``{file name: state dict}`` -> ``(variant, {part: state
    dict}, notes)``. The parts are recognised by their keys, so renamed files work."""
    if not files:
        raise WeightsError("the folder holds no weight files (.pth / .safetensors)")
    roles: dict[str, list[str]] = {}
    variants: dict[str, list[str]] = {}
    dicts = {}
    for name, sd in files.items():
        variant, part = identify_part(sd, name)
        roles.setdefault(part, []).append(name)
        dicts[part] = sd
        if variant is not None:
            variants.setdefault(variant, []).append(name)
    if len(variants) > 1:
        raise WeightsError("the folder mixes SANet and StyTr2 files (SANet: "
                           f"{', '.join(variants['sanet'])}; StyTr2: {', '.join(variants['stytr2'])}). "
                           "Keep each set in its own folder: their decoders look the same, so a mixed "
                           "folder cannot be sorted out safely")
    if not variants:
        raise WeightsError("the folder has no transformer file, so it is neither SANet nor StyTr2: add "
                           "transformer_iter_500000.pth (SANet) or transformer_iter_160000.pth and "
                           "embedding_iter_160000.pth (StyTr2)")
    variant = next(iter(variants))
    doubles = {part: names for part, names in roles.items() if len(names) > 1}
    if doubles:
        part, names = next(iter(doubles.items()))
        raise WeightsError(f"the folder holds {len(names)} {part} files ({', '.join(sorted(names))}): keep one "
                           "set of weights per folder")
    notes = []
    if variant == "stytr2" and "vgg" in dicts:
        notes.append(f"{', '.join(roles['vgg'])}: StyTr2 uses its VGG only in training; ignored")
        dicts.pop("vgg")
    parts = {}
    for part in PART_FILES[variant]:
        if part in dicts:
            parts[part] = check_part(variant, part, dicts[part], roles[part][0])
    if len(parts) != len(PART_FILES[variant]):
        raise _missing_parts_error(variant, parts, "weights folder")
    return variant, parts, notes


def parts_from_combined(state_dict: dict, metadata: dict | None = None,
                        source: str = "weights") -> tuple[str, dict[str, dict], list[str]]:
    """One combined state dict (prefixes ``vgg.``, ``embedding.``, ``decoder.``,
    ``transformer.``) -> ``(variant, {part: state dict}, notes)``."""
    sd = _as_state_dict(state_dict, source)
    split: dict[str, dict] = {}
    loose = []
    for key, value in sd.items():
        for prefix, part in COMBINED_PREFIXES.items():
            if key.startswith(prefix):
                split.setdefault(part, {})[key[len(prefix):]] = value
                break
        else:
            loose.append(key)
    if loose:
        try:   # a single published file saved as .safetensors: say so
            variant, part = identify_part(sd, source)
            what = f"only the {DISPLAY.get(variant, 'shared')} {part} file"
        except WeightsError:
            what = "not a combined SANet / StyTr2 file"
        raise WeightsError(f"{source}: {what}; a single file must hold every part under the prefixes "
                           f"vgg., embedding., decoder., transformer. (keys without one: "
                           f"{', '.join(loose[:_LISTED])}). Put the published files in a folder instead")
    if "transformer" not in split:
        raise WeightsError(f"{source}: no 'transformer.' keys: neither SANet nor StyTr2")
    variant, _ = identify_part(split["transformer"], f"{source} (transformer.)")
    declared = (metadata or {}).get("variant")
    if declared is not None and declared != variant:
        raise WeightsError(f"{source}: its metadata says variant {declared!r} but its transformer "
                           f"keys are {DISPLAY[variant]}'s: the file is mislabelled; convert it again")
    notes = []
    if variant == "stytr2" and "vgg" in split:
        notes.append(f"{source}: StyTr2 uses its VGG only in training; 'vgg.' keys ignored")
        split.pop("vgg")
    extra = [p for p in split if p not in PART_FILES[variant]]
    if extra:
        raise WeightsError(f"{source}: {DISPLAY[variant]} has no {', '.join(extra)} part "
                           f"(it has {', '.join(PART_FILES[variant])})")
    parts = {part: check_part(variant, part, split[part], f"{source} ({part}.)")
             for part in PART_FILES[variant] if part in split}
    if len(parts) != len(PART_FILES[variant]):
        raise _missing_parts_error(variant, parts, source)
    return variant, parts, notes


def build_model(variant: str, parts: dict[str, dict], expected_variant: str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A ready model (eval mode, no gradients, on the CPU) from checked parts."""
    if variant not in VARIANTS:
        raise WeightsError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if expected_variant is not None and expected_variant != variant:
        raise WeightsError(f"these are {DISPLAY[variant]} weights, not {DISPLAY[expected_variant]}")
    model = SANetModel() if variant == "sanet" else StyTr2Model()
    for part in PART_FILES[variant]:
        if part not in parts:
            raise _missing_parts_error(variant, parts, "weights")
        checked = check_part(variant, part, parts[part])
        getattr(model, part).load_state_dict(checked, strict=True)
    model.requires_grad_(False)
    return model.to(dtype).eval()


def combine_parts(variant: str, parts: dict[str, dict]) -> tuple[dict, dict]:
    """Checked parts -> ``(state dict with part prefixes, metadata)`` for one ``.safetensors``
    (contiguous float32 tensors; the VGG's unused convs are left out)."""
    combined = {}
    for part in PART_FILES[variant]:
        if part not in parts:
            raise _missing_parts_error(variant, parts, "weights")
        for key, value in check_part(variant, part, parts[part]).items():
            combined[f"{part}.{key}"] = value.detach().to(torch.float32).contiguous()
    return combined, {"variant": variant, "format": COMBINED_FORMAT}
