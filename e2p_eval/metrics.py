"""Per-image metric primitives for depth, surface normals and alpha mattes.

Definitions follow the Edit2Perceive evaluation (BTS-style depth errors, Marigold/DSINE-style angular statistics,
the DIM/P3M matting errors). Everything here is plain NumPy on arrays that the protocol has already resized,
masked and aligned; which pixels and which aggregation are used is decided in :mod:`e2p_eval.protocol`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# ---------------------------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------------------------

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "silog", "log10", "delta1", "delta2", "delta3")
DELTA_BASE = 1.25


def least_squares_scale_shift(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(scale, shift) minimising ||scale * prediction + shift - target||^2 over the given (valid) pixels."""
    prediction = np.asarray(prediction, dtype=np.float64).ravel()
    target = np.asarray(target, dtype=np.float64).ravel()
    if prediction.size < 2:
        raise ValueError("scale/shift alignment needs at least two valid pixels")
    design = np.stack([prediction, np.ones_like(prediction)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(scale), float(shift)


def depth_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Standard monocular-depth errors between valid ground-truth and aligned predicted depths (1-D, > 0)."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    ratio = np.maximum(gt / pred, pred / gt)
    log_diff = np.log(pred) - np.log(gt)
    # SILog is the square root of a variance; rounding can make that variance slightly negative, which gives NaN
    # (as np.sqrt does in the official code, whose aggregation then drops the image).
    variance = float(np.mean(log_diff ** 2) - np.mean(log_diff) ** 2)
    silog = math.sqrt(variance) * 100.0 if variance >= 0 else float("nan")
    return {
        "abs_rel": float(np.mean(np.abs(gt - pred) / gt)),
        "sq_rel": float(np.mean((gt - pred) ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean((gt - pred) ** 2))),
        "rmse_log": float(np.sqrt(np.mean(log_diff ** 2))),
        "silog": silog,
        "log10": float(np.mean(np.abs(np.log10(pred) - np.log10(gt)))),
        "delta1": float(np.mean(ratio < DELTA_BASE)),
        "delta2": float(np.mean(ratio < DELTA_BASE ** 2)),
        "delta3": float(np.mean(ratio < DELTA_BASE ** 3)),
    }


# ---------------------------------------------------------------------------------------------------------------
# Surface normals
# ---------------------------------------------------------------------------------------------------------------

ANGLE_THRESHOLDS = (5.0, 7.5, 11.25, 22.5, 30.0)
NORMAL_METRICS = ("mean", "median", "rmse", "a5", "a7_5", "a11_25", "a22_5", "a30")
COSINE_EPS = 1e-8


def threshold_key(threshold: float) -> str:
    """11.25 -> 'a11_25': column name for the share of pixels with an angular error below the threshold."""
    return "a" + f"{threshold:g}".replace(".", "_")


def angular_errors(pred: np.ndarray, gt: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Per-pixel angle in degrees between vectors [N, 3].

    Each vector is divided by max(length, 1e-8) before the dot product (torch.cosine_similarity's rule), so a
    zero prediction scores 90 degrees rather than NaN.
    """
    pred = np.asarray(pred, dtype=dtype).reshape(-1, 3)
    gt = np.asarray(gt, dtype=dtype).reshape(-1, 3)
    pred_len = np.maximum(np.linalg.norm(pred, axis=1), dtype(COSINE_EPS))
    gt_len = np.maximum(np.linalg.norm(gt, axis=1), dtype(COSINE_EPS))
    cosine = np.sum((pred / pred_len[:, None]) * (gt / gt_len[:, None]), axis=1)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))).astype(dtype)


def angular_statistics(errors: np.ndarray) -> dict[str, float]:
    """Mean, median, RMSE (degrees) and % of pixels below each threshold, for one set of pixel errors."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        return {key: float("nan") for key in NORMAL_METRICS}
    stats = {
        "mean": float(np.mean(errors)),
        "median": float(np.median(errors)),
        "rmse": float(np.sqrt(np.mean(errors ** 2))),
    }
    for threshold in ANGLE_THRESHOLDS:
        stats[threshold_key(threshold)] = float(100.0 * np.mean(errors < threshold))
    return stats


class PooledAngularStatistics:
    """Angular statistics over all pixels of a dataset without keeping every pixel in memory.

    Mean, RMSE and threshold shares are exact (running sums and counts); the median comes from a histogram with
    0.001 degree bins, interpolated inside the bin that holds it.
    """

    BIN_WIDTH = 1e-3

    def __init__(self) -> None:
        self.bins = int(round(180.0 / self.BIN_WIDTH))
        self.histogram = np.zeros(self.bins, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.total_squared = 0.0
        self.below = {threshold: 0 for threshold in ANGLE_THRESHOLDS}

    def add(self, errors: np.ndarray) -> None:
        errors = np.asarray(errors, dtype=np.float64).ravel()
        if errors.size == 0:
            return
        index = np.clip((errors / self.BIN_WIDTH).astype(np.int64), 0, self.bins - 1)
        self.histogram += np.bincount(index, minlength=self.bins)
        self.count += errors.size
        self.total += float(errors.sum())
        self.total_squared += float(np.square(errors).sum())
        for threshold in ANGLE_THRESHOLDS:
            self.below[threshold] += int(np.count_nonzero(errors < threshold))

    def median(self) -> float:
        cumulative = np.cumsum(self.histogram)
        half = self.count / 2.0
        bin_index = int(np.searchsorted(cumulative, half, side="left"))
        before = cumulative[bin_index - 1] if bin_index > 0 else 0
        inside = self.histogram[bin_index]
        fraction = (half - before) / inside if inside else 0.5
        return (bin_index + fraction) * self.BIN_WIDTH

    def result(self) -> dict[str, float]:
        if self.count == 0:
            return {key: float("nan") for key in NORMAL_METRICS}
        stats = {
            "mean": self.total / self.count,
            "median": self.median(),
            "rmse": math.sqrt(self.total_squared / self.count),
        }
        for threshold in ANGLE_THRESHOLDS:
            stats[threshold_key(threshold)] = 100.0 * self.below[threshold] / self.count
        return stats


# ---------------------------------------------------------------------------------------------------------------
# Matting
# ---------------------------------------------------------------------------------------------------------------

MATTING_METRICS = ("mse", "sad", "mad", "grad", "conn")
GRADIENT_SIGMA = 1.4
CONNECTIVITY_STEP = 0.1
CONNECTIVITY_MIN_DISTANCE = 0.15


def _region_or_all(shape, region: np.ndarray | None) -> np.ndarray:
    if region is None:
        return np.ones(shape, dtype=bool)
    region = np.asarray(region, dtype=bool)
    if region.shape != tuple(shape):
        raise ValueError(f"region mask {region.shape} does not match the alpha {tuple(shape)}")
    return region


def sad_mse_mad(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> dict[str, float]:
    """SAD (sum of |error| / 1000), MSE and MAD (means over the region's pixels) inside ``region`` (all if None)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    mask = _region_or_all(gt.shape, region)
    diff = (pred - gt)[mask]
    pixels = diff.size
    if pixels == 0:
        return {"sad": 0.0, "mse": float("nan"), "mad": float("nan")}
    return {
        "sad": float(np.abs(diff).sum() / 1000.0),
        "mse": float(np.square(diff).sum() / pixels),
        "mad": float(np.abs(diff).sum() / pixels),
    }


def gaussian_derivative_kernel(sigma: float = GRADIENT_SIGMA, epsilon: float = 1e-2) -> np.ndarray:
    """The DIM evaluation's x-derivative-of-Gaussian kernel: support where the Gaussian exceeds ``epsilon`` of
    its peak scale, unit L2 norm. Rows index y, columns x."""
    halfsize = int(math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon))))
    offsets = np.arange(-halfsize, halfsize + 1, dtype=np.float64)
    gaussian = np.exp(-offsets ** 2 / (2.0 * sigma ** 2)) / (sigma * math.sqrt(2.0 * math.pi))
    derivative = -offsets * gaussian / sigma ** 2
    kernel = np.outer(gaussian, derivative)
    return kernel / math.sqrt(np.sum(kernel ** 2))


def gradient_magnitude(alpha: np.ndarray, sigma: float = GRADIENT_SIGMA) -> np.ndarray:
    kernel_x = gaussian_derivative_kernel(sigma)
    gx = ndimage.convolve(alpha, kernel_x, mode="nearest")
    gy = ndimage.convolve(alpha, kernel_x.T, mode="nearest")
    return np.sqrt(gx ** 2 + gy ** 2)


def gradient_error(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None,
                   sigma: float = GRADIENT_SIGMA) -> float:
    """Sum over the region of the squared difference of Gaussian-gradient magnitudes, / 1000.

    Filtering keeps the inputs' float type, as the official code does (float32 alphas stay float32)."""
    pred, gt = _float_alpha(pred), _float_alpha(gt)
    mask = _region_or_all(gt.shape, region)
    error = (gradient_magnitude(pred, sigma).astype(np.float64) - gradient_magnitude(gt, sigma)) ** 2
    return float(error[mask].sum() / 1000.0)


_FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def _float_alpha(alpha: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha)
    if not np.issubdtype(alpha.dtype, np.floating):
        raise TypeError(f"alpha mattes must be float arrays in [0, 1], got {alpha.dtype}; divide 8-bit mattes by 255")
    return alpha


def largest_component(binary: np.ndarray, count_background: bool) -> np.ndarray:
    """Mask of the largest 4-connected component of ``binary``.

    ``count_background=True`` reproduces the Python port used by the official code (P3M-Net's ``getLargestCC``),
    where the background label 0 competes too, so when the background is the biggest region the "component" is
    the background. ``False`` is the definition of the original DIM evaluation (foreground components only; an
    empty mask when there are none).
    """
    labels, count = ndimage.label(binary, structure=_FOUR_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    if count_background:
        return labels == int(np.argmax(sizes))
    if count == 0:
        return np.zeros_like(binary, dtype=bool)
    return labels == int(np.argmax(sizes[1:]) + 1)


def connectivity_error(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None,
                       step: float = CONNECTIVITY_STEP, count_background: bool = False) -> float:
    """Connectivity error (Rhemann et al.), summed over the region, / 1000.

    Thresholds are compared in the inputs' own float type and the level map is float32, as in the official code,
    so alphas exactly on a threshold (e.g. 153/255 vs 0.6) fall on the same side."""
    pred, gt = _float_alpha(pred), _float_alpha(gt)
    mask = _region_or_all(gt.shape, region)
    thresholds = np.arange(0.0, 1.0 + step, step)
    level = np.full(gt.shape, -1.0, dtype=np.float32)
    for i in range(1, len(thresholds)):
        both = (pred >= thresholds[i]) & (gt >= thresholds[i])
        connected = largest_component(both, count_background)
        level[(level == -1) & ~connected] = thresholds[i - 1]
    level[level == -1] = 1.0
    pred_distance = pred - level
    gt_distance = gt - level
    pred_phi = 1.0 - pred_distance * (pred_distance >= CONNECTIVITY_MIN_DISTANCE)
    gt_phi = 1.0 - gt_distance * (gt_distance >= CONNECTIVITY_MIN_DISTANCE)
    return float(np.abs(pred_phi - gt_phi).astype(np.float64)[mask].sum() / 1000.0)
