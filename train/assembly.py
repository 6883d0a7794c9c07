"""What a run optimises and how: the denoiser and VAE a config names, the trainable parameters, the optimiser and
the learning-rate schedule."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import export, lora
from .config import TrainConfig
from .errors import TrainingError
from .model import FluxVAE, KontextDenoiser, load_transformer, load_vae


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
