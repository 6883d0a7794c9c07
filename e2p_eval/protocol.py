"""How a prediction is compared with ground truth: resizing, valid pixels, depth alignment, aggregation.

Two presets:

* ``official`` (default) reproduces the released evaluation scripts, quirks included, so numbers compare with the
  paper: depth aligned in the space picked by substrings of the checkpoint path, normal statistics averaged over
  images (the "median" is a mean of per-image medians) with the scripts' value-range guesses and without the
  DIODE mask, matting errors over the whole image with the P3M connectivity port.
* ``standard``: depth aligned in sqrt space (the space the model predicts in), normal statistics pooled over all
  valid pixels of a dataset with the DIODE validity mask, matting errors in the trimap's unknown region with the
  DIM definitions.

docs/evaluation.md ("Protocols") lists every difference between the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from e2p_core.representations import marigold_to_native_normals

from . import metrics

# ---------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------

ALIGN_FROM_CHECKPOINT = "checkpoint-name"
ALIGN_SPACES = ("linear", "sqrt", "log", "disparity", "sqrt-disparity")
NORMAL_AGGREGATIONS = ("per-image", "pooled")
MATTING_REGIONS = ("whole", "unknown")


@dataclass(frozen=True)
class Protocol:
    name: str
    depth_align: str                 # one of ALIGN_SPACES, or ALIGN_FROM_CHECKPOINT (official rule)
    depth_drop_zero_silog: bool      # official: an image whose SILog is 0 or not finite is left out of the means
    normal_aggregation: str          # "per-image" (mean of per-image statistics) or "pooled" (all pixels)
    normal_range_guess: bool         # official: maps GT in [0, 254/255] and predictions in [0, 1] to [-1, 1]
    normal_dataset_mask: bool        # use a dataset's own validity mask (DIODE) on top of |gt| > 1e-3
    normal_round_digits: int | None  # official rounds each per-image statistic to 4 decimals
    normal_float32: bool             # official computes angles in float32
    matting_region: str              # "whole" image or the trimap's "unknown" band
    matting_conn_counts_background: bool   # official connectivity port lets the background be the largest CC

    def with_overrides(self, depth_align: str | None = None, normal_aggregation: str | None = None,
                       matting_region: str | None = None) -> "Protocol":
        """The preset with some choices changed; the name records what was changed."""
        changes, parts = {}, []
        for field, value, allowed in (("depth_align", depth_align, ALIGN_SPACES + (ALIGN_FROM_CHECKPOINT,)),
                                      ("normal_aggregation", normal_aggregation, NORMAL_AGGREGATIONS),
                                      ("matting_region", matting_region, MATTING_REGIONS)):
            if value is None or value == getattr(self, field):
                continue
            if value not in allowed:
                raise ValueError(f"unknown {field.replace('_', '-')} '{value}'; use one of {', '.join(allowed)}")
            changes[field] = value
            parts.append(f"{field.replace('_', '-')}={value}")
        if not changes:
            return self
        return replace(self, name="+".join([self.name] + parts), **changes)


OFFICIAL = Protocol(
    name="official", depth_align=ALIGN_FROM_CHECKPOINT, depth_drop_zero_silog=True,
    normal_aggregation="per-image", normal_range_guess=True, normal_dataset_mask=False, normal_round_digits=4,
    normal_float32=True, matting_region="whole", matting_conn_counts_background=True)

STANDARD = Protocol(
    name="standard", depth_align="sqrt", depth_drop_zero_silog=False,
    normal_aggregation="pooled", normal_range_guess=False, normal_dataset_mask=True, normal_round_digits=None,
    normal_float32=False, matting_region="unknown", matting_conn_counts_background=False)

PRESETS = {p.name: p for p in (OFFICIAL, STANDARD)}


def get_protocol(name: str) -> Protocol:
    if name not in PRESETS:
        raise ValueError(f"unknown protocol '{name}'; use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def alignment_space_from_checkpoint(checkpoint_path: str) -> str:
    """The official rule: the depth alignment space is chosen by substrings of the ``--state_dict`` path string.

    Checked in the official order: "log", "sqrt_disp", "disp"/"inverse", "sqrt", then "pdf" (a lookup-table
    alignment whose table is not distributed); nothing matching means linear depth. The released file names
    (``depth.safetensors``) match nothing, so the official evaluation aligns the sqrt-space output linearly.
    """
    path = checkpoint_path or ""
    if "log" in path:
        return "log"
    if "sqrt_disp" in path:
        return "sqrt-disparity"
    if "disp" in path or "inverse" in path:
        return "disparity"
    if "sqrt" in path:
        return "sqrt"
    if "pdf" in path:
        raise ValueError(f"the checkpoint path '{path}' contains 'pdf', which in the official protocol selects an "
                         "alignment through depth_mapping_lookup_table.npz, a file that is not distributed; "
                         "pass --depth-align (e.g. sqrt) instead")
    return "linear"


def resolve_alignment(protocol: Protocol, checkpoint_path: str | None) -> str:
    if protocol.depth_align != ALIGN_FROM_CHECKPOINT:
        return protocol.depth_align
    if checkpoint_path is None:
        raise ValueError("the official protocol picks the depth alignment space from the checkpoint path, but no "
                         "checkpoint path is known for these predictions; pass --checkpoint-name or --depth-align")
    return alignment_space_from_checkpoint(checkpoint_path)


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------------

def resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W] or [H, W, C] float32, bilinear with align_corners=True (how the official scripts bring the 768x768
    prediction to the ground-truth size). Unchanged if the size already matches."""
    array = np.asarray(array, dtype=np.float32)
    if array.shape[:2] == (height, width):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor[None, None] if array.ndim == 2 else tensor.permute(2, 0, 1)[None]
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=True)[0]
    return (resized[0] if array.ndim == 2 else resized.permute(1, 2, 0)).numpy()


