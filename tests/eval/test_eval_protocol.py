"""Protocol: alignment spaces, valid pixels and crops, normal conventions, matting regions, aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from e2p_eval import protocol as P
from e2p_eval.datasets.depth import kitti_benchmark_box


@pytest.mark.parametrize("path, space", [
    ("ckpts/depth.safetensors", "linear"),                       # the released name: linear alignment
    ("models/train/kontext/bs64_sqrt_cons/step-3200.safetensors", "sqrt"),
    ("runs/bs64_log_cons/step-1.safetensors", "log"),
    ("runs/sqrt_disp_model.safetensors", "sqrt-disparity"),
    ("runs/inverse_depth.safetensors", "disparity"),
    ("runs/disp.safetensors", "disparity"),
    ("/home/me/blog/sqrt.safetensors", "log"),                   # the rule looks at the whole path string
])
def test_official_alignment_space_from_path(path, space):
    assert P.alignment_space_from_checkpoint(path) == space


def test_pdf_alignment_is_refused_with_a_fix():
    with pytest.raises(ValueError, match="--depth-align"):
        P.alignment_space_from_checkpoint("runs/pdf_model.safetensors")


def test_resolve_alignment_needs_a_checkpoint_in_official_mode():
    with pytest.raises(ValueError, match="--checkpoint-name"):
        P.resolve_alignment(P.OFFICIAL, None)
    assert P.resolve_alignment(P.STANDARD, None) == "sqrt"


def test_protocol_overrides_are_named_and_checked():
    custom = P.OFFICIAL.with_overrides(depth_align="sqrt", matting_region="whole")
    assert custom.depth_align == "sqrt" and custom.name == "official+depth-align=sqrt"
    assert P.OFFICIAL.with_overrides() is P.OFFICIAL
    with pytest.raises(ValueError, match="unknown matting-region"):
        P.OFFICIAL.with_overrides(matting_region="edges")


def test_resize_bilinear_is_align_corners():
    array = np.array([[0.0, 3.0], [6.0, 9.0]], dtype=np.float32)
    resized = P.resize_bilinear(array, 3, 4)
    assert resized[0, 0] == 0 and resized[0, -1] == 3 and resized[-1, 0] == 6 and resized[-1, -1] == 9
    assert resized[1, 0] == pytest.approx(3.0)          # midpoint between 0 and 6
    assert resized[0, 1] == pytest.approx(1.0)          # a third of the way from 0 to 3


# -- depth --------------------------------------------------------------------------------------------------------

def depth_target(depth, mask=None, box=None, max_depth=10.0):
    return P.DepthTarget(depth=depth, eval_mask=np.ones(depth.shape, bool) if mask is None else mask,
                         min_depth=1e-3, max_depth=max_depth, prediction_box=box)


def test_sqrt_prediction_aligned_in_sqrt_space_is_exact():
    gt = np.linspace(0.6, 9.0, 40 * 30, dtype=np.float32).reshape(40, 30)
    pred = (np.sqrt(gt) - np.sqrt(0.6)) / (np.sqrt(9.0) - np.sqrt(0.6))       # the model's representation
    result = P.evaluate_depth(pred, depth_target(gt), "sqrt")
    assert result["abs_rel"] < 1e-5 and result["delta1"] == 1.0
    linear = P.evaluate_depth(pred, depth_target(gt), "linear")               # the official quirk
    assert linear["abs_rel"] > 100 * result["abs_rel"]


@pytest.mark.parametrize("space, encode", [
    ("linear", lambda d: 2 * d + 1), ("log", np.log), ("disparity", lambda d: 1 / d),
    ("sqrt-disparity", lambda d: 1 / np.sqrt(d)),
])
def test_each_space_inverts_its_encoding(space, encode):
    gt = np.linspace(0.5, 8.0, 400, dtype=np.float32).reshape(20, 20)
    result = P.evaluate_depth(3.0 * encode(gt) - 0.5, depth_target(gt), space)
    assert result["abs_rel"] < 1e-5


def test_depth_valid_pixels_caps_and_skip():
    gt = np.full((20, 20), 5.0, dtype=np.float32)
    gt[:, :5] = 0.0          # no measurement
    gt[:, 5:8] = 12.0        # beyond the 10 m cap
    gt[0, 10] = np.nan
    gt[1, 10] = np.inf
    mask = np.ones_like(gt, dtype=bool)
    mask[-1, :] = False      # evaluation crop
    pred = np.random.default_rng(0).random((20, 20))
    result = P.evaluate_depth(pred, depth_target(gt, mask), "linear")
    assert result["valid_pixels"] == 19 * 12 - 2
    tiny = np.zeros((20, 20), dtype=np.float32)
    tiny[:9, :11] = 3.0       # 99 valid pixels: fewer than 100, skipped
    assert P.evaluate_depth(pred, depth_target(tiny), "linear") is None


def test_kitti_prediction_is_resized_to_the_box_and_pasted():
    height, width = 375, 1242
    top, left, box_h, box_w = kitti_benchmark_box(height, width)
    assert (top, left, box_h, box_w) == (23, 13, 352, 1216)
    gt = np.zeros((height, width), dtype=np.float32)
    gt[top:, left:left + box_w] = np.linspace(2.0, 60.0, box_h)[:, None]
    gt[:top, :] = 7.0                     # outside the box: must not count
    pred_full = (np.sqrt(gt[top:top + box_h, left:left + box_w]) - 1.0) / 7.0
    small = P.resize_bilinear(pred_full, 96, 96)      # a 96 x 96 model output
    mask = np.zeros_like(gt, dtype=bool)
    mask[top:top + box_h, left:left + box_w] = True
    result = P.evaluate_depth(small, depth_target(gt, mask, (top, left, box_h, box_w), 80.0), "sqrt")
    assert result["valid_pixels"] == box_h * box_w
    assert result["abs_rel"] < 1e-3


def test_three_channel_official_predictions_are_averaged():
    gt = np.linspace(1.0, 9.0, 400, dtype=np.float32).reshape(20, 20)
    pred = (np.sqrt(gt) - 1) / 2
    stacked = np.stack([pred - 0.1, pred, pred + 0.1], axis=2)
    assert P.evaluate_depth(stacked, depth_target(gt), "sqrt")["abs_rel"] < 1e-5


def test_official_aggregation_drops_zero_silog_images():
    perfect = {"silog": 0.0, **{k: 0.0 for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10")},
               "delta1": 1.0, "delta2": 1.0, "delta3": 1.0}
    assert not P.depth_image_counts(perfect, P.OFFICIAL)
    assert P.depth_image_counts(perfect, P.STANDARD)
    assert not P.depth_image_counts(None, P.STANDARD)
    official = P.DatasetAggregate("depth", P.OFFICIAL)
    official.add_depth(perfect)
    official.add_depth(dict(perfect, silog=2.0, abs_rel=0.1))
    assert official.result()["abs_rel"] == pytest.approx(0.1) and official.result()["skipped"] == 1


# -- normals ------------------------------------------------------------------------------------------------------

def marigold_normals(height=16, width=20, seed=0):
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(height, width, 3)) + np.array([0, 0, 2.0])
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    return normals.astype(np.float32)


def test_native_prediction_of_marigold_ground_truth_scores_zero():
    gt = marigold_normals()
    native = gt * np.array([-1, 1, 1], dtype=np.float32)     # E2P native: x negated
    errors = P.normal_errors(native, P.NormalTarget(gt), P.STANDARD)
    assert errors.max() < 1e-5
    unflipped = P.normal_errors(gt, P.NormalTarget(gt), P.STANDARD)
    assert unflipped.mean() > 1.0


def test_zero_ground_truth_is_masked_and_dataset_mask_only_in_standard():
    gt = marigold_normals()
    gt[:4] = 0.0
    mask = np.ones(gt.shape[:2], dtype=bool)
    mask[:, :5] = False
    native = gt * np.array([-1, 1, 1], dtype=np.float32)
    assert P.normal_errors(native, P.NormalTarget(gt, mask), P.OFFICIAL).size == 12 * 20
    assert P.normal_errors(native, P.NormalTarget(gt, mask), P.STANDARD).size == 12 * 15


def test_official_range_guess_maps_colour_predictions():
    gt = np.abs(marigold_normals()) * np.array([-1, 1, 1], dtype=np.float32)   # native (x flipped) all >= 0
    gt[0, 0] = np.array([0.0, -0.6, 0.8], dtype=np.float32)                  # one pixel keeps the GT signed
    native = gt * np.array([-1, 1, 1], dtype=np.float32)
    native[0, 0, 1] = 0.6                       # a prediction with no negative component at all
    # the official script takes an all-non-negative prediction for [0, 1] colours and remaps it
    official = P.normal_errors(native, P.NormalTarget(gt), P.OFFICIAL)
    standard = P.normal_errors(native, P.NormalTarget(gt), P.STANDARD)
    assert np.median(standard) < 1e-5 and np.median(official) > 1.0


def test_prediction_is_resized_to_ground_truth():
    gt = np.zeros((30, 40, 3), dtype=np.float32)
    gt[..., 2] = 1.0
    pred = np.zeros((8, 8, 3), dtype=np.float32)
    pred[..., 2] = 1.0
    assert P.normal_errors(pred, P.NormalTarget(gt), P.OFFICIAL).shape == (1200,)


def test_official_rounds_per_image_statistics():
    errors = np.array([1.234567, 2.345678])
    assert P.normal_image_statistics(errors, P.OFFICIAL)["mean"] == round(np.mean(errors), 4)
    assert P.normal_image_statistics(errors, P.STANDARD)["mean"] == pytest.approx(np.mean(errors))


def test_normal_aggregation_per_image_vs_pooled():
    small, large = np.array([10.0]), np.full(9, 20.0)
    per_image = P.DatasetAggregate("normal", P.OFFICIAL)
    pooled = P.DatasetAggregate("normal", P.STANDARD)
    for errors in (small, large):
        per_image.add_normal(errors, P.normal_image_statistics(errors, P.OFFICIAL))
        pooled.add_normal(errors, P.normal_image_statistics(errors, P.STANDARD))
    assert per_image.result()["mean"] == pytest.approx(15.0)          # mean of the two image means
    assert pooled.result()["mean"] == pytest.approx(19.0)             # pixel-weighted
    assert per_image.result()["median"] == pytest.approx(15.0)        # mean of medians 10 and 20


# -- matting ------------------------------------------------------------------------------------------------------

def test_matting_whole_image_vs_unknown_region():
    alpha = np.zeros((10, 10), dtype=np.float32)
    alpha[3:7, 3:7] = 1.0
    trimap = np.zeros((10, 10), dtype=np.uint8)
    trimap[2:8, 2:8] = 128
    trimap[4:6, 4:6] = 255
    pred = alpha.copy()
    pred[0, 0] = 0.5           # error in the known background: counted only by the whole-image metrics
    target = P.MattingTarget(alpha, trimap)
    whole = P.evaluate_matting(pred, target, P.OFFICIAL)
    unknown = P.evaluate_matting(pred, target, P.STANDARD)
    assert whole["sad"] == pytest.approx(0.5 / 1000) and whole["mse"] == pytest.approx(0.25 / 100)
    assert unknown["sad"] == 0.0 and unknown["mse"] == 0.0 and unknown["region_pixels"] == 32


def test_unknown_region_needs_a_trimap():
    with pytest.raises(ValueError, match="trimap"):
        P.evaluate_matting(np.zeros((4, 4)), P.MattingTarget(np.zeros((4, 4), np.float32)), P.STANDARD)


def test_matting_nanmean_over_images():
    aggregate = P.DatasetAggregate("matting", P.OFFICIAL)
    aggregate.add_matting({"mse": 0.1, "sad": 1.0, "mad": 0.2, "grad": 3.0, "conn": 4.0})
    aggregate.add_matting({"mse": float("nan"), "sad": 3.0, "mad": 0.4, "grad": 5.0, "conn": 6.0})
    result = aggregate.result()
    assert result["mse"] == pytest.approx(0.1) and result["sad"] == pytest.approx(2.0)
    assert result["images"] == 1 and result["skipped"] == 1


# -- whole per-image protocol on random arrays against straightforward torch versions ----------------------------

def _torch_resize(array, height, width):
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor[None, None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=True)[0]
    return resized[0] if array.ndim == 2 else resized.permute(1, 2, 0)


@pytest.mark.parametrize("space", ["linear", "sqrt"])
def test_depth_protocol_random_against_torch_version(space):
    rng = np.random.default_rng(12)
    gt = rng.uniform(0.3, 14.0, size=(37, 53)).astype(np.float32)
    gt[rng.random(gt.shape) < 0.2] = 0.0                      # holes
    crop = np.zeros(gt.shape, dtype=bool)
    crop[3:-4, 2:-5] = True
    pred = rng.random((16, 16, 3)).astype(np.float32)
    result = P.evaluate_depth(pred, depth_target(gt, crop), space)

    g = torch.from_numpy(gt).double()
    p = _torch_resize(pred.mean(axis=2), 37, 53).double()
    valid = (g > 1e-3) & (g < 10.0) & torch.from_numpy(crop)
    target = g[valid].sqrt() if space == "sqrt" else g[valid]
    design = torch.stack([p[valid], torch.ones_like(p[valid])], dim=1)
    solution = torch.linalg.solve(design.T @ design, design.T @ target)
    aligned = design @ solution
    aligned = (aligned ** 2 if space == "sqrt" else aligned).clamp(1e-3, 10.0)
    truth = g[valid]
    ratio = torch.maximum(truth / aligned, aligned / truth)
    assert result["valid_pixels"] == int(valid.sum())
    assert result["abs_rel"] == pytest.approx(float(((truth - aligned).abs() / truth).mean()), rel=1e-5)
    assert result["rmse"] == pytest.approx(float(((truth - aligned) ** 2).mean().sqrt()), rel=1e-5)
    assert result["delta1"] == pytest.approx(float((ratio < 1.25).double().mean()), abs=1.5 / truth.numel())


def test_official_normal_protocol_random_against_torch_version():
    rng = np.random.default_rng(13)
    gt = rng.normal(size=(21, 29, 3)).astype(np.float32)
    gt /= np.linalg.norm(gt, axis=2, keepdims=True)
    gt[rng.random(gt.shape[:2]) < 0.15] = 0.0                 # unknown pixels
    pred = rng.normal(size=(12, 12, 3)).astype(np.float32)

    flipped = torch.from_numpy(gt * np.array([-1, 1, 1], dtype=np.float32))
    resized = _torch_resize(pred, 21, 29)
    valid = flipped.norm(dim=2) > 1e-3
    cosine = torch.cosine_similarity(resized[valid], flipped[valid], dim=1).clamp(-1, 1)
    angles = torch.acos(cosine) * 180.0 / np.pi
    errors = P.normal_errors(pred, P.NormalTarget(gt), P.OFFICIAL)
    assert errors.dtype == np.float32 and errors.shape == (int(valid.sum()),)
    np.testing.assert_allclose(errors, angles.numpy(), atol=1e-3)
    stats = P.normal_image_statistics(errors, P.OFFICIAL)
    assert stats["mean"] == pytest.approx(round(float(angles.double().mean()), 4), abs=2e-4)
    assert stats["a11_25"] == pytest.approx(round(100.0 * float((angles < 11.25).double().mean()), 4), abs=1e-3)


def test_official_matting_protocol_random_against_torch_version():
    rng = np.random.default_rng(14)
    alpha = rng.random((19, 23)).astype(np.float32)
    trimap = np.full(alpha.shape, 128, dtype=np.uint8)
    pred = rng.random((8, 8, 3)).astype(np.float32)
    resized = _torch_resize(pred.mean(axis=2), 19, 23).double()
    difference = resized - torch.from_numpy(alpha).double()
    result = P.evaluate_matting(pred, P.MattingTarget(alpha, trimap), P.OFFICIAL)
    assert result["sad"] == pytest.approx(float(difference.abs().sum()) / 1000, rel=1e-5)
    assert result["mse"] == pytest.approx(float((difference ** 2).mean()), rel=1e-5)
    assert result["mad"] == pytest.approx(float(difference.abs().mean()), rel=1e-5)
    assert result["region_pixels"] == 19 * 23
