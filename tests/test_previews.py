"""Live previews and progress of the long nodes, as a websocket client (the browser) sees them.

A headless server started with ``--preview-method latent2rgb`` (what a user picks in ComfyUI's
settings or on the command line) must stream a preview frame per sampling step of
SCSAStyleSampler, like KSampler does; the session's server runs with ComfyUI's default (no
previews) and must send none. Both long nodes report progress either way.
"""
from __future__ import annotations

import io

import pytest
from PIL import Image

import workflow_inputs as wi
from scripts import comfyui_runtime as rt
from scripts import run_workflow as runner
from scsa_core.schedules import sampling_schedule

STEPS = 4


class RecordingProgress(runner.Progress):
    """The runner's own websocket follower, recording what each node sent."""

    def __init__(self, prompt: dict):
        super().__init__("test", prompt, quiet=True)
        self.frames: dict[str, list[bytes]] = {}
        self.reports: dict[str, list[tuple[int, int]]] = {}

    def progress(self, node_id, value: int, maximum: int) -> None:
        self.reports.setdefault(str(node_id), []).append((value, maximum))

    def preview(self, image: bytes) -> None:
        self.frames.setdefault(self.node, []).append(image)


def _run(base_url: str, checkpoint: str) -> tuple[dict, RecordingProgress]:
    _, api = wi.committed("scsa_sd15_color_maps")
    prompt = wi.for_test_api(api, checkpoint, steps=STEPS)
    recorder = RecordingProgress(prompt)
    runner.run_prompt(runner.Client(base_url), prompt, recorder, timeout=300)
    return prompt, recorder


def _node_of(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


@pytest.fixture(scope="module")
def preview_server(comfyui_dir, models_dir):
    srv = rt.ComfyServer(models_dir=models_dir, comfy_dir=comfyui_dir,
                         extra_args=["--preview-method", "latent2rgb"])
    try:
        srv.start()
    except Exception as e:
        srv.cleanup()
        pytest.fail(f"ComfyUI server did not start: {e}", pytrace=False)
    wi.place_images(srv.input_dir)
    try:
        yield srv
    finally:
        srv.cleanup()


def test_sampler_streams_a_preview_per_step(preview_server, tiny_checkpoint):
    prompt, recorder = _run(preview_server.base_url, tiny_checkpoint.name)
    sampler = _node_of(prompt, "SCSAStyleSampler")
    steps = len(sampling_schedule(STEPS, "official").steps)
    frames = recorder.frames.get(sampler, [])
    assert len(frames) == steps, f"{len(frames)} preview frames for {steps} sampling steps"
    for frame in frames:
        image = Image.open(io.BytesIO(frame))
        image.load()
        # latent2rgb draws one pixel per latent cell (0.3.75) or scales that up (0.33): at least
        # the latent's size, in the image's aspect ratio.
        assert image.size[0] == image.size[1] >= wi.SIZE // 8, image.size
    # Inversion has nothing worth showing, but reports its progress; the sampler reaches its end.
    invert = _node_of(prompt, "SCSAInvert")
    assert invert not in recorder.frames
    assert recorder.reports.get(invert), "SCSAInvert reported no progress"
    assert recorder.reports[sampler][-1] == (steps, steps)


def test_no_previews_when_the_setting_is_off(comfy_server, tiny_checkpoint):
    wi.place_images(comfy_server.input_dir)
    prompt, recorder = _run(comfy_server.base_url, tiny_checkpoint.name)
    sampler = _node_of(prompt, "SCSAStyleSampler")
    assert not recorder.frames, f"preview frames with previews off: { {k: len(v) for k, v in recorder.frames.items()} }"
    steps = len(sampling_schedule(STEPS, "official").steps)
    assert recorder.reports.get(sampler), "SCSAStyleSampler reported no progress"
    assert recorder.reports[sampler][-1] == (steps, steps)
