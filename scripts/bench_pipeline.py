"""Benchmark: a whole SCSA run against a plain KSampler run, through ComfyUI in one process.

    .venv/bin/python scripts/bench_pipeline.py [--steps 50] [--sizes 128 256] [--width 32]

For each image size: a plain KSampler run (``steps`` DDIM steps, cfg 1, so one UNet evaluation
per step like SCSA's sampling) and a whole SCSA run (SCSAInvert with all four inversions,
SCSAApply, SCSAStyleSampler) on the same random SD1.5-structured UNet (``--width`` channels,
SD1.5's block layout), alternating the two. Prints one JSON line per size with ``plain_s``,
``scsa_s`` (medians), ``ratio`` (compute floor on a CPU: 5.0, four inversions plus one
sampling pass) and ``bank_mb`` (the recorded features). A last line gives the feature-bank
size of a real SD1.5 UNet at 512 x 512 for ``--steps`` steps, measured on a 2-step inversion
of the full-size architecture (random weights) and scaled by steps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import comfy_fixtures as cf  # noqa: E402
from scripts.comfyui_runtime import comfyui_path  # noqa: E402


def _conditioning():
    return [[torch.zeros(1, 77, 768), {}]]


def _latents(size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {name: {"samples": torch.randn(1, 4, size // 8, size // 8, generator=g)}
            for name in ("content", "style", "content_map", "style_map")}


def _semantics(labels_module, size: int):
    masks = torch.zeros(4, size, size)
    for i in range(4):
        masks[i, i * size // 4:(i + 1) * size // 4] = 1
    return labels_module.labels_from_masks(masks, masks.flip(2), threshold=0.5)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--width", type=int, default=32, help="UNet model_channels (SD1.5: 320)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-sd15-memory", action="store_true")
    args = parser.parse_args(argv)

    runtime = cf.start_comfy(comfyui_path(), Path(tempfile.mkdtemp(prefix="scsa_bench_")))
    runtime.load_pack(REPO)
    import comfy.sample
    import nodes
    from pack import pack_module
    scsa_nodes = pack_module("nodes/scsa_nodes.py")
    labels = pack_module("scsa_core/labels.py")

    patcher = cf.build_tiny_sd15_patcher(seed=0, model_channels=args.width)
    with torch.inference_mode():
        for size in args.sizes:
            latents = _latents(size)
            semantics = _semantics(labels, size)

            def plain():
                return nodes.common_ksampler(patcher, 0, args.steps, 1.0, "ddim", "ddim_uniform",
                                             _conditioning(), _conditioning(), latents["content"])

            def scsa():
                inversion = scsa_nodes.SCSAInvert.execute(model=patcher, conditioning=_conditioning(),
                                                          steps=args.steps, blocks="auto", **latents).result[0]
                model = scsa_nodes.SCSAApply.execute(model=patcher, semantics=semantics, preset="default",
                                                     sca_weight=0.8, ssa_weight=0.2, semantic_share=0.3,
                                                     content_share=0.5, temperature=1.2, gamma=0.75).result[0]
                scsa_nodes.SCSAStyleSampler.execute(model=model, inversion=inversion, init="auto",
                                                    timesteps="official")
                return inversion

            plain()  # warm-up: model load, kernels
            plain_times, scsa_times = [], []
            for _ in range(args.repeats):
                plain_times.append(_timed(plain)[1])
                inversion, seconds = _timed(scsa)
                scsa_times.append(seconds)
            plain_s, scsa_s = statistics.median(plain_times), statistics.median(scsa_times)
            print(json.dumps({"size": size, "steps": args.steps, "width": args.width,
                              "threads": torch.get_num_threads(), "plain_s": round(plain_s, 2),
                              "scsa_s": round(scsa_s, 2), "ratio": round(scsa_s / plain_s, 2),
                              "bank_mb": round(inversion.bank.nbytes / 2 ** 20, 1)}), flush=True)
            del inversion

        if not args.skip_sd15_memory:
            full = cf.build_sd15_model(cf.sd15_unet_config(model_channels=320), seed=0)
            import comfy.model_management as mm
            import comfy.model_patcher
            sd15 = comfy.model_patcher.ModelPatcher(full, load_device=mm.get_torch_device(),
                                                    offload_device=mm.unet_offload_device())
            latents = _latents(512)
            inversion, seconds = _timed(lambda: scsa_nodes.SCSAInvert.execute(
                model=sd15, conditioning=_conditioning(), steps=2, blocks="auto", **latents).result[0])
            per_step = inversion.bank.nbytes / 2
            print(json.dumps({"model": "SD1.5 layout, 512 px", "blocks": sorted(map(list, inversion.blocks)),
                              "bank_dtype": str(inversion.bank.dtype), "bank_mb_per_step": round(per_step / 2 ** 20, 1),
                              "bank_mb": round(per_step * args.steps / 2 ** 20, 1), "steps": args.steps,
                              "trajectory_mb": round(sum(t.numel() * t.element_size() for t in
                                                         inversion.trajectory.values()) / 2 * args.steps / 2 ** 20, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
