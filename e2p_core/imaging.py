"""Getting images to the size the model works at and predictions back to the input size.

``aspect`` (default): the long side goes to ``processing_resolution`` with the aspect ratio kept, the result is
padded (edge-replicated) to a multiple of 16 for the VAE and the 2x2 patches, and the padding is cropped off the
prediction, which is resized back bilinearly. ``reference``: the official entry points' square stretch to
``processing_resolution`` x ``processing_resolution`` and nearest-neighbour resize back, for comparisons.

Nearest resizes choose their source pixels exactly as Pillow's ``NEAREST`` does (the official app resizes with it),
on float data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("edit2perceive")

MULTIPLE = 16
RESIZE_MODES = ("aspect", "reference")
MAX_WORKING_PIXELS = 2048 * 2048    # beyond this one FLUX pass needs tens of GB of attention memory
MAX_ASPECT_RATIO = 16.0
# Below this long side the model sees a 4x4 grid of tokens or fewer (VAE /8, then 2x2 patches: 16 px per token) and
# returns a near-constant map; processing_resolution 0 (the image's own size) needs an image at least this large.
MIN_WORKING_SIZE = 64


class ImageSizeError(ValueError):
    """An image the model cannot process at the requested settings; the message says what to change."""


@dataclass(frozen=True)
class Canvas:
    """Input size, the resized content size, and the padded size the model sees."""

    height: int
    width: int
    content_height: int
    content_width: int
    padded_height: int
    padded_width: int
    mode: str

    @property
    def long_side(self) -> int:
        return max(self.content_height, self.content_width)


def _round_up(value: int) -> int:
    return max(MULTIPLE, int(math.ceil(value / MULTIPLE)) * MULTIPLE)


def plan_canvas(height: int, width: int, processing_resolution: int, mode: str = "aspect") -> Canvas:
    if mode not in RESIZE_MODES:
        raise ImageSizeError(f"unknown resize mode '{mode}'; use one of {', '.join(RESIZE_MODES)}")
    if height < 1 or width < 1:
        raise ImageSizeError(f"the image is {width}x{height}; it needs at least one pixel")
    if processing_resolution < 0 or 0 < processing_resolution < MIN_WORKING_SIZE:
        raise ImageSizeError(f"processing_resolution {processing_resolution} is below the {MIN_WORKING_SIZE} px the "
                             f"model can work at; use {MIN_WORKING_SIZE}..2048 (768 is what it was trained at), or 0 "
                             "for the image's own size")
    if processing_resolution == 0 and max(height, width) < MIN_WORKING_SIZE:
        raise ImageSizeError(f"the image is {width}x{height}, smaller than the {MIN_WORKING_SIZE} px the model can "
                             f"work at, so processing_resolution 0 (its own size) cannot be used; set it to "
                             f"{MIN_WORKING_SIZE} or more (the result still comes back at the image's size)")
    if mode == "reference":
        side = _round_up(processing_resolution or max(height, width))
        canvas = Canvas(height, width, side, side, side, side, mode)
    else:
        if processing_resolution > 0:
            scale = processing_resolution / max(height, width)
            content_h, content_w = max(1, round(height * scale)), max(1, round(width * scale))
        else:
            content_h, content_w = height, width
        canvas = Canvas(height, width, content_h, content_w, _round_up(content_h), _round_up(content_w), mode)
    pixels = canvas.padded_height * canvas.padded_width
    if pixels > MAX_WORKING_PIXELS:
        raise ImageSizeError(
            f"processing {canvas.padded_width}x{canvas.padded_height} px exceeds the {MAX_WORKING_PIXELS // 10**6} MP "
            "limit of one pass; lower processing_resolution (768 is what the model was trained at)")
    ratio = max(height, width) / min(height, width)
    if mode == "aspect" and ratio > MAX_ASPECT_RATIO:
        log.warning("Edit2Perceive: aspect ratio %.0f:1 leaves the short side %d px at the working size; expect poor "
                    "results (crop the image, or use resize_mode 'reference')", ratio,
                    min(canvas.content_height, canvas.content_width))
    return canvas


def pillow_nearest_indices(source: int, target: int) -> np.ndarray:
    """Source pixel of each of ``target`` pixels when Pillow's ``NEAREST`` resizes ``source`` pixels to ``target``.

    Pillow starts at half the scale and adds the scale once per pixel in double precision, then truncates. The
    accumulated sum can land just below a pixel boundary where the exact centre ``(i + 0.5) * scale`` is on it, so
    Pillow then takes the previous pixel where torch's ``nearest-exact`` takes the next one. ``np.cumsum``
    accumulates sequentially, in the same order and precision.
    """
    scale = source / target
    steps = np.full(target, scale, dtype=np.float64)
    steps[0] = scale * 0.5
    return np.cumsum(steps).astype(np.int64)


def nearest_resize(bchw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[..., H, W] -> [..., height, width] picking Pillow ``NEAREST``'s source pixels (values are not touched)."""
    rows = torch.from_numpy(pillow_nearest_indices(bchw.shape[-2], height)).to(bchw.device)
    columns = torch.from_numpy(pillow_nearest_indices(bchw.shape[-1], width)).to(bchw.device)
    return bchw.index_select(-2, rows).index_select(-1, columns)


def resize(bchw: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, height, width]: ``nearest`` as Pillow picks, else bilinear (antialiased when
    shrinking)."""
    if bchw.shape[-2:] == (height, width):
        return bchw
    if mode == "nearest":
        return nearest_resize(bchw, height, width)
    return F.interpolate(bchw, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def to_canvas(images: torch.Tensor, canvas: Canvas, pad_mode: str = "replicate") -> torch.Tensor:
    """[B, H, W, C] at input size -> [B, padded H, padded W, C]."""
    bchw = resize(images.movedim(-1, 1).float(), canvas.content_height, canvas.content_width, "bilinear")
    pad_h = canvas.padded_height - canvas.content_height
    pad_w = canvas.padded_width - canvas.content_width
    if pad_h or pad_w:
        if pad_mode == "replicate":
            bchw = F.pad(bchw, (0, pad_w, 0, pad_h), mode="replicate")
        else:
            bchw = F.pad(bchw, (0, pad_w, 0, pad_h), mode="constant", value=0.0)
    return bchw.movedim(1, -1)


def from_canvas(prediction: torch.Tensor, canvas: Canvas) -> torch.Tensor:
    """[B, padded H, padded W, C] -> [B, H, W, C] at input size (bilinear, or nearest in reference mode)."""
    cropped = prediction[:, :canvas.content_height, :canvas.content_width, :]
    mode = "nearest" if canvas.mode == "reference" else "bilinear"
    return resize(cropped.movedim(-1, 1), canvas.height, canvas.width, mode).movedim(1, -1)

