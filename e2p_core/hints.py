"""The one owner of Edit2Perceive's matting hints: what the user marks, and the point map the model sees.

Matting is conditioned on a second reference image: a single-channel point map in [0, 1] of Gaussian blobs (peak
1) at points sampled inside the region the user marked, fed as ``2 * map - 1`` repeated to 3 channels. This module
holds the whole path from the node's inputs to that image (parsing points and boxes, the official app's click
discs and brush widening, the sampler and the rasteriser, the canvas placement), and the ground-truth point map
that the official training and evaluation build from an alpha matte. Only torch and numpy (no ComfyUI).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from . import imaging, representations

log = logging.getLogger("edit2perceive")

REFERENCE_RESOLUTION = 768            # the official hint sizes are given at 768 x 768
HINT_POINT_COUNT = 10
HINT_POINT_SIGMA = 30.0               # px at 768 (app.py / inference.py); training used 20 px at 512, the same scale
HINT_CLICK_RADIUS = 100.0             # px at 768: a click marks a disc this large (app.py)
HINT_BRUSH_DILATION = 40              # px at the painted mask's own resolution (app.py)
HINT_THRESHOLD = 0.8
HINT_SEED = 42
# px at the alpha matte's own resolution: gen_points' default sigma, which the official training (at every
# training resolution) and the official evaluation's point prompt both use.
GROUND_TRUTH_POINT_SIGMA = 20.0

# How hint coordinates are given: pixels of the input image, or fractions of its width and height. Stated by the
# user, never guessed from magnitudes ([[1, 1]] is a pixel near the corner as much as the image's far corner).
COORDINATE_UNITS = ("pixels", "fractions")
POINTS_EXAMPLE = "[[120, 80], [300, 200]]"


# ---------------------------------------------------------------------------------------------------------------
# The raster: regions -> sampled points -> Gaussian point map
# ---------------------------------------------------------------------------------------------------------------

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
                       seed: int = HINT_SEED, keep_small_region: bool = False) -> np.ndarray:
    """Points [N, 2] (y, x) drawn from pixels where ``region > threshold``, as the official sampler does.

    A region of fewer than ``num_points`` pixels gives no points (the official rule, which the ground-truth point
    maps follow), or with ``keep_small_region`` one point on each of its pixels: a user's tiny box or stroke is
    still a hint, not silently none.
    """
    ys, xs = np.nonzero(np.asarray(region) > threshold)
    if len(ys) < num_points:
        if keep_small_region:
            return np.stack([ys, xs], axis=1).astype(np.int64)
        return np.zeros((0, 2), dtype=np.int64)
    chosen = np.random.RandomState(seed).choice(len(ys), size=num_points, replace=False)
    return np.stack([ys[chosen], xs[chosen]], axis=1)


def hint_map_from_region(region: np.ndarray, sigma: float, num_points: int = HINT_POINT_COUNT,
                         threshold: float = HINT_THRESHOLD, seed: int = HINT_SEED,
                         keep_small_region: bool = False) -> np.ndarray:
    """Region mask [H, W] in [0, 1] -> point map [H, W] in [0, 1] (see :func:`sample_hint_points` for a region
    smaller than ``num_points``)."""
    region = np.asarray(region, dtype=np.float32)
    points = sample_hint_points(region, num_points, threshold, seed, keep_small_region)
    return gaussian_point_map(points, region.shape[0], region.shape[1], sigma)


def ground_truth_point_map(alpha: np.ndarray) -> np.ndarray:
    """Alpha matte [H, W] in [0, 1] -> the official training/evaluation point map at the matte's own resolution:
    ten points (seed 42) where alpha > 0.8, blobs of ``GROUND_TRUTH_POINT_SIGMA`` px; all zero when fewer than ten
    pixels qualify."""
    return hint_map_from_region(alpha, GROUND_TRUTH_POINT_SIGMA)


def hint_map_to_image(point_map: torch.Tensor) -> torch.Tensor:
    """Point map [..., H, W] in [0, 1] -> a 3-channel IMAGE [..., H, W, 3] in [0, 1].

    ComfyUI's VAE maps IMAGE values v to 2v - 1, which gives the official reference image ``2 * map - 1``.
    """
    return point_map.clamp(0.0, 1.0).unsqueeze(-1).expand(*point_map.shape, 3).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Marked regions: click discs, widened brush strokes, boxes
# ---------------------------------------------------------------------------------------------------------------

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


def box_region(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """A filled rectangle between the corners (x0, y0) and (x1, y1), in pixels and in either order, clipped to the
    image."""
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


def build_hint_map(height: int, width: int, clicks_xy: np.ndarray | None = None, region: np.ndarray | None = None,
                   long_side: int | None = None, num_points: int = HINT_POINT_COUNT,
                   seed: int = HINT_SEED) -> np.ndarray:
    """User hints at the working resolution -> the point map the model was trained on.

    Clicks (integer x, y) become discs as in the official app; ``region`` is any already-marked area (a widened
    painted mask, a box). Then ``num_points`` Gaussian points are drawn inside the union; a union of fewer pixels
    gets a point on each. With nothing marked the map is all zero, which the official code also feeds (the model
    then mattes the salient object on its own).
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
    return hint_map_from_region(marked, scale.sigma, num_points=num_points, seed=seed, keep_small_region=True)


