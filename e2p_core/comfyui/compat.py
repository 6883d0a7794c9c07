"""Every ComfyUI internal the pack touches, in one place, with what differs between ComfyUI versions.

Nodes and the rest of the core call these functions instead of reaching into ``comfy.*`` themselves, so a change
in ComfyUI is mended here once. Tested on ComfyUI 0.3.75 (November 2025) and 0.33.0 (August 2026).

Touch points and the differences found:

- Loading a FLUX transformer: ``comfy.model_detection.detect_unet_config`` and
  ``comfy.sd.load_diffusion_model_state_dict`` (what UNETLoader runs: detection, the full config, the
  ``process_unet_state_dict`` renames, dtype choice, the patcher class). 0.3.75 detects every FLUX.1 with 24 heads
  (right for the 12B model, wrong for smaller test models), so when detection disagrees with the tensors'
  own shape the model is built from the corrected config with the same steps. 0.33.0 requires ``txt_ids_dims``
  (filled in by its detection), renames attention norms ``.scale`` -> ``.weight`` on load, and its loader picks
  ``CoreModelPatcher`` (the dynamic-VRAM patcher on GPUs). Both loaders copy a whole state dict into the model,
  which would hold a checkpoint twice, so they get one-element stand_ins of each weight's shape and dtype, and
  the weights follow one tensor at a time into the parameters ComfyUI allocated (replacing the stand_ins where
  a dynamic patcher loaded with ``assign``). On CPU both versions allocate those parameters with ``torch.empty``
  (``comfy.ops`` skips initialisation), so they take memory only as they are written. Before that, the model
  is built once on the ``meta`` device (``model_config_from_unet_config``, ``get_model(device="meta")``, same on
  both) for the weight names and shapes a file must have, so a wrong file is refused before memory is allocated.
- LoRA: ``comfy.lora.model_lora_keys_unet`` and ``comfy.lora.load_lora``, ``ModelPatcher.add_patches`` and the
  patcher's ``patches`` (weight name -> list of ``(strength, patch, strength_model, offset, function)``); same on
  both. Key-map targets are a weight name or ``(weight name, (dim, start, length))`` for a slice of a fused
  weight (diffusers q/k/v). 0.33.0's key map also knows bare diffusers names. A LoRA whose shapes do not fit its
  layer is skipped by both only when the weight is computed, with an ERROR log line.
- Patches: ``comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL`` wrappers and ModelPatcher object patches of
  ``diffusion_model.time_in`` and ``diffusion_model.process_img``. The FLUX forward calls ``time_in`` on the
  stock embedding and ``process_img(ref, index=..., h_offset=..., w_offset=...)`` for each reference on both.
- Reference placement: the ``reference_latents_method`` conditioning key (0.3.75 and 0.33.0). The pack sets
  ``offset`` explicitly (index 1 for every reference) instead of relying on the model's default method.
- Sampling: ``comfy.samplers.KSAMPLER`` and the stock ``CFGGuider`` (positive only, cfg 1); same on both.
- Raw VAE decode: ``VAE.process_output``. 0.3.75 uses its return value, 0.33.0 calls it in place on a
  preallocated buffer and ignores the return; an identity works for both.
- Text conditioning: ``CLIP.tokenize(text, tokenizer_options={"t5xxl_min_length": n})``; same on both.
- Attention: ``transformer_options["optimized_attention_override"]`` called as ``override(func, *args, **kwargs)``
  on both (0.33.0 unwraps its tensor containers before calling it), ``comfy.ldm.modules.attention`` for the
  backend ComfyUI chose and ``get_attention_function``.
- Interrupt and progress: ``comfy.model_management.throw_exception_if_processing_interrupted`` and
  ``comfy.utils.ProgressBar``; same on both.
- Text under a node (warnings the user must see): ``server.PromptServer.instance.send_progress_text(text,
  node_id, sid)`` with the running node from ``comfy_execution.utils.get_executing_context()`` and the queueing
  client ``PromptServer.instance.client_id``, as ComfyUI's progress hook addresses it; same on both (core's Get
  Image Size shows sizes this way). The frontend (1.32 with 0.3.75, 1.49 with 0.33.0) shows the latest text in
  the node until the next one replaces it.
- Command-line flags: ``comfy.cli_args.args`` (``disable_metadata``, the attention flags); a script running
  ComfyUI in-process sets them with ``comfy.options.enable_args_parsing`` before ``import comfy.cli_args``.
- Node definitions: ``comfy_api.latest`` (``io.ComfyNode``, ``io.Schema``, ``ComfyExtension``) on both. 0.33.0's
  ``io.Schema`` has ``search_aliases`` (words the node search also finds a node by) and an ``io.BoundingBox`` type
  with a box widget drawn on the image; 0.3.75 has neither. The nodes pass such fields through
  :func:`optional_schema_fields` and add ``BOUNDING_BOX`` inputs where :func:`has_bounding_box`. 0.33.0's
  ``BOUNDING_BOX`` value is a dict ``{x, y, width, height}`` in image pixels (its widget, Bounding Box) or lists
  of them (SAM3 Detect gives one list per frame). Its ``ImageCrop`` widget component previews the image of the
  node's first input only. Categories: 0.3.75 files model loaders under ``loaders``, 0.33.0 under
  ``model/loaders``; only 0.33.0 has geometry estimation (Depth Anything 3, MoGe) and background removal nodes.
  :func:`stock_node_category` reads where the running version puts one of its own nodes. 0.3.75 checks a choice
  (combo) against its options at ``/prompt`` only in the dict-style form, whose declared type is the list of
  choices; a V3 ``io.Combo`` value reached the node unchecked. 0.33.0 checks both. :func:`combo_input` declares
  the list form where ComfyUI needs it.
- 3D: ``comfy_api.latest.Types.MESH``. 0.3.75's holds vertices and faces only (its SaveGLB writes bare
  geometry); 0.33.0's also takes uvs, texture, normals, vertex colours and per-item counts for batches of
  different sizes, which its SaveGLB and mesh nodes use. The fields are read from the constructor.

ComfyUI's public ``folder_paths`` module (model folders, output paths) is used directly by the nodes: it is
ComfyUI's documented extension point and identical on both versions.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Iterable

import torch

from ..mesh import MeshBatch

log = logging.getLogger("edit2perceive")

REFERENCE_METHOD = "offset"   # every reference at RoPE index 1; the pack removes the spatial offset itself


class ComfyCompatError(RuntimeError):
    """This ComfyUI lacks something the pack needs; the message says what to update."""


def comfyui_version() -> str:
    """The running ComfyUI's version string, or 'unknown'."""
    try:
        return importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return "unknown"


