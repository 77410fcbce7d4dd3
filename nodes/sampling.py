"""Running the pack's inversion and sampling loops through ComfyUI's own sampling path.

:func:`run_sampler` wraps a loop (a family parameterisation's, ``nodes/parameterisations.py``)
as a ``KSAMPLER`` function and runs it with ``sample_custom`` on the model's own sigmas and the
real latent, so model loading, conditioning, wrappers, other packs' patches, latent scaling and
``transformer_options["sample_sigmas"]`` are exactly what a stock SamplerCustom gives, while
the loop itself stays a plain function over tensors.
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


def run_sampler(model_patcher, conditioning, sigmas: torch.Tensor, keys, loop: Callable, run,
                noise: torch.Tensor, latent: torch.Tensor, count_calls: bool = True,
                progress: comfy.utils.ProgressBar | None = None):
    """Run ``loop(denoise, x, sigmas, noise)`` as a ComfyUI ``KSAMPLER`` function through
    ``sample_custom``; returns ``(loop result, ComfyUI's output latent)``.

    ComfyUI does what it does for any sampler: loads the model, prepares the conditioning,
    scales ``latent`` in (``process_latent_in``), adds ``noise`` by the model's
    ``noise_scaling`` at ``sigmas[0]``, puts ``sigmas`` into ``transformer_options
    ["sample_sigmas"]``, runs wrappers, and scales the loop's result back out. ``noise`` and
    ``latent`` (``[B, C, H, W]``) come from the family's parameterisation (``sampler_inputs``),
    and ``B`` is the largest model call, which ComfyUI sizes its memory for.

    The loop gets what any sampler function gets: ``x`` (the noised latent), ``sigmas``, and
    ``noise``, the noise ComfyUI was given (as it hands it to its samplers' inpainting wrapper).
    ``denoise(x, index, other_run=None)`` calls the model at ``sigmas[index]`` and returns the
    denoised latent; ``run`` (a RecordRun or InjectRun, or None for no SCSA at all) rides in
    ``transformer_options`` and is told ``keys[index]`` first and ``after_call()`` after (where
    it checks the call reached it); ``other_run`` replaces it for that one call. With ``count_calls`` the progress bar advances once per call out of
    ``len(sigmas) - 1`` (or ``progress``'s total); without, the loop reports progress itself
    (``preview_reporter``). Cancel is honoured before each call.
    """
    if count_calls and progress is None:   # a caller with several runs passes one bar for them all
        progress = comfy.utils.ProgressBar(len(sigmas) - 1)
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

        def denoise(x_model: torch.Tensor, index: int, other_run=None) -> torch.Tensor:
            comfy.model_management.throw_exception_if_processing_interrupted()
            active_run = run if other_run is None else other_run
            if active_run is not None:
                active_run.set_step(keys[index])
            args = run_args if other_run is None else with_run(other_run)
            denoised = model(x_model, sigmas[index] * x_model.new_ones([x_model.shape[0]]), **args)
            if active_run is not None:
                active_run.after_call()
            if progress is not None:
                progress.update(1)
            return denoised

        result["loop"] = loop(denoise, x, sigmas, model.noise)
        return result["loop"]

    sampler = comfy.samplers.KSAMPLER(sampler_function)
    output = comfy.sample.sample_custom(model_patcher, noise, 1.0, sampler, sigmas, conditioning, conditioning,
                                        latent, noise_mask=None, callback=None, disable_pbar=True, seed=0)
    return result["loop"], output
