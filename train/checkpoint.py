"""Periodic, atomic, resumable training checkpoints on top of ``accelerate``'s own save/load state.

Layout of a run directory::

    checkpoints/step-000500/    accelerate state (trainable weights, optimiser, scheduler, RNG of every process,
                                the progress counters and the EMA) + export/ (files the ComfyUI nodes load)
    checkpoints/latest          the name of the newest complete checkpoint

A checkpoint is written into a ``.partial-`` folder, fsynced and renamed once every process has finished writing,
and ``latest`` is replaced atomically and durably afterwards, so a run killed at any moment (power loss included)
resumes from the last complete one.
Only trainable parameters are stored for LoRA runs (the frozen base is reloaded from its own file).
"""

from __future__ import annotations

import os
import shutil

import torch

from e2p_core.atomic_files import atomic_publish_folder, atomic_write_text

CHECKPOINT_FOLDER = "checkpoints"
LATEST_FILE = "latest"
PREFIX = "step-"
PARTIAL_PREFIX = ".partial-"


class TrainingProgress:
    """Counters that decide where a resumed run continues: optimiser steps, epoch, micro-batches into the epoch."""

    def __init__(self):
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])


class ExponentialMovingAverage:
    """fp32 shadow copies of the trainable parameters, updated after each optimiser step."""

    def __init__(self, named_parameters: list[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in named_parameters}

    @torch.no_grad()
    def update(self, named_parameters: list[tuple[str, torch.nn.Parameter]]) -> None:
        for name, parameter in named_parameters:
            self.shadow[name].lerp_(parameter.detach().float().to(self.shadow[name].device), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"the checkpoint's EMA lacks {len(missing)} parameters (e.g. {sorted(missing)[:2]}); "
                             "was it written by a run with another mode or LoRA rank?")
        self.decay = float(state["decay"])
        for name in self.shadow:
            self.shadow[name].copy_(state["shadow"][name])


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, CHECKPOINT_FOLDER)


def step_folder_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.startswith(PREFIX) and os.path.isdir(os.path.join(root, n))]
    return [os.path.join(root, n) for n in sorted(names)]


def latest_checkpoint(output_dir: str) -> str | None:
    """The checkpoint named by ``latest`` (falling back to the newest complete folder)."""
    root = checkpoint_root(output_dir)
    pointer = os.path.join(root, LATEST_FILE)
    if os.path.isfile(pointer):
        with open(pointer) as handle:
            name = handle.read().strip()
        if name and os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def write_latest(output_dir: str, folder: str) -> None:
    atomic_write_text(os.path.join(checkpoint_root(output_dir), LATEST_FILE), os.path.basename(folder))


def strip_wrapper_prefix(name: str) -> str:
    """DDP and torch.compile wrap module names; compare parameter names without those prefixes."""
    for prefix in ("module.", "_orig_mod."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def save(accelerator, output_dir: str, step: int, keep: int, write_extras=None) -> str:
    """Write a checkpoint atomically and prune old ones; returns its folder. Collective: call on every process.

    ``write_extras(folder)`` runs on every process after the state is saved and before the folder is published
    (the exported weights live there, so a published checkpoint always has them).
    """
    root = checkpoint_root(output_dir)
    final = os.path.join(root, step_folder_name(step))
    partial = os.path.join(root, PARTIAL_PREFIX + step_folder_name(step))
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):
            if name.startswith(PARTIAL_PREFIX):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    if write_extras is not None:
        write_extras(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(final):
            shutil.rmtree(final)
        atomic_publish_folder(partial, final)
        write_latest(output_dir, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def install_trainable_only_hooks(accelerator, trainable_names: set[str]) -> None:
    """Make accelerate store only trainable parameters (LoRA adapters, or the whole transformer in full runs).

    DeepSpeed and FSDP write their own sharded files and do not pass through these hooks.
    """

    def keep_trainable(models, weights, output_dir):
        for index, state in enumerate(weights):
            weights[index] = {k: v for k, v in state.items() if strip_wrapper_prefix(k) in trainable_names}

    accelerator.register_save_state_pre_hook(keep_trainable)


def load(accelerator, folder: str, trainable_names: set[str]) -> None:
    """Restore a checkpoint written by :func:`save` (weights, optimiser, scheduler, RNG, progress, EMA).

    Loading is non-strict because LoRA checkpoints hold only the adapters, so the stored names are checked here
    against the trainable parameters first: a checkpoint of another mode or rank is refused, not half-loaded.
    """
    from safetensors import safe_open

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    weights_file = os.path.join(folder, "model.safetensors")
    if os.path.isfile(weights_file):
        with safe_open(weights_file, framework="pt") as handle:
            stored = {strip_wrapper_prefix(k) for k in handle.keys()}
        if stored != trainable_names:
            missing, extra = sorted(trainable_names - stored), sorted(stored - trainable_names)
            raise ValueError(f"checkpoint {folder} does not match this run's trainable parameters "
                             f"({len(missing)} missing, e.g. {missing[:2]}; {len(extra)} unexpected, e.g. "
                             f"{extra[:2]}); resume with the same mode, LoRA rank and base model")
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.load_state(folder)          # DeepSpeed restores its own (complete) module checkpoint
    else:
        accelerator.load_state(folder, strict=False)