def parse_command_line(argv: list[str]) -> None:
    """Give an in-process ComfyUI its command-line flags (e.g. ``["--cpu"]``). ComfyUI parses them once per
    interpreter, at ``import comfy.cli_args``, and only after ``comfy.options.enable_args_parsing``; once parsed,
    this is a no-op."""
    import sys

    if "comfy.cli_args" in sys.modules:
        return
    import comfy.options

    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *argv]
    try:
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses the argv above)
    finally:
        sys.argv = saved_argv


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def detect_flux_config(bfl_state_dict: dict[str, torch.Tensor]) -> dict | None:
    """ComfyUI's own model detection for BFL-named FLUX tensors (None when it does not see a FLUX model)."""
    import comfy.model_detection

    config = comfy.model_detection.detect_unet_config(bfl_state_dict, "")
    if config is None or config.get("image_model") != "flux":
        return None
    return config


def flux_key_renames(model_config, bfl_names) -> dict[str, str]:
    """BFL name -> the name ComfyUI loads it under, after its own renames (``process_unet_state_dict``)."""
    renamed = model_config.process_unet_state_dict({name: name for name in bfl_names})
    if sorted(renamed.values()) != sorted(bfl_names):
        raise ComfyCompatError(f"ComfyUI {comfyui_version()} transforms FLUX weights on load in a way this pack "
                               "does not know; update the pack")
    return {name: key for key, name in renamed.items()}


