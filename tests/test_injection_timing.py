"""When injection acts (README, *When injection acts*; docs/method.md §10): SCSAApply's ``start``,
``end`` and ``strength_schedule`` through ComfyUI's executor, on the tiny random SD1.5 checkpoint
(64 px, 8 x 8 latents).

The graphs, input files and the plain run (the same sampler, model and inversion with no block
injected) are tests/test_reliability.py's.
"""
from __future__ import annotations

import pytest
import torch

from scripts.comfy_inprocess import PromptError, pack_module
from test_reliability import _samples, files, scsa_prompt, without_injection  # noqa: F401  (files: fixture)

MODES = {"scsa": "maps", "styleid": None}
DEFAULTS = {"start": 0.0, "end": 1.0, "strength_schedule": "constant"}


def _run(comfy, checkpoint, mode="scsa", steps=4, storage=None, style=None, **timing):
    prompt = scsa_prompt(checkpoint, semantics=MODES[mode], steps=steps, apply=timing)
    if storage is not None:
        prompt["invert"]["inputs"]["storage"] = storage
    if style == "smaller":
        prompt["style"]["inputs"]["image"] = "rel_style_small.png"
        if mode == "scsa":
            prompt["style_map"]["inputs"]["image"] = "rel_map_s_small.png"
    return comfy.run_prompt(prompt, outputs=["sample"])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", list(MODES))
def test_default_timing_gives_the_same_latent_as_no_timing_inputs(comfy, tiny_checkpoint, files, mode):
    """A workflow saved before these inputs existed (they are absent) and one that sets their
    defaults give the same latent, bit for bit."""
    without = _run(comfy, tiny_checkpoint.name, mode)
    explicit = _run(comfy, tiny_checkpoint.name, mode, **DEFAULTS)
    assert {"apply", "sample"} <= set(explicit.executed), "the second prompt was served from the cache"
    assert torch.equal(_samples(explicit), _samples(without))
    without_injection_latent = without_injection(without)
    assert _relative(without_injection_latent, _samples(without)) > 1e-3, "the default run injects nothing"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("storage", ["memory", "recompute"])
def test_an_empty_window_is_the_plain_run(comfy, tiny_checkpoint, files, mode, storage):
    """start = end excludes every step: exactly the sampler's run with no block injected (with
    recompute storage the references then never ride along, so even the batch is the same)."""
    for point in (0.0, 0.5):
        result = _run(comfy, tiny_checkpoint.name, mode, storage=storage, start=point, end=point)
        assert torch.equal(_samples(result), without_injection(result)), f"start = end = {point}"


@pytest.fixture
def per_step_predictions(comfy, monkeypatch):
    """``sample(model, inversion) -> [predicted x0 of each step]``: calls the pipeline directly,
    recording what the live preview is handed at each step."""
    pipeline = pack_module("nodes/pipeline.py")

    def sample(model, inversion):
        seen = []
        monkeypatch.setattr(pipeline, "preview_reporter",
                            lambda model_patcher, total: lambda step, predicted: seen.append(predicted.clone()))
        with torch.inference_mode():
            pipeline.style_sample(model, inversion)
        assert len(seen) == inversion.steps - 1  # the official schedule skips one step
        return seen
    return sample


@pytest.mark.parametrize("mode", list(MODES))
def test_the_window_changes_only_the_steps_outside_it(comfy, tiny_checkpoint, files, per_step_predictions, mode):
    """6 inversion steps give 5 sampling steps. end = 0.5 injects steps 0-2 (0/5, 1/5, 2/5 < 0.5):
    those are the constant run's bit for bit, steps 3-4 are not. start = 0.5 leaves steps 0-2 to
    plain attention: those are the plain run's, and step 3 is where it departs."""
    full = _run(comfy, tiny_checkpoint.name, mode, steps=6)
    inversion = full["invert"][0]
    constant = per_step_predictions(full["apply"][0], inversion)
    early = _run(comfy, tiny_checkpoint.name, mode, steps=6, end=0.5)
    assert early["invert"][0] is inversion
    ends_early = per_step_predictions(early["apply"][0], inversion)
    for step in range(3):
        assert torch.equal(ends_early[step], constant[step]), f"step {step} is inside the window"
    for step in (3, 4):
        assert _relative(ends_early[step], constant[step]) > 1e-4, f"step {step} is after the window"

    plain = per_step_predictions(_run(comfy, tiny_checkpoint.name, mode, steps=6, start=1.0, end=1.0)["apply"][0],
                                 inversion)
    late = per_step_predictions(_run(comfy, tiny_checkpoint.name, mode, steps=6, start=0.5)["apply"][0], inversion)
    for step in range(3):
        assert torch.equal(late[step], plain[step]), f"step {step} is before the window"
    assert _relative(late[3], plain[3]) > 1e-4, "step 3 is inside the window"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decaying_strength_lies_between_constant_and_none(comfy, tiny_checkpoint, files, mode, schedule):
    constant = _run(comfy, tiny_checkpoint.name, mode)
    decayed = _samples(_run(comfy, tiny_checkpoint.name, mode, strength_schedule=schedule))
    full, none = _samples(constant), without_injection(constant)
    span = _relative(none, full)
    assert span > 1e-3
    to_full, to_none = _relative(decayed, full), _relative(decayed, none)
    assert to_full > 1e-4, f"{schedule} gave the constant-strength latent"
    assert to_none > 1e-4, f"{schedule} gave the un-injected latent"
    assert to_full < span and to_none < span, \
        f"{schedule} is not between constant and none: {to_full:.3g} / {to_none:.3g} vs {span:.3g} apart"


@pytest.mark.parametrize("style", ["same", "smaller"])
def test_a_decayed_window_injects_the_same_with_recomputed_references(comfy, tiny_checkpoint, files, style):
    """The one injection path: partial strengths and plain steps give what stored features give
    (recompute storage skips the references on the plain steps)."""
    timing = dict(start=0.2, end=0.9, strength_schedule="cosine")
    memory = _samples(_run(comfy, tiny_checkpoint.name, steps=6, storage="memory", style=style, **timing))
    recompute = _samples(_run(comfy, tiny_checkpoint.name, steps=6, storage="recompute", style=style, **timing))
    constant = _samples(_run(comfy, tiny_checkpoint.name, steps=6, storage="memory", style=style))
    assert _relative(memory, constant) > 1e-4, "the timing changed nothing"
    assert _relative(recompute, memory) <= 1e-5


def test_start_after_end_is_refused_with_the_fix_when_queued(comfy, tiny_checkpoint, files):
    """Refused by the prompt's validation, before SCSAInvert runs."""
    with pytest.raises(PromptError, match=r"failed validation.*start \(0.8\) is after end \(0.3\).*Set start <= end"):
        _run(comfy, tiny_checkpoint.name, start=0.8, end=0.3)
    apply_node = pack_module("nodes/diffusion_nodes.py").SCSAApply
    assert apply_node.validate_inputs(start=None, end=0.3) is True, "a linked value is checked at execution"
    assert "end must be a fraction" in apply_node.validate_inputs(start=0.0, end=1.2)
