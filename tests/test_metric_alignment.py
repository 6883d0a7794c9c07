"""Aligning E2P's sqrt depth to a metric reference, on the ray-traced example scene with exact depth.

The sqrt depth is what E2PDepth returns for a perfect model (the training target's percentile normalisation, so 2 %
saturates at each end) plus Gaussian noise; the reference is what Depth Anything 3 gives: the truth at a quarter of
the resolution, blurred, with unflagged gross outliers, a wrong region its confidence marks, sky and invalid pixels.
The recovered depth must be as good as the noisy depth mapped with the true affine parameters (within 1.5x its
AbsRel), which a plain least-squares fit is not.
"""

from __future__ import annotations

import math

import pytest
import torch

from e2p_core import metric_alignment as ma
from e2p_core import representations as rep
from e2p_dev.metric_scene import (HEIGHT, NOISE, OUTLIER_SHARE, REFERENCE_FACTOR, WIDTH, absolute_relative_error,
                                  da3_like_reference, e2p_like, scene_depth)


@pytest.fixture(scope="module")
def truth() -> torch.Tensor:
    return scene_depth(WIDTH, HEIGHT)


def test_recovers_metric_depth_from_a_coarse_blurred_reference_with_outliers(truth):
    clean, noisy, true_scale, true_shift = e2p_like(truth, NOISE, seed=0)
    reference, confidence, sky = da3_like_reference(truth, seed=1)
    alignment = ma.align_to_reference(noisy, reference, confidence, valid=sky < 0.5)

    assert alignment.metric_depth.shape == (1, HEIGHT, WIDTH) and alignment.metric_depth.dtype == torch.float32
    # Where E2P's map carries depth (not saturated); the saturated 4 % are clipped alike by any s, t.
    informative = (clean > 0) & (clean < 1)
    injected = absolute_relative_error(rep.sqrt_affine_to_metric(noisy, true_scale, true_shift), truth, informative)
    recovered = absolute_relative_error(alignment.metric_depth[0], truth, informative)
    assert recovered <= 1.5 * injected, (recovered, injected)
    assert float(alignment.scale[0]) == pytest.approx(true_scale, rel=0.03)
    assert float(alignment.shift[0]) == pytest.approx(true_shift, rel=0.03)
    # The unflagged outliers (and the pixels the blur mixed across edges) are out, most of the rest is in.
    assert 0.6 < float(alignment.inlier_fraction[0]) < 1.0 - OUTLIER_SHARE / 2

    usable = torch.isfinite(reference) & (reference > 0) & (sky < 0.5)
    roots, weights, covered = ma._resample(reference[None], usable[None], confidence[None], HEIGHT, WIDTH)
    fitted = covered[0] & informative
    least_squares = ma._weighted_line(noisy.double()[fitted], roots[0][fitted], weights[0][fitted])
    plain = absolute_relative_error(rep.sqrt_affine_to_metric(noisy, *least_squares), truth, informative)
    assert plain > 1.5 * injected, "the reference's outliers must defeat a plain fit, or this test proves nothing"


def test_each_image_gets_its_own_fit_from_a_finer_reference():
    truth_fine = scene_depth(WIDTH, HEIGHT)
    truth = scene_depth(WIDTH // 2, HEIGHT // 2)
    clean, _, scale, shift = e2p_like(truth, 0.0, seed=0)
    squeezed = 0.2 + 0.6 * clean                     # the same view with another affine map: s / 0.6, t - s / 3
    alignment = ma.align_to_reference(torch.stack([clean, squeezed]), truth_fine[None])
    assert alignment.scale.tolist() == pytest.approx([scale, scale / 0.6], rel=0.01)
    assert alignment.shift.tolist() == pytest.approx([shift, shift - scale / 3.0], rel=0.01)
    informative = (clean > 0) & (clean < 1)
    for depth in alignment.metric_depth:
        assert absolute_relative_error(depth, truth, informative) < 0.01


def test_known_near_far_is_sqrt_decodes_formula():
    y = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3))
    alignment = ma.align_to_near_far(y, 0.5, 10.0)
    assert torch.equal(alignment.metric_depth, rep.sqrt_depth_to_metric(y, 0.5, 10.0))
    assert alignment.scale.tolist() == [math.sqrt(10.0) - math.sqrt(0.5)] * 2
    assert alignment.shift.tolist() == [math.sqrt(0.5)] * 2 and alignment.inlier_fraction is None
    with pytest.raises(ma.AlignmentError, match="need 0 <= near < far"):
        ma.align_to_near_far(y, 10.0, 0.5)


def test_negative_roots_give_no_depth_rather_than_a_mirrored_one():
    depth = rep.sqrt_affine_to_metric(torch.tensor([0.0, 0.25, 0.5, 1.0]), 2.0, -1.0)
    assert depth.tolist() == [0.0, 0.0, 0.0, 1.0]


def bad_case(name: str, truth: torch.Tensor) -> dict:
    _, y, _, _ = e2p_like(truth, 0.0, seed=0)
    reference = truth[::REFERENCE_FACTOR, ::REFERENCE_FACTOR].clone()
    few = torch.full_like(reference, float("nan"))
    few[5, :10] = reference[5, :10]
    cases = {
        "nan": dict(reference=torch.full_like(reference, float("nan"))),
        "zero": dict(reference=torch.zeros_like(reference)),
        "all sky": dict(reference=reference, valid=torch.zeros_like(reference, dtype=torch.bool)),
        "too few": dict(reference=few),
        "disparity": dict(reference=1.0 / reference),
        "flat depth": dict(reference=reference, sqrt_depth=torch.full_like(y, 0.5)),
        "aspect": dict(reference=reference[:, : reference.shape[1] // 2]),
        "batch": dict(reference=reference.expand(3, -1, -1), sqrt_depth=y.expand(2, -1, -1)),
        "confidence": dict(reference=reference, confidence=-torch.ones_like(reference)),
        "sky probability": dict(reference=reference, valid=torch.zeros_like(reference)),
        "nan depth": dict(reference=reference, sqrt_depth=torch.where(y > 0.9, float("nan"), y)),
    }
    return {"sqrt_depth": y, **cases[name]}


@pytest.mark.parametrize("name, message", [
    ("nan", r"reference 0 has no usable pixel \(1200 NaN/inf of 1200\)"),
    ("zero", r"reference 0 has no usable pixel \(1200 zero or negative of 1200\)"),
    ("all sky", r"has no usable pixel \(1200 masked out \(sky / invalid\) of 1200\)"),
    ("too few", r"only \d+ pixels can be fitted \(at least 64 needed\)"),
    ("disparity", r"inverted polarity, like disparity or inverse depth"),
    ("flat depth", r"sqrt_depth is \(almost\) constant"),
    ("aspect", r"different aspect ratios"),
    ("batch", r"the reference has 3 images and sqrt_depth 2"),
    ("confidence", r"confidences are weights >= 0"),
    ("sky probability", r"validity mask must be boolean \(True = usable\), got torch.float64"),
    ("nan depth", r"sqrt_depth has \d+ NaN or infinite values"),
])
def test_bad_inputs_are_refused_with_what_to_do(truth, name, message):
    with pytest.raises(ma.AlignmentError, match=message):
        ma.align_to_reference(**bad_case(name, truth))