def _shape_stand_ins(bfl_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each weight's shape and dtype backed by a single element: what ComfyUI's loader reads to choose the
    config, dtype and patcher class. The real weights follow through :func:`fill_flux_weights`, one at a time,
    so no whole second copy of the model ever exists."""
    return {name: torch.zeros((), dtype=tensor.dtype).expand(tensor.shape) for name, tensor in bfl_state_dict.items()}


def flux_model_weights(bfl_state_dict: dict[str, torch.Tensor], unet_config: dict,
                       bfl_names: Iterable[str]) -> tuple[dict[str, torch.Size], dict[str, str]]:
    """What ComfyUI's FLUX model for ``unet_config`` holds, known before any weight memory exists: its weight
    names and shapes (from the model built on the meta device) and the name each of ``bfl_names`` loads under
    (:func:`flux_key_renames`). ``bfl_state_dict`` gives the shapes and dtypes detection reads."""
    import comfy.model_detection

    stand_ins = _shape_stand_ins(bfl_state_dict)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, stand_ins)
    if model_config is None:
        raise ComfyCompatError(f"ComfyUI {comfyui_version()} does not know the FLUX model configuration; update "
                               "ComfyUI")
    model = model_config.get_model(stand_ins, "", device="meta")
    shapes = {name: tensor.shape for name, tensor in model.diffusion_model.state_dict().items()}
    return shapes, flux_key_renames(model_config, list(bfl_names))


def load_flux_stock(bfl_state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None):
    """UNETLoader's path: ComfyUI's ``load_diffusion_model_state_dict`` with only the dtype chosen by us.

    ``bfl_state_dict`` gives names, shapes and dtypes (``meta`` tensors do); the weights are zero until
    :func:`fill_flux_weights`."""
    import comfy.sd

    model_options = {} if dtype is None else {"dtype": dtype}
    patcher = comfy.sd.load_diffusion_model_state_dict(_shape_stand_ins(bfl_state_dict), model_options=model_options)
    if patcher is None:
        raise ComfyCompatError(f"ComfyUI {comfyui_version()} did not recognise the FLUX.1 transformer; update "
                               "ComfyUI")
    return patcher


def load_flux_from_config(bfl_state_dict: dict[str, torch.Tensor], unet_config: dict, dtype: torch.dtype | None):
    """The same steps as ComfyUI's loader, from a corrected detection config (see the module docstring);
    weights as in :func:`load_flux_stock`."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils

    stand_ins = _shape_stand_ins(bfl_state_dict)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, stand_ins)
    if model_config is None:
        raise ComfyCompatError(f"ComfyUI {comfyui_version()} does not know the FLUX model configuration; update "
                               "ComfyUI")
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    supported = list(model_config.supported_inference_dtypes)
    if dtype is None:
        dtype = mm.unet_dtype(model_params=comfy.utils.calculate_parameters(stand_ins),
                              supported_dtypes=supported, weight_dtype=comfy.utils.weight_dtype(stand_ins))
    model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, supported))
    model = model_config.get_model(stand_ins, "")
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_class(model, load_device=load_device, offload_device=offload_device)
    if not mm.is_device_cpu(offload_device):
        model.to(offload_device)
    if hasattr(patcher, "is_dynamic"):
        model.load_model_weights(stand_ins, "", assign=patcher.is_dynamic())
    else:
        model.load_model_weights(stand_ins, "")
    return patcher


