"""Benchmark: one SCSA block call against one plain SDPA self-attention call at the same shape.

    .venv/bin/python scripts/bench_core.py [--repeats 7] [--device cpu|cuda] [--dtype float32|float16]
    .venv/bin/python scripts/bench_core.py --labels   # labels from a 512 x 512 colour-map pair

Prints one JSON object per shape on its own line: ``tokens``, ``channels``, ``heads``,
``labels``, ``scsa_s`` and ``sdpa_s`` (medians over alternating repeats), ``ratio`` and
``peak_extra_mb`` (memory SCSA needs beyond plain attention's own peak: CUDA allocator peaks on
a GPU; on the CPU the resident-set growth of a fresh process running each, also printed as
``sdpa_peak_mb`` and ``scsa_peak_mb``).

The SCSA call is everything an injected block computes per step: S-AdaIN (twice with
``--preset official``), the reference projections, SCA, SSA and both ``to_out`` projections.
Labels are four balanced horizontal bands on both sides.
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
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scsa_core.attention import pair_labels, split_heads  # noqa: E402
from scsa_core.block import BlockLayers, ReferenceInputs, SCSAParams, scsa_block  # noqa: E402

SHAPES = ((4096, 320), (1024, 640))
HEADS = 8
LABELS = 4


def _layers(channels: int, device, dtype) -> BlockLayers:
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(channels, channels, generator=gen) / channels ** 0.5 for _ in range(4)]
    w_q, w_k, w_v, w_o = (w.to(device, dtype) for w in weights)
    return BlockLayers(norm1=lambda x: F.layer_norm(x, (channels,)),
                       to_q=lambda x: x @ w_q.T, to_k=lambda x: x @ w_k.T,
                       to_v=lambda x: x @ w_v.T, to_out=lambda x: x @ w_o.T)


def _inputs(tokens: int, channels: int, device, dtype):
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, tokens, channels, generator=gen).to(device, dtype) for _ in range(5)]
    labels = (torch.arange(tokens) * LABELS // tokens).to(device)
    return feats, labels


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure(tokens: int, channels: int, device: str, dtype: torch.dtype, repeats: int,
            preset: str = "default") -> dict:
    layers = _layers(channels, device, dtype)
    (x_t, content, style, content_map, style_map), labels = _inputs(tokens, channels, device, dtype)
    refs = ReferenceInputs(content, style, content_map, style_map)
    params = SCSAParams(preset=preset)
    q, k, v = (split_heads(layers.to_q(x_t), HEADS), split_heads(layers.to_k(x_t), HEADS),
               split_heads(layers.to_v(x_t), HEADS))

    def run_sdpa():
        F.scaled_dot_product_attention(q, k, v)

    def run_scsa():
        pairing = pair_labels(labels, labels)
        scsa_block(layers, x_t, refs, labels, labels, pairing, HEADS, params)

    with torch.no_grad():
        run_sdpa(), run_scsa()  # warm-up
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run_sdpa()
            sdpa_peak = torch.cuda.max_memory_allocated() - base
            torch.cuda.reset_peak_memory_stats()
            run_scsa()
            peak_extra = max(0, torch.cuda.max_memory_allocated() - base - sdpa_peak)
        else:
            peak_extra = None
        scsa_times, sdpa_times = [], []
        for _ in range(repeats):
            sdpa_times.append(_time(run_sdpa, device))
            scsa_times.append(_time(run_scsa, device))
    scsa_s, sdpa_s = statistics.median(scsa_times), statistics.median(sdpa_times)
    return {"tokens": tokens, "channels": channels, "heads": HEADS, "labels": LABELS, "preset": preset,
            "device": device, "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "scsa_s": round(scsa_s, 5),
            "sdpa_s": round(sdpa_s, 5), "ratio": round(scsa_s / sdpa_s, 3),
            "peak_extra_mb": None if peak_extra is None else round(peak_extra / 2 ** 20, 1)}


def _cpu_peak_mb(tokens: int, channels: int, dtype: str, preset: str, which: str) -> float:
    """Resident-set growth of a fresh process while it runs ``which`` ("sdpa" or "scsa") twice."""
    code = ("import resource, torch, torch.nn.functional as F\n"
            "from scripts import bench_core as b\n"
            "from scsa_core.attention import split_heads, pair_labels\n"
            "from scsa_core.block import ReferenceInputs, SCSAParams, scsa_block\n"
            f"dt = getattr(torch, {dtype!r}); n, c = {tokens}, {channels}\n"
            "layers = b._layers(c, 'cpu', dt); (x, cn, st, cm, sm), lab = b._inputs(n, c, 'cpu', dt)\n"
            "q, k, v = (split_heads(f(x), b.HEADS) for f in (layers.to_q, layers.to_k, layers.to_v))\n"
            "refs = ReferenceInputs(cn, st, cm, sm)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "with torch.no_grad():\n"
            "    for _ in range(2):\n"
            f"        if {which!r} == 'sdpa': F.scaled_dot_product_attention(q, k, v)\n"
            f"        else: scsa_block(layers, x, refs, lab, lab, pair_labels(lab, lab), b.HEADS, SCSAParams(preset={preset!r}))\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(REPO_ROOT))
    return float(out.stdout.strip().splitlines()[-1])


def measure_labels(repeats: int, size: int = 512) -> dict:
    """Labels from the shipped example colour maps resized to ``size`` x ``size`` (nearest, so the
    palette stays), against the floor of any palette detection: ``torch.unique`` of the pair's
    colours."""
    import numpy as np
    from PIL import Image

    from scsa_core.labels import labels_from_color_maps

    def load(name):
        image = Image.open(REPO_ROOT / "workflows" / "inputs" / name).convert("RGB")
        return np.asarray(image.resize((size, size), Image.NEAREST))

    content, style = load("scsa_example_content_map.png"), load("scsa_example_style_map.png")

    def floor():
        torch.unique(torch.from_numpy(np.concatenate([content, style])).reshape(-1, 3), dim=0)

    times = {"labels": [], "unique": []}
    for fn in (lambda: labels_from_color_maps(content, style), floor):   # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in (("labels", lambda: labels_from_color_maps(content, style)), ("unique", floor)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    labels_s, unique_s = statistics.median(times["labels"]), statistics.median(times["unique"])
    return {"what": "labels_from_color_maps", "size": size, "labels_s": round(labels_s, 4),
            "unique_s": round(unique_s, 4), "ratio": round(labels_s / unique_s, 2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", action="store_true",
                        help="time labels_from_color_maps on a 512 x 512 pair instead (against torch.unique)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (GPU default)")
    parser.add_argument("--preset", default="default", choices=("default", "official"))
    args = parser.parse_args(argv)
    if args.labels:
        print(json.dumps(measure_labels(args.repeats)), flush=True)
        return
    dtypes = [args.dtype] if args.dtype else (["float32", "float16"] if args.device == "cuda" else ["float32"])
    for dtype_name in dtypes:
        for tokens, channels in SHAPES:
            result = measure(tokens, channels, args.device, getattr(torch, dtype_name), args.repeats,
                             args.preset)
            if result["peak_extra_mb"] is None:
                sdpa_mb = _cpu_peak_mb(tokens, channels, dtype_name, args.preset, "sdpa")
                scsa_mb = _cpu_peak_mb(tokens, channels, dtype_name, args.preset, "scsa")
                result.update(sdpa_peak_mb=round(sdpa_mb, 1), scsa_peak_mb=round(scsa_mb, 1),
                              peak_extra_mb=round(max(0.0, scsa_mb - sdpa_mb), 1))
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
