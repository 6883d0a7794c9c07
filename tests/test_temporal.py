"""Temporal alignment of video depth (e2p_core.temporal) on a ray-traced clip with a known answer.

The clip: the example scene seen from a camera trucking sideways (floor and back wall keep their depth at every
pixel, so they are the static region) while the orange sphere moves on its own. The stand-in predictor
(e2p_dev.stand_in) gives every frame E2P's per-frame normalisation of the exact depth with its own random affine
distortion and a little noise, in passes of several frames as ``frames_per_pass`` would. Aligned, the static region
must flicker (frame-to-frame AbsRel) at least 5x less than the raw frames, and a clip that is already consistent
must come back unchanged.
"""

from __future__ import annotations

import pytest
import torch

from e2p_core import metric_alignment, representations, temporal
from e2p_core.tiling import Region
from e2p_dev.stand_in import TruthPredictor, moved_scene, render_truth

WIDTH, HEIGHT, FRAMES = 192, 144, 10
CAMERA_STEP, SUBJECT_STEP = 0.04, 0.06    # metres per frame
NOISE = 0.002
FRAMES_PER_PASS = 4


@pytest.fixture(scope="module")
def clip():
    return [render_truth(moved_scene(WIDTH, HEIGHT, CAMERA_STEP * frame, SUBJECT_STEP * frame))
            for frame in range(FRAMES)]


def predict(clip, predictor: TruthPredictor) -> torch.Tensor:
    """The clip's sqrt depth [T, H, W], predicted FRAMES_PER_PASS frames at a time."""
    passes = []
    for start in range(0, len(clip), FRAMES_PER_PASS):
        predictor.truths = clip[start:start + FRAMES_PER_PASS]
        frames = torch.stack([truth.rgb for truth in predictor.truths])
        passes.append(predictor(frames, Region(0, 0, HEIGHT, WIDTH))[0])
    return torch.cat(passes)


def drifting(clip, noise: float = NOISE, seed: int = 0) -> torch.Tensor:
    return predict(clip, TruthPredictor([], "depth", noise=noise, scale_jitter=0.1, shift_jitter=0.05, seed=seed))


def consistent(clip, noise: float = 0.0) -> torch.Tensor:
    """Every frame in one fixed affine map of sqrt depth (clipped where it leaves [0, 1]), as a model without drift
    would give it."""
    roots = torch.sqrt(torch.stack([truth.depth for truth in clip]).double())
    low, high = float(roots.quantile(0.03)), float(roots.quantile(0.97))
    affine = (1.0 / (high - low), -low / (high - low))
    return predict(clip, TruthPredictor([], "depth", noise=noise, fixed_affine=affine, seed=1))


def flicker(depth: torch.Tensor, raw: torch.Tensor, clip) -> float:
    """Mean frame-to-frame AbsRel over the static region of sqrt depth [T, H, W] turned into metres with one affine
    map for the whole clip (frame 0's least-squares fit to the truth): how much depth that does not move changes.
    Pixels clipped in the raw prediction carry no depth and are left out."""
    truth = torch.stack([frame.depth for frame in clip]).double()
    unclipped = metric_alignment.unclipped(raw)
    root = torch.sqrt(truth[0][unclipped[0]])
    design = torch.stack([root, torch.ones_like(root)], dim=1)
    a, b = torch.linalg.lstsq(design, depth[0].double()[unclipped[0]][:, None]).solution[:, 0].tolist()
    metres = ((depth.double() - b) / a).clamp(min=1e-6) ** 2
    changes = []
    for frame in range(1, len(clip)):
        static = (truth[frame] == truth[frame - 1]) & unclipped[frame] & unclipped[frame - 1]
        changes.append(float(((metres[frame] - metres[frame - 1]).abs() / metres[frame - 1])[static].mean()))
    return sum(changes) / len(changes)


