#!/usr/bin/env bash
# Install comfy-cli (the Comfy Registry's own tool: `comfy node validate`, `comfy node pack`)
# into a tool venv of its own, .cache/tools/comfy-cli (git-ignored), so its dependencies never
# mix with ComfyUI's requirements in the test venvs. Called by scripts/setup.sh; tests/test_registry.py
# uses it.
#
#   bash scripts/setup_comfy_cli.sh
#
# Idempotent: a stamp holding the pinned version and the interpreter skips the install on the
# next run (well under a second). Only the install reaches the network (PyPI, through pip);
# the tool itself runs offline when called as tests/test_registry.py does:
#
#   DO_NOT_TRACK=1 COMFY_NO_TELEMETRY=1 .cache/tools/comfy-cli/bin/comfy --skip-prompt --no-json node validate </dev/null
#   (the same with `node pack`: it writes node.zip, git-ignored, in the repository root)
#
# DO_NOT_TRACK / COMFY_NO_TELEMETRY switch off comfy-cli's telemetry and its consent prompt;
# --skip-prompt answers any other question with the default; --no-json keeps the plain text
# output (comfy-cli prints JSON when stdout is no TTY). comfy-cli also keeps ~/.config/comfy-cli
# (an empty tmp/ folder at least); the test gives it a scratch HOME.
#
# Environment:
#   PYTHON           interpreter for the tool venv (default: python3; comfy-cli needs 3.10+)
#   COMFY_CLI_VENV   where the tool venv goes (default: <repo>/.cache/tools/comfy-cli)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMFY_CLI_SPEC="comfy-cli==1.23.0"
TOOL="${COMFY_CLI_VENV:-$REPO/.cache/tools/comfy-cli}"
TPY="$TOOL/bin/python"
STAMP="$TOOL/.scsa-comfy-cli"

log() { printf '[setup_comfy_cli] %s\n' "$*"; }
die() { printf '[setup_comfy_cli] ERROR: %s\n' "$*" >&2; exit 1; }

want="$COMFY_CLI_SPEC | $("${PYTHON:-python3}" -c 'import sys; print(sys.version.split()[0])')" \
    || die "${PYTHON:-python3} does not run: set PYTHON to a Python 3.10+ interpreter"

if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ] && [ -x "$TOOL/bin/comfy" ]; then
    log "$COMFY_CLI_SPEC already in ${TOOL#"$REPO"/} (stamp)"
    exit 0
fi

"${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "comfy-cli needs Python 3.10+; ${PYTHON:-python3} is older: set PYTHON"

if [ -e "$TOOL" ]; then   # a stale or half-made tool venv is rebuilt; anything else is left alone
    [ -f "$TOOL/pyvenv.cfg" ] || [ -z "$(ls -A "$TOOL")" ] \
        || die "$TOOL exists and is not a venv: move it away or set COMFY_CLI_VENV elsewhere"
    rm -rf "$TOOL"
fi
log "installing $COMFY_CLI_SPEC into ${TOOL#"$REPO"/}"
mkdir -p "$(dirname "$TOOL")"
"${PYTHON:-python3}" -m venv "$TOOL"
# -q keeps CI logs short; "Location ... is ignored" warnings (a pip config listing local indexes
# that lack some packages) are noise. pipefail keeps pip's exit status.
{ "$TPY" -m pip install -q --disable-pip-version-check "$COMFY_CLI_SPEC" 2>&1 1>&3 \
    | { grep -v "^WARNING: Location '" || true; } >&2; } 3>&1 \
    || die "pip install $COMFY_CLI_SPEC failed"

# The check the tests rely on: it starts offline, asks nothing and knows its version.
got="$(HOME="$TOOL/home" DO_NOT_TRACK=1 COMFY_NO_TELEMETRY=1 \
        "$TOOL/bin/comfy" --skip-prompt --no-json --version </dev/null)" || die "$TOOL/bin/comfy does not start"
[ "$got" = "${COMFY_CLI_SPEC#*==}" ] || die "$TOOL/bin/comfy reports version '$got', expected ${COMFY_CLI_SPEC#*==}"
printf '%s' "$want" > "$STAMP"
log "comfy-cli $got ready: $TOOL/bin/comfy"
