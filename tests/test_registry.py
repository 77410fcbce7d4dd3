"""Registry readiness, checked with the Comfy Registry's own tool (comfy-cli) on a fresh clone.

- ``comfy node validate`` (what ``comfy node publish`` checks before uploading: pyproject.toml
  parses, a version is set, the classifier and ``requires-comfyui`` formats, and ruff's
  exec / eval / one-line-statements rules) passes without a single warning;
- ``comfy node pack`` (the archive ``publish`` uploads: git-tracked files minus .comfyignore)
  holds what an artist's ComfyUI needs in custom_nodes/ and nothing else; packed outside a git
  checkout (where comfy-cli takes every file) it holds the same files.

Both run on a ``git clone`` of HEAD in a temp folder, so only committed files count. comfy-cli
lives in its own venv, .cache/tools/comfy-cli (scripts/setup_comfy_cli.sh, called by
scripts/setup.sh); without it these tests FAIL with the fix. It runs offline (telemetry off by
environment, no prompt, stdin closed). No ComfyUI runtime is needed: these tests use no
``comfy`` fixture, so ``-m "not comfy"`` runs them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# the tool venv of scripts/setup_comfy_cli.sh (COMFY_CLI_VENV moves it there and here alike)
COMFY_CLI = Path(os.environ.get("COMFY_CLI_VENV") or REPO_ROOT / ".cache" / "tools" / "comfy-cli") / "bin" / "comfy"
FIX = "run `bash scripts/setup.sh` (it installs comfy-cli through scripts/setup_comfy_cli.sh)"

# What ships: top-level files and folders (the same allowlist as .comfyignore, kept here on
# purpose: the test must not trust the file it checks).
TOP_FILES = {"__init__.py", "LICENSE", "README.md", "requirements.txt", "pyproject.toml"}
CODE_DIRS = ("nodes", "scsa_core")
# workflows/ holds the templates, their API twins, thumbnails and the example inputs (inputs/);
WORKFLOW_DIRS = ("workflows",)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".svg"}
MAX_ARCHIVE_BYTES = 10 * 1024 * 1024   # a few workflows, pictures and sources: weights would show

# Planted in the clone before packing: each must stay out of the archive.
PLANTED_TRACKED = ("nodes/__pycache__/planted.cpython-311.pyc", "scsa_core/planted.safetensors",
                   "workflows/planted.ckpt")
PLANTED_UNTRACKED = (".venv/lib/planted.py", ".venv-0.33.0/planted.py", ".cache/models/planted.pt",
                     "outputs/planted.png", "nodes/__pycache__/untracked.cpython-311.pyc")


def _forbidden(name: str) -> str | None:
    """Why ``name`` (an archive entry) must not ship, or None."""
    parts = PurePosixPath(name).parts
    top = parts[0]
    if top in {"tests", "scripts", ".ci", ".git", ".cache", "outputs"} or top.startswith(".venv"):
        return f"{top}/ is development only"
    if any(p == "__pycache__" for p in parts) or name.endswith((".pyc", ".pyo")):
        return "byte code"
    if any(p.startswith(".") for p in parts):
        return "dot file or folder (git/CI/tool configuration, caches)"
    if name.endswith((".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".onnx")):
        return "model weights"
    if len(parts) == 1:
        return None if top in TOP_FILES else "top-level file outside the allowlist"
    if top in CODE_DIRS + WORKFLOW_DIRS:
        return None
    if top == "docs":
        return None if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES else "docs/ ships pictures only"
    return f"top-level folder {top}/ is not in the allowlist"


def _comfy(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    """comfy-cli, offline and non-interactive: telemetry off (and with it the consent prompt),
    --skip-prompt, stdin closed; --no-json for plain text on a non-TTY. HOME is a scratch folder:
    comfy-cli reads and writes ~/.config/comfy-cli, and a developer's own settings must not count."""
    env = dict(os.environ, DO_NOT_TRACK="1", COMFY_NO_TELEMETRY="1", HOME=str(home))
    return subprocess.run([str(COMFY_CLI), "--skip-prompt", "--no-json", *args], cwd=str(cwd), env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def _git(args: list[str], cwd: Path) -> str:
    # the clone is a scratch copy: no identity, signing or hooks of the developer's are needed
    proc = subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@invalid", "-c", "commit.gpgsign=false",
                           "-c", "core.hooksPath=/dev/null", *args],
                          cwd=str(cwd), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"git {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def _pack(cwd: Path, home: Path) -> tuple[list[str], int]:
    proc = _comfy(["node", "pack"], cwd, home)
    out = proc.stdout + proc.stderr
    archive = cwd / "node.zip"
    assert proc.returncode == 0 and archive.is_file(), f"comfy node pack failed ({proc.returncode}):\n{out[-4000:]}"
    with zipfile.ZipFile(archive) as z:
        names = [i.filename for i in z.infolist() if not i.is_dir()]
    return sorted(names), archive.stat().st_size