def fill_flux_weights(patcher, bfl_weights: Iterable[tuple[str, torch.Tensor]], renames: dict[str, str]) -> None:
    """Write (BFL name, tensor) pairs into the model built by :func:`load_flux_stock` or
    :func:`load_flux_from_config`, one tensor at a time, as ComfyUI's ``load_state_dict`` would: copied (and cast)
    into the parameter ComfyUI allocated, or, where ComfyUI assigned the stand-in itself (dynamic patchers load
    with ``assign``), into a new parameter of the stand-in's dtype. ``renames``: :func:`flux_key_renames` of the
    whole model. Nothing is kept of ``tensor``."""
    diffusion_model = patcher.model.diffusion_model
    with torch.no_grad():
        for name, tensor in bfl_weights:
            owner_name, _, attribute = renames[name].rpartition(".")
            owner = diffusion_model.get_submodule(owner_name)
            current = getattr(owner, attribute)
            if current.untyped_storage().nbytes() >= current.numel() * current.element_size():
                current.copy_(tensor)
            else:
                setattr(owner, attribute, torch.nn.Parameter(tensor.to(current.dtype, copy=True),
                                                             requires_grad=current.requires_grad))
            del tensor, current          # before the next tensor is read, so its source can be released


def load_device():
    """The device ComfyUI runs diffusion models on (part of what makes two loads of one file interchangeable)."""
    import comfy.model_management

    return comfy.model_management.get_torch_device()


# ---------------------------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------------------------


def stock_lora_key_map(patcher) -> dict[str, object]:
    import comfy.lora

    return comfy.lora.model_lora_keys_unet(patcher.model, {})


def lora_patches(lora_state_dict: dict[str, torch.Tensor], targets: dict[str, object]) -> dict:
    """ComfyUI's patches for ``targets`` (LoRA module -> key-map target), keyed by target."""
    import comfy.lora

    return comfy.lora.load_lora(lora_state_dict, targets, log_missing=False)


@dataclass(frozen=True)
class LoraTarget:
    """The part of a model weight a LoRA module patches: the whole weight, or for a fused layer (qkv, linear1)
    the slice of it that ComfyUI's key map names."""

    weight: str                                  # the model's weight name (diffusion_model....weight)
    weight_shape: tuple[int, ...] | None         # None: the model has no such weight
    part: tuple[int, int, int] | None = None     # (dim, start, length) of a fused weight's slice

    @property
    def patched_shape(self) -> tuple[int, ...] | None:
        """The shape of what is patched; None when the weight is missing or the slice lies outside it."""
        if self.weight_shape is None or self.part is None:
            return self.weight_shape
        dim, start, length = self.part
        if start + length > self.weight_shape[dim]:
            return None
        return self.weight_shape[:dim] + (length,) + self.weight_shape[dim + 1:]

    def describe(self) -> str:
        if self.part is None:
            return self.weight
        dim, start, length = self.part
        span = f"{start}-{start + length - 1}"
        return f"rows {span} of {self.weight}" if dim == 0 else f"entries {span} along dim {dim} of {self.weight}"


def lora_targets(patcher, key_map_targets: dict[str, object]) -> dict[str, LoraTarget]:
    """What each LoRA module's key-map target (a weight name, or ComfyUI's ``(weight, (dim, start, length))`` for
    a fused layer's slice) patches in this model. Shapes are the weights' logical ones (GGUF's quantized weights
    report theirs as ``tensor_shape``); a weight is present when ``add_patches`` would accept it."""
    import comfy.utils

    present = set(patcher.model.state_dict())
    found = {}
    for module, target in key_map_targets.items():
        weight, part = (target, None) if isinstance(target, str) else (target[0], tuple(target[1]))
        shape = None
        if weight in present:
            tensor = comfy.utils.get_attr(patcher.model, weight)
            shape = tuple(int(size) for size in getattr(tensor, "tensor_shape", tensor.shape))
        found[module] = LoraTarget(weight, shape, part)
    return found


def held_patches(patcher, patches: dict) -> set:
    """The keys of ``patches`` (as given to ``add_patches``) whose patch this patcher now holds on its weight:
    what will really be applied, whatever ``add_patches`` returned."""
    held = set()
    for target, patch in patches.items():
        weight = target if isinstance(target, str) else target[0]
        if any(entry[1] is patch for entry in patcher.patches.get(weight, ())):
            held.add(target)
    return held


