#!/usr/bin/env bash
# Runs the test suite on ComfyUI 0.3.75 and, when a current ComfyUI is given, once more on that one.
#
#   bash scripts/test.sh [--current-comfyui DIR] [pytest args...]
#
# DIR (or the environment variable E2P_CURRENT_COMFYUI) holds ComfyUI-<version>.tar.gz and
# requirements-<version>.lock.txt; .ci/run passes ../shared/comfyui. scripts/setup_env.sh builds or refreshes both
# environments first. Then:
#   1. ComfyUI 0.3.75: every test (or those the arguments select);
#   2. the current ComfyUI: the tests marked `comfyui` (tests/conftest.py marks every test that imports or starts
#      ComfyUI), with the same arguments. The trainer's tests (tests/train) run only in step 1: the trainer is
#      standalone and its packages (diffusers, accelerate) are pinned for the 0.3.75 venv.
# Examples: bash scripts/test.sh -m "not server"      bash scripts/test.sh tests/test_inference.py
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '[test.sh] %s\n' "$*"; }
die() { printf '[test.sh] ERROR: %s\n' "$*" >&2; exit 1; }

current_source="${E2P_CURRENT_COMFYUI:-}"
pytest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --current-comfyui) [ $# -ge 2 ] || die "--current-comfyui needs a folder"; current_source="$2"; shift ;;
        --current-comfyui=*) current_source="${1#*=}" ;;
        *) pytest_args+=("$1") ;;
    esac
    shift
done

setup_args=(--tests)
[ -z "$current_source" ] || setup_args+=(--current-comfyui "$current_source")
bash "$REPO_ROOT/scripts/setup_env.sh" "${setup_args[@]}"

CACHE_DIR="$(cd "${E2P_CACHE_DIR:-$HOME/.cache/e2p_comfyui}" && pwd)"
export E2P_CACHE_DIR="$CACHE_DIR"
cd "$REPO_ROOT"

# Which tests: all of tests/ unless the arguments name test paths (file, folder or node id). A marker expression
# (-m EXPR or -mEXPR; the last one counts, as in pytest) is kept apart so step 2 can narrow it to `comfyui`.
names_paths=0
marker_expression=""
other_args=()
for ((i = 0; i < ${#pytest_args[@]}; i++)); do
    argument="${pytest_args[$i]}"
    if [ "$argument" = "-m" ] && [ $((i + 1)) -lt ${#pytest_args[@]} ]; then
        i=$((i + 1))
        marker_expression="${pytest_args[$i]}"
    elif [ "${argument#-m}" != "$argument" ] && [ "${argument#--}" = "$argument" ]; then
        marker_expression="${argument#-m}"
    else
        [ ! -e "${argument%%::*}" ] || names_paths=1
        other_args+=("$argument")
    fi
done

summaries=()
overall=0

# run_pytest <label> <python> <comfyui dir> <empty selection is a failure: 0/1> <pytest args...>
# The ini file is given explicitly: the repo root is a custom node package (it has an __init__.py) that must not
# be collected as tests.
run_pytest() {
    local label="$1" python="$2" comfyui_dir="$3" empty_fails="$4" status=0 log summary
    shift 4
    log="$(mktemp "${TMPDIR:-/tmp}/e2p_pytest.XXXXXX")"
    say "=== $label ==="
    E2P_COMFYUI_DIR="$comfyui_dir" "$python" -m pytest -c tests/pytest.ini -q "$@" 2>&1 | tee "$log" \
        || status=${PIPESTATUS[0]}
    summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed)\b.* in [0-9.]+s' \
        "$log" | tail -1 | sed -E 's/^=+ //; s/ =+$//')"
    rm -f "$log"
    if [ "$status" -eq 5 ] && [ "$empty_fails" = 0 ]; then
        summaries+=("$label: nothing selected")
        return
    fi
    if [ "$status" -eq 5 ]; then
        say "ERROR: pytest collected no tests for $label; that is a failure, not a pass."
        status=1
    fi
    summaries+=("$label: ${summary:-no summary line (exit code $status)}")
    [ "$status" -eq 0 ] || overall=1
}

selection=("${other_args[@]}")
[ "$names_paths" = 1 ] || selection=(tests "${selection[@]}")
marker_args=()
[ -z "$marker_expression" ] || marker_args=(-m "$marker_expression")
run_pytest "ComfyUI 0.3.75" "$CACHE_DIR/venv/bin/python" "$CACHE_DIR/comfyui" 1 \
    "${selection[@]}" "${marker_args[@]}"

if [ -n "$current_source" ]; then
    # shellcheck source=/dev/null
    source "$CACHE_DIR/current.env"     # written by setup_env.sh: CURRENT_COMFYUI_VERSION, _DIR, CURRENT_VENV
    current_marker="comfyui"
    [ -z "$marker_expression" ] || current_marker="comfyui and ($marker_expression)"
    current_selection=("${selection[@]}")
    [ "$names_paths" = 1 ] || current_selection+=(--ignore=tests/train)
    # With the default selection an empty step 2 means the marking broke; a narrower selection may hold none.
    empty_fails=$(( names_paths == 0 && ${#pytest_args[@]} == 0 ? 1 : 0 ))
    run_pytest "ComfyUI $CURRENT_COMFYUI_VERSION (the tests marked comfyui)" \
        "$CURRENT_VENV/bin/python" "$CURRENT_COMFYUI_DIR" "$empty_fails" \
        "${current_selection[@]}" -m "$current_marker"
fi

for line in "${summaries[@]}"; do
    say "$line"
done
# One closing line over both runs (passed, failed = failed + errors), for readers of the last line.
printf '%s\n' "${summaries[@]}" | python3 -c '
import re, sys
counts = {"passed": 0, "failed": 0, "skipped": 0}
for line in sys.stdin:
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)\b", line):
        counts["failed" if word.startswith("error") else word] += int(number)
print("total: {passed} passed, {failed} failed, {skipped} skipped".format(**counts))
'
exit "$overall"
