"""The diffusion nodes: SCSAInvert, SCSAApply, SCSAStyleSampler (StyleID-style injection).

  Load Checkpoint -> SCSAInvert(content, style, map latents) -----------> INVERSION
  Load Checkpoint -> SCSAApply(semantics, weights) -> SCSAStyleSampler(inversion) -> LATENT

SCSAInvert takes the *unpatched* model, so changing SCSAApply's weights or the sampler's
settings re-runs sampling only: ComfyUI keeps the inversion in its cache. Each node checks its
sockets and makes one call into ``nodes/pipeline.py``, where the runs live.
"""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..scsa_core.block import SCSAParams
from ..scsa_core.presets import PRESETS
from ..scsa_core.rope import ROPE_MODES
from ..scsa_core.schedules import STRENGTH_SCHEDULES, TIMESTEP_MODES, InjectionTiming
from .families import family_of
from .injection import SETTINGS_KEY, ApplySettings, StyleIDParams
from ..scsa_core.styles import MAP_OF, STREAMS, STYLE_IMAGES, STYLE_NUMBERS, numbered
from .pipeline import INIT_MODES, STORAGE_MODES, invert, style_sample
from .style_reuse import MISSING_MAP_KEY, saved_style_of
from .semantic_nodes import CATEGORY, Semantics

Inversion = io.Custom("SCSA_INVERSION")
# One style's inversion (style_reuse.InvertedStyle): Load Style Inversion's output, SCSAInvert's
# inverted_style inputs. (Its style LATENT output carries the same value, for graphs made before.)
StyleInversion = io.Custom("SCSA_STYLE_INVERSION")


def _latent(latent: dict | None, name: str) -> torch.Tensor | None:
    if latent is None:
        return None
    if MISSING_MAP_KEY in latent:
        raise ValueError(f"{name}: {latent[MISSING_MAP_KEY]}")
    samples = latent["samples"]
    # 5-D: a video VAE's latent of one frame, [1, C, 1, H, W] (Qwen-Image's Wan 2.1 VAE)
    if not (samples.dim() == 4 or (samples.dim() == 5 and samples.shape[2] == 1)):
        raise ValueError(f"{name}: expected an image latent [batch, channels, height, width] (or one video frame, "
                         f"[batch, channels, 1, height, width]), got {tuple(samples.shape)}")
    if samples.shape[0] != 1:
        raise ValueError(f"{name}: has a batch of {samples.shape[0]} images; SCSAInvert takes one image per "
                         "input. Use 'Latent From Batch' to pick one.")
    return samples


class SCSAInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSAInvert", display_name="Invert Content & Style (SCSA)", category=CATEGORY,
            description="DDIM-inverts the content, style and semantic-map latents (one batch per image "
                        "size) and records the self-attention features that SCSAStyleSampler injects. Up to "
                        "four style images (style_2 .. style_4, each with its map). A style inverted before "
                        "with the same model and settings (a new content with the same style, or a style from "
                        "Load Style Inversion) is not inverted again. Connect the model straight from Load "
                        "Checkpoint (not from SCSAApply), so tweaking SCSAApply or the sampler re-runs "
                        "sampling only.",
            inputs=[
                io.Model.Input("model", tooltip="The unpatched model (from Load Checkpoint / LoRA loaders)."),
                io.Conditioning.Input("conditioning", tooltip="The empty prompt: CLIP Text Encode with no text."),
                io.Latent.Input("content", tooltip="VAE-encoded content image."),
                io.Latent.Input("style", optional=True,
                                tooltip="VAE-encoded style image (any size; its map must match it). Or leave it "
                                        "unconnected and connect inverted_style from Load Style Inversion (SCSA)."),
                io.Latent.Input("content_map", optional=True,
                                tooltip="VAE-encoded content semantic map (the colour map image). Needed for SCSA."),
                io.Latent.Input("style_map", optional=True,
                                tooltip="VAE-encoded style semantic map. Needed for SCSA."),
                io.Int.Input("steps", default=50, min=2, max=1000,
                             tooltip="DDIM steps of the inversion and of the sampling (StyleID/SCSA use 50)."),
                io.String.Input("blocks", default="auto",
                                tooltip='Where features are recorded and later injected. "auto": the decoder\'s '
                                        'two finest attention levels (SD1.x: output 6-11). Or e.g. "output 6-11".'),
                io.Combo.Input("storage", options=list(STORAGE_MODES), default="auto", optional=True,
                               tooltip="Where the recorded features live (SD1.5, 512 px, 50 steps: about 2.2 GB "
                                       "in fp16). memory: GPU, fastest. offload: CPU RAM. recompute: keeps only "
                                       "the inverted latents (a few MB) and recomputes the features while "
                                       "sampling, in the same batch (the whole run takes about 1.6x longer). "
                                       "auto: memory if it fits easily, else offload, else recompute. All give "
                                       "the same image."),
                # Appended, optional: saved workflows keep their inputs and their image.
                *[input_ for number in STYLE_NUMBERS[1:] for input_ in (
                    io.Latent.Input(numbered("style", number), optional=True,
                                    tooltip=f"Style image {number} (VAE-encoded), for several styles by region: "
                                            "a content region takes its style from every style image whose "
                                            "map has that region's colour. Give SCSASemanticPair its map as "
                                            f"{numbered('style_map', number)}."),
                    io.Latent.Input(numbered("style_map", number), optional=True,
                                    tooltip=f"VAE-encoded semantic map of style image {number}."))],
                io.Int.Input("refine_steps", default=0, min=0, max=10, optional=True,
                             tooltip="DiTs (flow models: Flux, Qwen-Image, Z-Image, SD3.5; experimental): fixed-point refinements per inversion "
                                     "step, so that sampling retraces the inversion more exactly. Each costs "
                                     "one more model call per step. UNet models ignore it (DDIM inversion)."),
                *[StyleInversion.Input(numbered("inverted_style", number), optional=True,
                                       tooltip=f"Style image {number}'s inversion from Load Style Inversion (SCSA), "
                                               f"instead of its latents: it is not inverted again (checked against "
                                               f"this model first)." if number > 1 else
                                               "The style's inversion from Load Style Inversion (SCSA), instead of "
                                               "the style and style_map latents: it is not inverted again (checked "
                                               "against this model first).")
                  for number in STYLE_NUMBERS],
            ],
            outputs=[Inversion.Output("inversion", display_name="inversion")],
        )

    @classmethod
    def execute(cls, model, conditioning, content, steps, blocks, style=None, content_map=None, style_map=None,
                storage="auto", refine_steps=0, **more_styles):
        given = {"content": content, "style": style, "content_map": content_map, "style_map": style_map,
                 **more_styles}
        latents = {name: _latent(given.get(name), name) for name in STREAMS}
        inverted = {}
        for number, name in zip(STYLE_NUMBERS, STYLE_IMAGES):
            style_inversion = given.get(numbered("inverted_style", number))
            if style_inversion is None:
                continue
            if latents[name] is not None:
                raise ValueError(f"{name} / {numbered('inverted_style', number)}: connect the style's latent or its "
                                 "inversion from Load Style Inversion, not both.")
            inverted[name] = style_inversion
            latents[name] = style_inversion.latent
            latents[MAP_OF[name]] = style_inversion.map_latent if latents[MAP_OF[name]] is None \
                else latents[MAP_OF[name]]
        if latents["style"] is None:
            raise ValueError("style: connect the VAE-encoded style image, or inverted_style from Load Style "
                             "Inversion (SCSA).")
        if (latents["content_map"] is None) != (latents["style_map"] is None):
            raise ValueError("content_map / style_map: connect both semantic map latents, or neither (StyleID).")
        for before, image in zip(STYLE_IMAGES[1:], STYLE_IMAGES[2:]):
            if latents[before] is None and latents[image] is not None:
                raise ValueError(f"{image}: connected while {before} is not. Connect the style images in order "
                                 f"({', '.join(STYLE_IMAGES)}).")
        saved = {name: attached for name in STYLE_IMAGES
                 if (attached := saved_style_of(given.get(name), latents[name], latents[MAP_OF[name]], name))}
        saved.update(inverted)
        return io.NodeOutput(invert(model, conditioning, latents, steps, blocks, storage, saved_styles=saved,
                                    refine_steps=refine_steps))


class SCSAApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSAApply", display_name="Apply SCSA", category=CATEGORY,
            description="Patches a copy of the model's self-attention with SCSA (with semantics) or StyleID "
                        "(without). The input model is not changed; with a stock KSampler the patched model "
                        "behaves exactly like the original.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (from Load Checkpoint or LoRA loaders). "
                                                "Use the same base model as SCSAInvert."),
                Semantics.Input("semantics", optional=True,
                                tooltip="From SCSASemanticPair or SCSASemanticFromMasks. Without it: StyleID."),
                io.Combo.Input("preset", options=list(PRESETS), default="default",
                               tooltip="default: the paper's maths with its defects fixed (regions missing "
                                       "from the style use the whole style). official: reproduces the "
                                       "official code exactly, quirks included."),
                io.Float.Input("sca_weight", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="t1: weight of continuous attention (smooth, region-wise style)."),
                io.Float.Input("ssa_weight", default=0.2, min=0.0, max=2.0, step=0.05,
                               tooltip="t2: weight of sparse attention (sharp textures copied from the "
                                       "best-matching style spot of the same region)."),
                io.Float.Input("semantic_share", default=0.3, min=0.0, max=1.0, step=0.05,
                               tooltip="a1: how much the semantic maps' features steer continuous attention."),
                io.Float.Input("content_share", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="a2: share of the content image (vs the current latent) in sparse "
                                       "attention's query. Higher keeps more content structure."),
                io.Float.Input("temperature", default=1.2, min=0.1, max=5.0, step=0.05,
                               tooltip="T: sharpens SCSA's continuous attention (> 1 = stronger style)."),
                io.Float.Input("gamma", default=0.75, min=0.0, max=1.0, step=0.05,
                               tooltip="StyleID mode (no semantics): share of the content query. Higher "
                                       "preserves content."),
                io.Float.Input("styleid_temperature", default=1.5, min=0.1, max=5.0, step=0.05, optional=True,
                               tooltip="StyleID mode: attention temperature (StyleID's default 1.5)."),
                # Appended, optional, defaults = the papers' injection: saved workflows keep their image.
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Fraction of the sampling steps where injection begins (like "
                                       "ControlNet's start percent). Steps before it run the model's own "
                                       "self-attention. 0: from the first step."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Fraction of the sampling steps where injection stops; later steps "
                                       "run the model's own self-attention (lower: the last steps refine "
                                       "with the model's own detail). 1: to the last step. start = end: "
                                       "no injection."),
                io.Combo.Input("strength_schedule", options=list(STRENGTH_SCHEDULES), default="constant",
                               optional=True,
                               tooltip="Injection strength over the injected steps. constant: full strength "
                                       "throughout (the papers'). linear / cosine: decays from full strength "
                                       "towards the model's own attention at end (SCA and SSA weights, or "
                                       "StyleID's share, times 1 - p or (1 + cos(pi p)) / 2)."),
                io.Combo.Input("rope_mode", options=list(ROPE_MODES), default="shift", optional=True,
                               tooltip="DiT models with RoPE (Flux, Qwen-Image, Z-Image; experimental; SD3 has none): shift places the style's "
                                       "tokens one image width beside the content's, so a content token does "
                                       "not copy the style token at its own coordinates; shared keeps them at "
                                       "the same positions. UNet models ignore it."),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, start=0.0, end=1.0):
        # Refuse a bad window when the prompt is queued, before SCSAInvert spends minutes. A value
        # that arrives through a link is not known yet (None); execute checks it.
        if not all(isinstance(value, (int, float)) for value in (start, end)):
            return True
        try:
            InjectionTiming(start=start, end=end)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model, preset, sca_weight, ssa_weight, semantic_share, content_share, temperature,
                gamma, semantics=None, styleid_temperature=1.5, start=0.0, end=1.0,
                strength_schedule="constant", rope_mode="shift"):
        family_of(model)  # an unsupported model fails here, not at sampling time
        settings = ApplySettings(
            semantics=semantics,
            params=SCSAParams(preset=preset, sca_weight=sca_weight, ssa_weight=ssa_weight,
                              semantic_share=semantic_share, content_share=content_share,
                              temperature=temperature),
            styleid=StyleIDParams(gamma=gamma, temperature=styleid_temperature),
            timing=InjectionTiming(start=start, end=end, strength_schedule=strength_schedule),
            rope_mode=rope_mode)
        # Only the settings go on the clone: SCSAStyleSampler patches self-attention on its own
        # clone, on the blocks the inversion recorded, so any other sampler sees the model as is.
        patched = model.clone()
        patched.set_attachments(SETTINGS_KEY, settings)
        return io.NodeOutput(patched)


class SCSAStyleSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSAStyleSampler", display_name="Style Sampler (SCSA)", category=CATEGORY,
            description="Denoises from the inverted content with the style features injected into the "
                        "blocks SCSAInvert recorded. Decode the result with VAE Decode.",
            inputs=[
                io.Model.Input("model", tooltip="The model from SCSAApply."),
                Inversion.Input("inversion", tooltip="From SCSAInvert, on the same base model."),
                io.Combo.Input("init", options=list(INIT_MODES), default="auto",
                               tooltip="Starting latent: semantic AdaIN (region-wise colour statistics of "
                                       "the style; SCSA's), AdaIN (global; StyleID's), none (the inverted "
                                       "content). auto: semantic AdaIN with semantics, else AdaIN."),
                io.Combo.Input("timesteps", options=list(TIMESTEP_MODES), default="official",
                               tooltip="official: StyleID's schedule (skips the first step, as the papers "
                                       "did). aligned: starts at the first inverted step, one step more."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent")],
        )

    @classmethod
    def execute(cls, model, inversion, init, timesteps):
        return io.NodeOutput({"samples": style_sample(model, inversion, init, timesteps)})


NODES = [SCSAInvert, SCSAApply, SCSAStyleSampler]
