"""Where the pack runs ComfyUI's models differently from ComfyUI's own choice, on the CPU only, each measured.

* The FLUX transformer's attention on torch SDPA where ComfyUI fell back to sub-quadratic attention on its own:
  bench/dit_options.py measured the DiT pass at 0.81x the time at 512² (5 of 5 interleaved rounds).
* The VAE, while a prediction encodes and decodes, with its convolutions in channels-last memory format (the
  layout oneDNN's CPU convolutions work in) and its attention blocks on torch SDPA, ComfyUI's own backend, where
  ComfyUI picked its fallback: bench/stages.py measures it (docs/performance.md). The weights go back to their
  layout afterwards, so other nodes using the same VAE see it unchanged.

GPUs keep ComfyUI's choices (they were not measured); so does a backend the user chose with a flag, and an
attention override another node already set on the model. The results equal ComfyUI's up to float rounding.
"""

from __future__ import annotations

import contextlib

import torch

from . import compat


def prefer_sdpa_for_model(patcher) -> None:
    if getattr(patcher, "load_device", None) is None or patcher.load_device.type != "cpu":
        return
    if compat.attention_backend_chosen_by_flag() or not compat.model_attention_is_sub_quadratic_fallback():
        return
    compat.override_model_attention(patcher, compat.sdpa_model_attention())


@contextlib.contextmanager
def fast_cpu_vae(vae):
    """The VAE in its CPU fast path for the duration of the block (nothing changes on other devices)."""
    if compat.vae_device(vae).type != "cpu":
        yield
        return
    network = compat.vae_network(vae)
    fallback, sdpa = compat.vae_attention_backends()
    swapped = [] if compat.attention_backend_chosen_by_flag() else [
        block for block in network.modules() if getattr(block, "optimized_attention", None) is fallback]
    network.to(memory_format=torch.channels_last)
    for block in swapped:
        block.optimized_attention = sdpa
    try:
        yield
    finally:
        for block in swapped:
            block.optimized_attention = fallback
        network.to(memory_format=torch.contiguous_format)
