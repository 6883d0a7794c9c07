"""The benchmark model's shapes and how much work one transformer pass is.

Every benchmark model is random but has FLUX.1 Kontext's block structure, head size 128, its 4096-wide T5 context
of 512 tokens and 768-wide pooled vector. ``mid`` is narrow and shallow enough for a CPU forward to take seconds;
``full`` is the 12B shape for a GPU; ``smoke`` is for the tests of the scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e2p_dev.tiny_models import FULL_FLUX_SHAPE, HEAD_DIM, PATCH_CHANNELS, TIME_EMBED_DIM, FluxShape

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name(); anything else needs --peak-tflops.
KNOWN_BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),           # SXM5 (torch reports "NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("A100", 312.0),
)


@dataclass(frozen=True)
class DitShape:
    """A FLUX.1 Kontext-shaped transformer: what changes between ``mid`` and ``full`` is width and depth only."""

    name: str
    hidden: int
    depth: int
    single_depth: int
    context_dim: int = 4096
    pooled_dim: int = 768
    text_tokens: int = 512
    mlp_ratio: int = 4

    @classmethod
    def of(cls, name: str, flux: FluxShape) -> "DitShape":
        return cls(name, flux.hidden, flux.depth, flux.single_depth, flux.context_dim, flux.pooled_dim,
                   mlp_ratio=flux.mlp_ratio)

    @property
    def flux(self) -> FluxShape:
        """The transformer's dimensions as ``e2p_dev.tiny_models`` takes them for random weights."""
        return FluxShape(hidden=self.hidden, depth=self.depth, single_depth=self.single_depth,
                         context_dim=self.context_dim, pooled_dim=self.pooled_dim, mlp_ratio=self.mlp_ratio)

    @property
    def heads(self) -> int:
        return self.hidden // HEAD_DIM

    @property
    def parameters(self) -> int:
        h, m = self.hidden, self.hidden * self.mlp_ratio
        embed = (PATCH_CHANNELS * h + h) + (self.context_dim * h + h) + 2 * (TIME_EMBED_DIM * h + h + h * h + h) \
            + (self.pooled_dim * h + h + h * h + h)
        stream = (6 * h * h + 6 * h) + (3 * h * h + 3 * h) + (h * h + h) + (m * h + m) + (h * m + h) + 2 * HEAD_DIM
        single = ((3 * h + m) * h + 3 * h + m) + ((h + m) * h + h) + (3 * h * h + 3 * h) + 2 * HEAD_DIM
        final = (PATCH_CHANNELS * h + PATCH_CHANNELS) + (2 * h * h + 2 * h)
        return embed + self.depth * 2 * stream + self.single_depth * single + final

    def describe(self) -> str:
        return (f"{self.name}: hidden {self.hidden} ({self.heads} heads x {HEAD_DIM}), {self.depth} double + "
                f"{self.single_depth} single blocks, {self.parameters / 1e6:.0f}M parameters, T5 context "
                f"{self.text_tokens} x {self.context_dim}")


SHAPES = {
    "smoke": DitShape("smoke", hidden=256, depth=1, single_depth=1, text_tokens=64),   # for tests of the scripts
    "mid": DitShape("mid", hidden=768, depth=2, single_depth=4),
    "full": DitShape.of("full", FULL_FLUX_SHAPE),
}


def image_tokens(resolution: int) -> int:
    """Tokens of one square image at ``resolution`` px: VAE /8, then 2x2 patches."""
    return (resolution // 16) ** 2


def dit_pass_flops(shape: DitShape, resolution: int, references: int = 1) -> float:
    """Matmul FLOPs (2 per multiply-add) of one transformer forward: target + ``references`` image token sets and
    the text tokens. Norms, RoPE, activations and the per-sample embedders' elementwise work are left out (<1%)."""
    h, m = shape.hidden, shape.hidden * shape.mlp_ratio
    image = image_tokens(resolution) * (1 + references)
    text = shape.text_tokens
    joint = image + text
    flops = 2 * image * PATCH_CHANNELS * h + 2 * text * shape.context_dim * h
    flops += 2 * (2 * (TIME_EMBED_DIM * h + h * h) + shape.pooled_dim * h + h * h)
    per_stream = lambda tokens: 2 * tokens * (3 * h * h + h * h + 2 * h * m) + 2 * 6 * h * h  # noqa: E731
    attention = 4 * joint * joint * h
    flops += shape.depth * (per_stream(image) + per_stream(text) + attention)
    flops += shape.single_depth * (2 * joint * h * (3 * h + m) + 2 * joint * (h + m) * h + 2 * 3 * h * h + attention)
    flops += 2 * image * h * PATCH_CHANNELS + 2 * 2 * h * h
    return float(flops)


def bf16_peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """(peak dense bf16 TFLOP/s, where the number came from) for the ratio column."""
    if given:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for CPU"
    name = torch.cuda.get_device_name(device)
    for marker, peak in KNOWN_BF16_PEAK_TFLOPS:
        if marker in name:
            return peak, f"data sheet value for {marker}"
    return None, f"unknown device {name!r}: pass --peak-tflops"
