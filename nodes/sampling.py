"""Running scsa_core's DDIM loops through ComfyUI's own sampling path.

ComfyUI samplers see latents in k-diffusion form (``x = x_ddpm * sqrt(1 + sigma^2)``) and a
model that returns the denoised latent. :func:`run_ddim` wraps a DDIM loop from
``scsa_core.schedules`` as a ``KSAMPLER`` function, so model loading, conditioning, wrappers,
other packs' patches and latent scaling all happen exactly as in a stock KSampler, while the
loop itself stays a plain function over tensors in DDPM form.
"""
from __future__ import annotations

from typing import Callable

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from .injection import RUN_KEY


def preview_reporter(model_patcher, total_steps: int) -> Callable[[int, torch.Tensor], None]:
    """``report(step, predicted_x0)``: ComfyUI's live preview and progress for a sampling loop.

    ``predicted_x0`` ``[B, C, H, W]`` is in the model's scaled latent space (what KSampler hands
    its callback as ``denoised``). ComfyUI's own latent-preview callback decides whether and how
    to draw it (the ``--preview-method`` setting, or the browser's per-prompt choice where the
    version supports one) and moves the node's progress bar to ``step + 1`` of ``total_steps``.
    """
    callback = latent_preview.prepare_callback(model_patcher, total_steps)

    def report(step: int, predicted_x0: torch.Tensor) -> None:
        callback(step, predicted_x0[:1], predicted_x0[:1], total_steps)
    return report


def run_ddim(model_patcher, conditioning, latent: torch.Tensor, loop: Callable, run,
             total_steps: int, scaled_input: bool = True, count_calls: bool = True,
             progress: comfy.utils.ProgressBar | None = None) -> torch.Tensor:
    """Run ``loop(eps_fn, x) -> x`` inside ComfyUI's sampler machinery; returns the loop's result.

    latent: ``[B, C, H, W]`` ComfyUI latent (unscaled; ComfyUI scales it). With
    ``scaled_input=False`` the loop ignores ``x`` and starts from latents it already holds in
    the model's scaled space, and ``latent`` only gives the shape.
    ``run`` (a RecordRun or InjectRun, or None for no SCSA at all) is handed to the attention
    patch through ``transformer_options`` and told the timestep before each model call.
    ``eps_fn(x, t, other_run=None)`` takes and returns DDPM-form tensors of any batch size;
    ``other_run`` replaces ``run`` for that one call (recompute storage records the references
    of another size that way). With ``count_calls`` the progress bar advances once per model
    call out of ``total_steps``; without, the loop reports progress itself (``preview_reporter``).
    Cancel is honoured before each call.
    """
    sigma_table = model_patcher.get_model_object("model_sampling").sigmas.detach()
    if count_calls and progress is None:   # a caller with several runs passes one bar for them all
        progress = comfy.utils.ProgressBar(total_steps)
    elif not count_calls:
        progress = None
    result = {}

    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
        def with_run(active_run):
            args = dict(extra_args or {})
            model_options = dict(args.get("model_options", {}))
            transformer_options = dict(model_options.get("transformer_options", {}))
            transformer_options[RUN_KEY] = active_run
            model_options["transformer_options"] = transformer_options
            args["model_options"] = model_options
            return args

        run_args = with_run(run)

        def eps_fn(x_ddpm: torch.Tensor, t: int, other_run=None) -> torch.Tensor:
            comfy.model_management.throw_exception_if_processing_interrupted()
            active_run = run if other_run is None else other_run
            if active_run is not None:
                active_run.set_step(t)
            sigma = sigma_table[t].to(x_ddpm.device, torch.float32)
            x_k = x_ddpm * torch.sqrt(1.0 + sigma ** 2)
            args = run_args if other_run is None else with_run(other_run)
            denoised = model(x_k, sigma * x_k.new_ones([x_k.shape[0]]), **args)
            if progress is not None:
                progress.update(1)
            return (x_k - denoised) / sigma

        result["x"] = loop(eps_fn, x if scaled_input else None)
        return result["x"]

    sampler = comfy.samplers.KSAMPLER(sampler_function)
    # Two sigmas are enough for ComfyUI's bookkeeping; the loop sets every sigma itself.
    sigmas = torch.stack([sigma_table[-1], sigma_table[0]]).float().cpu()
    noise = torch.zeros_like(latent)
    if not scaled_input:
        latent = torch.zeros_like(latent)  # all-zero latents are passed through unscaled
    comfy.sample.sample_custom(model_patcher, noise, 1.0, sampler, sigmas, conditioning, conditioning,
                               latent, noise_mask=None, callback=None, disable_pbar=True, seed=0)
    return result["x"]