def unet_config(patcher) -> dict:
    return patcher.model.model_config.unet_config


def model_family(patcher) -> str:
    """What kind of model a MODEL holds: ComfyUI's model config class name (``Flux``, ``SD15``, ``SDXL`` ...)."""
    return type(patcher.model.model_config).__name__


def is_flux1_model(patcher) -> bool:
    """A FLUX.1 transformer (dev, schnell, Kontext): what the E2P patches and LoRAs apply to."""
    return unet_config(patcher).get("image_model") == "flux"


def flux_text_input_widths(patcher) -> tuple[int, int | None]:
    """(T5 sequence width, pooled CLIP width or None) the FLUX transformer's text inputs take."""
    config = unet_config(patcher)
    return int(config["context_in_dim"]), config.get("vec_in_dim")


def model_latent_channels(patcher) -> int:
    return int(patcher.model.latent_format.latent_channels)


def vae_latent_channels(vae) -> int:
    """Latent channels of a ComfyUI VAE: 16 for FLUX's ae, 4 for SD1.5/SDXL."""
    return int(vae.latent_channels)


def model_weight_dtype(patcher) -> torch.dtype:
    """The dtype the transformer's weights are stored in."""
    return patcher.model.get_dtype()


def non_finite_weights(patcher) -> list[str]:
    """Names of the transformer's weights that hold NaN or infinite values (one tensor at a time in float32)."""
    found = []
    for name, tensor in patcher.model.diffusion_model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor.to(torch.float32)).all():
            found.append(name)
    return found


# ---------------------------------------------------------------------------------------------------------------
# Patches, sampling, decoding
# ---------------------------------------------------------------------------------------------------------------


def diffusion_model_wrapper_type():
    import comfy.patcher_extension

    return comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL


def ksampler(sampler_function, extra_options: dict):
    import comfy.samplers

    return comfy.samplers.KSAMPLER(sampler_function, extra_options=extra_options)


def positive_only_guider(patcher, conditioning: list):
    """ComfyUI's stock ``CFGGuider`` at cfg 1 with only a positive conditioning (the official cfg is 1).

    Core's ``Guider_Basic`` pattern, without importing a node module: with no negative and cfg 1 the stock
    ``predict_noise`` calls ``sampling_function(model, x, t, None, positive, 1.0)``, whose cfg-1 shortcut drops
    the unconditional pass, so the model runs once per step (0.3.75 and 0.33.0 alike).
    """
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(patcher)
    guider.inner_set_conds({"positive": conditioning})
    guider.set_cfg(1.0)
    return guider


def raw_vae_decoder(vae):
    """The same VAE, decoding to the model's raw [-1, 1] output instead of ComfyUI's clamped [0, 1] image.

    An identity ``process_output`` is right for both calling styles (returned value on 0.3.75, in place on 0.33.0).
    """
    unclamped = copy.copy(vae)
    unclamped.process_output = lambda image: image
    return unclamped


def load_vae(state_dict: dict[str, torch.Tensor]):
    import comfy.sd

    return comfy.sd.VAE(sd=state_dict)


def throw_if_interrupted() -> None:
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def progress_bar(total: int):
    import comfy.utils

    return comfy.utils.ProgressBar(total)


def show_text_on_node(text: str) -> bool:
    """Show ``text`` under the running node in the ComfyUI frontend of the client that queued the prompt
    (replacing what the node showed before). False where there is no server or no running node (scripts,
    in-process use), where logs are the only channel."""
    from comfy_execution.utils import get_executing_context
    from server import PromptServer

    server, context = getattr(PromptServer, "instance", None), get_executing_context()
    if server is None or context is None:
        return False
    server.send_progress_text(text, context.node_id, server.client_id)
    return True


