"""Checkpoint key layouts of FLUX(.1 Kontext) transformers, detected and converted to BFL/ComfyUI names.

Layouts handled, each with or without its usual prefix:

* ``bfl`` -- Black Forest Labs single-file names, what ComfyUI's UNETLoader reads (``double_blocks.N.img_attn.qkv``).
* ``diffsynth`` -- DiffSynth-Studio ``FluxDiT`` names, the official Edit2Perceive full checkpoints
  (``blocks.N.attn.a_to_qkv``); fused tensors are laid out as in BFL except ``final_norm_out``, whose two output
  halves (scale, shift) are in the opposite order.
* ``diffusers`` -- ``FluxTransformer2DModel`` names (``transformer_blocks.N.attn.to_q``); q/k/v (and the single
  blocks' MLP input) are separate tensors that BFL fuses, and ``norm_out`` is (scale, shift) too.

Conversions are table-driven and exact in both directions (only concatenation, splitting and half swaps), so a
model converted from any layout holds bit-identical tensors. Torch only: the trainer uses this module as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

BFL, DIFFSYNTH, DIFFUSERS = "bfl", "diffsynth", "diffusers"

# Prefixes that wrap a transformer state dict in the wild, longest first.
KNOWN_PREFIXES = ("model.diffusion_model.", "pipe.dit.", "diffusion_model.", "transformer.", "dit.", "model.")

# Official checkpoints may carry a matting coordinate encoder that the released inference never feeds.
UNUSED_MODULE_PREFIXES = ("coord_encoder.", "coord_proj.")

_MARKERS = {
    BFL: "double_blocks.0.img_attn.qkv.weight",
    DIFFSYNTH: "blocks.0.attn.a_to_qkv.weight",
    DIFFUSERS: "transformer_blocks.0.attn.to_q.weight",
}
_SINGLE_MARKERS = {
    BFL: "single_blocks.0.linear1.weight",
    DIFFSYNTH: "single_blocks.0.to_qkv_mlp.weight",
    DIFFUSERS: "single_transformer_blocks.0.attn.to_q.weight",
}


class UnsupportedCheckpoint(ValueError):
    """The file is not a FLUX transformer in any layout we know; the message says what it looks like instead."""


@dataclass(frozen=True)
class Rule:
    """One BFL tensor and the tensor(s) of another layout it is made of (concatenated along dim 0)."""

    bfl: str
    parts: tuple[str, ...]
    swap_halves: bool = False


def _linear(bfl: str, *parts: str, swap_halves: bool = False) -> list[Rule]:
    return [Rule(f"{bfl}.weight", tuple(f"{p}.weight" for p in parts), swap_halves),
            Rule(f"{bfl}.bias", tuple(f"{p}.bias" for p in parts), swap_halves)]


def _diffsynth_rules(depth: int, single_depth: int) -> list[Rule]:
    rules = (_linear("img_in", "x_embedder") + _linear("txt_in", "context_embedder")
             + _linear("time_in.in_layer", "time_embedder.timestep_embedder.0")
             + _linear("time_in.out_layer", "time_embedder.timestep_embedder.2")
             + _linear("guidance_in.in_layer", "guidance_embedder.timestep_embedder.0")
             + _linear("guidance_in.out_layer", "guidance_embedder.timestep_embedder.2")
             + _linear("vector_in.in_layer", "pooled_text_embedder.0")
             + _linear("vector_in.out_layer", "pooled_text_embedder.2")
             + _linear("final_layer.linear", "final_proj_out")
             + _linear("final_layer.adaLN_modulation.1", "final_norm_out.linear", swap_halves=True))
    for i in range(depth):
        b, d = f"double_blocks.{i}", f"blocks.{i}"
        for stream, s in (("img", "a"), ("txt", "b")):
            rules += _linear(f"{b}.{stream}_mod.lin", f"{d}.norm1_{s}.linear")
            rules += _linear(f"{b}.{stream}_attn.qkv", f"{d}.attn.{s}_to_qkv")
            rules += _linear(f"{b}.{stream}_attn.proj", f"{d}.attn.{s}_to_out")
            rules += _linear(f"{b}.{stream}_mlp.0", f"{d}.ff_{s}.0")
            rules += _linear(f"{b}.{stream}_mlp.2", f"{d}.ff_{s}.2")
            rules.append(Rule(f"{b}.{stream}_attn.norm.query_norm.scale", (f"{d}.attn.norm_q_{s}.weight",)))
            rules.append(Rule(f"{b}.{stream}_attn.norm.key_norm.scale", (f"{d}.attn.norm_k_{s}.weight",)))
    for i in range(single_depth):
        b = f"single_blocks.{i}"
        rules += _linear(f"{b}.linear1", f"{b}.to_qkv_mlp") + _linear(f"{b}.linear2", f"{b}.proj_out")
        rules += _linear(f"{b}.modulation.lin", f"{b}.norm.linear")
        rules.append(Rule(f"{b}.norm.query_norm.scale", (f"{b}.norm_q_a.weight",)))
        rules.append(Rule(f"{b}.norm.key_norm.scale", (f"{b}.norm_k_a.weight",)))
    return rules


def _diffusers_rules(depth: int, single_depth: int) -> list[Rule]:
    t = "time_text_embed"
    rules = (_linear("img_in", "x_embedder") + _linear("txt_in", "context_embedder")
             + _linear("time_in.in_layer", f"{t}.timestep_embedder.linear_1")
             + _linear("time_in.out_layer", f"{t}.timestep_embedder.linear_2")
             + _linear("guidance_in.in_layer", f"{t}.guidance_embedder.linear_1")
             + _linear("guidance_in.out_layer", f"{t}.guidance_embedder.linear_2")
             + _linear("vector_in.in_layer", f"{t}.text_embedder.linear_1")
             + _linear("vector_in.out_layer", f"{t}.text_embedder.linear_2")
             + _linear("final_layer.linear", "proj_out")
             + _linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves=True))
    for i in range(depth):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        rules += _linear(f"{b}.img_mod.lin", f"{d}.norm1.linear")
        rules += _linear(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
        rules += _linear(f"{b}.img_attn.qkv", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v")
        rules += _linear(f"{b}.txt_attn.qkv", f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
        rules += _linear(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
        rules += _linear(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
        rules += _linear(f"{b}.img_mlp.0", f"{d}.ff.net.0.proj") + _linear(f"{b}.img_mlp.2", f"{d}.ff.net.2")
        rules += _linear(f"{b}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        rules += _linear(f"{b}.txt_mlp.2", f"{d}.ff_context.net.2")
        rules.append(Rule(f"{b}.img_attn.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",)))
        rules.append(Rule(f"{b}.img_attn.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",)))
        rules.append(Rule(f"{b}.txt_attn.norm.query_norm.scale", (f"{d}.attn.norm_added_q.weight",)))
        rules.append(Rule(f"{b}.txt_attn.norm.key_norm.scale", (f"{d}.attn.norm_added_k.weight",)))
    for i in range(single_depth):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        rules += _linear(f"{b}.linear1", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp")
        rules += _linear(f"{b}.linear2", f"{d}.proj_out")
        rules += _linear(f"{b}.modulation.lin", f"{d}.norm.linear")
        rules.append(Rule(f"{b}.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",)))
        rules.append(Rule(f"{b}.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",)))
    return rules


_RULE_BUILDERS = {DIFFSYNTH: _diffsynth_rules, DIFFUSERS: _diffusers_rules}
_BLOCK_PATTERNS = {
    BFL: (r"^double_blocks\.(\d+)\.", r"^single_blocks\.(\d+)\."),
    DIFFSYNTH: (r"^blocks\.(\d+)\.", r"^single_blocks\.(\d+)\."),
    DIFFUSERS: (r"^transformer_blocks\.(\d+)\.", r"^single_transformer_blocks\.(\d+)\."),
}


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove the wrapping prefix that most keys share (e.g. ``pipe.dit.``), returning it too."""
    for prefix in KNOWN_PREFIXES:
        count = sum(1 for k in state_dict if k.startswith(prefix))
        if count and count >= len(state_dict) // 2:
            return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}, prefix
    return dict(state_dict), ""