# ---------------------------------------------------------------------------------------------------------------
# The user's hints: parsing the node's inputs, and their point map on the working canvas
# ---------------------------------------------------------------------------------------------------------------

def _check_units(coordinates: str) -> None:
    if coordinates not in COORDINATE_UNITS:
        raise ValueError(f"unknown coordinates '{coordinates}'; use one of {', '.join(COORDINATE_UNITS)}")


def _check_fractions(values: np.ndarray, what: str) -> None:
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(f"{what} has values outside [0, 1] but coordinates is 'fractions'; give fractions of the "
                         "image size, or set coordinates to 'pixels'")


def _in_unit_square(values: np.ndarray | None) -> bool:
    return values is not None and values.size > 0 and values.min() >= 0.0 and values.max() <= 1.0


def read_points(text: str) -> np.ndarray:
    """A JSON list of points -> float (x, y) [N, 2] as written, in no unit yet.

    Accepted: ``[[x, y], ...]``, ``[{"x": .., "y": ..}, ...]`` (the KJNodes points editor) or ``{"points": [...]}``.
    """
    text = (text or "").strip()
    if not text:
        return np.zeros((0, 2), dtype=np.float64)
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
    return array


def points_to_pixels(points: np.ndarray, width: int, height: int, coordinates: str = "pixels") -> np.ndarray:
    """Points from :func:`read_points` in ``coordinates`` -> integer pixel (x, y) of the input image."""
    _check_units(coordinates)
    if coordinates == "fractions":
        _check_fractions(points, "points")
        size = np.array([width, height], dtype=np.float64)
        return np.minimum(np.floor(points * size), size - 1).astype(np.int64)
    pixels = np.floor(points)
    outside = (pixels[:, 0] < 0) | (pixels[:, 0] >= width) | (pixels[:, 1] < 0) | (pixels[:, 1] >= height)
    if outside.any():
        bad = pixels[outside][0]
        raise ValueError(f"point (x={bad[0]:g}, y={bad[1]:g}) lies outside the {width}x{height} image; give "
                         "pixel coordinates inside the image (or fractions with coordinates = 'fractions')")
    return pixels.astype(np.int64)


def parse_points(text: str, width: int, height: int, coordinates: str = "pixels") -> np.ndarray:
    """Parse a JSON list of points (see :func:`read_points`) into integer pixel (x, y) coordinates, from pixels of
    the input image or, with ``coordinates="fractions"``, fractions of its width and height."""
    return points_to_pixels(read_points(text), width, height, coordinates)


def read_box(text: str) -> np.ndarray | None:
    """'x0, y0, x1, y1' -> four finite floats as written (no unit yet), or None for an empty text."""
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
    return values


