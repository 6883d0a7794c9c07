#!/usr/bin/env bash
# The main job: run example_workflows/e2p_quickstart.json end to end in ComfyUI with this pack.
#
#   bash scripts/run_example.sh [options]
#       builds ComfyUI 0.3.75 and its venv the first time (scripts/setup_env.sh: Python packages only), runs there.
#   bash scripts/run_example.sh --comfyui PATH [--python PYTHON] [options]
#       runs in your existing ComfyUI checkout PATH with its own Python: PYTHON, else PATH/venv or PATH/.venv.
#       The pack is linked into a separate base folder (--base-directory); nothing under PATH is changed.
#
# The other options go to scripts/run_example.py (--demo, --image, --base-dir, ...; see --help there).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { printf '[run_example] ERROR: %s\n' "$*" >&2; exit 2; }

comfyui=""
python=""
passed=()
while [ $# -gt 0 ]; do
    case "$1" in
        --comfyui) [ $# -ge 2 ] || die "--comfyui needs the folder of a ComfyUI checkout"; comfyui="$2"; shift ;;
        --comfyui=*) comfyui="${1#*=}" ;;
        --python) [ $# -ge 2 ] || die "--python needs the Python that runs your ComfyUI"; python="$2"; shift ;;
        --python=*) python="${1#*=}" ;;
        *) passed+=("$1") ;;
    esac
    shift
done

if [ -z "$comfyui" ]; then
    [ -z "$python" ] || die "--python names the Python of your own ComfyUI; give that ComfyUI with --comfyui PATH."
    bash "$REPO_ROOT/scripts/setup_env.sh"
    exec "${E2P_CACHE_DIR:-$HOME/.cache/e2p_comfyui}/venv/bin/python" "$REPO_ROOT/scripts/run_example.py" \
        "${passed[@]}"
fi

[ -f "$comfyui/main.py" ] || die "--comfyui $comfyui: no main.py there; give the folder of a ComfyUI checkout."
if [ -z "$python" ]; then
    for candidate in "$comfyui/venv/bin/python" "$comfyui/.venv/bin/python"; do
        if [ -x "$candidate" ]; then
            python="$candidate"
            break
        fi
    done
    [ -n "$python" ] || die "no Python found for $comfyui (looked for venv/bin/python and .venv/bin/python in it);" \
        "give the one that runs your ComfyUI with --python PYTHON."
fi
command -v "$python" >/dev/null || die "--python $python: not an executable."
"$python" -c 'import torch' 2>/dev/null \
    || die "$python cannot import torch, so it is not the Python that runs $comfyui; give that one with --python."
exec "$python" "$REPO_ROOT/scripts/run_example.py" --comfyui "$comfyui" "${passed[@]}"
