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
        elif tensor.dim() <= 1:
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
