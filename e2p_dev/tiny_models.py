"""Random FLUX.1 Kontext-shaped models and companions, written in the real file layouts: the one source of them.

- The transformer's tensor names and shapes come from one table, :func:`bfl_tensor_shapes`, for any width and
  depth (head size stays 128, as FLUX RoPE needs). Two initialisations fill it: :func:`bfl_state_dict`, the tests'
  tiny seeded model (one set of weights written as every format a user can have, so loading them all must give
  the same prediction), and :func:`scaled_bfl_state_dict`, N(0, 1/fan_in) weights whose activations stay finite
  through all 57 blocks of the full 12B shape, for the benchmarks (on a device, in any dtype), or streamed to a
  file of any layout chunk by chunk (:func:`write_scaled_checkpoint`: the 12B model without holding it).
- LoRAs in the official (kohya), trainer (DiffSynth/peft) and diffusers namings, and the FLUX.1 Depth [dev] LoRA
  layout; the FLUX VAE; conditioning.
- diffusers stand-ins for the trainer tests and the learning check (diffusers is imported inside them only).

Module-level imports are the standard library, torch, numpy and safetensors (the device suite runs on a bare
machine); ComfyUI is imported only by :func:`flux_vae_state_dict` and :func:`cache_task_conditioning`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from safetensors.torch import save_file

from e2p_core import checkpoint_layouts
from e2p_core.atomic_files import atomic_write

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
PATCH_CHANNELS = 64          # 16 latent channels x 2 x 2 patch
TIME_EMBED_DIM = 256


@dataclass(frozen=True)
class FluxShape:
    """Width and depth of a FLUX.1 Kontext-shaped transformer; the defaults are the tests' tiny model."""

    hidden: int = HIDDEN
    depth: int = 1
    single_depth: int = 1
    context_dim: int = CONTEXT_DIM
    pooled_dim: int = POOLED_DIM
    mlp_ratio: int = MLP_RATIO
    guidance: bool = True

    @property
    def heads(self) -> int:
        return self.hidden // HEAD_DIM


# The released 12B transformer (FLUX.1 Kontext [dev]) with its T5-XXL context width.
FULL_FLUX_SHAPE = FluxShape(hidden=3072, depth=19, single_depth=38, context_dim=4096)


def bfl_tensor_shapes(shape: FluxShape) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a BFL-named FLUX.1 Kontext transformer of ``shape`` (what a checkpoint of it holds),
    in the order the random initialisations draw them."""
    h, m = shape.hidden, shape.hidden * shape.mlp_ratio
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name, out_features, in_features):
        shapes[f"{name}.weight"] = (out_features, in_features)
        shapes[f"{name}.bias"] = (out_features,)

    def qk_norms(prefix):
        shapes[f"{prefix}.query_norm.scale"] = (HEAD_DIM,)
        shapes[f"{prefix}.key_norm.scale"] = (HEAD_DIM,)

    linear("img_in", h, PATCH_CHANNELS)
    linear("txt_in", h, shape.context_dim)
    embedders = [("time_in", TIME_EMBED_DIM)]
    if shape.guidance:
        embedders.append(("guidance_in", TIME_EMBED_DIM))
    for embedder, width in embedders + [("vector_in", shape.pooled_dim)]:
        linear(f"{embedder}.in_layer", h, width)
        linear(f"{embedder}.out_layer", h, h)
    for i in range(shape.depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            linear(f"{p}_mod.lin", 6 * h, h)
            linear(f"{p}_attn.qkv", 3 * h, h)
            linear(f"{p}_attn.proj", h, h)
            linear(f"{p}_mlp.0", m, h)
            linear(f"{p}_mlp.2", h, m)
            qk_norms(f"{p}_attn.norm")
    for i in range(shape.single_depth):
        p = f"single_blocks.{i}"
        linear(f"{p}.linear1", 3 * h + m, h)
        linear(f"{p}.linear2", h, h + m)
        linear(f"{p}.modulation.lin", 3 * h, h)
        qk_norms(f"{p}.norm")
    linear("final_layer.linear", PATCH_CHANNELS, h)
    linear("final_layer.adaLN_modulation.1", 2 * h, h)
    return shapes


def _tiny_scale(name: str) -> float:
    """Spread of the tiny model's weights and biases: a larger time embedding and output layer, so the timestep
    and the prediction are not drowned by the 0.02-scale blocks."""
    if name.startswith("time_in."):
        return 0.1
    if name.startswith("final_layer.linear."):
        return 0.5
    return 0.02


def bfl_state_dict(depth: int = 1, single_depth: int = 1, seed: int = 0, guidance: bool = True,
                   hidden: int = HIDDEN) -> dict[str, torch.Tensor]:
    """The tests' tiny random BFL-named FLUX weights (fp32): every weight and bias N(0, scale), norms near 1."""
    generator = torch.Generator().manual_seed(seed)
    shape = FluxShape(hidden=hidden, depth=depth, single_depth=single_depth, guidance=guidance)
    sd: dict[str, torch.Tensor] = {}
    for name, dims in bfl_tensor_shapes(shape).items():
        if name.endswith(".scale"):
            sd[name] = 1 + 0.1 * torch.randn(dims, generator=generator)
        else:
            sd[name] = torch.randn(dims, generator=generator) * _tiny_scale(name)
    return sd


