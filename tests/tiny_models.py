"""Tiny random FLUX.1 Kontext-shaped models and companions, written in the real file layouts.

One set of underlying weights (seeded) is written as every format a user can have, so loading them all must give
the same prediction. Head size stays 128 (FLUX RoPE) with 2 heads; everything else is small.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from e2p_core import formats

# float32 rounding differs with the BLAS kernel and thread count, so predictions are compared relative to their
# scale (tiny-model latents reach ~60): largest absolute difference / largest expected magnitude.
RELATIVE_TOLERANCE = 1e-5


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference as a fraction of the expected output's largest magnitude."""
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


HIDDEN = 256
HEAD_DIM = 128
MLP_RATIO = 4
CONTEXT_DIM = 64
POOLED_DIM = 768
TEXT_TOKENS = 8


def _linear(sd, name, out_features, in_features, generator, scale=0.02):
    sd[f"{name}.weight"] = torch.randn(out_features, in_features, generator=generator) * scale
    sd[f"{name}.bias"] = torch.randn(out_features, generator=generator) * scale


def bfl_state_dict(depth: int = 1, single_depth: int = 1, seed: int = 0, guidance: bool = True,
                   hidden: int = HIDDEN) -> dict[str, torch.Tensor]:
    """Random BFL-named FLUX weights (fp32)."""
    g = torch.Generator().manual_seed(seed)
    h, m = hidden, hidden * MLP_RATIO
    sd: dict[str, torch.Tensor] = {}
    _linear(sd, "img_in", h, 64, g)
    _linear(sd, "txt_in", h, CONTEXT_DIM, g)
    _linear(sd, "time_in.in_layer", h, 256, g, 0.1)
    _linear(sd, "time_in.out_layer", h, h, g, 0.1)
    if guidance:
        _linear(sd, "guidance_in.in_layer", h, 256, g)
        _linear(sd, "guidance_in.out_layer", h, h, g)
    _linear(sd, "vector_in.in_layer", h, POOLED_DIM, g)
    _linear(sd, "vector_in.out_layer", h, h, g)
    for i in range(depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            _linear(sd, f"{p}_mod.lin", 6 * h, h, g)
            _linear(sd, f"{p}_attn.qkv", 3 * h, h, g)
            _linear(sd, f"{p}_attn.proj", h, h, g)
            _linear(sd, f"{p}_mlp.0", m, h, g)
            _linear(sd, f"{p}_mlp.2", h, m, g)
            sd[f"{p}_attn.norm.query_norm.scale"] = 1 + 0.1 * torch.randn(HEAD_DIM, generator=g)
            sd[f"{p}_attn.norm.key_norm.scale"] = 1 + 0.1 * torch.randn(HEAD_DIM, generator=g)
    for i in range(single_depth):
        p = f"single_blocks.{i}"
        _linear(sd, f"{p}.linear1", 3 * h + m, h, g)
        _linear(sd, f"{p}.linear2", h, h + m, g)
        _linear(sd, f"{p}.modulation.lin", 3 * h, h, g)
        sd[f"{p}.norm.query_norm.scale"] = 1 + 0.1 * torch.randn(HEAD_DIM, generator=g)
        sd[f"{p}.norm.key_norm.scale"] = 1 + 0.1 * torch.randn(HEAD_DIM, generator=g)
    _linear(sd, "final_layer.linear", 64, h, g, 0.5)
    _linear(sd, "final_layer.adaLN_modulation.1", 2 * h, h, g)
    return sd


def write(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path


def in_layout(bfl: dict[str, torch.Tensor], layout: str, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in formats.from_bfl(bfl, layout).items()}


def lora_pairs(bfl: dict[str, torch.Tensor], rank: int = 4, seed: int = 1, scale: float = 0.05):
    """Random low-rank (down, up) pairs for every Linear the official LoRA adapts, keyed by BFL weight name."""
    g = torch.Generator().manual_seed(seed)
    depth, single = formats.count_blocks(bfl, formats.BFL)
    pairs = {}
    for bfl_name in formats.diffsynth_lora_targets(depth, single).values():
        if not bfl_name.startswith(("double_blocks.", "single_blocks.")):
            continue
        out_f, in_f = bfl[bfl_name].shape
        pairs[bfl_name] = (torch.randn(rank, in_f, generator=g) * scale, torch.randn(out_f, rank, generator=g) * scale)
    return pairs


def merged(bfl: dict[str, torch.Tensor], pairs, strength: float = 1.0) -> dict[str, torch.Tensor]:
    out = dict(bfl)
    for name, (down, up) in pairs.items():
        out[name] = bfl[name] + strength * (up @ down)
    return out


def kohya_lora(pairs, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """The official release's naming (lora_unet_double_blocks_N_img_attn_qkv.lora_down.weight, alpha)."""
    sd = {}
    for name, (down, up) in pairs.items():
        module = "lora_unet_" + name[:-len(".weight")].replace(".", "_")
        sd[f"{module}.lora_down.weight"] = down
        sd[f"{module}.lora_up.weight"] = up
        sd[f"{module}.alpha"] = torch.tensor(alpha if alpha is not None else down.shape[0], dtype=torch.int64)
    return sd


def diffsynth_peft_lora(pairs, depth: int, single: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """The official trainer's raw names (blocks.N.attn.a_to_qkv.lora_A.default.weight)."""
    to_ds = {v: k for k, v in formats.diffsynth_lora_targets(depth, single).items()}
    sd = {}
    for name, (down, up) in pairs.items():
        sd[f"{prefix}{to_ds[name]}.lora_A.default.weight"] = down
        sd[f"{prefix}{to_ds[name]}.lora_B.default.weight"] = up
    return sd


def diffusers_lora(pairs, bfl: dict[str, torch.Tensor], prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """diffusers/peft names: fused BFL layers split into q/k/v (and proj_mlp), each with its own A and B."""
    depth, single = formats.count_blocks(bfl, formats.BFL)
    hidden = bfl["img_in.weight"].shape[0]
    rules = {r.bfl: r for r in formats._diffusers_rules(depth, single)}
    sd = {}
    for name, (down, up) in pairs.items():
        rule = rules[name]
        sizes = formats._split_sizes(rule, up, hidden)
        for part, up_piece in zip(rule.parts, torch.split(up, sizes, dim=0)):
            module = part[:-len(".weight")]
            sd[f"{prefix}{module}.lora_A.weight"] = down.clone()
            sd[f"{prefix}{module}.lora_B.weight"] = up_piece.contiguous()
    return sd


def conditioning(seed: int = 3, tokens: int = TEXT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, tokens, CONTEXT_DIM, generator=g), torch.randn(1, POOLED_DIM, generator=g)


def cache_task_conditioning(embeddings_dir: str, fingerprint: str, seed_base: int) -> dict[str, str]:
    """Random conditioning for every task, cached where the loaders look for it (``<embeddings>/edit2perceive/``)."""
    from e2p_core.comfyui import conditioning as conditioning_cache
    from e2p_core.conditioning_file import save_conditioning
    from e2p_core.tasks import META_PROMPT, META_TASK, TASK_NAMES, task_spec

    paths = {}
    for task in TASK_NAMES:
        cond, pooled = conditioning(seed=seed_base + len(task))
        paths[task] = conditioning_cache.cache_file(str(embeddings_dir), task, fingerprint)
        save_conditioning(paths[task], cond, pooled, {META_TASK: task, META_PROMPT: task_spec(task).prompt})
    return paths


def flux_vae_state_dict(seed: int = 7) -> dict[str, torch.Tensor]:
    """Random weights for ComfyUI's FLUX VAE (4 levels, 128-256-512-512 channels, /8, 16 latent channels); needs
    ComfyUI importable. Also used by bench/ for its random models.

    ComfyUI sizes a VAE from its keys: without a level-2 downsample it builds a 3-level /4 model, which would give
    the DiT 4x the tokens of the real one, so the skeleton names both keys. Conv/linear weights ~ N(0, 1/fan_in),
    norms at identity.
    """
    import logging

    import comfy.sd

    logging.disable(logging.WARNING)   # ComfyUI lists every key the skeleton lacks; all of them are expected
    try:
        skeleton = comfy.sd.VAE(sd={"decoder.conv_in.weight": torch.zeros(512, 16, 3, 3),
                                    "encoder.down.2.downsample.conv.weight": torch.zeros(512, 512, 3, 3)})
    finally:
        logging.disable(logging.NOTSET)
    if skeleton.downscale_ratio != 8:
        raise RuntimeError(f"ComfyUI built a /{skeleton.downscale_ratio} VAE from the FLUX skeleton, expected /8")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in skeleton.first_stage_model.state_dict().items():
        if name.endswith(".bias"):
            out[name] = torch.zeros(tensor.shape)
        elif tensor.dim() == 1:
            out[name] = torch.ones(tensor.shape)
        else:
            out[name] = torch.randn(tensor.shape, generator=g) / tensor[0].numel() ** 0.5
    return out