@dataclass
class Packed:
    problem: str = ""                       # set when comfy-cli is missing: every test fails with it
    clone: Path | None = None
    tracked: list[str] = field(default_factory=list, repr=False)   # git ls-files of HEAD (before planting)
    validate: subprocess.CompletedProcess | None = field(default=None, repr=False)
    names: list[str] = field(default_factory=list, repr=False)     # packed from the clone (git mode)
    size: int = 0
    names_no_git: list[str] = field(default_factory=list, repr=False)   # packed from a plain export

    def need(self) -> "Packed":
        if self.problem:
            pytest.fail(self.problem, pytrace=False)
        return self


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Packed:
    if not os.access(COMFY_CLI, os.X_OK):
        return Packed(problem=f"comfy-cli is not installed at {COMFY_CLI}: {FIX}")
    base = tmp_path_factory.mktemp("registry")
    home = base / "home"
    home.mkdir()
    clone = base / "scsa-style-transfer"
    _git(["clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(clone)], base)
    p = Packed(clone=clone, tracked=sorted(_git(["ls-files"], clone).splitlines()))
    p.validate = _comfy(["node", "validate"], clone, home)

    # A plain export of HEAD (no .git): comfy-cli then zips every file not matched by .comfyignore.
    plain = base / "export" / "scsa-style-transfer"
    plain.mkdir(parents=True)
    _git(["archive", "-o", str(base / "export.tar"), "HEAD"], clone)
    subprocess.run(["tar", "-xf", str(base / "export.tar"), "-C", str(plain)], check=True, timeout=300)

    for rel in PLANTED_TRACKED + PLANTED_UNTRACKED:
        for root in (clone, plain):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"planted by tests/test_registry.py\n")
    _git(["add", "-f", *PLANTED_TRACKED], clone)
    _git(["commit", "-q", "-m", "planted files that must not ship"], clone)

    p.names, p.size = _pack(clone, home)
    p.names_no_git, _ = _pack(plain, home)
    return p


def test_comfy_node_validate_passes_without_warnings(packed):
    proc = packed.need().validate
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"comfy node validate failed ({proc.returncode}):\n{out[-4000:]}"
    assert "All validation checks passed" in out, out[-4000:]
    # config warnings (classifiers, license format, version ranges) and ruff's security findings
    assert not re.search(r"warning", out, re.IGNORECASE), out[-4000:]


def test_the_archive_holds_what_a_user_needs(packed):
    p = packed.need()
    names = set(p.names)
    missing = sorted(TOP_FILES - names)
    # every tracked file of the code, the workflows and the example inputs (complete, not a sample)
    shipped_dirs = CODE_DIRS + WORKFLOW_DIRS
    missing += [f for f in p.tracked if f.split("/", 1)[0] in shipped_dirs and f not in names
                and not _forbidden(f)]
    # the pictures README.md shows
    readme = (p.clone / "README.md").read_text(encoding="utf-8")
    pictures = [m for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", readme) if "://" not in m]
    missing += [pic for pic in pictures if pic not in names]
    assert not missing, f"the archive lacks {missing}"
    assert {"nodes/__init__.py", "scsa_core/__init__.py"} <= names
    workflows = [n for n in names if re.fullmatch(r"(example_)?workflows/[^/]+\.json", n)]
    assert workflows, f"no workflows/*.json in the archive: {p.names}"
    assert p.size < MAX_ARCHIVE_BYTES, f"the archive is {p.size / 2**20:.1f} MiB: {p.names}"


def test_the_archive_holds_nothing_else(packed):
    p = packed.need()
    bad = {n: why for n in p.names if (why := _forbidden(n))}
    assert not bad, f"the archive must not ship these (fix .comfyignore): {bad}"
    for planted in PLANTED_TRACKED + PLANTED_UNTRACKED:
        assert planted not in p.names


def test_packed_outside_git_the_archive_is_the_same(packed):
    """Where comfy-cli finds no git checkout it zips every file: .comfyignore alone must then
    keep out the untracked venvs, caches and weights, and leave the same file list."""
    p = packed.need()
    planted = set(PLANTED_TRACKED + PLANTED_UNTRACKED)
    assert sorted(set(p.names_no_git) - planted) == p.names, (
        f"only without git: {sorted(set(p.names_no_git) - set(p.names))}; "
        f"only with git: {sorted(set(p.names) - set(p.names_no_git))}")
    assert not planted & set(p.names_no_git)


def test_the_templates_load_images_that_ship(packed):
    """A template's Load Image nodes name example inputs: those files must be in the archive
    (the pack puts them into ComfyUI's input folder), or a new user's first Run fails."""
    p = packed.need()
    shipped = {PurePosixPath(n).name for n in p.names}
    wanted: dict[str, set[str]] = {}
    with zipfile.ZipFile(p.clone / "node.zip") as z:
        for name in p.names:
            if not re.fullmatch(r"(example_)?workflows/[^/]+\.json", name):
                continue
            graph = json.loads(z.read(name))
            for node in graph.get("nodes", []):
                for value in node.get("widgets_values") or []:
                    if isinstance(value, str) and PurePosixPath(value).suffix.lower() in IMAGE_SUFFIXES:
                        wanted.setdefault(PurePosixPath(value).name, set()).add(name)
    assert wanted, "no template names an input image: is the UI format still nodes[].widgets_values?"
    missing = {img: sorted(by) for img, by in wanted.items() if img not in shipped}
    assert not missing, f"images the templates load but the archive lacks: {missing}"
