#!/usr/bin/env python3
"""Run an SCSA workflow headless: one image pair, a whole folder of pairs, or a folder of contents.

    .venv/bin/python scripts/run_workflow.py                      # the example, on the example images
    .venv/bin/python scripts/run_workflow.py --content photo.jpg --style painting.jpg \\
        --content-map photo_sem.png --style-map painting_sem.png --checkpoint v1-5-pruned-emaonly.safetensors
    .venv/bin/python scripts/run_workflow.py --pairs ../shared/data/sem_pairs --out runs/
    .venv/bin/python scripts/run_workflow.py --contents photos/ --style painting.jpg --style-map painting_sem.png
    .venv/bin/python scripts/run_workflow.py workflows/styleid_sd15.json --server http://127.0.0.1:8188

WORKFLOW is a UI workflow (as saved by ComfyUI, e.g. workflows/*.json) or an API prompt
(workflows/api/*.json, "Export (API)"); UI files are converted with the node definitions
of the server (/object_info). Without --server, a headless ComfyUI with this pack is started
from the runtime of scripts/setup.sh (or COMFYUI_PATH) and stopped at the end.

Images: the workflow's image loaders are matched by their file name (scsa_example_content.png,
scsa_example_style.png, scsa_example_content_map.png, scsa_example_style_map.png) or title
("Content image", "Style semantic map", ...) and given the files from --content/--style/
--content-map/--style-map (and --style-2/--style-map-2 ... --style-4/--style-map-4 for a workflow
with several style images, e.g. workflows/scsa_two_styles.json: "Style image 2", "Style 2
semantic map"), uploaded through /upload/image. --pairs DIR runs every pair found in
DIR: <name>.jpg (content), <name>_paint.jpg (style), <name>_sem.png and <name>_paint_sem.png
(their maps), in DIR or its sub-folders. Style and maps are resized to the content's size (maps
without interpolation). Without images, the example inputs the repository ships are used
(workflows/inputs/, painted by scripts/make_example_inputs.py).

--contents DIR --style IMG [--style-map MAP] runs every content image of DIR (not its sub-folders;
.png/.jpg/.jpeg/.webp, in name order) against that one style, one prompt per content on the same
server: <name>.<ext> with its map <name>_sem.png (else <name>_map.png) beside it; files named
*_sem.png / *_map.png are maps, never contents. Each result is <workflow>_<content>_<style>.png.
Here the style keeps its own size (scaled by --size like the content; its map resized to it), not
each content's: so its latent, and with it its DDIM inversion, is the same for every content, and
the server inverts it once and reuses it from the second content on (nodes/style_reuse.py). Each
content's map is resized to the content.

Model files: the ones the workflow's loaders name (Load Checkpoint; for the DiTs (Flux, Qwen-Image,
Z-Image), Load Diffusion Model, DualCLIPLoader / Load CLIP / TripleCLIPLoader and Load VAE), or
--checkpoint NAME. The embedded server looks in --models DIR (and its checkpoints/,
diffusion_models/, text_encoders/, vae/ sub-folders) and in ComfyUI's models/. If one is missing
and no checkpoint was asked for, the run goes on with RANDOM-WEIGHT stand-ins, said loudly
(``make_stand_in``): for a DiT graph (``dit_variant``: Flux.1, Flux.2, Qwen-Image, Z-Image, or an
SD3.5 checkpoint) the stand-in node TinyRandomDiT of scripts/standin_nodes with a random VAE and
the tiny CLIP-L (built once into .cache/models), else the tests' tiny SD1.5 checkpoint. Their
output is noise, not art. --save-latents DIR also keeps
each decoded latent as ComfyUI's .latent file, to compare such runs numerically.
"""
from __future__ import annotations

import argparse
import io
import json
import mimetypes
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scripts import comfyui_runtime as rt  # noqa: E402
from scripts import make_example_inputs as examples  # noqa: E402
from scripts import make_workflows  # noqa: E402
from scripts import tiny_models  # noqa: E402
from scripts.workflow_format import WorkflowError, is_ui_workflow, ui_to_api  # noqa: E402
from scsa_core.styles import MAP_OF, STREAMS, STYLE_IMAGES  # noqa: E402  (torch-free)

DEFAULT_WORKFLOW = REPO_ROOT / "workflows" / "scsa_sd15_color_maps.json"
DEFAULT_OUT = REPO_ROOT / "outputs"
DEFAULT_JOB = "example"
# Styles 2-4 for the several-styles workflows (scsa_two_styles): --style-2, --style-map-2, ...
STYLE_ROLES = tuple(role for style in STYLE_IMAGES for role in (style, MAP_OF[style]))
MORE_STYLE_ROLES = STYLE_ROLES[2:]
ROLES = STREAMS
# the file names the example workflows' loaders hold
ROLE_FILES = dict(make_workflows.IMAGES)
IMAGE_LOADERS = ("LoadImage", "SCSALoadSemanticMap")
TINY_SIZE, TINY_STEPS = 64, 8     # random weights: keep the demo run short
CKPT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".sft")


class RunError(RuntimeError):
    """A problem the user can fix; the message says how. Exit code 2."""