def describe_foreign(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the architecture of a state dict that is not a FLUX transformer, for error messages."""
    keys = list(state_dict)
    joined = "\n".join(keys[:2000])
    if any("double_stream_modulation_img" in k for k in keys):
        return "a FLUX.2 transformer"
    if "input_blocks.0.0.weight" in joined or "model.diffusion_model.input_blocks" in joined:
        if any("label_emb" in k for k in keys):
            return "an SDXL UNet checkpoint"
        return "a Stable Diffusion 1.x/2.x UNet checkpoint"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys) and any("conv_in" in k for k in keys):
        return "a VAE (load it with a VAE loader instead)"
    if any(k.startswith(("encoder.block.", "shared.")) for k in keys) or any("text_model." in k for k in keys):
        return "a text encoder (T5/CLIP: load it with DualCLIPLoader)"
    if any(".lora_" in k or k.endswith(".alpha") for k in keys):
        return "a LoRA (select it as the LoRA, with a FLUX.1 Kontext base as the checkpoint)"
    return f"an unknown model ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    for layout, marker in _MARKERS.items():
        if marker in state_dict:
            return layout
    raise UnsupportedCheckpoint(
        f"this file is not a FLUX.1 (Kontext) transformer: it looks like {describe_foreign(state_dict)}")


def count_blocks(state_dict: dict[str, torch.Tensor], layout: str) -> tuple[int, int]:
    double_re, single_re = (re.compile(p) for p in _BLOCK_PATTERNS[layout])
    double = {int(m.group(1)) for k in state_dict if (m := double_re.match(k))}
    single = {int(m.group(1)) for k in state_dict if (m := single_re.match(k))}
    for name, found in (("double", double), ("single", single)):
        if found and found != set(range(max(found) + 1)):
            missing = sorted(set(range(max(found) + 1)) - found)
            raise UnsupportedCheckpoint(f"the checkpoint is incomplete: {name} blocks {missing} are missing "
                                        "(a truncated or partial download?)")
    return len(double), len(single)


@dataclass
class Conversion:
    """The outcome of :func:`to_bfl`: BFL tensors and what the source looked like."""

    state_dict: dict[str, torch.Tensor]
    layout: str
    prefix: str
    ignored_keys: list[str]


@dataclass(frozen=True)
class BflPlan:
    """How every BFL tensor is made from a checkpoint's tensors, decided from the names alone.

    ``rules`` name the checkpoint's own keys (prefix included), so the tensors can be read, converted and handed
    on one BFL tensor at a time (:meth:`convert_stream`) instead of holding a converted copy of the whole file."""

    rules: tuple[Rule, ...]
    layout: str
    prefix: str
    ignored_keys: list[str]
    # BFL name -> the names this layout gives its parts in the file (prefix included), for present and absent ones
    file_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def file_name(self, bfl_name: str) -> str:
        """What the file calls a BFL tensor (or would call it, when it lacks it), for messages."""
        parts = self.file_names.get(bfl_name, (self.prefix + bfl_name,))
        return parts[0] if len(parts) == 1 else f"{' + '.join(parts)} (joined into {bfl_name})"

    def source_groups(self) -> list[tuple[str, ...]]:
        """The checkpoint keys each BFL tensor is built from, in rule order."""
        return [rule.parts for rule in self.rules]

    @staticmethod
    def build(rule: Rule, parts: list[torch.Tensor]) -> torch.Tensor:
        """One BFL tensor from its parts: the part itself, or a new tensor for concatenations and half swaps."""
        if len({tuple(part.shape[1:]) for part in parts}) > 1:
            shapes = ", ".join(f"{name} {list(part.shape)}" for name, part in zip(rule.parts, parts))
            raise UnsupportedCheckpoint(f"the tensors joined into {rule.bfl} do not fit together ({shapes}); the "
                                        "file is damaged or of another architecture")
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        return _swap_halves(tensor) if rule.swap_halves else tensor

    def convert(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {rule.bfl: self.build(rule, [state_dict[p] for p in rule.parts]) for rule in self.rules}

    def convert_stream(self, groups: Iterable[list[torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """(BFL name, tensor) for each rule, from the parts of :meth:`source_groups` given in the same order.
        Nothing of one group is referenced here when the next is read, so a reader can release each in turn."""
        groups = iter(groups)
        for rule in self.rules:
            parts = next(groups)
            tensor = self.build(rule, parts)
            del parts
            yield rule.bfl, tensor
            del tensor


def plan_to_bfl(names: Iterable[str]) -> BflPlan:
    """Any supported layout -> BFL names. Unknown keys are an error; known-unused modules are dropped and listed."""
    original, prefix = strip_prefix({name: name for name in names})     # stripped name -> the file's own name
    if any(name == "scaled_fp8" or name.endswith((".scale_weight", ".weight_scale")) for name in original):
        raise UnsupportedCheckpoint(
            "this is a ComfyUI scaled-fp8 file (such as flux1-dev-kontext_fp8_scaled.safetensors, the FLUX.1 Kontext "
            "base of ComfyUI's own template): its weights carry scales only ComfyUI's loader applies. In ComfyUI, "
            "load it with UNETLoader (weight_dtype default) and connect its MODEL to E2P Model from MODEL, with the "
            "task LoRA chosen there; elsewhere use the bf16 FLUX.1 Kontext base")
    ignored = sorted(k for k in original if k.startswith(UNUSED_MODULE_PREFIXES))
    stripped = {k: v for k, v in original.items() if not k.startswith(UNUSED_MODULE_PREFIXES)}
    layout = detect_layout(stripped)
    depth, single_depth = count_blocks(stripped, layout)
    if layout == BFL:
        return BflPlan(tuple(Rule(k, (original[k],)) for k in stripped), layout, prefix, ignored)
    rules: list[Rule] = []
    used: set[str] = set()
    file_names: dict[str, tuple[str, ...]] = {}
    for rule in _RULE_BUILDERS[layout](depth, single_depth):
        file_names[rule.bfl] = tuple(original.get(p, prefix + p) for p in rule.parts)
        present = [p for p in rule.parts if p in stripped]
        if not present:
            continue
        if len(present) != len(rule.parts):
            missing = sorted(set(rule.parts) - set(present))
            raise UnsupportedCheckpoint(f"the {layout} checkpoint is incomplete: {', '.join(missing)} missing")
        rules.append(Rule(rule.bfl, tuple(original[p] for p in rule.parts), rule.swap_halves))
        used.update(rule.parts)
    leftover = sorted(set(stripped) - used)
    if leftover:
        raise UnsupportedCheckpoint(f"the {layout} checkpoint has {len(leftover)} tensors that are not part of a "
                                    f"FLUX.1 transformer, e.g. {', '.join(leftover[:4])}")
    return BflPlan(tuple(rules), layout, prefix, ignored, file_names)


def bfl_tensor_names(depth: int, single_depth: int) -> list[str]:
    """Every tensor of a FLUX.1 transformer with that many double and single blocks, in BFL names."""
    return [rule.bfl for rule in _diffsynth_rules(depth, single_depth)]


def to_bfl(state_dict: dict[str, torch.Tensor]) -> Conversion:
    """Any supported layout -> BFL names, all tensors at once (see :class:`BflPlan` for one at a time)."""
    plan = plan_to_bfl(state_dict)
    return Conversion(plan.convert(state_dict), plan.layout, plan.prefix, plan.ignored_keys)


def _split_sizes(rule: Rule, tensor: torch.Tensor, hidden: int) -> list[int]:
    if len(rule.parts) == 1:
        return [tensor.shape[0]]
    if len(rule.parts) == 3:
        return [tensor.shape[0] // 3] * 3
    return [hidden, hidden, hidden, tensor.shape[0] - 3 * hidden]


def from_bfl(bfl_state_dict: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """BFL names -> ``layout`` names (the exact inverse of :func:`to_bfl`)."""
    if layout == BFL:
        return dict(bfl_state_dict)
    depth, single_depth = count_blocks(bfl_state_dict, BFL)
    hidden = bfl_state_dict["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for rule in _RULE_BUILDERS[layout](depth, single_depth):
        if rule.bfl not in bfl_state_dict:
            continue
        tensor = bfl_state_dict[rule.bfl]
        if rule.swap_halves:
            tensor = _swap_halves(tensor)
        for name, piece in zip(rule.parts, torch.split(tensor, _split_sizes(rule, tensor, hidden), dim=0)):
            out[name] = piece.contiguous()
        used.add(rule.bfl)
    leftover = sorted(set(bfl_state_dict) - used)
    if leftover:
        raise UnsupportedCheckpoint(f"cannot express {', '.join(leftover[:4])} in the {layout} layout")
    return out


@dataclass(frozen=True)
class FluxShape:
    """Architecture numbers read off the tensors, so a tiny test model and the 12B model share one code path."""

    hidden_size: int
    num_heads: int
    head_dim: int
    depth: int
    depth_single_blocks: int
    in_channels: int
    context_in_dim: int
    vec_in_dim: int
    mlp_ratio: float
    guidance_embed: bool

    def unet_config(self) -> dict:
        """The config dict ComfyUI's model detection would produce for this model."""
        return {
            "image_model": "flux", "guidance_embed": self.guidance_embed, "in_channels": self.in_channels,
            "out_channels": self.in_channels, "vec_in_dim": self.vec_in_dim, "context_in_dim": self.context_in_dim,
            "hidden_size": self.hidden_size, "mlp_ratio": self.mlp_ratio, "num_heads": self.num_heads,
            "depth": self.depth, "depth_single_blocks": self.depth_single_blocks, "axes_dim": [16, 56, 56],
            "theta": 10000, "patch_size": 2, "qkv_bias": True,
        }


ROPE_AXES_TOTAL = 128   # FLUX.1 RoPE axes (16, 56, 56) fix the attention head size


def infer_shape(bfl_state_dict: dict[str, torch.Tensor]) -> FluxShape:
    """Read hidden size, depth, heads (= hidden / head_dim) and embedders off BFL tensors."""
    sd = bfl_state_dict
    for key in ("img_in.weight", "txt_in.weight", "double_blocks.0.img_attn.norm.query_norm.scale",
                "double_blocks.0.img_mlp.0.weight"):
        if key not in sd:
            raise UnsupportedCheckpoint(f"the checkpoint lacks {key}; it is not a complete FLUX.1 transformer")
    if "vector_in.in_layer.weight" not in sd:
        raise UnsupportedCheckpoint("the checkpoint has no pooled-text embedder (vector_in): FLUX.1 Kontext has one; "
                                    "this looks like a different model family")
    hidden = sd["img_in.weight"].shape[0]
    head_dim = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    if head_dim != ROPE_AXES_TOTAL or hidden % head_dim:
        raise UnsupportedCheckpoint(f"attention head size {head_dim} (hidden {hidden}) is not FLUX.1's 128")
    patch_channels = sd["img_in.weight"].shape[1]
    if patch_channels != 64:
        raise UnsupportedCheckpoint(f"the image input takes {patch_channels} channels; FLUX.1 Kontext takes 64 "
                                    "(96/384 are Fill/inpaint models, which Edit2Perceive is not built on)")
    depth, single = count_blocks(sd, BFL)
    return FluxShape(
        hidden_size=hidden, num_heads=hidden // head_dim, head_dim=head_dim, depth=depth,
        depth_single_blocks=single, in_channels=patch_channels // 4, context_in_dim=sd["txt_in.weight"].shape[1],
        vec_in_dim=sd["vector_in.in_layer.weight"].shape[1],
        mlp_ratio=sd["double_blocks.0.img_mlp.0.weight"].shape[0] / hidden,
        guidance_embed="guidance_in.in_layer.weight" in sd,
    )


# ---------------------------------------------------------------------------------------------------------------
# LoRA module names
# ---------------------------------------------------------------------------------------------------------------

LORA_PREFIXES = ("base_model.model.", "pipe.dit.", "dit.")


_LORA_TENSOR = re.compile(r"^(.*?)\.(lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up)(\.default)?(\.weight)?$")
_DOWN_OF_UP = {"lora_B": "lora_A", "lora_up": "lora_down", "lora.up": "lora.down"}


def _shape(tensor_or_shape) -> str:
    return str(tuple(int(size) for size in getattr(tensor_or_shape, "shape", tensor_or_shape)))


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


@dataclass
class LoraModule:
    """One layer a LoRA file adapts (``W += alpha / rank * up @ down``): (file key, tensor) of each part."""

    name: str
    down: tuple[str, torch.Tensor] | None = None
    up: tuple[str, torch.Tensor] | None = None
    alpha: tuple[str, torch.Tensor] | None = None
    doubled: set[str] = field(default_factory=set)     # keys of a half the file holds twice

    @property
    def has_half(self) -> bool:
        return self.up is not None or self.down is not None

    @property
    def rank(self) -> int:
        return int(self.down[1].shape[0])

    def defects(self) -> list[str]:
        """What makes this module unusable on any model, where ComfyUI would fail, skip the layer with only a log
        line, or patch garbage: a half missing or given twice, halves named in two styles, values that are not
        floating point, halves that are not two matrices of one rank, an alpha that is not one finite number."""
        found = []
        if self.doubled:
            found.append(f"holds one half twice ({', '.join(sorted(self.doubled))})")
        if self.up is None or self.down is None:
            present = ", ".join(key for key, _ in filter(None, (self.down, self.up, self.alpha)))
            missing = ("lora_up/lora_down" if self.up is None and self.down is None
                       else "lora_up (lora_B)" if self.up is None else "lora_down (lora_A)")
            return found + [f"has {present} without its {missing}"]
        (down_key, down), (up_key, up) = self.down, self.up
        up_match, down_match = _LORA_TENSOR.match(up_key), _LORA_TENSOR.match(down_key)
        if _DOWN_OF_UP[up_match.group(2)] != down_match.group(2) or up_match.group(4) != down_match.group(4):
            found.append(f"pairs {up_key} with {down_key}, names of two different styles")
        found += [f"{key} holds {_dtype(tensor)} values, not floating point"
                  for key, tensor in (self.down, self.up) if not tensor.is_floating_point()]
        if down.dim() != 2 or up.dim() != 2:
            found.append(f"lora_up is {_shape(up)} and lora_down {_shape(down)}, not two matrices")
        elif up.shape[1] != down.shape[0]:
            found.append(f"lora_up {_shape(up)} has rank {up.shape[1]} but lora_down {_shape(down)} rank "
                         f"{down.shape[0]}")
        elif down.shape[0] == 0:
            found.append("has rank 0")
        if self.alpha is not None:
            key, alpha = self.alpha
            if alpha.numel() != 1 or alpha.dtype == torch.bool or alpha.is_complex():
                found.append(f"{key} is a {_dtype(alpha)} tensor of shape {_shape(alpha)}, not one number")
            elif not torch.isfinite(alpha.double()).all():
                found.append(f"{key} is {alpha.item()}")
        return found

    def target_defect(self, target_shape: tuple[int, ...]) -> str | None:
        """Why this sound pair cannot patch a weight (or a fused weight's slice) of ``target_shape``; None if it
        fits."""
        (_, down), (_, up) = self.down, self.up
        if len(target_shape) != 2:
            return f"patches a weight of shape {_shape(target_shape)}, which is not a linear layer's"
        out_features, in_features = target_shape
        if up.shape[0] == out_features and down.shape[1] == in_features:
            return None
        return (f"lora_up is {_shape(up)} and lora_down {_shape(down)} where its layer's {_shape(target_shape)} "
                f"weight needs lora_up ({out_features}, {self.rank}) and lora_down ({self.rank}, {in_features})")


def lora_modules(lora_state_dict: dict[str, torch.Tensor]) -> dict[str, LoraModule]:
    """The modules a LoRA file adapts (what precedes ``.lora_A``/``.lora_down``/...) with their halves and alpha.
    An ``alpha`` whose module has no half is a module too, so that it is reported rather than ignored."""
    modules: dict[str, LoraModule] = {}
    alphas = {}
    for key, tensor in lora_state_dict.items():
        match = _LORA_TENSOR.match(key)
        if match is None:
            if key.endswith(".alpha"):
                alphas[key[:-len(".alpha")]] = (key, tensor)
            continue
        module = modules.setdefault(match.group(1), LoraModule(match.group(1)))
        half = "up" if match.group(2) in _DOWN_OF_UP else "down"
        if getattr(module, half) is not None:
            module.doubled.update((getattr(module, half)[0], key))
        else:
            setattr(module, half, (key, tensor))
    for name, alpha in alphas.items():
        modules.setdefault(name, LoraModule(name)).alpha = alpha
    return modules



def normalize_lora_keys(lora_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip trainer wrappers (peft's ``base_model.model.``, DiffSynth's ``pipe.dit.``) and peft's ``.default``."""
    out = {}
    for key, value in lora_state_dict.items():
        for prefix in LORA_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")] = value
    return out


def diffsynth_lora_targets(depth: int, single_depth: int) -> dict[str, str]:
    """DiffSynth module name -> BFL weight name, for every Linear the official LoRA can adapt."""
    targets = {}
    for rule in _diffsynth_rules(depth, single_depth):
        if rule.bfl.endswith(".weight") and len(rule.parts) == 1 and not rule.swap_halves:
            targets[rule.parts[0][:-len(".weight")]] = rule.bfl
    return targets
