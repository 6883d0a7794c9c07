"""Build an Edit2Perceive model as a ComfyUI ModelPatcher from any supported file, or from a native MODEL.

The transformer is built by ComfyUI's own diffusion-model loader (what UNETLoader runs) after conversion to BFL
names, so comfy.model_management and ComfyUI's patcher class own device placement, offloading, lowvram and
dynamic VRAM. LoRAs go through ComfyUI's patch mechanism, never by rewriting the base weights.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, field
from typing import Iterable

import torch

from .. import formats
from ..model_files import KONTEXT_BASE
from . import compat
from ..files import read_safetensors, read_safetensors_layout, stream_safetensors
from .patches import apply_e2p_patches
from ..tasks import (META_REPRESENTATION, META_TASK, META_TIME_EMBEDDING, TASK_AUTO, TASK_NAMES, TASKS,
                     TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK, task_from_file_name, task_spec)

log = logging.getLogger("edit2perceive")

WEIGHT_DTYPES = {
    "default": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp32": torch.float32,
}


class E2PLoadError(ValueError):
    """A model or LoRA that cannot be used; the message says what to do."""


@dataclass
class E2PModel:
    """What the task nodes need: the patched model, its task and how it was assembled."""

    patcher: object                     # comfy.model_patcher.ModelPatcher with the E2P patches applied
    task: str | None                    # from file metadata; None when the files do not say
    time_embedding: str
    description: list[str] = field(default_factory=list)
    cond: torch.Tensor | None = None    # task conditioning, attached once resolved (see e2p_core.comfyui.conditioning)
    pooled: torch.Tensor | None = None
    representation: str | None = None   # e2p.representation of the files; None when they do not say

    def resolve_task(self, requested: str, file_names: list[str | None]) -> tuple[str, str]:
        """(task, what says so) for a requested task or ``auto``. File metadata decides when present; else the
        names of the files (the released checkpoints carry no metadata but are named depth/normal/matting). An
        explicit choice must agree with both, so normal weights never run as "depth"."""
        if requested != TASK_AUTO:
            task_spec(requested)
        if self.task is not None:
            if requested not in (TASK_AUTO, self.task):
                raise self._metadata_mismatch(requested)
            return self.task, "file metadata"
        named = {name: task_from_file_name(name) for name in file_names if name}
        stated = {name: task for name, task in named.items() if task is not None}
        if requested != TASK_AUTO:
            for name, task in stated.items():
                if task != requested:
                    raise E2PLoadError(f"task is set to '{requested}' but the file {name} is named for '{task}'; "
                                       f"select the {requested} checkpoint/LoRA, or set task to '{task}' (or auto)")
            return requested, "chosen"
        if len(set(stated.values())) == 1:
            name, task = next(iter(stated.items()))
            return task, f"file name {name}"
        if stated:
            listing = ", ".join(f"{name} says '{task}'" for name, task in stated.items())
            raise E2PLoadError(f"the file names disagree on the task ({listing}); set task to what these weights "
                               "were trained for")
        files = ", ".join(named) or "the MODEL input"
        raise E2PLoadError(f"task is auto but {files} does not say which task it was trained for (no e2p.task "
                           f"metadata, and depth/normal/matting is not in the file name); set task to "
                           f"{', '.join(TASK_NAMES)}")

    def _metadata_mismatch(self, task: str) -> E2PLoadError:
        return E2PLoadError(f"these weights were trained for '{self.task}' (file metadata) but '{task}' was "
                            f"selected; choose the {task} checkpoint/LoRA or set the task to '{self.task}' (or auto)")

    def for_task(self, task: str, cond: torch.Tensor, pooled: torch.Tensor,
                 cond_source: str = "the conditioning") -> "E2PModel":
        """The model bound to a task and its conditioning; refuses weights whose metadata names another task and
        conditioning of another text encoder's width (which would fail deep inside the model)."""
        if self.task is not None and self.task != task:
            raise self._metadata_mismatch(task)
        check_representation(task, self.representation)
        text_width, pooled_width = compat.flux_text_input_widths(self.patcher)
        if cond.shape[-1] != text_width or (pooled_width is not None and pooled.shape[-1] != pooled_width):
            raise E2PLoadError(
                f"{cond_source} is {cond.shape[-1]} wide (pooled {pooled.shape[-1]}) but this model takes text "
                f"{text_width} wide (pooled {pooled_width}): it was encoded by other text encoders. Delete that "
                "file from models/embeddings/edit2perceive and connect the FLUX text encoders once (DualCLIPLoader: "
                "clip_l + t5xxl, type flux) so it is encoded again")
        return E2PModel(self.patcher, task, self.time_embedding, list(self.description), cond, pooled,
                        self.representation)


def _resolve_time_embedding(requested: str, metadata: dict[str, str]) -> str:
    if requested != "auto":
        return requested
    stored = metadata.get(META_TIME_EMBEDDING)
    if stored in (TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK):
        return stored
    return TIME_EMBEDDING_OFFICIAL


