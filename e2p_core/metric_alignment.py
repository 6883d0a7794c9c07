"""Metric depth from E2P's affine-invariant sqrt depth and a metric reference.

E2PDepth's ``y`` is affine in sqrt(depth): ``sqrt(d) = s * y + t`` with an unknown ``s > 0`` and ``t`` per image.
A metric estimator (Depth Anything 3, MoGe, any depth map in metres) knows the scale but is coarser and blurrier.
Fitting ``s`` and ``t`` in sqrt space, where the relation is exactly affine, takes the reference's scale and keeps
E2P's detail: ``d = (s * y + t)**2`` (the one formula, ``representations.sqrt_affine_to_metric``).

The fit survives what references get wrong:

* the reference is resampled to ``y``'s size with its unusable pixels (zero, negative, NaN/inf, masked such as
  sky, zero confidence) left out of the interpolation, and a resampled pixel counts only where every source pixel
  under it was usable;
* ``y``'s saturated pixels (0 and 1: E2P clips 2 % at each end of its percentile normalisation) carry no affine
  information and are left out;
* the reference's confidence weights each pixel;
* the estimate is robust: a weighted least-squares start, Huber IRLS (convex, so it converges from that start
  whatever the outliers) and then Tukey's biweight IRLS, which gives gross outliers (depth edges the reference
  blurred, regions it got wrong) no weight at all. Residual scales are weighted MADs.

Only torch is needed (no ComfyUI). The fit runs on the CPU in float64; the depth comes back on ``y``'s device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import imaging, representations

MIN_FIT_PIXELS = 64
MAX_FIT_PIXELS = 1 << 16          # a regular subgrid beyond this: two parameters need no more, and it bounds the sorts
SATURATION_MARGIN = 1e-3          # y within this of 0 or 1 is clipped, not affine
FULL_SUPPORT = 0.999              # share of a resampled pixel's weight that must come from usable reference pixels
HUBER_K = 1.345                   # 95 % efficiency under Gaussian noise
TUKEY_C = 4.685                   # 95 % efficiency; residuals beyond c * sigma get weight 0 (the outliers)
MAD_TO_SIGMA = 1.4826             # MAD -> standard deviation for Gaussian residuals
MAX_ITERATIONS = 100
RELATIVE_TOLERANCE = 1e-10


class AlignmentError(ValueError):
    """A reference or depth that cannot be aligned; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Alignment:
    """``metric_depth`` [B, H, W] in metres (float32, 0 where ``s * y + t`` is negative); ``scale`` and ``shift``
    [B] (float64), the ``s`` and ``t`` of ``sqrt(d) = s * y + t``; ``inlier_fraction`` [B], the share of the fitted
    pixels the fit agrees with (within Tukey's cut-off), None when near and far were given instead of fitted."""

    metric_depth: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    inlier_fraction: torch.Tensor | None