def box_to_pixels(values: np.ndarray, width: int, height: int,
                  coordinates: str = "pixels") -> tuple[float, float, float, float]:
    """A box from :func:`read_box` in ``coordinates`` -> (x0, y0, x1, y1) in pixels of the input image. The two
    corners may come in either order; the box must overlap the image, and the part outside it is ignored."""
    _check_units(coordinates)
    if coordinates == "fractions":
        _check_fractions(values, "box")
        values = values * np.array([width, height, width, height], dtype=np.float64)
    box = tuple(float(v) for v in values)
    box_region(box, height, width)
    return box


def parse_box(text: str, width: int, height: int, coordinates: str = "pixels"):
    """'x0, y0, x1, y1' -> (x0, y0, x1, y1) in pixels of the input image, or None for an empty text (see
    :func:`box_to_pixels`)."""
    _check_units(coordinates)
    values = read_box(text)
    return None if values is None else box_to_pixels(values, width, height, coordinates)


BOUNDING_BOX_KEYS = ("x", "y", "width", "height")


def _bounding_box_to_pixels(item, width: int, height: int, where: str):
    """One ComfyUI BOUNDING_BOX dict {x, y, width, height} (top-left corner and size, pixels of the image) ->
    (x0, y0, x1, y1) pixels, or None for a box of zero width or height: the box widget's unset state."""
    if not isinstance(item, dict) or any(key not in item for key in BOUNDING_BOX_KEYS):
        raise ValueError(f"{where} is not a bounding box {{x, y, width, height}}: {str(item)[:80]}")
    try:
        x, y, box_width, box_height = (float(item[key]) for key in BOUNDING_BOX_KEYS)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must hold numbers for x, y, width and height, got {str(item)[:80]}")
    if not all(math.isfinite(v) for v in (x, y, box_width, box_height)):
        raise ValueError(f"{where} values must be finite numbers, got {str(item)[:80]}")
    if box_width < 0 or box_height < 0:
        raise ValueError(f"{where} has a negative width or height: {str(item)[:80]}")
    if box_width == 0 or box_height == 0:
        return None
    return box_to_pixels(np.array([x, y, x + box_width, y + box_height]), width, height, "pixels")


def bounding_boxes_per_image(value, batch: int, width: int, height: int) -> list[tuple] | None:
    """ComfyUI's BOUNDING_BOX value -> a tuple of (x0, y0, x1, y1) pixel boxes per image, or None when it marks
    nothing (not connected, the widget left at zero size, an empty list).

    Accepted as core's nodes give it: one dict (the box widget, Bounding Box) for every image, a list of dicts
    for every image, or a list per image (SAM3 Detect's ``bboxes``: its detections on each frame), one list or
    one per image. Coordinates are always pixels of the input image: the type has no other unit."""
    if value is None:
        return None
    if isinstance(value, dict):
        frames = [[value]]
    elif isinstance(value, (list, tuple)) and value and all(isinstance(item, (list, tuple)) for item in value):
        frames = [list(frame) for frame in value]
    elif isinstance(value, (list, tuple)):
        frames = [list(value)]
    else:
        raise ValueError(f"bbox must be a bounding box or a list of them, got {type(value).__name__}")
    if len(frames) not in (1, batch):
        raise ValueError(f"bbox has boxes for {len(frames)} images but there are {batch}; give one set of boxes "
                         "for all images, or one per image")
    per_frame = []
    for index, frame in enumerate(frames):
        where = "bbox" if len(frames) == 1 else f"bbox of image {index + 1}"
        boxes = (_bounding_box_to_pixels(item, width, height, where) for item in frame)
        per_frame.append(tuple(box for box in boxes if box is not None))
    if not any(per_frame):
        return None
    return [per_frame[min(i, len(per_frame) - 1)] for i in range(batch)]


