"""The model every benchmark measures: random weight files of a ``bench.shapes`` shape in a ComfyUI base folder,
cached prompt conditioning, the test images, and the bare ``e2p_core`` predictor on them.

Speed and memory do not depend on trained values, so the weights are random (``e2p_dev.tiny_models``). Files are
written once per shape into a work folder laid out as a ComfyUI base directory, so the bare ``e2p_core`` call, the
node graph and diffusers all read the same tensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.shapes import DitShape
from e2p_dev import tiny_models

TASK = "depth"
CHECKPOINT_NAME = "e2p_bench.safetensors"
VAE_NAME = "ae_bench.safetensors"
IMAGE_PREFIX = "bench_input"
CONDITIONING_FINGERPRINT = "benchrandom"
WEIGHT_SEED = 1234


def image_name(resolution: int) -> str:
    """The test image's file name in the base folder's input/ (what LoadImage is given)."""
    return f"{IMAGE_PREFIX}_{resolution}.png"


@dataclass(frozen=True)
class BenchFiles:
    checkpoint: Path
    vae: Path
    conditioning: Path
    base_dir: Path

    def image_file(self, resolution: int) -> Path:
        return self.base_dir / "input" / image_name(resolution)


@dataclass
class RandomWeights:
    """The benchmark model's tensors in memory: what ``bench_files`` writes, or what the GPU suite builds the 12B
    shape from without writing it."""

    dit: dict[str, torch.Tensor]          # BFL names, on the CPU (where ComfyUI's loader expects them)
    vae: dict[str, torch.Tensor]          # ComfyUI FLUX VAE names
    cond: torch.Tensor
    pooled: torch.Tensor


def random_weights(shape: DitShape, device: torch.device | str = "cpu") -> RandomWeights:
    """Random weights of ``shape`` (generated on ``device``, returned on the CPU) with the full-size FLUX VAE and
    stand-ins for the cached T5 and pooled CLIP embeddings of the task prompt. Needs ComfyUI imported (the VAE
    skeleton is ComfyUI's own)."""
    dit = tiny_models.scaled_bfl_state_dict(shape.flux, seed=WEIGHT_SEED, device=torch.device(device).type)
    cond, pooled = tiny_models.conditioning(seed=WEIGHT_SEED + 1, tokens=shape.text_tokens,
                                            context_dim=shape.context_dim)
    return RandomWeights(dit, tiny_models.flux_vae_state_dict(seed=WEIGHT_SEED), cond, pooled)


def bench_files(work_dir: Path, shape: DitShape) -> BenchFiles:
    """The ComfyUI base directory for ``shape`` under ``work_dir``, with the weight files and conditioning.

    Files are written on first use and reused while their recorded shape matches (the full shape is 24 GB).
    Needs ComfyUI importable (the VAE skeleton is ComfyUI's own).
    """
    from safetensors.torch import save_file

    from e2p_core.comfyui import conditioning
    from e2p_core.saved_conditioning import save_conditioning
    from e2p_core.metadata_keys import META_PROMPT, META_TASK
    from e2p_core.tasks import task_spec

    base = work_dir / shape.name
    models = base / "models"
    checkpoint = models / "edit2perceive" / CHECKPOINT_NAME
    vae = models / "vae" / VAE_NAME
    cond_path = Path(conditioning.cache_file(str(models / "embeddings"), TASK, CONDITIONING_FINGERPRINT))
    stamp_path = base / "shape.json"
    stamp = json.dumps({**asdict(shape), "seed": WEIGHT_SEED, "vae": "flux-4-level"})
    if stamp_path.is_file() and stamp_path.read_text() == stamp and checkpoint.is_file() and vae.is_file() \
            and cond_path.is_file():
        return BenchFiles(checkpoint, vae, cond_path, base)
    for folder in (checkpoint.parent, vae.parent, cond_path.parent, base / "input"):
        folder.mkdir(parents=True, exist_ok=True)
    print(f"[bench] writing random weights for {shape.describe()} to {base}", flush=True)
    weights = random_weights(shape, "cuda" if torch.cuda.is_available() else "cpu")
    save_file(weights.dit, str(checkpoint), metadata={"e2p.task": TASK})
    save_file(weights.vae, str(vae))
    save_conditioning(str(cond_path), weights.cond, weights.pooled,
                      {META_TASK: TASK, META_PROMPT: task_spec(TASK).prompt})
    stamp_path.write_text(stamp)
    return BenchFiles(checkpoint, vae, cond_path, base)


def test_image(resolution: int, seed: int = 0) -> torch.Tensor:
    """IMAGE [1, R, R, 3] in [0, 1]: smooth gradients plus texture, quantised to 8 bit like a loaded picture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:resolution, 0:resolution] / resolution
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + 4 * y)], axis=-1) * 0.8 + 0.2 * rng.random((resolution,
                                                                                                 resolution, 3))
    return torch.from_numpy(np.round(rgb.clip(0, 1) * 255).astype(np.float32) / 255.0)[None]


def write_test_image(files: BenchFiles, resolution: int) -> Path:
    from PIL import Image

    path = files.image_file(resolution)
    pixels = (test_image(resolution)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def bare_predictor(files: BenchFiles, weight_dtype: str = "default"):
    """The bare ``e2p_core`` entry point on the benchmark files (what a Python script would call)."""
    from e2p_core.comfyui.api import E2PPredictor

    return E2PPredictor.from_files(TASK, str(files.checkpoint), str(files.conditioning), str(files.vae),
                                   dtype=weight_dtype)


def predictor_from_weights(weights: RandomWeights, weight_dtype: str = "default"):
    """The bare ``e2p_core`` predictor on in-memory tensors: the loader's FLUX build and patches, as
    ``load_e2p_checkpoint`` does for a file, without the file."""
    from e2p_core.comfyui import compat
    from e2p_core.comfyui.api import E2PPredictor
    from e2p_core.comfyui.loader import E2PModel, build_flux_patcher
    from e2p_core.comfyui.patches import apply_e2p_patches
    from e2p_core.release import TIME_EMBEDDING_OFFICIAL

    patcher, _ = build_flux_patcher(weights.dit, weight_dtype)
    model = E2PModel(apply_e2p_patches(patcher, TIME_EMBEDDING_OFFICIAL), TASK, TIME_EMBEDDING_OFFICIAL)
    return E2PPredictor(model.for_task(TASK, weights.cond, weights.pooled), compat.load_vae(weights.vae))


def depth_prompt(resolution: int, seed: int) -> dict:
    """The bench files as a graph: LoadE2PModel + VAELoader + LoadImage -> E2PDepth -> PreviewImage, at the image's
    own size."""
    return {
        "model": {"class_type": "LoadE2PModel", "inputs": {
            "checkpoint": CHECKPOINT_NAME, "weight_dtype": "default", "task": TASK, "lora": "none",
            "lora_strength": 1.0, "time_embedding": "auto"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_NAME}},
        "image": {"class_type": "LoadImage", "inputs": {"image": image_name(resolution)}},
        "depth": {"class_type": "E2PDepth", "inputs": {
            "e2p_model": ["model", 0], "vae": ["vae", 0], "image": ["image", 0], "processing_resolution": resolution,
            "resize_mode": "aspect", "steps": 1, "seed": seed}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["depth", 0]}},
    }
