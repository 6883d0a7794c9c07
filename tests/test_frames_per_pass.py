"""Batched passes and ensembles through the pipeline and the nodes (in-process ComfyUI, tiny random models).

Several frames in one pass must predict what the one-at-a-time loop does; ensemble_size 1 must be the plain single
step exactly; ensembles compose with batching.
"""

import dataclasses
import sys

import pytest
import torch

from e2p_dev import tiny_models as tm
from e2p_core import ensemble, imaging, representations, tasks
from e2p_core.comfyui import compat, cpu_speedups, pipeline, sampling
from e2p_core.hints import MattingConditioning, matting_hints
from test_nodes import image_batch, installed, load, task_inputs, vae  # noqa: F401  (fixtures)

CLIP = 5


def count_encodes(vae, monkeypatch) -> list[int]:
    """Record the batch size of every VAE encode call (on this VAE object only)."""
    batches, encode = [], vae.encode

    def counting(pixels):
        batches.append(pixels.shape[0])
        return encode(pixels)

    monkeypatch.setattr(vae, "encode", counting)
    return batches


def record_decoded_normals(monkeypatch) -> list[torch.Tensor]:
    """The decoder's normal vectors before they are made unit length. Normalising amplifies rounding by 1/length,
    and a random model's vectors come arbitrarily close to zero, so batching is compared before that step."""
    records, normal = [], tasks.task_spec("normal")

    def recording(decoded, channel_axis=-1):
        records.append(decoded.clone())
        return normal.decode(decoded, channel_axis)

    monkeypatch.setitem(tasks.TASKS, "normal", dataclasses.replace(normal, decode=recording))
    return records


def run(e2p, vae, images, task, on_progress=None, **options):
    matting = (MattingConditioning(matting_hints(images, "[[20, 24]]").per_image) if task == "matting" else None)
    e2p.require_task(task)
    with torch.inference_mode():
        return pipeline.predict_task(e2p, vae, images, pipeline.PredictionOptions(64, seed=42, **options), matting,
                                     on_progress)


def hand_single_step(e2p, vae, image):
    """Today's single step for one image, written out from the public pieces."""
    canvas = imaging.plan_canvas(image.shape[1], image.shape[2], 64, "aspect")
    with torch.inference_mode(), cpu_speedups.fast_cpu_vae(vae):
        latent = sampling.predict_latent(e2p.patcher, [vae.encode(imaging.to_canvas(image.clamp(0, 1), canvas))],
                                         e2p.cond, e2p.pooled, seed=42)
        decoded = compat.raw_vae_decoder(vae).decode(latent).float()[..., :3]
    return imaging.from_canvas(representations.decode_depth(decoded)[..., None], canvas)[..., 0].clamp(0, 1)


def test_ensemble_size_one_is_exactly_the_single_step(installed, vae):
    e2p, _, _ = load(installed, "depth")
    images = image_batch(2)
    depth, uncertainty, _ = installed.run_node("E2PDepth", **task_inputs(e2p, vae, images), ensemble_size=1,
                                               frames_per_pass=1)
    for index in range(2):
        assert torch.equal(depth[index, ..., 0], hand_single_step(e2p, vae, images[index:index + 1])[0])
    assert uncertainty.shape == images.shape[:3] and not uncertainty.any()
    default, default_uncertainty, _ = installed.run_node("E2PDepth", **task_inputs(e2p, vae, images))
    assert torch.equal(default, depth) and torch.equal(default_uncertainty, uncertainty)


@pytest.mark.parametrize("task,sizes", [("depth", (2, 3, 8)), ("normal", (3,)), ("matting", (2,))])
def test_frames_sharing_a_pass_predict_what_the_loop_does(installed, vae, task, sizes, monkeypatch):
    e2p, _, _ = load(installed, task)
    images = image_batch(CLIP, 48, 64)
    with monkeypatch.context() as patch:
        loop_normals = record_decoded_normals(patch)
        one_at_a_time = run(e2p, vae, images, task)
    for frames_per_pass in sizes:     # 2 and 3 do not divide the 5-frame clip; 8 takes it in one pass
        with monkeypatch.context() as patch:
            encodes, passes, normals = count_encodes(vae, patch), [], record_decoded_normals(patch)
            batched = run(e2p, vae, images, task, frames_per_pass=frames_per_pass, on_progress=passes.append)
        if task == "normal":
            assert tm.scaled_error(torch.cat(normals), torch.cat(loop_normals)) < tm.RELATIVE_TOLERANCE
            cosines = (batched.prediction * one_at_a_time.prediction).sum(dim=-1)
            assert float(cosines.mean()) > 1 - 1e-6
        else:
            assert tm.scaled_error(batched.prediction, one_at_a_time.prediction) < tm.RELATIVE_TOLERANCE
        expected_passes = [min(frames_per_pass, CLIP - start) for start in range(0, CLIP, frames_per_pass)]
        assert passes == expected_passes
        per_reference = 2 if task == "matting" else 1
        assert encodes == [n for n in expected_passes for _ in range(per_reference)]
        if task == "matting":
            assert torch.equal(batched.hint_maps, one_at_a_time.hint_maps)


