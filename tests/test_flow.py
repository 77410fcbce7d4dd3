"""Flow-matching inversion and Euler sampling (scsa_core.flow) on toy denoisers; no ComfyUI.

A denoiser here is what a ComfyUI KSAMPLER function's ``model`` is: ``D(x, sigma_batch) ->
denoised`` with ``denoised = x - sigma * v`` (CONST).
"""
from __future__ import annotations

import pytest
import torch

from scsa_core.flow import flow_invert, flow_sample


def _flux_like_sigmas(steps: int, dtype=torch.float32) -> torch.Tensor:
    """A shifted flow schedule, ascending from 0 to 1 (``steps + 1`` sigmas), irregular spacing."""
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    shift = 3.0
    return (shift * t / (1 + (shift - 1) * t)).to(dtype)


def _denoiser_from_velocity(velocity_fn):
    """``D(x, sigma) = x - sigma * v(x, sigma)``, sigma per batch row ``[B]``."""
    def denoise(x, sigma):
        sigma_b = sigma.view(-1, *([1] * (x.ndim - 1)))
        return x - sigma_b * velocity_fn(x, sigma_b)
    return denoise


def _latent(dtype=torch.float32, seed=0, shape=(2, 4, 6, 5)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_zero_velocity_inverts_to_the_input_exactly():
    x = _latent()
    trajectory = flow_invert(lambda x, sigma: x, x, _flux_like_sigmas(8), refine_steps=2)
    assert len(trajectory) == 9
    for latent in trajectory:
        assert torch.equal(latent, x)


def test_inversion_evaluates_each_step_at_the_next_sigma_never_at_zero():
    sigmas = _flux_like_sigmas(5)
    seen = []

    def denoise(x, sigma):
        seen.append(sigma.clone())
        return x

    flow_invert(denoise, _latent(), sigmas, refine_steps=1)
    expected = [s for s in sigmas[1:] for _ in range(2)]
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected):
        assert got.shape == (2,) and torch.equal(got, want.expand(2))


def test_constant_velocity_inverts_and_samples_back():
    x = _latent()
    field = _latent(seed=1)
    denoise = _denoiser_from_velocity(lambda x, sigma: field)
    sigmas = _flux_like_sigmas(10)
    trajectory = flow_invert(denoise, x, sigmas)
    # A constant field moves the latent straight: x_1 = x_0 + v.
    torch.testing.assert_close(trajectory[-1], x + field, rtol=0, atol=1e-6)
    back = flow_sample(denoise, trajectory[-1], sigmas.flip(0))
    assert (back - x).abs().max().item() <= 1e-6


def _nonlinear_velocity(x, sigma):
    """A smooth field that depends on both x and sigma, Lipschitz constant about 1."""
    return torch.tanh(x.roll(1, dims=-1)) + sigma * torch.sin(x) - 0.5 * x


def test_refinement_steps_decrease_the_round_trip_error():
    x = _latent(torch.float64)
    denoise = _denoiser_from_velocity(_nonlinear_velocity)
    sigmas = _flux_like_sigmas(6, torch.float64)
    errors = []
    for refine_steps in range(6):
        inverted = flow_invert(denoise, x, sigmas, refine_steps=refine_steps)[-1]
        back = flow_sample(denoise, inverted, sigmas.flip(0))
        errors.append((back - x).abs().max().item())
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    # each refinement contracts the error (by about ds * Lipschitz); five take off two orders
    assert errors[0] > 1e-2 and errors[-1] < errors[0] / 100, errors


def test_a_converged_inversion_step_is_undone_by_one_euler_step():
    x = _latent(torch.float64)
    denoise = _denoiser_from_velocity(_nonlinear_velocity)
    sigmas = torch.tensor([0.3, 0.45], dtype=torch.float64)
    x_next = flow_invert(denoise, x, sigmas, refine_steps=60)[-1]
    back = flow_sample(denoise, x_next, sigmas.flip(0))
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)


def _plain_euler(model, x, sigmas, extra_args):
    """ComfyUI's k-diffusion ``sample_euler`` with ``s_churn = 0``, written out."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i][(...,) + (None,) * x.ndim]
        dt = sigmas[i + 1] - sigmas[i]
        x = x + d * dt
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_flow_sample_equals_a_plain_euler_loop_bit_for_bit(dtype):
    weight = _latent(seed=3, shape=(5, 5)).to(dtype)

    def model(x, sigma, scale=1.0):
        sigma_b = sigma.view(-1, 1, 1, 1).to(x.dtype)
        return scale * torch.tanh(x @ weight.to(x.dtype)) * (1 - sigma_b) + sigma_b * 0.1 * x

    x = _latent(dtype)
    sigmas = _flux_like_sigmas(7).flip(0)  # float32 sigmas, as ComfyUI passes them
    extra = {"scale": 0.7}
    expected = _plain_euler(model, x, sigmas, extra)
    got = flow_sample(model, x, sigmas, extra)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)


def test_sampling_hooks_see_every_step_in_order():
    x = _latent()
    sigmas = _flux_like_sigmas(4).flip(0)
    events = []
    denoise = _denoiser_from_velocity(lambda x, sigma: torch.ones_like(x))
    flow_sample(denoise, x, sigmas,
                before_step=lambda index, sigma: events.append(("before", index, float(sigma))),
                on_step=lambda index, sigma, latent, denoised: events.append(
                    ("on", index, float(sigma), torch.equal(denoised, denoise(latent, sigma.expand(2))))))
    expected = []
    for index in range(4):
        expected += [("before", index, float(sigmas[index])), ("on", index, float(sigmas[index]), True)]
    assert events == expected


def test_inversion_hooks_report_the_next_sigma_and_latent():
    x = _latent()
    sigmas = _flux_like_sigmas(3)
    events = []
    trajectory = flow_invert(_denoiser_from_velocity(lambda x, sigma: x), x, sigmas,
                             before_step=lambda index, sigma: events.append(("before", index, float(sigma))),
                             on_step=lambda index, sigma, latent: events.append(("on", index, float(sigma), latent)))
    for index in range(3):
        assert events[2 * index] == ("before", index, float(sigmas[index + 1]))
        assert events[2 * index + 1][:3] == ("on", index, float(sigmas[index + 1]))
        assert events[2 * index + 1][3] is trajectory[index + 1]


def test_schedules_in_the_wrong_direction_are_refused():
    denoise = _denoiser_from_velocity(lambda x, sigma: x)
    with pytest.raises(ValueError, match="ascending"):
        flow_invert(denoise, _latent(), _flux_like_sigmas(3).flip(0))
    with pytest.raises(ValueError, match="non-increasing"):
        flow_sample(denoise, _latent(), torch.tensor([0.5, 0.8, 0.0]))
    with pytest.raises(ValueError, match="> 0"):
        flow_sample(denoise, _latent(), _flux_like_sigmas(3))
    with pytest.raises(ValueError, match="refine_steps"):
        flow_invert(denoise, _latent(), _flux_like_sigmas(3), refine_steps=-1)
