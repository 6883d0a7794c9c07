#!/usr/bin/env bash
# The main job: build the environment if needed (scripts/setup_env.sh), then start ComfyUI 0.3.75 with this pack
# and run example_workflows/e2p_quickstart.json end to end. Arguments go to scripts/run_example.py (--demo, --image, ...).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO_ROOT/scripts/setup_env.sh"
exec "${E2P_CACHE_DIR:-$HOME/.cache/e2p_comfyui}/venv/bin/python" "$REPO_ROOT/scripts/run_example.py" "$@"
