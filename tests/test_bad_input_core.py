"""Bad input to the core, called directly in-process (the loader and E2PPredictor of ``e2p_core.comfyui``): damaged,
pickled, missing and foreign weight files, LoRA files that fit nothing, and image batches of odd, huge or empty size
or with non-finite pixels. Each is refused with an error that names the cause and the fix, or handled.

The structure checks of weight files have their own tests (test_weight_files.py), as have the checks of each LoRA
module (test_lora_checks.py); the same inputs through the nodes are in test_bad_input_nodes.py, through a server in
test_bad_input_server.py."""

import pickle

import numpy as np
import pytest
import torch

from e2p_dev import tiny_models as tm
from e2p_dev.weight_files import LeavesAMark
from e2p_core import checkpoint_layouts, imaging, safetensors_io
from e2p_core.comfyui import loader

pytestmark = pytest.mark.usefixtures("comfy_inprocess")


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    return tm.write(str(tmp_path_factory.mktemp("good") / "e2p.safetensors"), tm.bfl_state_dict(seed=71))


def test_truncated_file(tmp_path, good_file):
    data = open(good_file, "rb").read()
    truncated = tmp_path / "depth.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(safetensors_io.WeightFileError,
                       match="is truncated: its data ends at byte .*; download it again"):
        loader.load_e2p_checkpoint(str(truncated))


def test_random_bytes(tmp_path):
    path = tmp_path / "depth.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(safetensors_io.WeightFileError, match="not a readable safetensors file"):
        loader.load_e2p_checkpoint(str(path))


@pytest.mark.parametrize("name", ["depth.ckpt", "depth.pt", "depth.bin", "disguised.safetensors"])
def test_pickles_are_refused_without_unpickling(tmp_path, name):
    marker = tmp_path / "unpickled"
    path = tmp_path / name
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": LeavesAMark(str(marker))}, handle)
    with pytest.raises(safetensors_io.WeightFileError, match="pickle"):
        loader.load_e2p_checkpoint(str(path))
    assert not marker.exists()


def test_missing_file_names_the_folder(tmp_path):
    with pytest.raises(safetensors_io.WeightFileError, match="models folder"):
        loader.load_e2p_checkpoint(str(tmp_path / "nowhere.safetensors"))


@pytest.mark.parametrize("keys,expected", [
    ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4), "cond_stage_model.x": (4,)}, "Stable Diffusion"),
    ({"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4), "shared.weight": (4, 4)}, "text encoder"),
])
def test_other_architectures_are_named(tmp_path, keys, expected):
    path = tm.write(str(tmp_path / "other.safetensors"), {k: torch.zeros(s) for k, s in keys.items()})
    with pytest.raises(checkpoint_layouts.UnsupportedCheckpoint, match=expected):
        loader.load_e2p_checkpoint(path)


def test_flux_fill_is_refused(tmp_path):
    bfl = tm.bfl_state_dict(seed=72)
    bfl["img_in.weight"] = torch.zeros(bfl["img_in.weight"].shape[0], 384)
    with pytest.raises(checkpoint_layouts.UnsupportedCheckpoint, match="Fill"):
        loader.load_e2p_checkpoint(tm.write(str(tmp_path / "fill.safetensors"), bfl))


def test_lora_that_matches_nothing_reports_the_count(tmp_path, good_file):
    foreign = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}
    path = tm.write(str(tmp_path / "sd_lora.safetensors"), foreign)
    with pytest.raises(loader.E2PLoadError, match="0 of 1 modules applied"):
        loader.load_e2p_checkpoint(good_file, lora_path=path)


def test_checkpoint_given_as_lora_is_explained(tmp_path, good_file):
    with pytest.raises(loader.E2PLoadError, match="no LoRA tensors"):
        loader.load_e2p_checkpoint(good_file, lora_path=good_file)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, good_file):
    from e2p_core.comfyui import api
    from e2p_core.saved_conditioning import save_conditioning

    folder = tmp_path_factory.mktemp("predictor")
    cond, pooled = tm.conditioning()
    save_conditioning(str(folder / "cond.safetensors"), cond, pooled, {})
    vae = tm.write(str(folder / "ae.safetensors"), tm.flux_vae_state_dict())
    return api.E2PPredictor.from_files("depth", good_file, str(folder / "cond.safetensors"), vae=vae, dtype="fp32")


@pytest.mark.parametrize("shape", [(1, 1), (15, 15), (64, 4096), (4096, 64)])
def test_odd_sizes_come_back_at_their_size(predictor, shape):
    image = torch.rand(1, *shape, 3, generator=torch.Generator().manual_seed(1))
    depth = predictor.predict(image, processing_resolution=64)
    assert depth.shape == (1, *shape) and torch.isfinite(depth).all()


def test_non_finite_and_black_images(predictor):
    image = torch.rand(3, 24, 24, 3)
    image[0, :5] = float("nan")
    image[1, :5] = float("inf")
    image[2] = 0.0
    depth = predictor.predict(image, processing_resolution=64)
    assert torch.isfinite(depth).all() and depth.shape == (3, 24, 24)


def test_very_large_image_is_resized_not_processed_natively(predictor):
    big = torch.zeros(1, 8192, 8192, 3)
    assert predictor.predict(big, processing_resolution=64).shape == (1, 8192, 8192)
    with pytest.raises(imaging.ImageSizeError, match="lower processing_resolution"):
        predictor.predict(big, processing_resolution=0)


def test_empty_batch(predictor):
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(torch.zeros(0, 16, 16, 3), processing_resolution=64)

