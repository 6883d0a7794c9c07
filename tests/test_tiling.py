"""Tiled prediction (e2p_core.tiling) with a stand-in predictor that knows the answer.

The stand-in (e2p_dev.stand_in) returns the exact geometry of the ray-traced example scene for whatever region it is
asked for, the way E2P would: sqrt depth normalised to the region's own 2..98 percentiles, each call and image with
its own random affine distortion and Gaussian noise, clipped to [0, 1]. Stitched depth must be as accurate as the
injected noise alone makes a one-pass map (AbsRel within 1.2x) and show no seams: across the overlaps, the gradient
energy of the error must stay within 1.1x of the tiles' interiors. Without alignment or without feathering the
bounds are missed, so the tests can fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from e2p_core import imaging, metric_alignment, tiling
from e2p_dev.stand_in import AnalyticTruth, TruthPredictor, moved_scene, render_truth

WIDTH, HEIGHT = 512, 384
TILE = 128                       # the processing resolution: the tile side and the global pass's long side
NOISE = 0.01                     # std of the stand-in's noise, in output units
BATCH = 3                        # images stitched at once (the same scene, each with its own distortions)
EDGE_MARGIN = 8                  # px around depth edges left out of the seam measure (see smooth_pixels)
INTERIOR_LINES = 8               # lines just outside an overlap that give a tile's interior gradient energy
LINES_PER_BIN = 2                # lines across an overlap pooled into one measurement


@pytest.fixture(scope="module")
def truth():
    return render_truth(moved_scene(WIDTH, HEIGHT))


def stitch(truth, task: str = "depth", batch: int = 1, **stand_in):
    predictor = TruthPredictor([truth] * batch, task, **stand_in)
    images = truth.rgb[None].expand(batch, -1, -1, -1)
    return tiling.predict_tiled(images, predictor, task, processing_resolution=TILE), predictor


def fitted_to_truth(prediction: torch.Tensor, truth) -> tuple[torch.Tensor, float, float]:
    """(unclipped pixels, a, b) of the least-squares prediction ~ a * sqrt(depth) + b over them: the frame the
    affine-invariant map is evaluated in."""
    root = torch.sqrt(truth.depth.double())
    unclipped = metric_alignment.unclipped(prediction)
    design = torch.stack([root[unclipped], torch.ones_like(root[unclipped])], dim=1)
    a, b = torch.linalg.lstsq(design, prediction.double()[unclipped][:, None]).solution[:, 0].tolist()
    return unclipped, a, b


def absolute_relative_error(prediction: torch.Tensor, truth, a: float, b: float, where: torch.Tensor) -> float:
    depth = ((prediction.double() - b) / a).clamp(min=0.0) ** 2
    return float(((depth - truth.depth) / truth.depth).abs()[where].mean())


def accuracy_against_noise(prediction: torch.Tensor, truth, seed: int) -> tuple[float, float]:
    """(AbsRel of the stitched map, AbsRel of the truth in the same frame plus the injected noise alone)."""
    unclipped, a, b = fitted_to_truth(prediction, truth)
    generator = torch.Generator().manual_seed(seed)
    root = torch.sqrt(truth.depth.double())
    noisy = a * root + b + NOISE * torch.randn(root.shape, generator=generator, dtype=torch.float64)
    return (absolute_relative_error(prediction, truth, a, b, unclipped),
            absolute_relative_error(noisy, truth, a, b, unclipped))


def smooth_pixels(truth) -> torch.Tensor:
    """Pixels at least EDGE_MARGIN px from a depth edge: near an object's outline a tile's clipped pixels take the
    coarse global pass, which blurs there; that is the global pass's resolution, not a seam."""
    root = torch.sqrt(truth.depth.double())
    edge = torch.zeros_like(root, dtype=torch.bool)
    across_columns = (root[:, 1:] - root[:, :-1]).abs() > 0.02
    across_rows = (root[1:] - root[:-1]).abs() > 0.02
    edge[:, 1:] |= across_columns
    edge[:, :-1] |= across_columns
    edge[1:] |= across_rows
    edge[:-1] |= across_rows
    return F.max_pool2d(edge[None, None].float(), 2 * EDGE_MARGIN + 1, 1, EDGE_MARGIN)[0, 0] == 0


