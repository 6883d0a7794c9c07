"""Nearest resizes pick the source pixels Pillow's ``NEAREST`` picks (the official app resizes with it): the
prediction back to the input size in ``reference`` mode, and the widened painted mask to the working size."""

import numpy as np
import pytest
import torch
from PIL import Image

from e2p_core import hints, imaging


def pillow_indices(source: int, target: int, axis: int) -> np.ndarray:
    """Pillow's own choice: resize an image whose pixel values are their source index (exact in mode F)."""
    values = np.arange(source, dtype=np.float32)
    if axis == 1:
        image, size = Image.fromarray(values[None, :]), (target, 1)
    else:
        image, size = Image.fromarray(values[:, None]), (1, target)
    return np.frombuffer(image.resize(size, Image.Resampling.NEAREST).tobytes(), dtype=np.float32).astype(np.int64)


def test_every_size_pair_up_to_300_matches_pillow():
    """90,000 size pairs, one Pillow call each (a few seconds)."""
    mismatched = [(s, t) for s in range(1, 301) for t in range(1, 301)
                  if not np.array_equal(imaging.pillow_nearest_indices(s, t), pillow_indices(s, t, axis=1))]
    assert mismatched == []


@pytest.mark.parametrize("source, target", [(1920, 768), (1080, 768), (4032, 768), (3024, 768), (768, 1920),
                                            (768, 1080), (768, 4032), (768, 3024), (768, 1023), (1023, 768)])
def test_photo_sizes_match_pillow_on_both_axes(source, target):
    expected = imaging.pillow_nearest_indices(source, target)
    assert np.array_equal(expected, pillow_indices(source, target, axis=1))
    assert np.array_equal(expected, pillow_indices(source, target, axis=0))


def test_differs_from_torch_nearest_exact_where_pillow_does():
    """The case the issue measured: 48 rows / 80 columns from 64; torch takes the next pixel on exact halves."""
    for source, target in ((64, 48), (64, 80), (768, 1920)):
        torch_choice = torch.nn.functional.interpolate(torch.arange(source, dtype=torch.float32)[None, None],
                                                       size=target, mode="nearest-exact")[0, 0].long().numpy()
        ours = imaging.pillow_nearest_indices(source, target)
        assert np.array_equal(ours, pillow_indices(source, target, axis=1))
        assert (ours != torch_choice).any()


@pytest.mark.parametrize("height, width, resolution", [(48, 80, 64), (1080, 1920, 768), (97, 211, 112)])
def test_reference_resize_back_is_pillow_nearest_on_float_data(height, width, resolution):
    canvas = imaging.plan_canvas(height, width, resolution, "reference")
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(1, canvas.padded_height, canvas.padded_width, 3, generator=generator)
    ours = imaging.from_canvas(prediction, canvas)[0].numpy()
    for channel in range(3):
        expected = Image.fromarray(prediction[0, :, :, channel].numpy()).resize((width, height),
                                                                                 Image.Resampling.NEAREST)
        assert np.array_equal(ours[..., channel], np.asarray(expected))   # same pixels, float values untouched


@pytest.mark.parametrize("mode", ["reference", "aspect"])
def test_painted_mask_region_is_the_official_pillow_resize(mode):
    """Official: dilate the brush at the image's own size, 8-bit image, Pillow NEAREST to the working size."""
    height, width = 1024, 1536
    mask = np.zeros((height, width), dtype=np.float32)
    mask[301:517, 402:911] = 1.0
    mask[700:707, 100:1400] = 1.0
    canvas = imaging.plan_canvas(height, width, 768, mode)
    widened = hints.dilate_mask(mask, hints.HINT_BRUSH_DILATION)
    official_region = np.asarray(Image.fromarray((widened * 255).astype(np.uint8)).resize(
        (canvas.content_width, canvas.content_height), Image.Resampling.NEAREST)) / 255.0
    expected = hints.build_hint_map(canvas.content_height, canvas.content_width,
                                    region=official_region.astype(np.float32), long_side=canvas.long_side,
                                    num_points=hints.HINT_POINT_COUNT)
    ours = hints.hint_map_on_canvas(hints.MattingHints(mask=mask), canvas, hints.HINT_POINT_COUNT)
    assert np.array_equal(ours[:canvas.content_height, :canvas.content_width], expected)
