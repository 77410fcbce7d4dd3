"""How a model family's noise parameterisation turns into inversion and sampling loops.

A family names one of these (``family.parameterisation``); the pipeline only calls its methods,
so it never asks which kind of model it runs. Each works with ComfyUI's own sigmas: ``plan_*``
reads them from the model's ``model_sampling`` (as a ComfyUI scheduler does), the loops run
inside a ``KSAMPLER`` function (``nodes/sampling.py``) on the sigmas and the latent ComfyUI
hands it, and ``sampler_inputs`` says how the starting latent goes into ``sample_custom`` so
that ComfyUI's own ``noise_scaling`` gives it back exactly.

A plan's ``keys`` name the steps: the trajectory and the recorded features are stored under
them, and a run object is told the key before each model call. ``sigmas[i]`` is the model's
sigma at ``keys[i]``.

  VPDDIM     SD1.x / SD2.x / SDXL (eps and v): StyleID's DDIM over LDM's integer timesteps, in
             DDPM form (scsa_core.schedules); keys are the timesteps.
  FlowEuler  flow-matching DiTs (ComfyUI's CONST: Flux, ...): Euler inversion with optional
             fixed-point refinement and Euler sampling (scsa_core.flow) over the model's
             ``simple`` schedule; keys are the indices of the ascending sigmas.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.samplers

from ..scsa_core.flow import flow_invert, flow_sample
from ..scsa_core.schedules import (TIMESTEP_MODES, SamplingSchedule, ddim_invert, ddim_sample, implied_noise,
                                   inversion_schedule, sampling_schedule)


@dataclass(frozen=True)
class Plan:
    """One inversion or sampling pass: ``sigmas[i]`` (float32 ``[S + 1]``, the order ComfyUI's
    sampler gets them) is the model's sigma at step ``keys[i]``; sampling starts from the
    inverted latent stored under ``start_key``."""
    keys: tuple
    sigmas: torch.Tensor
    start_key: object = None

    @property
    def steps(self) -> int:
        return len(self.keys) - 1


class VPDDIM:
    """Deterministic DDIM (eta 0) over LDM's timesteps, as StyleID inverts and samples.

    ComfyUI's VP models see ``x_k = x_ddpm * sqrt(1 + sigma^2)`` and return the denoised
    latent; the loops stay in DDPM form (``scsa_core.schedules``) and convert at each call.
    """

    name = "DDIM (VP)"
    kind = "ddim"      # what a style file records (nodes/style_reuse.py)
    timestep_modes = TIMESTEP_MODES
    refine_steps = 0   # StyleID's plain DDIM inversion: SCSAInvert's refine_steps does not apply

    def refined(self, refine_steps: int) -> "VPDDIM":
        return self

    @staticmethod
    def _sigmas_at(model_patcher, timesteps) -> torch.Tensor:
        table = model_patcher.get_model_object("model_sampling").sigmas.detach()
        return torch.stack([table[t] for t in timesteps]).float().cpu()

    def plan_inversion(self, model_patcher, steps: int) -> Plan:
        """Ascending: the DDIM timesteps ``1, 1 + c, ...`` and the last one, 999."""
        schedule = inversion_schedule(steps)
        keys = tuple(t for t, _ in schedule) + (schedule[-1][1],)
        return Plan(keys, self._sigmas_at(model_patcher, keys))

    def plan_sampling(self, model_patcher, steps: int, mode: str) -> Plan:
        """Descending to timestep 0 (``abar_0``, LDM's last DDIM step)."""
        schedule = sampling_schedule(steps, mode)
        keys = tuple(t for t, _ in schedule.steps) + (schedule.steps[-1][1],)
        return Plan(keys, self._sigmas_at(model_patcher, keys), schedule.start_from)

    @staticmethod
    def _alphas(plan_keys, sigmas: torch.Tensor) -> dict:
        abar = 1.0 / (1.0 + sigmas.detach().double().cpu() ** 2)
        return dict(zip(plan_keys, abar))

    @staticmethod
    def _eps_fn(denoise, sigmas: torch.Tensor, keys):
        """``eps_fn(x_ddpm, t, other_run=None)`` for scsa_core's DDIM loops, from ComfyUI's denoiser."""
        index_of = {key: index for index, key in enumerate(keys)}

        def eps_fn(x_ddpm: torch.Tensor, t, other_run=None) -> torch.Tensor:
            index = index_of[t]
            sigma = sigmas[index].to(x_ddpm.device, torch.float32)
            x_k = x_ddpm * torch.sqrt(1.0 + sigma ** 2)
            return (x_k - denoise(x_k, index, other_run)) / sigma
        return eps_fn

    def invert(self, denoise, x: torch.Tensor, sigmas: torch.Tensor, keys, on_latent=None) -> torch.Tensor:
        """DDIM-invert ``x`` ``[B, C, H, W]`` (the clean latent in the model's space, as
        ComfyUI's sampler gets it at sigma ~0); ``on_latent(key, x_key)`` receives each latent
        of the trajectory. Returns the last one."""
        schedule = list(zip(keys[:-1], keys[1:]))
        trajectory = ddim_invert(self._eps_fn(denoise, sigmas, keys), x, schedule, self._alphas(keys, sigmas))
        if on_latent is not None:
            for key, latent in trajectory.items():
                on_latent(key, latent)
        return trajectory[keys[-1]]

    def sample(self, denoise, noise: torch.Tensor, sigmas: torch.Tensor, keys, on_step=None, before_step=None,
               references=None) -> torch.Tensor:
        """Denoise from ``noise`` (the DDPM-form start that :meth:`sampler_inputs` gave ComfyUI
        as its noise; its first row is the sample) over ``keys``.

        ``references(eps_fn, x_ddpm, key)``: evaluates one step with whatever rides along
        (default: the sample alone). ``on_step(index, predicted_x0)``, ``before_step(index)``.
        """
        eps_fn = self._eps_fn(denoise, sigmas, keys)
        step_eps = eps_fn if references is None else (lambda x_ddpm, t: references(eps_fn, x_ddpm, t))
        schedule = SamplingSchedule(start_from=keys[0], steps=tuple(zip(keys[:-1], keys[1:])))
        return ddim_sample(step_eps, noise[:1], schedule, self._alphas(keys, sigmas),
                           on_step=None if on_step is None else (lambda i, t, x_, x0: on_step(i, x0)),
                           before_step=None if before_step is None else (lambda i, t: before_step(i)))

    @staticmethod
    def sampler_inputs(model, start_rows: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noise, latent)`` for ``sample_custom``: the DDPM-form start ``[B, C, H, W]`` is the
        noise, the latent is empty, as in ComfyUI's own VP convention (at the largest sigma its
        sampler starts from ``noise * sqrt(1 + sigma^2)``, the k-form of a DDPM-form latent).

        The loop starts from the noise ComfyUI hands the sampler (``model.noise``) rather than
        from ``x``: below the largest sigma ComfyUI scales the noise by sigma, and undoing that
        in float32 would move the start by an ulp, so a run would no longer match earlier
        releases bit for bit.
        """
        return start_rows, torch.zeros_like(start_rows)

    def mismatch(self, denoise, trajectory: dict, keys, sigmas: torch.Tensor, index: int) -> float:
        """How far the model's prediction at step ``keys[index]`` of a saved ``trajectory`` (key
        -> latent in the model's space) is from the one that made the next latent: relative
        L2 of the noise, near 0 for the same model and conditioning."""
        t, t_next = keys[index], keys[index + 1]
        x, x_next = trajectory[t], trajectory[t_next]
        alphas = self._alphas(keys, sigmas)
        device = sigmas.device
        eps = self._eps_fn(denoise, sigmas, keys)(x.to(device), t)
        used = implied_noise(x.double().cpu(), x_next.double().cpu(), alphas[t], alphas[t_next])
        return float((eps.double().cpu() - used).norm() / used.norm().clamp_min(1e-12))


class FlowEuler:
    """Deterministic Euler over the flow ODE, on the model's own ``simple`` schedule.

    Inversion runs the ascending sigmas ``0 = s_0 < ... < s_N = 1`` with the lookahead velocity
    (never evaluated at sigma 0) and ``refine_steps`` fixed-point refinements per step; sampling
    runs them descending with ComfyUI's ``euler`` arithmetic, so with injection off it is a stock
    Euler run bit for bit. Sampling always starts from the fully inverted latent (sigma 1), where
    ComfyUI's ``noise_scaling`` passes the noise through exactly.
    """

    name = "Euler (flow)"
    kind = "flow"      # what a style file records (nodes/style_reuse.py)
    timestep_modes = TIMESTEP_MODES   # accepted for the shared node input; a flow has no off-by-one
    scheduler = "simple"

    def __init__(self, refine_steps: int = 0):
        self.refine_steps = refine_steps

    def _descending(self, model_patcher, steps: int) -> torch.Tensor:
        sampling = model_patcher.get_model_object("model_sampling")
        return comfy.samplers.calculate_sigmas(sampling, self.scheduler, steps).float().cpu()

    def refined(self, refine_steps: int) -> "FlowEuler":
        """This parameterisation with ``refine_steps`` fixed-point refinements per inversion step."""
        return self if refine_steps == self.refine_steps else FlowEuler(refine_steps)

    def plan_inversion(self, model_patcher, steps: int) -> Plan:
        sigmas = self._descending(model_patcher, steps).flip(0)
        return Plan(tuple(range(len(sigmas))), sigmas)

    def plan_sampling(self, model_patcher, steps: int, mode: str) -> Plan:
        if mode not in self.timestep_modes:
            raise ValueError(f"timesteps must be one of {self.timestep_modes}, got {mode!r}")
        sigmas = self._descending(model_patcher, steps)
        keys = tuple(range(len(sigmas) - 1, -1, -1))
        return Plan(keys, sigmas, keys[0])

    def invert(self, denoise, x: torch.Tensor, sigmas: torch.Tensor, keys, on_latent=None) -> torch.Tensor:
        state = {}
        trajectory = flow_invert(lambda latent, sigma_batch: denoise(latent, state["index"]), x, sigmas,
                                 self.refine_steps, before_step=lambda index, sigma: state.update(index=index + 1))
        if on_latent is not None:
            for key, latent in zip(keys, trajectory):
                on_latent(key, latent)
        return trajectory[-1]

    def sample(self, denoise, noise: torch.Tensor, sigmas: torch.Tensor, keys, on_step=None, before_step=None,
               references=None) -> torch.Tensor:
        """Euler from ``noise`` (the inverted latent ``[B, C, H, W]``; its first row is the
        sample) down the descending ``sigmas``.

        ``references(call, x, key)``: evaluates one step with whatever rides along, through
        ``call(batch, key, other_run=None) -> denoised rows`` (default: the sample alone).
        ``on_step(index, denoised)``, ``before_step(index)``.
        """
        index_of = {key: index for index, key in enumerate(keys)}
        state = {}

        def call(batch, key, other_run=None):
            return denoise(batch, index_of[key], other_run)

        def denoise_fn(x, sigma_batch):
            if references is None:
                return denoise(x, state["index"])
            return references(call, x, keys[state["index"]])

        def begin(index, sigma):
            state["index"] = index
            if before_step is not None:
                before_step(index)

        preview = None if on_step is None else (lambda index, sigma, x, denoised: on_step(index, denoised))
        return flow_sample(denoise_fn, noise[:1], sigmas, on_step=preview, before_step=begin)

    @staticmethod
    def sampler_inputs(model, start_rows: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noise, latent)`` for ``sample_custom``: the inverted latent is the noise (at sigma 1
        ComfyUI's sampler starts from it exactly), the latent is empty."""
        return start_rows, torch.zeros_like(start_rows)

    def mismatch(self, denoise, trajectory: dict, keys, sigmas: torch.Tensor, index: int) -> float:
        """How far step ``index`` of a saved ``trajectory``, made again with this model (and this
        parameterisation's refinements), lands from the saved next latent, relative to the step
        (near 0 for the same model and conditioning; tens of percent for another)."""
        x, x_next = trajectory[keys[index]].to(sigmas.device), trajectory[keys[index + 1]].to(sigmas.device)
        redone = flow_invert(lambda latent, sigma_batch: denoise(latent, index + 1), x, sigmas[index:index + 2],
                             self.refine_steps)[-1]
        moved = (x_next.double() - x.double()).norm().clamp_min(1e-12)
        return float((redone.double() - x_next.double()).norm() / moved)
