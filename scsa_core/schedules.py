"""DDIM schedules and loops for StyleID-style inversion and injection sampling (docs/method.md
§6, §8), and when injection acts during sampling (:class:`InjectionTiming`).

Everything here works in the DDPM parameterisation ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
with integer training timesteps ``t`` in ``[0, 1000)``. A sampler adapter turns a model into
``eps_fn(x_t, t) -> eps``; the loops below are plain functions over tensors, like ComfyUI's
``k_diffusion/sampling.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["TIMESTEP_MODES", "ddim_timesteps", "inversion_schedule", "SamplingSchedule",
           "sampling_schedule", "ddim_step", "predict_x0", "implied_noise", "ddim_invert", "ddim_sample",
           "STRENGTH_SCHEDULES", "strength_factor", "injected_steps", "injection_strengths",
           "InjectionTiming"]

TIMESTEP_MODES = ("official", "aligned")
STRENGTH_SCHEDULES = ("constant", "linear", "cosine")
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

    ``official`` (StyleID's, docs/method.md §8): skips the first DDIM step and starts from the latent
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


def implied_noise(x: torch.Tensor, x_next: torch.Tensor, alpha_from: torch.Tensor | float,
                  alpha_to: torch.Tensor | float) -> torch.Tensor:
    """The ``eps`` that :func:`ddim_step` took from ``x`` to ``x_next`` (``[B, C, H, W]`` each).

    Inverts ``x_next = c x + (sqrt(1 - a_to) - c sqrt(1 - a_from)) eps`` with
    ``c = sqrt(a_to / a_from)``; well conditioned when the two alphas differ (any DDIM step).
    """
    alpha_from = torch.as_tensor(alpha_from, dtype=torch.float64).item()
    alpha_to = torch.as_tensor(alpha_to, dtype=torch.float64).item()
    c = math.sqrt(alpha_to / alpha_from)
    return (x_next - c * x) / (math.sqrt(1.0 - alpha_to) - c * math.sqrt(1.0 - alpha_from))


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
                on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
                before_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Deterministic DDIM denoising from ``x_start`` over ``schedule.steps``.

    ``before_step(index, t)`` runs before step ``index`` (0-based) evaluates the model: it tells
    an injection which step of the schedule comes next. ``on_step(index, t, x_prev,
    predicted_x0)`` runs after each step; ``predicted_x0`` is the clean latent the step's
    ``eps`` implies (what a live preview shows).
    """
    x = x_start
    for index, (t, t_prev) in enumerate(schedule.steps):
        if before_step is not None:
            before_step(index, t)
        eps = eps_fn(x, t)
        if on_step is not None:
            predicted = predict_x0(x, eps, alphas_cumprod[t])
        x = ddim_step(x, eps, alphas_cumprod[t], alphas_cumprod[t_prev])
        if on_step is not None:
            on_step(index, t, x, predicted)
    return x


# ------------------------------------------------------------------ when injection acts
# A fraction typed in the UI may arrive as 0.5700000000000001: such noise is far below one
# step, so the window's edges are compared with this slack (in steps) to land on the step meant.
_EDGE_SLACK = 1e-6


def _check_schedule(schedule: str) -> None:
    if schedule not in STRENGTH_SCHEDULES:
        raise ValueError(f"strength_schedule must be one of {STRENGTH_SCHEDULES}, got {schedule!r}")


def strength_factor(schedule: str, progress: float) -> float:
    """The factor ``f(p)`` that scales injection at ``progress`` ``p`` in ``[0, 1]`` of the window.

    ``constant``: ``f = 1`` (the papers' injection, every injected step at full strength);
    ``linear``: ``f = 1 - p``; ``cosine``: ``f = (1 + cos(pi p)) / 2``. Both decays start at 1
    and reach 0 at ``p = 1``; cosine stays near 1 longer, then falls faster.
    """
    _check_schedule(schedule)
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - progress
    return (1.0 + math.cos(math.pi * progress)) / 2.0


def _check_window(start: float, end: float) -> None:
    for name, value in (("start", start), ("end", end)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):  # also refuses NaN
            raise ValueError(f"{name} must be a fraction of the sampling steps between 0 and 1, got {value!r}")
    if start > end:
        raise ValueError(f"start ({start}) is after end ({end}): injection acts from start to end, as "
                         "fractions of the sampling steps. Set start <= end (start = end switches "
                         "injection off).")


def injected_steps(steps: int, start: float = 0.0, end: float = 1.0) -> range:
    """The indices of the sampling steps that inject, out of ``steps`` (0-based).

    Step ``i`` covers the fraction ``[i / steps, (i + 1) / steps)`` of sampling and injects when
    it begins inside the window: ``start <= i / steps < end``. So ``start=0, end=1`` is every
    step, ``start = end`` none, ``end=0.5`` the first half (of 49 steps: steps 0-24), as
    ControlNet's start/end percent. A window narrower than one step may hold no step at all.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    _check_window(start, end)
    first = max(0, math.ceil(start * steps - _EDGE_SLACK))
    stop = min(steps, math.ceil(end * steps - _EDGE_SLACK))
    return range(first, max(first, stop))


def injection_strengths(steps: int, start: float = 0.0, end: float = 1.0,
                        schedule: str = "constant") -> tuple[float, ...]:
    """The injection strength ``s_i`` of each of ``steps`` sampling steps.

    Outside :func:`injected_steps` ``s_i = 0``: the step runs plain attention (the model's own,
    as if nothing were injected). The ``k``-th of the ``m`` injected steps gets
    ``s = f(k / m)`` with ``f`` from :func:`strength_factor`, so progress runs over the injected
    steps only: the first injected step is at full strength and a decay would reach 0 at the
    step after the window, where plain attention takes over. ``constant`` gives exactly 1.0 on
    every injected step. What a strength does to SCSA and StyleID: ``scsa_core.block``
    (:func:`~scsa_core.block.fuse`, :func:`~scsa_core.block.styleid_inject`).
    """
    _check_schedule(schedule)
    window = injected_steps(steps, start, end)
    strengths = [0.0] * steps
    for k, index in enumerate(window):
        strengths[index] = strength_factor(schedule, k / len(window))
    return tuple(strengths)


@dataclass(frozen=True)
class InjectionTiming:
    """When injection acts: the window ``[start, end)`` of the sampling steps (fractions) and
    the strength schedule over it. The defaults inject at full strength on every step, as the
    papers do; invalid values are refused when the timing is made."""
    start: float = 0.0
    end: float = 1.0
    strength_schedule: str = "constant"

    def __post_init__(self):
        _check_window(self.start, self.end)
        _check_schedule(self.strength_schedule)

    @property
    def is_default(self) -> bool:
        return self == InjectionTiming()

    def strengths(self, steps: int) -> tuple[float, ...]:
        """:func:`injection_strengths` for a run of ``steps`` sampling steps."""
        return injection_strengths(steps, self.start, self.end, self.strength_schedule)
