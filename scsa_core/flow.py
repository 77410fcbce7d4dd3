"""Flow-matching inversion and sampling loops (ComfyUI's CONST parameterisation).

Flow models in ComfyUI (Flux, SD3, Qwen-Image, Z-Image, HiDream) use ``CONST``:
``x_sigma = sigma * noise + (1 - sigma) * x0`` and ``denoised = x - sigma * v``, so the velocity a
denoiser implies is ``v = (x - denoised) / sigma``. Sigmas run from 0 (clean) to 1 (noise).

The loops are plain functions over tensors, like ``k_diffusion/sampling.py``. A denoiser is
called exactly as a ComfyUI ``KSAMPLER`` function calls its ``model``:
``denoise_fn(x, sigma * s_in, **extra_args) -> denoised``, with ``s_in = x.new_ones([B])``; so a
sampler function can pass its ``model`` and ``extra_args`` straight through::

    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return flow_sample(model, x, sigmas, extra_args, before_step=run.begin_step)

Shapes: latents ``x`` are ``[B, C, H, W]`` (or any ``[B, ...]``, e.g. 5-D video latents);
``sigmas`` is a 1-D tensor ``[S + 1]`` for ``S`` steps.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["DenoiseFn", "velocity", "flow_sample", "flow_invert"]

DenoiseFn = Callable[..., torch.Tensor]


def _sigma_view(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """A 0-d sigma as ``[1] * ndim``, as k-diffusion's ``append_dims`` makes it.

    The view is not just cosmetic: a dimensioned tensor takes part in dtype promotion where a
    0-d one does not, so a bf16 latent divided by this float32 sigma becomes float32, exactly as
    in ComfyUI's samplers.
    """
    return sigma[(...,) + (None,) * (ndim - sigma.ndim)]


def velocity(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The flow velocity ``(x - denoised) / sigma`` (k-diffusion's ``to_d``), ``[B, ...]``.

    ``sigma``: a 0-d tensor, > 0.
    """
    return (x - denoised) / _sigma_view(sigma, x.ndim)


def _as_sigmas(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a 1-D tensor [steps + 1], got shape {tuple(sigmas.shape)}")
    return sigmas


def flow_sample(denoise_fn: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor,
                extra_args: dict | None = None,
                on_step: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
                before_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Euler sampling over descending ``sigmas``: ``x <- x + (sigma_{i+1} - sigma_i) * v(x, sigma_i)``.

    x: ``[B, ...]`` at ``sigmas[0]`` -> ``[B, ...]`` at ``sigmas[-1]``. The arithmetic is that of
    ComfyUI's ``sample_euler`` with ``s_churn = 0`` (same operations, same order, same dtype
    promotion), so the result is bit-identical to a stock ``euler`` run with the same sigmas.

    ``before_step(index, sigma)`` runs before step ``index`` evaluates the model (tells a run
    object which step comes next). ``on_step(index, sigma, x, denoised)`` runs where
    k-diffusion calls its callback: after the evaluation, before the update, with the latent
    the model saw (a KSAMPLER ``callback`` is ``{'x': x, 'i': index, 'sigma': sigma,
    'sigma_hat': sigma, 'denoised': denoised}``).
    """
    sigmas = _as_sigmas(sigmas)
    if sigmas.numel() > 1:
        if bool((sigmas[:-1] <= 0).any()):
            raise ValueError("flow_sample evaluates the model at every sigma but the last: those must be > 0")
        if bool((sigmas[1:] > sigmas[:-1]).any()):
            raise ValueError("flow_sample needs non-increasing sigmas (for ascending ones, use flow_invert)")
    extra_args = {} if extra_args is None else extra_args
    batch_ones = x.new_ones([x.shape[0]])
    for index in range(len(sigmas) - 1):
        sigma = sigmas[index]
        if before_step is not None:
            before_step(index, sigma)
        denoised = denoise_fn(x, sigma * batch_ones, **extra_args)
        slope = velocity(x, denoised, sigma)
        if on_step is not None:
            on_step(index, sigma, x, denoised)
        x = x + slope * (sigmas[index + 1] - sigma)
    return x


def flow_invert(denoise_fn: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor, refine_steps: int = 0,
                extra_args: dict | None = None,
                on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                before_step: Callable[[int, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
    """Deterministic Euler inversion over ascending ``sigmas``; returns the whole trajectory.

    x: the clean latent ``[B, ...]`` at ``sigmas[0]`` (usually 0). Returns ``[x_0, ..., x_S]``,
    one latent per sigma, ``trajectory[0] is x``.

    Step ``i`` uses the *lookahead* velocity, evaluated at ``sigma_{i+1}`` (never at
    ``sigma_i``, which may be 0, where ``denoised = x`` carries no velocity):
    ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v(x_i, sigma_{i+1})``, then ``refine_steps``
    fixed-point refinements ``x_{i+1} <- x_i + (sigma_{i+1} - sigma_i) * v(x_{i+1}, sigma_{i+1})``.
    A fixed point of the refinement is exactly undone by one :func:`flow_sample` Euler step from
    ``sigma_{i+1}`` to ``sigma_i``; each refinement costs one more model evaluation per step.

    ``before_step(index, sigma_next)`` runs before step ``index`` first evaluates the model
    (every evaluation of the step is at ``sigma_next``); ``on_step(index, sigma_next, x_next)``
    runs after the step (after its refinements).
    """
    sigmas = _as_sigmas(sigmas)
    if refine_steps < 0:
        raise ValueError(f"refine_steps must be >= 0, got {refine_steps}")
    if sigmas.numel() > 1:
        if bool((sigmas[1:] <= sigmas[:-1]).any()):
            raise ValueError("flow_invert needs strictly ascending sigmas (for descending ones, use flow_sample)")
        if bool((sigmas[0] < 0).any()):
            raise ValueError(f"sigmas must be >= 0, got sigmas[0] = {float(sigmas[0])}")
    extra_args = {} if extra_args is None else extra_args
    batch_ones = x.new_ones([x.shape[0]])
    trajectory = [x]
    for index in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[index], sigmas[index + 1]
        step = sigma_next - sigma
        if before_step is not None:
            before_step(index, sigma_next)
        # The first pass evaluates at x_i; each refinement at the current guess of x_{i+1}.
        guess = x
        for _ in range(refine_steps + 1):
            denoised = denoise_fn(guess, sigma_next * batch_ones, **extra_args)
            guess = x + velocity(guess, denoised, sigma_next) * step
        x = guess
        trajectory.append(x)
        if on_step is not None:
            on_step(index, sigma_next, x)
    return trajectory
