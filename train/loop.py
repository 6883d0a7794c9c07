"""The optimisation loop: epochs of micro-batches, optimiser steps under accelerate's accumulation, and after each
step the EMA, the records, validation and checkpoints on their schedules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from . import checkpoint, objective
from .assembly import Models
from .config import TrainConfig
from .records import RunRecords
from .step import compute_loss
from .validation import validate
from .weights import save_checkpoint


@dataclass
class TrainingLoop:
    accelerator: object
    config: TrainConfig
    models: Models
    denoiser: torch.nn.Module            # models.denoiser as accelerate prepared it
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    progress: checkpoint.TrainingProgress
    ema: checkpoint.ExponentialMovingAverage | None
    cond: torch.Tensor
    pooled: torch.Tensor
    val_dataset: Dataset | None
    records: RunRecords
    total_steps: int
    last_checkpoint: str | None          # the newest checkpoint; a resumed run starts from it

    def __post_init__(self):
        self.objective = self.config.objective_config()
        self.saved_step = self.progress.step if self.last_checkpoint else -1

    def run(self) -> str | None:
        """Train up to ``total_steps``, checkpointing the last step too; returns the newest checkpoint."""
        while self.progress.step < self.total_steps:
            if self.run_epoch():
                break
            self.progress.epoch += 1
            self.progress.batches_in_epoch = 0
        if self.saved_step != self.progress.step:
            self.save()
        return self.last_checkpoint

    def run_epoch(self) -> bool:
        """The current epoch's remaining micro-batches; True when the run reached its last step within them."""
        loader = self.accelerator.skip_first_batches(self.loader, self.progress.batches_in_epoch) \
            if self.progress.batches_in_epoch else self.loader
        # accelerate's loaders count their own iterations and push them into the sampler; a resumed (or skipping)
        # loader would count from 0, so the epoch is set explicitly.
        loader.set_epoch(self.progress.epoch)
        for batch in loader:
            self.train_micro_batch(batch)
            if self.progress.step >= self.total_steps:
                return True
        return False

    def train_micro_batch(self, batch: dict) -> None:
        progress, accelerator = self.progress, self.accelerator
        epoch_progress = progress.epoch + progress.batches_in_epoch / max(1, len(self.loader))
        with accelerator.accumulate(self.denoiser):
            terms = compute_loss(self.models, self.denoiser, batch, self.cond, self.pooled, self.objective,
                                 progress.epoch, epoch_progress, self.records.global_mean)
            accelerator.backward(terms.total)
            if accelerator.sync_gradients and self.config.max_grad_norm is not None:
                accelerator.clip_grad_norm_([p for _, p in self.models.trainable], self.config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        progress.batches_in_epoch += 1
        self.records.add_micro_batch(terms)
        if accelerator.sync_gradients:
            progress.step += 1
            self.after_step(epoch_progress, terms)

    def after_step(self, epoch_progress: float, terms: objective.LossTerms) -> None:
        step, config = self.progress.step, self.config
        if self.ema is not None:
            self.ema.update([(n, p) for n, p in self.accelerator.unwrap_model(self.denoiser).named_parameters()
                             if p.requires_grad])
        self.records.write_step(step, epoch_progress, self.scheduler.get_last_lr()[0], terms.weight)
        if self.val_dataset is not None and (step % config.validate_every == 0 or step == self.total_steps):
            scores = validate(self.accelerator, self.models, self.denoiser, self.val_dataset, self.cond, self.pooled,
                              config.task, config.val_max_samples)
            self.records.write_validation(step, scores)
        if step % config.checkpoint_every == 0 or step == self.total_steps:
            self.save()

    def save(self) -> None:
        self.last_checkpoint = save_checkpoint(self.accelerator, self.denoiser, self.config, self.progress.step,
                                               self.ema)
        self.saved_step = self.progress.step
