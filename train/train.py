"""The training loop: accelerate for devices, precision, accumulation and every distributed backend.

Nothing here distributes work by hand. Batches are global: the data loader draws ``batch_size x processes``
samples per step from one seeded permutation and accelerate hands each process its slice (``split_batches``), and
all per-sample randomness (timestep, noise) is derived from (seed, epoch, sample index). So N processes see the
same samples, timesteps and noise as one process with an N-times larger batch, and a resumed run continues the
uninterrupted run's data order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from e2p_core import representations
from e2p_core.files import atomic_write, atomic_write_text
from e2p_core.flow import interpolate, one_step_estimate, seeded_noise
from e2p_core.tasks import DEFAULT_SEED

from . import checkpoint, export, lora, objective
from .conditioning import prepare_conditioning
from .config import TrainConfig
from .model import FluxVAE, KontextDenoiser, load_transformer, load_vae, one_step_prediction

log = logging.getLogger("e2p.train")

LOSS_LOG = "loss.jsonl"
VALIDATION_LOG = "validation.jsonl"
EXPORT_FOLDER = "export"


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says what to change."""


# ---------------------------------------------------------------------------------------------------------------
# Data plumbing
# ---------------------------------------------------------------------------------------------------------------

class IndexedDataset(Dataset):
    """Adds each sample's index, from which the objective derives that sample's timestep and noise."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.dataset[index])
        sample["index"] = index
        return sample


class EpochOrder(Sampler):
    """Sample order of an epoch, identical on every process and after a resume.

    A dataset with ``set_epoch`` (train.data's MixedDataset) orders and mixes itself per epoch and may group
    consecutive positions by source, so it is walked in order; any other dataset gets a permutation seeded by
    (seed, epoch).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.size = len(dataset)
        self.seed = seed
        self.epoch = 0
        self.self_ordering = callable(getattr(dataset, "set_epoch", None))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.self_ordering:
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self.self_ordering:
            return iter(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class CollateWithIndex:
    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, samples: list[dict]) -> dict:
        indices = [s.pop("index") for s in samples]
        batch = self.collate_fn(samples)
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        return batch


def build_datasets(config: TrainConfig, global_batch: int):
    """Training and validation datasets from the config's specs (train.data), and its collate function.

    Each global batch is drawn from one dataset (``group_size``), as officially, so sets of different sizes mix.
    """
    from . import data

    if not config.train_data:
        raise TrainingError("train_data is empty: list at least one dataset (format, root, task) in the config")
    train_set = data.build_dataset(config.train_data, resolution=config.resolution, seed=config.seed,
                                   group_size=global_batch)
    val_set = data.build_dataset(config.val_data, resolution=config.resolution, seed=config.seed) \
        if config.val_data else None
    for name, dataset in (("train_data", train_set), ("val_data", val_set)):
        if dataset is not None and dataset.task != config.task:
            raise TrainingError(f"{name} holds {dataset.task} samples but the run's task is {config.task}")
    return train_set, val_set, data.collate


# ---------------------------------------------------------------------------------------------------------------
# Model assembly
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Models:
    denoiser: KontextDenoiser
    vae: FluxVAE
    trainable: list[tuple[str, torch.nn.Parameter]]


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def build_models(config: TrainConfig, device: torch.device) -> Models:
    transformer = load_transformer(config.init_weights or config.base_model)
    vae_source = config.vae or config.base_model
    if not os.path.isdir(vae_source) and not config.vae:
        raise TrainingError("base_model is a single file, so the VAE cannot be found next to it; set vae to "
                            "ae.safetensors (or to the FLUX.1-Kontext-dev diffusers folder)")
    autoencoder = load_vae(vae_source).to(device)
    if weight_dtype(config.mixed_precision) != torch.float32:
        autoencoder = autoencoder.to(weight_dtype(config.mixed_precision))
    vae = FluxVAE(autoencoder.eval())
    vae.requires_grad_(False)
    if config.mode == "lora":
        transformer.requires_grad_(False)
        if weight_dtype(config.mixed_precision) != torch.float32:
            transformer.to(weight_dtype(config.mixed_precision))
        for adapter in lora.add_lora(transformer, config.lora_rank, config.lora_alpha):
            adapter.float().requires_grad_(True)
        if config.init_lora:
            shape = transformer.config
            try:
                lora.load_adapter_state(transformer, export.lora_for_trainer(
                    config.init_lora, shape.num_layers, shape.num_single_layers, config.lora_rank, config.lora_alpha))
            except ValueError as error:
                raise TrainingError(f"init_lora {config.init_lora}: {error}")
    else:
        transformer.requires_grad_(True)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    denoiser = KontextDenoiser(transformer, config.time_embedding)
    trainable = [(n, p) for n, p in denoiser.named_parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("no trainable parameters; check mode and the LoRA targets")
    return Models(denoiser, vae, trainable)


def build_optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise TrainingError("optimizer adamw8bit needs bitsandbytes, which is not installed: "
                                "pip install bitsandbytes (CUDA only), or use optimizer: adamw")
        return bitsandbytes.optim.AdamW8bit(parameters, lr=config.learning_rate, betas=config.adam_betas,
                                            weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, betas=config.adam_betas,
                             weight_decay=config.weight_decay)


def build_scheduler(config: TrainConfig, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant learning rate (official) after an optional linear warm-up; ``lr_start_factor`` for the first
    ``lr_start_steps`` steps reproduces the official ``ConstantLR`` (1/3 for 5 steps)."""
    warmup, start_steps, start_factor = config.warmup_steps, config.lr_start_steps, config.lr_start_factor

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return ramp * (start_factor if step < start_steps else 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------------------------
# One training step
# ---------------------------------------------------------------------------------------------------------------

def loss_batch(batch: dict, task: str, device: torch.device) -> dict:
    """The tensors the losses read, moved to the device, masks as [B, H, W]."""
    out = {"target": batch["target"].to(device), "valid": batch["valid"].to(device)[:, 0].bool()}
    if task == "matting":
        if "trimap" not in batch or "hint" not in batch:
            raise TrainingError("matting samples need 'trimap' and 'hint' (see TRAIN_DATA_INTERFACE); the dataset "
                                "gave " + ", ".join(sorted(batch)))
        out["trimap"] = batch["trimap"].to(device)[:, 0]
    return out


def reference_latents(vae: FluxVAE, batch: dict, task: str, device: torch.device) -> list[torch.Tensor]:
    """The input image (and for matting the hint map) as model-space Kontext references."""
    references = [vae.encode(batch["image"].to(device))]
    if task == "matting":
        references.append(vae.encode(batch["hint"].to(device)))
    return references


def compute_loss(models: Models, denoiser, batch: dict, cond: torch.Tensor, pooled: torch.Tensor,
                 config: objective.ObjectiveConfig, epoch: int, epoch_progress: float, global_mean):
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


# ---------------------------------------------------------------------------------------------------------------
# Validation with the paper's metrics
# ---------------------------------------------------------------------------------------------------------------

def sample_metrics(task: str, decoded: torch.Tensor, sample: dict) -> dict[str, float] | None:
    """Metrics of one decoded prediction [3, H, W] against its ground truth (e2p_eval definitions)."""
    from e2p_eval import metrics, protocol

    channels_last = decoded.permute(1, 2, 0).float().cpu()
    valid = sample["valid"][0].bool().numpy()
    if task == "depth":
        depth = sample["depth"][0].float().numpy()
        gt_valid = valid & (depth > 0) & np.isfinite(depth)
        if gt_valid.sum() < protocol.MIN_VALID_PIXELS:
            return None
        prediction = representations.decode_depth(channels_last).numpy()
        target = protocol.DepthTarget(depth=depth, eval_mask=gt_valid, min_depth=float(depth[gt_valid].min()) * 0.999,
                                      max_depth=float(depth[gt_valid].max()) * 1.001)
        result = protocol.evaluate_depth(prediction, target, "sqrt")
        return None if result is None else {"abs_rel": result["abs_rel"], "delta1": result["delta1"]}
    if task == "normal":
        prediction = representations.decode_normals(channels_last).numpy()
        truth = sample["target"].permute(1, 2, 0).float().numpy()
        errors = metrics.angular_errors(prediction[valid], truth[valid])
        stats = metrics.angular_statistics(errors)
        return {"mean_angle": stats["mean"], "median_angle": stats["median"], "a11_25": stats["a11_25"]}
    prediction = representations.decode_alpha(channels_last).numpy()
    truth = ((sample["target"].float().mean(dim=0) + 1.0) / 2.0).numpy()
    return {k: v for k, v in metrics.sad_mse_mad(prediction, truth).items()}


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


# ---------------------------------------------------------------------------------------------------------------
# Export of the current weights
# ---------------------------------------------------------------------------------------------------------------

def export_file_name(config: TrainConfig) -> str:
    return f"{config.task}_e2p_lora.safetensors" if config.mode == "lora" else f"{config.task}_e2p.safetensors"


def export_weights(accelerator, denoiser, config: TrainConfig, folder: str, ema=None) -> str | None:
    """Write the file the nodes load into ``folder``. Collective (sharded models gather their weights)."""
    state = accelerator.get_state_dict(denoiser)
    if not accelerator.is_main_process:
        return None
    state = {checkpoint.strip_wrapper_prefix(k): v for k, v in state.items()}
    if ema is not None:
        state = {k: ema.shadow.get(k, v).to(v.dtype) if k in ema.shadow else v for k, v in state.items()}
    transformer_state = {k[len("transformer."):]: v.detach().cpu() for k, v in state.items()
                         if k.startswith("transformer.")}
    path = os.path.join(folder, export_file_name(config))
    ema_decay = ema.decay if ema is not None else None
    if config.mode == "lora":
        adapters = {k: v.float() for k, v in transformer_state.items() if lora.is_adapter_parameter(k)}
        return export.export_lora(adapters, path, config.task, config.time_embedding, config.lora_rank,
                                  config.lora_alpha, ema_decay)
    return export.export_full({k: v.float() for k, v in transformer_state.items()}, path, config.task,
                              config.time_embedding, ema_decay)


# ---------------------------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------------------------

def setup_logging(output_dir: str, is_main: bool) -> None:
    if not is_main:
        return
    os.makedirs(output_dir, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    for handler in (logging.StreamHandler(), logging.FileHandler(os.path.join(output_dir, "train.log"))):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.propagate = False


def read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_log(path: str, last_step: int) -> None:
    """Drop records past the resumed step, so the log of a resumed run reads as one uninterrupted run."""
    kept = [r for r in read_jsonl(path) if r["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    steps: int
    export_path: str | None
    last_checkpoint: str | None


def run(config: TrainConfig, resume: bool = False, train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None, collate_fn=None) -> RunResult:
    """Train as configured. Datasets default to ``train.data.build_dataset`` of the config's specs."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed

    # accelerate keeps its settings in process-wide singletons; clearing them (the distributed process group
    # stays) lets one Python process run several trainings, e.g. with another precision.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    use_tensorboard = tensorboard_available()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, "tensorboard")),
        log_with="tensorboard" if use_tensorboard else None)
    is_main = accelerator.is_main_process
    setup_logging(config.output_dir, is_main)
    set_seed(config.seed)
    device = accelerator.device
    global_batch = config.batch_size * accelerator.num_processes
    if train_dataset is None:
        train_dataset, built_val, built_collate = build_datasets(config, global_batch)
        val_dataset = val_dataset if val_dataset is not None else built_val
        collate_fn = collate_fn or built_collate
    if collate_fn is None:
        from .data import collate as collate_fn

    previous = checkpoint.latest_checkpoint(config.output_dir)
    if previous and not resume:
        raise TrainingError(f"{config.output_dir} already holds checkpoints ({os.path.basename(previous)}); pass "
                            "--resume to continue that run, or choose another output_dir")
    if is_main:
        os.makedirs(os.path.join(config.output_dir, "logs"), exist_ok=True)
        config.save(os.path.join(config.output_dir, "config.yaml"))

    cache = config.conditioning or os.path.join(config.output_dir, f"conditioning-{config.task}.safetensors")
    with accelerator.main_process_first():
        cond, pooled = prepare_conditioning(config.task, cache, config.text_encoders or config.base_model,
                                            device if torch.cuda.is_available() else "cpu")
    cond, pooled = cond.to(device), pooled.to(device)

    models = build_models(config, device)
    sharded = accelerator.distributed_type == DistributedType.FSDP or (
        accelerator.distributed_type == DistributedType.DEEPSPEED
        and accelerator.state.deepspeed_plugin.zero_stage == 3)
    if config.ema_decay is not None and sharded:
        raise TrainingError("ema_decay needs every process to hold whole parameters; it works with DDP and "
                            "DeepSpeed ZeRO-2, not with FSDP or ZeRO-3. Remove ema_decay or switch config")
    trainable_names = {n for n, _ in models.trainable}
    optimizer = build_optimizer(config, [p for _, p in models.trainable])
    scheduler = build_scheduler(config, optimizer)

    if len(train_dataset) < global_batch:
        raise TrainingError(f"the training set has {len(train_dataset)} samples, fewer than one global batch "
                            f"({config.batch_size} x {accelerator.num_processes} processes)")
    sampler = EpochOrder(train_dataset, config.seed)
    loader = DataLoader(IndexedDataset(train_dataset), batch_size=global_batch, sampler=sampler, drop_last=True,
                        collate_fn=CollateWithIndex(collate_fn), num_workers=config.num_workers)
    denoiser, optimizer, loader, scheduler = accelerator.prepare(models.denoiser, optimizer, loader, scheduler)

    progress = checkpoint.TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    ema = None
    if config.ema_decay is not None:
        ema = checkpoint.ExponentialMovingAverage(models.trainable, config.ema_decay)
        accelerator.register_for_checkpointing(ema)
    checkpoint.install_trainable_only_hooks(accelerator, trainable_names)
    loss_log = os.path.join(config.output_dir, "logs", LOSS_LOG)
    if resume and not previous and is_main:
        log.info("--resume: no checkpoint in %s yet, starting a new run", config.output_dir)
    if previous and resume:
        checkpoint.load(accelerator, previous, trainable_names)
        if is_main:
            truncate_log(loss_log, progress.step)
            truncate_log(os.path.join(config.output_dir, "logs", VALIDATION_LOG), progress.step)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", os.path.basename(previous), progress.step,
                     progress.epoch, progress.batches_in_epoch)
    if use_tensorboard:
        accelerator.init_trackers("edit2perceive", config={k: v for k, v in config.to_dict().items()
                                                          if isinstance(v, (int, float, str, bool))})

    steps_per_epoch = len(loader) // config.gradient_accumulation_steps
    if steps_per_epoch < 1:
        raise TrainingError(f"one epoch has {len(loader)} batches, fewer than gradient_accumulation_steps "
                            f"({config.gradient_accumulation_steps}); use more data or accumulate less")
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    objective_config = config.objective_config()
    global_mean = lambda value: accelerator.reduce(value.detach().clone(), reduction="mean")  # noqa: E731
    if is_main:
        log.info("task %s, %s fine-tune, %d trainable parameters, %d processes, global batch %d x %d accumulation, "
                 "%d steps per epoch, %d steps in total", config.task, config.mode,
                 sum(p.numel() for _, p in models.trainable), accelerator.num_processes, global_batch,
                 config.gradient_accumulation_steps, steps_per_epoch, total_steps)
    bar = None
    if is_main and config.progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=progress.step, desc=f"train {config.task}", dynamic_ncols=True)

    def save_checkpoint() -> str:
        def write_export(folder):
            target = os.path.join(folder, EXPORT_FOLDER)
            if accelerator.is_main_process:
                os.makedirs(target, exist_ok=True)
            export_weights(accelerator, denoiser, config, target, ema)
        folder = checkpoint.save(accelerator, config.output_dir, progress.step, config.keep_checkpoints, write_export)
        if is_main:
            log.info("checkpoint %s", folder)
        return folder

    last_checkpoint = previous
    saved_step = progress.step if previous else -1
    invocation_start = progress.step
    accumulated = {"count": 0}
    started = time.time()
    while progress.step < total_steps:
        epoch_loader = accelerator.skip_first_batches(loader, progress.batches_in_epoch) \
            if progress.batches_in_epoch else loader
        # accelerate's loaders count their own iterations and push them into the sampler; a resumed (or skipping)
        # loader would count from 0, so the epoch is set explicitly.
        epoch_loader.set_epoch(progress.epoch)
        for batch in epoch_loader:
            epoch_progress = progress.epoch + progress.batches_in_epoch / max(1, len(loader))
            with accelerator.accumulate(denoiser):
                terms = compute_loss(models, denoiser, batch, cond, pooled, objective_config, progress.epoch,
                                     epoch_progress, global_mean)
                accelerator.backward(terms.total)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_([p for _, p in models.trainable], config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            progress.batches_in_epoch += 1
            for key, value in (("loss", terms.total), ("flow", terms.flow), ("consistency", terms.consistency)):
                if value is not None:
                    accumulated[key] = accumulated.get(key, 0.0) + float(global_mean(value))
            accumulated["count"] += 1
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            if ema is not None:
                ema.update([(n, p) for n, p in accelerator.unwrap_model(denoiser).named_parameters() if p.requires_grad])
            count = accumulated.pop("count")
            record = {"step": progress.step, "epoch": round(epoch_progress, 4), "lr": scheduler.get_last_lr()[0],
                      "lambda": terms.weight} | {k: v / count for k, v in accumulated.items()}
            accumulated = {"count": 0}
            if is_main:
                append_jsonl(loss_log, record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lam=f"{record['lambda']:.2f}")
                if progress.step % config.log_every == 0 or progress.step == total_steps:
                    rate = (progress.step - invocation_start) / max(1e-9, time.time() - started)
                    terms_text = " ".join(f"{k} {record[k]:.5f}" for k in ("loss", "flow", "consistency") if k in record)
                    log.info("step %d/%d epoch %.2f %s lambda %.3f lr %.2e (%.2f steps/s)", progress.step,
                             total_steps, epoch_progress, terms_text, record["lambda"], record["lr"], rate)
            if use_tensorboard:
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=progress.step)
            if val_dataset is not None and (progress.step % config.validate_every == 0 or progress.step == total_steps):
                scores = validate(accelerator, models, denoiser, val_dataset, cond, pooled, config.task,
                                  config.val_max_samples)
                if is_main and scores:
                    append_jsonl(os.path.join(config.output_dir, "logs", VALIDATION_LOG), {"step": progress.step} | scores)
                    log.info("validation at step %d: %s", progress.step,
                             ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
                if use_tensorboard:
                    accelerator.log({f"val/{k}": v for k, v in scores.items()}, step=progress.step)
            if progress.step % config.checkpoint_every == 0 or progress.step == total_steps:
                last_checkpoint = save_checkpoint()
                saved_step = progress.step
            if progress.step >= total_steps:
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
            continue
        break
    if saved_step != progress.step:
        last_checkpoint = save_checkpoint()
    export_path = None
    if is_main and last_checkpoint:
        final = os.path.join(last_checkpoint, EXPORT_FOLDER, export_file_name(config))
        export_path = os.path.join(config.output_dir, EXPORT_FOLDER, export_file_name(config))
        with atomic_write(export_path, suffix=".safetensors") as temporary:
            shutil.copyfile(final, temporary)
        log.info("exported %s (load it with LoadE2PModel)", export_path)
    if bar is not None:
        bar.close()
    accelerator.wait_for_everyone()
    if use_tensorboard:
        accelerator.end_training()
    return RunResult(progress.step, export_path, last_checkpoint)


def load_trained(output_dir: str, folder: str | None = None, device: str | torch.device = "cpu"):
    """(config, models) of a run, with the trained weights of a checkpoint (default: the newest), for inference.

    Reads the weights accelerate stored for single-process, DDP and ZeRO-2 runs; sharded (FSDP / ZeRO-3) runs are
    used through the file in the checkpoint's export/ folder instead.
    """
    from safetensors.torch import load_file

    from . import config as config_module

    config = config_module.load(os.path.join(output_dir, "config.yaml"))
    folder = folder or checkpoint.latest_checkpoint(output_dir)
    if folder is None:
        raise TrainingError(f"{output_dir} has no checkpoints yet")
    weights_file = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights_file):
        raise TrainingError(f"{folder} holds sharded weights (FSDP/DeepSpeed); load {EXPORT_FOLDER}/"
                            f"{export_file_name(config)} from it instead")
    models = build_models(config, device)
    stored = {checkpoint.strip_wrapper_prefix(k): v for k, v in load_file(weights_file).items()}
    trainable = dict(models.trainable)
    if set(stored) != set(trainable):
        raise TrainingError(f"{weights_file} does not match the run's trainable parameters")
    with torch.no_grad():
        for name, value in stored.items():
            trainable[name].copy_(value)
    models.denoiser.requires_grad_(False).eval()
    return config, models
