"""DDIM schedules (docs/method.md §6, §8), the feature bank, and when injection acts
(docs/method.md §10; README, *When injection acts*)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from oracle_data import oracle_dir
from scsa_core.block import BlockLayers, ReferenceInputs, SCSAParams, fuse, styleid_inject, styleid_terms
from scsa_core.features import FeatureBank
from scsa_core.schedules import (STRENGTH_SCHEDULES, InjectionTiming, ddim_invert, ddim_sample, ddim_step,
                                 ddim_timesteps, injected_steps, injection_strengths, inversion_schedule,
                                 sampling_schedule, strength_factor)


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


# ------------------------------------------------------------------ when injection acts
def test_strength_factors_are_the_documented_curves():
    for p in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        assert strength_factor("constant", p) == 1.0
        assert strength_factor("linear", p) == pytest.approx(1.0 - p, abs=1e-15)
        assert strength_factor("cosine", p) == pytest.approx((1.0 + math.cos(math.pi * p)) / 2.0, abs=1e-15)
    assert strength_factor("cosine", 0.5) == pytest.approx(0.5)
    assert strength_factor("cosine", 0.25) > strength_factor("linear", 0.25)   # holds on longer
    assert strength_factor("cosine", 0.75) < strength_factor("linear", 0.75)   # then falls faster
    for schedule in ("linear", "cosine"):
        assert strength_factor(schedule, 0.0) == 1.0 and strength_factor(schedule, 1.0) == pytest.approx(0.0)
        curve = [strength_factor(schedule, i / 20) for i in range(21)]
        assert all(a > b for a, b in zip(curve, curve[1:])), f"{schedule} does not decay"
    with pytest.raises(ValueError, match="strength_schedule must be one of"):
        strength_factor("exponential", 0.5)
    with pytest.raises(ValueError, match="progress must be in"):
        strength_factor("linear", 1.5)


def test_the_window_selects_the_steps_that_begin_inside_it():
    assert injected_steps(49) == range(49)
    assert injected_steps(49, 0.0, 0.5) == range(0, 25)             # 24/49 < 0.5 <= 25/49
    assert injected_steps(4, 0.25, 0.75) == range(1, 3)
    assert injected_steps(10, 0.3, 1.0) == range(3, 10)             # 0.3 * 10 is 3.0000000000000004
    # a value typed in the UI may carry float noise; it still means step 57 of 100
    assert injected_steps(100, 0.5700000000000001, 1.0)[0] == 57
    assert injected_steps(100, 0.0, 0.5700000000000001) == range(0, 57)
    for point in (0.0, 0.3, 0.5, 1.0):
        assert len(injected_steps(49, point, point)) == 0, "start = end must switch injection off"
    assert len(injected_steps(4, 0.3, 0.4)) == 0                    # narrower than a step, no step begins in it
    assert injected_steps(0) == range(0)


@pytest.mark.parametrize("start, end, message", [
    (0.8, 0.3, r"start \(0.8\) is after end \(0.3\).*Set start <= end"),
    (-0.1, 1.0, r"start must be a fraction .* between 0 and 1"),
    (0.0, 1.5, r"end must be a fraction .* between 0 and 1"),
    (float("nan"), 1.0, r"start must be a fraction"),
])
def test_a_bad_window_is_refused_naming_the_inputs(start, end, message):
    with pytest.raises(ValueError, match=message):
        injected_steps(10, start, end)
    with pytest.raises(ValueError, match=message):
        InjectionTiming(start=start, end=end)


def test_strengths_per_step():
    for steps in (1, 3, 49, 50):
        default = injection_strengths(steps)
        # exactly 1.0 (not merely close) on every step: the sampler then runs today's injection
        assert default == (1.0,) * steps and InjectionTiming().strengths(steps) == default
    # progress runs over the injected steps only: k / m for the k-th of m
    assert injection_strengths(6, 0.0, 1.0, "linear") == pytest.approx((1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6))
    assert injection_strengths(8, 0.25, 0.75, "linear") == pytest.approx((0, 0, 1, 0.75, 0.5, 0.25, 0, 0))
    cosine = injection_strengths(5, 0.0, 0.6, "cosine")
    assert cosine == pytest.approx((1.0, 0.75, 0.25, 0.0, 0.0))
    assert injection_strengths(5, 0.0, 0.6, "constant") == (1.0, 1.0, 1.0, 0.0, 0.0)
    assert injection_strengths(5, 0.5, 0.5, "cosine") == (0.0,) * 5
    for schedule in STRENGTH_SCHEDULES:
        inside = [s for s in injection_strengths(49, 0.1, 0.9, schedule) if s > 0]
        assert len(inside) == len(injected_steps(49, 0.1, 0.9)) and inside[0] == 1.0
        assert all(0.0 < s <= 1.0 for s in inside)
    with pytest.raises(ValueError, match="strength_schedule must be one of"):
        injection_strengths(5, schedule="step")
    with pytest.raises(ValueError, match="strength_schedule must be one of"):
        InjectionTiming(strength_schedule="step")
    assert InjectionTiming().is_default and not InjectionTiming(end=0.9).is_default


def _identity_layers(scale: float = 1.0) -> BlockLayers:
    same = lambda x: x  # noqa: E731
    return BlockLayers(norm1=same, to_q=same, to_k=same, to_v=same, to_out=lambda x: scale * x + 0.5)


def test_strength_blends_injected_and_plain_attention():
    g = torch.Generator().manual_seed(3)
    x, sca, ssa, plain = (torch.randn(1, 6, 4, generator=g) for _ in range(4))
    params = SCSAParams()
    # Full strength is the papers' fusion, bit for bit, with or without the plain output at hand.
    assert torch.equal(fuse(x, sca, ssa, params), x + 0.8 * sca + 0.2 * ssa)
    assert torch.equal(fuse(x, sca, ssa, params, 1.0, plain), fuse(x, sca, ssa, params))
    torch.testing.assert_close(fuse(x, sca, ssa, params, 0.0, plain), x + plain)
    s = 0.3
    torch.testing.assert_close(fuse(x, sca, ssa, params, s, plain),
                               x + s * 0.8 * sca + s * 0.2 * ssa + (1 - s) * plain)
    with pytest.raises(ValueError, match="pass plain_projected"):
        fuse(x, sca, ssa, params, 0.5)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        fuse(x, sca, ssa, params, 1.5, plain)

    layers = _identity_layers(2.0)
    content, style = torch.randn(1, 6, 4, generator=g), torch.randn(1, 5, 4, generator=g)
    terms = styleid_terms(layers, ReferenceInputs(content, style))
    full = styleid_inject(layers, x, terms, 2, gamma=0.75, temperature=1.5)
    assert torch.equal(styleid_inject(layers, x, terms, 2, 0.75, 1.5, 1.0, plain), full)
    torch.testing.assert_close(styleid_inject(layers, x, terms, 2, 0.75, 1.5, 0.0, plain), x + plain)
    styled = full - x
    torch.testing.assert_close(styleid_inject(layers, x, terms, 2, 0.75, 1.5, s, plain),
                               x + s * styled + (1 - s) * plain)


def test_sampling_tells_each_step_its_index_before_the_model_call():
    alphas = torch.linspace(0.9999, 0.005, 1000, dtype=torch.float64)
    schedule = sampling_schedule(5, "official")
    events = []
    ddim_sample(lambda x, t: events.append(("eps", t)) or torch.zeros_like(x), torch.zeros(1, 1, 2, 2), schedule,
                alphas, before_step=lambda index, t: events.append(("before", index, t)))
    expected = []
    for index, (t, _) in enumerate(schedule.steps):
        expected += [("before", index, t), ("eps", t)]
    assert events == expected
