"""The two runs of the pack: :func:`invert` (SCSAInvert) and :func:`style_sample` (SCSAStyleSampler).

Everything a run decides lives here: where features are stored, how the streams are batched,
the one-step bank and reference recomputation of ``recompute`` storage, and the starting
latent. The nodes validate their sockets and make one call; the tests and benchmarks call
these functions too.

  invert:        latents -> family_of(model).resolve_blocks -> choose_storage
                 -> styles known already (a saved file, checked; or STYLE_CACHE) are adopted
                 -> run_sampler(parameterisation.invert) with a RecordRun per latent size
                    (the rest), on the model's own sigmas (parameterisation.plan_inversion)
                 -> SCSAInversion; the newly inverted styles go into STYLE_CACHE
  style_sample:  SCSAInversion + apply_settings(model) -> initial_latent
                 -> run_sampler(parameterisation.sample) with an InjectRun (+ RecordRun for a
                    style of another size under recompute storage) -> latent
                 each step: the loop's before_step tells the InjectRun its index, which
                 picks the step's strength from SCSAApply's timing (0: plain attention)

The family (``nodes/families``) decides everything model-specific: blocks, hooks, and through
its parameterisation the sigmas, the loops and how the start latent enters ComfyUI.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.sample
import comfy.utils

from ..scsa_core.adain import adain, semantic_adain
from ..scsa_core.features import FeatureBank
from ..scsa_core.styles import MAP_OF, STREAMS, STYLE_IMAGES
from .families import family_names, family_of
from .injection import ApplySettings, InjectRun, RecordRun, apply_settings, check_style_count, grid_labels
from .sampling import preview_reporter, run_sampler
from .style_reuse import MODEL_CHECK_TOLERANCE, STYLE_CACHE, InvertedStyle, StyleCache
from .validation import check_conditioning, inversion_batches, log_map_sizes

log = logging.getLogger("scsa")

STORAGE_MODES = ("auto", "memory", "offload", "recompute")
INIT_MODES = ("auto", "semantic AdaIN", "AdaIN", "none")


@dataclass(frozen=True)
class SCSAInversion:
    """What SCSAInvert hands to SCSAStyleSampler (read-only once built)."""
    bank: FeatureBank         # recorded block inputs; empty with recompute storage
    trajectory: dict          # step key -> {stream: [1, C, h, w]} latents in the model's scaled space
    streams: tuple            # the inverted streams, from scsa_core.styles.STREAMS
    batches: tuple            # the streams grouped by size (content's first): recompute's sampling batches
    steps: int
    blocks: frozenset         # ComfyUI keys (name, number, index) where features were recorded
    conditioning: list        # the (empty-prompt) conditioning the inversion used
    latent_shape: tuple       # the content latent's shape
    style_shape: tuple        # the style latent's shape
    storage: str = "memory"   # memory / offload (features in `bank`) or recompute (trajectory only)
    clean_latents: dict = field(default_factory=dict)  # stream -> [1, C, H, W] as given (unscaled)
    reused: tuple = ()        # style images whose inversion came from the cache or a file
    family: str = ""          # the model family's name (nodes/families)
    parameterisation: str = "ddim"   # the inversion's kind (nodes/parameterisations.py), for style files
    refine_steps: int = 0

    def latent_at(self, t: int, stream: str) -> torch.Tensor:
        """The inverted latent of ``stream`` at timestep ``t``: ``[1, C, h, w]``."""
        return self.trajectory[t][stream]

    def latents_at(self, t: int, streams) -> torch.Tensor:
        """The inverted latents of ``streams`` (same size) at ``t``, stacked: ``[S, C, h, w]``."""
        return torch.cat([self.trajectory[t][name] for name in streams])

    @property
    def style_images(self) -> tuple[str, ...]:
        """The inverted style images' streams, style 1 first."""
        return tuple(name for name in STYLE_IMAGES if name in self.streams)

    def style_part(self, index: int) -> InvertedStyle:
        """Style ``index`` (1-based)'s inversion, sharing this inversion's tensors."""
        if not 1 <= index <= len(self.style_images):
            raise ValueError(f"style: this inversion has {len(self.style_images)} style image(s); "
                             f"there is no style {index}")
        return _style_part(self, self.style_images[index - 1])

    @property
    def trajectory_bytes(self) -> int:
        return sum(x.numel() * x.element_size() for row in self.trajectory.values() for x in row.values())


# ------------------------------------------------------------------------------ inversion
def feature_dtype(model_patcher) -> torch.dtype:
    """The dtype features are stored in: the model's, or fp16 for exotic (e.g. fp8) weights."""
    dtype = model_patcher.model.get_dtype()
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float16