def metadata_disabled() -> bool:
    """True when ComfyUI was started with --disable-metadata."""
    from comfy.cli_args import args

    return bool(args.disable_metadata)


def tokenize_padded(clip, text: str, t5_min_length: int):
    return clip.tokenize(text, tokenizer_options={"t5xxl_min_length": t5_min_length})


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


def attention_backend_chosen_by_flag() -> bool:
    """The user picked an attention backend on the command line (--use-split/quad-cross-attention)."""
    from comfy.cli_args import args

    return bool(args.use_quad_cross_attention or args.use_split_cross_attention)


def model_attention_is_sub_quadratic_fallback() -> bool:
    """ComfyUI runs transformer attention with its sub-quadratic fallback (what it picks on a CPU)."""
    from comfy.ldm.modules import attention

    return attention.optimized_attention is attention.attention_sub_quad


def override_model_attention(patcher, function) -> bool:
    """Run this model's attention as ``function(q, k, v, heads, ...)`` (ComfyUI's attention signature); False,
    changing nothing, when another node already set an override on it."""
    transformer_options = patcher.model_options.setdefault("transformer_options", {})
    if "optimized_attention_override" in transformer_options:
        return False

    def use_function(default_function, *args, **kwargs):
        return function(*args, **kwargs)

    transformer_options["optimized_attention_override"] = use_function
    return True


def sdpa_model_attention():
    """ComfyUI's torch scaled_dot_product_attention backend for transformers."""
    from comfy.ldm.modules import attention

    return attention.get_attention_function("pytorch")


def vae_network(vae) -> torch.nn.Module:
    """The VAE's torch module (encoder and decoder)."""
    return vae.first_stage_model


def vae_device(vae) -> torch.device:
    return torch.device(vae.device)


def vae_attention_backends():
    """(ComfyUI's fallback, its torch SDPA) for the VAE's attention blocks: the functions an ``AttnBlock`` holds
    as ``optimized_attention``, the same on both versions."""
    from comfy.ldm.modules.diffusionmodules import model

    return model.normal_attention, model.pytorch_attention


# ---------------------------------------------------------------------------------------------------------------
# 3D meshes (ComfyUI's MESH type)
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def native_mesh_fields() -> frozenset[str] | None:
    """The constructor fields of the running ComfyUI's ``MESH`` type, or None when it has none. Detected once."""
    try:
        from comfy_api.latest import Types
    except ImportError:
        return None
    mesh_class = getattr(Types, "MESH", None)
    if mesh_class is None:
        return None
    return frozenset(inspect.signature(mesh_class).parameters)


def has_native_mesh() -> bool:
    return native_mesh_fields() is not None


def mesh_has_counts() -> bool:
    """Whether this version's MESH holds items of different sizes with per-item counts (0.33.0)."""
    return {"vertex_counts", "face_counts"} <= (native_mesh_fields() or frozenset())


def native_mesh(batch: MeshBatch, texture: torch.Tensor | None = None):
    """A batch of meshes (``e2p_core.mesh.batch_meshes``, made for ``mesh_has_counts()``) as ComfyUI's ``MESH``,
    with each optional field this version's MESH accepts; fields it lacks are left out."""
    fields = native_mesh_fields()
    if fields is None:
        raise ComfyCompatError(f"ComfyUI {comfyui_version()} has no MESH type; update ComfyUI to pass meshes to "
                               "its 3D nodes (the GLB and PLY files are written either way)")
    from comfy_api.latest import Types

    options = {name: value for name, value in batch.per_vertex.items() if name in fields}
    if texture is not None and "texture" in fields:
        options["texture"] = texture
    if batch.vertex_counts is not None:
        options.update(vertex_counts=batch.vertex_counts, face_counts=batch.face_counts)
    return Types.MESH(batch.vertices, batch.faces, **options)


# ---------------------------------------------------------------------------------------------------------------
# Node definitions (comfy_api.latest.io)
# ---------------------------------------------------------------------------------------------------------------

