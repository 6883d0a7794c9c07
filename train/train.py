"""The training run: accelerate for devices, precision, accumulation and every distributed backend.

Nothing here distributes work by hand. Batches are global (``train.batches``) and all per-sample randomness
(timestep, noise) is derived from (seed, epoch, sample index), so N processes see the same samples, timesteps and
noise as one process with an N-times larger batch, and a resumed run continues the uninterrupted run's data order.

A run is assembled here and handed to the loop; each part has its own module: ``batches`` (datasets and loader),
``assembly`` (models, optimiser, schedule), ``step`` (one step's loss), ``loop``, ``validation``, ``weights``
(export and reload) and ``records`` (logs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from . import checkpoint, records
from .assembly import build_models, build_optimizer, build_scheduler
from .batches import build_datasets, build_loader
from .conditioning import prepare_conditioning
from .config import TrainConfig
from .errors import TrainingError
from .loop import TrainingLoop
from .weights import publish_export

log = logging.getLogger("e2p.train")


@dataclass
class RunResult:
    steps: int
    export_path: str | None
    last_checkpoint: str | None


def start_accelerator(config: TrainConfig, use_tensorboard: bool):
    """A fresh ``Accelerator`` for this run's precision, accumulation and output folder.

    accelerate keeps its settings in process-wide singletons; clearing them (the distributed process group stays)
    lets one Python process run several trainings, e.g. with another precision.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        project_config=ProjectConfiguration(project_dir=config.output_dir,
                                            logging_dir=os.path.join(config.output_dir, "tensorboard")),
        log_with="tensorboard" if use_tensorboard else None)


def check_ema_supported(config: TrainConfig, accelerator) -> None:
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type == DistributedType.FSDP or (
        accelerator.distributed_type == DistributedType.DEEPSPEED
        and accelerator.state.deepspeed_plugin.zero_stage == 3)
    if config.ema_decay is not None and sharded:
        raise TrainingError("ema_decay needs every process to hold whole parameters; it works with DDP and "
                            "DeepSpeed ZeRO-2, not with FSDP or ZeRO-3. Remove ema_decay or switch config")


def load_conditioning(config: TrainConfig, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's text conditioning on the run's device: encoded once by the main process, then read from its cache."""
    device = accelerator.device
    cache = config.conditioning or os.path.join(config.output_dir, f"conditioning-{config.task}.safetensors")
    with accelerator.main_process_first():
        cond, pooled = prepare_conditioning(config.task, cache, config.text_encoders or config.base_model,
                                            device if torch.cuda.is_available() else "cpu")
    return cond.to(device), pooled.to(device)


def plan_total_steps(config: TrainConfig, loader, accelerator, models) -> int:
    """The optimiser steps the run trains in total (epochs, capped by max_steps); logs the run's shape."""
    steps_per_epoch = len(loader) // config.gradient_accumulation_steps
    if steps_per_epoch < 1:
        raise TrainingError(f"one epoch has {len(loader)} batches, fewer than gradient_accumulation_steps "
                            f"({config.gradient_accumulation_steps}); use more data or accumulate less")
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    if accelerator.is_main_process:
        log.info("task %s, %s fine-tune, %d trainable parameters, %d processes, global batch %d x %d accumulation, "
                 "%d steps per epoch, %d steps in total", config.task, config.mode,
                 sum(p.numel() for _, p in models.trainable), accelerator.num_processes,
                 config.batch_size * accelerator.num_processes, config.gradient_accumulation_steps, steps_per_epoch,
                 total_steps)
    return total_steps


def datasets_for_run(config: TrainConfig, processes: int, train_dataset: Dataset | None,
                     val_dataset: Dataset | None, collate_fn):
    """(training set, validation set, collate function): those passed in, else the config's (``train.data``)."""
    if train_dataset is None:
        train_dataset, built_val, built_collate = build_datasets(config, config.batch_size * processes)
        val_dataset = val_dataset if val_dataset is not None else built_val
        collate_fn = collate_fn or built_collate
    if collate_fn is None:
        from .data import collate as collate_fn
    return train_dataset, val_dataset, collate_fn


def checkpoint_to_resume(config: TrainConfig, resume: bool, is_main: bool) -> str | None:
    """The newest checkpoint in output_dir when resuming; a folder with checkpoints needs ``resume``."""
    previous = checkpoint.latest_checkpoint(config.output_dir)
    if previous and not resume:
        raise TrainingError(f"{config.output_dir} already holds checkpoints ({os.path.basename(previous)}); pass "
                            "--resume to continue that run, or choose another output_dir")
    if resume and not previous and is_main:
        log.info("--resume: no checkpoint in %s yet, starting a new run", config.output_dir)
    return previous


def resume_state(accelerator, config: TrainConfig, models, previous: str | None):
    """The progress counters and EMA, registered with accelerate's checkpointing and restored from ``previous``
    (the newest checkpoint, when resuming); the records past it are dropped."""
    progress = checkpoint.TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    ema = None
    if config.ema_decay is not None:
        ema = checkpoint.ExponentialMovingAverage(models.trainable, config.ema_decay)
        accelerator.register_for_checkpointing(ema)
    trainable_names = {n for n, _ in models.trainable}
    checkpoint.install_trainable_only_hooks(accelerator, trainable_names)
    if previous is None:
        return progress, ema
    checkpoint.load(accelerator, previous, trainable_names)
    if accelerator.is_main_process:
        records.truncate_records(config.output_dir, progress.step)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", os.path.basename(previous), progress.step,
                 progress.epoch, progress.batches_in_epoch)
    return progress, ema