@dataclass(frozen=True)
class MattingHints:
    """Hints for one image, in that image's pixel coordinates."""

    clicks_xy: np.ndarray | None = None          # [N, 2] integer (x, y)
    mask: np.ndarray | None = None               # [H, W] painted/selected area, > 0 = foreground
    boxes: tuple[tuple[float, float, float, float], ...] = ()   # (x0, y0, x1, y1) pixels each; their union marks

    @property
    def painted(self) -> bool:
        return self.mask is not None and bool(np.any(np.asarray(self.mask) > 0))

    @property
    def marks_anything(self) -> bool:
        return (self.clicks_xy is not None and len(self.clicks_xy) > 0) or bool(self.boxes) or self.painted


class UserHints(NamedTuple):
    """The matting node's hints: one MattingHints per image, and the warnings the user is to see (each also
    logged when it is found)."""

    per_image: list[MattingHints]
    warnings: tuple[str, ...] = ()

    def report(self) -> str:
        """The text the node shows under itself: the warnings, then which hints the model gets."""
        first = self.per_image[0] if self.per_image else MattingHints()
        parts = []
        if first.clicks_xy is not None and len(first.clicks_xy):
            parts.append(f"{len(first.clicks_xy)} click{'s' if len(first.clicks_xy) > 1 else ''}")
        if first.boxes:
            parts.append("a box" if len(first.boxes) == 1 else f"{len(first.boxes)} boxes")
        if any(item.painted for item in self.per_image):
            parts.append("a painted mask")
        status = f"Hints: {', '.join(parts)}." if parts else "No hints: the model mattes the salient object."
        return "\n".join([*(f"Warning: {warning}" for warning in self.warnings), status])


@dataclass(frozen=True)
class MattingConditioning:
    """What the matting model's second reference is made from, checked in one place.

    The nodes give ``hints`` (one MattingHints per image) that become point maps as in the official app. The
    evaluation conditions as the official evaluation does instead: ``hint_maps`` [B, H, W] in [0, 1] are point maps
    already made at the input size (the ground-truth point prompt), or ``hint_reference=False`` gives the model the
    image alone, with no point-map reference (the official unprompted setting; the nodes always add one, all zero
    without hints)."""

    hints: list[MattingHints] | None = None
    num_points: int = HINT_POINT_COUNT
    hint_maps: torch.Tensor | None = None
    hint_reference: bool = True

    def check(self, batch: int, height: int, width: int) -> None:
        """Refuse options that do not fit together or these images, else the model would silently get another
        conditioning than asked for."""
        if self.hints is not None and len(self.hints) != batch:
            raise ValueError(f"{len(self.hints)} hint sets for {batch} images; give one per image or one for all")
        if self.hint_maps is None:
            if not self.hint_reference and self.hints is not None:
                raise ValueError("hints were given with hint_reference=False, which feeds the image alone; drop the "
                                 "hints or keep the hint reference")
            return
        if self.hints is not None or not self.hint_reference:
            raise ValueError("hint_maps replace the point maps that hints would make and need the hint reference: "
                             "give hints or hint_maps (not both), with hint_reference=True")
        if tuple(self.hint_maps.shape) != (batch, height, width):
            raise ValueError(f"hint_maps has shape {tuple(self.hint_maps.shape)}; give one point map per image at "
                             f"its size, [B, H, W] = {(batch, height, width)}")
        if not torch.isfinite(self.hint_maps).all():
            raise ValueError("hint_maps hold NaN or infinite values; give point maps in [0, 1]")


