#!/usr/bin/env python3
"""Where ComfyUI is, and a headless ComfyUI server for tests.

This is the ONE place that resolves the ComfyUI checkout used by the tests and by the README's
commands:

  1. the environment variable ``COMFYUI_PATH`` (a user's own ComfyUI), else
  2. the checkout the running venv was set up for (``<venv>/scsa-comfyui-path``, written by
     ``bash scripts/setup.sh [VERSION]``), else
  3. ``<repo>/.cache/comfyui`` as unpacked by ``bash scripts/setup.sh``.

Importable::

    from scripts.comfyui_runtime import comfyui_path, ComfyServer
    path = comfyui_path()          # pathlib.Path, or raises ComfyUINotFound

Runnable::

    python scripts/comfyui_runtime.py          # prints the path; exit 1 with the fix if absent
    python scripts/comfyui_runtime.py --serve --models DIR [--port N]   # run a server until Ctrl-C

Only the standard library is used here, so it runs with any python3.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHED_COMFYUI = REPO_ROOT / ".cache" / "comfyui"
ENV_VAR = "COMFYUI_PATH"
VENV_RECORD = "scsa-comfyui-path"
REQUIRED_ENTRIES = ("main.py", "comfy", "comfy_api")
# Name under which the pack is linked into the server's custom_nodes folder (= the registry
# node id in pyproject.toml).
PACK_NAME = "scsa-style-transfer"
STANDIN_NAME = "scsa-stand-ins"   # scripts/standin_nodes, loaded only with ComfyServer(stand_ins=True)
SETUP_HINT = "run `bash scripts/setup.sh` (or set COMFYUI_PATH to your ComfyUI checkout)"


class ComfyUINotFound(RuntimeError):
    """No usable ComfyUI checkout: the message says why and how to fix it."""


def missing_entries(path: Path) -> list[str]:
    return [e for e in REQUIRED_ENTRIES if not (path / e).exists()]


def comfyui_path() -> Path:
    """The ComfyUI checkout to use (absolute). Raises ComfyUINotFound with the fix."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        p = Path(env).expanduser().resolve()
        if not p.is_dir():
            raise ComfyUINotFound(f"{ENV_VAR}={env} does not exist; point it at the folder holding "
                                  f"ComfyUI's main.py, or unset it and {SETUP_HINT}.")
        miss = missing_entries(p)
        if miss:
            raise ComfyUINotFound(f"{ENV_VAR}={env} is not a ComfyUI checkout (missing "
                                  f"{', '.join(miss)}); point it at the folder holding main.py.")
        return p
    record = Path(sys.prefix) / VENV_RECORD
    if record.is_file():
        p = Path(record.read_text(encoding="utf-8").strip())
        miss = missing_entries(p) if p.is_dir() else list(REQUIRED_ENTRIES)
        if miss:
            raise ComfyUINotFound(f"{record} names {p}, which is not a ComfyUI checkout (missing "
                                  f"{', '.join(miss)}); {SETUP_HINT}.")
        return p
    p = CACHED_COMFYUI
    if not p.is_dir():
        raise ComfyUINotFound(f"ComfyUI not found: {ENV_VAR} is unset and {p} does not exist; "
                              f"{SETUP_HINT}.")
    miss = missing_entries(p)
    if miss:
        raise ComfyUINotFound(f"{p} is incomplete (missing {', '.join(miss)}); delete it and "
                              f"{SETUP_HINT}.")
    return p


def comfyui_version(path: Path | None = None) -> str:
    """ComfyUI's version string, read from comfyui_version.py (or pyproject.toml) without importing."""
    path = Path(path) if path else comfyui_path()
    for name, key in (("comfyui_version.py", "__version__"), ("pyproject.toml", "version")):
        f = path / name
        if f.is_file():
            for line in f.read_text(encoding="utf-8").splitlines():
                s = line.strip()
                if s.startswith(key) and "=" in s:
                    return s.split("=", 1)[1].strip().strip("\"'")
    return "0.0.0"