def run(config: TrainConfig, resume: bool = False, train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None, collate_fn=None) -> RunResult:
    """Train as configured. Datasets default to ``train.data.build_dataset`` of the config's specs."""
    from accelerate.utils import set_seed

    use_tensorboard = records.tensorboard_available()
    accelerator = start_accelerator(config, use_tensorboard)
    records.setup_logging(config.output_dir, accelerator.is_main_process)
    set_seed(config.seed)
    train_dataset, val_dataset, collate_fn = datasets_for_run(config, accelerator.num_processes, train_dataset,
                                                              val_dataset, collate_fn)
    previous = checkpoint_to_resume(config, resume, accelerator.is_main_process)
    if accelerator.is_main_process:
        os.makedirs(os.path.join(config.output_dir, records.LOGS_FOLDER), exist_ok=True)
        config.save(os.path.join(config.output_dir, "config.yaml"))
    cond, pooled = load_conditioning(config, accelerator)

    models = build_models(config, accelerator.device)
    check_ema_supported(config, accelerator)
    optimizer = build_optimizer(config, [p for _, p in models.trainable])
    scheduler = build_scheduler(config, optimizer)
    loader = build_loader(config, train_dataset, collate_fn, accelerator.num_processes)
    denoiser, optimizer, loader, scheduler = accelerator.prepare(models.denoiser, optimizer, loader, scheduler)
    progress, ema = resume_state(accelerator, config, models, previous)
    if use_tensorboard:
        accelerator.init_trackers("edit2perceive", config={k: v for k, v in config.to_dict().items()
                                                          if isinstance(v, (int, float, str, bool))})
    total_steps = plan_total_steps(config, loader, accelerator, models)

    run_records = records.RunRecords(accelerator, config.output_dir, config.task, config.log_every, total_steps,
                                     progress.step, config.progress_bar, use_tensorboard)
    last_checkpoint = TrainingLoop(accelerator, config, models, denoiser, optimizer, scheduler, loader, progress, ema,
                                   cond, pooled, val_dataset, run_records, total_steps, previous).run()
    export_path = publish_export(config, last_checkpoint) if accelerator.is_main_process and last_checkpoint \
        else None
    run_records.close()
    accelerator.wait_for_everyone()
    if use_tensorboard:
        accelerator.end_training()
    return RunResult(progress.step, export_path, last_checkpoint)