# ------------------------------------------------------------------------------------ HTTP
class Client(rt.ComfyClient):
    """The runner's ComfyUI endpoints: the shared client plus uploads and downloads."""

    def upload_image(self, data: bytes, filename: str) -> str:
        """POST /upload/image (overwrite); returns the name to put into a loader's image input."""
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        parts = []
        for name, value in (("overwrite", "true"), ("type", "input")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(self.base_url + "/upload/image", data=b"".join(parts), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            info = json.loads(r.read())
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                        "type": image.get("type", "output")})
        return self.get(f"/view?{query}", timeout=120)


# -------------------------------------------------------------------------------- progress
class Progress:
    """One status line per prompt: node k/n, its title, and its step counter."""

    def __init__(self, label: str, prompt: dict, quiet: bool = False, stream=None):
        self.label, self.prompt, self.quiet = label, prompt, quiet
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.done: set[str] = set()
        self.node = None
        self.last_bucket = None
        self.started = time.monotonic()
        self.previews = 0

    def _title(self, node_id) -> str:
        node = self.prompt.get(str(node_id), {})
        title = node.get("_meta", {}).get("title") or node.get("class_type", "?")
        return f"{title} [{node.get('class_type', '?')}]" if title != node.get("class_type") else title

    def _emit(self, text: str, final: bool = False) -> None:
        if self.quiet:
            return
        line = f"[{self.label}] {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def cached(self, nodes) -> None:
        self.done.update(str(n) for n in nodes)
        if nodes:
            self._emit(f"{len(nodes)} node(s) cached")

    def executing(self, node_id) -> None:
        if self.node is not None:
            self.done.add(self.node)
        self.node = str(node_id)
        self.last_bucket = None
        self._emit(f"node {len(self.done) + 1}/{len(self.prompt)}: {self._title(node_id)}")

    def progress(self, node_id, value: int, maximum: int) -> None:
        bucket = value if self.tty else (value * 4) // max(1, maximum)   # lines at 25 % steps
        if bucket == self.last_bucket:
            return
        self.last_bucket = bucket
        self._emit(f"node {len(self.done) + 1}/{len(self.prompt)}: {self._title(node_id)}: "
                   f"step {value}/{maximum}")

    def preview(self, image: bytes) -> None:
        """A live preview frame (JPEG or PNG bytes) of the node now executing."""
        self.previews += 1

    def finished(self, ok: bool) -> None:
        self._emit(f"{'done' if ok else 'FAILED'} in {time.monotonic() - self.started:.1f} s", final=True)


def run_prompt(client: Client, prompt: dict, progress: Progress, timeout: float) -> dict:
    """Queue ``prompt``, show its progress, return its /history entry; RunError if it failed."""
    def on_message(kind: str, data: dict) -> None:
        if kind == "execution_cached":
            progress.cached(data.get("nodes") or [])
        elif kind == "executing" and data.get("node") is not None:
            progress.executing(data["node"])
        elif kind == "progress":
            progress.progress(data.get("node"), int(data.get("value", 0)), int(data.get("max", 1)))

    try:
        entry = client.run(prompt, timeout, on_message=on_message, on_preview=progress.preview)
    except rt.PromptRefused as refused:
        raise RunError(f"ComfyUI refused the workflow (HTTP {refused.status}):\n"
                       f"{_format_refusal(refused.body, prompt)}") from None
    except TimeoutError:
        raise RunError(f"the workflow did not finish within {timeout:.0f} s (--timeout)") from None
    ok = entry["status"].get("status_str") == "success"
    progress.finished(ok)
    if not ok:
        raise RunError(f"the workflow failed:\n{_format_failure(entry)}")
    return entry


def _format_refusal(body, prompt: dict) -> str:
    if not isinstance(body, dict):
        return str(body)[:3000]
    lines = []
    error = body.get("error") or {}
    if error:
        lines.append(f"  {error.get('message', '')} {error.get('details', '')}".rstrip())
    for node_id, info in (body.get("node_errors") or {}).items():
        title = prompt.get(node_id, {}).get("_meta", {}).get("title", info.get("class_type"))
        for err in info.get("errors", []):
            lines.append(f"  node {node_id} ({title}): {err.get('message')}: {err.get('details')}")
    return "\n".join(lines) or json.dumps(body)[:3000]


