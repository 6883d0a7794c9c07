"""One training step's loss: encode the batch, noise the target, ask the denoiser for the velocity, and score it
with the objective (flow matching on the velocity, consistency on the decoded one-step estimate)."""

from __future__ import annotations

import torch

from e2p_core.flow import interpolate, one_step_estimate
from e2p_core.tasks import task_spec

from . import objective
from .assembly import Models
from .errors import TrainingError
from .model import FluxVAE


def loss_batch(batch: dict, task: str, device: torch.device) -> dict:
    """The tensors the losses read, moved to the device, masks as [B, H, W]."""
    spec = task_spec(task)
    out = {"target": batch["target"].to(device), "valid": batch["valid"].to(device)[:, 0].bool()}
    required = (["trimap"] if spec.uses_trimap else []) + (["hint"] if spec.needs_hint else [])
    if any(key not in batch for key in required):
        raise TrainingError(f"{task} samples need " + " and ".join(f"'{key}'" for key in required) + " (see "
                            "TRAIN_DATA_INTERFACE); the dataset gave " + ", ".join(sorted(batch)))
    if spec.uses_trimap:
        out["trimap"] = batch["trimap"].to(device)[:, 0]
    return out


def reference_latents(vae: FluxVAE, batch: dict, task: str, device: torch.device) -> list[torch.Tensor]:
    """The input image (and, for a task with a hint, the hint map) as model-space Kontext references."""
    references = [vae.encode(batch["image"].to(device))]
    if task_spec(task).needs_hint:
        references.append(vae.encode(batch["hint"].to(device)))
    return references


def compute_loss(models: Models, denoiser, batch: dict, cond: torch.Tensor, pooled: torch.Tensor,
                 config: objective.ObjectiveConfig, epoch: int, epoch_progress: float,
                 global_mean) -> objective.LossTerms:
    """The objective's loss terms for one micro-batch. ``global_mean`` averages a value over all processes (the
    objective normalises the consistency term over the global batch with it)."""
    device = cond.device
    targets = loss_batch(batch, config.task, device)
    with torch.no_grad():
        references = reference_latents(models.vae, batch, config.task, device)
        clean = models.vae.encode(targets["target"])
    indices = batch["index"].tolist()
    draw = objective.draw_timesteps(config, epoch, indices)
    noise = objective.draw_noise(config, tuple(clean.shape[1:]), epoch, indices, draw).to(device)
    sigma = draw.sigmas.to(device)[:, None, None, None]
    noisy = interpolate(clean, noise, sigma)
    count = clean.shape[0]
    velocity = denoiser(noisy, references, cond.expand(count, -1, -1), pooled.expand(count, -1), draw.model_sigmas)
    flow = consistency = None
    if config.uses_flow:
        flow = objective.flow_loss_per_sample(velocity, noise - clean, objective.flow_loss_mask(config.task, targets),
                                              draw.weights.to(device)).mean()
    if config.uses_consistency:
        landing = draw.landing_sigmas.to(device)[:, None, None, None]
        estimate = one_step_estimate(noisy, velocity, landing)
        decoded = models.vae.decode(estimate)
        consistency = objective.consistency_loss(config, decoded, targets, draw.weights.to(device))
    return objective.combine(config, flow, consistency, epoch_progress, global_mean)
