"""File reading for the training data: images, 16-bit depth PNGs, EXR and npy arrays, split-list files.

Every reader returns plain numpy arrays and raises ``ValueError``/``OSError`` with a readable message; the dataset
classes turn those into :class:`train.data.SampleError` naming the sample.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # OpenCV reads EXR only when this is set before first use

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return path


def read_rgb(path: Path) -> np.ndarray:
    """Any 8-bit image -> uint8 [H, W, 3] RGB (PIL ``convert('RGB')``, as the official loader does)."""
    with Image.open(require_file(path)) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


def read_alpha(path: Path) -> np.ndarray:
    """Alpha matte file -> float32 [H, W] in [0, 1].

    Single-channel 8- or 16-bit images are used as they are; colour images contribute their first (red) channel,
    which is what the official loader uses after converting mattes to RGB.
    """
    with Image.open(require_file(path)) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            values = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if values.max() > 255 or image.mode.startswith("I;16") else 255.0
            return np.clip(values / peak, 0.0, 1.0).astype(np.float32)
        if image.mode == "F":
            return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        if image.mode != "L":
            image = image.convert("RGB")
            return np.asarray(image, dtype=np.float32)[..., 0] / 255.0
        return np.asarray(image, dtype=np.float32) / 255.0


def read_integer_png(path: Path) -> np.ndarray:
    """Single-channel integer PNG (8- or 16-bit) -> its raw integer values [H, W], no scaling."""
    values = cv2.imread(str(require_file(path)), cv2.IMREAD_UNCHANGED)
    if values is None:
        raise ValueError(f"cannot decode {path.name} as an image")
    if values.ndim != 2:
        raise ValueError(f"{path.name} has {values.shape[2]} channels; a depth PNG must be single-channel "
                         "(16-bit grey, one stored unit per pixel)")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{path.name} holds {values.dtype} values; a depth PNG must hold integers")
    return values


def read_float_array(path: Path) -> np.ndarray:
    """``.npy`` or ``.exr`` -> float32 array ([H, W] or [H, W, C]; EXR channels reordered to RGB)."""
    suffix = require_file(path).suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix == ".exr":
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise ValueError(f"cannot decode {path.name} as OpenEXR")
        if array.ndim == 3 and array.shape[2] >= 3:
            array = cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"{path.name}: expected a .npy or .exr file")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path.name} holds {array.dtype} values, not numbers")
    return np.asarray(array, dtype=np.float32)


def write_float_exr(path: Path, array: np.ndarray) -> None:
    """float32 [H, W] or [H, W, 3] (RGB) -> OpenEXR."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def write_integer_png(path: Path, values: np.ndarray) -> None:
    """uint8/uint16 [H, W] -> a single-channel PNG with exactly these values."""
    if values.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG values must be uint8 or uint16, got {values.dtype}")
    if not cv2.imwrite(str(path), values):
        raise OSError(f"could not write {path}")


def read_list_file(path: Path) -> list[list[str]]:
    """An official split list: one sample per line, columns separated by tabs when the line has a tab
    (COCO-Matte names contain spaces) and by whitespace otherwise. Blank lines and ``#`` comments are skipped."""
    rows = []
    for line in require_file(path).read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        rows.append([column.strip() for column in stripped.split("\t")] if "\t" in stripped else stripped.split())
    return rows
