"""The official flow-matching schedule (models/flowmatch_scheduler.py in the release), torch only.

sigma(s) = shift * s / (1 + (shift - 1) * s) for s = linspace(1, sigma_min, N), timesteps = 1000 * sigma.
"""

from __future__ import annotations

import torch

SHIFT = 3.0
SIGMA_MIN = 0.003 / 1.002
TRAIN_TIMESTEPS = 1000


def shifted_sigmas(steps: int, shift: float = SHIFT, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """The official N-entry sigma table (float32, as the release computes it)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    s = torch.linspace(1.0, sigma_min, steps, dtype=torch.float32)
    return shift * s / (1 + (shift - 1) * s)


def training_sigmas() -> torch.Tensor:
    """The 1000-entry table used for training and for the single-step path."""
    return shifted_sigmas(TRAIN_TIMESTEPS)


def one_step_landing_sigma() -> float:
    """Where the single-step path lands: the 1000-entry table's entry for timestep 0, i.e. its last (~0.008929)."""
    return float(training_sigmas()[-1])


def inference_sigmas(steps: int) -> list[float]:
    """Sigmas visited by the official sampler, including where it lands.

    One step: 1 -> the training table's smallest sigma (the model is not asked to reach 0). N > 1 steps: the N-entry
    table, then a last Euler step to 0.
    """
    if steps == 1:
        return [1.0, one_step_landing_sigma()]
    return [float(s) for s in shifted_sigmas(steps)] + [0.0]


def training_loss_weights(timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """Per-timestep flow-loss weights of the release: a Gaussian bump over the 1000 table timesteps, mean 1."""
    if timesteps is None:
        timesteps = training_sigmas() * TRAIN_TIMESTEPS
    n = TRAIN_TIMESTEPS
    bump = torch.exp(-2 * ((timesteps - n / 2) / n) ** 2)
    shifted = bump - bump.min()
    return shifted * (n / shifted.sum())
