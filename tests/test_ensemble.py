"""Ensemble combination (e2p_core.ensemble): alignment, combination and uncertainty on synthetic members."""

import math

import pytest
import torch

from e2p_dev import tiny_models as tm
from e2p_core import ensemble
from e2p_core.tasks import task_spec


def smooth_depth(height=24, width=32, seed=0):
    """A sqrt-depth-like map in [0.1, 0.9] with structure (a ramp plus random bumps)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.1, 0.9, height)[:, None].expand(height, width)
    bumps = 0.1 * torch.rand(height, width, generator=g)
    return (ramp + bumps).clamp(0.1, 0.9)


def test_member_zero_uses_the_seed_and_members_differ():
    assert ensemble.member_seed(42, 0) == 42
    seeds = [ensemble.member_seed(42, k) for k in range(64)]
    assert len(set(seeds)) == 64 and all(0 <= s < 2 ** 64 for s in seeds)
    assert ensemble.member_seed(2 ** 64 - 1, 3) < 2 ** 64


@pytest.mark.parametrize("task,shape", [("depth", (1, 6, 8)), ("matting", (1, 6, 8)), ("normal", (1, 6, 8, 3))])
def test_one_member_is_returned_unchanged(task, shape):
    member = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    combined, uncertainty = task_spec(task).combine(member)
    assert torch.equal(combined, member[0])
    assert uncertainty.shape == shape[1:3] and not uncertainty.any()


def test_depth_members_with_known_scale_and_shift_are_recovered():
    depth = smooth_depth()
    scales = torch.tensor([1.0, 0.5, 1.6, 0.8])
    shifts = torch.tensor([0.0, 0.3, -0.2, 0.15])
    members = scales[:, None, None] * depth + shifts[:, None, None]
    aligned, fitted_scales, fitted_shifts = ensemble.align_depth(members)
    # each member is brought back to one common frame: fitted_scale * true_scale is the same for all members, and
    # the residual offset too; the common frame has mean scale 1 and mean shift 0 over the members
    common_scale = fitted_scales * scales.double()
    common_shift = fitted_scales * shifts.double() + fitted_shifts
    assert float((common_scale / common_scale[0] - 1).abs().max()) < 1e-6
    assert float((common_shift - common_shift[0]).abs().max()) < 1e-6
    assert math.isclose(float(fitted_scales.mean()), 1.0, abs_tol=1e-12)
    assert math.isclose(float(fitted_shifts.mean()), 0.0, abs_tol=1e-12)
    assert tm.scaled_error(aligned, aligned[0].expand_as(aligned)) < 1e-5
    combined, uncertainty = ensemble.combine_depth(members)
    expected = (common_scale[0] * depth.double() + common_shift[0]).float()
    assert tm.scaled_error(combined, expected) < 1e-5
    assert float(uncertainty.max()) < 1e-5 * float(combined.abs().max())


def test_depth_combination_is_the_median_of_the_aligned_members():
    depth = smooth_depth()
    g = torch.Generator().manual_seed(5)
    noisy = depth + 0.05 * torch.randn(5, *depth.shape, generator=g)
    members = torch.tensor([1.0, 0.7, 1.3, 0.9, 1.1])[:, None, None] * noisy + \
        torch.tensor([0.0, 0.1, -0.1, 0.05, 0.0])[:, None, None]
    aligned, _, _ = ensemble.align_depth(members)
    combined, uncertainty = ensemble.combine_depth(members)
    assert torch.equal(combined, aligned.median(dim=0).values.clamp(0, 1))
    assert torch.allclose(uncertainty, (aligned - aligned.median(dim=0).values).abs().median(dim=0).values)
    # the aligned median is closer to the true depth (up to an affine map) than a single member is
    def affine_residual(values):
        design = torch.stack([values.flatten(), torch.ones(values.numel())], dim=1).double()
        solution = torch.linalg.lstsq(design, depth.flatten().double()[:, None]).solution
        return float((design @ solution - depth.flatten().double()[:, None]).abs().mean())
    assert affine_residual(combined) < 0.7 * affine_residual(members[0])
    assert 0.01 < float(uncertainty.mean()) < 0.1


@pytest.mark.parametrize("task", ["depth", "matting"])
def test_agreeing_members_have_zero_uncertainty(task):
    member = smooth_depth()
    combined, uncertainty = task_spec(task).combine(member.expand(4, *member.shape).clone())
    assert not uncertainty.any()
    assert torch.equal(combined, member)


def test_agreeing_normals_have_zero_angle():
    g = torch.Generator().manual_seed(2)
    normals = torch.nn.functional.normalize(torch.randn(6, 8, 3, generator=g), dim=-1)
    combined, angle = ensemble.combine_normals(normals.expand(3, *normals.shape).clone())
    assert float(angle.max()) < 1e-4
    assert tm.scaled_error(combined, normals) < 1e-6


def test_alpha_is_median_with_median_absolute_deviation():
    members = torch.tensor([0.2, 0.5, 0.9])[:, None, None].expand(3, 2, 2).clone()
    combined, deviation = ensemble.combine_alpha(members)
    assert torch.allclose(combined, torch.full((2, 2), 0.5))
    assert torch.allclose(deviation, torch.full((2, 2), 0.3))


def test_normals_mean_direction_and_angle_in_degrees():
    tilt = math.radians(20.0)
    left = torch.tensor([math.sin(tilt), 0.0, math.cos(tilt)])
    right = torch.tensor([-math.sin(tilt), 0.0, math.cos(tilt)])
    members = torch.stack([left, right])[:, None, None, :].expand(2, 3, 4, 3).clone()
    combined, angle = ensemble.combine_normals(members)
    assert torch.allclose(combined, torch.tensor([0.0, 0.0, 1.0]).expand(3, 4, 3), atol=1e-6)
    assert torch.allclose(angle, torch.full((3, 4), 20.0), atol=1e-4)
    mask = task_spec("normal").uncertainty_mask(angle)
    assert torch.allclose(mask, torch.full((3, 4), 20.0 / 180.0), atol=1e-6)


def test_bad_member_shapes_are_refused():
    with pytest.raises(ValueError, match="members"):
        ensemble.combine_depth(torch.zeros(0, 4, 4))
    with pytest.raises(ValueError, match="members"):
        ensemble.combine_normals(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="unknown task"):
        task_spec("segmentation").combine(torch.zeros(2, 4, 4))


def test_large_depth_members_are_aligned_on_a_pixel_subset(monkeypatch):
    monkeypatch.setattr(ensemble, "ALIGNMENT_PIXELS", 64)
    depth = smooth_depth(40, 50)
    members = torch.stack([depth, 0.5 * depth + 0.2, 1.4 * depth - 0.1])
    aligned, scales, shifts = ensemble.align_depth(members)
    assert tm.scaled_error(aligned, aligned[0].expand_as(aligned)) < 1e-5
    assert aligned.shape == members.shape
