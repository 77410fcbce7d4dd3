"""DDIM schedules (spec sections 1 and 5) and the feature bank."""
from __future__ import annotations

import json

import pytest
import torch

from oracle_data import oracle_dir
from scsa_core.features import FeatureBank
from scsa_core.schedules import (ddim_invert, ddim_sample, ddim_step, ddim_timesteps,
                                 inversion_schedule, sampling_schedule)


def test_fifty_step_timesteps_and_official_schedule():
    assert ddim_timesteps(50)[:3] == [1, 21, 41] and ddim_timesteps(50)[-1] == 981
    inversion = inversion_schedule(50)
    assert inversion[0] == (1, 21) and inversion[-1] == (981, 999)
    official = sampling_schedule(50, "official")
    assert official.start_from == 999
    assert len(official.steps) == 49 and official.steps[0] == (961, 941) and official.steps[-1] == (1, 0)
    aligned = sampling_schedule(50, "aligned")
    assert aligned.start_from == 981 and len(aligned.steps) == 50 and aligned.steps[0] == (981, 961)
    with pytest.raises(ValueError, match="timesteps must be one of"):
        sampling_schedule(50, "late")
    with pytest.raises(ValueError, match="steps must be between"):
        ddim_timesteps(0)


@pytest.mark.parametrize("pair", ["29", "1"])
def test_schedules_match_the_oracle_run(pair):
    meta_path = oracle_dir() / pair / "meta.json"
    if not meta_path.is_file():
        pytest.skip(f"no oracle meta at {meta_path} (set SCSA_ORACLE_DIR)")
    meta = json.loads(meta_path.read_text())
    steps = meta["ddim_inversion_steps"]
    inversion = inversion_schedule(steps)
    assert [t for t, _ in inversion] == meta["inversion_t"]
    assert [t for _, t in inversion] == meta["inversion_t_next"]
    official = sampling_schedule(steps, "official")
    assert [t for t, _ in official.steps] == meta["sampling_executed_t"]


def test_ddim_inversion_then_sampling_round_trips_with_a_fixed_eps():
    alphas = torch.linspace(0.9999, 0.005, 1000, dtype=torch.float64)
    eps_of = lambda x, t: 0.1 * torch.ones_like(x)  # noqa: E731  eps independent of x: DDIM is exactly invertible
    x0 = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    trajectory = ddim_invert(eps_of, x0, inversion_schedule(10), alphas)
    assert sorted(trajectory) == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901, 999]
    aligned = sampling_schedule(10, "aligned")
    back = ddim_sample(eps_of, trajectory[aligned.start_from], aligned, alphas)
    expected = ddim_step(x0, 0.1 * torch.ones_like(x0), alphas[1], alphas[0])
    torch.testing.assert_close(back, expected)


def test_sampling_reports_the_predicted_clean_latent_at_every_step():
    """on_step gets x0 as the step's eps implies it: with the true eps of a known x0 that is x0
    itself at every step (what the live preview shows), and x_prev is the loop's own latent."""
    alphas = torch.linspace(0.9999, 0.005, 1000, dtype=torch.float64)
    x0 = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(x0)
    schedule = sampling_schedule(10, "aligned")
    start = alphas[schedule.start_from].sqrt() * x0 + (1 - alphas[schedule.start_from]).sqrt() * noise
    seen = []
    result = ddim_sample(lambda x, t: noise, start, schedule, alphas,
                         on_step=lambda index, t, x_prev, predicted: seen.append((index, t, x_prev, predicted)))
    assert [(index, t) for index, t, _, _ in seen] == [(i, t) for i, (t, _) in enumerate(schedule.steps)]
    for _, _, _, predicted in seen:
        torch.testing.assert_close(predicted, x0)
    assert seen[-1][2] is result


def test_feature_bank_round_trip_and_validation():
    bank = FeatureBank(("content", "style"), dtype=torch.float16)
    inputs = torch.randn(2, 6, 4)
    bank.record(21, ("output", 6, 0), inputs)
    refs = bank.references(21, ("output", 6, 0), torch.float32, "cpu")
    torch.testing.assert_close(refs.content, inputs[:1], atol=1e-2, rtol=1e-3)
    assert refs.style.shape == (1, 6, 4) and refs.content_map is None
    assert bank.timesteps == [21] and bank.nbytes == inputs.numel() * 2 and len(bank) == 1
    inputs.add_(1.0)  # the bank holds its own copy
    assert not torch.allclose(bank.references(21, ("output", 6, 0), torch.float32, "cpu").content, inputs[:1])
    with pytest.raises(ValueError, match="expected 2 streams"):
        bank.record(1, ("output", 6, 0), torch.randn(3, 6, 4))
    with pytest.raises(ValueError, match="distinct names"):
        FeatureBank(("content", "content"))
    # A partial bank (recompute storage) takes the other streams from the caller, and says
    # what is missing when content or style comes from neither.
    style_only = FeatureBank(("style",), dtype=torch.float32)
    style_inputs = torch.randn(1, 6, 4)
    style_only.record(21, ("output", 6, 0), style_inputs)
    given = {"content": torch.zeros(1, 6, 4)}
    merged = style_only.references(21, ("output", 6, 0), torch.float32, "cpu", given)
    assert merged.content is given["content"] and torch.equal(merged.style, style_inputs)
    with pytest.raises(KeyError, match="content and style are both needed"):
        style_only.references(21, ("output", 6, 0), torch.float32, "cpu")
    style_only.clear()
    assert len(style_only) == 0