def version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the parent dies (a killed test run must not
    leave a server behind). A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_extra_model_paths(yaml_path: Path, custom_nodes_dir: Path,
                            models_dir: Path | None) -> Path:
    """Write an extra_model_paths.yaml that ComfyUI's utils/extra_config.py reads.

    Format (load_extra_path_config): top-level sections; in each, ``base_path`` (optional) and
    ``folder_name: path`` pairs, several paths separated by newlines; relative paths resolve
    against the yaml's folder. Absolute paths are written here, so no base_path.
    """
    lines = ["scsa_tests:", f"    custom_nodes: {json.dumps(str(custom_nodes_dir))}"]
    if models_dir is not None:
        models_dir = Path(models_dir).resolve()
        # Model files live directly in the given folder, or in the usual sub-folders.
        for folder in ("checkpoints", "vae", "vae_approx", "diffusion_models", "text_encoders"):
            paths = [str(models_dir)]
            if (models_dir / folder).is_dir():
                paths.insert(0, str(models_dir / folder))
            lines.append(f"    {folder}: {json.dumps(chr(10).join(paths))}")
        if (models_dir / "style_transfer").is_dir():  # feed-forward weight sets
            lines.append(f"    style_transfer: {json.dumps(str(models_dir / 'style_transfer'))}")
    yaml_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return yaml_path


