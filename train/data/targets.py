"""Turn decoded arrays (RGB + metric depth / normals / alpha) into the training sample the trainer consumes.

Framing (crop, then resize to the training resolution) is applied to every modality with the same box, and the
task target is encoded only through ``e2p_core.representations``: this module decides *where* pixels go, never
what a depth, normal or matte value means.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from e2p_core import hints
from e2p_core import representations as rep

from .errors import SampleError

FRAMING_MODES = ("stretch", "center_crop", "random_crop")
MIN_VALID_PIXELS = 16            # fewer valid depth pixels than this cannot give meaningful 2/98 percentiles
MIN_SQRT_DEPTH_SPAN = 1e-3       # the official loader flags a 2..98 percentile span below this as invalid depth
NORMAL_VALID_LENGTH = 1e-3       # official: a normal is valid when its length (+1e-8) exceeds this
TRIMAP_KERNEL_SIZES = (5, 15)    # official gen_trimap: ellipse kernel size in [5, 14] ...
TRIMAP_ITERATIONS = (5, 15)      # ... and erode/dilate iterations in [5, 14]


@dataclass(frozen=True)
class Framing:
    """How a source frame becomes a ``height`` x ``width`` training sample.

    ``stretch`` resizes the whole frame (the official behaviour, aspect ratio not kept); ``center_crop`` and
    ``random_crop`` first cut the largest window of the target aspect ratio (centred, or placed by the sample's
    random generator), then resize it.
    """

    height: int
    width: int
    mode: str = "stretch"

    def __post_init__(self):
        if self.mode not in FRAMING_MODES:
            raise ValueError(f"unknown framing '{self.mode}'; choose one of {', '.join(FRAMING_MODES)}")
        if self.height < 8 or self.width < 8:
            raise ValueError(f"training resolution {self.width}x{self.height} is too small (need at least 8x8)")

    def crop_box(self, source_height: int, source_width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the source window that is resized to the training resolution."""
        if self.mode == "stretch":
            return 0, 0, source_height, source_width
        target_aspect = self.width / self.height
        if source_width / source_height > target_aspect:
            crop_h, crop_w = source_height, min(source_width, max(1, round(source_height * target_aspect)))
        else:
            crop_h, crop_w = min(source_height, max(1, round(source_width / target_aspect))), source_width
        if self.mode == "center_crop":
            return (source_height - crop_h) // 2, (source_width - crop_w) // 2, crop_h, crop_w
        top = int(rng.integers(0, source_height - crop_h + 1))
        left = int(rng.integers(0, source_width - crop_w + 1))
        return top, left, crop_h, crop_w


def parse_resolution(value) -> tuple[int, int]:
    """``512``, ``[512, 768]`` (height, width) or ``"768x512"`` (width x height) -> (height, width)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, str) and "x" in value.lower():
        width, height = value.lower().split("x", 1)
        return int(height), int(width)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"resolution {value!r}: give one number, [height, width] or 'WIDTHxHEIGHT'")


def _crop(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, height, width = box
    return array[top:top + height, left:left + width]


def _resize(channels_first: torch.Tensor, framing: Framing, mode: str) -> torch.Tensor:
    size = (framing.height, framing.width)
    if tuple(channels_first.shape[-2:]) == size:
        return channels_first
    batch = channels_first.unsqueeze(0)
    if mode == "nearest":
        return F.interpolate(batch, size=size, mode="nearest-exact")[0]
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _check_same_size(name: str, rgb: np.ndarray, other: np.ndarray, what: str) -> None:
    if rgb.shape[:2] != other.shape[:2]:
        raise SampleError(name, f"the image is {rgb.shape[1]}x{rgb.shape[0]} but its {what} is "
                                f"{other.shape[1]}x{other.shape[0]}; both must have the same size")


def image_tensor(rgb: np.ndarray, box: tuple[int, int, int, int], framing: Framing) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, h, w] in [-1, 1] (bilinear, antialiased)."""
    pixels = torch.from_numpy(np.ascontiguousarray(_crop(rgb, box))).permute(2, 0, 1).to(torch.float32) / 255.0
    return (_resize(pixels, framing, "bilinear") * 2.0 - 1.0).clamp(-1.0, 1.0)


