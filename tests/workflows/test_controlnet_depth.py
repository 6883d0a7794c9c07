"""E2P Depth's controlnet_depth output wired straight into the stock ControlNetApplyAdvanced, in a real graph on a
ComfyUI server (each supported version), with the tiny stand-in SD1.5 checkpoint and depth ControlNet the example
workflows use: the guidance is near = bright and the ControlNet acts on it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.stats
from PIL import Image

from e2p_dev.workflows.environment import IMAGE_SIZE
from e2p_dev.workflows.graphs import INPUT_FILES

pytestmark = pytest.mark.server

SQRT_DEPTH, CONTROLNET_DEPTH = 0, 2   # E2PDepth's output slots


def controlnet_prompt(strength: float) -> dict:
    def node(class_type, **inputs):
        return {"class_type": class_type, "inputs": inputs}

    return {
        "1": node("LoadImage", image=INPUT_FILES["image"]),
        "2": node("VAELoader", vae_name="ae.safetensors"),
        "3": node("LoadE2PModel", checkpoint="depth.safetensors", weight_dtype="default", task="depth", lora="none",
                  lora_strength=1.0, time_embedding="auto"),
        "4": node("E2PDepth", e2p_model=["3", 0], vae=["2", 0], image=["1", 0], processing_resolution=IMAGE_SIZE,
                  resize_mode="aspect", steps=1, seed=42),
        "5": node("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly-fp16.safetensors"),
        "6": node("ControlNetLoader", control_net_name="control_v11f1p_sd15_depth_fp16.safetensors"),
        "7": node("CLIPTextEncode", clip=["5", 1], text="a cozy reading room"),
        "8": node("CLIPTextEncode", clip=["5", 1], text="blurry"),
        "9": node("ControlNetApplyAdvanced", positive=["7", 0], negative=["8", 0], control_net=["6", 0],
                  image=["4", CONTROLNET_DEPTH], strength=strength, start_percent=0.0, end_percent=1.0),
        "10": node("EmptyLatentImage", width=IMAGE_SIZE, height=IMAGE_SIZE, batch_size=1),
        "11": node("KSampler", model=["5", 0], positive=["9", 0], negative=["9", 1], latent_image=["10", 0],
                   seed=1234, steps=2, cfg=7.0, sampler_name="euler", scheduler="normal", denoise=1.0),
        "12": node("VAEDecode", samples=["11", 0], vae=["5", 2]),
        "13": node("SaveImage", images=["12", 0], filename_prefix="controlnet_depth_test/generated"),
        "14": node("SaveImage", images=["4", CONTROLNET_DEPTH], filename_prefix="controlnet_depth_test/guide"),
        "15": node("SaveImage", images=["4", SQRT_DEPTH], filename_prefix="controlnet_depth_test/sqrt_depth"),
    }


def saved(server, entry, node_id) -> np.ndarray:
    (info,) = entry["outputs"][node_id]["images"]
    return np.asarray(Image.open(io.BytesIO(server.fetch_output(info))).convert("L")).astype(float)


def test_controlnet_depth_goes_straight_into_a_depth_controlnet(workflow_server):
    guided = workflow_server.run_prompt(controlnet_prompt(strength=1.0), timeout=600)
    guide, sqrt_depth = saved(workflow_server, guided, "14"), saved(workflow_server, guided, "15")
    assert guide.max() == 255 and guide.min() == 0, "the guide spans [0, 1]"
    spearman = scipy.stats.spearmanr(guide.ravel(), sqrt_depth.ravel()).statistic
    assert spearman < -0.95, f"near (dark in sqrt_depth) must be bright in the guide; rank correlation {spearman:.3f}"
    unguided = workflow_server.run_prompt(controlnet_prompt(strength=0.0), timeout=600)
    difference = np.abs(saved(workflow_server, guided, "13") - saved(workflow_server, unguided, "13")).mean()
    assert difference > 1.0, "the ControlNet must act on the guide (strength 1 and 0 give the same image)"
