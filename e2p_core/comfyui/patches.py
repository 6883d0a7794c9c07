"""Model patches that make ComfyUI's FLUX forward compute what the official Edit2Perceive forward computes.

Both are ModelPatcher object patches (plus one wrapper), so they ride along with every clone, survive LoRA
patching, lowvram offloading and the stock sampler path, and vanish when the patcher is unloaded.

1. Time embedding. The released checkpoints were trained with a time embedder that rounds its 128 sinusoid
   frequencies to bfloat16 (and receives a bfloat16 timestep) before multiplying; ComfyUI uses float32 frequencies.
   At t = 1000 the two embeddings differ by up to ~1.1 per component, enough to move the prediction visibly.
   The embedding itself is ``e2p_core.flow.official_time_embedding``, the one the trainer uses too.
2. Reference placement. Matting feeds two references (image, hint map); officially both sit at RoPE index 1 with
   no spatial offset. The conditioning asks for ComfyUI's "offset" method explicitly (index 1 for every
   reference, see e2p_core.comfyui.sampling); this patch removes the offset it would add to the second one.
"""

from __future__ import annotations

import torch

from . import compat, cpu_speedups
from ..flow import official_time_embedding
from ..release import TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK

WRAPPER_KEY = "edit2perceive"


class OfficialTimeEmbedder(torch.nn.Module):
    """Stands in for ``diffusion_model.time_in``: same submodules (so weight keys and LoRA paths are unchanged),
    but fed the official embedding of the timesteps the wrapper below hands it."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        for name, child in original.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "original", original)
        self.pending_sigmas: torch.Tensor | None = None

    def forward(self, stock_embedding: torch.Tensor) -> torch.Tensor:
        if self.pending_sigmas is None:
            raise RuntimeError("the Edit2Perceive time-embedding patch ran without its wrapper; reload the E2P model")
        official = official_time_embedding(self.pending_sigmas.to(stock_embedding.device))
        return self.original(official.to(stock_embedding.dtype))


def _time_embedding_wrapper(executor, x, timestep, *args, **kwargs):
    """Hand the forward's timesteps to the patched time embedder for the duration of one forward."""
    embedder = executor.class_obj.time_in
    if not isinstance(embedder, OfficialTimeEmbedder):
        return executor(x, timestep, *args, **kwargs)
    embedder.pending_sigmas = timestep
    try:
        return executor(x, timestep, *args, **kwargs)
    finally:
        embedder.pending_sigmas = None


class ZeroOffsetReferences:
    """Stands in for ``diffusion_model.process_img``: reference latents (RoPE index 1) get no spatial offset."""

    def __init__(self, original):
        self.original = original

    def __call__(self, x, *args, **kwargs):
        if kwargs.get("index", 0) == 1:
            kwargs["h_offset"] = 0
            kwargs["w_offset"] = 0
        return self.original(x, *args, **kwargs)


def apply_e2p_patches(patcher, time_embedding: str = TIME_EMBEDDING_OFFICIAL):
    """Return a clone of ``patcher`` that runs the official Edit2Perceive forward."""
    if time_embedding not in (TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK):
        raise ValueError(f"unknown time embedding '{time_embedding}'")
    patched = patcher.clone()
    diffusion_model = patched.get_model_object("diffusion_model")
    if not hasattr(diffusion_model, "time_in") or not hasattr(diffusion_model, "process_img"):
        raise TypeError("this MODEL is not a FLUX.1 transformer; Edit2Perceive needs FLUX.1 Kontext")
    stock_process_img = patched.get_model_object("diffusion_model.process_img")
    if isinstance(stock_process_img, ZeroOffsetReferences):
        stock_process_img = stock_process_img.original
    patched.add_object_patch("diffusion_model.process_img", ZeroOffsetReferences(stock_process_img))
    stock_time_in = patched.get_model_object("diffusion_model.time_in")
    if isinstance(stock_time_in, OfficialTimeEmbedder):
        stock_time_in = stock_time_in.original
    if time_embedding == TIME_EMBEDDING_OFFICIAL:
        patched.add_object_patch("diffusion_model.time_in", OfficialTimeEmbedder(stock_time_in))
        wrapper_type = compat.diffusion_model_wrapper_type()
        if WRAPPER_KEY not in patched.wrappers.get(wrapper_type, {}):
            patched.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, _time_embedding_wrapper)
    else:
        patched.object_patches.pop("diffusion_model.time_in", None)
    cpu_speedups.prefer_sdpa_for_model(patched)
    return patched