def test_ensemble_members_share_passes_with_other_frames(installed, vae, monkeypatch):
    e2p, _, _ = load(installed, "depth")
    images = image_batch(3, 48, 64)
    loop = run(e2p, vae, images, "depth", ensemble_size=3)
    with monkeypatch.context() as patch:
        encodes, passes = count_encodes(vae, patch), []
        batched = run(e2p, vae, images, "depth", ensemble_size=3, frames_per_pass=4, on_progress=passes.append)
    assert passes == [4, 4, 1]
    assert encodes == [2, 1]    # frames 0+1, then frame 2: each encoded once for all its members
    assert tm.scaled_error(batched.prediction, loop.prediction) < tm.RELATIVE_TOLERANCE
    assert tm.scaled_error(batched.uncertainty, loop.uncertainty) < 1e-3
    # members made with different seeds disagree somewhere, so the ensemble is not the single step
    single = run(e2p, vae, images, "depth")
    assert loop.uncertainty.max() > 0 and not torch.equal(loop.prediction, single.prediction)
    # member 0 is the single step: the same frame's first member equals ensemble_size 1's prediction
    members, depth = [], tasks.task_spec("depth")
    monkeypatch.setitem(tasks.TASKS, "depth", dataclasses.replace(
        depth, combine=lambda values: (members.append(values), depth.combine(values))[1]))
    run(e2p, vae, images[:1], "depth", ensemble_size=2)
    assert torch.equal(members[0][0], single.prediction[0])


def test_agreeing_members_give_zero_uncertainty_in_the_pipeline(installed, vae, monkeypatch):
    e2p, _, _ = load(installed, "depth")
    images = image_batch(2, 48, 64)
    single = run(e2p, vae, images, "depth")
    monkeypatch.setattr(ensemble, "member_seed", lambda seed, member: seed)
    same_seeds = run(e2p, vae, images, "depth", ensemble_size=3, frames_per_pass=3)
    assert not same_seeds.uncertainty.any()
    assert tm.scaled_error(same_seeds.prediction, single.prediction) < tm.RELATIVE_TOLERANCE


def test_interrupt_and_progress_act_between_passes(installed, vae, monkeypatch):
    e2p, _, _ = load(installed, "depth")
    checks, updates = [], []

    class Interrupted(Exception):
        pass

    def interrupt_on_third_pass():
        checks.append(len(updates))
        if len(checks) == 3:
            raise Interrupted

    monkeypatch.setattr(compat, "throw_if_interrupted", interrupt_on_third_pass)
    with pytest.raises(Interrupted):
        run(e2p, vae, image_batch(CLIP, 48, 64), "depth", frames_per_pass=2, on_progress=updates.append)
    assert checks == [0, 1, 2] and updates == [2, 2]


def test_node_progress_counts_every_prediction(installed, vae, monkeypatch):
    e2p, _, _ = load(installed, "depth")
    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.updates = total, []
            bars.append(self)

        def update(self, count):
            self.updates.append(count)

    # ComfyUI loads the pack under its own module name: patch the compat the node module uses
    node_module = sys.modules[installed.node_class_mappings["E2PDepth"].__module__]
    monkeypatch.setattr(node_module.compat, "progress_bar", Bar)
    installed.run_node("E2PDepth", **task_inputs(e2p, vae, image_batch(3)), ensemble_size=2, frames_per_pass=4)
    assert [(bar.total, bar.updates) for bar in bars] == [(6, [4, 2])]


def test_nodes_output_uncertainty_masks(installed, vae):
    image = image_batch(2, 48, 64)
    options = dict(ensemble_size=3, frames_per_pass=4)
    depth_model, _, _ = load(installed, "depth")
    depth, depth_uncertainty, _ = installed.run_node("E2PDepth", **task_inputs(depth_model, vae, image), **options)
    normal_model, _, _ = load(installed, "normal")
    normal_map, angle = installed.run_node("E2PNormal", **task_inputs(normal_model, vae, image), **options,
                                           convention="controlnet_bae", flip_x=False, flip_y=False, flip_z=False)
    matting_model, _, _ = load(installed, "matting")
    alpha_uncertainty = installed.run_node("E2PMatting", **task_inputs(matting_model, vae, image), **options,
                                           points="[[20, 24]]", box="", coordinates="pixels", num_points=10)[4]
    for mask in (depth_uncertainty, angle, alpha_uncertainty):
        assert mask.shape == (2, 48, 64) and mask.dtype == torch.float32
        assert float(mask.min()) >= 0 and float(mask.max()) <= 1 and float(mask.max()) > 0
    for node, index in (("E2PDepth", 1), ("E2PNormal", 1), ("E2PMatting", 4)):
        info = installed.node_info(node)
        assert info["output"][index] == "MASK" and info["output_name"][index] == "uncertainty"
        assert len(info["output_tooltips"]) == len(info["output"])
        optional = info["input"]["optional"]
        assert optional["ensemble_size"][1]["default"] == 1 and optional["frames_per_pass"][1]["default"] == 1


def test_bad_pass_and_ensemble_sizes_are_refused(installed, vae):
    e2p, _, _ = load(installed, "depth")
    for options in ({"frames_per_pass": 0}, {"ensemble_size": 0}):
        with pytest.raises(ValueError, match="must be at least 1"):
            run(e2p, vae, image_batch(1), "depth", **options)
