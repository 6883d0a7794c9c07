"""Video depth that does not flicker: each frame's sqrt depth aligned to the frames before it.

E2PDepth predicts every frame on its own, and every prediction is affine-invariant: normalised to its own nearest
and farthest 2 %, so a frame's scale and shift in sqrt space move whenever the content at the ends of its range
moves (a near object entering, the camera turning). That drift is most of a clip's flicker; a range shared by the
whole batch (``whole_batch`` normalisation) removes only what that normalisation adds.

Alignment runs after prediction, over the whole clip, so it is the same whatever ``frames_per_pass`` the frames were
predicted with. Frame by frame, a robust scale + shift (``metric_alignment.fit_relative_depth``) maps the frame onto
a running reference: the previous aligned frame, or an exponential average of the last few (``reference_frames``).
The fit weighs pixels by how well they agree, so moving objects and disoccluded background, which disagree, get no
weight, and only the static scene decides. Pixels clipped at 0 or 1 carry no depth and take no part; the reference
keeps, per pixel, the last aligned depth it had. A frame that agrees with too little of the reference (a cut to
another shot) starts a new reference unchanged. Frames that already agree come back exactly as they were.

Aligned frames share the range of their shot's first frame; depth beyond it (something nearer than anything in that
frame) would leave [0, 1], so then one scale and shift for the whole shot brings it back, the same for its frames.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import metric_alignment

DEFAULT_REFERENCE_FRAMES = 1     # the previous aligned frame
# Share of the fitted pixels a frame must agree with (within the robust fit's cut-off) to be aligned; below it the
# frame shows another shot and starts a new reference.
MIN_AGREEMENT = 0.3


class TemporalAlignment(NamedTuple):
    sqrt_depth: torch.Tensor      # [T, H, W] in [0, 1], the frames of a shot in one range
    scale: torch.Tensor           # [T] float64: aligned = scale * input + shift
    shift: torch.Tensor           # [T] float64
    agreement: torch.Tensor       # [T] float64: share of the fitted pixels that agreed (1 for a reference start)
    new_shots: list[int]          # frames (after the first) that agreed too little and started a new reference


def align_frames(sqrt_depth: torch.Tensor, reference_frames: int = DEFAULT_REFERENCE_FRAMES) -> TemporalAlignment:
    """Align a clip's sqrt depth [T, H, W] (E2PDepth's output, frames in order) frame by frame.

    ``reference_frames`` k: the reference is an exponential average of the aligned frames with the span of k frames
    (weight 2 / (k + 1) for the newest); 1 = the previous aligned frame. A longer span steadies the reference against
    noise and slow drift, a shorter one follows faster camera moves.
    """
    if not isinstance(reference_frames, int) or reference_frames < 1:
        raise ValueError(f"reference_frames must be a whole number of at least 1, got {reference_frames!r}")
    frames = metric_alignment.checked_sqrt_depth(sqrt_depth)
    count = frames.shape[0]
    newest_weight = 2.0 / (reference_frames + 1)
    aligned = frames.clone()
    scales = torch.ones(count, dtype=torch.float64)
    shifts = torch.zeros(count, dtype=torch.float64)
    agreement = torch.ones(count, dtype=torch.float64)
    new_shots = []
    reference = frames[0].clone()
    usable = metric_alignment.unclipped(frames[0])
    for index in range(1, count):
        frame = frames[index]
        own = metric_alignment.unclipped(frame)
        fit = metric_alignment.fit_relative_depth(frame, reference, usable)
        if fit is None or fit[2] < MIN_AGREEMENT:
            new_shots.append(index)
            reference, usable = frame.clone(), own
            continue
        scales[index], shifts[index], agreement[index] = fit
        aligned[index] = (frame.double() * scales[index] + shifts[index]).float()
        blended = torch.where(usable, reference + newest_weight * (aligned[index] - reference), aligned[index])
        reference = torch.where(own, blended, reference)
        usable = usable | own
    for start, end in zip([0, *new_shots], [*new_shots, count]):
        shot = slice(start, end)
        low, high = min(float(aligned[shot].min()), 0.0), max(float(aligned[shot].max()), 1.0)
        if low < 0.0 or high > 1.0:
            aligned[shot] = ((aligned[shot].double() - low) / (high - low)).float()
            scales[shot], shifts[shot] = scales[shot] / (high - low), (shifts[shot] - low) / (high - low)
    return TemporalAlignment(aligned.clamp(0.0, 1.0), scales, shifts, agreement, new_shots)
