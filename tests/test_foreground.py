"""Foreground colour estimation on synthetic composites with known foreground F, background B and alpha
(``e2p_dev.synthetic_matte``: a soft-edged subject with hair-like strands over a saturated green, over smoothly
varying saturated colours, and over hard-edged stripes), at 64 x 64, 200 x 150 and 512 x 512.

What is asserted, over the soft pixels (0 < alpha < 1), as mean absolute error per colour channel:

* the colour a compositor gets: the premultiplied estimate alpha * F_hat against alpha * F must be at least 3x closer
  than the image's own colour, alpha * I (what an RGBA of the image's colours composites to over a new background,
  and exactly image x alpha, the foreground without estimation).
  The straight colours (F_hat against F, the image I against F) are held to the same 3x.
* re-compositing the estimate over its estimated background, alpha * F_hat + (1 - alpha) * B_hat, reproduces the
  image within 1/255 on average over the soft pixels.
* over stripes, whose detail under the wide soft edges no method can see, the estimate must still beat the image's
  colour (1.5x, at the two smaller sizes; 512 x 512 measures 2.3x in the benchmark); neither 3x nor the 1/255
  re-composite hold there (docs/matting.md states the measured numbers).

Thresholds are ratios and 8-bit steps with wide margins (the measured ratios are 6x-29x), so they hold at any
thread count; one test checks that the thread count changes nothing beyond float rounding.
"""

from __future__ import annotations

import functools

import pytest
import torch

from e2p_core import foreground as fg
from e2p_core.matte_edges import MatteError
from e2p_dev.synthetic_matte import soft_edge_errors, synthetic_composite

SIZES = [(64, 64), (150, 200), (512, 512)]
EIGHT_BIT_STEP = 1.0 / 255.0
REQUIRED_IMPROVEMENT = 3.0
HARD_CASE_IMPROVEMENT = 1.5


@functools.lru_cache(maxsize=None)
def measured(height: int, width: int, background: str):
    composite = synthetic_composite(height, width, background)
    estimate = fg.estimate_foreground(composite.image[None], composite.alpha[None])
    return composite, estimate, soft_edge_errors(composite, estimate.foreground[0], estimate.background[0])


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("background", ["flat", "smooth"])
def test_estimate_is_three_times_closer_than_the_image_colour(height, width, background):
    errors = measured(height, width, background)[2]
    premultiplied = errors["premultiplied_original"] / errors["premultiplied_estimated"]
    straight = errors["straight_original"] / errors["straight_estimated"]
    assert premultiplied >= REQUIRED_IMPROVEMENT, errors
    assert straight >= REQUIRED_IMPROVEMENT, errors


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("background", ["flat", "smooth"])
def test_recompositing_reproduces_the_image(height, width, background):
    errors = measured(height, width, background)[2]
    assert errors["recomposite"] <= EIGHT_BIT_STEP, errors


@pytest.mark.parametrize("height,width", SIZES[:2])
def test_background_detail_under_soft_edges_still_beats_the_image_colour(height, width):
    errors = measured(height, width, "stripes")[2]
    assert errors["premultiplied_original"] / errors["premultiplied_estimated"] >= HARD_CASE_IMPROVEMENT, errors


def test_definite_pixels_keep_the_image():
    composite, estimate, _ = measured(150, 200, "smooth")
    opaque, transparent = composite.alpha == 1, composite.alpha == 0
    assert opaque.any() and transparent.any()
    assert torch.equal(estimate.foreground[0][opaque], composite.image[opaque])
    assert torch.equal(estimate.background[0][transparent], composite.image[transparent])
    for layer in (estimate.foreground, estimate.background):
        assert layer.shape == (1, 150, 200, 3) and layer.dtype == torch.float32
        assert bool(torch.isfinite(layer).all()) and layer.min() >= 0 and layer.max() <= 1


def test_original_straight_reproduces_the_earlier_outputs_bit_for_bit():
    composite = synthetic_composite(40, 50, "flat")
    image = torch.cat([composite.image[None] * 1.1 - 0.05, torch.ones(1, 40, 50, 1)], dim=-1)   # RGBA, beyond [0, 1]
    alpha = composite.alpha[None]
    rgba, foreground = fg.matting_outputs(image, alpha, "original", "straight")
    rgb = image[..., :3].float().clamp(0.0, 1.0)
    assert torch.equal(rgba, torch.cat([rgb, alpha[..., None]], dim=-1))
    assert torch.equal(foreground, rgb * alpha[..., None])


