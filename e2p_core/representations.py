"""The one definition of Edit2Perceive's task representations.

Used by the ComfyUI nodes, the trainer and the evaluation harness, so a target the trainer builds and a
prediction a node decodes always mean the same thing. Only torch and numpy are needed here (no ComfyUI).

Conventions (all derived from the official data pipeline):

* Depth is learned in **sqrt space**: ``a = sqrt(depth)``, the 2nd..98th percentile of ``a`` over valid pixels
  mapped affinely to [-1, 1] and clipped. A prediction decodes to ``y = mean_c(clip((x + 1) / 2, 0, 1))``:
  ``y`` is affine in ``sqrt(depth)`` with **near = 0 (dark)**, far = 1. It is *not* linear depth.
* Normals are unit camera-space vectors in the **ControlNet/BAE convention**: +X points left, +Y up, +Z towards the
  viewer. (The official training reads Marigold-format normals, +X right, and negates X.)
* Matting hints are a single-channel point map in [0, 1]: Gaussian blobs (peak 1) at points sampled inside the
  region the user marked. The model sees it as a second reference image ``2 * map - 1`` repeated to 3 channels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------------------------

SQRT_EPS = 1e-6
DEPTH_LOW_PERCENTILE = 2.0
DEPTH_HIGH_PERCENTILE = 98.0


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """NumPy's default ('linear') percentile of a 1-D tensor; torch.quantile refuses large inputs."""
    if values.numel() == 0:
        raise ValueError("percentile of an empty set: the depth map has no valid pixels")
    ordered, _ = torch.sort(values.flatten().to(torch.float64))
    position = (ordered.numel() - 1) * q / 100.0
    lower = int(math.floor(position))
    upper = min(lower + 1, ordered.numel() - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def encode_depth(depth: torch.Tensor, valid: torch.Tensor | None = None,
                 low: float = DEPTH_LOW_PERCENTILE, high: float = DEPTH_HIGH_PERCENTILE) -> torch.Tensor:
    """Metric depth [..., H, W] (one map per leading index) -> training target in [-1, 1], sqrt space.

    Each map is normalised by its own percentiles over ``valid`` pixels (all finite positive pixels when
    ``valid`` is None), exactly as the official targets are built.
    """
    depth = depth.to(torch.float32)
    if valid is None:
        valid = torch.isfinite(depth) & (depth > 0)
    flat_depth = depth.reshape(-1, *depth.shape[-2:])
    flat_valid = valid.expand_as(depth).reshape(-1, *depth.shape[-2:])
    encoded = torch.empty_like(flat_depth)
    for i in range(flat_depth.shape[0]):
        root = torch.sqrt(torch.clamp(torch.nan_to_num(flat_depth[i], nan=0.0, posinf=0.0), min=0.0) + SQRT_EPS)
        valid_root = root[flat_valid[i]]
        lo = percentile(valid_root, low).to(torch.float32)
        hi = percentile(valid_root, high).to(torch.float32)
        span = torch.clamp(hi - lo, min=1e-12)
        encoded[i] = torch.clamp(((root - lo) / span - 0.5) * 2.0, -1.0, 1.0)
    return encoded.reshape(depth.shape)


def decode_depth(decoded_rgb: torch.Tensor, channel_axis: int = -1) -> torch.Tensor:
    """Decoder output [..., H, W, 3] in [-1, 1] (channels at ``channel_axis``) -> sqrt-space depth [..., H, W] in
    [0, 1] (near = 0)."""
    return ((torch.clamp(decoded_rgb, -1.0, 1.0) + 1.0) / 2.0).mean(dim=channel_axis)


def sqrt_depth_to_metric(sqrt_depth: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Sqrt-space depth in [0, 1] -> metres, given the scene's near and far distance.

    The representation is affine in sqrt(depth), so ``d = (sqrt(near) + y * (sqrt(far) - sqrt(near)))**2``.
    """
    if not (near >= 0.0 and far > near):
        raise ValueError(f"need 0 <= near < far, got near={near}, far={far}")
    root = math.sqrt(near) + sqrt_depth * (math.sqrt(far) - math.sqrt(near))
    return root * root


def metric_to_sqrt_depth(depth: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Inverse of :func:`sqrt_depth_to_metric` (for tests and for aligning ground truth)."""
    if not (near >= 0.0 and far > near):
        raise ValueError(f"need 0 <= near < far, got near={near}, far={far}")
    return (torch.sqrt(torch.clamp(depth, min=0.0)) - math.sqrt(near)) / (math.sqrt(far) - math.sqrt(near))


def normalize_range(values: torch.Tensor, shared: bool) -> torch.Tensor:
    """Min-max normalise [B, ...] to [0, 1], per item or with one range shared by the whole batch.

    A range shared across a video's frames keeps their brightness comparable; per-frame ranges flicker.
    """
    if shared:
        lo, hi = values.min(), values.max()
        return (values - lo) / torch.clamp(hi - lo, min=1e-12)
    flat = values.reshape(values.shape[0], -1)
    lo = flat.min(dim=1).values.reshape(-1, *([1] * (values.dim() - 1)))
    hi = flat.max(dim=1).values.reshape(-1, *([1] * (values.dim() - 1)))
    return (values - lo) / torch.clamp(hi - lo, min=1e-12)


def sqrt_depth_to_disparity(sqrt_depth: torch.Tensor, near: float, far: float, shared: bool = False) -> torch.Tensor:
    """Sqrt-space depth -> normalised inverse depth in [0, 1], near = bright (what depth ControlNets expect)."""
    metric = sqrt_depth_to_metric(sqrt_depth, near, far)
    return normalize_range(1.0 / torch.clamp(metric, min=1e-6), shared)


def sqrt_depth_to_relative(sqrt_depth: torch.Tensor, near: float, far: float, shared: bool = False) -> torch.Tensor:
    """Sqrt-space depth -> linear depth normalised to [0, 1], near = dark."""
    return normalize_range(sqrt_depth_to_metric(sqrt_depth, near, far), shared)


# ---------------------------------------------------------------------------------------------------------------
# Normals
# ---------------------------------------------------------------------------------------------------------------

# Sign of (x, y, z) that turns E2P's native (ControlNet/BAE) vectors into each convention.
NORMAL_CONVENTIONS = {
    "controlnet_bae": (1.0, 1.0, 1.0),   # +X left, +Y up, +Z to viewer: E2P native, ControlNet normalbae, DSINE
    "opengl_camera": (-1.0, 1.0, 1.0),   # +X right, +Y up, +Z to viewer: Marigold/diffusers, OpenGL camera space
    "directx": (-1.0, -1.0, 1.0),        # +X right, +Y down, +Z to viewer: DirectX-style green channel
}


def unit_normals(vectors: torch.Tensor, eps: float = 1e-8, channel_axis: int = -1) -> torch.Tensor:
    """Divide [..., 3] vectors (components at ``channel_axis``) by their length, as the official post-processing
    does (no clipping)."""
    return vectors / (torch.linalg.vector_norm(vectors, dim=channel_axis, keepdim=True) + eps)


def decode_normals(decoded_rgb: torch.Tensor, channel_axis: int = -1) -> torch.Tensor:
    """Decoder output [..., 3] in about [-1, 1] (channels at ``channel_axis``) -> unit normals in E2P's native
    convention, components on the same axis."""
    return unit_normals(decoded_rgb, channel_axis=channel_axis)


def convention_signs(convention: str, flip_x: bool = False, flip_y: bool = False,
                     flip_z: bool = False) -> torch.Tensor:
    if convention not in NORMAL_CONVENTIONS:
        raise ValueError(f"unknown normal convention '{convention}'; choose one of {sorted(NORMAL_CONVENTIONS)}")
    sx, sy, sz = NORMAL_CONVENTIONS[convention]
    return torch.tensor([-sx if flip_x else sx, -sy if flip_y else sy, -sz if flip_z else sz])


def convert_normals(native: torch.Tensor, convention: str, flip_x: bool = False, flip_y: bool = False,
                    flip_z: bool = False) -> torch.Tensor:
    """E2P-native unit normals [..., 3] -> the chosen convention (each sign flip is its own inverse)."""
    return native * convention_signs(convention, flip_x, flip_y, flip_z).to(native)


def marigold_to_native_normals(normals: torch.Tensor) -> torch.Tensor:
    """Marigold-format ground truth (+X right) -> E2P native (+X left): the official training/eval flip."""
    return convert_normals(normals, "opengl_camera")


def normals_to_rgb(normals: torch.Tensor) -> torch.Tensor:
    """Unit normals [..., 3] -> colours in [0, 1] (``(n + 1) / 2``)."""
    return torch.clamp((normals + 1.0) / 2.0, 0.0, 1.0)


def rgb_to_normals(rgb: torch.Tensor) -> torch.Tensor:
    """Colours in [0, 1] -> unit normals (inverse of :func:`normals_to_rgb` up to quantisation)."""
    return unit_normals(rgb * 2.0 - 1.0)


def encode_normals(native_normals: torch.Tensor) -> torch.Tensor:
    """Unit normals [..., 3] (native convention) -> training target in [-1, 1] (re-unit-normalised)."""
    return unit_normals(native_normals)


# ---------------------------------------------------------------------------------------------------------------
# Matting
# ---------------------------------------------------------------------------------------------------------------

REFERENCE_RESOLUTION = 768            # the official hint sizes are given at 768 x 768
HINT_POINT_COUNT = 10
HINT_POINT_SIGMA = 30.0               # px at 768 (app.py / inference.py); training used 20 px at 512, the same scale
HINT_CLICK_RADIUS = 100.0             # px at 768: a click marks a disc this large (app.py)
HINT_BRUSH_DILATION = 40              # px at the painted mask's own resolution (app.py)
HINT_THRESHOLD = 0.8
HINT_SEED = 42


def encode_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """Alpha [..., H, W] in [0, 1] -> training target [..., H, W, 3] in [-1, 1]."""
    return (alpha.clamp(0.0, 1.0) * 2.0 - 1.0).unsqueeze(-1).expand(*alpha.shape, 3)


def decode_alpha(decoded_rgb: torch.Tensor, channel_axis: int = -1) -> torch.Tensor:
    """Decoder output [..., H, W, 3] in [-1, 1] (channels at ``channel_axis``) -> alpha [..., H, W] in [0, 1]."""
    return ((torch.clamp(decoded_rgb, -1.0, 1.0) + 1.0) / 2.0).mean(dim=channel_axis)


def clamp_unit_interval(values: torch.Tensor) -> torch.Tensor:
    """Depth and alpha live in [0, 1]; resampling (bicubic, say) can overshoot it."""
    return values.clamp(0.0, 1.0)


def gaussian_point_map(points_yx: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """Blobs of peak 1 at integer pixel points, combined with max: the official Gaussian point rasteriser
    (a unit impulse through scipy's gaussian_filter, divided by its own maximum).

    The 2-D filter of an impulse is the outer product of two 1-D filtered impulses (scipy filters axis by axis),
    which is thousands of times cheaper than filtering a full image per point and equal to within a float32 ulp."""
    from scipy.ndimage import gaussian_filter1d

    point_map = np.zeros((height, width), dtype=np.float32)
    for y, x in np.asarray(points_yx, dtype=np.int64).reshape(-1, 2):
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"hint point (x={x}, y={y}) lies outside the {width}x{height} image")
        column, row = np.zeros(height, dtype=np.float32), np.zeros(width, dtype=np.float32)
        column[y], row[x] = 1.0, 1.0
        blob = np.outer(gaussian_filter1d(column, sigma=sigma), gaussian_filter1d(row, sigma=sigma))
        if blob.max() > 0:
            point_map = np.maximum(point_map, (blob / blob.max()).astype(np.float32))
    return point_map


def sample_hint_points(region: np.ndarray, num_points: int = HINT_POINT_COUNT, threshold: float = HINT_THRESHOLD,
                       seed: int = HINT_SEED) -> np.ndarray:
    """Points [N, 2] (y, x) drawn from pixels where ``region > threshold``, as the official sampler does.

    Returns an empty array when the region has fewer than ``num_points`` pixels (the official rule: no hint).
    """
    ys, xs = np.nonzero(np.asarray(region) > threshold)
    if len(ys) < num_points:
        return np.zeros((0, 2), dtype=np.int64)
    chosen = np.random.RandomState(seed).choice(len(ys), size=num_points, replace=False)
    return np.stack([ys[chosen], xs[chosen]], axis=1)


def hint_map_from_region(region: np.ndarray, sigma: float, num_points: int = HINT_POINT_COUNT,
                         threshold: float = HINT_THRESHOLD, seed: int = HINT_SEED) -> np.ndarray:
    """Region mask [H, W] in [0, 1] -> point map [H, W] in [0, 1] (all zero when the region is too small)."""
    region = np.asarray(region, dtype=np.float32)
    points = sample_hint_points(region, num_points, threshold, seed)
    return gaussian_point_map(points, region.shape[0], region.shape[1], sigma)


def disc_region(points_xy: np.ndarray, height: int, width: int, radius: float) -> np.ndarray:
    """Filled discs of ``radius`` px around integer (x, y) points: how the official app turns clicks into a region."""
    region = np.zeros((height, width), dtype=np.float32)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    for x, y in np.asarray(points_xy, dtype=np.int64).reshape(-1, 2):
        region[(cols - x) ** 2 + (rows - y) ** 2 <= radius ** 2] = 1.0
    return region


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``mask > 0`` by a disc of ``radius`` px (the official brush-stroke widening)."""
    from scipy.ndimage import distance_transform_edt

    binary = np.asarray(mask) > 0
    if radius <= 0 or not binary.any():
        return binary.astype(np.float32)
    return (distance_transform_edt(~binary) <= radius).astype(np.float32)


@dataclass(frozen=True)
class HintScale:
    """Official hint sizes scaled from 768 px to the working resolution (long side)."""

    long_side: int

    @property
    def factor(self) -> float:
        return self.long_side / REFERENCE_RESOLUTION

    @property
    def sigma(self) -> float:
        return HINT_POINT_SIGMA * self.factor

    @property
    def click_radius(self) -> float:
        return HINT_CLICK_RADIUS * self.factor


# How hint coordinates are given: pixels of the input image, or fractions of its width and height. Stated by the
# user, never guessed from magnitudes ([[1, 1]] is a pixel near the corner as much as the image's far corner).
COORDINATE_UNITS = ("pixels", "fractions")
POINTS_EXAMPLE = "[[120, 80], [300, 200]]"


def _check_units(coordinates: str) -> None:
    if coordinates not in COORDINATE_UNITS:
        raise ValueError(f"unknown coordinates '{coordinates}'; use one of {', '.join(COORDINATE_UNITS)}")


def _check_fractions(values: np.ndarray, what: str) -> None:
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(f"{what} has values outside [0, 1] but coordinates is 'fractions'; give fractions of the "
                         "image size, or set coordinates to 'pixels'")


def parse_points(text: str, width: int, height: int, coordinates: str = "pixels") -> np.ndarray:
    """Parse a JSON list of points into integer pixel (x, y) coordinates.

    Accepted: ``[[x, y], ...]``, ``[{"x": .., "y": ..}, ...]`` (the KJNodes points editor) or ``{"points": [...]}``,
    in pixels of the input image or, with ``coordinates="fractions"``, fractions of its width and height.
    """
    _check_units(coordinates)
    text = (text or "").strip()
    if not text:
        return np.zeros((0, 2), dtype=np.int64)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"points must be JSON such as {POINTS_EXAMPLE} ({error.msg} at char {error.pos})")
    except RecursionError:
        raise ValueError(f"points JSON is nested too deeply to read; give a flat list such as {POINTS_EXAMPLE}")
    if isinstance(data, dict):
        data = data.get("points", None)
    if not isinstance(data, list):
        raise ValueError(f"points must be a JSON list such as {POINTS_EXAMPLE} or [{{\"x\": 120, \"y\": 80}}]")
    coords = []
    for item in data:
        if isinstance(item, dict) and "x" in item and "y" in item:
            coords.append((item["x"], item["y"]))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            coords.append((item[0], item[1]))
        else:
            raise ValueError(f"cannot read point {str(item)[:80]}: use [x, y] or {{\"x\": x, \"y\": y}}")
    try:
        array = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("point coordinates must be numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError("point coordinates must be finite numbers (not NaN or infinity)")
    if coordinates == "fractions":
        _check_fractions(array, "points")
        size = np.array([width, height], dtype=np.float64)
        return np.minimum(np.floor(array * size), size - 1).astype(np.int64)
    pixels = np.floor(array)
    outside = (pixels[:, 0] < 0) | (pixels[:, 0] >= width) | (pixels[:, 1] < 0) | (pixels[:, 1] >= height)
    if outside.any():
        bad = pixels[outside][0]
        raise ValueError(f"point (x={bad[0]:g}, y={bad[1]:g}) lies outside the {width}x{height} image; give "
                         "pixel coordinates inside the image (or fractions with coordinates = 'fractions')")
    return pixels.astype(np.int64)


def parse_box(text: str, width: int, height: int, coordinates: str = "pixels"):
    """'x0, y0, x1, y1' -> (x0, y0, x1, y1) in pixels of the input image, or None for an empty text. The box must
    overlap the image; the part outside it is ignored."""
    _check_units(coordinates)
    text = (text or "").strip()
    if not text:
        return None
    try:
        values = np.array([float(v) for v in text.replace(";", ",").split(",")], dtype=np.float64)
    except ValueError:
        raise ValueError(f"box must be four numbers 'x0, y0, x1, y1', got '{text[:80]}'")
    if len(values) != 4:
        raise ValueError(f"box must be four numbers 'x0, y0, x1, y1', got {len(values)}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"box values must be finite numbers (not NaN or infinity), got '{text[:80]}'")
    if coordinates == "fractions":
        _check_fractions(values, "box")
        values = values * np.array([width, height, width, height], dtype=np.float64)
    box = tuple(float(v) for v in values)
    box_region(box, height, width)
    return box


def box_region(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """A filled rectangle (x0, y0, x1, y1) in pixels, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box values must be finite numbers, got {box}")
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    c0, c1 = max(0.0, math.floor(x0)), min(float(width), math.ceil(x1))
    r0, r1 = max(0.0, math.floor(y0)), min(float(height), math.ceil(y1))
    if c1 <= c0 or r1 <= r0:
        raise ValueError(f"the box {tuple(round(v, 2) for v in box)} has no area inside the {width}x{height} image")
    region = np.zeros((height, width), dtype=np.float32)
    region[int(r0):int(r1), int(c0):int(c1)] = 1.0
    return region


def build_hint_map(height: int, width: int, clicks_xy: np.ndarray | None = None, region: np.ndarray | None = None,
                   long_side: int | None = None, num_points: int = HINT_POINT_COUNT,
                   seed: int = HINT_SEED) -> np.ndarray:
    """User hints at the working resolution -> the point map the model was trained on.

    Clicks (integer x, y) become discs as in the official app; ``region`` is any already-marked area (a widened
    painted mask, a box). Then ``num_points`` Gaussian points are drawn inside the union. With no usable hint the
    map is all zero, which the official code also feeds (the model then mattes the salient object on its own).
    """
    scale = HintScale(long_side or max(height, width))
    marked = np.zeros((height, width), dtype=np.float32)
    if clicks_xy is not None and len(clicks_xy):
        marked = np.maximum(marked, disc_region(clicks_xy, height, width, scale.click_radius))
    if region is not None:
        region = np.asarray(region, dtype=np.float32)
        if region.shape != (height, width):
            raise ValueError(f"hint region is {region.shape[1]}x{region.shape[0]} but the image is {width}x{height}")
        marked = np.maximum(marked, region)
    return hint_map_from_region(marked, scale.sigma, num_points=num_points, seed=seed)


def hint_map_to_image(point_map: torch.Tensor) -> torch.Tensor:
    """Point map [..., H, W] in [0, 1] -> a 3-channel IMAGE [..., H, W, 3] in [0, 1].

    ComfyUI's VAE maps IMAGE values v to 2v - 1, which gives the official reference image ``2 * map - 1``.
    """
    return point_map.clamp(0.0, 1.0).unsqueeze(-1).expand(*point_map.shape, 3).contiguous()
