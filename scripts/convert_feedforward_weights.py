#!/usr/bin/env python
"""Convert a folder of published SANet or StyTr2 weight files into one .safetensors.

    python scripts/convert_feedforward_weights.py FOLDER OUT.safetensors

FOLDER holds the files as their authors publish them (SANet: vgg_normalised.pth,
decoder_iter_500000.pth, transformer_iter_500000.pth; StyTr2: embedding_iter_160000.pth,
decoder_iter_160000.pth, transformer_iter_160000.pth; StyTr2's vgg_normalised.pth is not
needed). Every file is read with ``torch.load(weights_only=True)`` (a pickle that needs to run
code is refused), every key and shape is checked, and the parts are written under the prefixes
``vgg.``, ``embedding.``, ``decoder.``, ``transformer.`` with metadata ``variant``: the single
file ``Load Style Transfer Model (SCSA)`` accepts. SANet's unused VGG convs (after relu5_1) are
left out (80 MB -> 52 MB for the VGG part). A cut-off or renamed input file is named before it is
read (nodes/safetensors_file.py, as the loader node does). OUT is written whole or not at all and
never over an existing file.
"""
from __future__ import annotations

import argparse
import importlib.util
import pickle
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scsa_core.feedforward.weights import WeightsError, combine_parts, parts_from_files  # noqa: E402

EXTENSIONS = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".sft")


def _safetensors_file():
    """nodes/safetensors_file.py, loaded by its path: the pack's ``nodes`` package imports
    ComfyUI, and a top-level ``nodes`` may be ComfyUI's own module."""
    name = "scsa_safetensors_file"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "nodes" / "safetensors_file.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module   # where its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


FILES = _safetensors_file()


def read(path: Path) -> dict:
    try:
        FILES.check_before_loading(path)
    except FILES.SafetensorsFileError as e:
        raise SystemExit(f"{path.name}: {e}") from None
    if path.suffix.lower() in FILES.SAFETENSORS_EXTENSIONS:
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SystemExit(f"{path.name}: refused, the file is a pickle that needs to run code to load "
                         f"({str(e).splitlines()[0]})") from None
    except Exception as e:   # damaged inside: the first bytes looked right
        raise SystemExit(f"{path.name}: cannot be read: the file is damaged or cut off "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return state_dict.get("state_dict", state_dict) if isinstance(state_dict, dict) else state_dict


def convert(folder: Path, out: Path) -> str:
    """Write ``out`` from the published files in ``folder``; returns the variant."""
    files = {p.name: read(p) for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in EXTENSIONS}
    variant, parts, notes = parts_from_files(files)
    for note in notes:
        print(note)
    combined, metadata = combine_parts(variant, parts)
    FILES.write_new(out, combined, metadata)
    return variant


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder}: not a folder")
    if args.out.suffix.lower() != ".safetensors":
        raise SystemExit(f"{args.out}: the output must end in .safetensors")
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists already; choose another name or remove it first")
    try:
        variant = convert(args.folder, args.out)
    except WeightsError as e:
        raise SystemExit(str(e)) from None
    except FileExistsError as e:   # written meanwhile by something else
        raise SystemExit(str(e)) from None
    print(f"wrote {args.out} ({variant}, {args.out.stat().st_size / 2 ** 20:.0f} MB)")


if __name__ == "__main__":
    main()
