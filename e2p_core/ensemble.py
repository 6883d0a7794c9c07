"""Combining several predictions of one image made with different noise seeds, and how much they disagree.

The one-step prediction depends a little on its noise; N members with N seeds, aligned and combined, give a steadier
result and a per-pixel uncertainty. Depth is affine-invariant (each member may come out with its own scale and
shift in the sqrt space), so members are aligned before the median, as Marigold's ensembling does; here the
alignment is a closed-form least-squares scale/shift of each member onto the running median, repeated until it
settles (Marigold optimises all members' pairwise distances with BFGS instead). Pure torch, no ComfyUI.
"""

from __future__ import annotations

import math

import torch

from . import representations

SEED_RANGE = 2 ** 64
# Member k's seed = seed + k * this odd constant (mod 2^64): distinct for every k below 2^64, and member 0 is the
# node's own seed, so ensemble_size 1 is exactly the single prediction.
MEMBER_SEED_STRIDE = 0x9E3779B97F4A7C15
ALIGNMENT_ITERATIONS = 30
ALIGNMENT_TOLERANCE = 1e-6
# Scales and shifts are fitted on an evenly strided subset of at most about this many pixels (a 4K frame has 8M):
# two numbers per member need far fewer, and the per-pixel median of every iteration is the costly part.
ALIGNMENT_PIXELS = 128 * 128
# The normals' uncertainty (mean angle to the combined direction, degrees) is shown as a MASK divided by this:
# 1.0 = members pointing in opposite directions on average. Which task combines how: e2p_core.tasks.
ANGLE_MASK_FULL_SCALE_DEGREES = 180.0


def member_seed(seed: int, member: int) -> int:
    """Noise seed of ensemble member ``member`` (0-based); member 0 uses ``seed`` itself."""
    return (int(seed) + member * MEMBER_SEED_STRIDE) % SEED_RANGE


def _check_members(members: torch.Tensor, trailing: int) -> None:
    if members.dim() != 3 + trailing or members.shape[0] == 0:
        raise ValueError(f"expected members [N, H, W{', 3' if trailing else ''}] with N >= 1, "
                         f"got shape {tuple(members.shape)}")


def fit_scale_shift(member: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (scale, shift) with scale * member + shift ~ target over all pixels. A constant member cannot be
    scaled meaningfully: it keeps scale 1 and only moves to the target's mean."""
    m, t = member.double().flatten(), target.double().flatten()
    m_mean, t_mean = m.mean(), t.mean()
    variance = ((m - m_mean) ** 2).mean()
    if variance <= 1e-12:
        scale = torch.ones((), dtype=torch.float64)
    else:
        scale = ((m - m_mean) * (t - t_mean)).mean() / variance
    return scale, t_mean - scale * m_mean


def align_depth(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align sqrt-depth members [N, H, W] to each other.

    Each member gets a scale and shift onto the per-pixel median of the aligned members, refitted until no scale or
    shift moves by more than ALIGNMENT_TOLERANCE (fitted on at most about ALIGNMENT_PIXELS evenly strided pixels).
    The common frame is then fixed so that the members' mean scale is 1 and mean shift 0: the result lives in the
    range of a typical member (with identical members, exactly theirs).
    Returns (aligned [N, H, W], scales [N], shifts [N]) with aligned[k] = scales[k] * members[k] + shifts[k].
    """
    _check_members(members, 0)
    count, height, width = members.shape
    stride = max(1, math.ceil(math.sqrt(height * width / ALIGNMENT_PIXELS)))
    values = members[:, ::stride, ::stride].double()
    scales = torch.ones(count, dtype=torch.float64)
    shifts = torch.zeros(count, dtype=torch.float64)
    for _ in range(ALIGNMENT_ITERATIONS):
        aligned = scales[:, None, None] * values + shifts[:, None, None]
        reference = aligned.median(dim=0).values
        fitted = [fit_scale_shift(values[k], reference) for k in range(count)]
        new_scales = torch.stack([scale for scale, _ in fitted])
        new_shifts = torch.stack([shift for _, shift in fitted])
        change = max(float((new_scales - scales).abs().max()), float((new_shifts - shifts).abs().max()))
        scales, shifts = new_scales, new_shifts
        if change < ALIGNMENT_TOLERANCE:
            break
    mean_scale, mean_shift = scales.mean(), shifts.mean()
    scales, shifts = scales / mean_scale, (shifts - mean_shift) / mean_scale
    aligned = scales[:, None, None] * members.double() + shifts[:, None, None]
    return aligned.to(members.dtype), scales, shifts


def median_and_deviation(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel median over dim 0 and the median absolute deviation from it (same units as the values)."""
    median = values.median(dim=0).values
    return median, (values - median).abs().median(dim=0).values


def combine_depth(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sqrt-depth members [N, H, W] in [0, 1] -> (combined [H, W] in [0, 1], median absolute deviation [H, W] of the
    aligned members, in sqrt-depth units). One member is returned unchanged with zero deviation."""
    _check_members(members, 0)
    if members.shape[0] == 1:
        return members[0], torch.zeros_like(members[0])
    aligned, _, _ = align_depth(members)
    combined, deviation = median_and_deviation(aligned)
    return combined.clamp(0.0, 1.0), deviation


def combine_alpha(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha members [N, H, W] -> (per-pixel median, median absolute deviation), both in alpha units. Alpha is
    absolute (0 = background, 1 = subject), so there is nothing to align."""
    _check_members(members, 0)
    if members.shape[0] == 1:
        return members[0], torch.zeros_like(members[0])
    return median_and_deviation(members)


def combine_normals(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-normal members [N, H, W, 3] -> (mean direction renormalised [H, W, 3], mean angle in degrees [H, W]
    between each member and that direction)."""
    _check_members(members, 1)
    if members.shape[0] == 1:
        return members[0], torch.zeros(members.shape[1:3], dtype=members.dtype)
    combined = representations.unit_normals(members.mean(dim=0))
    directions = combined.expand_as(members)
    # atan2(|a x b|, a . b) stays exact near 0 degrees, where arccos of a rounded cosine does not
    sines = torch.linalg.vector_norm(torch.linalg.cross(members, directions, dim=-1), dim=-1)
    cosines = (members * directions).sum(dim=-1)
    return combined, torch.rad2deg(torch.atan2(sines, cosines)).mean(dim=0)