def depth_sample(name: str, rgb: np.ndarray, depth_m: np.ndarray, valid: np.ndarray, framing: Framing,
                 rng: np.random.Generator) -> dict:
    """RGB + metric depth (metres) + validity -> a depth sample (sqrt-space percentile target).

    As in the official loader, the whole stored map is encoded with percentiles taken over valid pixels, so invalid
    pixels keep their stored value (0 -> near, Virtual KITTI's sky -> far). Depth and its mask are resized with
    nearest neighbours so no value is ever blended with an invalid pixel.
    """
    _check_same_size(name, rgb, depth_m, "depth")
    _check_same_size(name, rgb, valid, "valid mask")
    box = framing.crop_box(rgb.shape[0], rgb.shape[1], rng)
    valid = valid & np.isfinite(depth_m) & (depth_m > 0)
    stored = np.nan_to_num(depth_m, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    depth_t = _resize(torch.from_numpy(np.ascontiguousarray(_crop(stored, box)))[None], framing, "nearest")
    valid_t = _resize(torch.from_numpy(np.ascontiguousarray(_crop(valid, box)))[None].to(torch.float32),
                      framing, "nearest") > 0.5
    count = int(valid_t.sum())
    if count < MIN_VALID_PIXELS:
        raise SampleError(name, f"only {count} pixels with valid depth after resizing (need {MIN_VALID_PIXELS}); "
                                "check the depth units/scale and the valid range")
    roots = torch.sqrt(depth_t[valid_t] + rep.SQRT_EPS)
    span = float(rep.percentile(roots, rep.DEPTH_HIGH_PERCENTILE) - rep.percentile(roots, rep.DEPTH_LOW_PERCENTILE))
    if span < MIN_SQRT_DEPTH_SPAN:
        raise SampleError(name, f"depth is constant (2..98 percentile span {span:.2e} in sqrt metres); "
                                "a flat map gives no target")
    encoded = rep.encode_depth(depth_t, valid_t)
    return {
        "image": image_tensor(rgb, box, framing),
        "target": encoded.expand(3, -1, -1).contiguous(),
        "valid": valid_t,
        "depth": torch.where(valid_t, depth_t, torch.zeros_like(depth_t)),
        "task": "depth",
        "name": name,
    }


def normal_sample(name: str, rgb: np.ndarray, normals_native: np.ndarray, framing: Framing,
                  rng: np.random.Generator, valid: np.ndarray | None = None) -> dict:
    """RGB + normals already in E2P's native convention -> a normal sample.

    Vectors are resized bilinearly and re-normalised (the official order); a pixel is valid when its resized
    vector is longer than 1e-3 (and the optional source mask allows it).
    """
    _check_same_size(name, rgb, normals_native, "normal map")
    if normals_native.ndim != 3 or normals_native.shape[2] != 3:
        raise SampleError(name, f"a normal map must be HxWx3, got shape {tuple(normals_native.shape)}")
    normals = np.where(np.isfinite(normals_native), normals_native, 0.0).astype(np.float32)
    if valid is not None:
        _check_same_size(name, rgb, valid, "valid mask")
        normals = normals * valid[..., None]
    box = framing.crop_box(rgb.shape[0], rgb.shape[1], rng)
    vectors = _resize(torch.from_numpy(np.ascontiguousarray(_crop(normals, box))).permute(2, 0, 1),
                      framing, "bilinear")
    length = torch.linalg.vector_norm(vectors, dim=0, keepdim=True) + 1e-8
    valid_t = length > NORMAL_VALID_LENGTH
    if valid is not None:
        source_valid = torch.from_numpy(np.ascontiguousarray(_crop(valid, box)))[None].to(torch.float32)
        valid_t &= _resize(source_valid, framing, "nearest") > 0.5
    if not bool(valid_t.any()):
        raise SampleError(name, "the normal map has no valid (non-zero) vector")
    encoded = rep.encode_normals(vectors.permute(1, 2, 0)).permute(2, 0, 1)
    return {
        "image": image_tensor(rgb, box, framing),
        "target": torch.where(valid_t, encoded, torch.zeros_like(encoded)).contiguous(),
        "valid": valid_t,
        "task": "normal",
        "name": name,
    }


def official_trimap(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Alpha [H, W] in [0, 1] -> trimap uint8 {0, 128, 255} by the official random erode/dilate rule.

    An ellipse kernel of size k and an iteration count n are drawn in [5, 14]; known foreground is where the
    eroded 8-bit alpha is >= 254, known background where the dilated alpha is <= 1, the rest unknown.
    """
    alpha8 = (np.clip(alpha, 0.0, 1.0) * 255).astype(np.uint8)
    size = int(rng.integers(*TRIMAP_KERNEL_SIZES))
    iterations = int(rng.integers(*TRIMAP_ITERATIONS))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    dilated = cv2.dilate(alpha8, kernel, iterations=iterations)
    eroded = cv2.erode(alpha8, kernel, iterations=iterations)
    trimap = np.full(alpha8.shape, 128, dtype=np.uint8)
    trimap[eroded >= 254] = 255
    trimap[dilated <= 1] = 0
    return trimap


def hint_image(alpha: np.ndarray) -> torch.Tensor:
    """Ground-truth alpha at training resolution -> the official click-hint reference image [3, H, W] in [-1, 1].

    As the official dataset builds it: ten points (seed 42) where alpha > 0.8, the alpha read back from the
    bfloat16 target (``alpha * 2 - 1`` stored in bf16), which moves pixels across the threshold; Gaussian blobs of
    a fixed ``hints.GROUND_TRUTH_POINT_SIGMA`` px whatever the training resolution; the map stored in bf16 before
    ``* 2 - 1``.
    """
    stored = rep.encode_alpha(torch.from_numpy(np.asarray(alpha, dtype=np.float32)))[..., 0].to(torch.bfloat16)
    point_map = hints.ground_truth_point_map(((stored.float() + 1.0) / 2.0).numpy())
    as_stored = torch.from_numpy(point_map).to(torch.bfloat16)
    return (as_stored * 2 - 1).float().expand(3, *point_map.shape)


def matting_sample(name: str, rgb: np.ndarray, alpha: np.ndarray, framing: Framing,
                   rng: np.random.Generator) -> dict:
    """RGB + alpha in [0, 1] -> a matting sample with the official trimap and hint image."""
    _check_same_size(name, rgb, alpha, "alpha matte")
    if not np.all(np.isfinite(alpha)):
        raise SampleError(name, "the alpha matte contains NaN or infinite values")
    box = framing.crop_box(rgb.shape[0], rgb.shape[1], rng)
    alpha_t = _resize(torch.from_numpy(np.ascontiguousarray(_crop(alpha.astype(np.float32), box)))[None],
                      framing, "bilinear").clamp(0.0, 1.0)
    alpha_np = alpha_t[0].numpy()
    trimap = official_trimap(alpha_np, rng)
    return {
        "image": image_tensor(rgb, box, framing),
        "target": rep.encode_alpha(alpha_t[0]).permute(2, 0, 1).contiguous(),
        "valid": torch.ones((1, framing.height, framing.width), dtype=torch.bool),
        "trimap": torch.from_numpy(trimap)[None],
        "hint": hint_image(alpha_np).contiguous(),
        "task": "matting",
        "name": name,
    }


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one sample draw: crops and trimaps depend only on (seed, epoch, index, stream)."""
    words = [seed, epoch, index, stream, 0x45325044]
    return np.random.default_rng(np.random.SeedSequence([int(word) & 0xFFFFFFFF for word in words]))