def _format_failure(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return (f"  node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}")
    return json.dumps(entry.get("status"), indent=1)[:3000]


# ------------------------------------------------------------------------------ the inputs
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MAP_SUFFIXES = ("_sem", "_map")    # <name>_sem.png (the data set's), else <name>_map.png


def flag(role: str) -> str:
    """The command-line option of an image role: style_map_2 -> --style-map-2."""
    return f"--{role.replace('_', '-')}"


def check_given(given: dict[str, Path]) -> None:
    """Every image named on the command line exists (RunError naming the option otherwise)."""
    for role, path in given.items():
        if not path.is_file():
            raise RunError(f"{flag(role)}: {path} does not exist")


def find_pairs(folder: Path) -> dict[str, dict[str, Path]]:
    """``{name: {role: path}}`` for every <name>_paint_sem.png with its three siblings."""
    pairs = {}
    for style_map in sorted(Path(folder).rglob("*_paint_sem.png")):
        name = style_map.name[: -len("_paint_sem.png")]
        base = style_map.parent
        files = {"content": _first(base, name, ""), "style": _first(base, name, "_paint"),
                 "content_map": base / f"{name}_sem.png", "style_map": style_map}
        if all(p is not None and p.is_file() for p in files.values()):
            pairs[name] = files
    return pairs


def _first(base: Path, name: str, suffix: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        p = base / f"{name}{suffix}{ext}"
        if p.is_file():
            return p
    return None


def find_contents(folder: Path) -> dict[str, dict[str, Path]]:
    """``{name: {"content": path[, "content_map": path]}}`` for every image in ``folder`` (not its
    sub-folders) whose name does not end in _sem / _map, in name order; its map is the first of
    <name>_sem.png, <name>_map.png beside it (none: no "content_map")."""
    contents: dict[str, dict[str, Path]] = {}
    for path in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS or path.stem.endswith(MAP_SUFFIXES):
            continue
        if path.stem in contents:
            raise RunError(f"--contents: two contents named {path.stem!r} in {folder} "
                           f"({contents[path.stem]['content'].name}, {path.name}): rename one")
        contents[path.stem] = {"content": path}
        for suffix in MAP_SUFFIXES:
            if (path.parent / f"{path.stem}{suffix}.png").is_file():
                contents[path.stem]["content_map"] = path.parent / f"{path.stem}{suffix}.png"
                break
    return contents


def image_roles(prompt: dict) -> dict[str, str]:
    """``{role: node id}`` of the workflow's image loaders (by default file name, else title)."""
    roles: dict[str, str] = {}
    by_title = {}
    for node_id, node in prompt.items():
        if node.get("class_type") not in IMAGE_LOADERS:
            continue
        value = str(node.get("inputs", {}).get("image", ""))
        for role, filename in ROLE_FILES.items():
            if value == filename or value.endswith("/" + filename):
                roles.setdefault(role, node_id)
                break
        else:
            title = node.get("_meta", {}).get("title", "").lower()
            is_map = "map" in title or "semantic" in title or node["class_type"] == "SCSALoadSemanticMap"
            number = re.search(r"\b([2-4])\b", title)
            for side in ("content", "style"):
                if side in title:
                    role = f"{side}_map" if is_map else side
                    if side == "style" and number:   # "Style image 2", "Style 2 semantic map"
                        role = f"{role}_{number.group(1)}"
                    by_title.setdefault(role, node_id)
    for role, node_id in by_title.items():
        if role not in roles and node_id not in roles.values():
            roles[role] = node_id
    return roles


def prepare_images(files: dict[str, Path], size: int | None, own_style_size: bool = False) -> dict[str, bytes]:
    """PNG bytes per role: the content scaled so its longer side is ``size`` (multiple of 8),
    everything else resized to the content's size (maps with nearest-neighbour). With
    ``own_style_size`` the style is scaled like the content instead, and its map resized to it."""
    from PIL import Image, ImageOps
    images = {}
    for role, path in files.items():
        try:
            img = ImageOps.exif_transpose(Image.open(path))
        except Exception as e:
            raise RunError(f"{flag(role)}: cannot read {path}: {e}") from None
        images[role] = img.convert("RGB")

    def scaled(img) -> tuple[int, int]:
        w, h = img.size
        if size:
            scale = size / max(w, h)
            w, h = max(8, round(w * scale / 8) * 8), max(8, round(h * scale / 8) * 8)
        return (w, h)

    targets = dict.fromkeys(images, scaled(images["content"])) if "content" in images else {}
    if own_style_size:
        for style in STYLE_IMAGES:
            if style in images:
                targets.update(dict.fromkeys((style, MAP_OF[style]), scaled(images[style])))
    out = {}
    for role, img in images.items():
        target = targets.get(role)
        if target and img.size != target:
            img = img.resize(target, Image.NEAREST if role in MAP_OF.values() else Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out[role] = buf.getvalue()
    return out


# ----------------------------------------------------------------------------- model files
# The loaders whose files the runner looks for: class -> [(input, ComfyUI model folder, position
# of the input among the UI node's widgets_values)].
MODEL_INPUTS = {
    "CheckpointLoaderSimple": [("ckpt_name", "checkpoints", 0)],
    "UNETLoader": [("unet_name", "diffusion_models", 0)],
    "VAELoader": [("vae_name", "vae", 0)],
    "DualCLIPLoader": [("clip_name1", "text_encoders", 0), ("clip_name2", "text_encoders", 1)],
    "CLIPLoader": [("clip_name", "text_encoders", 0)],
    "TripleCLIPLoader": [("clip_name1", "text_encoders", 0), ("clip_name2", "text_encoders", 1),
                         ("clip_name3", "text_encoders", 2)],
}
TEXT_ENCODER_LOADERS = ("DualCLIPLoader", "CLIPLoader", "TripleCLIPLoader")
# The text-encoder type (the loader's "type" widget) of a Load Diffusion Model graph -> its DiT
# stand-in variant (tiny_models.DIT_VARIANTS, built by the node TinyRandomDiT of
# scripts/standin_nodes). TripleCLIPLoader has no type widget: it loads SD3's three encoders.
DIT_TEXT_ENCODERS = {"flux": "flux1", "flux2": "flux2", "qwen_image": "qwen_image", "lumina2": "z_image",
                     "sd3": "sd35"}
IMPLIED_TEXT_ENCODER_TYPE = {"TripleCLIPLoader": "sd3"}
# A Load Checkpoint graph whose file is named like one of these gets that DiT's stand-in (SD3.5 is
# loaded from one checkpoint); any other Load Checkpoint graph gets the tiny SD1.5 checkpoint.
DIT_CHECKPOINT_NAMES = ((re.compile(r"sd3", re.IGNORECASE), "sd35"),)
# The stand-in VAE's layout per variant (tiny_models.write_dit_standin_files), for the warning.
STANDIN_VAE_LAYOUT = {"qwen_image": "TAEHV-layout"}


def model_folders(models: Path | None, comfy_dir: Path, kind: str) -> list[Path]:
    """Where the embedded server looks for files of one ComfyUI model folder ``kind``."""
    folders = []
    if models is not None:
        folders += [models / kind, models]
    folders.append(comfy_dir / "models" / kind)
    return folders


def files_in(folders: list[Path]) -> list[str]:
    names = set()
    for folder in folders:
        if folder.is_dir():
            for p in folder.rglob("*"):
                if p.suffix.lower() in CKPT_EXTENSIONS and p.is_file():
                    names.add(p.relative_to(folder).as_posix())
    return sorted(names)


def workflow_loaders(workflow: dict) -> list[tuple[str, dict]]:
    """``[(class, {input: value})]`` of the workflow's model loaders (UI or API format)."""
    found = []
    if is_ui_workflow(workflow):
        for node in workflow["nodes"]:
            values = node.get("widgets_values")
            if node.get("type") in MODEL_INPUTS and values:
                if isinstance(values, dict):
                    found.append((node["type"], dict(values)))
                else:
                    named = {name: values[i] for name, _, i in MODEL_INPUTS[node["type"]] if i < len(values)}
                    type_at = len(MODEL_INPUTS[node["type"]])   # the type widget follows the file names
                    if node["type"] in TEXT_ENCODER_LOADERS and node["type"] not in IMPLIED_TEXT_ENCODER_TYPE \
                            and type_at < len(values):
                        named["type"] = values[type_at]
                    found.append((node["type"], named))
        return found
    for node in workflow.values():
        if isinstance(node, dict) and node.get("class_type") in MODEL_INPUTS:
            found.append((node["class_type"], dict(node.get("inputs", {}))))
    return found


def _built_in_child(expression: str, what: str, log):
    """The value of ``expression`` (files written by scripts/tiny_models.py, as JSON) evaluated
    in a child process with ComfyUI started: building models imports ComfyUI, which must not
    leak into this one. The writers reuse files already built."""
    log(f"preparing {what} (built once into {tiny_models.MODELS_CACHE}, ~1 min) ...")
    script = ("import json, sys, tempfile; sys.path.insert(0, sys.argv[1])\n"
              "from scripts import comfy_inprocess, comfyui_runtime, tiny_models\n"
              "comfy_inprocess.start_comfy(comfyui_runtime.comfyui_path(), tempfile.mkdtemp(prefix='scsa-tiny-'))\n"
              f"print('RESULT=' + json.dumps({expression}, default=str))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT)],
                          capture_output=True, text=True, cwd=str(REPO_ROOT))
    results = [line[len("RESULT="):] for line in proc.stdout.splitlines() if line.startswith("RESULT=")]
    if proc.returncode != 0 or not results:
        raise RunError(f"could not build {what}:\n{proc.stderr[-3000:]}")
    return json.loads(results[-1])


def tiny_checkpoint(log) -> Path:
    """The tiny random-weight SD1.5 checkpoint (scripts/tiny_models.py, built once into .cache/models)."""
    path = tiny_models.MODELS_CACHE / tiny_models.tiny_checkpoint_name(with_clip=True, seed=0)
    if not path.is_file():
        _built_in_child("tiny_models.write_tiny_checkpoint(with_clip=True, seed=0)",
                        f"the tiny random-weight checkpoint {path}", log)
    return path


class StandIn:
    """Random-weight stand-ins for a workflow whose model files are missing: the files go into a
    temp models folder, and ``rewrite`` points the API prompt's loaders at them."""

    def __init__(self, folder: Path, description: str):
        self.folder = folder
        self.description = description
        self.edits: list = []   # (class, change(node_id, node, prompt)) applied to every node of that class

    def link(self, kind: str, path: Path) -> str:
        target = self.folder / kind / path.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
        return path.name

    def rewrite(self, prompt: dict) -> None:
        for class_type, change in self.edits:
            for node_id, node in list(prompt.items()):
                if node["class_type"] == class_type:
                    change(node_id, node, prompt)


def make_stand_in(loaders: list[tuple[str, dict]], folder: Path, comfy_version: str, log) -> StandIn:
    """The stand-in for the workflow's loaders: for a DiT graph (``dit_variant``), the stand-in
    node TinyRandomDiT of that variant with a random VAE and the tiny CLIP-L (through ComfyUI's
    own Load VAE and Load CLIP); for any other Load Checkpoint graph, the tiny SD1.5 checkpoint."""
    variant = dit_variant(loaders)
    if variant is None and "CheckpointLoaderSimple" in {class_type for class_type, _ in loaders}:
        stand_in = StandIn(folder, "the tiny RANDOM-WEIGHT SD1.5 test checkpoint")
        name = stand_in.link("checkpoints", tiny_checkpoint(log))
        stand_in.edits.append(("CheckpointLoaderSimple",
                               lambda node_id, node, prompt: node["inputs"].update(ckpt_name=name)))
        return stand_in
    if variant is None:
        raise RunError("no random-weight stand-in for this workflow's model (the runner has one for Load "
                       "Checkpoint and for the DiT graphs: Load Diffusion Model with a text encoder loader of type "
                       f"{', '.join(DIT_TEXT_ENCODERS)} or TripleCLIPLoader): give its model files with --models DIR")
    files = _built_in_child(f"tiny_models.write_dit_standin_files({variant!r}, {comfy_version!r})",
                            f"the random-weight stand-in VAE and text encoder for {variant}", log)
    return dit_stand_in(variant, {kind: [Path(p) for p in paths] for kind, paths in files.items()}, folder)


def dit_variant(loaders: list[tuple[str, dict]]) -> str | None:
    """The DiT variant of a graph (one of tiny_models.DIT_VARIANTS), from its loaders: Load
    Diffusion Model with one text-encoder type (``DIT_TEXT_ENCODERS``: DualCLIPLoader type flux,
    Load CLIP type flux2 / qwen_image / lumina2 / sd3, TripleCLIPLoader), or Load Checkpoint of a
    file named like ``DIT_CHECKPOINT_NAMES`` (sd3...). None for anything else."""
    classes = {class_type for class_type, _ in loaders}
    if "UNETLoader" in classes:
        variants = {DIT_TEXT_ENCODERS.get(values.get("type") or IMPLIED_TEXT_ENCODER_TYPE.get(class_type))
                    for class_type, values in loaders if class_type in TEXT_ENCODER_LOADERS} - {None}
    else:
        variants = {variant for class_type, values in loaders if class_type == "CheckpointLoaderSimple"
                    for pattern, variant in DIT_CHECKPOINT_NAMES if pattern.search(str(values.get("ckpt_name", "")))}
    return variants.pop() if len(variants) == 1 else None


def dit_stand_in(variant: str, files: dict[str, list[Path]], folder: Path) -> StandIn:
    """The stand-in for a DiT ``variant`` graph, with ``files`` (tiny_models.write_dit_standin_files)
    linked into ``folder``: Load Diffusion Model becomes the stand-in node TinyRandomDiT, Load VAE
    and the text encoder loader read the stand-in files through ComfyUI's own loaders. A Load
    Checkpoint (SD3.5) becomes the stand-in node too, and what used its CLIP and VAE outputs reads
    them from a Load CLIP and a Load VAE added beside it."""
    layout = STANDIN_VAE_LAYOUT.get(variant, "TAESD-layout")
    stand_in = StandIn(folder, f"a tiny RANDOM-WEIGHT {variant} stand-in (scripts/standin_nodes), a random "
                               f"{layout} VAE and a random CLIP-L text encoder")
    linked = {kind: [stand_in.link(kind, path) for path in paths] for kind, paths in files.items()}
    vae = linked["vae"][0] if "vae" in linked else "taef2"   # vae_approx: ComfyUI's taef2 pair
    text_encoder = linked["text_encoders"][0]
    clip_inputs = {"clip_name": text_encoder, "type": "stable_diffusion"}

    def model(node_id, node, prompt):
        node.update(class_type="TinyRandomDiT", inputs={"variant": variant, "seed": 0})

    def encoder(node_id, node, prompt):
        node.update(class_type="CLIPLoader", inputs=dict(clip_inputs))

    def checkpoint(node_id, node, prompt):
        model(node_id, node, prompt)
        added = {1: (f"{node_id}_standin_clip", {"class_type": "CLIPLoader", "inputs": dict(clip_inputs)}),
                 2: (f"{node_id}_standin_vae", {"class_type": "VAELoader", "inputs": {"vae_name": vae}})}
        for new_id, new_node in added.values():
            prompt[new_id] = dict(new_node, _meta={"title": f"stand-in {new_node['class_type']}"})
        for other in prompt.values():
            for name, value in other["inputs"].items():
                if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] in added:
                    other["inputs"][name] = [added[value[1]][0], 0]

    stand_in.edits += [("UNETLoader", model), ("CheckpointLoaderSimple", checkpoint),
                       ("VAELoader", lambda node_id, node, prompt: node["inputs"].update(vae_name=vae))]
    stand_in.edits += [(class_type, encoder) for class_type in TEXT_ENCODER_LOADERS]
    return stand_in


# ------------------------------------------------------------------------------------ main
def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="run_workflow.py", description="Run an SCSA/StyleID workflow headless (see the module docstring).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="With no arguments: the SCSA example workflow on the example images in workflows/inputs/, on "
               "an embedded ComfyUI.")
    ap.add_argument("workflow", nargs="?", type=Path, help=f"UI or API workflow (default: {DEFAULT_WORKFLOW.relative_to(REPO_ROOT)})")
    ap.add_argument("--workflow", dest="workflow_opt", type=Path, metavar="FILE", help="same as the positional WORKFLOW")
    ap.add_argument("--server", metavar="URL", help="URL of a running ComfyUI with this pack (default: start one)")
    ap.add_argument("--models", type=Path, metavar="DIR", help="models folder for the embedded server (checkpoints in it or in "
                                               "its checkpoints/ sub-folder)")
    ap.add_argument("--checkpoint", metavar="NAME", help="checkpoint name, as ComfyUI lists it (default: the workflow's)")
    for role in ROLES:
        ap.add_argument(flag(role), type=Path, metavar="IMG", help=f"{role.replace('_', ' ')} image")
    ap.add_argument("--pairs", type=Path, metavar="DIR", help="run every pair in this folder (<name>.jpg, <name>_paint.jpg, "
                                              "<name>_sem.png, <name>_paint_sem.png)")
    ap.add_argument("--swap", action="store_true", help="with --pairs: the painting is the content")
    ap.add_argument("--contents", type=Path, metavar="DIR",
                    help="run every content image in this folder (name order; map <name>_sem.png or <name>_map.png "
                         "beside it) against the one --style (and --style-map), one prompt each on the same server. "
                         "The style keeps its own size (scaled by --size like each content) instead of being resized "
                         "to each content's as with --pairs, so its inversion is the same for all contents and is "
                         "reused from the second one on")
    ap.add_argument("--size", type=int, metavar="PX", help="scale the content so its longer side is SIZE px (default: as is)")
    ap.add_argument("--steps", type=int, metavar="N", help="DDIM steps of SCSAInvert (default: the workflow's, 50)")
    ap.add_argument("--save-latents", type=Path, metavar="DIR",
                    help="also write each decoded latent (the sampler outputs) into DIR as ComfyUI's own .latent "
                         "file (SaveLatent's format: safetensors with latent_tensor), to compare runs numerically")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help="where results are copied (default: outputs/)")
    ap.add_argument("--timeout", type=float, default=3600, metavar="S", help="seconds per prompt (default 3600)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    if a.workflow and a.workflow_opt:
        ap.error("give the workflow once (positional or --workflow)")
    a.workflow = a.workflow or a.workflow_opt or DEFAULT_WORKFLOW
    return a


def plan_jobs(a, log) -> list[tuple[str, dict[str, Path]]]:
    given = {role: getattr(a, role) for role in ROLES if getattr(a, role) is not None}
    if a.contents:
        return _content_jobs(a, given)
    if a.pairs:
        if given:
            raise RunError("give either --pairs or single images (--content, ...), not both")
        pairs = find_pairs(a.pairs)
        if not pairs:
            raise RunError(f"no pairs in {a.pairs}: expected <name>.jpg, <name>_paint.jpg, <name>_sem.png and "
                           "<name>_paint_sem.png (in the folder or its sub-folders)")
        jobs = []
        for name, files in pairs.items():
            if a.swap:
                files = {"content": files["style"], "style": files["content"],
                         "content_map": files["style_map"], "style_map": files["content_map"]}
            jobs.append((name + ("_swapped" if a.swap else ""), files))
        return jobs
    if given:
        check_given(given)
        return [(Path(given.get("content", next(iter(given.values())))).stem, given)]
    files = {role: examples.OUT_DIR / name for role, name in ROLE_FILES.items()}
    lost = [str(path) for path in files.values() if not path.is_file()]
    if lost:
        raise RunError(f"no images given and the example images are missing: {', '.join(lost)} (restore them "
                       "with git, or run scripts/make_example_inputs.py). Or pass your images: --content IMG "
                       "--style IMG --content-map MAP --style-map MAP (or --pairs DIR).")
    log(f"no images given: using the example images in {_shown(examples.OUT_DIR)}")
    return [(DEFAULT_JOB, files)]


def _content_jobs(a, given: dict[str, Path]) -> list[tuple[str, dict[str, Path]]]:
    """--contents DIR: one job per content image, each with the one style (and style map)."""
    clash = [flag(role) for role in ("content", "content_map") if role in given]
    clash += ["--pairs"] if a.pairs else []
    clash += ["--swap"] if a.swap else []
    if clash:
        raise RunError(f"--contents takes the contents (and their maps) from its folder: leave out {', '.join(clash)}")
    if "style" not in given:
        raise RunError("--contents needs the one style to run them against: --style IMG (and --style-map MAP for "
                       "an SCSA workflow)")
    check_given(given)
    if not a.contents.is_dir():
        raise RunError(f"--contents: {a.contents} is not a folder")
    contents = find_contents(a.contents)
    if not contents:
        raise RunError(f"no content images in {a.contents}: expected <name>.png/.jpg/.jpeg/.webp (files named "
                       "*_sem.png or *_map.png are maps, not contents; sub-folders are not searched)")
    return [(f"{name}_{a.style.stem}", {**files, **given}) for name, files in contents.items()]


def check_jobs(jobs: list[tuple[str, dict[str, Path]]], roles: dict[str, str], a, log) -> None:
    """Before anything runs: every image the workflow loads is there for every job (else RunError),
    and a note on the given images it has no loader for."""
    if a.contents and "content_map" in roles:
        unmapped = [files["content"].name for _, files in jobs if "content_map" not in files]
        if unmapped:
            raise RunError(f"the workflow needs a semantic map per content; none beside {', '.join(unmapped)} in "
                           f"{a.contents} (expected <name>_sem.png or <name>_map.png)")
    for _, files in jobs:
        missing = [role for role in ROLES if role in roles and role not in files]
        if missing:
            raise RunError(f"the workflow needs {', '.join(missing)} too: pass "
                           + " ".join(f"{flag(m)} IMG" for m in missing))
    unused = sorted(set(jobs[0][1]) - set(roles) - ({"content_map"} if a.contents else set()))
    if jobs[0][0] == DEFAULT_JOB:   # the example images: a workflow uses the ones it loads
        unused = [role for role in unused if role not in MORE_STYLE_ROLES]
    if unused and not a.pairs:
        log(f"note: this workflow has no {', '.join(unused)} input; ignoring it")


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv=None) -> int:
    a = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        return _main(a, log)
    except (RunError, WorkflowError, rt.ComfyUINotFound) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _main(a, log) -> int:
    started = time.monotonic()
    workflow = read_workflow(a.workflow)
    jobs = plan_jobs(a, log)
    with connect(a, workflow, log) as session:
        prompt = prepare_prompt(session.client, workflow, a, session.stand_in)
        roles = image_roles(prompt)
        check_jobs(jobs, roles, a, log)
        a.out.mkdir(parents=True, exist_ok=True)
        written, seconds, uploaded = [], [], {}
        for index, (name, files) in enumerate(jobs, 1):
            log(f"[{name}] running {a.workflow.name} ({index}/{len(jobs)})")
            job_started = time.monotonic()
            written += run_job(session.client, prompt, roles, name, files, a, log, uploaded)
            seconds.append(time.monotonic() - job_started)
            log(f"[{name}] took {seconds[-1]:.1f} s")
        if not written:
            raise RunError("the workflow produced no saved image (no SaveImage output)")
        if a.contents:
            later = f", the other {len(seconds) - 1}: {sum(seconds[1:]) / (len(seconds) - 1):.1f} s on average" \
                if len(seconds) > 1 else ""
            log(f"{len(jobs)} content(s) against {a.style.name}: the first took {seconds[0]:.1f} s{later}")
        log(f"{len(written)} image(s) in {a.out} ({time.monotonic() - started:.0f} s)")
        if session.noise_warning:
            log("reminder: random test weights were used, the images are noise (see above).")
    return 0