def _mask_at_image_size(mask: torch.Tensor, height: int, width: int, warnings: list[str]) -> torch.Tensor:
    """Masks [N, h, w] -> [N, height, width]: scaled (with a warning) when only the size differs, refused when
    the aspect ratio does, since stretching would move the painted area off the subject. Unpainted masks have no
    size to match (Load Image gives a 64x64 one for an image without alpha)."""
    mask_height, mask_width = mask.shape[-2:]
    if (mask_height, mask_width) == (height, width):
        return mask
    if not bool((mask > 0).any()):
        return mask.new_zeros(mask.shape[0], height, width)
    # The image scaled by any factor, each side rounded (or cut) to whole pixels, is at most one pixel per side off
    # its exact aspect ratio: |w_m * h - h_m * w| <= h + w, with (h, w) the larger of the two sizes.
    if abs(mask_width * height - mask_height * width) > max(height + width, mask_height + mask_width):
        raise ValueError(f"hint_mask is {mask_width}x{mask_height} but the image is {width}x{height}, another "
                         "aspect ratio: stretching it would move the painted area off the subject. Paint the mask on "
                         "this image (the mask editor of the Load Image that gives it), or crop and scale the mask "
                         "exactly as the image was")
    warnings.append(f"hint_mask is {mask_width}x{mask_height} but the image is {width}x{height}; it was scaled to "
                    "the image (same aspect ratio). Connect a mask of the image's size to be sure it lines up")
    # Shrinking by area keeps every painted pixel above 0 (painted), where nearest could skip a thin stroke.
    mode = "area" if mask_height * mask_width > height * width else "nearest-exact"
    return torch.nn.functional.interpolate(mask[:, None].float(), size=(height, width), mode=mode)[:, 0]


def _pixel_unit_warnings(points: np.ndarray, box: np.ndarray | None) -> list[str]:
    """Points or a box given in pixels that all lie in [0, 1] are valid pixels at the top-left corner, but far more
    likely fractions of the image typed with the wrong unit."""
    warnings = []
    if _in_unit_square(points):
        subject = f"all {len(points)} points lie" if len(points) > 1 else "the point lies"
        warnings.append(f"{subject} in [0, 1] but coordinates is 'pixels', so the image's top-left pixels are "
                        "marked; for fractions of the image size set coordinates to 'fractions'")
    if _in_unit_square(box):
        warnings.append("the box lies in [0, 1] but coordinates is 'pixels', so it marks only the image's top-left "
                        "pixel; for fractions of the image size set coordinates to 'fractions'")
    return warnings


def _image_numbers(numbers: list[int]) -> str:
    """'image 3' or 'images 1, 2, ...' (the first ten) for a message."""
    listed = ", ".join(map(str, numbers[:10])) + (" ..." if len(numbers) > 10 else "")
    return f"image{'s' if len(numbers) > 1 else ''} {listed}"


def matting_hints(images: torch.Tensor, points: str = "", box: str = "", coordinates: str = "pixels",
                  hint_mask: torch.Tensor | None = None, bbox=None) -> UserHints:
    """The matting node's inputs (points JSON, box text, painted MASK, ComfyUI BOUNDING_BOX) -> one MattingHints
    per image and the warnings to show. Points and box text are in ``coordinates`` (pixels or fractions of the
    input size); ``bbox`` is in pixels whatever ``coordinates`` says (see :func:`bounding_boxes_per_image`) and
    may not be set together with the box text. A single mask is shared by every image. A hint that would reach
    the model as no hint at all is refused."""
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    _check_units(coordinates)
    raw_points, raw_box = read_points(points), read_box(box)
    clicks = points_to_pixels(raw_points, width, height, coordinates)
    box_pixels = None if raw_box is None else box_to_pixels(raw_box, width, height, coordinates)
    host_boxes = bounding_boxes_per_image(bbox, batch, width, height)
    if host_boxes is not None and box_pixels is not None:
        raise ValueError("both the box text and the bbox input give a box, and only one can say where the subject "
                         "is: clear the box text, or set bbox to zero width and height (or disconnect it)")
    boxes = host_boxes or [() if box_pixels is None else (box_pixels,)] * batch
    warnings = _pixel_unit_warnings(raw_points, raw_box) if coordinates == "pixels" else []
    unboxed = [i + 1 for i, item in enumerate(boxes) if not item]
    if host_boxes is not None and unboxed:
        warnings.append(f"bbox has no box for {_image_numbers(unboxed)} of {batch} (nothing detected there?), so "
                        "those get only the other hints")
    masks = [None] * batch
    if hint_mask is not None:
        representations.require_finite_map(hint_mask, "hint_mask")
        mask = hint_mask if hint_mask.dim() == 3 else hint_mask[None]
        if mask.shape[0] not in (1, batch):
            raise ValueError(f"hint_mask has {mask.shape[0]} masks for {batch} images; give one, or one per image")
        mask = _mask_at_image_size(mask, height, width, warnings)
        masks = [mask[min(i, mask.shape[0] - 1)].cpu().numpy() for i in range(batch)]
        unpainted = [i + 1 for i, item in enumerate(masks) if not np.any(item > 0) and not boxes[i]]
        if not len(clicks) and unpainted:
            if len(unpainted) == batch:
                raise ValueError("hint_mask is empty (nothing painted) and there are no points or box: paint the "
                                 "subject in the mask editor, add points, or disconnect hint_mask to matte the "
                                 "salient object")
            raise ValueError(f"hint_mask is empty (nothing painted) for {_image_numbers(unpainted)} of "
                             f"{batch} and there are no points or box, so those would get no hint: paint the "
                             "subject in every mask, or add points or a box for all images")
    for warning in warnings:
        log.warning("E2P Matting: %s", warning)
    return UserHints([MattingHints(clicks if len(clicks) else None, masks[i], boxes[i]) for i in range(batch)],
                     tuple(warnings))


