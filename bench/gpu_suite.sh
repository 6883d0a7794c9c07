#!/usr/bin/env bash
# GPU numbers in one command (see bench/gpu_suite.py). On a CUDA machine, from the repository root, with the
# offline wheel bundle from bench/gpu_prepare.sh copied beside it:  bash bench/gpu_suite.sh   (tables go to --out)
# The same on the CPU, to check the suite itself:                   bash bench/gpu_suite.sh --dry-run
# PYTHON picks the interpreter (default: python3, which holds torch on the GPU machine).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu_suite.py "$@"
