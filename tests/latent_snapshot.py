"""Bit-identity evidence for refactors: the latents of every UNet run kind, saved and compared.

    .venv/bin/python tests/latent_snapshot.py save  /tmp/before.pt   # on the old code
    .venv/bin/python tests/latent_snapshot.py check /tmp/before.pt   # on the new code

Runs SCSAInvert -> SCSAApply -> SCSAStyleSampler through the node classes on tiny random
SD1.5, SD2 (v-prediction) and SDXL UNets (tests/test_families.py's models), for SCSA and
StyleID, memory and recompute storage, both timestep modes, a style of another size, and
the cache's reuse of a style with a timing window: the graphs of the shipped SD1.5, SDXL and
StyleID workflows, node by node.
``check`` reports each run as torch.equal or by how much it differs, and exits 1 on any
difference. Not a test: its reference is whatever the old code produced on this machine.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]


def _runs():
    import tempfile

    from scripts import comfy_inprocess as inprocess
    from scripts import comfyui_runtime as rt
    runtime = inprocess.start_comfy(rt.comfyui_path(), tempfile.mkdtemp(prefix="scsa-snapshot-"))
    runtime.load_pack(REPO_ROOT)
    import test_families as families_test  # its tiny SD1.5 / SD2 / SDXL builders

    nodes = inprocess.pack_module("nodes/diffusion_nodes.py")
    labels = inprocess.pack_module("scsa_core/labels/__init__.py")
    cache = inprocess.pack_module("nodes/style_reuse.py").STYLE_CACHE
    masks = torch.zeros(2, 64, 48)
    masks[0, :32], masks[1, 32:] = 1, 1
    semantics = labels.labels_from_masks(masks, masks.flip(1), threshold=0.5)
    for family in ("sd15", "sd2", "sdxl"):
        patcher = families_test._patcher(family)
        generator = torch.Generator().manual_seed(4)
        latents = {name: {"samples": torch.randn(families_test.LATENT, generator=generator)}
                   for name in ("content", "style", "content_map", "style_map")}
        small_style = {"samples": torch.randn(1, 4, 12, 8, generator=generator)}
        cases = [("memory", latents), ("recompute", latents),
                 ("recompute-other-size", dict(latents, style=small_style,
                                               style_map={"samples": small_style["samples"].flip(-1)}))]
        for storage_name, given in cases:
            storage = storage_name.split("-")[0]
            cache.clear()
            with torch.inference_mode():
                inversion = nodes.SCSAInvert.execute(model=patcher, conditioning=families_test._conditioning(family),
                                                     steps=3, blocks="auto", storage=storage, **given).result[0]
                for method, extra in (("scsa", {"semantics": semantics}), ("styleid", {})):
                    model = nodes.SCSAApply.execute(model=patcher, preset="default", sca_weight=0.8, ssa_weight=0.2,
                                                    semantic_share=0.3, content_share=0.5, temperature=1.2,
                                                    gamma=0.75, **extra).result[0]
                    for timesteps in ("official", "aligned"):
                        latent = nodes.SCSAStyleSampler.execute(model=model, inversion=inversion, init="auto",
                                                                timesteps=timesteps).result[0]["samples"]
                        yield f"{family}/{storage_name}/{method}/{timesteps}", latent
        with torch.inference_mode():  # a cached style reused for a second content
            second = dict(latents, content={"samples": latents["content"]["samples"].flip(-1)})
            cache.clear()
            for round_ in ("first", "reused"):
                inversion = nodes.SCSAInvert.execute(model=patcher, conditioning=families_test._conditioning(family),
                                                     steps=3, blocks="auto", storage="memory",
                                                     **(latents if round_ == "first" else second)).result[0]
                model = nodes.SCSAApply.execute(model=patcher, semantics=semantics, preset="default",
                                                sca_weight=0.8, ssa_weight=0.2, semantic_share=0.3, content_share=0.5,
                                                temperature=1.2, gamma=0.75, start=0.2, end=0.9,
                                                strength_schedule="cosine").result[0]
                yield f"{family}/reuse-{round_}/window", nodes.SCSAStyleSampler.execute(
                    model=model, inversion=inversion, init="auto", timesteps="official").result[0]["samples"]


def main(argv):
    if len(argv) != 3 or argv[1] not in ("save", "check"):
        sys.exit(__doc__)
    mode, path = argv[1], Path(argv[2])
    latents = {}
    for name, latent in _runs():
        latents[name] = latent.clone()
        print(name, tuple(latent.shape), flush=True)
    if mode == "save":
        torch.save(latents, path)
        print(f"saved {len(latents)} latents to {path}")
        return 0
    before = torch.load(path)
    different = 0
    for name, latent in latents.items():
        old = before[name]
        if torch.equal(old, latent):
            print(f"EQUAL      {name}")
        else:
            different += 1
            rel = ((latent - old).norm() / old.norm()).item() if old.shape == latent.shape else float("nan")
            print(f"DIFFERENT  {name}: relative {rel:.3e}")
    missing = sorted(set(before) - set(latents))
    print(f"{len(latents) - different} of {len(latents)} torch.equal; missing: {missing or 'none'}")
    return 1 if different or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
