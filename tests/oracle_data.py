"""Locating the shared reference data, and rebuilding the oracle network's weights.

The reference tensors live outside the repository (``../shared`` in CI, absent in a user's
clone), so every test that needs them skips with the reason when they are missing.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def oracle_dir() -> Path:
    return Path(os.environ.get("SCSA_ORACLE_DIR", REPO_ROOT.parent / "shared" / "oracle"))


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