def _task_from_metadata(metadata: dict[str, str]) -> str | None:
    task = metadata.get(META_TASK)
    return task if task in TASKS else None


def check_representation(task: str | None, representation: str | None) -> None:
    """Weights that state what their output means must mean what these nodes decode for the task: a file trained
    on another encoding of the same task would run and give plausible-looking, wrong values."""
    if task is None or representation is None:
        return
    expected = task_spec(task).representation
    if representation != expected:
        raise E2PLoadError(f"these weights state the output representation '{representation}' (e2p.representation "
                           f"metadata) but the {task} nodes decode '{expected}': they were trained for another "
                           f"encoding of {task}, which these nodes cannot read. Use {task} weights made for this node "
                           "pack (the released checkpoints, or ones exported by its trainer), or the node version "
                           "that wrote this file")


def _model_from_files(patcher, metadata: dict[str, str], task: str | None, time_embedding: str,
                      notes: list[str]) -> E2PModel:
    """The patched model with what the files state; refuses a stated representation the stated task cannot use."""
    representation = metadata.get(META_REPRESENTATION)
    check_representation(task, representation)
    resolved = _resolve_time_embedding(time_embedding, metadata)
    return E2PModel(apply_e2p_patches(patcher, resolved), task, resolved, notes, representation=representation)


def build_flux_patcher(bfl_state_dict: dict[str, torch.Tensor], weight_dtype: str = "default",
                       weights: Iterable[tuple[str, torch.Tensor]] | None = None):
    """ComfyUI FLUX model from BFL tensors through ComfyUI's own loader, with the key set checked strictly
    (ComfyUI itself only logs missing or unexpected weights).

    ``bfl_state_dict`` gives the names, shapes and dtypes (``meta`` tensors are enough); the weights come from
    ``weights``, (BFL name, tensor) pairs written into the model one at a time, or else from ``bfl_state_dict``."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise E2PLoadError(f"unknown weight dtype '{weight_dtype}'; use one of {', '.join(WEIGHT_DTYPES)}")
    shape = formats.infer_shape(bfl_state_dict)
    detected = compat.detect_flux_config(bfl_state_dict)
    if detected is None:
        raise E2PLoadError(f"ComfyUI {compat.comfyui_version()} does not recognise these tensors as a FLUX.1 "
                           "transformer; the file is of another architecture, or ComfyUI needs an update")
    dtype = WEIGHT_DTYPES[weight_dtype]
    if detected.get("num_heads") == shape.num_heads:
        patcher = compat.load_flux_stock(bfl_state_dict, dtype)
    else:
        log.info("Edit2Perceive: ComfyUI detected %s heads for a hidden size of %d; building with %d",
                 detected.get("num_heads"), shape.hidden_size, shape.num_heads)
        patcher = compat.load_flux_from_config(bfl_state_dict, {**detected, "num_heads": shape.num_heads},
                                                     dtype)
    expected = compat.model_weight_keys(patcher)
    renames = compat.flux_key_renames(patcher.model.model_config, list(bfl_state_dict))
    given = set(renames.values())
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise E2PLoadError(
            "the checkpoint does not match a FLUX.1 Kontext transformer of its own shape: "
            + (f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])}) " if missing else "")
            + (f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "")
            + "; the file is incomplete or of another architecture")
    compat.fill_flux_weights(patcher, bfl_state_dict.items() if weights is None else weights, renames)
    return patcher, shape


def lora_key_map(patcher) -> dict[str, object]:
    """ComfyUI's own LoRA key map for this model, plus the names ComfyUI 0.3.75 does not know:
    DiffSynth/peft module names (the official trainer's) and bare diffusers names (without ``transformer.``)."""
    key_map = compat.stock_lora_key_map(patcher)
    config = compat.unet_config(patcher)
    for source, target in formats.diffsynth_lora_targets(config["depth"], config["depth_single_blocks"]).items():
        key_map.setdefault(source, f"diffusion_model.{target}")
    for name, target in list(key_map.items()):
        if name.startswith("transformer."):
            key_map.setdefault(name[len("transformer."):], target)
    return key_map


@dataclass
class LoraReport:
    modules_in_file: int
    modules_applied: int
    unmatched: list[str]

    def summary(self) -> str:
        return f"LoRA: {self.modules_applied} of {self.modules_in_file} modules applied"


def apply_lora(patcher, lora_state_dict: dict[str, torch.Tensor], strength: float = 1.0):
    """Clone ``patcher`` with the LoRA as weight patches. Fails when any LoRA module has no target."""
    normalized = formats.normalize_lora_keys(lora_state_dict)
    modules = formats.lora_module_names(normalized)
    if not modules:
        raise E2PLoadError(f"this file has no LoRA tensors (lora_A/lora_B or lora_down/lora_up); it looks like "
                           f"{formats.describe_foreign(lora_state_dict)}")
    key_map = lora_key_map(patcher)
    targets = {name: key_map[name] for name in modules if name in key_map}
    unmatched = sorted(modules - set(targets))
    report = LoraReport(len(modules), len(targets), unmatched)
    if unmatched:
        raise E2PLoadError(f"{report.summary()}; {len(unmatched)} match no layer of this model "
                           f"(e.g. {', '.join(unmatched[:3])}). Is it a LoRA for FLUX.1 Kontext of this size?")
    patches = compat.lora_patches(normalized, targets)
    patched = patcher.clone()
    accepted = patched.add_patches(patches, strength)
    if len(accepted) != len(patches):
        raise E2PLoadError(f"{report.summary()}, but only {len(accepted)} weights accepted the patch")
    return patched, report


# (real path, size, mtime, weight dtype, ComfyUI's device) -> (base patcher, held weakly; metadata; notes)
_SHARED_BASES: dict[tuple, tuple[weakref.ref, dict[str, str], list[str]]] = {}


def load_base_model(path: str, weight_dtype: str = "default") -> tuple[object, dict[str, str], list[str]]:
    """(patcher, file metadata, notes) for a checkpoint, streamed: the file is memory-mapped and converted one
    BFL tensor at a time straight into the model ComfyUI allocated, so no second copy of the weights exists."""
    layout, metadata = read_safetensors_layout(path)
    plan = formats.plan_to_bfl(layout)
    weights = plan.convert_stream(stream_safetensors(path, plan.source_groups()))
    patcher, shape = build_flux_patcher(plan.convert(layout), weight_dtype, weights)
    notes = [f"{os.path.basename(path)}: {plan.layout} layout, hidden {shape.hidden_size}, "
             f"{shape.depth}+{shape.depth_single_blocks} blocks, {shape.num_heads} heads"]
    if plan.ignored_keys:
        notes.append(f"ignored {len(plan.ignored_keys)} unused tensors ({plan.ignored_keys[0]}, ...): "
                     "the released inference never uses them")
    return patcher, metadata, notes


def shared_base_model(path: str, weight_dtype: str = "default") -> tuple[object, dict[str, str], list[str]]:
    """:func:`load_base_model`, shared by every loader of the same file, dtype and device while one is alive.

    Loaders of one Kontext base with different task LoRAs thus hold one set of FLUX weights: each gets a clone
    (ComfyUI clones share the model; LoRAs and the E2P patches live on the clone), and the base is never changed.
    The cache holds the base weakly (clones keep their parent alive), so ComfyUI still frees the weights when
    no node output holds them; a changed file (size or modification time) is loaded anew."""
    stat = os.stat(path) if os.path.isfile(path) else None
    if stat is None:
        return load_base_model(path, weight_dtype)          # its error names the missing file
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, weight_dtype, str(compat.load_device()))
    for stale in [k for k, (base, _, _) in _SHARED_BASES.items() if base() is None]:
        del _SHARED_BASES[stale]
    if key in _SHARED_BASES:
        base, metadata, notes = _SHARED_BASES[key]
        patcher = base()
        if patcher is not None:
            return patcher, metadata, notes + ["FLUX weights shared with the other loaders of this file"]
    patcher, metadata, notes = load_base_model(path, weight_dtype)
    _SHARED_BASES[key] = (weakref.ref(patcher), metadata, notes)
    return patcher, metadata, list(notes)