def input_to_canvas_coords(points_xy, canvas: imaging.Canvas) -> np.ndarray:
    """Pixel (x, y) in the input image -> integer pixel in the resized content (the official app's rule)."""
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    scaled = np.stack([points[:, 0] * canvas.content_width / canvas.width,
                       points[:, 1] * canvas.content_height / canvas.height], axis=1)
    return np.floor(scaled).astype(np.int64)


def hint_map_on_canvas(hints: MattingHints, canvas: imaging.Canvas, num_points: int,
                       seed: int = HINT_SEED, scale_side: int | None = None) -> np.ndarray:
    """The hint point map at the padded canvas size (zeros in the padding), following the official app:
    a painted mask is widened at its own resolution and resized as Pillow NEAREST does; clicks and box are rescaled.
    Hints that mark no pixel at the working size are refused rather than fed as no hint. Click discs and point blobs
    have the official sizes scaled to ``scale_side`` px (default: the canvas's long side, one pass over the whole
    image)."""
    height, width = canvas.content_height, canvas.content_width
    region = np.zeros((height, width), dtype=np.float32)
    if hints.painted:
        widened = dilate_mask(hints.mask, HINT_BRUSH_DILATION)
        resized = imaging.nearest_resize(torch.from_numpy(widened), height, width).numpy()
        region = np.maximum(region, resized)
    sx, sy = width / canvas.width, height / canvas.height
    for x0, y0, x1, y1 in hints.boxes:
        region = np.maximum(region, box_region((x0 * sx, y0 * sy, x1 * sx, y1 * sy), height, width))
    clicks = None
    if hints.clicks_xy is not None and len(hints.clicks_xy):
        clicks = input_to_canvas_coords(hints.clicks_xy, canvas)
    content = build_hint_map(height, width, clicks_xy=clicks, region=region,
                             long_side=scale_side or canvas.long_side, num_points=num_points, seed=seed)
    if hints.marks_anything and not content.any():
        raise ValueError(f"the hints mark no pixel at the {width}x{height} working size: the painted area is too "
                         "small to survive scaling the mask down to it. Paint a larger area, raise "
                         "processing_resolution, or add points or a box")
    padded = np.zeros((canvas.padded_height, canvas.padded_width), dtype=np.float32)
    padded[:height, :width] = content
    return padded


def tiled_hint_map(hints: MattingHints, height: int, width: int, num_points: int, tile: int) -> np.ndarray:
    """The point map of a tiled prediction [height, width]: made once at the image's own size, from which each tile
    takes its crop, with the click discs and blobs of one pass of ``tile`` px, so a tile at full detail shows its
    points at the size the model was trained with. The points are drawn over the whole marked area, so a tile
    holds the points that fall in it."""
    canvas = imaging.Canvas(height, width, height, width, height, width, "aspect")
    return hint_map_on_canvas(hints, canvas, num_points, scale_side=tile)
