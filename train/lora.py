"""LoRA in the official layout: one adapter per fused FLUX layer, trained on diffusers' split layers.

The official LoRA (peft on DiffSynth's FluxDiT, ``scripts/*_lora.sh``) adapts the 13 fused Linear layers of each
block -- per double block the image and text streams' modulation, fused q|k|v, attention output and two MLP
layers, per single block the fused q|k|v|mlp input (``linear1``), the output (``linear2``) and the modulation --
with rank 64 and alpha 64: 304 adapters for FLUX.1. diffusers splits the fused layers (``to_q``/``to_k``/``to_v``,
``proj_mlp``); since all parts of a fused layer read the same input, a fused adapter ``W += s * up @ down`` is
exactly one shared ``down`` and ``up``'s row slices on the parts. That is what ``add_lora`` installs: one
``FusedLoRA`` (``down`` [r, in], ``up`` [out of the fused layer, r]) per fused layer, living in its block, and a
forward hook on each diffusers part adding its slice.

Exports are kohya files (``lora_unet_<BFL module with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``),
the released files' naming, which the official loader (``lora/flux_lora.py``) and ComfyUI's stock LoRA loaders
both apply as ``W += alpha / rank * up @ down``.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from e2p_core import checkpoint_layouts

LORA_RANK = 64
ADAPTER_PREFIX = "e2p_lora_"
KOHYA_PREFIX = "lora_unet_"
_BLOCKS = {"double_blocks": "transformer_blocks", "single_blocks": "single_transformer_blocks"}
_ADAPTER_KEY = re.compile(rf"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.{ADAPTER_PREFIX}(\w+)\.(down|up)$")


class FusedLoRA(nn.Module):
    """The adapter of one fused layer; its forward hooks add ``scale * x @ down^T @ up[rows]^T`` to each part."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, bfl_module: str):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))      # peft's default A init; B = 0 keeps the model
        self.scale = alpha / rank
        self.bfl_module = bfl_module

    def forward(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The update of output rows ``start:stop`` (one diffusers part of the fused layer) for input ``x``."""
        down, up = self.down.to(x.dtype), self.up[start:stop].to(x.dtype)
        return self.scale * nn.functional.linear(nn.functional.linear(x, down), up)

    def hook(self, start: int, stop: int):
        """A forward hook for one part. It calls the adapter as a module, so ZeRO-3 gathers its parameters."""
        def add_slice(module, inputs, output):
            return output + self(inputs[0], start, stop)

        return add_slice


def official_targets(depth: int, single_depth: int) -> list[str]:
    """BFL module names of the 13 fused layers per block the official LoRA adapts (304 for FLUX.1)."""
    names = checkpoint_layouts.diffsynth_lora_targets(depth, single_depth).values()
    return sorted(n[:-len(".weight")] for n in names if n.startswith(tuple(_BLOCKS)))


def _block_and_attribute(bfl_module: str) -> tuple[str, str]:
    """``double_blocks.3.img_attn.qkv`` -> (``transformer_blocks.3``, ``e2p_lora_img_attn_qkv``)."""
    kind, index, rest = bfl_module.split(".", 2)
    return f"{_BLOCKS[kind]}.{index}", ADAPTER_PREFIX + rest.replace(".", "_")


def kohya_name(adapter_parameter: str) -> tuple[str, str]:
    """A trainer adapter parameter name -> (kohya module name, ``lora_down.weight``/``lora_up.weight``)."""
    match = _ADAPTER_KEY.match(adapter_parameter)
    if match is None:
        raise ValueError(f"{adapter_parameter} is not an adapter of the official-layout LoRA")
    block, index, attribute, which = match.groups()
    kind = next(k for k, v in _BLOCKS.items() if v == block)
    return f"{KOHYA_PREFIX}{kind}_{index}_{attribute}", "lora_down.weight" if which == "down" else "lora_up.weight"


def is_adapter_parameter(name: str) -> bool:
    return f".{ADAPTER_PREFIX}" in name


def add_lora(transformer: nn.Module, rank: int = LORA_RANK, alpha: float | None = None) -> list[FusedLoRA]:
    """Install the official-layout adapters (up = 0: the model is unchanged) and freeze everything else."""
    config = transformer.config
    depth, single = config.num_layers, config.num_single_layers
    rules = {r.bfl[:-len(".weight")]: r for r in checkpoint_layouts._diffusers_rules(depth, single)}
    modules = dict(transformer.named_modules())
    transformer.requires_grad_(False)
    adapters = []
    for bfl_module in official_targets(depth, single):
        parts = [modules[p[:-len(".weight")]] for p in rules[bfl_module].parts]
        in_features = {p.in_features for p in parts}
        if len(in_features) != 1:
            raise ValueError(f"the parts of {bfl_module} read inputs of different sizes {sorted(in_features)}")
        adapter = FusedLoRA(in_features.pop(), sum(p.out_features for p in parts), rank,
                            float(rank if alpha is None else alpha), bfl_module)
        block, attribute = _block_and_attribute(bfl_module)
        modules[block].add_module(attribute, adapter)
        start = 0
        for part in parts:
            part.register_forward_hook(adapter.hook(start, start + part.out_features))
            start += part.out_features
        adapters.append(adapter)
    return adapters


def adapter_state_to_kohya(adapter_tensors: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Trainer adapter tensors (``transformer_blocks.0.e2p_lora_img_attn_qkv.down``, ...) -> a kohya LoRA."""
    out = {}
    for name, value in adapter_tensors.items():
        module, suffix = kohya_name(name)
        out[f"{module}.{suffix}"] = value.contiguous()
        out[f"{module}.alpha"] = torch.tensor(float(alpha))
    return out


def kohya_to_adapter_state(pairs: dict[str, tuple], rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """{BFL weight name: (down, up, file alpha or None)} -> trainer adapter tensors at the run's alpha/rank.

    The file's scale (its alpha / rank, 1 without an alpha, as the official loader takes it) is folded into ``up``.
    """
    out = {}
    for bfl_weight, (down, up, file_alpha) in pairs.items():
        if not bfl_weight.startswith(tuple(_BLOCKS)):
            raise ValueError(f"the LoRA adapts {bfl_weight}, which the official layout does not cover")
        if down.shape[0] != rank:
            raise ValueError(f"the LoRA has rank {down.shape[0]}, the run uses {rank}; set lora_rank: "
                             f"{down.shape[0]} to continue it")
        block, attribute = _block_and_attribute(bfl_weight[:-len(".weight")])
        file_scale = file_alpha / rank if file_alpha is not None else 1.0
        out[f"{block}.{attribute}.down"] = down.float()
        out[f"{block}.{attribute}.up"] = up.float() * (file_scale / (alpha / rank))
    return out


def load_adapter_state(transformer: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into the installed adapters; every adapter must be given, nothing else."""
    own = {n: p for n, p in transformer.named_parameters() if is_adapter_parameter(n)}
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"the LoRA does not match this model's official-layout adapters (missing {missing[:2]}, "
                         f"unexpected {unexpected[:2]}); was it trained for a model of another size?")
    with torch.no_grad():
        for name, value in tensors.items():
            if own[name].shape != value.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} in the LoRA, {tuple(own[name].shape)} here")
            own[name].copy_(value)