def test_alpha_modes():
    composite, estimate, _ = measured(64, 64, "flat")
    image, alpha = composite.image[None], composite.alpha[None]
    straight, over_black = fg.matting_outputs(image, alpha, "estimated", "straight")
    premultiplied, over_black_again = fg.matting_outputs(image, alpha, "estimated", "premultiplied")
    assert torch.equal(straight[..., :3], estimate.foreground)
    assert torch.equal(premultiplied[..., :3], estimate.foreground * alpha[..., None])
    assert torch.equal(over_black, premultiplied[..., :3]) and torch.equal(over_black_again, over_black)
    assert torch.equal(straight[..., 3], alpha) and torch.equal(premultiplied[..., 3], alpha)
    assert set(fg.FOREGROUND_COLOURS) == {"estimated", "original"} and set(fg.ALPHA_MODES) == {"straight",
                                                                                              "premultiplied"}


def test_batch_images_are_estimated_independently():
    first, second = synthetic_composite(48, 64, "flat"), synthetic_composite(48, 64, "smooth", seed=3)
    batch = fg.estimate_foreground(torch.stack([first.image, second.image]), torch.stack([first.alpha, second.alpha]))
    alone = fg.estimate_foreground(second.image[None], second.alpha[None])
    assert torch.allclose(batch.foreground[1], alone.foreground[0], atol=1e-6)


def test_thread_count_changes_only_rounding():
    composite = synthetic_composite(64, 64, "smooth")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = fg.estimate_foreground(composite.image[None], composite.alpha[None]).foreground
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(measured(64, 64, "smooth")[1].foreground, single, atol=1e-4)


@pytest.mark.parametrize("height,width", [(1, 1), (1, 7), (5, 1), (2, 2)])
def test_tiny_images(height, width):
    generator = torch.Generator().manual_seed(height * 10 + width)
    image = torch.rand(1, height, width, 3, generator=generator)
    alpha = torch.rand(1, height, width, generator=generator)
    estimate = fg.estimate_foreground(image, alpha)
    assert estimate.foreground.shape == image.shape and bool(torch.isfinite(estimate.foreground).all())
    if height * width == 1:
        assert torch.equal(estimate.foreground, image) and torch.equal(estimate.background, image)


def test_hard_alpha_keeps_opaque_colour():
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    alpha = torch.zeros(1, 32, 32)
    alpha[:, 8:24, 8:24] = 1.0
    estimate = fg.estimate_foreground(image, alpha)
    inside = alpha[0] == 1
    assert torch.equal(estimate.foreground[0][inside], image[0][inside])


@pytest.mark.parametrize("image,alpha,message", [
    (torch.rand(1, 8, 8, 3), torch.rand(1, 8, 9), "at the image's size"),
    (torch.rand(2, 8, 8, 3), torch.rand(3, 8, 8), "one matte per image"),
    (torch.rand(8, 8, 3), torch.rand(1, 8, 8), "ComfyUI IMAGE"),
    (torch.rand(1, 8, 8, 2), torch.rand(1, 8, 8), "ComfyUI IMAGE"),
    (torch.full((1, 8, 8, 3), float("nan")), torch.rand(1, 8, 8), "the image has 192 NaN"),
    (torch.rand(1, 8, 8, 3), torch.full((1, 8, 8), float("inf")), "alpha has 64 NaN or infinite"),
    (torch.rand(1, 8, 8, 3), torch.rand(1, 1, 8, 8), "batch of masks [B, H, W]"),
])
def test_bad_inputs_get_clear_errors(image, alpha, message):
    with pytest.raises(MatteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        fg.estimate_foreground(image, alpha)


def test_unknown_modes_are_named():
    image, alpha = torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4)
    with pytest.raises(MatteError, match="unknown foreground colour 'clean'; use one of estimated, original"):
        fg.matting_outputs(image, alpha, "clean")
    with pytest.raises(MatteError, match="unknown alpha mode 'linear'; use one of straight, premultiplied"):
        fg.matting_outputs(image, alpha, "estimated", "linear")
