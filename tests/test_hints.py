"""Matting hints (e2p_core.hints): the official rasteriser, click discs, brush widening and hint sizes, parsing
points and boxes in stated units."""

import numpy as np
import pytest
import torch
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


# --- hints that would reach the model as no hint, or not as meant ---------------------------------------------


def test_a_region_smaller_than_num_points_gets_a_point_on_each_pixel():
    """The official sampler draws num_points without replacement and so drops a smaller region (the ground truth
    keeps that rule, above); a user's small box or stroke still marks its pixels."""
    region = np.zeros((32, 40), dtype=np.float32)
    region[5, 7] = region[20, 30] = region[25, 3] = 1.0
    point_map = hints.build_hint_map(32, 40, region=region, num_points=10)
    peaks = np.argwhere(point_map == 1.0)
    assert sorted(map(tuple, peaks)) == [(5, 7), (20, 30), (25, 3)]
    assert not hints.hint_map_from_region(region, sigma=3.0).any()      # the official rule, unchanged


def test_one_pixel_box_marks_that_pixel_at_the_working_size():
    canvas = hints.imaging.plan_canvas(40, 50, 64)
    point_map = hints.hint_map_on_canvas(hints.MattingHints(boxes=(hints.parse_box("0, 0, 1, 1", 50, 40),)), canvas, 10)
    assert point_map.max() == 1.0 and point_map[0, 0] == 1.0
    assert np.count_nonzero(point_map == 1.0) == 1


def test_a_painted_area_lost_in_the_downscale_is_refused():
    """A 16:1 image at processing_resolution 64 is read every 100th pixel; a dot in the corner, widened by 40 px,
    falls between those samples."""
    canvas = hints.imaging.plan_canvas(400, 6400, 64)
    mask = np.zeros((400, 6400), dtype=np.float32)
    mask[0, 0] = 1.0
    with pytest.raises(ValueError, match="mark no pixel at the 64x4 working size.*Paint a larger area"):
        hints.hint_map_on_canvas(hints.MattingHints(mask=mask), canvas, 10)
    mask[50, 50] = 1.0
    assert hints.hint_map_on_canvas(hints.MattingHints(mask=mask), canvas, 10).max() == 1.0


def image(height=40, width=50, batch=1):
    return torch.zeros(batch, height, width, 3)


@pytest.mark.parametrize("points,box,coordinates,expected", [
    ("[[0.5, 0.5]]", "", "pixels", ["the point lies in [0, 1]"]),
    ("[[0, 0], [1, 0.25]]", "0, 0, 1, 1", "pixels", ["all 2 points lie in [0, 1]", "the box lies in [0, 1]"]),
    ("[[0, 0], [2, 1]]", "0, 0, 1, 2", "pixels", []),
    ("[[0.5, 0.5]]", "0, 0, 1, 1", "fractions", []),
])
def test_pixel_coordinates_that_look_like_fractions_are_warned_about(points, box, coordinates, expected, caplog):
    with caplog.at_level("WARNING", logger="edit2perceive"):
        user_hints = hints.matting_hints(image(), points, box, coordinates)
    assert [w[:len(e)] for w, e in zip(user_hints.warnings, expected)] == expected
    assert len(user_hints.warnings) == len(expected)
    for warning in user_hints.warnings:
        assert "set coordinates to 'fractions'" in warning and warning in caplog.text
        assert f"Warning: {warning}" in user_hints.report()


def test_hint_mask_of_another_size_is_scaled_when_the_aspect_ratio_matches():
    mask = torch.zeros(1, 20, 25)
    mask[0, 5:10, 5:10] = 1.0
    user_hints = hints.matting_hints(image(40, 50), hint_mask=mask)
    scaled = user_hints.per_image[0].mask
    assert scaled.shape == (40, 50) and scaled[10:20, 10:20].all() and scaled.sum() == 100
    assert user_hints.warnings == ("hint_mask is 25x20 but the image is 50x40; it was scaled to the image (same "
                                   "aspect ratio). Connect a mask of the image's size to be sure it lines up",)
    # A larger mask shrinks without losing a thin stroke; rounded or cut sizes of the same picture (1 px per side)
    # still count as the same aspect ratio.
    stroke = torch.zeros(1, 160, 200)
    stroke[0, 81, 30:170] = 1.0
    shrunk = hints.matting_hints(image(40, 50), hint_mask=stroke).per_image[0]
    assert shrunk.painted and np.array_equal(np.nonzero(shrunk.mask.any(axis=1))[0], [20])
    assert len(hints.matting_hints(image(1080, 1920), hint_mask=torch.ones(1, 287, 513)).warnings) == 1
    assert hints.matting_hints(image(40, 50), hint_mask=torch.ones(1, 40, 50)).warnings == ()


