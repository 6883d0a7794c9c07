"""Files the ComfyUI nodes load, and official checkpoints turned into what the trainer starts from.

* Full fine-tune -> one safetensors in BFL names (what ``LoadE2PModel`` and ComfyUI's UNETLoader read).
* LoRA -> a kohya file (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``, ``.lora_up.weight``,
  ``.alpha``), the naming of the released LoRAs: the official loader and ComfyUI's stock ``LoraLoaderModelOnly``
  both apply it (``W += alpha / rank * up @ down`` on the fused BFL layers).
* Both carry the metadata the nodes honour: task, representation, prompt, time embedding, format.
* Official checkpoints (DiffSynth names, optional ``pipe.dit.`` prefix) convert to a diffusers transformer folder;
  official LoRAs (kohya or DiffSynth/peft names, fused layers) load exactly into the trainer's fused adapters.
"""

from __future__ import annotations

import os

import torch

from e2p_core import checkpoint_layouts
from e2p_core.saved_conditioning import atomic_save_safetensors
from e2p_core.safetensors_io import read_safetensors
from e2p_core.metadata_keys import (META_EMA_DECAY, META_FORMAT, META_LORA_RANK, META_PROMPT, META_REPRESENTATION,
                                    META_TASK, META_TIME_EMBEDDING)
from e2p_core.tasks import task_spec

from . import lora

FORMAT_FULL = "full-bfl"
FORMAT_LORA = "lora-kohya"


class ExportError(ValueError):
    """Weights that cannot be exported or converted; the message says why and what to do."""


def file_metadata(task: str, time_embedding: str, file_format: str, ema_decay: float | None = None) -> dict[str, str]:
    spec = task_spec(task)
    metadata = {META_TASK: task, META_REPRESENTATION: spec.representation, META_PROMPT: spec.prompt,
                META_TIME_EMBEDDING: time_embedding, META_FORMAT: file_format}
    if ema_decay is not None:
        metadata[META_EMA_DECAY] = str(ema_decay)
    return metadata


def export_full(state_dict: dict[str, torch.Tensor], path: str, task: str, time_embedding: str,
                ema_decay: float | None = None) -> str:
    """diffusers-named transformer tensors -> BFL safetensors with the metadata the nodes read."""
    bfl = checkpoint_layouts.to_bfl(state_dict).state_dict
    atomic_save_safetensors(path, {k: v.contiguous() for k, v in bfl.items()},
                            file_metadata(task, time_embedding, FORMAT_FULL, ema_decay))
    return path


def export_lora(adapter_tensors: dict[str, torch.Tensor], path: str, task: str, time_embedding: str, rank: int,
                alpha: float, ema_decay: float | None = None) -> str:
    """The trainer's fused adapters (``train.lora``) -> a kohya LoRA file with the metadata the nodes read."""
    try:
        tensors = lora.adapter_state_to_kohya(adapter_tensors, alpha)
    except ValueError as error:
        raise ExportError(f"{error}; only the official-layout LoRA adapters can be exported")
    metadata = file_metadata(task, time_embedding, FORMAT_LORA, ema_decay)
    metadata[META_LORA_RANK] = str(rank)
    atomic_save_safetensors(path, tensors, metadata)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Official weights -> trainer
# ---------------------------------------------------------------------------------------------------------------

def convert_official_checkpoint(path: str, out_folder: str) -> list[str]:
    """An official (or any supported layout) full checkpoint -> a diffusers ``transformer/`` folder the trainer
    loads as ``base_model`` or ``init_weights``. Returns notes (layout, ignored modules) for the user."""
    from .model import transformer_from_state_dict

    tensors, metadata = read_safetensors(path)
    model, conversion = transformer_from_state_dict(tensors, os.path.basename(path))
    folder = os.path.join(out_folder, "transformer")
    model.save_pretrained(folder)
    notes = [f"{os.path.basename(path)}: {conversion.layout} layout"
             + (f" (prefix '{conversion.prefix}' removed)" if conversion.prefix else "")
             + f", written to {folder}"]
    if conversion.ignored_keys:
        notes.append(f"ignored {len(conversion.ignored_keys)} tensors of modules the released inference never uses "
                     f"({conversion.ignored_keys[0]}, ...)")
    if metadata.get(META_TASK):
        notes.append(f"task in metadata: {metadata[META_TASK]}")
    return notes


def _fused_lora_pairs(tensors: dict[str, torch.Tensor], depth: int, single: int) -> dict[str, tuple]:
    """Official LoRA tensors (kohya or DiffSynth/peft names) -> {BFL weight name: (down, up, alpha or None)}."""
    targets = checkpoint_layouts.diffsynth_lora_targets(depth, single)
    kohya = {"lora_unet_" + bfl[:-len(".weight")].replace(".", "_"): bfl for bfl in targets.values()}
    normalized = checkpoint_layouts.normalize_lora_keys(tensors)
    pairs = {}
    for name, module in checkpoint_layouts.lora_modules(normalized).items():
        bfl = kohya.get(name, targets.get(name))
        if bfl is None:
            raise ExportError(f"LoRA module '{name}' is neither a kohya nor a DiffSynth FLUX name this model has")
        defects = module.defects()
        if defects:
            raise ExportError(f"LoRA module '{name}' is damaged: {'; '.join(defects)}")
        alpha = None if module.alpha is None else float(module.alpha[1])
        pairs[bfl] = (module.down[1], module.up[1], alpha)
    return pairs


def lora_for_trainer(path: str, depth: int, single: int, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """A LoRA file with fused-layer adapters (kohya, e.g. the released ones or ours, or DiffSynth/peft names) ->
    the trainer's adapter tensors, exactly; the file's alpha/rank is folded into ``up`` when it differs from the
    run's."""
    tensors, _ = read_safetensors(path)
    normalized = checkpoint_layouts.normalize_lora_keys(tensors)
    if any(k.startswith(("transformer.", "transformer_blocks.", "single_transformer_blocks.")) for k in normalized):
        raise ExportError(f"{os.path.basename(path)} has one adapter per split diffusers layer (q, k, v apart), which "
                          "the official layout (one adapter per fused layer) cannot continue exactly; start a new LoRA "
                          "or continue from a kohya / DiffSynth LoRA")
    try:
        return lora.kohya_to_adapter_state(_fused_lora_pairs(normalized, depth, single), rank, alpha)
    except ValueError as error:
        raise ExportError(f"{os.path.basename(path)}: {error}")
