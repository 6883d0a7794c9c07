"""Files the ComfyUI nodes load, and official checkpoints turned into what the trainer starts from.

* Full fine-tune -> one safetensors in BFL names (what ``LoadE2PModel`` and ComfyUI's UNETLoader read).
* LoRA -> diffusers/peft module names with a ``transformer.`` prefix and an ``.alpha`` per module (ComfyUI's
  patcher maps them onto the fused BFL layers; stock ``LoraLoaderModelOnly`` reads them too).
* Both carry the metadata the nodes honour: task, representation, prompt, time embedding, format.
* Official checkpoints (DiffSynth names, optional ``pipe.dit.`` prefix) convert to a diffusers transformer folder;
  official LoRAs (kohya or DiffSynth/peft names, fused layers) load exactly onto the trainer's split layers.
"""

from __future__ import annotations

import os

import torch

from e2p_core import formats
from e2p_core.conditioning_file import atomic_save_safetensors
from e2p_core.files import read_safetensors
from e2p_core.tasks import (META_FORMAT, META_PROMPT, META_REPRESENTATION, META_TASK, META_TIME_EMBEDDING,
                            REPRESENTATIONS, TASK_PROMPTS)

FORMAT_FULL = "full-bfl"
FORMAT_LORA = "lora-diffusers"
LORA_FILE_PREFIX = "transformer."
META_EMA = "e2p.ema_decay"


class ExportError(ValueError):
    """Weights that cannot be exported or converted; the message says why and what to do."""


def file_metadata(task: str, time_embedding: str, file_format: str, ema_decay: float | None = None) -> dict[str, str]:
    metadata = {META_TASK: task, META_REPRESENTATION: REPRESENTATIONS[task], META_PROMPT: TASK_PROMPTS[task],
                META_TIME_EMBEDDING: time_embedding, META_FORMAT: file_format}
    if ema_decay is not None:
        metadata[META_EMA] = str(ema_decay)
    return metadata


def export_full(state_dict: dict[str, torch.Tensor], path: str, task: str, time_embedding: str,
                ema_decay: float | None = None) -> str:
    """diffusers-named transformer tensors -> BFL safetensors with the metadata the nodes read."""
    bfl = formats.to_bfl(state_dict).state_dict
    atomic_save_safetensors(path, {k: v.contiguous() for k, v in bfl.items()},
                            file_metadata(task, time_embedding, FORMAT_FULL, ema_decay))
    return path


def export_lora(lora_tensors: dict[str, torch.Tensor], path: str, task: str, time_embedding: str, rank: int,
                alpha: float, ema_decay: float | None = None) -> str:
    """peft adapter tensors (``<module>.lora_A.weight``) -> a LoRA file ComfyUI's patcher applies as W += a/r B A."""
    out: dict[str, torch.Tensor] = {}
    modules = set()
    for key, value in lora_tensors.items():
        module, _, tail = key.rpartition(".lora_")
        if tail not in ("A.weight", "B.weight"):
            raise ExportError(f"unexpected adapter tensor {key}; only LoRA A/B weights can be exported")
        out[f"{LORA_FILE_PREFIX}{key}"] = value.contiguous()
        modules.add(module)
    for module in modules:
        out[f"{LORA_FILE_PREFIX}{module}.alpha"] = torch.tensor(float(alpha))
    metadata = file_metadata(task, time_embedding, FORMAT_LORA, ema_decay)
    metadata["e2p.lora_rank"] = str(rank)
    atomic_save_safetensors(path, out, metadata)
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
    targets = formats.diffsynth_lora_targets(depth, single)
    kohya = {"lora_unet_" + bfl[:-len(".weight")].replace(".", "_"): bfl for bfl in targets.values()}
    normalized = formats.normalize_lora_keys(tensors)
    pairs = {}
    for module in formats.lora_module_names(normalized):
        if module in kohya:
            bfl, down_key, up_key = kohya[module], f"{module}.lora_down.weight", f"{module}.lora_up.weight"
        elif module in targets:
            bfl, down_key, up_key = targets[module], f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        else:
            raise ExportError(f"LoRA module '{module}' is neither a kohya nor a DiffSynth FLUX name this model has")
        alpha = normalized.get(f"{module}.alpha")
        pairs[bfl] = (normalized[down_key], normalized[up_key], None if alpha is None else float(alpha))
    return pairs


def lora_for_trainer(path: str, depth: int, single: int, hidden: int, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """A LoRA file in any supported naming -> peft tensors for the trainer's (diffusers, split q/k/v) adapters.

    A fused official adapter (down A, up B over q|k|v) equals split adapters that share A and take B's rows, so
    the conversion is exact. Scales are folded into B when the file's alpha/rank differs from the run's.
    """
    tensors, _ = read_safetensors(path)
    normalized = formats.normalize_lora_keys(tensors)
    if any(k.startswith(LORA_FILE_PREFIX) for k in normalized):
        normalized = {k[len(LORA_FILE_PREFIX):] if k.startswith(LORA_FILE_PREFIX) else k: v for k, v in normalized.items()}
    run_scale = alpha / rank
    if any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in normalized):
        out = {}
        for module in formats.lora_module_names(normalized):
            down, up = normalized[f"{module}.lora_A.weight"], normalized[f"{module}.lora_B.weight"]
            file_alpha = normalized.get(f"{module}.alpha")
            scale = (float(file_alpha) / down.shape[0] if file_alpha is not None else run_scale) / run_scale
            out[f"{module}.lora_A.weight"], out[f"{module}.lora_B.weight"] = down, up * scale
        return _check_rank(out, rank, path)
    rules = {r.bfl: r for r in formats._diffusers_rules(depth, single)}
    out = {}
    for bfl, (down, up, file_alpha) in _fused_lora_pairs(normalized, depth, single).items():
        if bfl not in rules:
            raise ExportError(f"{os.path.basename(path)} adapts {bfl}, which the trainer's LoRA does not cover")
        rule = rules[bfl]
        scale = (file_alpha / down.shape[0] if file_alpha is not None else 1.0) / run_scale
        for part, up_rows in zip(rule.parts, torch.split(up, formats._split_sizes(rule, up, hidden), dim=0)):
            module = part[:-len(".weight")]
            out[f"{module}.lora_A.weight"] = down.clone()
            out[f"{module}.lora_B.weight"] = up_rows.contiguous() * scale
    return _check_rank(out, rank, path)


def _check_rank(tensors: dict[str, torch.Tensor], rank: int, path: str) -> dict[str, torch.Tensor]:
    ranks = {v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight")}
    if ranks != {rank}:
        raise ExportError(f"{os.path.basename(path)} has LoRA rank {sorted(ranks)}, the run uses {rank}; set "
                          f"lora_rank: {sorted(ranks)[0]} to continue it")
    return tensors
