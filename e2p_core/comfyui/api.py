"""A small programmatic entry point for scripts (evaluation, parity tests, benchmarks) running inside a
Python process where ComfyUI is importable. The nodes use the same functions underneath."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import compat, pipeline, sampling
from ..safetensors_io import read_safetensors
from ..saved_conditioning import load_conditioning
from ..hints import MattingHints
from .loader import E2PModel, load_e2p_checkpoint
from ..release import DEFAULT_SEED, PROCESSING_RESOLUTION
from ..tasks import task_spec


def load_vae(path: str):
    """A ComfyUI VAE (the FLUX ae) from a safetensors file."""
    tensors, _ = read_safetensors(path)
    return compat.load_vae(tensors)


@dataclass
class E2PPredictor:
    task: str
    model: E2PModel
    vae: object
    cond: torch.Tensor
    pooled: torch.Tensor

    @classmethod
    def from_files(cls, task: str, model: str, conditioning: str, vae: str | None = None, lora: str | None = None,
                   dtype: str = "default", lora_strength: float = 1.0, time_embedding: str = "auto"):
        task_spec(task)
        e2p = load_e2p_checkpoint(model, dtype, lora, lora_strength, time_embedding)
        cond, pooled, _ = load_conditioning(conditioning)
        return cls(task, e2p, load_vae(vae) if vae else None, cond, pooled)

    def predict_latent(self, reference_latents: list[torch.Tensor], noise: torch.Tensor | None = None,
                       steps: int = 1, seed: int = DEFAULT_SEED) -> torch.Tensor:
        """Raw VAE latents in, predicted raw latent out (see e2p_core.comfyui.sampling.predict_latent)."""
        with torch.inference_mode():
            return sampling.predict_latent(self.model.patcher, reference_latents, self.cond, self.pooled,
                                           noise=noise, seed=seed, steps=steps)

    def predict(self, images: torch.Tensor, hints: list[MattingHints] | None = None,
                processing_resolution: int = PROCESSING_RESOLUTION, resize_mode: str = "aspect", steps: int = 1,
                seed: int = DEFAULT_SEED, hint_maps: torch.Tensor | None = None, hint_reference: bool = True,
                frames_per_pass: int = 1, ensemble_size: int = 1) -> torch.Tensor:
        """IMAGE [B, H, W, 3] in [0, 1] -> depth [B, H, W] (sqrt space, near 0) / unit normals [B, H, W, 3] /
        alpha [B, H, W]. The matting conditioning options (``hints``, ``hint_maps``, ``hint_reference``),
        ``frames_per_pass`` and ``ensemble_size`` are those of e2p_core.comfyui.pipeline.predict_task."""
        if self.vae is None:
            raise ValueError("predict() needs a VAE: pass vae=<path to ae.safetensors> to from_files")
        with torch.inference_mode():
            result = pipeline.predict_task(self.model.patcher, self.vae, self.cond, self.pooled, images, self.task,
                                           processing_resolution, resize_mode, steps, seed, hints,
                                           frames_per_pass=frames_per_pass, ensemble_size=ensemble_size,
                                           hint_maps=hint_maps, hint_reference=hint_reference)
        return result.prediction
