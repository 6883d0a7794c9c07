"""The flow-matching math the nodes and the trainer share, torch only: time embedding, noise, interpolation, step.

Written once here so that ComfyUI inference (``e2p_core.comfyui``) and the diffusers trainer (``train/``) compute
the same numbers with the same operations in the same order.

Conventions (the release's): x_sigma = (1 - sigma) x_0 + sigma * noise, and the model predicts the velocity
v = noise - x_0, so one Euler step from sigma to sigma' is x + (sigma' - sigma) v.
"""

from __future__ import annotations

import math

import torch

from .release import DEFAULT_SEED

EMBEDDING_DIM = 256
MAX_PERIOD = 10000
TIME_FACTOR = 1000.0
START_SIGMA = 1.0     # the single-step path starts from pure noise


def official_time_embedding(sigmas: torch.Tensor, dim: int = EMBEDDING_DIM) -> torch.Tensor:
    """The official time embedding for sigmas in [0, 1], as float32 [N, dim].

    The released checkpoints were trained with a time embedder that rounds the timestep 1000 * sigma and the
    frequencies exp(-ln(10000) i / 128) to bfloat16 before multiplying them in float32; laid out [cos, sin] like
    BFL's. Stock ComfyUI / diffusers keep float32 frequencies, which moves the prediction visibly.
    """
    half = dim // 2
    timesteps = (sigmas.float() * TIME_FACTOR).to(torch.bfloat16).float()
    exponents = -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=sigmas.device) / half
    frequencies = torch.exp(exponents).to(torch.bfloat16).float()
    angles = timesteps[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def seeded_noise(shape, seed: int = DEFAULT_SEED) -> torch.Tensor:
    """Standard normal noise from a CPU generator, so a seed gives the same noise on every device (the official
    code draws on its run device, CUDA there)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def interpolate(clean: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """The point at ``sigma`` on the straight path from ``clean`` (sigma 0) to ``noise`` (sigma 1)."""
    return (1.0 - sigma) * clean + sigma * noise


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma, target_sigma) -> torch.Tensor:
    """One Euler step of the flow from ``sigma`` to ``target_sigma`` (floats or broadcastable tensors)."""
    return x + (target_sigma - sigma) * velocity


def one_step_estimate(x: torch.Tensor, velocity: torch.Tensor, landing_sigma) -> torch.Tensor:
    """The official single-step estimate x + (sigma' - 1) v: a step from sigma 1 to ``landing_sigma``.

    Inference takes it from pure noise; the official training objective takes it from any noisy latent (also
    counting from sigma 1), and decodes the result for its pixel-space loss.
    """
    return euler_step(x, velocity, START_SIGMA, landing_sigma)
