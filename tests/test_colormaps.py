"""E2PColorizeDepth's colour maps: the perceptual ones equal matplotlib's within 1/255 at every value (matplotlib is
a development requirement only), spectral runs linearly through its stops and gray repeats the clamped value."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from e2p_core import colormaps

TABLE_MAPS = ["turbo", "inferno", "magma", "plasma", "viridis"]
EIGHT_BIT_STEP = 1.0 / 255.0


@pytest.fixture(scope="module")
def matplotlib_colormaps():
    """matplotlib's registry of colour maps, imported here rather than at collection: these tests run once, in the
    0.3.75 venv whose dev requirements pin matplotlib; the current ComfyUI's venv collects this file without it."""
    return importlib.import_module("matplotlib").colormaps


def probe_values() -> torch.Tensor:
    """Every table entry's lower edge, the values just below it, the entries' centres, the ends and beyond them:
    where an off-by-one lookup or an interpolation would show."""
    edges = torch.arange(257, dtype=torch.float64) / 256.0
    below = torch.nextafter(edges, torch.zeros_like(edges))
    centres = (torch.arange(256, dtype=torch.float64) + 0.5) / 256.0
    uniform = torch.rand(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.cat([edges, below, centres, uniform, torch.tensor([-0.5, 0.0, 1.0, 1.5], dtype=torch.float64)])


@pytest.mark.parametrize("name", TABLE_MAPS)
def test_tables_equal_matplotlibs(matplotlib_colormaps, name):
    reference = matplotlib_colormaps[name](np.arange(256))[:, :3]
    assert np.abs(colormaps.table(name).numpy() - reference).max() <= 0.5 * EIGHT_BIT_STEP + 1e-7


@pytest.mark.parametrize("name", TABLE_MAPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_colours_equal_matplotlibs_at_any_value(matplotlib_colormaps, name, dtype):
    values = probe_values().to(dtype)
    expected = matplotlib_colormaps[name](values.numpy())[:, :3]
    colours = colormaps.apply_colormap(values, name)
    assert colours.shape == (values.numel(), 3)
    assert np.abs(colours.numpy() - expected).max() <= EIGHT_BIT_STEP


def test_spectral_runs_through_its_stops_linearly():
    stops = torch.tensor(colormaps.SPECTRAL, dtype=torch.float32) / 255.0
    at_stops = colormaps.apply_colormap(torch.arange(11, dtype=torch.float32) / 10.0, "spectral")
    assert torch.allclose(at_stops, stops, atol=1e-6)
    halfway = colormaps.apply_colormap((torch.arange(10, dtype=torch.float32) + 0.5) / 10.0, "spectral")
    assert torch.allclose(halfway, (stops[:-1] + stops[1:]) / 2.0, atol=1e-6)
    assert torch.equal(colormaps.apply_colormap(torch.tensor([-1.0, 2.0]), "spectral"), stops[[0, -1]])


def test_gray_repeats_the_clamped_value():
    values = torch.tensor([[-0.5, 0.25], [0.75, 3.0]])
    assert torch.equal(colormaps.apply_colormap(values, "gray"),
                       values.clamp(0, 1)[..., None].expand(2, 2, 3))


def test_shapes_and_refusals():
    values = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(1))
    for name in colormaps.COLORMAPS:
        colours = colormaps.apply_colormap(values, name)
        assert colours.shape == (2, 5, 7, 3) and colours.min() >= 0 and colours.max() <= 1
    with pytest.raises(ValueError, match="unknown colormap 'jet'; choose one of spectral, gray, turbo"):
        colormaps.apply_colormap(values, "jet")
    values[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="the map has 1 NaN or infinite pixels"):
        colormaps.apply_colormap(values, "viridis")