class ComfyClient:
    """JSON over ComfyUI's HTTP API (standard library only): the one client the tests and the
    runner share."""

    def __init__(self, base_url: str, client_id: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex

    def get(self, path: str, timeout: float = 60.0) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as r:
            return r.read()

    def get_json(self, path: str, timeout: float = 60.0):
        return json.loads(self.get(path, timeout))

    def post_json(self, path: str, body, timeout: float = 60.0):
        """POST JSON; returns (status, parsed body). HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            data = e.read()
            try:
                return e.code, json.loads(data)
            except ValueError:
                return e.code, data.decode("utf-8", "replace")

    # -- prompts -----------------------------------------------------------------------------
    def ws_url(self) -> str:
        parsed = urllib.parse.urlparse(self.base_url)
        scheme = "wss" if parsed.scheme == "https" else "ws"
        return f"{scheme}://{parsed.netloc}{parsed.path}/ws?clientId={self.client_id}"

    def queue_prompt(self, prompt: dict) -> str:
        """POST /prompt as this client; returns the prompt_id or raises PromptRefused."""
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise PromptRefused(status, body)
        return body["prompt_id"]

    def finished_entry(self, prompt_id: str) -> dict | None:
        """The /history entry of a prompt that has finished (successfully or not), else None."""
        entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
        status = (entry or {}).get("status", {})
        if entry and (status.get("completed") or status.get("status_str") in ("success", "error")):
            return entry
        return None

    def wait_for(self, prompt_id: str, timeout: float = 600.0, follow=None) -> dict:
        """Wait until a queued prompt finished; returns its /history entry, whatever its status.

        /history decides when it is done. ``follow(seconds)``, when given, is called in between
        (e.g. to read the websocket for that long); otherwise the history is polled every 0.25 s.
        Raises TimeoutError, or RuntimeError when the server process died.
        """
        deadline = time.monotonic() + timeout
        next_poll = 0.0
        while time.monotonic() < deadline:
            if follow is not None:
                follow(1.0)
            else:
                time.sleep(0.25)
            if follow is None or time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 2.0
                entry = self.finished_entry(prompt_id)
                if entry is not None:
                    return entry
            self._check_alive(prompt_id)
        raise TimeoutError(f"prompt {prompt_id} not finished within {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 600.0, on_message=None, on_preview=None) -> dict:
        """Queue ``prompt`` and wait for it; returns its /history entry (check its status).

        ``on_message(kind, data)`` gets every JSON websocket message of this prompt and
        ``on_preview(image_bytes)`` every live-preview frame, while it runs (needs the
        websocket-client package; without it the prompt is only polled).
        """
        watcher = _Watcher.connect(self.ws_url(), on_message, on_preview) if (on_message or on_preview) else None
        try:
            prompt_id = self.queue_prompt(prompt)
            if watcher is not None:
                watcher.prompt_id = prompt_id
            return self.wait_for(prompt_id, timeout, watcher.follow if watcher else None)
        finally:
            if watcher is not None:
                watcher.close()

    def _check_alive(self, prompt_id: str) -> None:
        """Overridden by ComfyServer, which knows its process."""


class PromptRefused(RuntimeError):
    """POST /prompt answered with an error: ``status`` and ComfyUI's ``body`` (node_errors ...)."""

    def __init__(self, status: int, body):
        super().__init__(f"/prompt refused (HTTP {status}): {json.dumps(body, indent=1)[:4000]}")
        self.status, self.body = status, body


# ComfyUI's binary websocket frame of a live preview: 4-byte event type (BinaryEventTypes
# .PREVIEW_IMAGE = 1, big-endian), 4-byte image format, then the image file's bytes. It carries no
# node id: it belongs to the node that is executing.
PREVIEW_IMAGE = 1


class _Watcher:
    """A websocket to ComfyUI that hands on the messages of one prompt."""

    def __init__(self, socket, on_message, on_preview):
        self.socket, self.on_message, self.on_preview = socket, on_message, on_preview
        self.prompt_id = None

    @classmethod
    def connect(cls, url: str, on_message, on_preview):
        try:
            import websocket  # websocket-client (installed by scripts/setup.sh)
            return cls(websocket.create_connection(url, timeout=10, suppress_origin=True), on_message, on_preview)
        except Exception:  # no package, or no socket: the prompt is polled only
            return None

    def follow(self, seconds: float) -> None:
        if self.socket is None:
            time.sleep(seconds)
            return
        try:
            self.socket.settimeout(seconds)
            raw = self.socket.recv()
        except Exception as e:  # a timeout, or the socket went away (then: polling only)
            if type(e).__name__ not in ("WebSocketTimeoutException", "TimeoutError"):
                self.close()
            return
        if isinstance(raw, str):
            message = json.loads(raw)
            data = message.get("data") or {}
            if self.on_message and data.get("prompt_id") in (None, self.prompt_id):
                self.on_message(message.get("type"), data)
        elif isinstance(raw, (bytes, bytearray)) and len(raw) > 8 and \
                int.from_bytes(raw[:4], "big") == PREVIEW_IMAGE and self.on_preview:
            self.on_preview(bytes(raw[8:]))

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


class ComfyServer(ComfyClient):
    """A headless ComfyUI (``main.py --cpu``) in a subprocess, with this pack as its only custom node.

    Layout of the private temp dir: ``custom_nodes/scsa-style-transfer`` (a SYMLINK to the repo;
    the repo's parent is never listed, so sibling folders are not loaded), ``extra_model_paths.yaml``
    (custom_nodes + checkpoints/vae/diffusion_models/text_encoders -> ``models_dir``), with
    ``stand_ins`` also ``custom_nodes/scsa-stand-ins`` (scripts/standin_nodes), ``input/``, ``output/``, ``temp/``, ``user/``
    and ``server.log``. The database is in memory, so nothing is written into the ComfyUI checkout.

        with ComfyServer(models_dir=d) as srv:
            srv.get_json("/object_info")
    """

    def __init__(self, models_dir: str | os.PathLike | None = None, port: int | None = None,
                 comfy_dir: str | os.PathLike | None = None, python: str | None = None,
                 extra_args: list[str] | tuple[str, ...] = (), startup_timeout: float = 300.0,
                 workdir: str | os.PathLike | None = None, pack_dir: str | os.PathLike | None = None,
                 stand_ins: bool = False):
        self.comfy_dir = Path(comfy_dir).resolve() if comfy_dir else comfyui_path()
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.port = port or free_port()
        self.python = python or sys.executable
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.pack_dir = Path(pack_dir).resolve() if pack_dir else REPO_ROOT
        self.stand_ins = stand_ins   # also load scripts/standin_nodes (random-weight stand-ins)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="scsa-comfy-server-"))
        self.proc: subprocess.Popen | None = None
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.log_path = self.workdir / "server.log"
        self._log_file = None

    # -- layout ------------------------------------------------------------------------------
    def _prepare(self) -> list[str]:
        w = self.workdir
        cn = w / "custom_nodes"
        cn.mkdir(parents=True, exist_ok=True)
        link = cn / PACK_NAME
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(self.pack_dir, target_is_directory=True)
        loaded = [PACK_NAME]
        if self.stand_ins:
            stand_ins = cn / STANDIN_NAME
            if not stand_ins.is_symlink():
                stand_ins.symlink_to(REPO_ROOT / "scripts" / "standin_nodes", target_is_directory=True)
            loaded.append(STANDIN_NAME)
        for d in ("input", "output", "temp", "user"):
            (w / d).mkdir(exist_ok=True)
        yaml_path = write_extra_model_paths(w / "extra_model_paths.yaml", cn, self.models_dir)
        return [
            self.python, "main.py", "--cpu",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch",
            "--extra-model-paths-config", str(yaml_path),
            "--input-directory", str(w / "input"),
            "--output-directory", str(w / "output"),
            "--temp-directory", str(w / "temp"),
            "--user-directory", str(w / "user"),
            "--database-url", "sqlite:///:memory:",
            # Only our pack: ComfyUI's own custom_nodes/ (or a user's) stays unloaded.
            "--disable-all-custom-nodes", "--whitelist-custom-nodes", *loaded,
            "--disable-api-nodes",
            *self.extra_args,
        ]

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> "ComfyServer":
        cmd = self._prepare()
        env = dict(os.environ)
        # Like a real install: the repo is NOT on sys.path, the pack is imported as a custom node.
        env.pop("PYTHONPATH", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(self.comfy_dir), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} during start-up; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/object_info", timeout=10) as r:
                    if r.status == 200:
                        json.loads(r.read())
                        return
            except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
                last_err = e
            time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f} s "
                           f"({last_err}); log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (ComfyUI's clean shutdown), then SIGTERM, then SIGKILL, to this server only."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                    try:
                        self.proc.send_signal(sig)
                    except ProcessLookupError:
                        break
                    try:
                        self.proc.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            rc = self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return rc

    def cleanup(self) -> None:
        """Stop and remove the temp dir (when this object created it)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # -- helpers -----------------------------------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.workdir / "input"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"

    def log_tail(self, n_chars: int = 6000) -> str:
        try:
            if self._log_file is not None:
                self._log_file.flush()
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n_chars:]
        except OSError:
            return "<no log>"

    def _check_alive(self, prompt_id: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")

    def run_prompt(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue a prompt, wait, return its outputs ({node_id: ui dict}); raises if it failed."""
        entry = self.run(prompt, timeout)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            raise RuntimeError(f"prompt failed: {json.dumps(status.get('messages'), indent=1)[:6000]}\n"
                               f"{self.log_tail()}")
        return entry["outputs"]


def _main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Print the ComfyUI path used by this repo's tests, "
                                 "or run a headless ComfyUI with this pack loaded.")
    ap.add_argument("--version", action="store_true", help="also print ComfyUI's version")
    ap.add_argument("--serve", action="store_true", help="run a headless server until Ctrl-C")
    ap.add_argument("--models", default=None, help="folder with checkpoints / vae (for --serve)")
    ap.add_argument("--port", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        p = comfyui_path()
    except ComfyUINotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not a.serve:
        print(p)
        if a.version:
            print(comfyui_version(p))
        return 0
    srv = ComfyServer(models_dir=a.models, port=a.port, comfy_dir=p)
    print(f"starting ComfyUI {comfyui_version(p)} from {p} (log {srv.log_path})", flush=True)
    srv.start()
    print(f"ComfyUI listening on {srv.base_url}; Ctrl-C to stop", flush=True)
    try:
        while srv.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        srv.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