def test_unpainted_mask_of_any_size_is_no_paint_and_no_warning():
    """Load Image gives an all-zero 64x64 mask for an image without alpha, whatever the image's size."""
    user_hints = hints.matting_hints(image(40, 50), "[[10, 10]]", hint_mask=torch.zeros(1, 64, 64))
    assert user_hints.warnings == () and user_hints.per_image[0].mask.shape == (40, 50)
    assert not user_hints.per_image[0].painted
    with pytest.raises(ValueError, match="hint_mask is empty"):
        hints.matting_hints(image(40, 50), hint_mask=torch.zeros(1, 64, 64))


@pytest.mark.parametrize("shape", [(1, 40, 40), (1, 30, 50), (1, 100, 60)])
def test_hint_mask_of_another_aspect_ratio_is_refused(shape):
    with pytest.raises(ValueError, match=rf"hint_mask is {shape[2]}x{shape[1]} but the image is 50x40, another "
                                         "aspect ratio.*Paint the mask on this image"):
        hints.matting_hints(image(40, 50), hint_mask=torch.ones(shape))


def test_a_batch_where_some_masks_are_unpainted_is_refused_without_other_hints():
    masks = torch.zeros(3, 40, 50)
    masks[1, 10:20, 10:20] = 1.0
    with pytest.raises(ValueError, match="empty \\(nothing painted\\) for images 1, 3 of 3"):
        hints.matting_hints(image(batch=3), hint_mask=masks)
    with_box = hints.matting_hints(image(batch=3), box="5, 5, 20, 20", hint_mask=masks)
    assert [item.painted for item in with_box.per_image] == [False, True, False]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_hint_mask_is_refused(bad):
    mask = torch.zeros(1, 40, 50)
    mask[0, 3, 4] = bad
    with pytest.raises(ValueError, match="hint_mask has 1 NaN or infinite pixels of 2000"):
        hints.matting_hints(image(), hint_mask=mask)


def test_report_says_which_hints_the_model_gets():
    assert hints.matting_hints(image()).report() == "No hints: the model mattes the salient object."
    mask = torch.zeros(1, 40, 50)
    mask[0, 1, 1] = 1.0
    report = hints.matting_hints(image(), "[[10, 10], [20, 20]]", "5, 5, 30, 30", hint_mask=mask).report()
    assert report == "Hints: 2 clicks, a box, a painted mask."


def test_box_corners_may_come_in_either_order():
    """Documented: a box is two opposite corners; dragged from the bottom right they give the same box."""
    expected = hints.box_region(hints.parse_box("10, 5, 30, 20", 50, 40), 40, 50)
    for text in ("30, 20, 10, 5", "30, 5, 10, 20", "10, 20, 30, 5"):
        assert np.array_equal(hints.box_region(hints.parse_box(text, 50, 40), 40, 50), expected)
    assert np.array_equal(hints.box_region(hints.parse_box("0.6, 0.5, 0.2, 0.125", 50, 40, "fractions"), 40, 50),
                          expected)


# ComfyUI's own box and point values (BOUNDING_BOX, SAM3 Detect), as core's nodes give them. Written out here,
# so the parser is tested without ComfyUI.
SAM3_POINTS = '[{"x": 12, "y": 30}, {"x": 40, "y": 8}]'           # SAM3 Detect's positive_coords format
SAM3_BBOXES = [[{"x": 4.5, "y": 6.0, "width": 20.25, "height": 10.0, "score": 0.91},
                {"x": 30.0, "y": 20.0, "width": 5.0, "height": 5.0, "score": 0.55}]]   # one frame, two detections


def test_sam3_point_json_is_read_in_pixels():
    assert hints.parse_points(SAM3_POINTS, 50, 40).tolist() == [[12, 30], [40, 8]]