# Modulation layers start small so the random model's activations stay finite through all blocks.
SMALL_GAIN_LAYERS = ("_mod.lin.weight", "modulation.lin.weight", "adaLN_modulation.1.weight")


def scaled_init(bfl_name: str, dims: tuple[int, ...]) -> tuple[float, float]:
    """(mean, spread) of one BFL tensor in the benchmarks' initialisation: weights N(0, 1/fan_in) (modulation
    layers x 0.1), biases zero, norm scales one. Activations stay finite through every block of the full shape
    (inf/NaN or denormals would change the speed a benchmark measures)."""
    if bfl_name.endswith(".bias"):
        return 0.0, 0.0
    if bfl_name.endswith(".scale"):
        return 1.0, 0.0
    gain = 0.1 if bfl_name.endswith(SMALL_GAIN_LAYERS) else 1.0
    return 0.0, gain / dims[1] ** 0.5


def scaled_bfl_state_dict(shape: FluxShape, seed: int, dtype: torch.dtype = torch.bfloat16,
                          device: str = "cpu") -> dict[str, torch.Tensor]:
    """BFL-named random weights of any size (:func:`scaled_init`), drawn on ``device`` and returned on the CPU in
    ``dtype``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, dims in bfl_tensor_shapes(shape).items():
        mean, spread = scaled_init(name, dims)
        if spread == 0.0:
            sd[name] = torch.full(dims, mean, dtype=dtype)
        else:
            weight = torch.randn(dims, generator=generator, device=device, dtype=torch.float32)
            sd[name] = (weight * spread).to(dtype).cpu()
    return sd


def write(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path


def in_layout(bfl: dict[str, torch.Tensor], layout: str, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in checkpoint_layouts.from_bfl(bfl, layout).items()}


# ---------------------------------------------------------------------------------------------------------------
# Files larger than memory: written tensor by tensor, chunk by chunk
# ---------------------------------------------------------------------------------------------------------------

SAFETENSORS_DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
CHUNK_ELEMENTS = 1 << 24     # 64 MiB of float32 while a chunk is drawn


def write_streamed_safetensors(path: str, shapes: dict[str, tuple[int, ...]],
                               tensor_chunks: Callable[[str, tuple[int, ...]], Iterable[torch.Tensor]],
                               metadata: dict[str, str] | None = None, dtype: torch.dtype = torch.bfloat16) -> int:
    """A safetensors file of ``dtype`` tensors written without holding them: the header first, its offsets computed
    from ``shapes``, then each tensor's data as ``tensor_chunks(name, dims)`` yields it (pieces whose elements, in
    order, fill the tensor). Memory stays at one chunk, so the 12B model can be written on a machine that could
    not hold it. Published atomically (no half-written file is left); returns the file's size in bytes."""
    if dtype not in SAFETENSORS_DTYPE_NAMES:
        raise ValueError(f"no safetensors name for {dtype}; use one of {list(SAFETENSORS_DTYPE_NAMES)}")
    header: dict[str, object] = {}
    offset = 0
    for name, dims in shapes.items():
        size = math.prod(dims) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPE_NAMES[dtype], "shape": list(dims),
                        "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)        # the format allows trailing spaces; aligned data follows
    with atomic_write(path) as temporary, open(temporary, "wb") as stream:
        stream.write(struct.pack("<Q", len(encoded)))
        stream.write(encoded)
        for name, dims in shapes.items():
            written = 0
            for chunk in tensor_chunks(name, dims):
                data = chunk.detach().to(dtype).reshape(-1)
                written += data.numel()
                stream.write(data.view(torch.uint8).numpy().data)
            if written != math.prod(dims):
                raise ValueError(f"{name}: {written} values were produced for shape {list(dims)}")
    return os.path.getsize(path)


