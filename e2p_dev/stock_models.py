"""Tiny random stand-ins for the stock models the example workflows use next to Edit2Perceive.

The ControlNet workflows need an SD1.5 checkpoint (UNet + CLIP-L + VAE) and SD1.5 ControlNets. ComfyUI detects
all of them from tensor names and shapes, so each file here is built from ComfyUI's own model classes and
written in the real single-file layout: the UNet is cut down to one level (still 320 channels and a 768-wide
cross attention, which is what makes ComfyUI call it SD1.5); CLIP-L and the VAE have their fixed real
architectures with random values, stored in fp16 to keep the files small.

The FLUX.1 [dev] workflow loads the FLUX text encoders (clip_l + t5xxl) with DualCLIPLoader. ComfyUI builds T5-XXL
(4.7B parameters) from a fixed config, which its ``model_options["t5xxl_model_config"]`` entry overrides: the T5
stand-in is built with the small config below, and the workflow server hands ComfyUI the same override
(e2p_dev.workflows.environment), so it loads through the real DualCLIPLoader. CLIP-L is the SD1.5 one.

The SAM3 workflows (ComfyUI 0.33.0) load SAM 3.1 with CheckpointLoaderSimple: detector, video tracker and text
encoder in one file. ComfyUI recognises it from key names alone and builds it at its full size whatever the file
holds; the workflow server gives ComfyUI the sizes of the file instead (read from its tensor shapes, as ComfyUI
does for most models) and the text encoder's size through ComfyUI's own config override, as for T5. The SAM3
stand-in is small, but runs at SAM3's fixed 1008 x 1008 input, which costs seconds per frame on a CPU.
"""

from __future__ import annotations

import torch

from e2p_dev.tiny_models import CONTEXT_DIM

# Override of ComfyUI's t5xxl config: one layer, the tiny FLUX's text width; the vocabulary stays (the real
# tokenizer produces its ids).
T5XXL_STAND_IN_CONFIG = {"num_layers": 1, "d_model": CONTEXT_DIM, "d_ff": 64, "num_heads": 2, "d_kv": 32}

# The smallest UNet ComfyUI still detects as SD1.5 (supported_models.SD15 pins these two numbers).
SD15_UNET_CONFIG = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [1],
    "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": 1,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_spatial_transformer": True,
    "use_linear_in_transformer": False, "legacy": False, "adm_in_channels": None, "use_temporal_resblock": False,
    "use_temporal_attention": False,
}


