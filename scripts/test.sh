#!/usr/bin/env bash
# Runs the test suite in the environment built by scripts/setup_env.sh (built or refreshed first).
# Usage: bash scripts/test.sh [pytest args...]   e.g.  bash scripts/test.sh tests/test_harness.py -m "not server"
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO_ROOT/scripts/setup_env.sh"

CACHE_DIR="$(cd "${E2P_CACHE_DIR:-$HOME/.cache/e2p_comfyui}" && pwd)"
export E2P_CACHE_DIR="$CACHE_DIR"
export E2P_COMFYUI_DIR="$CACHE_DIR/comfyui"
cd "$REPO_ROOT"

# Run all of tests/ unless the arguments already name test paths (file, folder or node id). The ini file is given
# explicitly: the repo root is a custom node package (it has an __init__.py) that must not be collected as tests.
test_paths=(tests)
for argument in "$@"; do
    if [ -e "${argument%%::*}" ]; then
        test_paths=()
        break
    fi
done

status=0
"$CACHE_DIR/venv/bin/python" -m pytest -c tests/pytest.ini "${test_paths[@]}" -q "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "[test.sh] ERROR: pytest collected no tests; that is a failure, not a pass." >&2
    exit 1
fi
exit "$status"
