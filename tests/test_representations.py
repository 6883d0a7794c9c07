"""The task representations shared by nodes, trainer and evaluation, checked against the official rules."""

import numpy as np
import pytest
import torch

from e2p_core import imaging, representations as rep


def test_percentile_matches_numpy():
    values = torch.rand(1001, generator=torch.Generator().manual_seed(0))
    for q in (0, 2, 37.5, 98, 100):
        assert float(rep.percentile(values, q)) == pytest.approx(np.percentile(values.numpy(), q), abs=1e-6)


def test_depth_target_is_sqrt_percentile_normalised_and_decodes_to_metric():
    generator = torch.Generator().manual_seed(1)
    depth = 0.5 + 9.5 * torch.rand(2, 24, 32, generator=generator)
    target = rep.encode_depth(depth)
    assert target.shape == depth.shape and target.min() >= -1 and target.max() <= 1
    for item in range(2):
        root = torch.sqrt(depth[item] + rep.SQRT_EPS).double()
        p2, p98 = np.percentile(root.numpy(), 2), np.percentile(root.numpy(), 98)
        expected = np.clip(((root.numpy() - p2) / (p98 - p2) - 0.5) * 2, -1, 1)
        assert np.allclose(target[item].numpy(), expected, atol=1e-5)
        inside = (expected > -1) & (expected < 1)
        sqrt_space = (target[item] + 1) / 2                     # what decode_depth gives for a perfect prediction
        recovered = rep.sqrt_depth_to_metric(sqrt_space, p2 ** 2, p98 ** 2)
        assert torch.allclose(recovered[torch.from_numpy(inside)], depth[item][torch.from_numpy(inside)], rtol=1e-4)


def test_invalid_pixels_do_not_move_the_percentiles():
    depth = torch.linspace(1, 4, 100).reshape(10, 10)
    valid = torch.ones(10, 10, dtype=torch.bool)
    polluted = depth.clone()
    polluted[0, :5] = 1000.0
    valid[0, :5] = False
    assert torch.equal(rep.encode_depth(polluted, valid)[valid], rep.encode_depth(depth, valid)[valid])
    assert not torch.equal(rep.encode_depth(polluted)[valid], rep.encode_depth(depth, valid)[valid])


def test_decode_depth_is_channel_mean_of_clipped_output():
    decoded = torch.tensor([[[[-2.0, 0.0, 1.0]]]])
    assert float(rep.decode_depth(decoded)) == pytest.approx((0.0 + 0.5 + 1.0) / 3)


def test_metric_and_sqrt_depth_are_inverse():
    y = torch.linspace(0, 1, 11)
    metric = rep.sqrt_depth_to_metric(y, 1.0, 80.0)
    assert metric[0] == pytest.approx(1.0) and metric[-1] == pytest.approx(80.0)
    assert torch.allclose(rep.metric_to_sqrt_depth(metric, 1.0, 80.0), y, atol=1e-6)
    with pytest.raises(ValueError):
        rep.sqrt_depth_to_metric(y, 5.0, 1.0)


def test_disparity_is_bright_near_and_shared_range_is_shared():
    y = torch.stack([torch.linspace(0, 0.5, 5), torch.linspace(0.5, 1, 5)])
    per_image = rep.sqrt_depth_to_disparity(y, 0.5, 10, shared=False)
    assert torch.all(per_image[:, 0] == 1) and torch.all(per_image[:, -1] == 0)
    shared = rep.sqrt_depth_to_disparity(y, 0.5, 10, shared=True)
    assert shared[0, 0] == 1 and shared[1, -1] == 0 and shared[1, 0] < 1


@pytest.mark.parametrize("convention,signs", [("controlnet_bae", (1, 1, 1)), ("opengl_camera", (-1, 1, 1)),
                                              ("directx", (-1, -1, 1))])
def test_normal_conventions_and_flips(convention, signs):
    native = rep.unit_normals(torch.tensor([[0.3, -0.5, 0.8]]))
    converted = rep.convert_normals(native, convention)
    assert torch.allclose(converted, native * torch.tensor(signs, dtype=torch.float32))
    flipped = rep.convert_normals(native, convention, flip_x=True, flip_z=True)
    assert torch.allclose(flipped, converted * torch.tensor([-1.0, 1.0, -1.0]))
    assert torch.allclose(rep.rgb_to_normals(rep.normals_to_rgb(native)), native, atol=1e-6)


def test_marigold_ground_truth_is_x_negated():
    assert torch.equal(rep.marigold_to_native_normals(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.0, 2.0, 3.0]))


@pytest.mark.parametrize("size", [(1, 1), (15, 15), (100, 75), (64, 1000), (768, 512)])
def test_canvas_round_trip_keeps_size_and_aspect(size):
    height, width = size
    canvas = imaging.plan_canvas(height, width, 256, "aspect")
    assert canvas.padded_height % 16 == 0 and canvas.padded_width % 16 == 0
    assert max(canvas.content_height, canvas.content_width) == 256
    ratio_in, ratio_work = width / height, canvas.content_width / canvas.content_height
    assert abs(ratio_work - ratio_in) / ratio_in < 0.05 or min(canvas.content_height, canvas.content_width) < 20
    image = torch.rand(1, height, width, 3)
    on_canvas = imaging.to_canvas(image, canvas)
    assert on_canvas.shape == (1, canvas.padded_height, canvas.padded_width, 3)
    back = imaging.from_canvas(on_canvas, canvas)
    assert back.shape == image.shape


def test_reference_mode_is_a_square_stretch_and_constant_images_survive():
    canvas = imaging.plan_canvas(100, 300, 768, "reference")
    assert (canvas.padded_height, canvas.padded_width) == (768, 768)
    flat = torch.full((1, 100, 300, 3), 0.25)
    assert torch.allclose(imaging.from_canvas(imaging.to_canvas(flat, canvas), canvas), flat)


def test_limits_are_explained():
    with pytest.raises(imaging.ImageSizeError, match="processing_resolution"):
        imaging.plan_canvas(8192, 8192, 0, "aspect")
    thin = imaging.plan_canvas(64, 4096, 768, "aspect")
    assert (thin.content_height, thin.padded_height, thin.padded_width) == (12, 16, 768)
    assert imaging.plan_canvas(64, 4096, 768, "reference").padded_width == 768


def test_non_finite_maps_are_refused_counting_pixels():
    image = torch.rand(2, 4, 5, 3)
    image[0, 1, 1] = float("nan")                  # all three channels of one pixel: one pixel
    image[1, 2, 3, 0], image[1, 2, 3, 2] = float("inf"), float("nan")
    with pytest.raises(ValueError, match=r"^sqrt_depth has 2 NaN or infinite pixels of 40 \(2 NaN, 1 infinite\)"):
        rep.require_finite_map(image, "sqrt_depth")
    mask = torch.zeros(1, 4, 5)
    mask[0, 0, :2] = float("-inf")
    with pytest.raises(ValueError, match=r"^hint_mask has 2 NaN or infinite pixels of 20 \(0 NaN, 2 infinite\)"):
        rep.require_finite_map(mask, "hint_mask")
    rep.require_finite_map(torch.rand(1, 4, 5, 3), "depth")
    rep.require_finite_map(None, "normal_map")      # an optional input left unconnected
