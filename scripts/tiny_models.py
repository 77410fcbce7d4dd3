"""Tiny random-weight models built from ComfyUI's own classes, for tests, benchmarks and the
runner's no-checkpoint fallback (importable without ComfyUI; it is imported lazily).

Weights are initialised explicitly with a seeded, order-independent normal init (ComfyUI's ops
leave them uninitialised): ``build_tiny_sd15_patcher``, ``build_tiny_vae``,
``write_tiny_checkpoint`` (a loadable SD1.5-detected checkpoint with TAESD and CLIP-L),
``build_tiny_flux_model`` / ``tiny_flux_conditioning`` (Flux.1 and Flux.2 layouts), and for
every DiT family (:data:`DIT_VARIANTS`: Flux.1, Flux.2, Qwen-Image, Z-Image, SD3.5)
``build_tiny_dit_patcher`` / ``tiny_dit_conditioning`` / ``tiny_dit_latent`` /
``write_dit_standin_files``.
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


class VariantUnavailable(LookupError):
    """The running ComfyUI has no model class (or no config key) for this DiT variant."""


class FluxVariantUnavailable(VariantUnavailable):
    """The running ComfyUI has no model class for this Flux variant (a VariantUnavailable)."""


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


# ----------------------------------------------------------------- Qwen-Image / Z-Image / SD3.5
# Tiny layouts of the other DiT families, built through comfy.supported_models exactly as a loaded
# checkpoint would be (model_base class, ModelType, latent format, sampling shift), fp32, CPU.
# Widths follow what each class hard-wires:
#   qwen_image  QwenImageTransformer2DModel: hidden 64 = 2 heads x 32, 3 joint blocks, RoPE axes
#               (8, 12, 12) (sum = head dim), patch 2 over a 16-channel 5-D latent (in_channels 64).
#   z_image     NextDiT with Z-Image's detected config (z_image_modulation, pad_tokens_multiple 32,
#               time_scale 1000, rope_theta 256, axes (32, 48, 48), ffn 8/3): z_image_modulation
#               fixes the timestep embedding at 256 wide and feeds min(dim, 256) into every adaLN,
#               so dim must be >= 256: hidden 256 = 2 heads x 128 (Z-Image's own head dim),
#               2 context-refiner + 2 noise-refiner layers, 3 main layers.
#   sd35        MMDiT (SD3.5 Medium-like: qk_norm "rms", MMDiT-X second image-only attention in
#               joint blocks 0-1, none in 2-3, last context block pre_only, a pos_embed table
#               cropped to the latent): MMDiT fixes head dim 64 and heads = depth, so depth 2 gives
#               hidden 128 = 2 heads x 64; num_blocks 4 (a real checkpoint has num_blocks = depth).
# Text features (and SD3's pooled vector) are DIT_TINY_CONTEXT_DIM wide in the tests' layout.
DIT_VARIANTS = ("flux1", "flux2", "qwen_image", "z_image", "sd35")
DIT_TINY_CONTEXT_DIM = 32
DIT_TINY_POOLED_DIM = 32

_DIT_TINY_CONFIGS = {
    "qwen_image": dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                       num_layers=3, attention_head_dim=32, num_attention_heads=2,
                       joint_attention_dim=DIT_TINY_CONTEXT_DIM, axes_dims_rope=[8, 12, 12]),
    "z_image": dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256,
                    cap_feat_dim=DIT_TINY_CONTEXT_DIM, n_layers=3, n_refiner_layers=2, n_heads=2,
                    n_kv_heads=2, qk_norm=True, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
                    rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True,
                    time_scale=1000.0, pad_tokens_multiple=32),
    "sd35": dict(in_channels=16, out_channels=16, patch_size=2, depth=2, num_blocks=4, input_size=None,
                 adm_in_channels=DIT_TINY_POOLED_DIM,
                 context_embedder_config={"target": "torch.nn.Linear",
                                          "params": {"in_features": DIT_TINY_CONTEXT_DIM, "out_features": 128}},
                 num_patches=64 * 64, pos_embed_max_size=64, qk_norm="rms", pos_embed_scaling_factor=None,
                 x_block_self_attn_layers=[0, 1]),
}

# The runner's stand-ins (scripts/standin_nodes): text encoder = the tiny checkpoint's CLIP-L
# (context 768, pooled 768), the real models' head dims where the class allows it.
_DIT_STANDIN_LAYOUT = {
    "qwen_image": dict(attention_head_dim=128, num_attention_heads=2, joint_attention_dim=768,
                       axes_dims_rope=[16, 56, 56]),
    "z_image": dict(cap_feat_dim=768),
    "sd35": dict(depth=4, adm_in_channels=768,
                 context_embedder_config={"target": "torch.nn.Linear",
                                          "params": {"in_features": 768, "out_features": 256}},
                 num_patches=128 * 128, pos_embed_max_size=128),
}

# comfy.supported_models class, the diffusion model class (module, name) and the constructor
# arguments the tiny config relies on, per variant.
_DIT_CLASSES = {
    "qwen_image": ("QwenImage", "comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel",
                   ("num_layers", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                    "axes_dims_rope")),
    "z_image": ("ZImage", "comfy.ldm.lumina.model", "NextDiT",
                ("pad_tokens_multiple", "z_image_modulation", "time_scale", "n_refiner_layers", "qk_norm")),
    "sd35": ("SD3", "comfy.ldm.modules.diffusionmodules.mmdit", "MMDiT",
             ("x_block_self_attn_layers", "qk_norm", "num_blocks", "pos_embed_max_size", "num_patches")),
}
_DIT_LATENT_CHANNELS = {"qwen_image": 16, "z_image": 16, "sd35": 16}


def _check_variant(variant: str) -> None:
    if variant not in DIT_VARIANTS:
        raise ValueError(f"unknown DiT variant {variant!r}; expected one of {DIT_VARIANTS}")


def _dit_supported_model_class(variant: str):
    """comfy.supported_models.<Class> for ``variant``; VariantUnavailable with the reason when the
    running ComfyUI lacks it, its diffusion model class, or a constructor argument the tiny
    config needs."""
    import importlib
    import inspect
    import comfy.supported_models as sm
    name, module_name, model_name, needed = _DIT_CLASSES[variant]
    cls = getattr(sm, name, None)
    if cls is None:
        raise VariantUnavailable(f"comfy.supported_models has no {name} in this ComfyUI")
    try:
        model_cls = getattr(importlib.import_module(module_name), model_name)
    except (ImportError, AttributeError) as e:
        raise VariantUnavailable(f"{module_name}.{model_name} is missing in this ComfyUI ({e})") from e
    params = inspect.signature(model_cls.__init__).parameters
    missing = [key for key in needed if key not in params]
    if missing:
        raise VariantUnavailable(f"{module_name}.{model_name} takes no {', '.join(missing)} in this ComfyUI")
    return cls


def tiny_dit_unet_config(variant: str, stand_in: bool = False) -> dict:
    """The unet_config of the tiny ``variant`` (any of :data:`DIT_VARIANTS`) for the running ComfyUI."""
    import copy
    _check_variant(variant)
    if variant in FLUX_VARIANTS:
        config = tiny_flux_unet_config(variant)
        if stand_in:
            config.update(_FLUX_STANDIN_LAYOUT[variant])
        return config
    config = copy.deepcopy(_DIT_TINY_CONFIGS[variant])
    if stand_in:
        config.update(copy.deepcopy(_DIT_STANDIN_LAYOUT[variant]))
    return config


def _init_norm_gains_(module, seed: int, prefix: str):
    """Every affine gain of a normalisation layer (a module whose class name ends in "Norm": comfy
    ops' RMSNorm / LayerNorm, MMDiT's own RMSNorm) gets the norm-weight init 1 + N(0, 0.1^2),
    seeded from its name. init_weights_ recognises norm gains by "norm" in the parameter name
    only, and would give e.g. MMDiT's ``attn.ln_q.weight`` or NextDiT's ``cap_embedder.0.weight``
    the near-zero bias init (collapsing q, k or the caption)."""
    import torch
    with torch.no_grad():
        for module_name, sub in module.named_modules():
            if not type(sub).__name__.endswith("Norm"):
                continue
            for param_name in ("weight", "scale"):
                p = getattr(sub, param_name, None)
                if not isinstance(p, torch.nn.Parameter) or p.ndim != 1:
                    continue
                full = prefix + (f"{module_name}." if module_name else "") + "weight"
                g = torch.Generator(device="cpu").manual_seed(_key_seed(seed, full))
                z = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
                p.copy_((1.0 + 0.1 * z).to(p.dtype))
    return module


def _init_dit_extras_(variant: str, diffusion_model, seed: int, prefix: str):
    """What init_weights_ cannot know: Z-Image's pad tokens (created with torch.empty; N(0, 1) like
    an embedded token, so padding rows are distinguishable from image rows) and SD3's pos_embed
    buffer (torch.empty; set to the fixed 2-D sin-cos table of the original SD3 code)."""
    import torch
    with torch.no_grad():
        if variant == "z_image":
            for name in ("x_pad_token", "cap_pad_token"):
                p = getattr(diffusion_model, name, None)
                if p is None:
                    continue
                g = torch.Generator(device="cpu").manual_seed(_key_seed(seed, prefix + name))
                p.copy_(torch.randn(tuple(p.shape), generator=g, dtype=torch.float32).to(p.dtype))
        if variant == "sd35" and getattr(diffusion_model, "pos_embed", None) is not None:
            from comfy.ldm.modules.diffusionmodules import mmdit
            size = diffusion_model.pos_embed_max_size
            table = mmdit.get_2d_sincos_pos_embed(diffusion_model.hidden_size, size)
            diffusion_model.pos_embed.copy_(torch.from_numpy(table).to(diffusion_model.pos_embed.dtype)[None])
    return diffusion_model


def build_tiny_dit_model(variant: str, seed: int = 0, stand_in: bool = False, overrides: dict | None = None):
    """comfy.model_base.<Family> of the tiny ``variant``, random-init, fp32, CPU (flux variants:
    :func:`build_tiny_flux_model`). ``overrides`` update the unet_config (tests only, e.g.
    ``{"n_kv_heads": 1}`` for a grouped-query Z-Image). Raises VariantUnavailable with the reason
    when the running ComfyUI lacks the class or a config key."""
    import torch
    _check_variant(variant)
    if variant in FLUX_VARIANTS and not overrides:
        return build_tiny_flux_model(variant, seed, stand_in)
    config = tiny_dit_unet_config(variant, stand_in)
    config.update(overrides or {})
    if variant in FLUX_VARIANTS:
        model_config = _flux_supported_model_class(variant)(config)
    else:
        model_config = _dit_supported_model_class(variant)(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    prefix = "model.diffusion_model."
    init_weights_(model.diffusion_model, seed, prefix=prefix)
    if variant in FLUX_VARIANTS:
        _init_flux_rmsnorm_scales_(model.diffusion_model, seed, prefix=prefix)
    else:
        _init_norm_gains_(model.diffusion_model, seed, prefix=prefix)
        _init_dit_extras_(variant, model.diffusion_model, seed, prefix=prefix)
    model.eval()
    return model


def build_tiny_dit_patcher(variant: str, seed: int = 0, stand_in: bool = False):
    """ModelPatcher around the tiny random-init transformer of ``variant`` (:data:`DIT_VARIANTS`).

    flux1 / flux2 (:func:`build_tiny_flux_model`): hidden 64, 2 heads of 32, 2 double + 3 single
    blocks; flux1 a 16-ch latent, patch 2, 3 RoPE axes, ``pooled_output`` [B,32]; flux2 a 128-ch
    latent, patch 1, 4 RoPE axes, global modulation, text padded by ComfyUI to 512 tokens; both
    embed guidance. qwen_image: model_base.QwenImage (ModelType.FLUX,
    shift 1.15, latent format Wan21: 16 channels, 5-D), 3 joint blocks. z_image: model_base.Lumina2
    via supported_models.ZImage (FLOW, shift 3, latent format Flux: 16 channels), 2+2 refiner and
    3 main layers. sd35: model_base.SD3 (FLOW, shift 3, latent format SD3), 4 joint blocks, MMDiT-X
    in 0-1. Conditioning: :func:`tiny_dit_conditioning`; latent: :func:`tiny_dit_latent`.
    ``stand_in``: the runner's layout (CLIP-L text and pooled sizes, 768). Raises
    VariantUnavailable when the running ComfyUI lacks the class.
    """
    import comfy.model_management as mm
    import comfy.model_patcher
    model = build_tiny_dit_model(variant, seed, stand_in)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_dit_latent_channels(variant: str) -> int:
    _check_variant(variant)
    if variant in FLUX_VARIANTS:
        return tiny_flux_latent_channels(variant)
    return _DIT_LATENT_CHANNELS[variant]


def tiny_dit_latent(variant: str, height: int, width: int, seed: int | None = 0, batch: int = 1):
    """The latent ``samples`` tensor as ComfyUI's nodes hand it to the sampler for ``variant``, at
    ``height`` x ``width`` latent pixels: seeded N(0, 1) (``seed=None``: zeros, an empty latent).

    flux1 / z_image / sd35 [B, 16, H, W]; flux2 [B, 128, H, W]; qwen_image [B, 16, 1, H, W].
    Qwen-Image: ComfyUI's graph makes the latent with EmptySD3LatentImage, which is 4-D
    [B, 16, H, W] (the Wan VAE's encode gives 5-D [B, 16, T, H, W]); KSampler / SamplerCustom /
    SamplerCustomAdvanced then call comfy.sample.fix_empty_latent_channels, which unsqueezes any
    4-D latent to [B, 16, 1, H, W] because the Wan21 latent format has latent_dimensions 3. The
    sampler therefore always sees 5-D, and model_base.QwenImage needs it: the Wan21
    process_in/process_out broadcast per-channel statistics shaped [1, 16, 1, 1, 1] and the
    transformer's process_img unpacks (b, c, t, h, w). This function returns that 5-D tensor
    (T = 1), which comfy.sample.sample_custom takes as is.
    """
    import torch
    channels = tiny_dit_latent_channels(variant)
    shape = (batch, channels, 1, height, width) if variant == "qwen_image" else (batch, channels, height, width)
    if seed is None:
        return torch.zeros(shape)
    g = torch.Generator(device="cpu").manual_seed(_key_seed(seed, f"dit_latent.{variant}"))
    return torch.randn(shape, generator=g)


def tiny_dit_conditioning(variant: str, seed: int = 0, tokens: int = 7, batch: int = 1):
    """ComfyUI conditioning ``[[context [batch, tokens, 32], {...}]]`` for the tiny ``variant``
    (flux1 / flux2: :func:`tiny_flux_conditioning`, guidance 3.5), with what the family's
    model_base extra_conds read from a real text encoder's output:

    qwen_image: nothing more (QwenImage.extra_conds reads cross_attn, and from 0.33.0 an
      ``attention_mask``, but ComfyUI's Qwen text encoder drops a mask with no masked token).
    z_image: ``attention_mask`` of ones [batch, tokens], as ComfyUI's Z-Image (Qwen3) encoder
      returns; Lumina2.extra_conds turns it into num_tokens (the model requires the argument)
      and passes no mask on, since nothing is masked.
    sd35: ``pooled_output`` [batch, 32] (SD3.encode_adm reads it unconditionally: the y vector).
    """
    import torch
    _check_variant(variant)
    if variant in FLUX_VARIANTS:
        return tiny_flux_conditioning(variant, seed=seed, tokens=tokens, batch=batch)
    g = torch.Generator(device="cpu").manual_seed(_key_seed(seed, f"dit_conditioning.{variant}"))
    context = torch.randn((batch, tokens, DIT_TINY_CONTEXT_DIM), generator=g)
    if variant == "z_image":
        return [[context, {"attention_mask": torch.ones((batch, tokens), dtype=torch.long)}]]
    if variant == "sd35":
        return [[context, {"pooled_output": torch.randn((batch, DIT_TINY_POOLED_DIM), generator=g)}]]
    return [[context, {}]]


DIT_STANDIN_VERSION = 1


def build_taehv(seed: int = 0, latent_channels: int = 16):
    """comfy.taesd.taehv.TAEHV(latent_channels) (the taew2_1 / lighttaew2_1 layout), random-init."""
    import comfy.taesd.taehv
    t = comfy.taesd.taehv.TAEHV(latent_channels=latent_channels)
    init_weights_(t, seed, prefix="taehv.")
    return t.eval()


def write_dit_standin_files(variant: str, comfy_version: str, seed: int = 0,
                            folder: Path | None = None) -> dict[str, list[Path]]:
    """Write (once) the files ComfyUI's own loaders read for a stand-in run of ``variant``:
    the CLIP-L text encoder (Load CLIP, type stable_diffusion) and a random tiny VAE of the
    family's latent channels (Load VAE). Returns ``{ComfyUI model folder: [paths]}``.

    flux1 / flux2: :func:`write_flux_standin_files`. z_image / sd35: the same files as flux1 (a
    16-channel TAESD-layout VAE, 4-D latents). qwen_image: its sampler output is 5-D
    [B, 16, 1, H, W] (see :func:`tiny_dit_latent`), which ComfyUI 0.3.75 cannot decode with a
    TAESD (its 2-D convolutions get the 5-D tensor; 0.33.0's VAE.decode does take it), so
    its VAE is a random 16-channel TAEHV (ComfyUI's taew2_1 layout: Load VAE detects
    it by ``decoder.22.bias``, 3-D latents, 8x spatial; written fp32, which ComfyUI reads as
    lighttaew2_1 with no latent scaling). The diffusion models are built in-process by
    :func:`build_tiny_dit_patcher` (``stand_in=True``); no file of them is written.
    """
    import torch
    _check_variant(variant)
    folder = Path(folder) if folder else MODELS_CACHE
    if variant in FLUX_VARIANTS:
        return write_flux_standin_files(variant, comfy_version, seed=seed, folder=folder)
    shared = write_flux_standin_files("flux1", comfy_version, seed=seed, folder=folder)
    if variant != "qwen_image":
        return shared
    path = folder / f"qwen_image_tiny_taew2_1_v{DIT_STANDIN_VERSION}_s{seed}_comfyui{comfy_version}.safetensors"
    if not path.is_file():
        vae = build_taehv(seed, latent_channels=_DIT_LATENT_CHANNELS[variant])
        _atomic_write_safetensors({k: v.to(torch.float32).contiguous() for k, v in vae.state_dict().items()}, path)
    return {"vae": [path], "text_encoders": list(shared["text_encoders"])}