def load_e2p_checkpoint(path: str, weight_dtype: str = "default", lora_path: str | None = None,
                        lora_strength: float = 1.0, time_embedding: str = "auto") -> E2PModel:
    """An E2P full checkpoint (any layout), or a FLUX.1 Kontext base plus an E2P LoRA."""
    patcher, metadata, notes = shared_base_model(path, weight_dtype)
    task = _task_from_metadata(metadata)
    if lora_path:
        lora_tensors, lora_metadata = read_safetensors(lora_path)
        patcher, report = apply_lora(patcher, lora_tensors, lora_strength)
        notes.append(report.summary())
        task = _task_from_metadata(lora_metadata) or task
        metadata = {**metadata, **lora_metadata}
    for line in notes:
        log.info("Edit2Perceive: %s", line)
    return _model_from_files(patcher, metadata, task, time_embedding, notes)


def from_native_model(patcher, lora_path: str | None = None, lora_strength: float = 1.0,
                      time_embedding: str = "auto") -> E2PModel:
    """A MODEL from any ComfyUI loader (UNETLoader, GGUF, ...) plus an optional E2P LoRA."""
    if not compat.is_flux1_model(patcher):
        raise E2PLoadError(f"the MODEL input is a {compat.model_family(patcher)} model, not FLUX.1 Kontext; "
                           f"load the FLUX.1 Kontext base ({KONTEXT_BASE}) or an E2P checkpoint with UNETLoader, "
                           "or use Load E2P Model")
    notes = ["native MODEL input"]
    task, metadata = None, {}
    if lora_path:
        lora_tensors, metadata = read_safetensors(lora_path)
        patcher, report = apply_lora(patcher, lora_tensors, lora_strength)
        notes.append(report.summary())
        task = _task_from_metadata(metadata)
    return _model_from_files(patcher, metadata, task, time_embedding, notes)