def single_channel(prediction: np.ndarray) -> np.ndarray:
    """Depth / alpha prediction as [H, W]; the official scripts save 3 channels and average them."""
    prediction = np.asarray(prediction, dtype=np.float32)
    if prediction.ndim == 3:
        return prediction.mean(axis=2, dtype=np.float32)
    if prediction.ndim != 2:
        raise ValueError(f"expected a prediction of shape [H, W] or [H, W, C], got {prediction.shape}")
    return prediction


def finite_or_zero(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.float32, copy=True)
    array[~np.isfinite(array)] = 0.0
    return array


# ---------------------------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------------------------

MIN_VALID_PIXELS = 100


@dataclass
class DepthTarget:
    depth: np.ndarray                      # [H, W] metres (0 / inf / NaN = no measurement)
    eval_mask: np.ndarray                  # [H, W] bool: dataset validity mask and evaluation crop
    min_depth: float
    max_depth: float
    prediction_box: tuple[int, int, int, int] | None = None   # (top, left, height, width) the model saw


def _to_alignment_space(depth: np.ndarray, space: str) -> np.ndarray:
    if space == "linear":
        return depth.astype(np.float64)
    if space == "sqrt":
        return np.sqrt(depth + 1e-6)
    if space == "log":
        return np.log(depth + 1e-6)
    if space == "disparity":
        return 1.0 / (depth + 1e-8)
    if space == "sqrt-disparity":
        return 1.0 / np.sqrt(depth + 1e-8)
    raise ValueError(f"unknown alignment space '{space}'; use one of {', '.join(ALIGN_SPACES)}")


def _from_alignment_space(values: np.ndarray, space: str) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if space == "linear":
            return values
        if space == "sqrt":
            return values ** 2
        if space == "log":
            return np.exp(values)
        if space == "disparity":
            return 1.0 / values
        if space == "sqrt-disparity":
            return 1.0 / values ** 2
    raise ValueError(f"unknown alignment space '{space}'")


def evaluate_depth(prediction: np.ndarray, target: DepthTarget, space: str) -> dict[str, float] | None:
    """Per-image depth metrics after per-image least-squares scale/shift alignment in ``space``.

    ``prediction`` is the model output (sqrt-space [0, 1], any size; 3-channel arrays are averaged). Returns
    None when fewer than 100 pixels are valid (the official scripts skip such images).
    """
    gt = finite_or_zero(target.depth)
    height, width = gt.shape
    top, left, box_h, box_w = target.prediction_box or (0, 0, height, width)
    pred = finite_or_zero(resize_bilinear(single_channel(prediction), box_h, box_w))
    frame = np.zeros((height, width), dtype=np.float32)
    frame[top:top + box_h, left:left + box_w] = pred
    valid = (gt > target.min_depth) & (gt < target.max_depth) & np.asarray(target.eval_mask, dtype=bool)
    valid_count = int(valid.sum())
    if valid_count < MIN_VALID_PIXELS:
        return None
    scale, shift = metrics.least_squares_scale_shift(frame[valid], _to_alignment_space(gt[valid], space))
    aligned = _from_alignment_space(frame[valid] * scale + shift, space)
    aligned = np.clip(aligned, target.min_depth, target.max_depth)   # also turns +-inf (1/0) into the caps
    result = metrics.depth_errors(gt[valid], aligned)
    result.update(valid_pixels=valid_count, scale=scale, shift=shift)
    return result


