"""Build an Edit2Perceive model as a ComfyUI ModelPatcher from any supported file, or from a native MODEL.

The transformer is built by ComfyUI's own diffusion-model loader (what UNETLoader runs) after conversion to BFL
names, so comfy.model_management and ComfyUI's patcher class own device placement, offloading, lowvram and
dynamic VRAM. LoRAs go through ComfyUI's patch mechanism, never by rewriting the base weights.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .. import checkpoint_layouts
from ..model_registry import KONTEXT_BASE
from . import compat
from ..safetensors_io import check_float_tensors, read_safetensors, read_safetensors_layout, stream_safetensors
from .patches import apply_e2p_patches
from ..metadata_keys import META_REPRESENTATION, META_TASK, META_TIME_EMBEDDING
from ..release import TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK
from ..tasks import TASKS, TASK_AUTO, TASK_NAMES, task_from_file_name, task_spec

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


@dataclass(frozen=True)
class BoundModel:
    """Weights bound to the one task they were checked for, with that task's conditioning: what every prediction
    takes (the task nodes, E2PPredictor, the evaluation and the labelling), so no caller passes the parts apart."""

    patcher: object                     # comfy.model_patcher.ModelPatcher with the E2P patches applied
    task: str
    cond: torch.Tensor                  # the task prompt's T5 conditioning [1, L, D]
    pooled: torch.Tensor                # its CLIP pooled output [1, P]
    time_embedding: str
    description: tuple[str, ...] = ()

    def require_task(self, task: str) -> None:
        """A task node refuses a model bound to another task (the loader's task widget decides the binding)."""
        if self.task != task:
            raise ValueError(f"this E2P model was loaded for '{self.task}'; set task = '{task}' in the loader "
                             f"(with the {task} weights) for this node")


@dataclass
class E2PModel:
    """Loaded weights before they are bound to a task: the patched model and what the files say about it."""

    patcher: object                     # comfy.model_patcher.ModelPatcher with the E2P patches applied
    task: str | None                    # from file metadata; None when the files do not say
    time_embedding: str
    description: list[str] = field(default_factory=list)
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
                 cond_source: str = "the conditioning", notes: tuple[str, ...] = ()) -> BoundModel:
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
        return BoundModel(self.patcher, task, cond, pooled, self.time_embedding, (*self.description, *notes))

    def bind(self, requested_task: str, file_names: list[str], conditioning_for) -> BoundModel:
        """The one binding every route runs: the task (``auto`` or a choice, checked against the files' metadata
        and names), then ``conditioning_for(task)`` -> (cond, pooled, where it came from), checked against the
        model."""
        task, said_by = self.resolve_task(requested_task, file_names)
        cond, pooled, source = conditioning_for(task)
        return self.for_task(task, cond, pooled, f"the {task} conditioning ({source})",
                             (f"task: {task} ({said_by})", f"conditioning: {source}"))


def _resolve_time_embedding(requested: str, metadata: dict[str, str]) -> str:
    if requested != "auto":
        return requested
    stored = metadata.get(META_TIME_EMBEDDING)
    if stored in (TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK):
        return stored
    return TIME_EMBEDDING_OFFICIAL


