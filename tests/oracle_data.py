"""Locating the shared reference data, and rebuilding the oracle network's weights.

The reference tensors live outside the repository (``../shared`` in CI, absent in a user's
clone), so every test that needs them skips with the reason when they are missing.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import tiny_models

REPO_ROOT = Path(__file__).resolve().parent.parent
ORACLE_SEED = 20250601
ORACLE_CKPT_NAME = f"sd15_random_s{ORACLE_SEED}_fp16.safetensors"


def oracle_dir() -> Path:
    """shared/oracle: $SCSA_ORACLE_DIR, else <repo>/../shared/oracle (may not exist)."""
    env = os.environ.get("SCSA_ORACLE_DIR", "").strip()
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared" / "oracle").resolve()


def sem_pairs_dir() -> Path:
    return Path(os.environ.get("SCSA_SEM_PAIRS_DIR", REPO_ROOT.parent / "shared" / "data" / "sem_pairs"))


def require_oracle() -> Path:
    path = oracle_dir()
    if not (path / "make_checkpoint.py").is_file():
        pytest.skip(f"no oracle reference data at {path} (set SCSA_ORACLE_DIR; CI has ../shared/oracle)")
    return path


def load_checkpoint_builder():
    """Import the oracle's ``make_checkpoint.py`` as a module (it defines the weights exactly)."""
    path = require_oracle() / "make_checkpoint.py"
    spec = importlib.util.spec_from_file_location("scsa_oracle_make_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def oracle_unet_weights(prefix: str) -> dict[str, torch.Tensor]:
    """The oracle checkpoint's UNet tensors under ``prefix``, without building the 2 GB file.

    Each tensor has its own seeded generator, so a subset is generated exactly; values are
    rounded to fp16 like the stored checkpoint and returned in fp32.
    """
    builder = load_checkpoint_builder()
    full_prefix = builder.SD_PREFIX_UNET + prefix
    weights = {}
    for spec in builder.unet_specs():
        if spec.key.startswith(full_prefix):
            tensor = builder.make_tensor(spec, 20250601).to(torch.float16).to(torch.float32)
            weights[spec.key[len(full_prefix):]] = tensor
    if not weights:
        raise KeyError(f"no oracle UNet weights under {full_prefix}")
    return weights


def official_palette_order(pair_dir: Path) -> list[list[int]]:
    """The official code's hand-written palette of a pair, in its order, from the reference masks.

    Label id ``i`` of ``masks.safetensors`` is the official palette's colour ``i``: the most
    common colour of the 512 px content map inside the 8 x 8 cells labelled ``i`` at 64 x 64.
    Its order decides the official resampling's exact midpoint ties.
    """
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    colours = np.asarray(Image.open(pair_dir / "input_cnt_sem_512.png").convert("RGB"))
    labels = load_file(str(pair_dir / "masks.safetensors"))["content_labels_64"].long().numpy()
    cell = colours.shape[0] // labels.shape[0]
    per_pixel = np.repeat(np.repeat(labels, cell, axis=0), cell, axis=1)
    palette = []
    for label in range(int(labels.max()) + 1):
        values, counts = np.unique(colours[per_pixel == label], axis=0, return_counts=True)
        palette.append(values[counts.argmax()].tolist())
    return palette


def build_oracle_checkpoint(oracle: Path | None = None, out_dir: Path | None = None,
                            python: str | None = None, timeout: float = 1800) -> Path:
    """Run oracle/make_checkpoint.py (random-weight SD1.x, 2.1 GB, ~30 s) into .cache/models/
    unless the file is already there. Written to a temp name and renamed, so an interrupted
    build never leaves a truncated checkpoint behind."""
    oracle = Path(oracle) if oracle else oracle_dir()
    out_dir = Path(out_dir) if out_dir else tiny_models.MODELS_CACHE
    out = out_dir / ORACLE_CKPT_NAME
    if out.is_file():
        return out
    script = oracle / "make_checkpoint.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{ORACLE_CKPT_NAME}.{os.getpid()}.tmp.safetensors"
    try:
        proc = subprocess.run([python or sys.executable, str(script), "--out", str(tmp),
                               "--seed", str(ORACLE_SEED), "--dtype", "fp16"],
                              capture_output=True, text=True, timeout=timeout, cwd=str(out_dir))
        if proc.returncode != 0:
            raise RuntimeError(f"make_checkpoint.py failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
