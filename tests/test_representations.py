"""The task representations shared by nodes, trainer and evaluation, checked against the official rules."""

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

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


def official_gen_points(alpha, num_points=10, radius=20, thres=0.8):
    """The official sampling rule, written out: global NumPy seed 42, choice without replacement, blobs by
    filtering a unit impulse and dividing by the peak, combined with max."""
    ys, xs = np.where(alpha > thres)
    if len(ys) < num_points:
        return np.zeros_like(alpha, dtype=np.float32)
    np.random.seed(42)
    chosen = np.random.choice(len(ys), size=num_points, replace=False)
    out = np.zeros_like(alpha, dtype=np.float32)
    for y, x in zip(ys[chosen], xs[chosen]):
        impulse = np.zeros_like(alpha, dtype=np.float32)
        impulse[y, x] = 1
        blob = gaussian_filter(impulse, sigma=radius)
        out = np.maximum(out, blob / blob.max())
    return out


def test_hint_rasterisation_matches_the_official_rules():
    alpha = np.zeros((96, 128), dtype=np.float32)
    alpha[20:70, 30:100] = 1.0
    alpha[40:45, 50:55] = 0.5
    ours = rep.hint_map_from_region(alpha, sigma=6.0)
    np.testing.assert_allclose(ours, official_gen_points(alpha, radius=6.0), rtol=0, atol=3e-7)  # float32 ulps
    assert ours.max() == pytest.approx(1.0)
    assert np.count_nonzero(ours == 1.0) == 10


def test_too_small_region_gives_an_empty_map():
    alpha = np.zeros((32, 32), dtype=np.float32)
    alpha[0, :5] = 1
    assert not rep.hint_map_from_region(alpha, sigma=3.0).any()


def test_clicks_become_official_discs():
    region = rep.disc_region(np.array([[10, 20]]), 40, 50, radius=5)
    rows, cols = np.ogrid[:40, :50]
    assert np.array_equal(region > 0, (cols - 10) ** 2 + (rows - 20) ** 2 <= 25)


def test_mask_dilation_is_a_disc():
    mask = np.zeros((21, 21), dtype=np.float32)
    mask[10, 10] = 1
    grown = rep.dilate_mask(mask, 3)
    rows, cols = np.ogrid[:21, :21]
    assert np.array_equal(grown > 0, (rows - 10) ** 2 + (cols - 10) ** 2 <= 9)


def test_hint_sizes_scale_with_resolution():
    assert rep.HintScale(768).sigma == 30.0 and rep.HintScale(512).sigma == 20.0
    assert rep.HintScale(384).click_radius == 50.0


@pytest.mark.parametrize("text,coordinates,expected", [
    ("[[10, 20], [30, 5]]", "pixels", [[10, 20], [30, 5]]),
    ('[{"x": 10.7, "y": 20}]', "pixels", [[10, 20]]),
    ("[[1, 1]]", "pixels", [[1, 1]]),                       # a pixel near the corner, not the far corner
    ('{"points": [[0.5, 0.25]]}', "fractions", [[50, 10]]),
    ("[[1, 1], [0, 0]]", "fractions", [[99, 39], [0, 0]]),  # 1.0 is the last pixel, not one past it
    ("", "pixels", []),
])
def test_points_json(text, coordinates, expected):
    assert rep.parse_points(text, 100, 40, coordinates).tolist() == expected


@pytest.mark.parametrize("text,coordinates,message", [
    ("[[10, 20", "pixels", "JSON"), ('"abc"', "pixels", "JSON list"), ("[[1, 2, 3]]", "pixels", "cannot read point"),
    ("[[500, 5]]", "pixels", "outside the 100x40 image"), ('[["a", 1]]', "pixels", "numbers"),
    ("[[NaN, 5]]", "pixels", "finite"), ("[[1e999, 5]]", "pixels", "finite"),
    ("[[10, 20]]", "fractions", r"outside \[0, 1\].*'pixels'"), ("[[0.1, 0.2]]", "inches", "pixels, fractions"),
    ("[" * 100000 + "]" * 100000, "pixels", "nested too deeply"),
])
def test_bad_points_are_explained(text, coordinates, message):
    with pytest.raises(ValueError, match=message):
        rep.parse_points(text, 100, 40, coordinates)


def test_box_units_are_stated_not_guessed():
    assert rep.box_region(rep.parse_box("0, 0, 1, 1", 50, 40), 40, 50).sum() == 1   # one pixel, not the image
    assert rep.parse_box("0, 0, 0.5, 0.5", 50, 40, "fractions") == (0.0, 0.0, 25.0, 20.0)
    assert rep.parse_box("", 50, 40) is None
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        rep.parse_box("0, 0, 10, 10", 50, 40, "fractions")


@pytest.mark.parametrize("text", ["nan, 0, 10, 10", "0, 0, inf, 10", "0, -inf, 10, 10", "0, 0, 1e999, 10"])
def test_non_finite_box_is_explained(text):
    with pytest.raises(ValueError, match="finite numbers"):
        rep.parse_box(text, 50, 40)


def test_box_region_and_zero_area_box():
    region = rep.box_region((10, 5, 20, 15), 40, 50)
    assert region.sum() == 100 and region[5, 10] == 1 and region[15, 20] == 0
    assert rep.box_region((-5.0, -5.0, 1e300, 2.5), 40, 50).sum() == 50 * 3    # clipped to the image
    with pytest.raises(ValueError, match="no area"):
        rep.box_region((10, 5, 10, 15), 40, 50)


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