def _task_from_metadata(metadata: dict[str, str], path: str) -> str | None:
    """The task a file's metadata states (None when it states none); a task this pack does not know is refused,
    since no node here could decode what such weights predict."""
    task = metadata.get(META_TASK)
    if task is None or task in TASKS:
        return task
    raise E2PLoadError(f"{os.path.basename(path)}'s metadata names the task {task!r} ({META_TASK}), which this node "
                       f"pack does not know (it knows {', '.join(TASK_NAMES)}): these weights were trained for "
                       "something else. Use weights of one of those tasks, or a version of the pack that has it")


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
                       weights: Iterable[tuple[str, torch.Tensor]] | None = None, source: str = "the checkpoint",
                       file_name: Callable[[str], str] = str):
    """ComfyUI FLUX model from BFL tensors through ComfyUI's own loader, with names and shapes checked strictly
    against the model ComfyUI builds, before any weight memory is allocated (ComfyUI itself only logs missing or
    unexpected weights, and a wrong shape fails inside torch with no file named).

    ``bfl_state_dict`` gives the names, shapes and dtypes (``meta`` tensors are enough); the weights come from
    ``weights``, (BFL name, tensor) pairs written into the model one at a time, or else from ``bfl_state_dict``.
    ``source`` and ``file_name`` (BFL name -> the file's own name for it) are for the messages."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise E2PLoadError(f"unknown weight dtype '{weight_dtype}'; use one of {', '.join(WEIGHT_DTYPES)}")
    shape = checkpoint_layouts.infer_shape(bfl_state_dict)
    detected = compat.detect_flux_config(bfl_state_dict)
    if detected is None:
        raise E2PLoadError(f"ComfyUI {compat.comfyui_version()} does not recognise these tensors as a FLUX.1 "
                           "transformer; the file is of another architecture, or ComfyUI needs an update")
    config = detected if detected.get("num_heads") == shape.num_heads else {**detected, "num_heads": shape.num_heads}
    known_names = set(bfl_state_dict) | set(checkpoint_layouts.bfl_tensor_names(shape.depth, shape.depth_single_blocks))
    expected, renames = compat.flux_model_weights(bfl_state_dict, config, known_names)
    _check_against_model(bfl_state_dict, expected, renames, shape, source, file_name)
    dtype = WEIGHT_DTYPES[weight_dtype]
    if config is detected:
        patcher = compat.load_flux_stock(bfl_state_dict, dtype)
    else:
        log.info("Edit2Perceive: ComfyUI detected %s heads for a hidden size of %d; building with %d",
                 detected.get("num_heads"), shape.hidden_size, shape.num_heads)
        patcher = compat.load_flux_from_config(bfl_state_dict, config, dtype)
    compat.fill_flux_weights(patcher, bfl_state_dict.items() if weights is None else weights, renames)
    return patcher, shape


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _listed(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _check_against_model(bfl_state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size],
                         renames: dict[str, str], shape: checkpoint_layouts.FluxShape, source: str,
                         file_name: Callable[[str], str]) -> None:
    """Refuse tensors that the FLUX model ComfyUI builds for this file lacks, needs or shapes otherwise, named as
    the file names them."""
    size = f"hidden size {shape.hidden_size}, {shape.depth} double + {shape.depth_single_blocks} single blocks"
    bfl_of = {key: name for name, key in renames.items()}
    given = {renames[name]: name for name in bfl_state_dict}
    missing = sorted(file_name(bfl_of.get(key, key)) for key in set(expected) - set(given))
    if missing:
        raise E2PLoadError(f"{source} lacks {_count(missing, 'tensor')} that a FLUX.1 Kontext transformer of its size "
                           f"({size}) has: {_listed(missing)}; the file is incomplete (download it again) or of "
                           "another FLUX variant")
    unexpected = sorted(file_name(name) for key, name in given.items() if key not in expected)
    if unexpected:
        raise E2PLoadError(f"{source} has {_count(unexpected, 'tensor')} that a FLUX.1 Kontext transformer of its size "
                           f"({size}) does not have: {_listed(unexpected)}; the file is of another architecture or "
                           "FLUX variant")
    wrong = [(name, list(bfl_state_dict[name].shape), list(expected[key])) for key, name in sorted(given.items())
             if tuple(bfl_state_dict[name].shape) != tuple(expected[key])]
    if wrong:
        name, found, needed = wrong[0]
        more = f" ({len(wrong) - 1} more tensors have wrong shapes)" if len(wrong) > 1 else ""
        raise E2PLoadError(f"{source}: tensor {file_name(name)} has shape {found} where a FLUX.1 Kontext transformer "
                           f"of this size ({size}) has {needed}{more}. The file is not an Edit2Perceive / FLUX.1 "
                           "Kontext checkpoint of this architecture, or it is damaged: use the released file (or "
                           "download it again)")


def lora_key_map(patcher) -> dict[str, object]:
    """ComfyUI's own LoRA key map for this model, plus the names ComfyUI 0.3.75 does not know:
    DiffSynth/peft module names (the official trainer's) and bare diffusers names (without ``transformer.``)."""
    key_map = compat.stock_lora_key_map(patcher)
    config = compat.unet_config(patcher)
    official_targets = checkpoint_layouts.diffsynth_lora_targets(config["depth"], config["depth_single_blocks"])
    for source, target in official_targets.items():
        key_map.setdefault(source, f"diffusion_model.{target}")
    for name, target in list(key_map.items()):
        if name.startswith("transformer."):
            key_map.setdefault(name[len("transformer."):], target)
    return key_map


@dataclass
class LoraReport:
    modules_in_file: int
    modules_applied: int
    strength: float = 1.0

    def summary(self) -> str:
        if self.strength == 0:
            return (f"LoRA: strength 0, so none of its {self.modules_in_file} modules applied (checked; the base "
                    "model runs unchanged)")
        return f"LoRA: {self.modules_applied} of {self.modules_in_file} modules applied"


def check_lora_strength(strength) -> float:
    """``lora_strength`` as a float; anything but a finite number is refused here, where it is given, instead of
    surfacing as a NaN prediction blamed on the files."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength):
        raise E2PLoadError(f"lora_strength must be a finite number, not {strength!r}: 1.0 applies the LoRA as "
                           "trained, 0 runs the base model without it")
    return float(strength)


def _refusal(source: str, problem: str, defects: list[tuple[str, str]], modules: int, advice: str) -> E2PLoadError:
    listing = "; ".join(f"{name}: {defect}" for name, defect in defects[:3])
    more = f" (and {len(defects) - 3} more)" if len(defects) > 3 else ""
    return E2PLoadError(f"{source} {problem}: {len(defects)} of its {modules} modules cannot be applied. "
                        f"{listing}{more}. {advice}")


def apply_lora(patcher, lora_state_dict: dict[str, torch.Tensor], strength: float = 1.0,
               source: str = "this LoRA file"):
    """Clone ``patcher`` with the LoRA as weight patches, after checking every module against the layer it patches:
    ComfyUI itself skips a module whose shapes do not fit (with only a log line) and fails on a broken pair, so
    each is refused here, naming the module. The report counts the patches the clone really holds."""
    strength = check_lora_strength(strength)
    normalized = checkpoint_layouts.normalize_lora_keys(lora_state_dict)
    modules = checkpoint_layouts.lora_modules(normalized)
    if not any(module.has_half for module in modules.values()):
        raise E2PLoadError(f"{source} has no LoRA tensors (lora_A/lora_B or lora_down/lora_up); it looks like "
                           f"{checkpoint_layouts.describe_foreign(lora_state_dict)}")
    damaged = [(name, "; ".join(found)) for name, module in sorted(modules.items()) if (found := module.defects())]
    if damaged:
        raise _refusal(source, "is damaged", damaged, len(modules),
                       "ComfyUI would skip or fail on these layers. Download the file again, or export it again "
                       "from its training run")
    key_map = lora_key_map(patcher)
    unmatched = sorted(name for name in modules if name not in key_map)
    if unmatched:
        raise E2PLoadError(f"LoRA: 0 of {len(modules)} modules applied: {len(unmatched)} match no layer of this "
                           f"model (e.g. {', '.join(unmatched[:3])}). Is {source} for FLUX.1 Kontext of this size?")
    targets = {name: key_map[name] for name in modules}
    placed = compat.lora_targets(patcher, targets)
    misfits = []
    first_of_target: dict[object, str] = {}
    for name, module in sorted(modules.items()):
        target = placed[name]
        if target.weight_shape is None:
            misfits.append((name, f"patches {target.weight}, which this model does not have"))
        elif target.patched_shape is None:
            misfits.append((name, f"patches {target.describe()}, outside that {target.weight_shape} weight"))
        elif (defect := module.target_defect(target.patched_shape)) is not None:
            misfits.append((name, f"{defect} ({target.describe()})"))
        elif (other := first_of_target.setdefault(targets[name], name)) != name:
            misfits.append((name, f"patches the same layer as {other}; the file holds two LoRAs for it"))
    if misfits:
        raise _refusal(source, "does not fit this model", misfits, len(modules),
                       "It is a LoRA for another model or size of FLUX (use one made for FLUX.1 Kontext [dev]), or "
                       "the file is damaged (download it again)")
    report = LoraReport(len(modules), 0, strength)
    if strength == 0:                   # as ComfyUI's LoraLoader: the model unchanged
        return patcher, report
    patches = compat.lora_patches(normalized, targets)
    patched = patcher.clone()
    patched.add_patches(patches, strength)
    held = compat.held_patches(patched, patches)
    skipped = sorted(name for name in modules if targets[name] not in held)
    report.modules_applied = len(modules) - len(skipped)
    if skipped:
        raise E2PLoadError(f"{report.summary()}: ComfyUI {compat.comfyui_version()} did not take the patches of "
                           f"{', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}; the file's naming is one "
                           "this ComfyUI does not read")
    return patched, report


# (real path, size, mtime, weight dtype, ComfyUI's device) -> (base patcher, held weakly; metadata; notes)
_SHARED_BASES: dict[tuple, tuple[weakref.ref, dict[str, str], list[str]]] = {}


def load_base_model(path: str, weight_dtype: str = "default") -> tuple[object, dict[str, str], list[str]]:
    """(patcher, file metadata, notes) for a checkpoint, streamed: the file is memory-mapped and converted one
    BFL tensor at a time straight into the model ComfyUI allocated, so no second copy of the weights exists."""
    name = os.path.basename(path)
    layout, metadata = read_safetensors_layout(path)
    try:
        plan = checkpoint_layouts.plan_to_bfl(layout)
        check_float_tensors(name, layout)
        weights = plan.convert_stream(stream_safetensors(path, plan.source_groups()))
        patcher, shape = build_flux_patcher(plan.convert(layout), weight_dtype, weights, name, plan.file_name)
    except checkpoint_layouts.UnsupportedCheckpoint as error:
        raise checkpoint_layouts.UnsupportedCheckpoint(f"{name}: {error}") from None
    notes = [f"{name}: {plan.layout} layout, hidden {shape.hidden_size}, "
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


def _lora_source(lora_path: str) -> str:
    return f"the LoRA file {os.path.basename(lora_path)}"


def load_e2p_checkpoint(path: str, weight_dtype: str = "default", lora_path: str | None = None,
                        lora_strength: float = 1.0, time_embedding: str = "auto") -> E2PModel:
    """An E2P full checkpoint (any layout), or a FLUX.1 Kontext base plus an E2P LoRA."""
    lora_strength = check_lora_strength(lora_strength)
    patcher, metadata, notes = shared_base_model(path, weight_dtype)
    task = _task_from_metadata(metadata, path)
    if lora_path:
        lora_tensors, lora_metadata = read_safetensors(lora_path)
        patcher, report = apply_lora(patcher, lora_tensors, lora_strength, _lora_source(lora_path))
        notes.append(report.summary())
        task = _task_from_metadata(lora_metadata, lora_path) or task
        metadata = {**metadata, **lora_metadata}
    for line in notes:
        log.info("Edit2Perceive: %s", line)
    return _model_from_files(patcher, metadata, task, time_embedding, notes)


def from_native_model(patcher, lora_path: str | None = None, lora_strength: float = 1.0,
                      time_embedding: str = "auto") -> E2PModel:
    """A MODEL from any ComfyUI loader (UNETLoader, GGUF, ...) plus an optional E2P LoRA."""
    lora_strength = check_lora_strength(lora_strength)
    if not compat.is_flux1_model(patcher):
        raise E2PLoadError(f"the MODEL input is a {compat.model_family(patcher)} model, not FLUX.1 Kontext; "
                           f"load the FLUX.1 Kontext base ({KONTEXT_BASE}) or an E2P checkpoint with UNETLoader, "
                           "or use Load E2P Model")
    notes = ["native MODEL input"]
    task, metadata = None, {}
    if lora_path:
        lora_tensors, metadata = read_safetensors(lora_path)
        patcher, report = apply_lora(patcher, lora_tensors, lora_strength, _lora_source(lora_path))
        notes.append(report.summary())
        task = _task_from_metadata(metadata, lora_path)
    return _model_from_files(patcher, metadata, task, time_embedding, notes)