def seam_energy_ratio(error: torch.Tensor, usable: torch.Tensor) -> float:
    """Worst ratio of the error's gradient energy across the overlaps to the tiles' interior energy.

    For every overlap band between two neighbouring tiles (columns, then rows), the lines across the band are taken
    in pairs from each edge inwards, and each pair's mean squared error gradient is divided by that of the noisier
    of the two tiles' interiors (INTERIOR_LINES lines outside each edge, same image, same rows): a blend of two
    tiles' noise is never noisier than the noisier one, so a ratio above 1 is something the stitching added. Ratios
    are averaged over bands and images; the largest is returned. ``error`` and ``usable`` are [B, H, W]."""
    tiles = tiling.plan_tiles(HEIGHT, WIDTH, TILE)
    worst = 0.0
    for starts, err, use in ((sorted({tile.left for tile in tiles}), error, usable),
                             (sorted({tile.top for tile in tiles}), error.transpose(1, 2), usable.transpose(1, 2))):
        def energy(item: int, lines) -> float:
            pairs = [(err[item, :, line] - err[item, :, line - 1],
                      use[item, :, line] & use[item, :, line - 1]) for line in lines]
            return float(torch.cat([step[ok] for step, ok in pairs]).pow(2).mean())

        bands = [(start, previous + TILE) for previous, start in zip(starts[:-1], starts[1:])]
        half = (min(end - start for start, end in bands) + 1) // 2
        ratios = []
        for start, end in bands:
            lines = list(range(start, start + half)) + list(range(end, end - half, -1))
            for item in range(err.shape[0]):
                interior = max(energy(item, range(start - INTERIOR_LINES, start)),
                               energy(item, range(end + 1, end + 1 + INTERIOR_LINES)))
                ratios.append([energy(item, lines[at:at + LINES_PER_BIN]) / interior
                               for at in range(0, len(lines), LINES_PER_BIN)])
        worst = max(worst, float(torch.tensor(ratios).mean(dim=0).max()))
    return worst


def seam_ratio_of(result, truth) -> float:
    errors, usable = [], []
    smooth = smooth_pixels(truth)
    for prediction in result.prediction:
        unclipped, a, b = fitted_to_truth(prediction, truth)
        errors.append(prediction.double() - (a * torch.sqrt(truth.depth.double()) + b))
        usable.append(unclipped & smooth)
    return seam_energy_ratio(torch.stack(errors), torch.stack(usable))


@pytest.fixture(scope="module")
def stitched_depth(truth):
    return stitch(truth, batch=BATCH, noise=NOISE, seed=1)


def test_stitched_depth_is_as_accurate_as_its_noise(truth, stitched_depth):
    result, predictor = stitched_depth
    expected_tiles = tiling.plan_tiles(HEIGHT, WIDTH, TILE)
    assert result.prediction.shape == (BATCH, HEIGHT, WIDTH) and result.tiles == len(expected_tiles)
    assert result.unfitted == 0
    # one global pass at the working size, then every tile at full detail
    assert [call[0].region for call in predictor.calls] == [tiling.Region(0, 0, HEIGHT, WIDTH), *expected_tiles]
    for item in range(BATCH):
        stitched, injected = accuracy_against_noise(result.prediction[item], truth, seed=10 + item)
        assert stitched <= 1.2 * injected, (item, stitched, injected)


def test_the_stitched_depth_shows_no_seams(truth, stitched_depth):
    ratio = seam_ratio_of(stitched_depth[0], truth)
    assert ratio <= 1.1, ratio


def test_without_alignment_the_accuracy_bound_is_missed(truth, monkeypatch):
    monkeypatch.setattr(metric_alignment, "fit_relative_depth", lambda sqrt_depth, target, usable: (1.0, 0.0, 1.0))
    result, _ = stitch(truth, noise=NOISE, seed=1)
    stitched, injected = accuracy_against_noise(result.prediction[0], truth, seed=10)
    assert stitched > 5 * injected, (stitched, injected)


