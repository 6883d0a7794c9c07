"""A small programmatic entry point for scripts (evaluation, parity tests, benchmarks) running inside a
Python process where ComfyUI is importable. The nodes bind and predict through the same two calls
(``E2PModel.bind``, ``pipeline.predict_task``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import compat, pipeline, sampling
from ..safetensors_io import read_safetensors
from ..hints import MattingConditioning, MattingHints
from .conditioning import conditioning_file_for_task
from .loader import BoundModel, load_e2p_checkpoint
from ..release import DEFAULT_SEED, PROCESSING_RESOLUTION
from ..tasks import task_spec


def load_vae(path: str):
    """A ComfyUI VAE (the FLUX ae) from a safetensors file."""
    tensors, _ = read_safetensors(path)
    return compat.load_vae(tensors)


@dataclass
class E2PPredictor:
    """A bound model and a VAE, loaded from files with the same checks as the loader nodes."""

    model: BoundModel
    vae: object

    @property
    def task(self) -> str:
        return self.model.task

    @classmethod
    def from_files(cls, task: str, model: str, conditioning: str, vae: str | None = None, lora: str | None = None,
                   dtype: str = "default", lora_strength: float = 1.0, time_embedding: str = "auto"):
        """``task`` is checked against the files' metadata and names as Load E2P Model checks its task widget;
        the conditioning file must hold that task's prompt (checked before the long model load)."""
        task_spec(task)
        saved = conditioning_file_for_task(conditioning, task)
        e2p = load_e2p_checkpoint(model, dtype, lora, lora_strength, time_embedding)
        bound = e2p.bind(task, [os.path.basename(path) for path in (lora, model) if path], lambda _: saved)
        return cls(bound, load_vae(vae) if vae else None)

    def predict_latent(self, reference_latents: list[torch.Tensor], noise: torch.Tensor | None = None,
                       steps: int = 1, seed: int = DEFAULT_SEED) -> torch.Tensor:
        """Raw VAE latents in, predicted raw latent out (see e2p_core.comfyui.sampling.predict_latent)."""
        with torch.inference_mode():
            return sampling.predict_latent(self.model.patcher, reference_latents, self.model.cond, self.model.pooled,
                                           noise=noise, seed=seed, steps=steps)

    def predict(self, images: torch.Tensor, hints: list[MattingHints] | None = None,
                processing_resolution: int = PROCESSING_RESOLUTION, resize_mode: str = "aspect", steps: int = 1,
                seed: int = DEFAULT_SEED, hint_maps: torch.Tensor | None = None, hint_reference: bool = True,
                frames_per_pass: int = 1, ensemble_size: int = 1) -> torch.Tensor:
        """IMAGE [B, H, W, 3] in [0, 1] -> depth [B, H, W] (sqrt space, near 0) / unit normals [B, H, W, 3] /
        alpha [B, H, W], through e2p_core.comfyui.pipeline.predict_task. The matting options (``hints``,
        ``hint_maps``, ``hint_reference``) are those of e2p_core.hints.MattingConditioning."""
        if self.vae is None:
            raise ValueError("predict() needs a VAE: pass vae=<path to ae.safetensors> to from_files")
        options = pipeline.PredictionOptions(processing_resolution, resize_mode, steps, seed, frames_per_pass,
                                             ensemble_size)
        given = hints is not None or hint_maps is not None or not hint_reference
        matting = (MattingConditioning(hints, hint_maps=hint_maps, hint_reference=hint_reference)
                   if given or task_spec(self.task).needs_hint else None)
        with torch.inference_mode():
            return pipeline.predict_task(self.model, self.vae, images, options, matting).prediction