@pytest.mark.parametrize("reference_frames", [1, 3])
def test_aligned_clip_flickers_at_least_five_times_less(clip, reference_frames):
    raw = drifting(clip)
    aligned = temporal.align_frames(raw, reference_frames)
    assert aligned.new_shots == [] and float(aligned.agreement.min()) > 0.5
    before, after = flicker(raw, raw, clip), flicker(aligned.sqrt_depth, raw, clip)
    assert before >= 5 * after, (before, after)
    # what is left is the frames' own noise: the drift is gone
    still = consistent(clip, NOISE)
    assert after <= 1.2 * flicker(still, still, clip), (after, flicker(still, still, clip))
    # a range shared by the whole clip (whole_batch normalisation) removes none of the drift
    shared = representations.normalize_range(raw, shared=True)
    assert flicker(shared, raw, clip) > 0.5 * before


def test_a_consistent_clip_comes_back_unchanged(clip):
    frames = consistent(clip)
    aligned = temporal.align_frames(frames)
    assert float((aligned.sqrt_depth - frames).abs().max()) <= 1e-6
    assert torch.allclose(aligned.scale, torch.ones(FRAMES, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(aligned.shift, torch.zeros(FRAMES, dtype=torch.float64), atol=1e-6)
    assert temporal.align_frames(frames[:1]).sqrt_depth.equal(frames[:1])


def test_a_cut_to_another_shot_starts_a_new_reference(clip):
    raw = drifting(clip)
    cut = FRAMES // 2
    frames = torch.cat([raw[:cut], raw[cut:].flip(-2)])      # the second shot: another view, upside down
    aligned = temporal.align_frames(frames)
    assert aligned.new_shots == [cut]
    # the second shot is aligned as a clip of its own, the first one unaffected by it
    assert aligned.sqrt_depth[cut:].equal(temporal.align_frames(frames[cut:]).sqrt_depth)
    assert aligned.sqrt_depth[:cut].equal(temporal.align_frames(frames[:cut]).sqrt_depth)
    assert flicker(aligned.sqrt_depth[:cut], raw[:cut], clip[:cut]) * 5 <= flicker(raw[:cut], raw[:cut], clip[:cut])


def test_depth_beyond_the_first_frame_keeps_the_clip_in_range(clip):
    """The second frame sees nearer than the first one's clipped 2 %: aligned, it would leave [0, 1], so one scale
    and shift for the whole shot brings it back."""
    roots = torch.sqrt(clip[0].depth.double())
    low, high = float(representations.percentile(roots, 2.0)), float(representations.percentile(roots, 98.0))
    first = TruthPredictor([clip[0]], "depth", noise=0.0, fixed_affine=(1 / (high - low), -low / (high - low)))
    wider = TruthPredictor([clip[0]], "depth", noise=0.0,
                           fixed_affine=(0.8 / (high - low), 0.1 - 0.8 * low / (high - low)))
    whole = Region(0, 0, HEIGHT, WIDTH)
    frames = torch.cat([first(clip[0].rgb[None], whole)[0], wider(clip[0].rgb[None], whole)[0]])
    aligned = temporal.align_frames(frames)
    assert float(aligned.sqrt_depth.min()) == 0.0 and float(aligned.sqrt_depth.max()) <= 1.0
    assert float(aligned.scale[0]) < 1.0                      # the first frame moved too: one map for the shot
    for frame in range(2):
        mapped = (frames[frame].double() * aligned.scale[frame] + aligned.shift[frame]).clamp(0.0, 1.0).float()
        assert torch.allclose(aligned.sqrt_depth[frame], mapped, atol=1e-5)
    both = metric_alignment.unclipped(frames).all(dim=0)
    assert torch.allclose(aligned.sqrt_depth[0][both], aligned.sqrt_depth[1][both], atol=1e-5)


@pytest.mark.parametrize("frames, reference_frames, error, message", [
    (torch.rand(3, 8, 8), 0, ValueError, r"reference_frames must be a whole number of at least 1, got 0"),
    (torch.rand(3, 8, 8), 2.5, ValueError, r"reference_frames must be a whole number"),
    (torch.full((2, 8, 8), float("nan")), 1, metric_alignment.AlignmentError, r"sqrt_depth has 128 NaN"),
    (torch.rand(0, 8, 8), 1, metric_alignment.AlignmentError, r"sqrt_depth is empty"),
    (torch.rand(2, 8, 8, 3), 1, metric_alignment.AlignmentError, r"a batch of maps \[B, H, W\]"),
])
def test_bad_input_is_refused(frames, reference_frames, error, message):
    with pytest.raises(error, match=message):
        temporal.align_frames(frames, reference_frames)