def read_workflow(path: Path) -> dict:
    if not path.is_file():
        raise RunError(f"workflow {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunError(f"{path} is not JSON: {e}") from None


class Session:
    """The ComfyUI the runner talks to: ``--server``, or an embedded one it starts and stops."""

    def __init__(self):
        self.client: Client | None = None
        self.server: rt.ComfyServer | None = None
        self.tmp_models: Path | None = None
        self.stand_in: StandIn | None = None
        self.noise_warning: str | None = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.cleanup()
        if self.tmp_models is not None:
            shutil.rmtree(self.tmp_models, ignore_errors=True)


def connect(a, workflow: dict, log) -> Session:
    """A Session on ``--server``, or on an embedded ComfyUI that has the workflow's checkpoint
    (or, loudly, the tiny random-weight one)."""
    session = Session()
    try:
        if a.server:
            session.client = Client(a.server)
            try:
                session.client.get_json("/system_stats", timeout=15)
            except Exception as e:
                raise RunError(f"no ComfyUI answers at {a.server} ({e}); start it, or leave out --server "
                               "to run an embedded one") from None
            return session
        comfy_dir = rt.comfyui_path()
        models = a.models.resolve() if a.models else None
        if models is not None and not models.is_dir():
            raise RunError(f"--models {models} is not a folder")
        models = _models_or_stand_in(session, a, workflow, models, comfy_dir, log)
        log(f"starting ComfyUI {rt.comfyui_version(comfy_dir)} from {comfy_dir} (headless, this pack only) ...")
        session.server = rt.ComfyServer(models_dir=models, comfy_dir=comfy_dir,
                                        stand_ins=session.stand_in is not None)
        session.server.start()
        log(f"ComfyUI is up at {session.server.base_url} (log {session.server.log_path})")
        session.client = Client(session.server.base_url)
        return session
    except BaseException:
        session.__exit__(None, None, None)
        raise


def _models_or_stand_in(session: Session, a, workflow: dict, models: Path | None, comfy_dir: Path,
                        log) -> Path | None:
    """The models folder for the embedded server: ``models`` when every file the workflow's
    loaders name is there, else a temp folder with random-weight stand-ins (and a loud warning)."""
    loaders = workflow_loaders(workflow)
    if a.checkpoint:
        for class_type, values in loaders:
            if class_type == "CheckpointLoaderSimple":
                values["ckpt_name"] = a.checkpoint
    missing, searched, listed = [], [], {}
    for class_type, values in loaders:
        for name, kind, _ in MODEL_INPUTS[class_type]:
            folders = model_folders(models, comfy_dir, kind)
            if kind not in listed:   # one scan per model folder, not per loader input
                listed[kind] = files_in(folders)
            if values.get(name) and values[name] not in listed[kind]:
                missing.append(f"{values[name]!r} ({kind})")
                searched += [str(f) for f in folders if str(f) not in searched]
    if not missing:
        return models
    if a.checkpoint:
        raise RunError(f"not found: {', '.join(missing)}. Searched: {', '.join(searched)}. Put the files into "
                       "one of these folders (or pass --models DIR).")
    session.tmp_models = Path(tempfile.mkdtemp(prefix="scsa-run-models-"))
    session.stand_in = make_stand_in(loaders, session.tmp_models, rt.comfyui_version(comfy_dir), log)
    session.noise_warning = (
        f"NO REAL WEIGHTS: {', '.join(missing)} not in {', '.join(searched)}.\n"
        f"Using {session.stand_in.description}: the output is NOISE from random weights, it only "
        "shows that the pipeline runs.\nFor real results put the model files into those folders (or "
        "pass --models DIR; --checkpoint NAME for a Load Checkpoint workflow).")
    log("!" * 78 + "\n" + session.noise_warning + "\n" + "!" * 78)
    if a.size is None:
        a.size = TINY_SIZE
        log(f"random weights: images scaled to {TINY_SIZE} px (pass --size to change)")
    if a.steps is None:
        a.steps = TINY_STEPS
        log(f"random weights: {TINY_STEPS} steps (pass --steps to change)")
    return session.tmp_models


def prepare_prompt(client: Client, workflow: dict, a, stand_in: StandIn | None = None) -> dict:
    """The API prompt of the workflow, with the chosen checkpoint (or the stand-ins) and steps."""
    defs = client.get_json("/object_info")
    prompt = ui_to_api(workflow, defs) if is_ui_workflow(workflow) else workflow
    if not isinstance(prompt, dict) or not all(isinstance(v, dict) and "class_type" in v for v in prompt.values()):
        raise RunError(f"{a.workflow} is neither a UI workflow nor an API prompt")
    if stand_in is not None:
        stand_in.rewrite(prompt)
    _set_checkpoint(prompt, defs, a.checkpoint, a.server)
    if a.steps is not None:
        for node in prompt.values():
            if node["class_type"] == "SCSAInvert":
                node["inputs"]["steps"] = a.steps
    return prompt


def run_job(client: Client, prompt: dict, roles: dict, name: str, files: dict, a, log,
            uploaded: dict[str, str]) -> list[Path]:
    """Upload one job's images into a copy of ``prompt`` (check_jobs checked them), run it,
    download what it saved. ``uploaded`` (role -> uploaded name) is kept across the jobs of
    --contents, whose style images are the same for every content: they are sent once."""
    job_prompt = json.loads(json.dumps(prompt))
    shared_roles = {role for role in files if a.contents and role in STYLE_ROLES}
    to_send = {r: p for r, p in files.items() if r in roles and not (r in shared_roles and r in uploaded)}
    for role, data in prepare_images(to_send, a.size, own_style_size=bool(a.contents)).items():
        # --contents: the one style goes up under one name, so ComfyUI keeps its loader's output too
        owner = a.style.stem if role in shared_roles else name
        uploaded[role] = client.upload_image(data, f"scsa_run_{owner}_{role}.png")
    for role in files:
        if role in roles:
            job_prompt[roles[role]]["inputs"]["image"] = uploaded[role]
    for node in job_prompt.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"scsa_run/{a.workflow.stem}_{name}"
    if a.save_latents:
        add_latent_savers(job_prompt, f"scsa_run/{a.workflow.stem}_{name}")
    entry = run_prompt(client, job_prompt, Progress(name, job_prompt, a.quiet), a.timeout)
    saved = [image for output in entry.get("outputs", {}).values()
             for image in output.get("images", []) if image.get("type") == "output"]
    written = []
    for k, image in enumerate(saved):
        suffix = f"_{k + 1}" if len(saved) > 1 else ""
        target = a.out / f"{a.workflow.stem}_{name}{suffix}.png"
        target.write_bytes(client.view(image))
        written.append(target)
        log(f"[{name}] wrote {target}")
    latents = [latent for output in entry.get("outputs", {}).values() for latent in output.get("latents", [])]
    for k, latent in enumerate(latents if a.save_latents else []):
        a.save_latents.mkdir(parents=True, exist_ok=True)
        suffix = f"_{k + 1}" if len(latents) > 1 else ""
        target = a.save_latents / f"{a.workflow.stem}_{name}{suffix}.latent"
        target.write_bytes(client.view(latent))
        log(f"[{name}] wrote {target}")
    return written


def add_latent_savers(prompt: dict, prefix: str) -> None:
    """A SaveLatent (ComfyUI's own ``.latent`` file) on every latent that a VAE Decode decodes:
    the sampler outputs, compared numerically where random weights decode to flat images."""
    decoded = sorted({tuple(node["inputs"]["samples"]) for node in prompt.values()
                      if node["class_type"] == "VAEDecode" and isinstance(node["inputs"].get("samples"), list)})
    for k, source in enumerate(decoded):
        prompt[f"scsa_run_latent_{k}"] = {"class_type": "SaveLatent",
                                          "inputs": {"samples": list(source), "filename_prefix": prefix}}


def _set_checkpoint(prompt: dict, defs: dict, name: str | None, server: str | None) -> None:
    loaders = [n for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple"]
    if not loaders:
        return
    spec = defs.get("CheckpointLoaderSimple", {}).get("input", {}).get("required", {}).get("ckpt_name", [[]])
    available = spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])
    for node in loaders:
        if name:
            node["inputs"]["ckpt_name"] = name
        wanted = node["inputs"].get("ckpt_name")
        if wanted not in available:
            where = f"the server at {server}" if server else "the embedded ComfyUI"
            raise RunError(f"checkpoint {wanted!r} is not available on {where}. It has: "
                           f"{', '.join(available) or 'no checkpoints at all'}. Put an SD1.5 checkpoint into "
                           "its models/checkpoints folder, or pass --checkpoint NAME (one of those).")


if __name__ == "__main__":
    sys.exit(main())