def test_feathering_hides_where_tiles_disagree(truth, monkeypatch):
    """Tiles that disagree beyond scale and shift (a tilt across each tile, which no alignment removes) leave steps
    at the tile edges unless the blend ramps across the overlap."""
    disagreeing = dict(noise=NOISE, tilt=0.1, seed=2)
    feathered = seam_ratio_of(stitch(truth, batch=BATCH, **disagreeing)[0], truth)
    monkeypatch.setattr(tiling, "feather_weights", lambda tiles, region: torch.ones(region.height, region.width))
    averaged = seam_ratio_of(stitch(truth, **disagreeing)[0], truth)     # one image: the steps stand out plainly
    assert feathered <= 1.1 < 1.3 < averaged, (feathered, averaged)


def test_tiles_without_depth_in_common_show_the_global_pass(caplog):
    """Tiles of a flat back wall that the global pass clips as its farthest 2 % cannot be aligned (their own map is
    noise stretched over [0, 1]): they show the global pass, which the log says, and the stitched wall stays the
    global pass's instead of taking their noise."""
    scene = AnalyticTruth(HEIGHT, WIDTH, horizon=0.45)
    stand_in = TruthPredictor([scene], "depth", noise=NOISE, seed=7)
    passes = []

    def predictor(images, region):
        passes.append(stand_in(images, region)[0])
        return passes[-1], torch.zeros(passes[-1].shape)

    result = tiling.predict_tiled(torch.full((1, HEIGHT, WIDTH, 3), 0.5), predictor, "depth",
                                  processing_resolution=TILE)
    assert result.unfitted > 0 and f"{result.unfitted} of {result.tiles} tiles show the whole-image pass" in caplog.text
    assert bool(torch.isfinite(result.prediction).all())
    wall = slice(0, tiling.plan_tiles(HEIGHT, WIDTH, TILE)[0].height)
    global_pass = imaging.resize(passes[0][:, None], HEIGHT, WIDTH, "bilinear")[0, 0]
    assert float((result.prediction[0, wall] - global_pass[wall]).abs().mean()) < NOISE


def test_exact_tiles_stitch_exactly(truth):
    result, _ = stitch(truth, "matting", noise=0.0)
    assert torch.allclose(result.prediction[0], truth.alpha, atol=1e-6)
    assert float(result.uncertainty.abs().max()) == 0.0


def test_normals_and_alpha_are_blended_tiles_without_a_global_pass(truth):
    normals, predictor = stitch(truth, "normal", noise=NOISE, seed=3)
    assert len(predictor.calls) == normals.tiles == len(tiling.plan_tiles(HEIGHT, WIDTH, TILE))
    assert torch.allclose(torch.linalg.vector_norm(normals.prediction, dim=-1), torch.ones(1, HEIGHT, WIDTH),
                          atol=1e-5)
    generator = torch.Generator().manual_seed(4)
    noisy = truth.normals + NOISE * torch.randn(truth.normals.shape, generator=generator)
    noisy = noisy / torch.linalg.vector_norm(noisy, dim=-1, keepdim=True)

    def mean_angle(vectors: torch.Tensor) -> float:
        return float(torch.rad2deg(torch.acos((vectors * truth.normals).sum(-1).clamp(-1.0, 1.0))).mean())

    assert mean_angle(normals.prediction[0]) <= mean_angle(noisy), (mean_angle(normals.prediction[0]),
                                                                     mean_angle(noisy))

    alpha, _ = stitch(truth, "matting", noise=NOISE, seed=5)
    assert 0.0 <= float(alpha.prediction.min()) and float(alpha.prediction.max()) <= 1.0
    assert float((alpha.prediction[0] - truth.alpha).abs().mean()) <= NOISE
    assert torch.allclose(alpha.uncertainty, torch.full_like(alpha.uncertainty, NOISE))


