"""The model stack the trainer optimises: diffusers FLUX.1 Kontext transformer + FLUX VAE, wired the official way.

* ``KontextDenoiser`` wraps a diffusers ``FluxTransformer2DModel`` and computes the official Edit2Perceive
  velocity: target tokens first, then each reference image's tokens with RoPE ids (1, row, col) (no spatial
  offset, two references share the same positions), text ids zero, guidance 1, and -- by default -- the official
  time embedding whose sinusoid frequencies and timestep are rounded to bfloat16.
* ``FluxVAE`` wraps a diffusers ``AutoencoderKL`` in the FLUX ae layout: encode = posterior mean, shifted and
  scaled into model space; decode = the inverse.
* Loaders accept a diffusers folder (the FLUX.1 Kontext release layout) or a single safetensors file in any
  layout ``e2p_core.checkpoint_layouts`` knows (BFL, DiffSynth/official, diffusers).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from e2p_core import checkpoint_layouts, schedule
from e2p_core.safetensors_io import read_safetensors
from e2p_core.flow import official_time_embedding, one_step_estimate
from e2p_core.release import EMBEDDED_GUIDANCE, TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK

LATENT_CHANNELS = 16
VAE_SCALE = 0.3611
VAE_SHIFT = 0.1159
ROPE_AXES = (16, 56, 56)

# The FLUX.1 ae (BFL ``ae.safetensors``) in diffusers' AutoencoderKL terms.
FLUX_AE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "act_fn": "silu", "sample_size": 1024, "scaling_factor": VAE_SCALE, "shift_factor": VAE_SHIFT,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
}


class ModelLoadError(ValueError):
    """A model file or folder the trainer cannot use; the message says what to pass instead."""


# ---------------------------------------------------------------------------------------------------------------
# Time embedding
# ---------------------------------------------------------------------------------------------------------------

class OfficialTimeTextEmbedding(nn.Module):
    """Stands in for diffusers' ``time_text_embed``: the same child modules (so weight names, LoRA targets and
    checkpoints are unchanged), but the timestep goes through :func:`official_time_embedding`.

    diffusers multiplies the timestep by 1000 in the activation dtype (bfloat16 under autocast), which would
    round sigma before scaling; the denoiser therefore hands the float32 sigmas over directly (``pending``).
    The guidance embedding keeps the stock float32 frequencies, as officially. The embedding itself is the nodes'
    (``e2p_core.flow.official_time_embedding``), so trainer and nodes cannot drift apart.
    """

    def __init__(self, stock: nn.Module):
        super().__init__()
        for name, child in stock.named_children():
            self.add_module(name, child)
        self.pending: torch.Tensor | None = None

    def forward(self, timestep: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        if self.pending is None:
            raise RuntimeError("the official time embedding ran outside KontextDenoiser.forward, which supplies "
                               "the sigmas; call the denoiser, not the bare transformer")
        pooled = rest[-1]
        embedding = self.timestep_embedder(official_time_embedding(self.pending).to(pooled.dtype))
        if len(rest) == 2:
            guidance = self.time_proj(rest[0])
            embedding = embedding + self.guidance_embedder(guidance.to(pooled.dtype))
        return embedding + self.text_embedder(pooled)


# ---------------------------------------------------------------------------------------------------------------
# Token layout
# ---------------------------------------------------------------------------------------------------------------

def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: 2x2 patches, the BFL / diffusers layout."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent size {h}x{w} must be even (image sides must be multiples of 16)")
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a latent of ``height`` x ``width``."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.reshape(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def image_ids(height: int, width: int, index: int, device, dtype=torch.float32) -> torch.Tensor:
    """RoPE ids [(h/2)(w/2), 3] = (index, row, col): index 0 for the target, 1 for every reference."""
    rows = torch.arange(height // 2, device=device, dtype=dtype)[:, None].expand(height // 2, width // 2)
    cols = torch.arange(width // 2, device=device, dtype=dtype)[None, :].expand(height // 2, width // 2)
    first = torch.full_like(rows, float(index))
    return torch.stack([first, rows, cols], dim=-1).reshape(-1, 3)


class KontextDenoiser(nn.Module):
    """Velocity of the official Edit2Perceive forward for a target latent, its references and the conditioning.

    All latents are in model space (the VAE's shifted and scaled space). The module that accelerate wraps, so
    DDP/FSDP/DeepSpeed see one ``forward`` per step.
    """

    def __init__(self, transformer: nn.Module, time_embedding: str = TIME_EMBEDDING_OFFICIAL):
        super().__init__()
        if time_embedding not in (TIME_EMBEDDING_OFFICIAL, TIME_EMBEDDING_STOCK):
            raise ValueError(f"unknown time embedding '{time_embedding}'; use '{TIME_EMBEDDING_OFFICIAL}' "
                             f"(released checkpoints) or '{TIME_EMBEDDING_STOCK}' (diffusers/BFL)")
        if time_embedding == TIME_EMBEDDING_OFFICIAL and not isinstance(transformer.time_text_embed,
                                                                         OfficialTimeTextEmbedding):
            transformer.time_text_embed = OfficialTimeTextEmbedding(transformer.time_text_embed)
        self.transformer = transformer
        self.time_embedding = time_embedding

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def forward(self, latents: torch.Tensor, references: list[torch.Tensor], cond: torch.Tensor,
                pooled: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        if not references:
            raise ValueError("the input image must be given as a reference latent")
        b, _, h, w = latents.shape
        for ref in references:
            if ref.shape != latents.shape:
                raise ValueError(f"reference latent {tuple(ref.shape)} does not match the target {tuple(latents.shape)}")
        device = latents.device
        tokens = torch.cat([pack_latents(latents)] + [pack_latents(r) for r in references], dim=1)
        ids = torch.cat([image_ids(h, w, 0, device)] + [image_ids(h, w, 1, device)] * len(references), dim=0)
        txt_ids = torch.zeros(cond.shape[1], 3, device=device)
        sigmas = sigmas.to(device=device, dtype=torch.float32).reshape(b)
        guidance = torch.full((b,), EMBEDDED_GUIDANCE, device=device) if self.guidance_embeds else None
        embedder = self.transformer.time_text_embed
        official = isinstance(embedder, OfficialTimeTextEmbedding)
        if official:
            embedder.pending = sigmas
        try:
            output = self.transformer(hidden_states=tokens, encoder_hidden_states=cond, pooled_projections=pooled,
                                      timestep=sigmas, img_ids=ids, txt_ids=txt_ids, guidance=guidance,
                                      return_dict=False)[0]
        finally:
            if official:
                embedder.pending = None
        target_tokens = (h // 2) * (w // 2)
        return unpack_latents(output[:, :target_tokens].float(), h, w)


def one_step_prediction(denoiser: nn.Module, references: list[torch.Tensor], cond: torch.Tensor,
                        pooled: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The official single step in model space: x0 = noise + (sigma_end - 1) * v(noise, sigma = 1)."""
    sigma_end = schedule.one_step_landing_sigma()
    ones = torch.ones(noise.shape[0], device=noise.device)
    velocity = denoiser(noise, references, cond.expand(noise.shape[0], -1, -1), pooled.expand(noise.shape[0], -1),
                        ones)
    return one_step_estimate(noise.float(), velocity, sigma_end)


# ---------------------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------------------

class FluxVAE(nn.Module):
    """The frozen FLUX ae: images in [-1, 1] <-> model-space latents, as the official pipeline maps them."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder
        config = autoencoder.config
        self.scale = float(config.scaling_factor)
        self.shift = float(config.shift_factor if config.shift_factor is not None else 0.0)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> model-space latents [B, 16, H/8, W/8] (posterior mean, no sampling)."""
        mean = self.autoencoder.encode(images.to(self.dtype)).latent_dist.mean
        return (mean.float() - self.shift) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> images [B, 3, H, W] (about [-1, 1]); differentiable (for the pixel loss)."""
        raw = latents / self.scale + self.shift
        return self.autoencoder.decode(raw.to(self.dtype), return_dict=False)[0].float()

    def to_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Model space -> the raw VAE latent that ComfyUI's VAE.decode and LATENT sockets carry."""
        return latents / self.scale + self.shift


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------

def flux_config_from_bfl(bfl: dict[str, torch.Tensor]) -> dict:
    """diffusers FluxTransformer2DModel config for BFL tensors (architecture read off the shapes)."""
    shape = checkpoint_layouts.infer_shape(bfl)
    if shape.mlp_ratio != 4.0:
        raise ModelLoadError(f"MLP ratio {shape.mlp_ratio} is not FLUX.1's 4; this is not a FLUX.1 Kontext model")
    return {
        "patch_size": 1, "in_channels": shape.in_channels * 4, "num_layers": shape.depth,
        "num_single_layers": shape.depth_single_blocks, "attention_head_dim": shape.head_dim,
        "num_attention_heads": shape.num_heads, "joint_attention_dim": shape.context_in_dim,
        "pooled_projection_dim": shape.vec_in_dim, "guidance_embeds": shape.guidance_embed,
        "axes_dims_rope": ROPE_AXES,
    }


def transformer_from_state_dict(state_dict: dict[str, torch.Tensor], source: str = "checkpoint"):
    """A diffusers FluxTransformer2DModel from tensors in any layout e2p_core.checkpoint_layouts knows."""
    from diffusers import FluxTransformer2DModel

    try:
        conversion = checkpoint_layouts.to_bfl(state_dict)
    except checkpoint_layouts.UnsupportedCheckpoint as error:
        raise ModelLoadError(f"{source}: {error}")
    config = flux_config_from_bfl(conversion.state_dict)
    diffusers_sd = checkpoint_layouts.from_bfl(conversion.state_dict, checkpoint_layouts.DIFFUSERS)
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = FluxTransformer2DModel(**config)
    missing, unexpected = model.load_state_dict(diffusers_sd, strict=False, assign=True)
    if missing or unexpected:
        raise ModelLoadError(f"{source}: does not match a FLUX.1 Kontext transformer of its own shape "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, conversion


def _is_diffusers_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def _diffusers_folder(path: str, subfolder: str, fix: str) -> str:
    """The folder holding a diffusers config: ``path/subfolder`` of a release folder, or ``path`` itself."""
    candidate = os.path.join(path, subfolder)
    folder = candidate if _is_diffusers_folder(candidate) else path
    if not _is_diffusers_folder(folder):
        raise ModelLoadError(f"{path} has neither config.json nor {subfolder}/config.json; {fix}")
    return folder


def load_transformer(path: str):
    """FLUX.1 Kontext transformer from a diffusers release folder (or its ``transformer`` subfolder) or one file."""
    from diffusers import FluxTransformer2DModel

    if os.path.isdir(path):
        folder = _diffusers_folder(path, "transformer", "pass the FLUX.1-Kontext-dev diffusers folder or a single "
                                                       ".safetensors file")
        return FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32)
    tensors, _ = read_safetensors(path)
    model, _ = transformer_from_state_dict(tensors, os.path.basename(path))
    return model


def _ldm_vae_to_diffusers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(tensors, FLUX_AE_CONFIG)


def load_vae(path: str):
    """FLUX ae from a diffusers folder (``vae`` subfolder or the folder itself) or the BFL ``ae.safetensors``."""
    from diffusers import AutoencoderKL

    if os.path.isdir(path):
        folder = _diffusers_folder(path, "vae", "pass the FLUX.1-Kontext-dev diffusers folder or ae.safetensors")
        return AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32)
    tensors, _ = read_safetensors(path)
    if "decoder.conv_in.weight" not in tensors:
        raise ModelLoadError(f"{os.path.basename(path)} is not a VAE: it looks like "
                             f"{checkpoint_layouts.describe_foreign(tensors)}")
    if tensors["decoder.conv_in.weight"].shape[1] != LATENT_CHANNELS:
        raise ModelLoadError(f"{os.path.basename(path)} has {tensors['decoder.conv_in.weight'].shape[1]} latent "
                             "channels; the FLUX ae has 16 (is this an SD/SDXL VAE?)")
    converted = tensors if "decoder.up_blocks.0.resnets.0.conv1.weight" in tensors else _ldm_vae_to_diffusers(tensors)
    model = AutoencoderKL(**FLUX_AE_CONFIG)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{os.path.basename(path)} does not match the FLUX ae (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    return model
