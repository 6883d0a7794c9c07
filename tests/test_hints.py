"""Matting hints (e2p_core.hints): the official rasteriser, click discs, brush widening and hint sizes, parsing
points and boxes in stated units."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from e2p_core import hints


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
    ours = hints.hint_map_from_region(alpha, sigma=6.0)
    np.testing.assert_allclose(ours, official_gen_points(alpha, radius=6.0), rtol=0, atol=3e-7)  # float32 ulps
    assert ours.max() == pytest.approx(1.0)
    assert np.count_nonzero(ours == 1.0) == 10


def test_too_small_region_gives_an_empty_map():
    alpha = np.zeros((32, 32), dtype=np.float32)
    alpha[0, :5] = 1
    assert not hints.hint_map_from_region(alpha, sigma=3.0).any()


def test_clicks_become_official_discs():
    region = hints.disc_region(np.array([[10, 20]]), 40, 50, radius=5)
    rows, cols = np.ogrid[:40, :50]
    assert np.array_equal(region > 0, (cols - 10) ** 2 + (rows - 20) ** 2 <= 25)


def test_mask_dilation_is_a_disc():
    mask = np.zeros((21, 21), dtype=np.float32)
    mask[10, 10] = 1
    grown = hints.dilate_mask(mask, 3)
    rows, cols = np.ogrid[:21, :21]
    assert np.array_equal(grown > 0, (rows - 10) ** 2 + (cols - 10) ** 2 <= 9)


def test_hint_sizes_scale_with_resolution():
    assert hints.HintScale(768).sigma == 30.0 and hints.HintScale(512).sigma == 20.0
    assert hints.HintScale(384).click_radius == 50.0


@pytest.mark.parametrize("text,coordinates,expected", [
    ("[[10, 20], [30, 5]]", "pixels", [[10, 20], [30, 5]]),
    ('[{"x": 10.7, "y": 20}]', "pixels", [[10, 20]]),
    ("[[1, 1]]", "pixels", [[1, 1]]),                       # a pixel near the corner, not the far corner
    ('{"points": [[0.5, 0.25]]}', "fractions", [[50, 10]]),
    ("[[1, 1], [0, 0]]", "fractions", [[99, 39], [0, 0]]),  # 1.0 is the last pixel, not one past it
    ("", "pixels", []),
])
def test_points_json(text, coordinates, expected):
    assert hints.parse_points(text, 100, 40, coordinates).tolist() == expected


@pytest.mark.parametrize("text,coordinates,message", [
    ("[[10, 20", "pixels", "JSON"), ('"abc"', "pixels", "JSON list"), ("[[1, 2, 3]]", "pixels", "cannot read point"),
    ("[[500, 5]]", "pixels", "outside the 100x40 image"), ('[["a", 1]]', "pixels", "numbers"),
    ("[[NaN, 5]]", "pixels", "finite"), ("[[1e999, 5]]", "pixels", "finite"),
    ("[[10, 20]]", "fractions", r"outside \[0, 1\].*'pixels'"), ("[[0.1, 0.2]]", "inches", "pixels, fractions"),
    ("[" * 100000 + "]" * 100000, "pixels", "nested too deeply"),
])
def test_bad_points_are_explained(text, coordinates, message):
    with pytest.raises(ValueError, match=message):
        hints.parse_points(text, 100, 40, coordinates)


def test_box_units_are_stated_not_guessed():
    assert hints.box_region(hints.parse_box("0, 0, 1, 1", 50, 40), 40, 50).sum() == 1   # one pixel, not the image
    assert hints.parse_box("0, 0, 0.5, 0.5", 50, 40, "fractions") == (0.0, 0.0, 25.0, 20.0)
    assert hints.parse_box("", 50, 40) is None
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        hints.parse_box("0, 0, 10, 10", 50, 40, "fractions")


@pytest.mark.parametrize("text", ["nan, 0, 10, 10", "0, 0, inf, 10", "0, -inf, 10, 10", "0, 0, 1e999, 10"])
def test_non_finite_box_is_explained(text):
    with pytest.raises(ValueError, match="finite numbers"):
        hints.parse_box(text, 50, 40)


def test_box_region_and_zero_area_box():
    region = hints.box_region((10, 5, 20, 15), 40, 50)
    assert region.sum() == 100 and region[5, 10] == 1 and region[15, 20] == 0
    assert hints.box_region((-5.0, -5.0, 1e300, 2.5), 40, 50).sum() == 50 * 3    # clipped to the image
    with pytest.raises(ValueError, match="no area"):
        hints.box_region((10, 5, 10, 15), 40, 50)


def test_ground_truth_point_map_is_gen_points_at_20px():
    """The one ground-truth rule the official training targets and the official evaluation's point prompt share."""
    alpha = np.zeros((96, 128), dtype=np.float32)
    alpha[10:80, 20:110] = 0.9
    ours = hints.ground_truth_point_map(alpha)
    np.testing.assert_allclose(ours, official_gen_points(alpha, radius=20), rtol=0, atol=3e-7)
    assert np.count_nonzero(ours == 1.0) == 10