def _as_batch(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (2, 3):
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise AlignmentError(f"{name} must be a map [H, W] or a batch of maps [B, H, W], got {shape}")
    return tensor if tensor.dim() == 3 else tensor[None]


def _checked_sqrt_depth(sqrt_depth: torch.Tensor) -> torch.Tensor:
    y = _as_batch(sqrt_depth, "sqrt_depth")
    bad = int((~torch.isfinite(y)).sum())
    if bad:
        raise AlignmentError(f"sqrt_depth has {bad} NaN or infinite values (of {y.numel()}); give E2PDepth's "
                             "sqrt_depth output, which is finite")
    return representations.clamp_unit_interval(y.float())


def align_to_near_far(sqrt_depth: torch.Tensor, near: float, far: float) -> Alignment:
    """The known-range form: the scene's nearest and farthest distances in metres fix ``t = sqrt(near)`` and
    ``s = sqrt(far) - sqrt(near)`` (SqrtDecode's metric_depth)."""
    y = _checked_sqrt_depth(sqrt_depth)
    if not (math.isfinite(near) and math.isfinite(far) and 0.0 <= near < far):
        raise AlignmentError(f"need 0 <= near < far (metres), got near={near}, far={far}")
    depth = representations.sqrt_depth_to_metric(y, near, far)
    batch = y.shape[0]
    scale = torch.full((batch,), math.sqrt(far) - math.sqrt(near), dtype=torch.float64)
    shift = torch.full((batch,), math.sqrt(near), dtype=torch.float64)
    return Alignment(depth, scale, shift, None)


def _reference_inputs(reference, confidence, valid, batch: int, height: int, width: int):
    """Checked reference [B', h, w] (B' = 1 or B) with its usable mask and weights."""
    reference = _as_batch(reference, "reference")
    if reference.shape[0] not in (1, batch):
        raise AlignmentError(f"the reference has {reference.shape[0]} images and sqrt_depth {batch}: give one "
                             "reference per image (or one for all)")
    ref_h, ref_w = reference.shape[-2:]
    if abs(ref_h * width - height * ref_w) > max(width, ref_w, 0.02 * ref_h * width):
        raise AlignmentError(f"the reference is {ref_w}x{ref_h} px and sqrt_depth {width}x{height} px: different "
                             "aspect ratios, so they are not the same view; run both on the same image (crop or "
                             "resize them alike)")
    reference = reference.detach().to("cpu", torch.float64)
    usable = torch.isfinite(reference) & (reference > 0)
    weights = torch.ones_like(reference)
    if valid is not None:
        valid = _as_batch(valid, "valid")
        if valid.dtype != torch.bool:
            raise AlignmentError(f"the validity mask must be boolean (True = usable), got {valid.dtype}; threshold "
                                 "a probability first, e.g. DA3's sky < 0.5")
        if valid.shape != reference.shape:
            raise AlignmentError(f"the validity mask is {tuple(valid.shape)}, the reference {tuple(reference.shape)}: "
                                 "give the mask at the reference's size")
        usable &= valid.detach().cpu()
    if confidence is not None:
        confidence = _as_batch(confidence, "confidence")
        if confidence.shape != reference.shape:
            raise AlignmentError(f"the confidence map is {tuple(confidence.shape)}, the reference "
                                 f"{tuple(reference.shape)}: give the confidence at the reference's size")
        weights = confidence.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise AlignmentError("the confidence map has negative, NaN or infinite values; confidences are weights "
                                 ">= 0 (0 = ignore the pixel)")
        usable &= weights > 0
    return reference, usable, weights, valid


def _describe_unusable(reference: torch.Tensor, valid: torch.Tensor | None, weights: torch.Tensor) -> str:
    counts = {"NaN/inf": int((~torch.isfinite(reference)).sum()), "zero or negative": int((reference <= 0).sum()),
              "masked out (sky / invalid)": 0 if valid is None else int((~valid).sum()),
              "with zero confidence": int((weights <= 0).sum())}
    listed = ", ".join(f"{count} {what}" for what, count in counts.items() if count)
    return f"{listed} of {reference.numel()}"


def _resample(reference: torch.Tensor, usable: torch.Tensor, weights: torch.Tensor, height: int, width: int):
    """sqrt(reference), its weights and where it is usable, at height x width, from usable pixels only."""
    mask = usable.to(torch.float64)
    root = torch.sqrt(torch.where(usable, reference, torch.zeros_like(reference)))
    stacked = torch.stack([root * mask, weights * mask, mask], dim=1)               # [B', 3, h, w]
    resampled = imaging.resize(stacked, height, width, "bilinear")
    support = resampled[:, 2]
    covered = support >= FULL_SUPPORT
    safe = torch.where(covered, support, torch.ones_like(support))
    return resampled[:, 0] / safe, resampled[:, 1] / safe, covered


def _weighted_line(y: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """Weighted least squares of z = s * y + t."""
    total = w.sum()
    if total <= 0:
        raise AlignmentError("no reference pixel kept any weight in the fit; the reference disagrees with the depth "
                             "everywhere: check that both show the same image")
    mean_y = (w * y).sum() / total
    mean_z = (w * z).sum() / total
    dy = y - mean_y
    spread = (w * dy * dy).sum() / total
    if spread <= 1e-12:
        raise AlignmentError("sqrt_depth is (almost) constant where the reference is usable, so no scale can be "
                             "fitted; give a depth map of a scene with some depth range")
    scale = (w * dy * (z - mean_z)).sum() / total / spread
    return float(scale), float(mean_z - scale * mean_y)


def _weighted_median(values: torch.Tensor, weights: torch.Tensor) -> float:
    ordered, order = torch.sort(values)
    cumulative = torch.cumsum(weights[order], dim=0)
    index = int(torch.searchsorted(cumulative, 0.5 * cumulative[-1]))
    return float(ordered[min(index, ordered.numel() - 1)])


def robust_sqrt_affine_fit(y: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> tuple[float, float, float]:
    """Robust ``z = s * y + t`` on 1-D float64 samples with weights ``w`` > 0 -> (s, t, inlier fraction)."""
    floor = 1e-12 * max(float(z.abs().max()), 1e-12)

    def sigma(residuals: torch.Tensor) -> float:
        return max(MAD_TO_SIGMA * _weighted_median(residuals.abs(), w), floor)

    def converged(old: tuple[float, float], new: tuple[float, float]) -> bool:
        change = abs(new[0] - old[0]) + abs(new[1] - old[1])
        return change <= RELATIVE_TOLERANCE * (abs(new[0]) + abs(new[1]) + floor)

    params = _weighted_line(y, z, w)
    for _ in range(MAX_ITERATIONS):
        residuals = z - (params[0] * y + params[1])
        scaled = residuals.abs() / sigma(residuals)
        huber = torch.where(scaled <= HUBER_K, torch.ones_like(scaled), HUBER_K / scaled.clamp(min=HUBER_K))
        new = _weighted_line(y, z, w * huber)
        done = converged(params, new)
        params = new
        if done:
            break
    cut = TUKEY_C * sigma(z - (params[0] * y + params[1]))
    for _ in range(MAX_ITERATIONS):
        residuals = z - (params[0] * y + params[1])
        tukey = (1.0 - (residuals / cut) ** 2).clamp(min=0.0) ** 2
        new = _weighted_line(y, z, w * tukey)
        done = converged(params, new)
        params = new
        if done:
            break
    inliers = (z - (params[0] * y + params[1])).abs() < cut
    return params[0], params[1], float(inliers.to(torch.float64).mean())


def align_to_reference(sqrt_depth: torch.Tensor, reference: torch.Tensor, confidence: torch.Tensor | None = None,
                       valid: torch.Tensor | None = None) -> Alignment:
    """Fit each image's ``sqrt(reference) ~ s * y + t`` robustly and return its metric depth.

    ``sqrt_depth`` [B, H, W] (or [H, W]) is E2PDepth's output in [0, 1]. ``reference`` [B or 1, h, w] is depth in
    metres (planar, like DA3's and MoGe's ``depth``), at any resolution with the same aspect ratio; ``confidence``
    (weights >= 0, any scale, e.g. DA3's raw confidence) and ``valid`` (False where the reference has no depth:
    DA3's ``sky >= 0.5``, MoGe's ``mask == False``) are at the reference's size.
    """
    y = _checked_sqrt_depth(sqrt_depth)
    batch, height, width = y.shape
    reference, usable, weights, valid = _reference_inputs(reference, confidence, valid, batch, height, width)
    for item in range(reference.shape[0]):
        if not bool(usable[item].any()):
            mask = None if valid is None else valid[item]
            raise AlignmentError(
                f"reference {item} has no usable pixel ({_describe_unusable(reference[item], mask, weights[item])}); "
                "give depth in metres (e.g. Depth Anything 3's or MoGe's depth) with some valid pixels")
    roots, root_weights, covered = _resample(reference, usable, weights, height, width)
    stride = max(1, math.ceil(math.sqrt(height * width / MAX_FIT_PIXELS)))
    y_cpu = y.detach().to("cpu", torch.float64)
    scales, shifts, fractions = [], [], []
    for item in range(batch):
        source = 0 if reference.shape[0] == 1 else item
        values = y_cpu[item, ::stride, ::stride]
        unsaturated = (values > SATURATION_MARGIN) & (values < 1.0 - SATURATION_MARGIN)
        fit = covered[source, ::stride, ::stride] & unsaturated
        count = int(fit.sum())
        if count < MIN_FIT_PIXELS:
            raise AlignmentError(
                f"image {item}: only {count} pixels can be fitted (at least {MIN_FIT_PIXELS} needed): the reference "
                f"is usable at {int(covered[source, ::stride, ::stride].sum())} of {values.numel()} sampled pixels "
                f"and sqrt_depth is unsaturated (not 0 or 1) at {int(unsaturated.sum())}; give a reference with "
                "more valid pixels (less sky / masked / zero confidence)")
        scale, shift, fraction = robust_sqrt_affine_fit(values[fit], roots[source, ::stride, ::stride][fit],
                                                        root_weights[source, ::stride, ::stride][fit])
        if scale <= 0:
            raise AlignmentError(
                f"image {item}: the reference gets nearer where sqrt_depth gets farther (fitted scale {scale:.4g} "
                "<= 0): it has inverted polarity, like disparity or inverse depth (near = bright). Give depth in "
                "metres (near = small values), e.g. Depth Anything 3's or MoGe's depth, not a disparity image")
        scales.append(scale)
        shifts.append(shift)
        fractions.append(fraction)
    scale = torch.tensor(scales, dtype=torch.float64)
    shift = torch.tensor(shifts, dtype=torch.float64)
    depth = representations.sqrt_affine_to_metric(y, scale.to(y.device, torch.float32)[:, None, None],
                                                  shift.to(y.device, torch.float32)[:, None, None])
    return Alignment(depth, scale, shift, torch.tensor(fractions, dtype=torch.float64))
