"""Erode/dilate, feather and trimap of an alpha matte: the defaults leave it bit-identical, known shapes move and
soften by known widths, and bad settings get clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from e2p_core import matte_edges as me


def soft_matte(height: int = 48, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, height, width, generator=torch.Generator().manual_seed(seed))


def vertical_edge(width: int = 60, edge: int = 30, height: int = 9) -> torch.Tensor:
    """Opaque from column ``edge`` on."""
    alpha = torch.zeros(1, height, width)
    alpha[..., edge:] = 1.0
    return alpha


def first_opaque_column(alpha: torch.Tensor) -> int:
    return int((alpha[0, alpha.shape[1] // 2] >= 0.5).nonzero()[0])


def test_defaults_leave_the_matte_bit_identical():
    alpha = soft_matte()
    assert torch.equal(me.offset_alpha(alpha, 0), alpha)
    assert torch.equal(me.feather_alpha(alpha, 0), alpha)
    assert torch.equal(me.feather_alpha(alpha, 0.0), alpha)
    assert torch.equal(me.adjust_edges(alpha), alpha)


@pytest.mark.parametrize("offset", [1, 3, 12, -1, -4, -12])
def test_offset_moves_a_straight_edge_by_that_many_pixels(offset):
    alpha = vertical_edge()
    moved = me.offset_alpha(alpha, offset)
    assert first_opaque_column(moved) == 30 - offset
    assert set(moved.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("radius", [1, 2, 5, 9])
def test_dilation_is_a_disc(radius):
    size = 2 * radius + 5
    point = torch.zeros(1, size, size)
    point[0, size // 2, size // 2] = 1.0
    grown = me.offset_alpha(point, radius)[0]
    rows, columns = torch.meshgrid(torch.arange(size) - size // 2, torch.arange(size) - size // 2, indexing="ij")
    assert torch.equal(grown == 1.0, rows ** 2 + columns ** 2 <= radius ** 2)


def test_offset_keeps_a_soft_edge_profile():
    ramp = torch.linspace(0.0, 1.0, 40).expand(1, 7, 40).clone()
    assert torch.equal(me.offset_alpha(ramp, 5)[..., :-5], ramp[..., 5:])
    assert torch.equal(me.offset_alpha(ramp, -5)[..., 5:], ramp[..., :-5])


def test_erosion_does_not_eat_the_image_border():
    opaque = torch.ones(1, 20, 30)
    assert torch.equal(me.offset_alpha(opaque, -6), opaque)
    empty = torch.zeros(1, 20, 30)
    assert torch.equal(me.offset_alpha(empty, 6), empty)


def test_offset_bigger_than_the_image():
    alpha = vertical_edge(width=10, edge=5, height=4)
    assert torch.equal(me.offset_alpha(alpha, 50), torch.ones_like(alpha))
    assert torch.equal(me.offset_alpha(alpha, -50), torch.zeros_like(alpha))


@pytest.mark.parametrize("radius", [2, 6, 10.5])
def test_feather_ramps_over_the_radius_either_side(radius):
    alpha = vertical_edge(width=100, edge=50, height=3)
    soft = me.feather_alpha(alpha, radius)[0, 1]
    edge = 49.5                                          # between the last clear and the first opaque column
    normal_cdf = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    sigma = radius / 2
    for column in range(30, 70):
        assert abs(float(soft[column]) - normal_cdf((column - edge) / sigma)) < 0.01
    assert float(soft[math.floor(edge - radius)]) < 0.03 and float(soft[math.ceil(edge + radius)]) > 0.97
    assert torch.all(soft[1:] >= soft[:-1])


def test_feather_keeps_flat_mattes_and_range():
    assert torch.allclose(me.feather_alpha(torch.ones(1, 10, 12), 8), torch.ones(1, 10, 12), rtol=0, atol=1e-6)
    feathered = me.feather_alpha(soft_matte(), 3)
    assert feathered.min() >= 0 and feathered.max() <= 1


def test_adjust_edges_moves_then_softens():
    alpha = vertical_edge(width=100, edge=50, height=3)
    adjusted = me.adjust_edges(alpha, offset=-10, feather=4)[0, 1]
    assert abs(float(adjusted[60]) - 0.5) < 0.1 and float(adjusted[50]) < 0.05


def test_trimap_of_a_soft_edge():
    ramp = torch.zeros(1, 5, 60)
    ramp[..., 20:30] = torch.linspace(0.1, 0.9, 10)
    ramp[..., 30:] = 1.0
    trimap = me.trimap(ramp)
    assert set(trimap.unique().tolist()) == {me.TRIMAP_BACKGROUND, me.TRIMAP_UNKNOWN, me.TRIMAP_FOREGROUND}
    row = trimap[0, 2]
    assert torch.all(row[:20] == 0.0) and torch.all(row[20:30] == 0.5) and torch.all(row[30:] == 1.0)
    widened = me.trimap(ramp, band=4)[0, 2]
    assert torch.all(widened[:16] == 0.0) and torch.all(widened[16:34] == 0.5) and torch.all(widened[34:] == 1.0)


def test_trimap_epsilon_and_hard_edges():
    alpha = torch.tensor([[[0.0, 0.01, 0.03, 0.5, 0.97, 0.99, 1.0]]])
    assert me.trimap(alpha)[0, 0].tolist() == [0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0]
    assert me.trimap(alpha, epsilon=0.0)[0, 0].tolist() == [0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0]
    hard = vertical_edge()
    assert torch.equal(me.trimap(hard), hard)
    band = me.trimap(hard, band=3)[0, 4]
    assert torch.all(band[27:33] == 0.5) and band[26] == 0.0 and band[33] == 1.0


def test_masks_without_batch_and_out_of_range_values():
    alpha = torch.tensor([[-0.5, 0.2], [0.7, 1.5]])
    assert torch.equal(me.offset_alpha(alpha, 0), torch.tensor([[[0.0, 0.2], [0.7, 1.0]]]))


@pytest.mark.parametrize("call,message", [
    (lambda: me.feather_alpha(soft_matte(), -1), "the feather radius is -1 px; it must be 0"),
    (lambda: me.trimap(soft_matte(), band=-2), "the trimap band is -2 px; it must be 0"),
    (lambda: me.offset_alpha(soft_matte(), 2.5), "the edge offset must be a whole number of pixels, got 2.5"),
    (lambda: me.offset_alpha(soft_matte(), True), "the edge offset must be a whole number of pixels, got True"),
    (lambda: me.feather_alpha(soft_matte(), float("nan")), "the feather radius must be finite"),
    (lambda: me.feather_alpha(soft_matte(), "3"), "the feather radius must be a number of pixels"),
    (lambda: me.trimap(soft_matte(), epsilon=0.5), r"the trimap epsilon is 0.5; it must be in \[0, 0.5\)"),
    (lambda: me.offset_alpha(torch.full((1, 4, 4), float("nan")), 1), "alpha has 16 NaN or infinite values"),
    (lambda: me.offset_alpha(torch.rand(1, 1, 4, 4), 1), r"a batch of masks \[B, H, W\]"),
    (lambda: me.trimap(torch.rand(1, 0, 4)), "with at least one pixel"),
])
def test_bad_settings_get_clear_errors(call, message):
    with pytest.raises(me.MatteError, match=message):
        call()
