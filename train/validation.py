"""Validation during training: the official one-step prediction of held-out samples, scored with the paper's
metrics (the e2p_eval definitions)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from e2p_core.flow import seeded_noise
from e2p_core.release import DEFAULT_SEED
from e2p_core.tasks import task_spec

from .assembly import Models
from .model import one_step_prediction
from .step import reference_latents


def depth_metrics(prediction: np.ndarray, sample: dict, valid: np.ndarray) -> dict[str, float] | None:
    from e2p_eval import protocol

    depth = sample["depth"][0].float().numpy()
    gt_valid = valid & (depth > 0) & np.isfinite(depth)
    if gt_valid.sum() < protocol.MIN_VALID_PIXELS:
        return None
    target = protocol.DepthTarget(depth=depth, eval_mask=gt_valid, min_depth=float(depth[gt_valid].min()) * 0.999,
                                  max_depth=float(depth[gt_valid].max()) * 1.001)
    result = protocol.evaluate_depth(prediction, target, "sqrt")
    return None if result is None else {"abs_rel": result["abs_rel"], "delta1": result["delta1"]}


def normal_metrics(prediction: np.ndarray, sample: dict, valid: np.ndarray) -> dict[str, float]:
    from e2p_eval import metrics

    truth = sample["target"].permute(1, 2, 0).float().numpy()
    stats = metrics.angular_statistics(metrics.angular_errors(prediction[valid], truth[valid]))
    return {"mean_angle": stats["mean"], "median_angle": stats["median"], "a11_25": stats["a11_25"]}


def matting_metrics(prediction: np.ndarray, sample: dict, valid: np.ndarray) -> dict[str, float]:
    from e2p_eval import metrics

    truth = ((sample["target"].float().mean(dim=0) + 1.0) / 2.0).numpy()
    return dict(metrics.sad_mse_mad(prediction, truth))


# task -> scorer(decoded value [H, W] or [H, W, 3], sample, valid mask [H, W]) -> metrics, None when the sample
# cannot be scored. Which metrics each task reports during training is validation's own choice (the paper's headline
# ones, with the e2p_eval definitions).
SAMPLE_SCORERS = {"depth": depth_metrics, "normal": normal_metrics, "matting": matting_metrics}


def sample_metrics(task: str, decoded: torch.Tensor, sample: dict) -> dict[str, float] | None:
    """Metrics of one decoded prediction [3, H, W] against its ground truth (e2p_eval definitions)."""
    spec = task_spec(task)
    prediction = spec.decode(decoded.permute(1, 2, 0).float().cpu()).numpy()
    return SAMPLE_SCORERS[spec.name](prediction, sample, sample["valid"][0].bool().numpy())


@torch.no_grad()
def predict_decoded(models: Models, denoiser, sample: dict, cond: torch.Tensor, pooled: torch.Tensor,
                    task: str) -> torch.Tensor:
    """The official one-step prediction for one sample, decoded to [3, H, W] (seed-42 noise, as the nodes)."""
    device = cond.device
    batch = {k: (v[None] if torch.is_tensor(v) else v) for k, v in sample.items()}
    references = reference_latents(models.vae, batch, task, device)
    noise = seeded_noise(references[0].shape, DEFAULT_SEED).to(device)
    estimate = one_step_prediction(denoiser, references, cond, pooled, noise)
    return models.vae.decode(estimate)[0]


def validate(accelerator, models: Models, denoiser, dataset: Dataset, cond, pooled, task: str,
             max_samples: int) -> dict[str, float]:
    """Mean metrics over up to ``max_samples`` held-out samples, shared over processes (all run the same number
    of forwards, so sharded models stay in step)."""
    from accelerate.utils import gather_object

    total = min(len(dataset), max_samples)
    world, rank = accelerator.num_processes, accelerator.process_index
    rounds = math.ceil(total / world)
    results = []
    denoiser.eval()
    try:
        for r in range(rounds):
            index = r * world + rank
            sample = dataset[min(index, total - 1)]
            decoded = predict_decoded(models, denoiser, sample, cond, pooled, task)
            if index < total:
                values = sample_metrics(task, decoded, sample)
                if values is not None:
                    results.append(values)
    finally:
        denoiser.train()
    gathered = gather_object(results)
    if not gathered:
        return {}
    return {key: float(np.mean([g[key] for g in gathered])) for key in gathered[0]} | {"images": float(len(gathered))}
