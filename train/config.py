"""Training configuration: one dataclass, read from a YAML/JSON file and overridable from the command line.

Defaults follow the official recipe where it is known (AdamW, weight decay 1e-2, constant learning rate, LoRA rank
64 on the official layers, bf16, gradient checkpointing, the bf16-rounded time embedding); everything a user
changes between runs is a field here so that a run directory's ``config.yaml`` says exactly what was trained.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from e2p_core.release import TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK
from e2p_core.tasks import TASK_NAMES

from .objective import CONSISTENCY_VARIANTS, NOISE_MODES, OBJECTIVES, TIMESTEP_MODES, ObjectiveConfig

MODES = ("full", "lora")
OPTIMIZERS = ("adamw", "adamw8bit")
MIXED_PRECISION = ("no", "bf16", "fp16")


class ConfigError(ValueError):
    """A configuration that cannot be trained; the message names the field and what to put there."""


@dataclass
class TrainConfig:
    task: str
    output_dir: str
    base_model: str                                  # diffusers FLUX.1-Kontext-dev folder, or one .safetensors
    train_data: list = field(default_factory=list)   # dataset specs for train.data.build_dataset
    val_data: list = field(default_factory=list)
    resolution: object = 768                         # training size: int or [height, width], multiples of 16
    vae: str | None = None                           # default: the base model folder's vae/ (or ae.safetensors)
    text_encoders: str | None = None                 # folder with text_encoder(_2)/ + tokenizer(_2)/; default base
    conditioning: str | None = None                  # a cached conditioning file (skips the text encoders)
    init_weights: str | None = None                  # start from these transformer weights (e.g. official depth)
    init_lora: str | None = None                     # continue a LoRA (official kohya/DiffSynth or ours)
    time_embedding: str = TIME_EMBEDDING_OFFICIAL
    mode: str = "full"
    lora_rank: int = 64
    lora_alpha: float = 64.0
    # objective
    objective: str = "curriculum"
    consistency: str = "paper"
    timesteps: str = "official"
    noise: str = "fixed_seed"
    multi_res_noise: bool = False
    lambda_start_epoch: float = 0.0
    lambda_per_epoch: float = 1.0
    lambda_max: float | None = None
    lambda_normalize: bool = True
    # optimisation
    optimizer: str = "adamw"
    learning_rate: float = 1e-5
    weight_decay: float = 1e-2
    adam_betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    lr_start_factor: float = 1.0                     # the official ConstantLR: 1/3 of the rate ...
    lr_start_steps: int = 0                          # ... for the first 5 optimiser steps
    max_grad_norm: float | None = None
    batch_size: int = 4                              # per process
    gradient_accumulation_steps: int = 1
    epochs: int = 8
    max_steps: int | None = None                     # optimiser steps; stops before ``epochs`` when reached
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    ema_decay: float | None = None
    # bookkeeping
    seed: int = 42
    num_workers: int = 2
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 500
    val_max_samples: int = 64
    progress_bar: bool = True

    def __post_init__(self):
        self._coerce_numbers()
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        checks = [
            (self.task in TASK_NAMES, "task", f"one of {', '.join(TASK_NAMES)}"),
            (self.mode in MODES, "mode", "full or lora"),
            (self.optimizer in OPTIMIZERS, "optimizer", "adamw or adamw8bit"),
            (self.mixed_precision in MIXED_PRECISION, "mixed_precision", "no, bf16 or fp16"),
            (self.time_embedding in (TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK), "time_embedding",
             f"{TIME_EMBEDDING_OFFICIAL} (released checkpoints) or {TIME_EMBEDDING_STOCK} (BFL/diffusers base)"),
            (self.objective in OBJECTIVES, "objective", ", ".join(OBJECTIVES)),
            (self.consistency in CONSISTENCY_VARIANTS, "consistency", ", ".join(CONSISTENCY_VARIANTS)),
            (self.timesteps in TIMESTEP_MODES, "timesteps", ", ".join(TIMESTEP_MODES)),
            (self.noise in NOISE_MODES, "noise", ", ".join(NOISE_MODES)),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "at least 1"),
            (self.lora_rank >= 1, "lora_rank", "at least 1"),
            (self.learning_rate > 0, "learning_rate", "a positive number"),
            (0.0 < self.lr_start_factor <= 1.0, "lr_start_factor", "a factor in (0, 1] (official: 0.3333333)"),
            (self.lr_start_steps >= 0, "lr_start_steps", "0 or more optimiser steps (official: 5)"),
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", "at least 1 (or leave it out)"),
            (self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "ema_decay", "between 0 and 1 (e.g. 0.999)"),
            (self.checkpoint_every >= 1 and self.validate_every >= 1 and self.log_every >= 1,
             "checkpoint_every/validate_every/log_every", "at least 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "at least 1"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ConfigError(f"config field '{name}' = {getattr(self, name.split('/')[0], None)!r} is invalid; "
                                  f"use {allowed}")
        if self.init_lora and self.mode != "lora":
            raise ConfigError("init_lora is set but mode is 'full'; set mode: lora to continue training a LoRA")
        if not isinstance(self.train_data, list) or not isinstance(self.val_data, list):
            raise ConfigError("train_data / val_data must be lists of dataset specs (format, root, task, ...)")

    def _coerce_numbers(self) -> None:
        """YAML reads ``1e-5`` (no dot) as a string; numeric fields accept such strings."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, str) or not any(t in str(item.type) for t in ("float", "int")):
                continue
            try:
                setattr(self, item.name, int(value) if str(item.type).startswith("int") else float(value))
            except ValueError:
                raise ConfigError(f"config field '{item.name}' = {value!r} is not a number")

    def objective_config(self) -> ObjectiveConfig:
        return ObjectiveConfig(task=self.task, objective=self.objective, consistency=self.consistency,
                               timesteps=self.timesteps, noise=self.noise, noise_seed=self.seed,
                               multi_res_noise=self.multi_res_noise, lambda_start_epoch=self.lambda_start_epoch,
                               lambda_per_epoch=self.lambda_per_epoch, lambda_max=self.lambda_max,
                               lambda_normalize=self.lambda_normalize)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["adam_betas"] = list(self.adam_betas)
        return values

    def save(self, path: str) -> None:
        import yaml

        with open(path, "w") as handle:
            yaml.safe_dump(self.to_dict(), handle, sort_keys=False)


FIELD_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}


def from_dict(values: dict) -> TrainConfig:
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise ConfigError(f"unknown config fields {', '.join(unknown)}; known fields: {', '.join(sorted(FIELD_NAMES))}")
    missing = [name for name in ("task", "output_dir", "base_model") if values.get(name) in (None, "")]
    if missing:
        raise ConfigError(f"the config needs {', '.join(missing)}")
    try:
        return TrainConfig(**values)
    except TypeError as error:
        raise ConfigError(f"config: {error}")


def load(path: str, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML or JSON config file; ``overrides`` (from the command line) win."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist; see train/configs/ for examples")
    with open(path) as handle:
        text = handle.read()
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {error}")
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields")
    values.update(overrides or {})
    return from_dict(values)


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as YAML (numbers, booleans, null, lists)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. learning_rate=1e-5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in FIELD_NAMES:
        raise ConfigError(f"unknown config field '{key}' in override '{text}'")
    return key, yaml.safe_load(raw)