def _randomized(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded values for every tensor of `module`: weights ~ N(0, 1/fan_in), biases 0, norm scales 1."""
    generator = torch.Generator().manual_seed(seed)
    values = {}
    for name, tensor in module.state_dict().items():
        if name.endswith(".bias"):
            values[name] = torch.zeros(tensor.shape)
        elif tensor.dim() <= 1 or tensor.numel() == 0:
            values[name] = torch.ones(tensor.shape)
        else:
            values[name] = torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5
    return values


def _half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}


def sd15_unet_state_dict(seed: int = 11) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**SD15_UNET_CONFIG, operations=comfy.ops.disable_weight_init)
    return _randomized(unet, seed)


def clip_l_state_dict(seed: int = 12) -> dict[str, torch.Tensor]:
    """CLIP-L text encoder in the `transformer.text_model.*` layout of SD1.5 checkpoints."""
    import comfy.sd1_clip

    with torch.device("meta"):
        clip = comfy.sd1_clip.SDClipModel(device="meta")
    values = _randomized(clip, seed)
    values = {k: v for k, v in values.items() if k.startswith("transformer.")}
    values["transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return values


def flux_text_encoder_state_dicts(seed: int = 14) -> dict[str, dict[str, torch.Tensor]]:
    """clip_l.safetensors and t5xxl_fp16.safetensors stand-ins in their released layouts (``text_model.*``;
    ``encoder.*`` + ``shared.weight``), fp16; T5 sized by T5XXL_STAND_IN_CONFIG."""
    import comfy.text_encoders.sd3_clip

    with torch.device("meta"):
        t5 = comfy.text_encoders.sd3_clip.T5XXLModel(device="meta", model_options={
            "t5xxl_model_config": dict(T5XXL_STAND_IN_CONFIG)})
    clip = {k[len("transformer."):]: v for k, v in clip_l_state_dict(seed).items()}
    return {"clip_l.safetensors": _half(clip), "t5xxl_fp16.safetensors": _half(_randomized(t5.transformer, seed + 1))}


def sd_vae_state_dict(seed: int = 13) -> dict[str, torch.Tensor]:
    import comfy.sd

    skeleton = comfy.sd.VAE(sd={"decoder.conv_in.weight": torch.zeros(512, 4, 3, 3),
                                 "encoder.down.2.downsample.conv.weight": torch.zeros(512, 512, 3, 3)})
    return _randomized(skeleton.first_stage_model, seed)


def sd15_checkpoint_state_dict() -> dict[str, torch.Tensor]:
    """What CheckpointLoaderSimple reads from e.g. v1-5-pruned-emaonly-fp16.safetensors."""
    tensors = {f"model.diffusion_model.{k}": v for k, v in sd15_unet_state_dict().items()}
    tensors.update({f"cond_stage_model.{k}": v for k, v in clip_l_state_dict().items()})
    tensors.update({f"first_stage_model.{k}": v for k, v in sd_vae_state_dict().items()})
    return _half(tensors)


def sd15_controlnet_state_dict(seed: int = 21) -> dict[str, torch.Tensor]:
    """An SD1.5 ControlNet with the `control_model.*` names of the lllyasviel v1.1 releases."""
    import comfy.cldm.cldm
    import comfy.ops

    config = {k: v for k, v in SD15_UNET_CONFIG.items() if k not in ("out_channels", "transformer_depth_output")}
    with torch.device("meta"):
        control = comfy.cldm.cldm.ControlNet(hint_channels=3, **config, operations=comfy.ops.disable_weight_init)
    values = _randomized(control, seed)
    return _half({f"control_model.{k}": v for k, v in values.items()})


# SAM 3.1 stand-in sizes (keyword arguments of ComfyUI's SAM3Model, each readable from the file's shapes): a
# one-block ViT 64 wide, 32-wide detector and tracker, 8 queries, and no memory frames, so the tracker runs
# without memory attention (the one part that would cost seconds more per frame on a CPU at SAM3's 72 x 72 tokens).
SAM3_STAND_IN_SIZES = {"embed_dim": 64, "depth": 1, "d_model": 32, "mem_dim": 32, "num_queries": 8,
                       "num_maskmem": 0}
# Override of ComfyUI's SAM3 text encoder config (its width is the ViT's); the vocabulary stays.
SAM3_TEXT_STAND_IN_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                             "num_hidden_layers": 1}
# Where the stand-in's random weights would leave it to chance whether anything is found, one channel is a
# constant instead: every query scores as a detection and every mask logit is about this squared, i.e. every mask
# covers the whole frame, on every frame (meaningless, but never empty, so the matting after it always runs).
SAM3_CONSTANT = 8.0
_SAM3_TEXT_PREFIX = "detector.backbone.language_backbone.encoder."


def _constant_channel(values: dict[str, torch.Tensor], layer: str, transposed: bool = False) -> None:
    """Output channel 0 of `layer` (Linear/Conv weight [out, in, ...]; ConvTranspose [in, out, ...]) becomes the
    constant SAM3_CONSTANT: its weights 0, its bias SAM3_CONSTANT."""
    weight = values[f"{layer}.weight"]
    if transposed:
        weight[:, 0] = 0
    else:
        weight[0] = 0
    values[f"{layer}.bias"][0] = SAM3_CONSTANT


def _sam3_always_finds(values: dict[str, torch.Tensor]) -> None:
    """The constant channels that make the stand-in detect, and keep, a whole-frame mask (see SAM3_CONSTANT)."""
    for layer in ("detector.dot_prod_scoring.hs_proj", "detector.dot_prod_scoring.prompt_proj",
                  "detector.segmentation_head.instance_seg_head",
                  "detector.segmentation_head.mask_predictor.mask_embed.layers.2"):
        _constant_channel(values, layer)
    for decoder in ("tracker.sam_mask_decoder", "tracker.interactive_sam_mask_decoder"):
        _constant_channel(values, f"{decoder}.output_upscaling.3", transposed=True)
        values[f"{decoder}.conv_s0.weight"][0] = 0   # added to that channel before its activation
        _constant_channel(values, f"{decoder}.pred_obj_score_head.layers.2")   # always "object present"
        hypernetworks = {key.split(".")[3] for key in values if key.startswith(f"{decoder}.output_hypernetworks_mlps.")}
        for index in hypernetworks:
            _constant_channel(values, f"{decoder}.output_hypernetworks_mlps.{index}.layers.2")


def _openclip_text_layout(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's CLIPTextModel names -> the OpenCLIP names SAM3 files hold (ComfyUI converts them back on load)."""
    renamed = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
               "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
               "text_model.final_layer_norm.weight": "ln_final.weight",
               "text_model.final_layer_norm.bias": "ln_final.bias"}
    layer_parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    out = {"text_projection": values["text_projection.weight"].t().contiguous()}
    for key, value in values.items():
        if key in renamed:
            out[renamed[key]] = value
        elif key.startswith("text_model.encoder.layers."):
            layer, part = key[len("text_model.encoder.layers."):].split(".", 1)
            module, kind = part.rsplit(".", 1)
            if module in layer_parts:
                out[f"transformer.resblocks.{layer}.{layer_parts[module]}.{kind}"] = value
            elif module == "self_attn.q_proj":
                stacked = [values[f"text_model.encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(stacked)
    return out


def _sam31_file_layout(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's SAM3Model names -> the SAM 3.1 file's: the tracker under ``tracker.model.`` with the mask decoders'
    MLP and final norm under their original names, the detector's attention as fused ``in_proj`` (the conversions
    ComfyUI's SAM3 loader undoes)."""
    out = {}
    for key, value in values.items():
        if key.startswith("tracker."):
            key = "tracker.model." + key[len("tracker."):]
            if "sam_mask_decoder.transformer." in key:
                key = (key.replace(".mlp.0.", ".mlp.lin1.").replace(".mlp.2.", ".mlp.lin2.")
                       .replace(".norm_final.", ".norm_final_attn."))
        out[key] = value
    for query in [key for key in out if key.startswith("detector.") and ".q_proj." in key]:
        base, kind = query.rsplit(".q_proj.", 1)
        out[f"{base}.in_proj_{kind}"] = torch.cat([out.pop(f"{base}.{p}_proj.{kind}") for p in "qkv"])
    return out


def sam31_checkpoint_state_dict(seed: int = 31) -> dict[str, torch.Tensor]:
    """What CheckpointLoaderSimple reads from sam3.1_multiplex_fp16.safetensors (ComfyUI with SAM3 only), sized by
    SAM3_STAND_IN_SIZES and SAM3_TEXT_STAND_IN_CONFIG, fp16."""
    import comfy.clip_model
    import comfy.ops
    import comfy.text_encoders.sam3_clip
    from comfy.ldm.sam3.detector import SAM3Model

    with torch.device("meta"):
        model = SAM3Model(image_model="SAM31", operations=comfy.ops.disable_weight_init, **SAM3_STAND_IN_SIZES)
        text = comfy.clip_model.CLIPTextModel({**comfy.text_encoders.sam3_clip.SAM3_CLIP_CONFIG,
                                               **SAM3_TEXT_STAND_IN_CONFIG}, None, "meta", comfy.ops.manual_cast)
    values = _randomized(model, seed)
    _sam3_always_finds(values)
    tensors = _sam31_file_layout(values)
    tensors.update({_SAM3_TEXT_PREFIX + k: v for k, v in _openclip_text_layout(_randomized(text, seed + 1)).items()})
    return _half(tensors)