def feature_bytes(model_patcher, blocks, latents: dict[str, torch.Tensor], steps: int) -> int:
    """Bytes an inversion of ``latents`` (stream -> ``[1, C, H, W]``) records at ``blocks``."""
    family = family_of(model_patcher)
    return sum(family.feature_bytes(blocks, len(batch), tuple(latents[batch[0]].shape[-2:]), steps,
                                    feature_dtype(model_patcher))
               for batch in inversion_batches(latents))


def choose_storage(mode: str, model_patcher, bytes_needed: int,
                   allowed: tuple = ("memory", "offload", "recompute")) -> tuple[str, torch.device]:
    """Where the recorded features go: ``(storage, device)``; ``allowed``: the family's modes.

    memory: the model's device; offload: CPU RAM; recompute: nothing is stored (the
    trajectories are recomputed through at sampling time). auto: memory when the features take
    under half the device memory left once the model is loaded, else offload when they take
    under half the free RAM, else recompute.
    """
    device, cpu = model_patcher.load_device, torch.device("cpu")
    if mode != "auto" and mode not in allowed:
        raise ValueError(f"storage: this model supports {', '.join(repr(m) for m in allowed)} (or 'auto'), not "
                         f"{mode!r}: its features are too large to keep. Set storage to 'auto'.")
    if allowed == ("recompute",):
        return "recompute", device
    free_ram = comfy.model_management.get_free_memory(cpu)
    if device.type == "cpu":
        free_device = free_ram
    else:
        weights_to_load = max(0, model_patcher.model_size() - model_patcher.loaded_size())
        free_device = max(0, comfy.model_management.get_free_memory(device) - weights_to_load)
    fixed = {"memory": (device, free_device, f"for the features on {device}",
                        "'offload' (CPU RAM), 'recompute'"),
             "offload": (cpu, free_ram, "of RAM for the features", "'recompute'")}
    if mode in fixed:
        target, free, where, alternatives = fixed[mode]
        if bytes_needed > 0.9 * free:
            raise ValueError(f"storage: '{mode}' needs {bytes_needed / 2 ** 30:.2f} GB {where}, but only "
                             f"{free / 2 ** 30:.2f} GB is free. Choose {alternatives} (a few MB, slower "
                             "sampling), 'auto', or fewer steps.")
        return mode, target
    if mode == "recompute":
        return mode, device
    if mode != "auto":
        raise ValueError(f"storage: must be one of {STORAGE_MODES}, got {mode!r}")
    if bytes_needed < 0.5 * free_device:
        return "memory", device
    if device.type != "cpu" and bytes_needed < 0.5 * free_ram:
        return "offload", cpu
    return "recompute", device


def _style_streams(name: str, streams) -> dict[str, str]:
    """Style image ``name``'s streams in ``streams`` -> their names in an :class:`InvertedStyle`."""
    return {stream: part for stream, part in ((name, "style"), (MAP_OF[name], "style_map")) if stream in streams}


def _style_part(inversion: SCSAInversion, name: str) -> InvertedStyle:
    names = _style_streams(name, inversion.streams)
    bank = inversion.bank.subset(names) if inversion.storage != "recompute" else None
    trajectory = {t: {part: row[stream] for stream, part in names.items()} for t, row in inversion.trajectory.items()}
    return InvertedStyle(inversion.clean_latents[name], inversion.clean_latents.get(MAP_OF[name]), trajectory,
                         bank, inversion.steps, inversion.blocks, inversion.storage, inversion.parameterisation,
                         inversion.refine_steps)


def _check_saved_style(name: str, style: InvertedStyle, steps: int, blocks: frozenset, channels: int,
                       kind: str) -> None:
    """A loaded style must come from an inversion like this one (else a clear error)."""
    if style.parameterisation != kind:
        raise ValueError(f"{name}: the saved style was inverted on a model of another kind "
                         f"({family_names(style.parameterisation)}) than this one ({family_names(kind)}). Load it "
                         "with the model it was saved with, or invert the style image again.")
    if style.steps != steps:
        raise ValueError(f"{name}: the saved style was inverted with {style.steps} steps; set SCSAInvert's steps "
                         f"to {style.steps}, or invert the style image again.")
    if style.blocks != blocks:
        raise ValueError(f"{name}: the saved style was recorded at other blocks ({len(style.blocks)} blocks) than "
                         f"SCSAInvert's blocks ({len(blocks)}): it was made with another model or another "
                         "blocks setting. Use the blocks it was saved with, or invert the style image again.")
    if style.latent.shape[1] != channels:
        raise ValueError(f"{name}: the saved style's latent has {style.latent.shape[1]} channels but the "
                         f"content's has {channels}: it was made with another model family.")


