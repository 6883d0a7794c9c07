"""Nodes that produce an E2P_MODEL: the patched FLUX Kontext model bound to one task and its conditioning."""

from __future__ import annotations

from comfy_api.latest import io

from ..e2p_core.comfyui import compat, conditioning, loader
from ..e2p_core.tasks import TASK_AUTO, TASK_NAMES
from . import categories, model_paths

E2PModel = io.Custom("E2P_MODEL")

TIME_EMBEDDINGS = ["auto", "bf16_frequencies", "fp32_frequencies"]
TIME_EMBEDDING_TOOLTIP = ("auto: what the file's metadata says, else the official bf16-rounded frequencies the "
                          "released checkpoints were trained with. fp32_frequencies: ComfyUI's stock FLUX embedding.")
CLIP_TOOLTIP = ("Only needed once per task: DualCLIPLoader (clip_l + t5xxl, type flux). The encoded prompt is cached "
                "in models/embeddings/edit2perceive and later runs need no text encoder.")
LOADER_ALIASES = ["edit2perceive", "e2p", "flux kontext", "depth model", "normal map model", "matting model",
                  "lora"]


def _common_inputs() -> list:
    return [
        compat.combo_input("task", [TASK_AUTO, *TASK_NAMES], default=TASK_AUTO,
                           tooltip="What the weights predict. auto: the file's e2p.task metadata, else depth/normal/"
                                   "matting in the checkpoint or LoRA file name (as in the released files). A choice "
                                   "that contradicts either is refused."),
        compat.combo_input("lora", model_paths.lora_choices(),
                           tooltip="An Edit2Perceive LoRA (*_lora.safetensors) from models/loras or "
                                   "models/edit2perceive, or none."),
        io.Float.Input("lora_strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                       tooltip="LoRA weight; the official LoRAs are meant for 1.0."),
        compat.combo_input("time_embedding", TIME_EMBEDDINGS, default="auto", tooltip=TIME_EMBEDDING_TOOLTIP),
    ]


def _model_outputs() -> list:
    return [
        E2PModel.Output(display_name="e2p_model",
                        tooltip="Model bound to the task and its conditioning, for E2PDepth/E2PNormal/E2PMatting."),
        io.Model.Output(display_name="model",
                        tooltip="The patched FLUX model (official time embedding and reference placement)."),
        io.String.Output(display_name="info",
                         tooltip="What was loaded: layout, size, LoRA modules applied, conditioning source."),
    ]


def _bind_task(e2p: loader.E2PModel, requested_task: str, file_names: list[str], clip) -> loader.BoundModel:
    return e2p.bind(requested_task, file_names,
                    lambda task: conditioning.resolve_conditioning(task, model_paths.conditioning_cache_folder(), clip))


def _file_names(*choices: str) -> list[str]:
    return [choice for choice in choices if choice and choice != model_paths.NONE]


class LoadE2PModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadE2PModel",
            display_name="Load E2P Model",
            category=categories.model_loaders(),
            description="Loads Edit2Perceive weights: an official full checkpoint (depth/normal/matting.safetensors, "
                        "any key layout) or a FLUX.1 Kontext base plus an E2P LoRA. Outputs the model for the E2P "
                        "task nodes and, as MODEL, the same patched model for stock sampler graphs.",
            **compat.optional_schema_fields(search_aliases=LOADER_ALIASES),
            inputs=[
                compat.combo_input("checkpoint", model_paths.checkpoint_choices(),
                                   tooltip="From models/edit2perceive or models/diffusion_models: an E2P full "
                                           "checkpoint, or the FLUX.1 Kontext base (flux1-kontext-dev.safetensors) "
                                           "when a LoRA is selected."),
                compat.combo_input("weight_dtype", list(loader.WEIGHT_DTYPES), default="default",
                                   tooltip="Storage precision of the transformer weights. default: what ComfyUI picks "
                                           "for this device; fp8_e4m3fn halves memory."),
                *_common_inputs(),
                io.Clip.Input("clip", optional=True, tooltip=CLIP_TOOLTIP),
            ],
            outputs=_model_outputs(),
        )

    @classmethod
    def execute(cls, checkpoint, weight_dtype, task, lora, lora_strength, time_embedding, clip=None) -> io.NodeOutput:
        e2p = loader.load_e2p_checkpoint(model_paths.checkpoint_path(checkpoint), weight_dtype,
                                         model_paths.lora_path(lora), lora_strength, time_embedding)
        bound = _bind_task(e2p, task, _file_names(lora, checkpoint), clip)
        return io.NodeOutput(bound, bound.patcher, "\n".join(bound.description))


class E2PModelFromMODEL(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="E2PModelFromMODEL",
            display_name="E2P Model from MODEL",
            category=categories.model_loaders(),
            description="Turns a MODEL from any ComfyUI loader (UNETLoader with fp8, a GGUF loader, ...) holding "
                        "FLUX.1 Kontext into an Edit2Perceive model, optionally with an E2P LoRA: the low-VRAM route.",
            **compat.optional_schema_fields(search_aliases=[*LOADER_ALIASES, "gguf", "fp8", "low vram"]),
            inputs=[
                io.Model.Input("model", tooltip="FLUX.1 Kontext (or an E2P full checkpoint) from a stock loader."),
                *_common_inputs(),
                io.Clip.Input("clip", optional=True, tooltip=CLIP_TOOLTIP),
            ],
            outputs=_model_outputs(),
        )

    @classmethod
    def execute(cls, model, task, lora, lora_strength, time_embedding, clip=None) -> io.NodeOutput:
        e2p = loader.from_native_model(model, model_paths.lora_path(lora), lora_strength, time_embedding)
        bound = _bind_task(e2p, task, _file_names(lora), clip)
        return io.NodeOutput(bound, bound.patcher, "\n".join(bound.description))
