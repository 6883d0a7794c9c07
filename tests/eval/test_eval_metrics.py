"""Metric primitives: hand-computed cases and random arrays against independent straightforward versions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from e2p_eval import metrics


# -- depth --------------------------------------------------------------------------------------------------------

def test_depth_errors_hand_computed():
    gt = np.array([1.0, 2.0, 4.0])
    pred = np.array([1.1, 2.0, 3.0])
    result = metrics.depth_errors(gt, pred)
    assert result["abs_rel"] == pytest.approx((0.1 / 1 + 0 + 1.0 / 4) / 3)
    assert result["sq_rel"] == pytest.approx((0.01 / 1 + 0 + 1.0 / 4) / 3)
    assert result["rmse"] == pytest.approx(math.sqrt((0.01 + 0 + 1.0) / 3))
    assert result["delta1"] == pytest.approx(2 / 3)     # ratios 1.1, 1.0, 1.333
    assert result["delta2"] == pytest.approx(1.0)       # 1.333 < 1.5625
    log_diff = np.log([1.1, 1.0, 0.75])
    assert result["silog"] == pytest.approx(100 * math.sqrt(np.mean(log_diff ** 2) - np.mean(log_diff) ** 2))
    assert result["log10"] == pytest.approx(np.mean(np.abs(np.log10([1.1, 1.0, 0.75]))))


def test_perfect_depth_prediction():
    gt = np.linspace(0.5, 10, 50)
    result = metrics.depth_errors(gt, gt.copy())
    assert result["abs_rel"] == 0 and result["rmse"] == 0 and result["silog"] == 0
    assert result["delta1"] == result["delta2"] == result["delta3"] == 1.0


def test_least_squares_recovers_known_scale_and_shift():
    rng = np.random.default_rng(0)
    pred = rng.random(500)
    scale, shift = metrics.least_squares_scale_shift(pred, 3.5 * pred - 0.25)
    assert scale == pytest.approx(3.5) and shift == pytest.approx(-0.25)


def test_least_squares_matches_normal_equations_on_noisy_data():
    rng = np.random.default_rng(1)
    pred = rng.random(1000)
    target = 2.0 * pred + 1.0 + rng.normal(0, 0.1, 1000)
    # independent: closed-form 2x2 normal equations
    a00, a01, a11 = np.sum(pred * pred), np.sum(pred), pred.size
    b0, b1 = np.sum(pred * target), np.sum(target)
    det = a00 * a11 - a01 * a01
    expected = ((a11 * b0 - a01 * b1) / det, (-a01 * b0 + a00 * b1) / det)
    assert metrics.least_squares_scale_shift(pred, target) == pytest.approx(expected)


def test_depth_errors_random_against_torch_version():
    rng = np.random.default_rng(2)
    gt = rng.uniform(0.5, 80, 4000)
    pred = gt * rng.uniform(0.7, 1.4, 4000)
    g, p = torch.tensor(gt), torch.tensor(pred)
    ratio = torch.maximum(g / p, p / g)
    diff = torch.log(p) - torch.log(g)
    expected = {
        "abs_rel": torch.mean((g - p).abs() / g), "sq_rel": torch.mean((g - p) ** 2 / g),
        "rmse": torch.sqrt(torch.mean((g - p) ** 2)), "rmse_log": torch.sqrt(torch.mean(diff ** 2)),
        "silog": 100 * torch.sqrt(torch.var(diff, unbiased=False)),
        "log10": torch.mean((torch.log10(p) - torch.log10(g)).abs()),
        "delta1": (ratio < 1.25).double().mean(), "delta2": (ratio < 1.25 ** 2).double().mean(),
        "delta3": (ratio < 1.25 ** 3).double().mean(),
    }
    result = metrics.depth_errors(gt, pred)
    for key, value in expected.items():
        assert result[key] == pytest.approx(float(value), rel=1e-9), key


# -- normals ------------------------------------------------------------------------------------------------------

def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = math.radians(degrees)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def test_known_angles():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(200, 3))
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    for degrees in (0.0, 5.0, 11.25, 45.0, 120.0):
        # rotate each vector about an axis perpendicular to it
        axes = np.cross(gt, rng.normal(size=(200, 3)))
        pred = np.stack([rotation(a, degrees) @ v for a, v in zip(axes, gt)])
        assert metrics.angular_errors(pred, gt) == pytest.approx(np.full(200, degrees), abs=1e-5)


def test_angle_ignores_length_and_zero_prediction_scores_90():
    gt = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    pred = np.array([[0.0, 0.0, 7.0], [0.0, 0.0, 0.0]])
    assert metrics.angular_errors(pred, gt) == pytest.approx([0.0, 90.0])


def test_angular_statistics_hand_computed():
    stats = metrics.angular_statistics(np.array([0.0, 10.0, 20.0, 40.0]))
    assert stats["mean"] == pytest.approx(17.5)
    assert stats["median"] == pytest.approx(15.0)
    assert stats["rmse"] == pytest.approx(math.sqrt((100 + 400 + 1600) / 4))
    assert stats["a5"] == 25.0 and stats["a11_25"] == 50.0 and stats["a22_5"] == 75.0 and stats["a30"] == 75.0


def test_pooled_statistics_match_concatenated_pixels():
    rng = np.random.default_rng(4)
    chunks = [rng.gamma(2.0, 8.0, size=n).clip(0, 179.9) for n in (1000, 37, 5000)]
    pooled = metrics.PooledAngularStatistics()
    for chunk in chunks:
        pooled.add(chunk)
    result = pooled.result()
    everything = np.concatenate(chunks)
    direct = metrics.angular_statistics(everything)
    for key in ("mean", "rmse", "a5", "a7_5", "a11_25", "a22_5", "a30"):
        assert result[key] == pytest.approx(direct[key], rel=1e-12), key
    assert abs(result["median"] - direct["median"]) <= metrics.PooledAngularStatistics.BIN_WIDTH


def test_threshold_keys():
    assert [metrics.threshold_key(t) for t in metrics.ANGLE_THRESHOLDS] == ["a5", "a7_5", "a11_25", "a22_5", "a30"]


# -- matting ------------------------------------------------------------------------------------------------------

def test_known_alpha_errors_whole_and_region():
    gt = np.zeros((10, 20), dtype=np.float32)
    pred = gt.copy()
    pred[2, 3:7] = 0.5          # 4 pixels off by 0.5
    whole = metrics.sad_mse_mad(pred, gt)
    assert whole == pytest.approx({"sad": 2.0 / 1000, "mse": 4 * 0.25 / 200, "mad": 2.0 / 200})
    region = np.zeros_like(gt, dtype=bool)
    region[2, :] = True          # 20 pixels, containing the 4 errors
    inside = metrics.sad_mse_mad(pred, gt, region)
    assert inside == pytest.approx({"sad": 2.0 / 1000, "mse": 1.0 / 20, "mad": 2.0 / 20})


def test_perfect_matte_scores_zero():
    gt = np.random.default_rng(5).random((30, 30)).astype(np.float32)
    assert metrics.sad_mse_mad(gt, gt) == {"sad": 0.0, "mse": 0.0, "mad": 0.0}
    assert metrics.gradient_error(gt, gt) == 0.0
    assert metrics.connectivity_error(gt, gt) == 0.0
    assert metrics.connectivity_error(gt, gt, count_background=True) == 0.0


def test_gradient_kernel_shape_and_norm():
    kernel = metrics.gaussian_derivative_kernel(1.4)
    assert kernel.shape == (9, 9)                      # halfsize ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) 1.4 0.01))) = 4
    assert np.sum(kernel ** 2) == pytest.approx(1.0)
    assert kernel.sum() == pytest.approx(0.0, abs=1e-12)   # derivative: constants have no gradient


def _independent_gradient_error(pred, gt, sigma=1.4):
    """Direct double loop over the kernel with edge-replicated borders (scipy 'nearest' convolution)."""
    half = 4
    offsets = np.arange(-half, half + 1)
    g = np.exp(-offsets ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
    dg = -offsets * g / sigma ** 2
    hx = np.array([[g[i] * dg[j] for j in range(2 * half + 1)] for i in range(2 * half + 1)])
    hx /= np.sqrt((hx ** 2).sum())

    def convolve(image, kernel):
        padded = np.pad(image, half, mode="edge")
        out = np.zeros_like(image, dtype=np.float64)
        h, w = image.shape
        for y in range(h):
            for x in range(w):
                window = padded[y:y + 2 * half + 1, x:x + 2 * half + 1]
                out[y, x] = np.sum(window * kernel[::-1, ::-1])     # true convolution flips the kernel
        return out

    def magnitude(image):
        return np.sqrt(convolve(image, hx) ** 2 + convolve(image, hx.T) ** 2)

    return float(np.sum((magnitude(pred) - magnitude(gt)) ** 2) / 1000)


def test_gradient_error_random_against_direct_convolution():
    rng = np.random.default_rng(6)
    gt = rng.random((14, 17))
    pred = np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1)
    assert metrics.gradient_error(pred, gt) == pytest.approx(_independent_gradient_error(pred, gt), rel=1e-9)


def _components(binary):
    """4-connected components by breadth-first flood fill: list of pixel sets."""
    seen = np.zeros_like(binary, dtype=bool)
    found = []
    h, w = binary.shape
    for y in range(h):
        for x in range(w):
            if binary[y, x] and not seen[y, x]:
                queue, pixels = [(y, x)], set()
                seen[y, x] = True
                while queue:
                    cy, cx = queue.pop()
                    pixels.add((cy, cx))
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
                found.append(pixels)
    return found


def _independent_connectivity(pred, gt, step=0.1):
    """DIM definition written out: level = last threshold at which a pixel is still in the largest connected
    foreground component common to both mattes; phi = 1 - d * (d >= 0.15)."""
    h, w = gt.shape
    level = np.full((h, w), np.nan)
    thresholds = np.arange(0, 1 + step, step)
    for i in range(1, len(thresholds)):
        comps = _components((pred >= thresholds[i]) & (gt >= thresholds[i]))
        largest = max(comps, key=len) if comps else set()
        for y in range(h):
            for x in range(w):
                if np.isnan(level[y, x]) and (y, x) not in largest:
                    level[y, x] = thresholds[i - 1]
    level[np.isnan(level)] = 1.0
    dp, dg = pred - level, gt - level
    phi_p = 1 - dp * (dp >= 0.15)
    phi_g = 1 - dg * (dg >= 0.15)
    return float(np.abs(phi_p - phi_g).sum() / 1000)


def test_connectivity_random_against_flood_fill_version():
    rng = np.random.default_rng(7)
    for _ in range(3):
        gt = np.clip(rng.random((12, 15)) * 1.3 - 0.1, 0, 1)
        pred = np.clip(gt + rng.normal(0, 0.25, gt.shape), 0, 1)
        assert metrics.connectivity_error(pred, gt) == pytest.approx(_independent_connectivity(pred, gt), abs=1e-6)


def test_connectivity_background_quirk_differs_when_background_dominates():
    # a small foreground square: the background (label 0) is the biggest region
    gt = np.zeros((20, 20))
    gt[8:12, 8:12] = 1.0
    pred = gt.copy()
    pred[8:12, 8:12] = 0.6
    standard = metrics.connectivity_error(pred, gt, count_background=False)
    official = metrics.connectivity_error(pred, gt, count_background=True)
    assert standard == pytest.approx(_independent_connectivity(pred, gt), abs=1e-6)
    assert official != pytest.approx(standard)


def test_largest_component_modes():
    binary = np.zeros((6, 6), dtype=bool)
    binary[0, 0:2] = True        # size 2
    binary[3:5, 3:5] = True      # size 4
    fg = metrics.largest_component(binary, count_background=False)
    assert fg.sum() == 4 and fg[3, 3]
    bg = metrics.largest_component(binary, count_background=True)
    assert bg.sum() == 36 - 6 and not bg[3, 3]
    assert not metrics.largest_component(np.zeros((3, 3), dtype=bool), count_background=False).any()


def test_integer_alphas_are_refused():
    with pytest.raises(TypeError, match="divide 8-bit mattes by 255"):
        metrics.connectivity_error(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))


# -- random arrays against straightforward versions ---------------------------------------------------------------

def test_angular_errors_random_against_torch_cosine_similarity():
    rng = np.random.default_rng(8)
    pred = rng.normal(size=(3000, 3)) * rng.uniform(0.1, 3.0, size=(3000, 1))
    gt = rng.normal(size=(3000, 3))
    cosine = torch.cosine_similarity(torch.tensor(pred), torch.tensor(gt), dim=1).clamp(-1, 1)
    expected = torch.rad2deg(torch.acos(cosine)).numpy()
    np.testing.assert_allclose(metrics.angular_errors(pred, gt), expected, atol=1e-9)
    float32 = metrics.angular_errors(pred, gt, dtype=np.float32)
    assert float32.dtype == np.float32
    np.testing.assert_allclose(float32, expected, atol=2e-3)


def test_angular_statistics_random_against_sorting_and_counting():
    errors = np.random.default_rng(9).gamma(2.0, 9.0, size=1001)
    ordered = sorted(errors.tolist())
    stats = metrics.angular_statistics(errors)
    assert stats["median"] == pytest.approx(ordered[500])                  # odd count: the middle element
    assert stats["mean"] == pytest.approx(sum(ordered) / 1001)
    for threshold in metrics.ANGLE_THRESHOLDS:
        below = sum(1 for e in ordered if e < threshold)
        assert stats[metrics.threshold_key(threshold)] == pytest.approx(100.0 * below / 1001)


def test_sad_mse_mad_random_against_pixel_loops():
    rng = np.random.default_rng(10)
    gt = rng.random((13, 11)).astype(np.float32)
    pred = np.clip(gt + rng.normal(0, 0.3, gt.shape), 0, 1).astype(np.float32)
    region = rng.random(gt.shape) < 0.4
    for mask in (None, region):
        pixels = [(y, x) for y in range(13) for x in range(11) if mask is None or mask[y, x]]
        absolute = sum(abs(float(pred[y, x]) - float(gt[y, x])) for y, x in pixels)
        squared = sum((float(pred[y, x]) - float(gt[y, x])) ** 2 for y, x in pixels)
        result = metrics.sad_mse_mad(pred, gt, mask)
        assert result["sad"] == pytest.approx(absolute / 1000)
        assert result["mse"] == pytest.approx(squared / len(pixels))
        assert result["mad"] == pytest.approx(absolute / len(pixels))


def test_official_connectivity_random_against_flood_fill_with_background_competing():
    """The official port labels the background too, as one label however scattered, and argmax prefers it on a
    tie: the 'largest component' may be the whole background."""
    rng = np.random.default_rng(11)
    for _ in range(3):
        gt = np.clip(rng.random((12, 15)) * 1.3 - 0.2, 0, 1)
        pred = np.clip(gt + rng.normal(0, 0.25, gt.shape), 0, 1)
        thresholds = np.arange(0, 1.1, 0.1)
        level = np.full(gt.shape, np.nan)
        for i in range(1, len(thresholds)):
            both = (pred >= thresholds[i]) & (gt >= thresholds[i])
            background_size = int((~both).sum())
            largest_fg = max(_components(both), key=len) if both.any() else set()
            winner = largest_fg if len(largest_fg) > background_size else {
                (y, x) for y in range(12) for x in range(15) if not both[y, x]}
            for y in range(12):
                for x in range(15):
                    if np.isnan(level[y, x]) and (y, x) not in winner:
                        level[y, x] = thresholds[i - 1]
        level[np.isnan(level)] = 1.0
        dp, dg = pred - level, gt - level
        expected = np.abs((1 - dp * (dp >= 0.15)) - (1 - dg * (dg >= 0.15))).sum() / 1000
        assert metrics.connectivity_error(pred, gt, count_background=True) == pytest.approx(expected, abs=1e-6)
