"""Shared pytest fixtures: ComfyUI in-process and as a server, tiny random models, the oracle.

ComfyUI is found by scripts/comfyui_runtime.py (COMFYUI_PATH, else the checkout the venv was
set up for by ``bash scripts/setup.sh [VERSION]``). In-process ComfyUI: scripts/comfy_inprocess.py;
random-weight models: scripts/tiny_models.py. A missing ComfyUI FAILS the tests that need it (never skips), so a
forgotten install step cannot hide behind a skip. Tests that use a ComfyUI fixture are marked
``comfy`` automatically (and ``slow`` for the server), so ``-m "not comfy"`` runs the pure ones.

Fixtures (S = session scope, F = function scope):
  comfyui_dir        S  Path of the ComfyUI checkout
  comfy_core         S  ComfyRuntime: ComfyUI imported in-process on CPU, core nodes only
  comfy              S  comfy_core + this pack loaded with nodes.load_custom_node(<repo>)
  run_prompt         S  comfy.run_prompt: run an API-format prompt, returns PromptResult
  tiny_sd15_patcher  F  ModelPatcher, SD1.5-structured random UNet, 32 channels (fresh per test)
  tiny_vae           F  comfy.sd.VAE around a random TAESD
  tiny_flux1_patcher F  ModelPatcher, random Flux.1-structured transformer (2 double + 3 single blocks)
  tiny_flux2_patcher F  ModelPatcher, random Flux.2-structured transformer (skips where ComfyUI has no Flux2)
  tiny_qwen_image_patcher / tiny_z_image_patcher / tiny_sd35_patcher
                     F  ModelPatcher, random Qwen-Image / Z-Image / SD3.5-structured transformer
                        (tiny_models.build_tiny_dit_patcher; skip where ComfyUI lacks the class)
  tiny_checkpoint    S  Path of .cache/models/sd15_tiny_*.safetensors (UNet 320ch 1 level,
                        TAESD, CLIP-L), registered for CheckpointLoaderSimple in-process
  oracle_dir         S  Path of shared/oracle (skips when absent)
  oracle_checkpoint  S  Path of the oracle's 2.1 GB random SD1.5 checkpoint, built once
  models_dir         S  temp folder with the tiny checkpoint (what the server sees)
  comfy_server       S  ComfyServer (scripts/comfyui_runtime.py) running main.py --cpu
  server             S  its base URL, e.g. "http://127.0.0.1:45678"
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import oracle_data  # noqa: E402
from scripts import comfy_inprocess as inprocess  # noqa: E402
from scripts import tiny_models  # noqa: E402
from scripts import comfyui_runtime as rt  # noqa: E402

_COMFY_FIXTURES = {"comfyui_dir", "comfy_core", "comfy", "run_prompt", "tiny_sd15_patcher",
                   "tiny_vae", "tiny_checkpoint", "oracle_checkpoint", "models_dir",
                   "comfy_server", "server", "tiny_flux1_patcher", "tiny_flux2_patcher",
                   "tiny_qwen_image_patcher", "tiny_z_image_patcher", "tiny_sd35_patcher"}
_SLOW_FIXTURES = {"comfy_server", "server", "oracle_checkpoint"}


class _RepoRootIsNotATestPackage:
    """The repo root is the node pack, so it has an ``__init__.py``; pytest (>= 8) would turn it
    into a Package node and import that ``__init__.py`` (as a top-level module named after the
    checkout folder, with the folder's parent put on sys.path) before any test runs. The pack's
    entry point imports ComfyUI, so that import must not happen outside the ``comfy`` fixture.
    Collect the root as a plain directory instead. Registered as a global plugin because
    conftest hooks only apply below their own folder."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path).resolve() == REPO_ROOT and hasattr(pytest, "Dir"):
            return pytest.Dir.from_parent(parent, path=Path(path))
        return None


def pytest_configure(config):
    if hasattr(config.hook, "pytest_collect_directory") and \
            not config.pluginmanager.has_plugin("scsa-repo-root-not-a-package"):
        config.pluginmanager.register(_RepoRootIsNotATestPackage(), "scsa-repo-root-not-a-package")


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _COMFY_FIXTURES:
            item.add_marker(pytest.mark.comfy)
        if names & _SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


# ----------------------------------------------------------------------------------- ComfyUI
@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    """The ComfyUI checkout; fails (not skips) with the fix when there is none."""
    try:
        return rt.comfyui_path()
    except rt.ComfyUINotFound as e:
        pytest.fail(f"{e}", pytrace=False)


@pytest.fixture(scope="session")
def comfy_core(comfyui_dir, tmp_path_factory) -> inprocess.ComfyRuntime:
    """ComfyUI in this process on CPU (core + comfy_extras nodes, no custom nodes).

    Output/temp/input/user dirs are in a temp dir; .cache/models/ is registered as a
    checkpoints and vae folder, so files the model fixtures write there can be loaded by name.
    """
    try:
        runtime = inprocess.start_comfy(comfyui_dir, tmp_path_factory.mktemp("comfy"))
    except Exception:
        pytest.fail(f"importing ComfyUI from {comfyui_dir} failed (did `bash scripts/setup.sh` "
                    f"install its requirements?):\n{inprocess.format_exc()}", pytrace=False)
    tiny_models.MODELS_CACHE.mkdir(parents=True, exist_ok=True)
    runtime.add_models_dir(tiny_models.MODELS_CACHE)
    return runtime


@pytest.fixture(autouse=True)
def no_cached_styles():
    """Each test starts with no style inversion cached by an earlier test: a reused style leaves
    the content to be inverted in a smaller batch, whose float rounding may differ in the last
    bits from a fresh run's, and tests compare runs bit for bit."""
    try:
        inprocess.pack_module("nodes/style_reuse.py").STYLE_CACHE.clear()
    except LookupError:
        pass  # the pack is not loaded in this session (yet)
    yield


@pytest.fixture(scope="session")
def comfy(comfy_core) -> inprocess.ComfyRuntime:
    """comfy_core with this repo's pack registered (its __init__.py / comfy_entrypoint).

    ``comfy.loaded_packs[str(REPO_ROOT)]`` lists the node ids the pack added. Fails with the
    pack's import traceback if it does not load.
    """
    try:
        comfy_core.load_pack(REPO_ROOT)
    except inprocess.PackLoadError as e:
        pytest.fail(str(e), pytrace=False)
    return comfy_core


@pytest.fixture(scope="session")
def run_prompt(comfy):
    """``run_prompt(prompt, outputs=None) -> PromptResult`` on the session executor (pack loaded)."""
    return comfy.run_prompt


# ------------------------------------------------------------------------------ tiny models
@pytest.fixture
def tiny_sd15_patcher(comfy_core):
    """A fresh ModelPatcher (random SD1.5-structured UNet, 32 channels, seed 0) for each test."""
    return tiny_models.build_tiny_sd15_patcher(seed=0)


@pytest.fixture
def tiny_vae(comfy_core):
    """A fresh comfy.sd.VAE around a random TAESD (seed 0)."""
    return tiny_models.build_tiny_vae(seed=0)


@pytest.fixture
def tiny_flux1_patcher(comfy_core):
    """A fresh ModelPatcher (random Flux.1-structured transformer, seed 0) for each test.
    Conditioning: ``tiny_models.tiny_flux_conditioning("flux1")``."""
    return _tiny_dit_patcher(comfy_core, "flux1")


@pytest.fixture
def tiny_flux2_patcher(comfy_core):
    """A fresh ModelPatcher (random Flux.2-structured transformer, seed 0) for each test; skips
    on a ComfyUI without comfy.supported_models.Flux2. Conditioning: ``tiny_flux_conditioning("flux2")``."""
    return _tiny_dit_patcher(comfy_core, "flux2")


def _tiny_dit_patcher(comfy_core, variant: str):
    # Skip, not fail: a ComfyUI version without the family's model class cannot run that family at
    # all, and the other version still runs the test.
    try:
        return tiny_models.build_tiny_dit_patcher(variant, seed=0)
    except tiny_models.VariantUnavailable as e:
        pytest.skip(f"ComfyUI {comfy_core.version}: {e}")


@pytest.fixture
def tiny_qwen_image_patcher(comfy_core):
    """A fresh ModelPatcher (random Qwen-Image-structured transformer, seed 0) for each test; skips
    on a ComfyUI without comfy.supported_models.QwenImage. Conditioning / latent:
    ``tiny_models.tiny_dit_conditioning("qwen_image")`` / ``tiny_dit_latent("qwen_image", h, w)`` (5-D)."""
    return _tiny_dit_patcher(comfy_core, "qwen_image")


@pytest.fixture
def tiny_z_image_patcher(comfy_core):
    """A fresh ModelPatcher (random Z-Image-structured NextDiT, seed 0) for each test; skips on a
    ComfyUI without comfy.supported_models.ZImage. Conditioning: ``tiny_dit_conditioning("z_image")``."""
    return _tiny_dit_patcher(comfy_core, "z_image")


@pytest.fixture
def tiny_sd35_patcher(comfy_core):
    """A fresh ModelPatcher (random SD3.5 Medium-like MMDiT, seed 0) for each test; skips on a
    ComfyUI without comfy.supported_models.SD3. Conditioning: ``tiny_dit_conditioning("sd35")``."""
    return _tiny_dit_patcher(comfy_core, "sd35")


@pytest.fixture(scope="session")
def tiny_checkpoint(comfy_core) -> Path:
    """.cache/models/sd15_tiny_v*_s0.safetensors (built once, ~300 MB incl. CLIP-L).

    In-process: ``{"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": p.name}}``.
    """
    return tiny_models.write_tiny_checkpoint(with_clip=True, seed=0)


# ------------------------------------------------------------------------------------ oracle
@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    """shared/oracle ($SCSA_ORACLE_DIR or ../shared/oracle); skips if absent."""
    d = oracle_data.oracle_dir()
    if not (d / "make_checkpoint.py").is_file():
        pytest.skip(f"oracle data not found at {d} (set SCSA_ORACLE_DIR to shared/oracle)")
    return d


@pytest.fixture(scope="session")
def oracle_checkpoint(oracle_dir, comfy_core) -> Path:
    """The oracle's random-weight SD1.5 checkpoint (.cache/models/sd15_random_s20250601_fp16
    .safetensors, 2.1 GB), built by oracle/make_checkpoint.py on first use (~30-60 s)."""
    try:
        return oracle_data.build_oracle_checkpoint(oracle_dir)
    except Exception as e:
        pytest.fail(f"building the oracle checkpoint failed: {e}", pytrace=False)


# ------------------------------------------------------------------------------------ server
@pytest.fixture(scope="session")
def dit_stand_ins(comfy_core, comfyui_dir, tiny_checkpoint, tmp_path_factory) -> dict:
    """``{variant: scripts.run_workflow.StandIn}`` for every DiT variant (tiny_models.DIT_VARIANTS:
    flux1, flux2, qwen_image, z_image, sd35): the runner's random-weight stand-ins for the DiT
    workflows (``.rewrite(api_prompt)``), their files (tiny_models.write_dit_standin_files) linked
    into the session's models folder (``.folder``, which ``models_dir`` returns)."""
    from scripts import run_workflow

    d = tmp_path_factory.mktemp("models")
    version = rt.comfyui_version(comfyui_dir)
    return {variant: run_workflow.dit_stand_in(variant, tiny_models.write_dit_standin_files(variant, version), d)
            for variant in tiny_models.DIT_VARIANTS}


@pytest.fixture(scope="session")
def models_dir(tiny_checkpoint, dit_stand_ins, tmp_path_factory) -> Path:
    """A temp models folder holding (a symlink to) the tiny checkpoint, the DiT stand-ins'
    files, and random-weight SANet and StyTr2 sets under style_transfer/ named as the
    feed-forward templates name them."""
    import feedforward_weights
    from scripts import make_workflows

    d = next(iter(dit_stand_ins.values())).folder
    link = d / tiny_checkpoint.name
    try:
        link.symlink_to(tiny_checkpoint)
    except OSError:
        import shutil
        shutil.copy2(tiny_checkpoint, link)
    for variant, (_, weight_set, _) in make_workflows.FEEDFORWARD.items():
        feedforward_weights.write_official_folder(d / "style_transfer" / weight_set.rstrip("/"), variant,
                                                  extension=".safetensors")
    return d


@pytest.fixture(scope="session")
def comfy_server(comfyui_dir, models_dir):
    """A headless ComfyUI (main.py --cpu) with this pack linked into its custom_nodes and
    ``models_dir`` as its models folder and the random-weight stand-in nodes (scripts/standin_nodes);
    stopped at the end of the session."""
    srv = rt.ComfyServer(models_dir=models_dir, comfy_dir=comfyui_dir, stand_ins=True)
    try:
        srv.start()
    except Exception as e:
        srv.cleanup()
        pytest.fail(f"ComfyUI server did not start: {e}", pytrace=False)
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture(scope="session")
def server(comfy_server) -> str:
    """Base URL of the session's headless ComfyUI, e.g. http://127.0.0.1:45678."""
    return comfy_server.base_url
