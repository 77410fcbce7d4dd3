"""DDIM schedules and loops for StyleID-style inversion and injection sampling (spec sections 1, 5).

Everything here works in the DDPM parameterisation ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
with integer training timesteps ``t`` in ``[0, 1000)``. A sampler adapter turns a model into
``eps_fn(x_t, t) -> eps``; the loops below are plain functions over tensors, like ComfyUI's
``k_diffusion/sampling.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["TIMESTEP_MODES", "ddim_timesteps", "inversion_schedule", "SamplingSchedule",
           "sampling_schedule", "ddim_step", "predict_x0", "ddim_invert", "ddim_sample"]

TIMESTEP_MODES = ("official", "aligned")
EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def ddim_timesteps(steps: int, train_steps: int = 1000) -> list[int]:
    """LDM's uniform DDIM timesteps, ascending: ``1, 1 + c, 1 + 2c, ...`` with ``c = train_steps // steps``.

    ComfyUI's ``ddim_uniform`` scheduler evaluates the same set.
    """
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be between 1 and {train_steps}, got {steps}")
    stride = train_steps // steps
    return [1 + i * stride for i in range(steps)]


def inversion_schedule(steps: int, train_steps: int = 1000) -> list[tuple[int, int]]:
    """``(t, t_next)`` pairs: evaluate at ``t`` (features are recorded under ``t``), step to ``t_next``.

    The clean latent is taken as ``x_1``; the last step goes to ``train_steps - 1`` (999).
    """
    timesteps = ddim_timesteps(steps, train_steps)
    return list(zip(timesteps, timesteps[1:] + [train_steps - 1]))


@dataclass(frozen=True)
class SamplingSchedule:
    """Where sampling starts and which steps it runs.

    ``start_from``: the inversion timestep whose latent is the starting point (999 = the fully
    inverted latent). ``steps``: ``(t, t_prev)`` pairs, evaluated and injected at ``t``.
    """
    start_from: int
    steps: tuple[tuple[int, int], ...]


def sampling_schedule(steps: int, mode: str = "official", train_steps: int = 1000) -> SamplingSchedule:
    """The denoising schedule after a ``steps``-step inversion.

    ``official`` (StyleID's, spec section 5): skips the first DDIM step and starts from the latent
    inverted to 999 as if it were at the second-highest timestep (50 steps: 49 steps from 961).
    ``aligned``: starts from the latent inverted to the highest timestep and runs every step.
    The last step goes to ``t_prev = 0`` (LDM uses ``abar_0`` there).
    """
    if mode not in TIMESTEP_MODES:
        raise ValueError(f"timesteps must be one of {TIMESTEP_MODES}, got {mode!r}")
    descending = ddim_timesteps(steps, train_steps)[::-1]
    pairs = list(zip(descending, descending[1:] + [0]))
    if mode == "official":
        return SamplingSchedule(start_from=train_steps - 1, steps=tuple(pairs[1:]))
    return SamplingSchedule(start_from=descending[0], steps=tuple(pairs))


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_from: torch.Tensor | float,
              alpha_to: torch.Tensor | float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from cumulative alpha ``alpha_from`` to ``alpha_to``.

    Used in both directions: inversion (``alpha_to < alpha_from``) and denoising.
    """
    alpha_to = torch.as_tensor(alpha_to, dtype=torch.float64)
    return alpha_to.sqrt().item() * predict_x0(x, eps, alpha_from) + (1 - alpha_to).sqrt().item() * eps


def predict_x0(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """The clean latent that ``x`` ``[B, C, H, W]`` at cumulative alpha ``alpha`` implies, given ``eps``."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    return (x - (1 - alpha).sqrt().item() * eps) / alpha.sqrt().item()


def ddim_invert(eps_fn: EpsFn, x0: torch.Tensor, schedule: list[tuple[int, int]],
                alphas_cumprod: torch.Tensor,
                on_step: Callable[[int, int, torch.Tensor], None] | None = None) -> dict[int, torch.Tensor]:
    """DDIM inversion of ``x0`` ``[B, C, H, W]``; returns the trajectory ``{t: x_t}``.

    The trajectory holds the latent *at* each evaluated ``t`` (``x0`` at the first) and the
    final latent under the last ``t_next``. ``on_step(index, t, x_next)`` runs after each step.
    """
    trajectory = {}
    x = x0
    for index, (t, t_next) in enumerate(schedule):
        trajectory[t] = x
        eps = eps_fn(x, t)
        x = ddim_step(x, eps, alphas_cumprod[t], alphas_cumprod[t_next])
        if on_step is not None:
            on_step(index, t, x)
    trajectory[schedule[-1][1]] = x
    return trajectory


def ddim_sample(eps_fn: EpsFn, x_start: torch.Tensor, schedule: SamplingSchedule,
                alphas_cumprod: torch.Tensor,
                on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Deterministic DDIM denoising from ``x_start`` over ``schedule.steps``.

    ``on_step(index, t, x_prev, predicted_x0)`` runs after each step; ``predicted_x0`` is the
    clean latent the step's ``eps`` implies (what a live preview shows).
    """
    x = x_start
    for index, (t, t_prev) in enumerate(schedule.steps):
        eps = eps_fn(x, t)
        if on_step is not None:
            predicted = predict_x0(x, eps, alphas_cumprod[t])
        x = ddim_step(x, eps, alphas_cumprod[t], alphas_cumprod[t_prev])
        if on_step is not None:
            on_step(index, t, x, predicted)
    return x