def noise_mismatch(model_patcher, conditioning, style: InvertedStyle) -> float:
    """How far this model's noise prediction on a saved style's trajectory is from the one the
    inversion used (relative L2; one model call at the middle step). Near 0: the same model and
    conditioning; another model or prompt gives tens of percent."""
    parameterisation = family_of(model_patcher).parameterisation.refined(style.refine_steps)
    plan = parameterisation.plan_inversion(model_patcher, style.steps)
    trajectory = {key: row["style"] for key, row in style.trajectory.items()}

    found = {}

    def loop(denoise, x, sigmas, noise):
        found["mismatch"] = parameterisation.mismatch(denoise, trajectory, plan.keys, sigmas, plan.steps // 2)
        return x  # one model call, no sampling: ComfyUI's output is not used

    run_sampler(model_patcher, conditioning, plan.sigmas, plan.keys, loop, None, torch.zeros_like(style.latent),
                style.latent, progress=comfy.utils.ProgressBar(1))
    return found["mismatch"]


def _reusable_styles(model_patcher, conditioning, connected: dict, saved: dict, steps: int, keys: frozenset,
                     storage: tuple, cache: StyleCache | None) -> dict[str, InvertedStyle]:
    """The style images whose inversion need not run again: loaded from a file (checked against
    this model) or found in the cache."""
    reused = {}
    for name in STYLE_IMAGES:
        if name not in connected:
            continue
        if name in saved:
            mismatch = noise_mismatch(model_patcher, conditioning, saved[name])
            if mismatch > MODEL_CHECK_TOLERANCE:
                raise ValueError(f"{name}: the saved style was made with another model or another conditioning "
                                 f"(this model's noise prediction differs by {100 * mismatch:.0f}% from the one "
                                 "it was inverted with). Load it with the model and empty prompt it was saved "
                                 "with, or invert the style image again.")
            reused[name] = saved[name]
        elif cache is not None:
            hit = cache.get(model_patcher, conditioning, connected[name], connected.get(MAP_OF[name]), steps,
                            keys, storage)
            if hit is not None:
                reused[name] = hit
    return reused


def invert(model_patcher, conditioning, latents: dict[str, torch.Tensor | None], steps: int,
           blocks: str = "auto", storage: str = "auto", saved_styles: dict | None = None,
           cache: StyleCache | None = STYLE_CACHE, refine_steps: int = 0) -> SCSAInversion:
    """DDIM-invert the connected ``latents`` (stream -> ``[1, C, H, W]`` or None; up to four
    style images, ``scsa_core.styles.STREAMS``) and record the block inputs that injection
    needs, at ``blocks`` (``"auto"`` or e.g. ``"output 6-11"``).

    Latents of one size go in one batch; sizes may differ (each map must match its own image).
    A style image whose inversion is known is not inverted again: ``saved_styles`` (style
    image -> :class:`InvertedStyle` from a file) or ``cache`` (the same style, model, conditioning,
    steps, blocks, storage and refinement as an earlier run). ``refine_steps``: fixed-point
    refinements per step where the family's parameterisation has them (flow). The model is not
    changed: the recording patch goes on a clone.
    """
    saved_styles = saved_styles or {}
    streams = tuple(name for name in STREAMS if latents.get(name) is not None)
    # As ComfyUI's samplers do: a 4-D latent becomes the 5-D one a video-VAE family's model takes
    # (Qwen-Image's [B, C, 1, H, W]); any other latent is returned as it is.
    connected = {name: comfy.sample.fix_empty_latent_channels(model_patcher, latents[name]) for name in streams}
    batches = inversion_batches(connected)
    check_conditioning(conditioning)
    family = family_of(model_patcher)
    # The run's conditioning: inversion and every sampling call use exactly this one.
    conditioning = family.prepare_conditioning(conditioning)
    if family.experimental:
        log.warning("SCSA on %s is experimental: never measured on real weights; tune blocks, guidance, "
                    "rope_mode and steps for your model (see the README).", family.name)
    keys = family.resolve_blocks(blocks)
    if "memory" not in family.storage_modes and len(batches) > 1:
        raise ValueError(f"style: on {family.name} every image must have the content's size, because the style's "
                         "features ride in the content's batch. Resize the style image and its map to the "
                         "content's size (e.g. Upscale Image to the content's width and height) before VAE Encode.")
    estimate = feature_bytes(model_patcher, keys, connected, steps)
    requested = storage
    storage, device = choose_storage(storage, model_patcher, estimate, family.storage_modes)
    channels = connected["content"].shape[1]
    for name, style in saved_styles.items():
        _check_saved_style(name, style, steps, keys, channels, family.parameterisation.kind)
    featureless = [name for name, style in saved_styles.items() if style.bank is None]
    if featureless and storage != "recompute":
        if requested != "auto":
            raise ValueError(f"{featureless[0]}: the saved style holds latents only (it was saved with 'recompute' "
                             f"storage), so it cannot serve '{requested}' storage. Set storage to 'recompute' "
                             "or 'auto', or save the style from an inversion with 'memory' storage.")
        storage, device = "recompute", model_patcher.load_device
    log.info("SCSAInvert: %s storage on %s (features of %d steps: %.2f GB)", storage, device, steps,
             estimate / 2 ** 30)

    dtype = feature_dtype(model_patcher)
    parameterisation = family.parameterisation.refined(refine_steps)
    # How the inversion is made, beyond steps and blocks: a cached style must match it all.
    storage_key = (storage, str(device), str(dtype), parameterisation.refine_steps)
    reused = _reusable_styles(model_patcher, conditioning, connected, saved_styles, steps, keys, storage_key, cache)
    reused_streams = {stream for name in reused for stream in _style_streams(name, streams)}
    to_invert = {name: x for name, x in connected.items() if name not in reused_streams}
    if reused:
        log.info("SCSAInvert: reusing the inversion of %s", ", ".join(reused))

    recorder = model_patcher.clone()
    recording = storage != "recompute"
    bank = FeatureBank(streams if recording else (), dtype=dtype, device=device)
    if recording:
        family.install(recorder, keys)
    plan = parameterisation.plan_inversion(recorder, steps)
    trajectory: dict = {}
    # Images of one size share a batch (the fastest on a GPU, and a one-style run stays what it
    # was). A reused style leaves the content in a smaller batch, whose rounding may differ from
    # the joint batch's in the last bits: far below what an 8-bit image shows.
    batches_now = inversion_batches(to_invert)
    progress = comfy.utils.ProgressBar(len(batches_now) * plan.steps)
    for batch in batches_now:
        def keep(key, stacked, batch=batch):
            rows = trajectory.setdefault(key, {})
            rows.update({name: stacked[row:row + 1].detach().to(device) for row, name in enumerate(batch)})

        def loop(denoise, x, sigmas, noise, keep=keep):
            return parameterisation.invert(denoise, x, sigmas, plan.keys, on_latent=keep)

        run = RecordRun(bank, keys, streams=batch) if recording else None
        clean = torch.cat([to_invert[name] for name in batch])
        # ComfyUI's output of an inversion is not used: the loop keeps the whole trajectory.
        run_sampler(recorder, conditioning, plan.sigmas, plan.keys, loop, run, torch.zeros_like(clean), clean,
                    progress=progress)
    for name, style in reused.items():
        names = {part: stream for stream, part in _style_streams(name, streams).items()}
        if recording:
            bank.adopt(style.bank, names)
        for t, row in style.trajectory.items():
            trajectory.setdefault(t, {}).update({stream: row[part].to(device) for part, stream in names.items()})
    inversion = SCSAInversion(bank, trajectory, streams, batches, steps, keys, conditioning,
                              tuple(connected["content"].shape), tuple(connected["style"].shape), storage,
                              clean_latents=connected, reused=tuple(reused), family=family.name,
                              parameterisation=parameterisation.kind, refine_steps=parameterisation.refine_steps)
    if cache is not None:
        for name in inversion.style_images:
            if name not in reused:
                cache.put(model_patcher, conditioning, storage_key, _style_part(inversion, name))
    return inversion


# ------------------------------------------------------------------------------- sampling
def initial_latent(inversion: SCSAInversion, settings: ApplySettings, start_from: int, init: str) -> torch.Tensor:
    """The latent sampling starts from: ``[1, C, H, W]`` in the model's scaled space."""
    content = inversion.latent_at(start_from, "content")
    styles = [inversion.latent_at(start_from, name) for name in inversion.style_images]
    if init == "auto":
        init = "semantic AdaIN" if settings.semantics is not None else "AdaIN"
    if init == "none":
        return content
    # Spatial dims last: [1, C, H, W], or [1, C, 1, H, W] for a video-VAE family (Qwen-Image)
    height, width = content.shape[-2:]
    tokens = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  [1, C, ..., H, W] -> [1, HW, C]
    # Several styles: the statistics of all their tokens (of the same label, with semantics).
    style_tokens = torch.cat([tokens(style) for style in styles], dim=1)
    if init == "AdaIN":
        mixed = adain(tokens(content), style_tokens)
    else:
        if settings.semantics is None:
            raise ValueError("init: 'semantic AdaIN' needs semantics on SCSAApply. Connect a semantic pair, "
                             "or choose 'AdaIN' (StyleID).")
        content_labels, style_labels = grid_labels(settings.semantics, settings.params, height, width,
                                                   [tuple(style.shape[-2:]) for style in styles])
        mixed = semantic_adain(tokens(content), style_tokens, content_labels.flatten().to(content.device),
                               style_labels.to(content.device))
    return mixed.transpose(1, 2).reshape(content.shape)


def style_sample(model_patcher, inversion: SCSAInversion, init: str = "auto",
                 timesteps: str = "official") -> torch.Tensor:
    """Denoise from the inverted content with injection at the inverted blocks; returns the
    sampled latent ``[1, C, H, W]`` (unscaled, as ComfyUI's LATENT holds it).

    ``model_patcher`` carries SCSAApply's settings. With ``recompute`` storage the content-side
    references ride in every sampling call; a style side of another size is re-recorded into a
    one-step bank by its own call just before each step.
    """
    settings = apply_settings(model_patcher)
    if settings is None:
        raise ValueError("model: connect the MODEL output of SCSAApply; this model has no SCSA settings.")
    if settings.semantics is not None and settings.params.semantic_share > 0 and \
            not {"content_map", "style_map"} <= set(inversion.streams):
        raise ValueError("inversion: SCSA with semantic_share > 0 needs the semantic map latents. Connect "
                         "content_map and style_map to SCSAInvert, or set semantic_share to 0.")
    if settings.semantics is not None:
        check_style_count(settings.semantics, len(inversion.style_images))   # before sampling starts
        log_map_sizes(settings.semantics, inversion.latent_shape, inversion.style_shape)
    family = family_of(model_patcher)
    parameterisation = family.parameterisation
    plan = parameterisation.plan_sampling(model_patcher, inversion.steps, timesteps)
    strengths = settings.timing.strengths(plan.steps)
    if not settings.timing.is_default:
        log.info("SCSAStyleSampler: injection on %d of %d steps (start %g, end %g, %s strength)",
                 sum(s > 0 for s in strengths), len(strengths), settings.timing.start, settings.timing.end,
                 settings.timing.strength_schedule)
    start = initial_latent(inversion, settings, plan.start_key, init)
    sampler_model = model_patcher.clone()
    family.install(sampler_model, inversion.blocks)

    if inversion.storage == "recompute":
        inline, others = inversion.batches[0], inversion.batches[1:]
        step_bank = FeatureBank(tuple(name for side in others for name in side),
                                dtype=inversion.bank.dtype, device=inversion.bank.device)
        run = InjectRun(step_bank, inversion.blocks, settings, inline_streams=inline, strengths=strengths,
                        latent_size=tuple(inversion.latent_shape[-2:]))
        recorders = [(side, RecordRun(step_bank, inversion.blocks, streams=side)) for side in others]

        def references(eps_fn, x, key):
            step_bank.clear()
            if not run.injecting:  # a plain step: no references to recompute
                return eps_fn(x, key)
            for side, recorder in recorders:
                eps_fn(inversion.latents_at(key, side).to(x), key, recorder)
            return eps_fn(torch.cat([x, inversion.latents_at(key, inline).to(x)]), key)[:x.shape[0]]
        # The first call's whole batch (the sample and the references riding with it) goes to
        # ComfyUI, which sizes the memory it frees for the model by it.
        first_call = torch.cat([start, inversion.latents_at(plan.keys[0], inline).to(start)])
    else:
        run = InjectRun(inversion.bank, inversion.blocks, settings, strengths=strengths)
        references = None
        first_call = start

    report = preview_reporter(sampler_model, plan.steps)

    def loop(denoise, x, sigmas, noise):
        return parameterisation.sample(denoise, noise, sigmas, plan.keys, on_step=report,
                                       before_step=run.begin_step, references=references)

    noise, latent = parameterisation.sampler_inputs(sampler_model.model, first_call, plan.sigmas[0])
    _, output = run_sampler(sampler_model, inversion.conditioning, plan.sigmas, plan.keys, loop, run, noise, latent,
                            count_calls=False)
    return output
