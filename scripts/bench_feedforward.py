#!/usr/bin/env python
"""Benchmark: SANet+SCSA and StyTr2+SCSA against the same network without semantics.

    python scripts/bench_feedforward.py [--variants sanet stytr2] [--sizes 512x512 1024x1024 768x512]
                                        [--batch 1] [--repeats 5] [--device cpu|cuda] [--no-memory]
                                        [--no-warmup]

Prints one JSON object per (variant, size) on its own line:
  variant, width, height       the content (= style) size, run at that working size
  batch                        content images per call, all with the one style (a batch reuses
                               the style side: its features, and for SANet SCA and the pairing)
  scsa_s, plain_s              medians over interleaved repeats (SCSA first on odd repeats, plain
                               first on even ones) of a whole ``stylize`` call: resize, labels,
                               the network, clamp; plain = the same network without semantics
  scsa_image_s, plain_image_s  the same per content image (divided by batch)
  ratio                        scsa_s / plain_s
  peak_mb, plain_peak_mb       memory of one call beyond what the loaded model and inputs hold:
                               CUDA allocator peak on a GPU; on the CPU the peak resident-set
                               growth of a fresh process running that one call
  repeats, threads, device, labels, torch
Semantics: four horizontal bands on both sides (balanced regions). Weights: random (PyTorch's
default initialisation; speed does not depend on the values).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scsa_core.feedforward import SANetModel, StyTr2Model, stylize  # noqa: E402
from scsa_core.labels import labels_from_masks  # noqa: E402

LABELS = 4
DEFAULT_SIZES = ("512x512", "1024x1024", "768x512")


def _parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def _model(variant: str, device: str):
    torch.manual_seed(0)
    model = SANetModel() if variant == "sanet" else StyTr2Model()
    return model.requires_grad_(False).eval().to(device)


def _inputs(width: int, height: int, batch: int = 1):
    g = torch.Generator().manual_seed(1)
    content = torch.rand(batch, height, width, 3, generator=g)
    style = torch.rand(1, height, width, 3, generator=g)
    bands = torch.zeros(LABELS, height, width)
    for i in range(LABELS):
        bands[i, i * height // LABELS:(i + 1) * height // LABELS] = 1
    return content, style, labels_from_masks(bands, bands)


def _call(model, content, style, semantics, width, height):
    return stylize(model, content, style, semantics, size=max(width, height), output_size="working")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_mb() -> float:
    """Current resident set (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def memory_probe(variant: str, size: str, mode: str, device: str, batch: int = 1) -> float:
    """Peak memory (MB) of one call beyond the loaded model and inputs, in this fresh process."""
    width, height = _parse_size(size)
    model = _model(variant, device)
    content, style, semantics = _inputs(width, height, batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _call(model, content, style, semantics if mode == "scsa" else None, width, height)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    base = _rss_mb()
    _call(model, content, style, semantics if mode == "scsa" else None, width, height)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # kB -> MB (Linux)
    return peak - base


def _probe_in_subprocess(variant: str, size: str, mode: str, device: str, batch: int) -> float | None:
    result = subprocess.run([sys.executable, __file__, "--memory-probe", variant, size, mode, "--device", device,
                             "--batch", str(batch)], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"memory probe {variant} {size} {mode} failed:\n{result.stderr}", file=sys.stderr)
        return None
    return float(result.stdout.strip().splitlines()[-1])


def bench(variant: str, size: str, repeats: int, device: str, memory: bool, warmup: bool = True,
          batch: int = 1) -> dict:
    width, height = _parse_size(size)
    model = _model(variant, device)
    content, style, semantics = _inputs(width, height, batch)
    runs = {"scsa": semantics, "plain": None}
    for sem in runs.values() if warmup else ():   # allocator, kernels
        _call(model, content, style, sem, width, height)
    times = {"scsa": [], "plain": []}
    for repeat in range(repeats):
        order = ("scsa", "plain") if repeat % 2 == 0 else ("plain", "scsa")
        for mode in order:
            _sync(device)
            start = time.perf_counter()
            _call(model, content, style, runs[mode], width, height)
            _sync(device)
            times[mode].append(time.perf_counter() - start)
    scsa_s, plain_s = statistics.median(times["scsa"]), statistics.median(times["plain"])
    line = {"variant": variant, "width": width, "height": height, "batch": batch, "scsa_s": round(scsa_s, 3),
            "plain_s": round(plain_s, 3), "scsa_image_s": round(scsa_s / batch, 3),
            "plain_image_s": round(plain_s / batch, 3), "ratio": round(scsa_s / plain_s, 3)}
    if memory:
        scsa_mb = _probe_in_subprocess(variant, size, "scsa", device, batch)
        plain_mb = _probe_in_subprocess(variant, size, "plain", device, batch)
        line["peak_mb"] = None if scsa_mb is None else round(scsa_mb, 1)
        line["plain_peak_mb"] = None if plain_mb is None else round(plain_mb, 1)
    line.update(repeats=repeats, warmup=warmup, threads=torch.get_num_threads(), device=device, labels=LABELS,
                torch=torch.__version__)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["sanet", "stytr2"], choices=["sanet", "stytr2"])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WIDTHxHEIGHT")
    parser.add_argument("--batch", type=int, default=1, help="content images per call (one style)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-call memory probes")
    parser.add_argument("--no-warmup", action="store_true", help="no untimed first call (for sizes that take minutes)")
    parser.add_argument("--memory-probe", nargs=3, metavar=("VARIANT", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(memory_probe(*args.memory_probe, args.device, args.batch))
        return
    for variant in args.variants:
        for size in args.sizes:
            print(json.dumps(bench(variant, size, args.repeats, args.device, not args.no_memory,
                                   not args.no_warmup, args.batch)), flush=True)


if __name__ == "__main__":
    main()
