"""Tiled prediction and temporal alignment through the task nodes (in-process ComfyUI, tiny random models).

The method itself is tested with a stand-in predictor in test_tiling.py and test_temporal.py; here the nodes' options
reach it through the real pipeline: the stitched result has the input size, every pass is one progress step, an
image that fits one tile gets the one-pass prediction, a matting tile sees its crop of the point map, and temporal
alignment changes nothing when it is off or the frames agree.
"""

import sys

import numpy as np
import pytest
import torch

from e2p_core import hints, tiling
from test_nodes import image_batch, installed, load, task_inputs, vae  # noqa: F401  (fixtures)

WIDE = (48, 112)      # at processing_resolution 64: two tiles of 48 x 64 side by side


def node_module(installed, node):
    """The pack's node module as ComfyUI loaded it (under its own module name: patch what it uses there)."""
    return sys.modules[installed.node_class_mappings[node].__module__]


def test_tiled_depth_with_a_batch_and_an_ensemble(installed, vae, monkeypatch):
    e2p, _, _ = load(installed, "depth")
    steps = []

    class Bar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None):
            steps.append((value, total))

    monkeypatch.setattr(node_module(installed, "E2PDepth").compat, "progress_bar", Bar)
    images = image_batch(2, *WIDE)
    depth, uncertainty, _ = installed.run_node("E2PDepth", **task_inputs(e2p, vae, images), ensemble_size=3,
                                               frames_per_pass=6, tiled=True, tile_overlap=0.25)
    assert depth.shape == images.shape and uncertainty.shape == images.shape[:3]
    assert torch.isfinite(depth).all() and depth.min() >= 0 and depth.max() <= 1
    assert torch.isfinite(uncertainty).all() and uncertainty.max() > 0, "the members disagree somewhere"
    tiles, whole_image_pass = tiling.planned_passes(*WIDE, "depth", 64, 0.25)
    passes = len(tiles) + whole_image_pass
    assert whole_image_pass and len(tiles) == 2
    assert steps == [(done, passes) for done in range(1, passes + 1)]
    with pytest.raises(ValueError, match="tiled prediction needs a processing_resolution"):
        installed.run_node("E2PDepth", **task_inputs(e2p, vae, images, processing_resolution=0), tiled=True)


def test_an_image_that_fits_one_tile_gets_the_one_pass_prediction(installed, vae):
    image = image_batch(1)
    depth_model, _, _ = load(installed, "depth")
    one_pass = installed.run_node("E2PDepth", **task_inputs(depth_model, vae, image))
    tiled = installed.run_node("E2PDepth", **task_inputs(depth_model, vae, image), tiled=True)
    assert torch.equal(tiled[0], one_pass[0])
    matting_model, _, _ = load(installed, "matting")
    common = dict(**task_inputs(matting_model, vae, image), points="[[20, 24]]", box="", coordinates="pixels",
                  num_points=10)
    one_pass = installed.run_node("E2PMatting", **common)
    tiled = installed.run_node("E2PMatting", **common, tiled=True)
    assert torch.allclose(tiled[0], one_pass[0], rtol=0, atol=1e-6), "alpha"
    assert torch.allclose(tiled[3], one_pass[3], rtol=0, atol=1e-6), "the point map the model saw"


def test_matting_tiles_see_their_crop_of_the_point_map(installed, vae, monkeypatch):
    """Each tile's point-map reference is the crop of one map made at the image's own size, with the hint sizes of
    one pass of a tile's side."""
    e2p, _, _ = load(installed, "matting")
    tiled_module = sys.modules[node_module(installed, "E2PMatting").predict_task_tiled.__module__]
    seen, predict_task = [], tiled_module.pipeline.predict_task

    def recording(model, vae, images, options, matting=None, on_progress=None):
        seen.append(matting.hint_maps.clone())
        return predict_task(model, vae, images, options, matting, on_progress)

    monkeypatch.setattr(tiled_module.pipeline, "predict_task", recording)
    image = image_batch(1, *WIDE)
    clicks = [[30, 20], [90, 30]]
    alpha, _, _, hint_map, *_ = installed.run_node(
        "E2PMatting", **task_inputs(e2p, vae, image), points=str(clicks), box="", coordinates="pixels",
        num_points=10, tiled=True)
    assert alpha.shape == image.shape[:3] and torch.isfinite(alpha).all()
    expected = hints.build_hint_map(*WIDE, clicks_xy=np.array(clicks), long_side=64, num_points=10)
    assert torch.equal(hint_map[0, ..., 0], torch.from_numpy(expected))
    regions = tiling.plan_tiles(*WIDE, 64, 0.25)
    assert len(seen) == len(regions)
    for region, reference in zip(regions, seen):
        crop = hint_map[:, region.top:region.top + region.height, region.left:region.left + region.width, 0]
        assert torch.equal(reference, crop), region
    assert seen[0].max() == 1 and seen[-1].max() == 1, "each click's points lie in its tile"


def test_temporal_alignment(installed, vae, monkeypatch):
    """Off: exactly today's output. On: the clip goes through temporal.align_frames, and a clip of identical
    frames (predicted two per pass) comes back unchanged."""
    e2p, _, _ = load(installed, "depth")
    clip = image_batch(1).repeat(2, 1, 1, 1)
    today = installed.run_node("E2PDepth", **task_inputs(e2p, vae, clip), frames_per_pass=2)
    off = installed.run_node("E2PDepth", **task_inputs(e2p, vae, clip), frames_per_pass=2, temporal_alignment=False)
    assert all(torch.equal(a, b) for a, b in zip(today, off))
    node_temporal, aligned_clips = node_module(installed, "E2PDepth").temporal, []
    align_frames = node_temporal.align_frames
    monkeypatch.setattr(node_temporal, "align_frames",
                        lambda depth: (aligned_clips.append(depth.clone()), align_frames(depth))[1])
    on = installed.run_node("E2PDepth", **task_inputs(e2p, vae, clip), frames_per_pass=2, temporal_alignment=True)
    assert len(aligned_clips) == 1 and torch.equal(aligned_clips[0], today[0][..., 0])
    assert float((on[0] - today[0]).abs().max()) <= 1e-6
