"""The trained weights leaving the trainer (the file the nodes load, in every checkpoint and in the run's export/
folder) and coming back (a run's checkpoint loaded for inference)."""

from __future__ import annotations

import logging
import os
import shutil

import torch

from e2p_core.atomic_files import atomic_write

from . import checkpoint, export, lora
from .assembly import build_models
from .config import TrainConfig
from .errors import TrainingError

log = logging.getLogger("e2p.train")

EXPORT_FOLDER = "export"


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


def save_checkpoint(accelerator, denoiser, config: TrainConfig, step: int, ema=None) -> str:
    """A resumable checkpoint with the nodes' file in its export/ folder; returns its folder. Collective."""

    def write_export(folder):
        target = os.path.join(folder, EXPORT_FOLDER)
        if accelerator.is_main_process:
            os.makedirs(target, exist_ok=True)
        export_weights(accelerator, denoiser, config, target, ema)

    folder = checkpoint.save(accelerator, config.output_dir, step, config.keep_checkpoints, write_export)
    if accelerator.is_main_process:
        log.info("checkpoint %s", folder)
    return folder


def publish_export(config: TrainConfig, checkpoint_folder: str) -> str:
    """Copy a checkpoint's exported file to the run's export/ folder (atomically); returns its path."""
    final = os.path.join(checkpoint_folder, EXPORT_FOLDER, export_file_name(config))
    export_path = os.path.join(config.output_dir, EXPORT_FOLDER, export_file_name(config))
    with atomic_write(export_path, suffix=".safetensors") as temporary:
        shutil.copyfile(final, temporary)
    log.info("exported %s (load it with LoadE2PModel)", export_path)
    return export_path


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