def depth_image_counts(result: dict[str, float] | None, protocol: Protocol) -> bool:
    """Whether an image enters the dataset means."""
    if result is None:
        return False
    if protocol.depth_drop_zero_silog:
        return math.isfinite(result["silog"]) and result["silog"] != 0.0
    return all(math.isfinite(result[k]) for k in metrics.DEPTH_METRICS)


# ---------------------------------------------------------------------------------------------------------------
# Normals
# ---------------------------------------------------------------------------------------------------------------

GT_NORM_MIN = 1e-3
RANGE_GUESS_EPS = 1e-3


@dataclass
class NormalTarget:
    normals: np.ndarray                 # [H, W, 3] as stored by the dataset (Marigold convention, +X right)
    mask: np.ndarray | None = None      # [H, W] bool, a dataset's own validity mask (DIODE)


def _official_range_guess(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eps = RANGE_GUESS_EPS
    if gt.min() > -eps and gt.max() < 254 + eps:
        gt = gt / 254.0 * 2.0 - 1.0
    if gt.min() > -eps and gt.max() < 255 + eps:
        gt = gt / 255.0 * 2.0 - 1.0
    if pred.min() > -eps and pred.max() < 1 + eps:
        pred = (pred - 0.5) * 2.0
    return gt, pred


def normal_errors(prediction: np.ndarray, target: NormalTarget, protocol: Protocol) -> np.ndarray:
    """Angular error in degrees of every evaluated pixel.

    The prediction is in E2P's native convention; the ground truth is brought to it with the official x flip.
    """
    stored = np.asarray(target.normals, dtype=np.float32)
    if stored.ndim != 3 or stored.shape[2] != 3:
        raise ValueError(f"ground-truth normals must be [H, W, 3], got {stored.shape}")
    gt = finite_or_zero(marigold_to_native_normals(torch.from_numpy(stored)).numpy())
    height, width = gt.shape[:2]
    pred = np.asarray(prediction, dtype=np.float32)
    if pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"normal predictions must be [H, W, 3], got {pred.shape}")
    pred = finite_or_zero(resize_bilinear(finite_or_zero(pred), height, width))
    valid = np.linalg.norm(gt, axis=2) > GT_NORM_MIN
    if protocol.normal_dataset_mask and target.mask is not None:
        valid &= np.asarray(target.mask, dtype=bool)
    if protocol.normal_range_guess:
        gt, pred = _official_range_guess(gt, pred)
    dtype = np.float32 if protocol.normal_float32 else np.float64
    return metrics.angular_errors(pred[valid], gt[valid], dtype=dtype)


def normal_image_statistics(errors: np.ndarray, protocol: Protocol) -> dict[str, float]:
    stats = metrics.angular_statistics(errors)
    if protocol.normal_round_digits is not None:
        stats = {k: round(v, protocol.normal_round_digits) if math.isfinite(v) else v for k, v in stats.items()}
    stats["valid_pixels"] = int(np.asarray(errors).size)
    return stats


# ---------------------------------------------------------------------------------------------------------------
# Matting
# ---------------------------------------------------------------------------------------------------------------

TRIMAP_UNKNOWN = 128


@dataclass
class MattingTarget:
    alpha: np.ndarray                   # [H, W] float32 in [0, 1]
    trimap: np.ndarray | None = None    # [H, W] 0 / 128 / 255


def evaluate_matting(prediction: np.ndarray, target: MattingTarget, protocol: Protocol) -> dict[str, float]:
    """MSE, SAD, MAD, Grad, Conn of one matte (SAD, Grad and Conn are sums / 1000)."""
    alpha = np.asarray(target.alpha, dtype=np.float32)
    height, width = alpha.shape
    pred = finite_or_zero(resize_bilinear(finite_or_zero(single_channel(prediction)), height, width))
    region = None
    if protocol.matting_region == "unknown":
        if target.trimap is None:
            raise ValueError("the unknown-region matting metrics need the dataset's trimaps, which were not found; "
                             "use --matting-region whole or supply the trimap folder")
        region = np.asarray(target.trimap) == TRIMAP_UNKNOWN
    result = metrics.sad_mse_mad(pred, alpha, region)
    result["grad"] = metrics.gradient_error(pred, alpha, region)
    result["conn"] = metrics.connectivity_error(pred, alpha, region,
                                                count_background=protocol.matting_conn_counts_background)
    result["region_pixels"] = int(region.sum()) if region is not None else height * width
    return result


# ---------------------------------------------------------------------------------------------------------------
# Aggregation over a dataset
# ---------------------------------------------------------------------------------------------------------------

