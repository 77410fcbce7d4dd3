"""The two runs of the pack: :func:`invert` (SCSAInvert) and :func:`style_sample` (SCSAStyleSampler).

Everything a run decides lives here: where features are stored, how the streams are batched,
the one-step bank and reference recomputation of ``recompute`` storage, and the starting
latent. The nodes validate their sockets and make one call; the tests and benchmarks call
these functions too.

  invert:        latents -> family_of(model).resolve_blocks -> choose_storage
                 -> run_ddim(ddim_invert) with a RecordRun per batch -> SCSAInversion
  style_sample:  SCSAInversion + apply_settings(model) -> initial_latent
                 -> run_ddim(ddim_sample) with an InjectRun (+ RecordRun for a style of
                    another size under recompute storage) -> latent
                 each step: ddim_sample's before_step tells the InjectRun its index, which
                 picks the step's strength from SCSAApply's timing (0: plain attention)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

import comfy.model_management

from ..scsa_core.adain import adain, semantic_adain
from ..scsa_core.features import STREAMS, FeatureBank
from ..scsa_core.schedules import ddim_invert, ddim_sample, inversion_schedule, sampling_schedule
from .families import alphas_cumprod, family_of
from .injection import ApplySettings, AttentionPatch, InjectRun, RecordRun, apply_settings, grid_labels
from .sampling import preview_reporter, run_ddim
from .validation import check_conditioning, inversion_batches, log_map_sizes

log = logging.getLogger("scsa")

STORAGE_MODES = ("auto", "memory", "offload", "recompute")
INIT_MODES = ("auto", "semantic AdaIN", "AdaIN", "none")


@dataclass(frozen=True)
class SCSAInversion:
    """What SCSAInvert hands to SCSAStyleSampler (read-only once built)."""
    bank: FeatureBank         # recorded block inputs; empty with recompute storage
    trajectory: dict          # t -> {stream: [1, C, h, w]} latents in the model's scaled space
    streams: tuple            # the inverted streams, from scsa_core.features.STREAMS
    batches: tuple            # how the streams were batched (content side first when sizes differ)
    steps: int
    blocks: frozenset         # ComfyUI keys (name, number, index) where features were recorded
    conditioning: list        # the (empty-prompt) conditioning the inversion used
    latent_shape: tuple       # the content latent's shape
    style_shape: tuple        # the style latent's shape
    storage: str = "memory"   # memory / offload (features in `bank`) or recompute (trajectory only)

    def latent_at(self, t: int, stream: str) -> torch.Tensor:
        """The inverted latent of ``stream`` at timestep ``t``: ``[1, C, h, w]``."""
        return self.trajectory[t][stream]

    def latents_at(self, t: int, streams) -> torch.Tensor:
        """The inverted latents of ``streams`` (same size) at ``t``, stacked: ``[S, C, h, w]``."""
        return torch.cat([self.trajectory[t][name] for name in streams])

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


def choose_storage(mode: str, model_patcher, bytes_needed: int) -> tuple[str, torch.device]:
    """Where the recorded features go: ``(storage, device)``.

    memory: the model's device; offload: CPU RAM; recompute: nothing is stored (the
    trajectories are recomputed through at sampling time). auto: memory when the features take
    under half the device memory left once the model is loaded, else offload when they take
    under half the free RAM, else recompute.
    """
    device, cpu = model_patcher.load_device, torch.device("cpu")
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


def invert(model_patcher, conditioning, latents: dict[str, torch.Tensor | None], steps: int,
           blocks: str = "auto", storage: str = "auto") -> SCSAInversion:
    """DDIM-invert the connected ``latents`` (stream -> ``[1, C, H, W]`` or None) and record the
    block inputs that injection needs, at ``blocks`` (``"auto"`` or e.g. ``"output 6-11"``).

    One batch when every latent has the same size; else the content side and the style side
    (content and style may differ in size, each map must match its own image). The model is
    not changed: the recording patch goes on a clone.
    """
    streams = tuple(name for name in STREAMS if latents.get(name) is not None)
    connected = {name: latents[name] for name in streams}
    batches = inversion_batches(connected)
    check_conditioning(conditioning)
    family = family_of(model_patcher)
    keys = family.resolve_blocks(blocks)
    estimate = feature_bytes(model_patcher, keys, connected, steps)
    storage, device = choose_storage(storage, model_patcher, estimate)
    log.info("SCSAInvert: %s storage on %s (features of %d steps: %.2f GB)", storage, device, steps,
             estimate / 2 ** 30)

    recorder = model_patcher.clone()
    recording = storage != "recompute"
    bank = FeatureBank(streams if recording else (), dtype=feature_dtype(model_patcher), device=device)
    if recording:
        AttentionPatch(family).install(recorder, sorted(keys))
    alphas = alphas_cumprod(recorder)
    schedule = inversion_schedule(steps)
    trajectory: dict[int, dict[str, torch.Tensor]] = {}
    for batch in batches:
        def loop(eps_fn, x):
            for t, stacked in ddim_invert(eps_fn, x, schedule, alphas).items():
                rows = trajectory.setdefault(t, {})
                rows.update({name: stacked[row:row + 1].detach().to(device) for row, name in enumerate(batch)})
            return x

        run = RecordRun(bank, keys, streams=batch) if recording else None
        run_ddim(recorder, conditioning, torch.cat([connected[name] for name in batch]), loop, run,
                 total_steps=len(schedule))
    return SCSAInversion(bank, trajectory, streams, batches, steps, keys, conditioning,
                         tuple(connected["content"].shape), tuple(connected["style"].shape), storage)


# ------------------------------------------------------------------------------- sampling
def initial_latent(inversion: SCSAInversion, settings: ApplySettings, start_from: int, init: str) -> torch.Tensor:
    """The latent sampling starts from: ``[1, C, H, W]`` in the model's scaled space."""
    content = inversion.latent_at(start_from, "content")
    style = inversion.latent_at(start_from, "style")
    if init == "auto":
        init = "semantic AdaIN" if settings.semantics is not None else "AdaIN"
    if init == "none":
        return content
    batch, channels, height, width = content.shape
    tokens = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  [1, C, H, W] -> [1, HW, C]
    if init == "AdaIN":
        mixed = adain(tokens(content), tokens(style))
    else:
        if settings.semantics is None:
            raise ValueError("init: 'semantic AdaIN' needs semantics on SCSAApply. Connect a semantic pair, "
                             "or choose 'AdaIN' (StyleID).")
        content_labels, style_labels = grid_labels(settings.semantics, settings.params, height, width,
                                                   tuple(style.shape[-2:]))
        mixed = semantic_adain(tokens(content), tokens(style), content_labels.flatten().to(content.device),
                               style_labels.flatten().to(content.device))
    return mixed.transpose(1, 2).reshape(batch, channels, height, width)


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
        log_map_sizes(settings.semantics, inversion.latent_shape, inversion.style_shape)
    schedule = sampling_schedule(inversion.steps, timesteps)
    strengths = settings.timing.strengths(len(schedule.steps))
    if not settings.timing.is_default:
        log.info("SCSAStyleSampler: injection on %d of %d steps (start %g, end %g, %s strength)",
                 sum(s > 0 for s in strengths), len(strengths), settings.timing.start, settings.timing.end,
                 settings.timing.strength_schedule)
    start = initial_latent(inversion, settings, schedule.start_from, init)
    alphas = alphas_cumprod(model_patcher)
    sampler_model = model_patcher.clone()
    AttentionPatch(family_of(sampler_model)).install(sampler_model, sorted(inversion.blocks))
    device = comfy.model_management.get_torch_device()

    if inversion.storage == "recompute":
        inline, others = inversion.batches[0], inversion.batches[1:]
        step_bank = FeatureBank(tuple(name for side in others for name in side),
                                dtype=inversion.bank.dtype, device=inversion.bank.device)
        run = InjectRun(step_bank, inversion.blocks, settings, inline_streams=inline, strengths=strengths)
        recorders = [(side, RecordRun(step_bank, inversion.blocks, streams=side)) for side in others]

        def eps_with_references(eps_fn, x, t):
            step_bank.clear()
            if not run.injecting:  # a plain step: no references to recompute
                return eps_fn(x, t)
            for side, recorder in recorders:
                eps_fn(inversion.latents_at(t, side).to(x), t, recorder)
            return eps_fn(torch.cat([x, inversion.latents_at(t, inline).to(x)]), t)[:x.shape[0]]
        largest_call = 1 + len(inline)
    else:
        run = InjectRun(inversion.bank, inversion.blocks, settings, strengths=strengths)

        def eps_with_references(eps_fn, x, t):
            return eps_fn(x, t)
        largest_call = 1

    report = preview_reporter(sampler_model, len(schedule.steps))

    def loop(eps_fn, _):
        return ddim_sample(lambda x, t: eps_with_references(eps_fn, x, t), start.to(device), schedule, alphas,
                           on_step=lambda index, t, x, predicted_x0: report(index, predicted_x0),
                           before_step=lambda index, t: run.begin_step(index))

    # The shape tells ComfyUI how much memory the largest model call needs.
    shape = (largest_call,) + tuple(inversion.latent_shape[1:])
    latent = run_ddim(sampler_model, inversion.conditioning, torch.zeros(shape), loop, run,
                      total_steps=len(schedule.steps), scaled_input=False, count_calls=False)
    return sampler_model.model.process_latent_out(latent.to(torch.float32)).cpu()