def test_bounding_box_values_become_pixel_corners():
    """{x, y, width, height} is a top-left corner and a size in pixels; each accepted layout gives the same box."""
    widget = {"x": 5, "y": 6, "width": 15, "height": 10}
    expected = [((5.0, 6.0, 20.0, 16.0),)] * 2
    for value in (widget, [widget], [[widget]], [[widget], [widget]]):
        assert hints.bounding_boxes_per_image(value, 2, 50, 40) == expected
    detections = hints.bounding_boxes_per_image(SAM3_BBOXES, 1, 50, 40)
    assert detections == [((4.5, 6.0, 24.75, 16.0), (30.0, 20.0, 35.0, 25.0))]


@pytest.mark.parametrize("unset", [None, [], [[]], {"x": 0, "y": 0, "width": 0, "height": 0},
                                   {"x": 10, "y": 10, "width": 30, "height": 0}])
def test_a_box_of_zero_size_or_none_marks_nothing(unset):
    """The box widget's default (zero size) and a SAM3 Detect that found nothing are no box, not an error."""
    assert hints.bounding_boxes_per_image(unset, 1, 50, 40) is None
    assert hints.matting_hints(image(), bbox=unset).per_image[0].boxes == ()


@pytest.mark.parametrize("value,message", [
    ({"x": 5, "y": 6, "width": 15}, "not a bounding box"),
    ({"x": "a", "y": 6, "width": 15, "height": 2}, "must hold numbers"),
    ({"x": float("nan"), "y": 6, "width": 15, "height": 2}, "finite"),
    ({"x": 5, "y": 6, "width": -15, "height": 2}, "negative width or height"),
    ({"x": 60, "y": 6, "width": 15, "height": 2}, "no area inside the 50x40 image"),
    ([[{"x": 1, "y": 1, "width": 2, "height": 2}]] * 3, "boxes for 3 images but there are 2"),
    ("5, 6, 20, 16", "must be a bounding box or a list"),
])
def test_bad_bounding_box_values_are_explained(value, message):
    with pytest.raises(ValueError, match=message):
        hints.bounding_boxes_per_image(value, 2, 50, 40)


def test_bbox_is_in_pixels_whatever_the_coordinates_say():
    """The box widget and SAM3 give pixels; the coordinates choice is about the typed points and box only."""
    box = {"x": 0.0, "y": 0.0, "width": 1.0, "height": 1.0}
    for coordinates in hints.COORDINATE_UNITS:
        assert hints.matting_hints(image(), bbox=box, coordinates=coordinates).per_image[0].boxes == \
            ((0.0, 0.0, 1.0, 1.0),)


def test_bbox_and_box_text_together_are_refused_and_a_frame_without_detections_is_warned_about():
    with pytest.raises(ValueError, match="both the box text and the bbox input give a box"):
        hints.matting_hints(image(), box="1, 1, 5, 5", bbox={"x": 1, "y": 1, "width": 4, "height": 4})
    # The widget left at zero size does not clash with a typed box (saved workflows keep their box text).
    typed = hints.matting_hints(image(), box="1, 1, 5, 5", bbox={"x": 0, "y": 0, "width": 0, "height": 0})
    assert typed.per_image[0].boxes == ((1.0, 1.0, 5.0, 5.0),)
    per_frame = hints.matting_hints(image(batch=3), points="[[10, 10]]", bbox=[SAM3_BBOXES[0], [], SAM3_BBOXES[0]])
    assert [len(item.boxes) for item in per_frame.per_image] == [2, 0, 2]
    assert per_frame.warnings == ("bbox has no box for image 2 of 3 (nothing detected there?), so those get only "
                                  "the other hints",)
    assert per_frame.report().endswith("Hints: 1 click, 2 boxes.")


def test_bbox_marks_the_same_region_as_the_same_typed_box():
    canvas = hints.imaging.plan_canvas(40, 50, 64)
    typed = hints.matting_hints(image(), box="4.5, 6, 24.75, 16").per_image[0]
    wired = hints.matting_hints(image(), bbox=SAM3_BBOXES[0][0]).per_image[0]
    assert np.array_equal(hints.hint_map_on_canvas(typed, canvas, 10), hints.hint_map_on_canvas(wired, canvas, 10))
