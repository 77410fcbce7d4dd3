"""Tiny random-weight models built from ComfyUI's own classes, for tests, benchmarks and the
runner's no-checkpoint fallback (importable without ComfyUI; it is imported lazily).

Weights are initialised explicitly with a seeded, order-independent normal init (ComfyUI's ops
leave them uninitialised): ``build_tiny_sd15_patcher``, ``build_tiny_vae``,
``write_tiny_checkpoint`` (a loadable SD1.5-detected checkpoint with TAESD and CLIP-L),
``build_tiny_flux_patcher`` / ``tiny_flux_conditioning`` (Flux.1 and Flux.2 layouts).
"""
from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_CACHE = REPO_ROOT / ".cache" / "models"

# Bump when the tiny checkpoint's layout or init changes: the file name carries it, so a stale
# cached file is never reused.
TINY_CKPT_VERSION = 1


def _key_seed(seed: int, key: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2 ** 63)


def init_weights_(module, seed: int = 0, prefix: str = ""):
    """Seeded normal init of every parameter, independent of module order; returns ``module``.

    Each tensor gets its own generator seeded from (seed, crc32(name)) (as in
    shared/oracle/make_checkpoint.py): weights with >= 2 dims N(0, 1/fan_in), embeddings N(0, 1),
    norm weights 1 + N(0, 0.1^2), other 1-d params (biases, norm biases) N(0, 0.05^2); scalars
    named ``vae_scale``/``vae_shift`` (TAESD) are set to 1 and 0. Non-zero "zero_module" layers
    make outputs input-dependent and let every attention layer matter.
    """
    import torch
    with torch.no_grad():
        for name, p in module.named_parameters():
            full = prefix + name
            if name.endswith("vae_scale"):
                p.fill_(1.0)
                continue
            if name.endswith("vae_shift"):
                p.fill_(0.0)
                continue
            g = torch.Generator(device="cpu").manual_seed(_key_seed(seed, full))
            z = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
            low = name.lower()
            if "embedding" in low and p.ndim == 2:
                v = z
            elif p.ndim >= 2:
                v = z / math.sqrt(max(1, math.prod(p.shape[1:])))
            elif p.ndim == 0:
                v = z * 0.05
            elif "norm" in low and name.endswith("weight"):
                v = 1.0 + 0.1 * z
            else:
                v = 0.05 * z
            p.copy_(v.to(p.dtype))
    return module


# SD1.5 layout (comfy format: transformer_depth per input res block, transformer_depth_output
# per output block, deepest first), at any width.
def sd15_unet_config(model_channels=32, context_dim=768, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                     attention_levels=(0, 1, 2), middle_attention=True):
    levels = len(channel_mult)
    td = [1 if lvl in attention_levels else 0 for lvl in range(levels) for _ in range(num_res_blocks)]
    tdo = [1 if lvl in attention_levels else 0 for lvl in range(levels) for _ in range(num_res_blocks + 1)]
    return dict(in_channels=4, out_channels=4, model_channels=model_channels,
                num_res_blocks=[num_res_blocks] * levels, channel_mult=list(channel_mult),
                transformer_depth=td, transformer_depth_output=tdo,
                transformer_depth_middle=1 if middle_attention else -1, context_dim=context_dim,
                use_linear_in_transformer=False, adm_in_channels=None, use_temporal_attention=False,
                use_temporal_resblock=False, use_checkpoint=False, image_size=32,
                use_spatial_transformer=True, legacy=False)


# Smallest UNet that ComfyUI's detection still calls SD15 (model_channels 320 and context 768 are
# checked; a transformer in an input block is needed for context_dim): one level, one res block,
# no middle block; attention in input block 1 and output blocks 0 and 1.
TINY_CKPT_UNET_CONFIG = dict(in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                             channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1],
                             transformer_depth_middle=-2, context_dim=768,
                             use_linear_in_transformer=False, adm_in_channels=None,
                             use_temporal_attention=False, use_temporal_resblock=False,
                             use_checkpoint=False, image_size=32, use_spatial_transformer=True,
                             legacy=False)


