"""Video / image batches: one normalisation for the whole sequence, and frames processed one at a time.

The clip is a depth scene seen through a window that pans across it, so consecutive frames differ only by a shift
of their content. Whatever a pixel of the scene decodes to must not depend on which frame shows it.
"""

import numpy as np
import pytest
import torch

from e2p_dev import tiny_models as tm
from e2p_core.comfyui import pipeline
from e2p_core.saved_conditioning import save_conditioning
from e2p_core.metadata_keys import META_PROMPT, META_TASK
from e2p_core.tasks import task_spec

FRAMES, HEIGHT, WIDTH, PAN = 5, 12, 40, 6


def panned_clip():
    """Sqrt-space depth [FRAMES, HEIGHT, WIDTH, 3] cut from one wider scene, each frame PAN pixels further right;
    returns it with the scene columns each frame shows."""
    scene_width = WIDTH + PAN * (FRAMES - 1)
    columns = torch.linspace(0.05, 0.95, scene_width)
    rows = torch.linspace(0.0, 0.04, HEIGHT)[:, None]
    scene = (columns[None, :] + rows).clamp(0.0, 1.0)                    # a slanted floor: depth grows to the right
    frames = torch.stack([scene[:, t * PAN:t * PAN + WIDTH] for t in range(FRAMES)])
    return frames[..., None].expand(*frames.shape, 3).contiguous()


def shared_pixels(decoded, first, second):
    """The scene columns visible in both frames, as each frame shows them."""
    shift = (second - first) * PAN
    return decoded[first, :, shift:], decoded[second, :, :WIDTH - shift]


@pytest.mark.parametrize("output", ["disparity", "relative_depth"])
def test_whole_batch_decodes_shared_pixels_identically(comfy_inprocess, output):
    clip = panned_clip()
    inputs = dict(sqrt_depth=clip, output=output, near=0.5, far=10.0)
    shared, _ = comfy_inprocess.run_node("SqrtDecode", normalization="whole_batch", **inputs)
    per_frame, _ = comfy_inprocess.run_node("SqrtDecode", normalization="per_image", **inputs)
    for first, second in [(0, 1), (1, 3), (0, FRAMES - 1)]:
        a, b = shared_pixels(shared, first, second)
        assert torch.equal(a, b), f"frames {first} and {second} decode the same scene pixels differently"
        a, b = shared_pixels(per_frame, first, second)
        assert (a - b).abs().max() > 0.05, "per-frame ranges must visibly differ on a panned clip (the flicker)"
    assert shared.min() == 0.0 and shared.max() == 1.0
    assert all(per_frame[t].min() == 0.0 and per_frame[t].max() == 1.0 for t in range(FRAMES))


def test_metric_output_needs_no_shared_range(comfy_inprocess):
    """metric_depth is an absolute mapping: both modes agree and shared pixels match."""
    clip = panned_clip()
    inputs = dict(sqrt_depth=clip, output="metric_depth", near=0.5, far=10.0)
    shared, _ = comfy_inprocess.run_node("SqrtDecode", normalization="whole_batch", **inputs)
    per_frame, _ = comfy_inprocess.run_node("SqrtDecode", normalization="per_image", **inputs)
    assert torch.equal(shared, per_frame)
    assert torch.equal(*shared_pixels(shared, 0, 2))


@pytest.fixture(scope="module")
def tiny_depth_predictor(comfy_core, tmp_path_factory):
    from e2p_core.comfyui import api

    root = tmp_path_factory.mktemp("sequence_models")
    model = tm.write(str(root / "e2p.safetensors"), tm.bfl_state_dict(depth=1, single_depth=1, seed=71))
    vae = tm.write(str(root / "ae.safetensors"), tm.flux_vae_state_dict())
    cond, pooled = tm.conditioning(seed=72)
    cond_path = str(root / "depth-cond.safetensors")
    save_conditioning(cond_path, cond, pooled, {META_TASK: "depth", META_PROMPT: task_spec("depth").prompt})
    return api.E2PPredictor.from_files("depth", model, cond_path, vae=vae, dtype="fp32")


def test_a_clip_runs_one_frame_at_a_time(tiny_depth_predictor, monkeypatch):
    """Memory stays that of one frame: the model only ever sees a batch of one, once per frame."""
    seen_batches = []
    real_predict_latent = pipeline.predict_latent

    def recording(patcher, references, *args, **kwargs):
        seen_batches.append([reference.shape[0] for reference in references])
        return real_predict_latent(patcher, references, *args, **kwargs)

    monkeypatch.setattr(pipeline, "predict_latent", recording)
    frames = torch.from_numpy(np.random.default_rng(8).random((FRAMES, 24, 32, 3)).astype(np.float32))
    depth = tiny_depth_predictor.predict(frames, processing_resolution=64)
    assert depth.shape == (FRAMES, 24, 32)
    assert seen_batches == [[1]] * FRAMES