def normal_chunks(dims: tuple[int, ...], mean: float, spread: float, generator: torch.Generator,
                  chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[torch.Tensor]:
    """N(mean, spread) values (all ``mean`` when ``spread`` is 0) for a tensor of ``dims``, a chunk at a time."""
    total = math.prod(dims)
    for start in range(0, total, chunk_elements):
        count = min(chunk_elements, total - start)
        if spread == 0.0:
            yield torch.full((count,), mean)
        else:
            yield torch.empty(count).normal_(mean, spread, generator=generator)


def layout_tensor_shapes(shape: FluxShape, layout: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the transformer in ``layout`` (converted as ``meta`` tensors: nothing is allocated)."""
    bfl = {name: torch.empty(dims, device="meta") for name, dims in bfl_tensor_shapes(shape).items()}
    return {name: tuple(tensor.shape) for name, tensor in checkpoint_layouts.from_bfl(bfl, layout).items()}


def write_scaled_checkpoint(path: str, shape: FluxShape, layout: str, seed: int,
                            metadata: dict[str, str] | None = None, dtype: torch.dtype = torch.bfloat16) -> int:
    """A random transformer of ``shape`` (:func:`scaled_init`) in ``layout``'s key names, streamed to ``path``
    chunk by chunk: any size, up to the full 12B shape, in a few hundred MB of memory. Returns its size in bytes."""
    shapes = layout_tensor_shapes(shape, layout)
    bfl_names = {part: rule.bfl for rule in checkpoint_layouts.plan_to_bfl(shapes).rules for part in rule.parts}
    generator = torch.Generator().manual_seed(seed)

    def chunks(name: str, dims: tuple[int, ...]) -> Iterator[torch.Tensor]:
        return normal_chunks(dims, *scaled_init(bfl_names[name], dims), generator)
    return write_streamed_safetensors(path, shapes, chunks, metadata, dtype)


# ---------------------------------------------------------------------------------------------------------------
# LoRAs
# ---------------------------------------------------------------------------------------------------------------


def lora_pairs(bfl: dict[str, torch.Tensor], rank: int = 4, seed: int = 1, scale: float = 0.05):
    """Random low-rank (down, up) pairs for every Linear the official LoRA adapts, keyed by BFL weight name."""
    g = torch.Generator().manual_seed(seed)
    depth, single = checkpoint_layouts.count_blocks(bfl, checkpoint_layouts.BFL)
    pairs = {}
    for bfl_name in checkpoint_layouts.diffsynth_lora_targets(depth, single).values():
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


def control_lora(bfl: dict[str, torch.Tensor], seed: int = 1, rank: int = 4,
                 scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A FLUX.1 Depth/Canny [dev] LoRA in its release layout (BFL names, lora_A/lora_B): besides the blocks' pairs
    it widens img_in to twice the patch channels (the guide image's latent is concatenated to the noise), shifts
    img_in's bias and replaces every query/key norm scale."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (down, up) in lora_pairs(bfl, rank, seed, scale).items():
        module = name[:-len(".weight")]
        sd[f"{module}.lora_A.weight"] = down
        sd[f"{module}.lora_B.weight"] = up
    hidden = bfl["img_in.weight"].shape[0]
    sd["img_in.lora_A.weight"] = torch.randn(rank, 2 * PATCH_CHANNELS, generator=g) * scale
    sd["img_in.lora_B.weight"] = torch.randn(hidden, rank, generator=g) * scale
    sd["img_in.lora_B.bias"] = torch.randn(hidden, generator=g) * scale
    for name, value in bfl.items():
        if name.endswith(("query_norm.scale", "key_norm.scale")):
            sd[name] = value + scale * torch.randn(value.shape, generator=g)
    return sd


def diffsynth_peft_lora(pairs, depth: int, single: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """The official trainer's raw names (blocks.N.attn.a_to_qkv.lora_A.default.weight)."""
    to_ds = {v: k for k, v in checkpoint_layouts.diffsynth_lora_targets(depth, single).items()}
    sd = {}
    for name, (down, up) in pairs.items():
        sd[f"{prefix}{to_ds[name]}.lora_A.default.weight"] = down
        sd[f"{prefix}{to_ds[name]}.lora_B.default.weight"] = up
    return sd


def diffusers_lora(pairs, bfl: dict[str, torch.Tensor], prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """diffusers/peft names: fused BFL layers split into q/k/v (and proj_mlp), each with its own A and B."""
    depth, single = checkpoint_layouts.count_blocks(bfl, checkpoint_layouts.BFL)
    hidden = bfl["img_in.weight"].shape[0]
    rules = {r.bfl: r for r in checkpoint_layouts._diffusers_rules(depth, single)}
    sd = {}
    for name, (down, up) in pairs.items():
        rule = rules[name]
        sizes = checkpoint_layouts._split_sizes(rule, up, hidden)
        for part, up_piece in zip(rule.parts, torch.split(up, sizes, dim=0)):
            module = part[:-len(".weight")]
            sd[f"{prefix}{module}.lora_A.weight"] = down.clone()
            sd[f"{prefix}{module}.lora_B.weight"] = up_piece.contiguous()
    return sd


# ---------------------------------------------------------------------------------------------------------------
# Conditioning and VAE
# ---------------------------------------------------------------------------------------------------------------


def conditioning(seed: int = 3, tokens: int = TEXT_TOKENS,
                 context_dim: int = CONTEXT_DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-ins for a prompt's T5 and pooled CLIP embeddings: (cond [1, tokens, context_dim], pooled [1, 768])."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, tokens, context_dim, generator=g), torch.randn(1, POOLED_DIM, generator=g)


def cache_task_conditioning(embeddings_dir: str, fingerprint: str, seed_base: int) -> dict[str, str]:
    """Random conditioning for every task, cached where the loaders look for it (``<embeddings>/edit2perceive/``)."""
    from e2p_core.comfyui import conditioning as conditioning_cache
    from e2p_core.saved_conditioning import save_conditioning
    from e2p_core.metadata_keys import META_PROMPT, META_TASK
    from e2p_core.tasks import TASK_NAMES, task_spec

    paths = {}
    for task in TASK_NAMES:
        cond, pooled = conditioning(seed=seed_base + len(task))
        paths[task] = conditioning_cache.cache_file(str(embeddings_dir), task, fingerprint)
        save_conditioning(paths[task], cond, pooled, {META_TASK: task, META_PROMPT: task_spec(task).prompt})
    return paths


def flux_vae_state_dict(seed: int = 7) -> dict[str, torch.Tensor]:
    """Random weights for ComfyUI's FLUX VAE (4 levels, 128-256-512-512 channels, /8, 16 latent channels); needs
    ComfyUI importable (its arguments parsed, see e2p_dev.comfy_runtime).

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


# ---------------------------------------------------------------------------------------------------------------
# diffusers stand-ins (trainer tests, the learning check)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyFluxSpec:
    """A small FLUX.1 Kontext-shaped diffusers transformer (head size stays 128)."""

    heads: int = 2
    depth: int = 1
    single_depth: int = 1
    context_dim: int = CONTEXT_DIM
    pooled_dim: int = POOLED_DIM


def build_tiny_transformer(spec: TinyFluxSpec = TinyFluxSpec(), seed: int = 0):
    """A diffusers FluxTransformer2DModel with diffusers' own initialisation under ``seed``.

    Kept on diffusers' initialiser (not :func:`bfl_state_dict`) so the recorded learning-check result
    (bench/results) reproduces from its seed.
    """
    from diffusers import FluxTransformer2DModel

    from train.model import LATENT_CHANNELS, ROPE_AXES

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FluxTransformer2DModel(
            patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=spec.depth,
            num_single_layers=spec.single_depth, attention_head_dim=HEAD_DIM, num_attention_heads=spec.heads,
            joint_attention_dim=spec.context_dim, pooled_projection_dim=spec.pooled_dim, guidance_embeds=True,
            axes_dims_rope=ROPE_AXES)


def build_tiny_vae(channels: int = 16, seed: int = 0):
    """A small AutoencoderKL in the FLUX ae layout (16 latent channels, 8x downscale, FLUX shift/scale)."""
    from diffusers import AutoencoderKL

    from train.model import FLUX_AE_CONFIG

    config = dict(FLUX_AE_CONFIG, block_out_channels=[channels // 2, channels, channels, channels],
                  layers_per_block=1, norm_num_groups=channels // 2, sample_size=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**config)


def save_tiny_models(folder: str, transformer, vae) -> None:
    """Write a transformer and a VAE as a diffusers release folder would hold them (for tests and benchmarks)."""
    transformer.save_pretrained(os.path.join(folder, "transformer"))
    vae.save_pretrained(os.path.join(folder, "vae"))
    with open(os.path.join(folder, "model_index.json"), "w") as handle:
        json.dump({"_class_name": "FluxKontextPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}, handle)