def test_an_image_within_one_tile_gets_the_one_pass_prediction(truth):
    small = truth.rgb[:96, :120][None]
    seen = []

    def predictor(images, region):
        seen.append((tuple(images.shape), region))
        return images.mean(-1), torch.zeros(images.shape[:3])

    result = tiling.predict_tiled(small, predictor, "depth", processing_resolution=TILE)
    canvas = imaging.plan_canvas(96, 120, TILE)
    working = (1, canvas.content_height, canvas.content_width, 3)
    assert seen == [(working, tiling.Region(0, 0, 96, 120))] and result.tiles == 0
    one_pass = imaging.resize(imaging.resize(small.movedim(-1, 1), *working[1:3], "bilinear").mean(1, keepdim=True),
                              96, 120, "bilinear")[:, 0]
    assert torch.allclose(result.prediction, one_pass, atol=1e-6)


def test_progress_is_reported_after_every_pass(truth):
    reports = []
    result = tiling.predict_tiled(truth.rgb[None], TruthPredictor([truth], "depth", noise=NOISE), "depth",
                                  processing_resolution=TILE, on_progress=lambda done, total: reports.append((done,
                                                                                                             total)))
    total = result.tiles + 1
    assert reports == [(done, total) for done in range(1, total + 1)]


def test_a_region_is_sampled_as_full_upsampling_would_give_it():
    maps = torch.rand(2, 12, 17, 3, generator=torch.Generator().manual_seed(6))
    full = F.interpolate(maps.movedim(-1, 1), size=(100, 141), mode="bilinear", align_corners=False).movedim(1, -1)
    for region in (tiling.Region(0, 0, 40, 50), tiling.Region(37, 91, 63, 50), tiling.Region(5, 3, 1, 1)):
        expected = full[:, region.top:region.top + region.height, region.left:region.left + region.width]
        assert torch.allclose(tiling.sample_region(maps, region, 100, 141), expected, atol=1e-5)


@pytest.mark.parametrize("height, width, tile, overlap", [
    (384, 512, 128, 0.25), (1000, 130, 128, 0.25), (4608, 8192, 768, 0.25), (250, 250, 128, 0.5), (90, 300, 64, 0.1),
])
def test_tiles_cover_the_image_and_share_the_overlap(height, width, tile, overlap):
    tiles = tiling.plan_tiles(height, width, tile, overlap)
    covered = torch.zeros(height, width, dtype=torch.int64)
    for region in tiles:
        assert region.height == min(tile, height) and region.width == min(tile, width)
        assert region.top + region.height <= height and region.left + region.width <= width
        covered[region.top:region.top + region.height, region.left:region.left + region.width] += 1
    assert int(covered.min()) >= 1
    for starts, length in ((sorted({r.top for r in tiles}), height), (sorted({r.left for r in tiles}), width)):
        assert starts[0] == 0 and starts[-1] + min(tile, length) == length
        assert all(previous + tile - start >= overlap * tile for previous, start in zip(starts, starts[1:]))


@pytest.mark.parametrize("change, error, message", [
    (dict(overlap=0.0), ValueError, r"tile overlap 0.0 must be above 0 and at most 0.5"),
    (dict(overlap=0.75), ValueError, r"tile overlap 0.75 must be above 0"),
    (dict(processing_resolution=0), imaging.ImageSizeError, r"needs a processing_resolution \(the tile size\)"),
    (dict(processing_resolution=32), imaging.ImageSizeError, r"below the 64 px the model can work at"),
    (dict(images=torch.zeros(0, 64, 64, 3)), ValueError, r"expected an IMAGE batch \[B, H, W, 3\]"),
    (dict(images=torch.zeros(64, 64, 3)), ValueError, r"expected an IMAGE batch"),
    (dict(predictor=lambda images, region: images[..., 0]), TypeError, r"must return \(prediction, uncertainty\)"),
    (dict(predictor=lambda images, region: (images[..., 0, None], images[..., 0])), ValueError,
     r"the predictor returned a prediction \(1, 66, 128, 1\)"),
    (dict(task="segmentation"), ValueError, r"unknown task 'segmentation'"),
])
def test_bad_arguments_are_refused(change, error, message):
    arguments = dict(images=torch.zeros(1, 103, 200, 3), task="depth", processing_resolution=TILE,
                     predictor=lambda images, region: (images[..., 0], images[..., 0]))
    arguments.update(change)
    with pytest.raises(error, match=message):
        tiling.predict_tiled(**arguments)
