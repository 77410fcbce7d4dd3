"""Benchmark: whole SCSA runs against a plain KSampler run, and the feature memory of each storage.

    .venv/bin/python scripts/bench_pipeline.py [--steps 50] [--sizes 128 256] [--width 32]
                                               [--storage memory recompute] [--memory-table]

Timing: for each image size, a plain KSampler run (``steps`` DDIM steps, cfg 1, so one UNet
evaluation per step like SCSA's sampling) and a whole SCSA run per storage mode (SCSAInvert with
all four inversions, SCSAApply, SCSAStyleSampler) on the same random SD1.5-structured UNet
(``--width`` channels, SD1.5's block layout), interleaved, in one process. One JSON line per
size and storage: ``plain_s``, ``scsa_s`` (medians), ``ratio`` (compute floor on a CPU: 5.0 for
memory/offload, four inversions plus one sampling pass; 9.0 for recompute, which also runs the
four references at every sampling step), ``features_mb`` (what the inversion keeps: the feature
bank, or the latent trajectories with recompute).

``--reuse SIZE ...``: the cost of a further content with the same style, its style inversion
reused (SCSAInvert's cache): ``further_over_first`` (the compute floor on a CPU: 3/5 with memory
storage, as two of the five UNet passes of a run are the style's), ``first_over_plain`` and
``further_over_plain``; the first storage of ``--storage`` is used.

``--family flux1|flux2|qwen_image|z_image|sd35``: the DiT path (experimental) on a tiny
random-weight model of that family built through ComfyUI's classes
(``tiny_models.build_tiny_dit_patcher``), one JSON line each with ``family``, ``what``, ``width``, ``height``,
``steps``, ``ratio`` and ``peak_mb`` (CUDA only; null on a CPU):
  run        a whole SCSA run (four inversions, SCSAApply, SCSAStyleSampler) / a plain euler run
             of the same steps and size (SamplerCustom's arithmetic);
  further    a further content with the style's inversion reused (the cache) / plain;
  attention  one SCSA joint-attention call (scsa_core.joint_attention) / the model's own SDPA over
             the same sample row, at the real model's heads, head dim and text tokens
             (:data:`REAL_ATTENTION`) and 4096 image tokens (1024 px; ``--image-tokens`` for
             fewer), random q/k/v, two labels.

``--memory-table``: the features each storage keeps for real SD1.5 and SDXL UNets (ComfyUI's
own classes, built on the meta device, so no weights are allocated) at 256-1024 px, fp16 (the
GPU dtype), from the pack's own estimate; then one check of that estimate against a 2-step
inversion of a full-size random SD1.5 at 512 px (fp32 on a CPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts import tiny_models  # noqa: E402
from scripts.comfy_inprocess import pack_module, start_comfy  # noqa: E402
from scripts.comfyui_runtime import comfyui_path  # noqa: E402

STREAMS = ("content", "style", "content_map", "style_map")
MB = 2 ** 20


def _conditioning(context: int = 768):
    return [[torch.zeros(1, 77, context), {}]]


def _latents(size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {name: {"samples": torch.randn(1, 4, size // 8, size // 8, generator=g)} for name in STREAMS}


def _semantics(labels_module, size: int):
    masks = torch.zeros(4, size, size)
    for i in range(4):
        masks[i, i * size // 4:(i + 1) * size // 4] = 1
    return labels_module.labels_from_masks(masks, masks.flip(2), threshold=0.5)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _features_bytes(inversion) -> int:
    return inversion.bank.nbytes + inversion.trajectory_bytes


def whole_run(pack, patcher, semantics, latents: dict, steps: int, storage: str, cache):
    """SCSAInvert + SCSAApply + SCSAStyleSampler, as the nodes call them; returns the inversion."""
    inversion = pack.pipeline.invert(patcher, _conditioning(), latents, steps, "auto", storage, cache=cache)
    model = pack.diffusion_nodes.SCSAApply.execute(
        model=patcher, semantics=semantics, preset="default", sca_weight=0.8, ssa_weight=0.2,
        semantic_share=0.3, content_share=0.5, temperature=1.2, gamma=0.75).result[0]
    pack.pipeline.style_sample(model, inversion, "auto", "official")
    return inversion


def time_reuse(pack, args) -> None:
    """A further content with the same style: the whole run when the style's inversion is
    reused from the cache, against the first run (nothing cached) and a plain KSampler run, all
    interleaved in one process. Each further run gets a new content (its own latents)."""
    import nodes
    patcher = tiny_models.build_tiny_sd15_patcher(seed=0, model_channels=args.width)
    for size in args.reuse:
        semantics = _semantics(pack.labels, size)
        style = {name: latent["samples"] for name, latent in _latents(size, seed=0).items() if "style" in name}

        def with_content(seed):
            contents = {name: latent["samples"] for name, latent in _latents(size, seed=seed).items()
                        if "content" in name}
            return dict(contents, **style)

        def plain():
            return nodes.common_ksampler(patcher, 0, args.steps, 1.0, "ddim", "ddim_uniform",
                                         _conditioning(), _conditioning(), {"samples": style["style"]})

        plain()  # warm-up
        times = {"plain": [], "first": [], "further": []}
        storage = args.storage[0]
        for repeat in range(args.repeats):
            cache = pack.style_reuse.StyleCache()
            times["plain"].append(_timed(plain)[1])
            first, seconds = _timed(lambda: whole_run(pack, patcher, semantics, with_content(100 + repeat),
                                                      args.steps, storage, cache))
            times["first"].append(seconds)
            further, seconds = _timed(lambda: whole_run(pack, patcher, semantics, with_content(200 + repeat),
                                                        args.steps, storage, cache))
            assert first.reused == () and set(further.reused) == {"style"}, (first.reused, further.reused)
            times["further"].append(seconds)
        plain_s, first_s, further_s = (statistics.median(times[k]) for k in ("plain", "first", "further"))
        print(json.dumps({"size": size, "steps": args.steps, "width": args.width, "storage": storage,
                          "threads": torch.get_num_threads(), "plain_s": round(plain_s, 2),
                          "first_s": round(first_s, 2), "further_s": round(further_s, 2),
                          "further_over_first": round(further_s / first_s, 2),
                          "first_over_plain": round(first_s / plain_s, 2),
                          "further_over_plain": round(further_s / plain_s, 2)}), flush=True)


def time_runs(pack, args) -> None:
    import nodes
    patcher = tiny_models.build_tiny_sd15_patcher(seed=0, model_channels=args.width)
    for size in args.sizes:
        latents = _latents(size)
        semantics = _semantics(pack.labels, size)

        def plain():
            return nodes.common_ksampler(patcher, 0, args.steps, 1.0, "ddim", "ddim_uniform",
                                         _conditioning(), _conditioning(), latents["content"])

        def scsa(storage):
            # cache=None: every run inverts all four latents (reuse is measured by --reuse)
            return whole_run(pack, patcher, semantics, {k: v["samples"] for k, v in latents.items()},
                             args.steps, storage, cache=None)

        plain()  # warm-up: model load, kernels
        times = {"plain": [], **{storage: [] for storage in args.storage}}
        features = {}
        for _ in range(args.repeats):
            times["plain"].append(_timed(plain)[1])
            for storage in args.storage:
                inversion, seconds = _timed(lambda: scsa(storage))
                times[storage].append(seconds)
                features[storage] = _features_bytes(inversion)
                del inversion
        plain_s = statistics.median(times["plain"])
        for storage in args.storage:
            scsa_s = statistics.median(times[storage])
            print(json.dumps({"size": size, "steps": args.steps, "width": args.width, "storage": storage,
                              "threads": torch.get_num_threads(), "plain_s": round(plain_s, 2),
                              "scsa_s": round(scsa_s, 2), "ratio": round(scsa_s / plain_s, 2),
                              "features_mb": round(features[storage] / MB, 2)}), flush=True)


def _meta_unet(family: str):
    """A full-size SD1.5 or SDXL UNet on the meta device (structure only, no weights)."""
    import comfy.ops
    import comfy.supported_models as sm
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    common = dict(in_channels=4, out_channels=4, model_channels=320, use_checkpoint=False, image_size=32,
                  use_spatial_transformer=True, legacy=False, use_temporal_attention=False,
                  use_temporal_resblock=False)
    if family == "SD1.5":
        config = dict(tiny_models.sd15_unet_config(model_channels=320), num_heads=8)
    else:
        config = dict(common, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], use_linear_in_transformer=True,
                      transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                      transformer_depth_middle=10, context_dim=2048, adm_in_channels=2816,
                      num_classes="sequential", num_head_channels=64)
        assert sm.SDXL.unet_config["transformer_depth"] == [0, 0, 2, 2, 10, 10]  # ComfyUI's SDXL layout
    return UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)


def memory_table(pack, args) -> None:
    for family_name in ("SD1.5", "SDXL"):
        family = pack.families.UNetFamily(_meta_unet(family_name))
        keys = family.resolve_blocks("auto")
        for size in (256, 512, 768, 1024):
            bank = family.feature_bytes(keys, len(STREAMS), (size // 8, size // 8), args.steps, torch.float16)
            # The trajectories: every stream's latent at each inverted t and at 999, in fp32.
            trajectory = len(STREAMS) * (args.steps + 1) * 4 * (size // 8) ** 2 * 4
            print(json.dumps({"model": family_name, "size": size, "steps": args.steps, "blocks": len(keys),
                              "memory_or_offload_mb_fp16": round(bank / MB, 1),
                              "recompute_mb": round(trajectory / MB, 1)}), flush=True)

    # The estimate against what a full-size random SD1.5 records in a 2-step inversion.
    import comfy.model_management as mm
    import comfy.model_patcher
    full = tiny_models.build_sd15_model(tiny_models.sd15_unet_config(model_channels=320), seed=0)
    sd15 = comfy.model_patcher.ModelPatcher(full, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())
    latents = {name: latent["samples"] for name, latent in _latents(512).items()}
    keys = pack.families.family_of(sd15).resolve_blocks("auto")
    estimates = {"memory": pack.pipeline.feature_bytes(sd15, keys, latents, 2), "recompute": 0}
    for storage, estimate in estimates.items():
        inversion = pack.pipeline.invert(sd15, _conditioning(), latents, 2, "auto", storage)
        print(json.dumps({"check": "SD1.5 512 px, 2-step inversion", "storage": storage,
                          "dtype": str(inversion.bank.dtype), "bank_mb": round(inversion.bank.nbytes / MB, 1),
                          "estimate_mb": round(estimate / MB, 1),
                          "trajectory_mb": round(inversion.trajectory_bytes / MB, 2)}), flush=True)


def _peak_mb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / MB if device.type == "cuda" else None


# The real models' attention (heads, head dim, text tokens) for the one-call ratio: Flux.1-dev,
# Flux.2-dev, Qwen-Image, Z-Image-Turbo (caption padded to 32), SD3.5 Large (77 CLIP + 256 T5).
REAL_ATTENTION = {"flux1": (24, 128, 512), "flux2": (48, 128, 512), "qwen_image": (24, 128, 256),
                  "z_image": (30, 128, 128), "sd35": (38, 64, 333)}


def time_dit(pack, args) -> None:
    """``--family``: the whole run, a further content and one attention call, against plain."""
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    from scsa_core.block import SCSAParams
    from scsa_core.attention import pair_labels
    from scsa_core.joint_attention import JointReferences, scsa_joint_attention

    variant, size, steps = args.family, args.dit_size, args.steps
    patcher = tiny_models.build_tiny_dit_patcher(variant, seed=0)
    conditioning = tiny_models.tiny_dit_conditioning(variant)
    height = width = size // (16 if variant == "flux2" else 8)
    semantics = _semantics(pack.labels, size)
    device = comfy.model_management.get_torch_device()

    def latents(seed):
        return {name: tiny_models.tiny_dit_latent(variant, height, width, seed=seed * 100 + index)
                for index, name in enumerate(STREAMS)}

    style = {name: x for name, x in latents(0).items() if "style" in name}
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", steps).cpu()

    def plain():
        start = latents(1)["content"]
        return comfy.sample.sample_custom(patcher, start, 1.0, comfy.samplers.ksampler("euler"), sigmas,
                                          conditioning, conditioning, torch.zeros_like(start), disable_pbar=True)

    def scsa(seed, cache):
        contents = {name: x for name, x in latents(seed).items() if "content" in name}
        inversion = pack.pipeline.invert(patcher, conditioning, dict(contents, **style), steps, args.blocks, "auto",
                                         cache=cache)
        model = pack.diffusion_nodes.SCSAApply.execute(
            model=patcher, semantics=semantics, preset="default", sca_weight=0.8, ssa_weight=0.2,
            semantic_share=0.3, content_share=0.5, temperature=1.2, gamma=0.75).result[0]
        pack.pipeline.style_sample(model, inversion, "auto", "official")
        return inversion

    def line(what, ratio, peak, **extra):
        print(json.dumps({"family": variant, "what": what, "width": size, "height": size, "steps": steps,
                          "ratio": round(ratio, 2), "peak_mb": None if peak is None else round(peak, 1),
                          "threads": torch.get_num_threads(), "blocks": args.blocks,
                          "reference_rows": "kept" if args.keep_reference_rows else "stopped", **extra}), flush=True)

    if args.keep_reference_rows:   # the comparison: references ride through every block
        type(pack.families.family_of(patcher)).stop_reference_rows = False

    plain()  # warm-up
    times = {"plain": [], "run": [], "further": []}
    for repeat in range(args.repeats):
        cache = pack.style_reuse.StyleCache()
        times["plain"].append(_timed(plain)[1])
        times["run"].append(_timed(lambda: scsa(100 + repeat, cache))[1])
        further, seconds = _timed(lambda: scsa(200 + repeat, cache))
        assert set(further.reused) == {"style"}, further.reused
        times["further"].append(seconds)
    plain_s = statistics.median(times["plain"])
    for what in ("run", "further"):
        line(what, statistics.median(times[what]) / plain_s, None, plain_s=round(plain_s, 3),
             scsa_s=round(statistics.median(times[what]), 3))

    heads, dim, text = REAL_ATTENTION[variant]
    image = args.image_tokens
    g = torch.Generator().manual_seed(0)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    q, k, v = rand(1, heads, text + image, dim), rand(1, heads, text + image, dim), rand(1, heads, text + image, dim)
    refs = JointReferences(*(rand(heads, image, dim) for _ in range(4)), rand(heads, image, dim),
                           rand(heads, image, dim))
    labels = (torch.arange(image, device=device) * 2 // image).long()
    pairing = pair_labels(labels, labels)
    params = SCSAParams()

    def sdpa():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, :, text:]

    def joint():
        return scsa_joint_attention(q[:, :, text:], k[:, :, :text], v[:, :, :text], refs, labels, labels, pairing,
                                    params)

    results = {}
    for name, fn in (("plain", sdpa), ("scsa", joint)):
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples.append(time.perf_counter() - start)
        results[name] = (statistics.median(samples), _peak_mb(device))
    line("attention", results["scsa"][0] / results["plain"][0], results["scsa"][1], heads=heads, head_dim=dim,
         image_tokens=image, text_tokens=text, plain_s=round(results["plain"][0], 4),
         scsa_s=round(results["scsa"][0], 4), plain_peak_mb=results["plain"][1], dtype=str(dtype))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 256])
    parser.add_argument("--width", type=int, default=32, help="UNet model_channels (SD1.5: 320)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--storage", nargs="+", default=["memory", "recompute"],
                        choices=["memory", "offload", "recompute"])
    parser.add_argument("--memory-table", action="store_true")
    parser.add_argument("--reuse", type=int, nargs="*", default=[], metavar="SIZE",
                        help="time a further content with the same style (style inversion reused) at these sizes")
    parser.add_argument("--family", choices=list(tiny_models.DIT_VARIANTS),
                        help="time the DiT path instead (see above)")
    parser.add_argument("--dit-size", type=int, default=128, help="--family: image size in pixels")
    parser.add_argument("--blocks", default="auto", help="--family: SCSAInvert's blocks (e.g. \"double 0-1\")")
    parser.add_argument("--keep-reference-rows", action="store_true",
                        help="--family: let the references run through the blocks after the last injected one "
                             "(the comparison for stopping them there)")
    parser.add_argument("--image-tokens", type=int, default=4096,
                        help="--family: the attention call's image tokens (default: 1024 px)")
    args = parser.parse_args(argv)

    runtime = start_comfy(comfyui_path(), Path(tempfile.mkdtemp(prefix="scsa_bench_")))
    runtime.load_pack(REPO)
    pack = SimpleNamespace(**{name: pack_module(path) for name, path in (
        ("pipeline", "nodes/pipeline.py"), ("families", "nodes/families/__init__.py"),
        ("diffusion_nodes", "nodes/diffusion_nodes.py"), ("labels", "scsa_core/labels/__init__.py"),
        ("style_reuse", "nodes/style_reuse.py"))})
    with torch.inference_mode():
        if args.family:
            time_dit(pack, args)
            return
        if args.sizes:
            time_runs(pack, args)
        if args.reuse:
            time_reuse(pack, args)
        if args.memory_table:
            memory_table(pack, args)


if __name__ == "__main__":
    main()