def build_sd15_model(unet_config: dict, seed: int = 0):
    """comfy.model_base.BaseModel (EPS, ModelSamplingDiscrete, SD15 latent format), fp32, CPU."""
    import torch
    import comfy.supported_models
    mc = comfy.supported_models.SD15(unet_config)
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({})
    init_weights_(model.diffusion_model, seed, prefix="model.diffusion_model.")
    model.eval()
    return model


def build_tiny_sd15_patcher(seed: int = 0, model_channels: int = 32, context_dim: int = 768):
    """ModelPatcher around a random-init SD1.5-structured UNet (4 levels, 2 res blocks, attention
    at levels 0-2 and middle, 8 heads) of width ``model_channels``: output blocks 0..11 and the
    attention layers ("input",1/2/4/5/7/8), ("middle",0), ("output",3..11) exist as in SD1.5.
    Default: 10.4 M params; a 16x16 latent step takes ~0.1 s on 2 CPU cores."""
    import comfy.model_management as mm
    import comfy.model_patcher
    model = build_sd15_model(sd15_unet_config(model_channels=model_channels, context_dim=context_dim), seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build_taesd(seed: int = 0, latent_channels: int = 4):
    """comfy.taesd.taesd.TAESD(latent_channels), random-init (vae_scale 1, vae_shift 0)."""
    import comfy.taesd.taesd
    t = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    init_weights_(t, seed, prefix="taesd.")
    return t.eval()


def build_tiny_vae(seed: int = 0):
    """comfy.sd.VAE around a random-init TAESD: 2.4 M params, encodes [B,H,W,3] -> [B,4,H/8,W/8]."""
    import comfy.sd
    return comfy.sd.VAE(sd=build_taesd(seed).state_dict())


def tiny_checkpoint_name(with_clip: bool = True, seed: int = 0) -> str:
    return f"sd15_tiny_v{TINY_CKPT_VERSION}_s{seed}{'' if with_clip else '_noclip'}.safetensors"


def build_tiny_checkpoint_state_dict(with_clip: bool = True, seed: int = 0) -> dict:
    """A single-file SD1.x checkpoint state dict (fp16): tiny UNet + TAESD VAE (+ CLIP-L)."""
    import torch
    sd = {}
    model = build_sd15_model(TINY_CKPT_UNET_CONFIG, seed)
    for k, v in model.diffusion_model.state_dict().items():
        sd["model.diffusion_model." + k] = v
    for k, v in build_taesd(seed).state_dict().items():
        sd["first_stage_model." + k] = v
    if with_clip:
        # The text encoder's size is fixed by comfy/sd1_clip_config.json (CLIP ViT-L/14 text,
        # 123 M params): a smaller one does not load, and missing keys would stay uninitialised.
        import comfy.sd1_clip
        clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
        init_weights_(clip, seed, prefix="clip.")
        for k, v in clip.state_dict().items():
            if k.endswith("logit_scale") or k.endswith("text_projection.weight"):
                continue
            assert k.startswith("clip_l."), k
            sd["cond_stage_model." + k[len("clip_l."):]] = v
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = \
            torch.arange(77, dtype=torch.int64)[None]
    return {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def _atomic_write_safetensors(sd: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(sd, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_tiny_checkpoint(path: str | os.PathLike | None = None, with_clip: bool = True,
                          seed: int = 0, force: bool = False) -> Path:
    """Write (once) a tiny SD1.5 checkpoint that CheckpointLoaderSimple loads and detects as SD15.

    UNet: 320 channels, one level (detection checks only model_channels 320 and context 768);
    VAE: TAESD keys under first_stage_model.; CLIP: full CLIP-L text encoder (random) unless
    ``with_clip=False`` (then the loader returns clip=None). fp16, deterministic for a given torch.
    Default location: .cache/models/<tiny_checkpoint_name()>; reused when present.
    """
    path = Path(path) if path else MODELS_CACHE / tiny_checkpoint_name(with_clip, seed)
    if path.is_file() and not force:
        return path
    sd = build_tiny_checkpoint_state_dict(with_clip=with_clip, seed=seed)
    import torch
    _atomic_write_safetensors(sd, path, metadata={
        "generator": "scripts/tiny_models.py write_tiny_checkpoint",
        "version": str(TINY_CKPT_VERSION), "seed": str(seed), "torch": torch.__version__})
    return path


# ------------------------------------------------------------------------------- Flux.1 / Flux.2
# Tiny Flux layouts, built through comfy.supported_models.Flux / Flux2 exactly as a loaded
# checkpoint would be (same model classes, same ModelType, latent format and sampling settings),
# at a width CPU tests can afford. Double and single block counts differ (2 vs 3) so that a test
# cannot confuse total_blocks of the two loops; head_dim 32 = sum(axes_dim) as Flux requires.
FLUX_TINY_HIDDEN = 64
FLUX_TINY_HEADS = 2
FLUX_TINY_CONTEXT_DIM = 32
FLUX_TINY_VEC_DIM = 32

_FLUX_TINY_CONFIGS = {
    # Flux.1 dev layout (model_detection: 3 RoPE axes, patch 2, 16-ch latent, qkv bias, pooled
    # CLIP vector, distilled guidance embedding).
    "flux1": dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=FLUX_TINY_VEC_DIM,
                  context_in_dim=FLUX_TINY_CONTEXT_DIM, hidden_size=FLUX_TINY_HIDDEN, mlp_ratio=2.0,
                  num_heads=FLUX_TINY_HEADS, depth=2, depth_single_blocks=3, axes_dim=[8, 12, 12],
                  theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True),
    # Flux.2 dev layout (model_detection: 4 RoPE axes with the text position on axis 3, patch 1,
    # 128-ch latent, global modulation, SiLU-gated MLP, no biases, no pooled vector).
    "flux2": dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None,
                  context_in_dim=FLUX_TINY_CONTEXT_DIM, hidden_size=FLUX_TINY_HIDDEN, mlp_ratio=3.0,
                  num_heads=FLUX_TINY_HEADS, depth=2, depth_single_blocks=3, axes_dim=[8, 8, 8, 8],
                  theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True,
                  global_modulation=True, mlp_silu_act=True, ops_bias=False,
                  default_ref_method="index", ref_index_scale=10.0),
}
# Only ComfyUI versions whose FluxParams has the field take it (0.33.0 requires it, 0.3.75 has no
# such field and hard-wires Flux.2's text positions to axis 3).
_FLUX_TXT_IDS_DIMS = {"flux1": [], "flux2": [3]}
FLUX_VARIANTS = tuple(_FLUX_TINY_CONFIGS)


class FluxVariantUnavailable(LookupError):
    """The running ComfyUI has no model class for this Flux variant."""


def _flux_supported_model_class(variant: str):
    import comfy.supported_models as sm
    name = {"flux1": "Flux", "flux2": "Flux2"}[variant]
    cls = getattr(sm, name, None)
    if cls is None:
        raise FluxVariantUnavailable(f"comfy.supported_models has no {name} in this ComfyUI")
    return cls


def tiny_flux_unet_config(variant: str = "flux1") -> dict:
    """The unet_config of the tiny ``variant`` ("flux1" | "flux2") for the running ComfyUI."""
    import dataclasses
    from comfy.ldm.flux.model import FluxParams
    if variant not in _FLUX_TINY_CONFIGS:
        raise ValueError(f"unknown Flux variant {variant!r}; expected one of {FLUX_VARIANTS}")
    config = dict(_FLUX_TINY_CONFIGS[variant])
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(FluxParams)}:
        config["txt_ids_dims"] = list(_FLUX_TXT_IDS_DIMS[variant])
    return config


def _init_flux_rmsnorm_scales_(module, seed: int, prefix: str):
    """QK-norm gains get the norm-weight init (1 + N(0, 0.1^2)) under the name ComfyUI 0.33.0 uses.

    0.3.75 names them ``..._norm.scale`` (its own RMSNorm), 0.33.0 ``..._norm.weight``
    (operations.RMSNorm), and init_weights_ would give a ``scale`` the near-zero bias init, which
    shrinks every q and k and flattens the attention. Seeding from the ``.weight`` name makes the
    tiny Flux.1 weights the same tensors on both versions.
    """
    import torch
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.endswith("_norm.scale"):
                continue
            as_weight = prefix + name[:-len(".scale")] + ".weight"
            g = torch.Generator(device="cpu").manual_seed(_key_seed(seed, as_weight))
            z = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
            p.copy_((1.0 + 0.1 * z).to(p.dtype))
    return module


def build_tiny_flux_model(variant: str = "flux1", seed: int = 0, stand_in: bool = False):
    """comfy.model_base.Flux / Flux2 (ModelType.FLUX: CONST + ModelSamplingFlux, shift 1.15 /
    2.02; latent format Flux / Flux2), random-init, fp32, CPU. Raises FluxVariantUnavailable
    when the running ComfyUI has no class for ``variant``. ``stand_in``: the runner's layout
    (:data:`_FLUX_STANDIN_LAYOUT`) instead of the tests' smaller one."""
    import torch
    config = tiny_flux_unet_config(variant)
    if stand_in:
        config.update(_FLUX_STANDIN_LAYOUT[variant])
    model_config = _flux_supported_model_class(variant)(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    init_weights_(model.diffusion_model, seed, prefix="model.diffusion_model.")
    _init_flux_rmsnorm_scales_(model.diffusion_model, seed, prefix="model.diffusion_model.")
    model.eval()
    return model


def build_tiny_flux_patcher(variant: str = "flux1", seed: int = 0, stand_in: bool = False):
    """ModelPatcher around a random-init Flux.1 ("flux1") or Flux.2 ("flux2") transformer:
    hidden 64, 2 heads of 32, 2 double + 3 single blocks.

    flux1: 16-ch latent, patch 2 (a [B,16,H,W] latent gives (H/2)*(W/2) image tokens), 3 RoPE
    axes; needs ``pooled_output`` [B,32]. flux2: 128-ch latent, patch 1 (H*W tokens), 4 RoPE axes,
    global modulation; text padded by ComfyUI to 512 tokens. Both embed guidance. Conditioning:
    ``tiny_flux_conditioning(variant)``.
    """
    import comfy.model_management as mm
    import comfy.model_patcher
    model = build_tiny_flux_model(variant, seed, stand_in)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


# The runner's stand-in Flux (scripts/standin_nodes): the real models' head dim (128, RoPE axes
# as ComfyUI's detection fixes them) and MLP ratio at a width of 256, and CLIP-L's text and pooled
# sizes (768), because its text encoder is the tiny checkpoint's CLIP-L loaded by ComfyUI's own
# CLIPLoader. No file of it is written: ComfyUI 0.3.75's detection fixes 24 heads (width 3072),
# so no tiny Flux file loads through Load Diffusion Model there.
_FLUX_STANDIN_LAYOUT = {
    "flux1": dict(hidden_size=256, num_heads=2, axes_dim=[16, 56, 56], mlp_ratio=4.0,
                  context_in_dim=768, vec_in_dim=768),
    "flux2": dict(hidden_size=256, num_heads=2, axes_dim=[32, 32, 32, 32], mlp_ratio=3.0,
                  context_in_dim=768),
}
FLUX_STANDIN_VERSION = 1


def write_flux_standin_files(variant: str, comfy_version: str, seed: int = 0,
                             folder: Path | None = None) -> dict[str, list[Path]]:
    """Write (once) the files ComfyUI's own loaders read for a stand-in Flux run: a random
    TAESD-layout VAE of the variant's latent channels (Load VAE) and a CLIP-L text encoder (Load
    CLIP, type stable_diffusion: the tiny SD1.5 checkpoint's). fp16, default location
    .cache/models. Returns ``{ComfyUI model folder: [paths]}``.

    From ComfyUI 0.33 on, TAESD with 128 channels is Flux.2's own tiny autoencoder (1/16 scale),
    which Load VAE builds only under the name ``taef2`` from ``vae_approx/taef2_encoder`` and
    ``taef2_decoder``; a single 128-channel file would load as another network. So there the VAE
    is that pair (folder ``vae_approx``), elsewhere one file (folder ``vae``). The names carry
    ``comfy_version`` (the running ComfyUI's), since a file fits the layout of its version.
    """
    import torch
    from safetensors.torch import load_file
    folder = Path(folder) if folder else MODELS_CACHE
    stem = f"{variant}_tiny_vae_v{FLUX_STANDIN_VERSION}_s{seed}_comfyui{comfy_version}"
    text_encoder = folder / f"clip_l_tiny_v{TINY_CKPT_VERSION}_s{seed}.safetensors"
    if not text_encoder.is_file():
        checkpoint = load_file(str(write_tiny_checkpoint(with_clip=True, seed=seed)))
        prefix = "cond_stage_model.transformer."
        _atomic_write_safetensors({k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)},
                                  text_encoder)
    pair = [folder / stem / f"taef2_{part}.safetensors" for part in ("encoder", "decoder")]
    single = folder / f"{stem}.safetensors"
    if all(path.is_file() for path in pair):   # built before: the layout is settled
        return {"vae_approx": pair, "text_encoders": [text_encoder]}
    if single.is_file():
        return {"vae": [single], "text_encoders": [text_encoder]}
    channels = tiny_flux_latent_channels(variant)
    vae = build_taesd(seed, latent_channels=channels)
    weights = {k: v.to(torch.float16).contiguous() for k, v in vae.state_dict().items()}
    if variant == "flux2" and weights["taesd_decoder.1.weight"].shape[1] != channels:
        for path, part in zip(pair, ("encoder", "decoder")):
            prefix = f"taesd_{part}."
            _atomic_write_safetensors({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, path)
        return {"vae_approx": pair, "text_encoders": [text_encoder]}
    _atomic_write_safetensors(weights, single)
    return {"vae": [single], "text_encoders": [text_encoder]}


def tiny_flux_latent_channels(variant: str = "flux1") -> int:
    return _FLUX_TINY_CONFIGS[variant]["in_channels"]


def tiny_flux_conditioning(variant: str = "flux1", seed: int = 0, tokens: int = 7,
                           guidance: float | None = 3.5, batch: int = 1):
    """ComfyUI conditioning for the tiny Flux: ``[[context [batch, tokens, 32], {...}]]``.

    The context is seeded N(0, 1) so the text pathway matters. Flux.1 gets a seeded
    ``pooled_output`` [batch, 32] (its vector_in); Flux.2 has no pooled vector and gets
    ``pooled_output: None``, as its text encoder gives (0.3.75's Flux.encode_adm indexes the key).
    ``guidance`` goes in explicitly: without the key model_base.Flux uses 3.5, None disables it.
    """
    import torch
    g = torch.Generator(device="cpu").manual_seed(_key_seed(seed, f"flux_conditioning.{variant}"))
    context = torch.randn((batch, tokens, FLUX_TINY_CONTEXT_DIM), generator=g)
    pooled = torch.randn((batch, FLUX_TINY_VEC_DIM), generator=g) if variant == "flux1" else None
    return [[context, {"pooled_output": pooled, "guidance": guidance}]]