# The metrics each task's evaluation reports, in table order (the per-image CSV columns and the summary keys).
TASK_METRICS = {"depth": metrics.DEPTH_METRICS, "normal": metrics.NORMAL_METRICS, "matting": metrics.MATTING_METRICS}


class DatasetAggregate:
    """Collects per-image results of one dataset and produces the dataset-level numbers."""

    def __init__(self, task: str, protocol: Protocol) -> None:
        self.task = task
        self.protocol = protocol
        self.rows: list[dict[str, float]] = []
        self.counted = 0
        self.skipped = 0
        self.pooled: metrics.PooledAngularStatistics | None = None    # every pixel's angle, pooled protocols only

    def _tally(self, row: dict[str, float] | None, counts: bool) -> bool:
        """Keep an image's row in the means when it counts; otherwise only count it as skipped."""
        if counts:
            self.rows.append(row)
            self.counted += 1
        else:
            self.skipped += 1
        return counts

    def add_depth(self, result: dict[str, float] | None) -> bool:
        return self._tally(result, depth_image_counts(result, self.protocol))

    def add_normal(self, errors: np.ndarray, stats: dict[str, float]) -> bool:
        if self.protocol.normal_aggregation == "pooled":
            self.pooled = self.pooled or metrics.PooledAngularStatistics()
            self.pooled.add(errors)
        return self._tally(stats, math.isfinite(stats["mean"]))

    def add_matting(self, result: dict[str, float]) -> bool:
        self.rows.append(result)
        counts = all(math.isfinite(result[k]) for k in metrics.MATTING_METRICS)
        self.counted += int(counts)
        self.skipped += int(not counts)
        return counts

    def result(self) -> dict[str, float]:
        summary = DATASET_MEANS[self.task](self, TASK_METRICS[self.task])
        summary["images"] = self.counted
        summary["skipped"] = self.skipped
        return summary


def mean_of_counted(aggregate: DatasetAggregate, keys) -> dict[str, float]:
    """The mean of each metric over the images that count."""
    return {key: float(np.mean([row[key] for row in aggregate.rows])) if aggregate.rows else float("nan")
            for key in keys}


def normal_means(aggregate: DatasetAggregate, keys) -> dict[str, float]:
    """Per-image statistics averaged, or under a pooled protocol the statistics of all the dataset's pixels."""
    if aggregate.protocol.normal_aggregation == "pooled":
        return (aggregate.pooled or metrics.PooledAngularStatistics()).result()
    return mean_of_counted(aggregate, keys)


def finite_means(aggregate: DatasetAggregate, keys) -> dict[str, float]:
    """The mean of each metric over the images where that metric is finite (nanmean, as the official matting
    script does)."""
    summary = {}
    for key in keys:
        values = np.array([row[key] for row in aggregate.rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[key] = float(finite.mean()) if finite.size else float("nan")
    return summary


# How each task's per-image numbers become the dataset's numbers.
DATASET_MEANS = {"depth": mean_of_counted, "normal": normal_means, "matting": finite_means}


# ---------------------------------------------------------------------------------------------------------------
# One image's row
# ---------------------------------------------------------------------------------------------------------------

def depth_row(prediction: np.ndarray, target, aggregate: DatasetAggregate, alignment: str | None) -> dict:
    result = evaluate_depth(prediction, target, alignment)
    counted = aggregate.add_depth(result)
    return dict(result or {}, status="ok" if counted else
                ("too few valid pixels" if result is None else "excluded (SILog 0 or not finite)"))


def normal_row(prediction: np.ndarray, target, aggregate: DatasetAggregate, alignment: str | None) -> dict:
    errors = normal_errors(prediction, target, aggregate.protocol)
    row = normal_image_statistics(errors, aggregate.protocol)
    row["status"] = "ok" if aggregate.add_normal(errors, row) else "no valid pixels"
    return row


def matting_row(prediction: np.ndarray, target, aggregate: DatasetAggregate, alignment: str | None) -> dict:
    row = evaluate_matting(prediction, target, aggregate.protocol)
    row["status"] = "ok" if aggregate.add_matting(row) else "not finite"
    return row


# Each task's evaluation of one image: its CSV row (the task's metrics, then EXTRA_COLUMNS, then a status), tallied
# into the dataset aggregate.
IMAGE_ROWS = {"depth": depth_row, "normal": normal_row, "matting": matting_row}
EXTRA_COLUMNS = {"depth": ("valid_pixels", "scale", "shift"), "normal": ("valid_pixels",),
                 "matting": ("region_pixels",)}
