"""Headless Chromium driven through the DevTools protocol (CDP) over a websocket.

Only ``websocket-client`` and the standard library are needed (no WebDriver, no chromedriver).

    with Chromium.launch() as browser:
        page = browser.new_page(width=1600, height=900)
        page.navigate("http://127.0.0.1:8188/")
        page.wait_for("window.app && window.app.graph", timeout=120)
        print(page.evaluate("app.graph.nodes.length"))
        png = page.screenshot()

``find_chromium()`` looks for Debian's ``chromium`` (``apt-get install chromium``), then
Chrome/Chromium under their usual names, or the path in ``$CHROMIUM``.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--password-store=basic",
         "--use-mock-keychain")


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM", "").strip()
    if env:
        return env if (Path(env).is_file() or shutil.which(env)) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One tab, spoken to over its own websocket. Events are kept in ``self.events``."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client
        self._ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._next_id = 0
        self._lock = threading.Lock()
        self.events: list[dict] = []
        self.console: list[tuple[str, str]] = []   # (level, text)
        self.exceptions: list[str] = []
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Log.enable")

    # -- protocol ----------------------------------------------------------------------------
    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
            self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{method}: no answer within {timeout:.0f} s")
                self._ws.settimeout(min(left, 30))
                data = json.loads(self._ws.recv())
                if data.get("id") == msg_id:
                    if "error" in data:
                        raise BrowserError(f"{method}: {data['error']}")
                    return data.get("result", {})
                if "method" in data:
                    self._record(data)

    def _record(self, event: dict) -> None:
        self.events.append(event)
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append((params.get("type", "log"), text))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append((entry.get("level", "info"), f"{entry.get('text', '')} {entry.get('url', '')}".strip()))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.exceptions.append(exc.get("description") or details.get("text", "exception"))

    def pump(self, seconds: float = 0.2) -> None:
        """Read pending events for up to ``seconds``."""
        import websocket
        deadline = time.monotonic() + seconds
        with self._lock:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._ws.settimeout(left)
                try:
                    data = json.loads(self._ws.recv())
                except (websocket.WebSocketTimeoutException, TimeoutError):
                    return
                if "method" in data:
                    self._record(data)

    # -- helpers -----------------------------------------------------------------------------
    def evaluate(self, expression: str, timeout: float = 60.0):
        """Evaluate JS (awaiting a returned promise); returns its JSON value. JS errors raise."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "timeout": int(timeout * 1000)},
                           timeout=timeout + 10)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JS error: {text}\nin: {expression[:400]}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.25):
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(f"(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()",
                                     timeout=30)
            except BrowserError:
                last = False
            if last:
                return last
            self.pump(interval)
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for: {expression}")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def set_viewport(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def screenshot(self, fmt: str = "png", quality: int | None = None) -> bytes:
        params = {"format": fmt}
        if quality is not None:
            params["quality"] = quality
        return base64.b64decode(self.send("Page.captureScreenshot", params, timeout=120)["data"])

    def close(self) -> None:
        try:
            self._ws.close()
        except Exception:
            pass


class Chromium:
    """A headless Chromium process with a fresh profile and a DevTools port."""

    def __init__(self, executable: str, user_data_dir: Path, proc: subprocess.Popen, port: int):
        self.executable = executable
        self.user_data_dir = user_data_dir
        self.proc = proc
        self.port = port
        self.pages: list[Page] = []

    @classmethod
    def launch(cls, executable: str | None = None, timeout: float = 60.0) -> "Chromium":
        executable = executable or find_chromium()
        if not executable:
            raise BrowserError("no Chromium found (apt-get install chromium, or set CHROMIUM)")
        profile = Path(tempfile.mkdtemp(prefix="scsa-chromium-"))
        cmd = [executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
               "--remote-allow-origins=*", "--window-size=1600,900", "about:blank"]
        log = open(profile / "chromium.log", "wb")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                text = (profile / "chromium.log").read_text(errors="replace")[-3000:]
                shutil.rmtree(profile, ignore_errors=True)
                raise BrowserError(f"{executable} exited with code {proc.returncode}:\n{text}")
            if port_file.is_file():
                lines = port_file.read_text().split()
                if lines:
                    return cls(executable, profile, proc, int(lines[0]))
            time.sleep(0.1)
        proc.kill()
        raise BrowserError(f"{executable} opened no DevTools port within {timeout:.0f} s")

    def version(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/version", timeout=10) as r:
            return json.loads(r.read())

    def new_page(self, width: int = 1600, height: int = 900) -> Page:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=30) as r:
            target = json.loads(r.read())
        page = Page(target["webSocketDebuggerUrl"])
        page.set_viewport(width, height)
        self.pages.append(page)
        return page

    def close(self) -> None:
        for page in self.pages:
            page.close()
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.user_data_dir, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