# io.Schema fields some tested versions lack (0.3.75: search_aliases). Any other field goes to io.Schema as given,
# so a misspelt one still fails loudly.
VERSION_DEPENDENT_SCHEMA_FIELDS = frozenset({"search_aliases"})


@functools.cache
def schema_field_names() -> frozenset[str]:
    """The fields the running ComfyUI's ``io.Schema`` accepts."""
    import dataclasses

    from comfy_api.latest import io

    return frozenset(field.name for field in dataclasses.fields(io.Schema))


def optional_schema_fields(**fields) -> dict:
    """The version-dependent ``io.Schema`` fields among ``fields`` that this ComfyUI supports, to pass on as
    keywords; the others are left out (0.3.75 shows no search aliases, the node is still found by its name)."""
    unknown = set(fields) - VERSION_DEPENDENT_SCHEMA_FIELDS
    if unknown:
        raise ComfyCompatError(f"{sorted(unknown)} are io.Schema fields every tested ComfyUI has; pass them to "
                               "io.Schema directly")
    return {name: value for name, value in fields.items() if name in schema_field_names()}


@functools.cache
def has_bounding_box() -> bool:
    """Whether this ComfyUI has the ``BOUNDING_BOX`` type (``io.BoundingBox``: core's box widget, SAM3 Detect's
    ``bboxes``): 0.33.0 has it, 0.3.75 not. Without it a node's boxes stay typed text."""
    from comfy_api.latest import io

    return hasattr(io, "BoundingBox")


@functools.cache
def checks_v3_combo_values() -> bool:
    """Whether ``/prompt`` checks a V3 combo's value against its options. ComfyUI gained that check in the change
    that also made it look declared input types up in a table of dynamic inputs (``DYNAMIC_INPUT_LOOKUP`` in
    ``comfy_api.latest._io``, December 2025), where a list as a type would fail: 0.33.0 has both, 0.3.75 neither.
    Only a ComfyUI older than 0.4 without that table counts as not checking, so a later release that moved the
    table never gets list types."""
    internals = importlib.import_module("comfy_api.latest._io")
    return hasattr(internals, "DYNAMIC_INPUT_LOOKUP") or not _older_than((0, 4, 0))


def _older_than(version: tuple[int, ...]) -> bool:
    """Whether the running ComfyUI's version is below ``version`` (False when it cannot be read)."""
    try:
        running = tuple(int(part) for part in comfyui_version().split(".")[:len(version)])
    except ValueError:
        return False
    return running < version


def combo_input(input_id: str, options: list, **settings):
    """A choice input whose wrong values (a model file that is not there, a misspelt choice in an API prompt)
    ComfyUI refuses at ``/prompt`` with "value not in list", on every version: ``io.Combo.Input`` where ComfyUI
    checks V3 combos, else the same input declaring the list of choices as its type, the form 0.3.75 checks (and
    shows exactly as the dict-style nodes did). ``settings``: ``io.Combo.Input``'s keywords."""
    from comfy_api.latest import io

    combo_class = io.Combo.Input if checks_v3_combo_values() else _listed_combo_input()
    return combo_class(input_id, options=options, **settings)


@functools.cache
def _listed_combo_input():
    from comfy_api.latest import io

    class ListedComboInput(io.Combo.Input):
        """A combo declared as ``[choices, {settings}]``, the dict-style form."""

        def get_io_type(self):
            return list(self.options)

        def as_dict(self):
            settings = super().as_dict()
            settings.pop("options", None)
            settings.pop("multiselect", None)
            return settings

    return ListedComboInput


def stock_node_category(node_id: str, fallback: str) -> str:
    """The Add Node menu category the running ComfyUI gives its own node ``node_id`` (``fallback`` where it has no
    such node), so a pack node can sit beside the host's nodes of the same kind in every version."""
    import nodes

    node_class = nodes.NODE_CLASS_MAPPINGS.get(node_id)
    return fallback if node_class is None else node_class.CATEGORY
