"""The one definition of Edit2Perceive's task representations.

Used by the ComfyUI nodes, the trainer and the evaluation harness, so a target the trainer builds and a
prediction a node decodes always mean the same thing. Only torch and numpy are needed here (no ComfyUI).

Conventions (all derived from the official data pipeline):

* Depth is learned in **sqrt space**: ``a = sqrt(depth)``, the 2nd..98th percentile of ``a`` over valid pixels
  mapped affinely to [-1, 1] and clipped. A prediction decodes to ``y = mean_c(clip((x + 1) / 2, 0, 1))``:
  ``y`` is affine in ``sqrt(depth)`` with **near = 0 (dark)**, far = 1. It is *not* linear depth.
* Normals are unit camera-space vectors in the **ControlNet/BAE convention**: +X points left, +Y up, +Z towards the
  viewer. (The official training reads Marigold-format normals, +X right, and negates X.)
* Alpha mattes are ``2 * alpha - 1`` repeated to 3 channels. Matting's second reference image, the hint point map,
  is owned by ``e2p_core.hints``.
"""

from __future__ import annotations

import math

import torch

# ---------------------------------------------------------------------------------------------------------------
# Maps between nodes
# ---------------------------------------------------------------------------------------------------------------

def require_finite_map(values: torch.Tensor | None, input_name: str) -> None:
    """Refuse a map (IMAGE [B, H, W, C] or MASK [B, H, W]) that holds NaN or infinite values; an optional input
    left unconnected (None) passes.

    Decoding clamps to [0, 1], which keeps NaN as NaN and turns infinity into a plausible far or near end, so
    such a map would come out as a wrong result that looks like a success. An IMAGE pixel counts once however
    many of its channels are bad."""
    if values is None:
        return
    bad = ~torch.isfinite(values)
    if not bad.any():
        return
    nan, infinite = torch.isnan(values), torch.isinf(values)
    if values.dim() == 4:
        bad, nan, infinite = bad.any(dim=-1), nan.any(dim=-1), infinite.any(dim=-1)
    raise ValueError(f"{input_name} has {int(bad.sum())} NaN or infinite pixels of {bad.numel()} ({int(nan.sum())} "
                     f"NaN, {int(infinite.sum())} infinite). E2P Depth, E2P Normal and SqrtDecode never output "
                     "such values; they come from a node upstream (a division by zero or the log of 0 in an image "
                     f"math node, an EXR loaded with holes). Fix that node, or fill or clamp the values before "
                     f"connecting {input_name} here")


# ---------------------------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------------------------

SQRT_EPS = 1e-6
DEPTH_LOW_PERCENTILE = 2.0
DEPTH_HIGH_PERCENTILE = 98.0
# The nearest and farthest distance (metres) assumed when a graph does not give the scene's own: a room.
DEFAULT_NEAR = 0.5
DEFAULT_FAR = 10.0


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """NumPy's default ('linear') percentile of a 1-D tensor; torch.quantile refuses large inputs."""
    if values.numel() == 0:
        raise ValueError("percentile of an empty set: the depth map has no valid pixels")
    ordered, _ = torch.sort(values.flatten().to(torch.float64))
    position = (ordered.numel() - 1) * q / 100.0
    lower = int(math.floor(position))
    upper = min(lower + 1, ordered.numel() - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def encode_depth(depth: torch.Tensor, valid: torch.Tensor | None = None,
                 low: float = DEPTH_LOW_PERCENTILE, high: float = DEPTH_HIGH_PERCENTILE) -> torch.Tensor:
    """Metric depth [..., H, W] (one map per leading index) -> training target in [-1, 1], sqrt space.

    Each map is normalised by its own percentiles over ``valid`` pixels (all finite positive pixels when
    ``valid`` is None), exactly as the official targets are built.
    """
    depth = depth.to(torch.float32)
    if valid is None:
        valid = torch.isfinite(depth) & (depth > 0)
    flat_depth = depth.reshape(-1, *depth.shape[-2:])
    flat_valid = valid.expand_as(depth).reshape(-1, *depth.shape[-2:])
    encoded = torch.empty_like(flat_depth)
    for i in range(flat_depth.shape[0]):
        root = torch.sqrt(torch.clamp(torch.nan_to_num(flat_depth[i], nan=0.0, posinf=0.0), min=0.0) + SQRT_EPS)
        valid_root = root[flat_valid[i]]
        lo = percentile(valid_root, low).to(torch.float32)
        hi = percentile(valid_root, high).to(torch.float32)
        span = torch.clamp(hi - lo, min=1e-12)
        encoded[i] = torch.clamp(((root - lo) / span - 0.5) * 2.0, -1.0, 1.0)
    return encoded.reshape(depth.shape)


def decode_depth(decoded_rgb: torch.Tensor, channel_axis: int = -1) -> torch.Tensor:
    """Decoder output [..., H, W, 3] in [-1, 1] (channels at ``channel_axis``) -> sqrt-space depth [..., H, W] in
    [0, 1] (near = 0)."""
    return ((torch.clamp(decoded_rgb, -1.0, 1.0) + 1.0) / 2.0).mean(dim=channel_axis)


def sqrt_affine_to_metric(sqrt_depth: torch.Tensor, scale, shift) -> torch.Tensor:
    """Sqrt-space depth -> metres when ``sqrt(depth) = shift + scale * y`` (``scale``, ``shift``: numbers or tensors
    that broadcast). A negative root has no depth in front of the camera: it gives 0, not its square."""
    root = (shift + sqrt_depth * scale).clamp(min=0.0)
    return root * root


def sqrt_depth_to_metric(sqrt_depth: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Sqrt-space depth in [0, 1] -> metres, given the scene's near and far distance.

    The representation is affine in sqrt(depth), so ``d = (sqrt(near) + y * (sqrt(far) - sqrt(near)))**2``.
    """
    if not (near >= 0.0 and far > near):
        raise ValueError(f"need 0 <= near < far, got near={near}, far={far}")
    return sqrt_affine_to_metric(sqrt_depth, math.sqrt(far) - math.sqrt(near), math.sqrt(near))


def metric_to_sqrt_depth(depth: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Inverse of :func:`sqrt_depth_to_metric` (for tests and for aligning ground truth)."""
    if not (near >= 0.0 and far > near):
        raise ValueError(f"need 0 <= near < far, got near={near}, far={far}")
    return (torch.sqrt(torch.clamp(depth, min=0.0)) - math.sqrt(near)) / (math.sqrt(far) - math.sqrt(near))


def normalize_range(values: torch.Tensor, shared: bool) -> torch.Tensor:
    """Min-max normalise [B, ...] to [0, 1], per item or with one range shared by the whole batch.

    A range shared across a video's frames keeps their brightness comparable; per-frame ranges flicker.
    """
    if shared:
        lo, hi = values.min(), values.max()
        return (values - lo) / torch.clamp(hi - lo, min=1e-12)
    flat = values.reshape(values.shape[0], -1)
    lo = flat.min(dim=1).values.reshape(-1, *([1] * (values.dim() - 1)))
    hi = flat.max(dim=1).values.reshape(-1, *([1] * (values.dim() - 1)))
    return (values - lo) / torch.clamp(hi - lo, min=1e-12)


def sqrt_depth_to_disparity(sqrt_depth: torch.Tensor, near: float, far: float, shared: bool = False) -> torch.Tensor:
    """Sqrt-space depth -> normalised inverse depth in [0, 1], near = bright (what depth ControlNets expect)."""
    metric = sqrt_depth_to_metric(sqrt_depth, near, far)
    return normalize_range(1.0 / torch.clamp(metric, min=1e-6), shared)


def sqrt_depth_to_relative(sqrt_depth: torch.Tensor, near: float, far: float, shared: bool = False) -> torch.Tensor:
    """Sqrt-space depth -> linear depth normalised to [0, 1], near = dark."""
    return normalize_range(sqrt_depth_to_metric(sqrt_depth, near, far), shared)


# ---------------------------------------------------------------------------------------------------------------
# Normals
# ---------------------------------------------------------------------------------------------------------------

# Sign of (x, y, z) that turns E2P's native (ControlNet/BAE) vectors into each convention.
NORMAL_CONVENTIONS = {
    "controlnet_bae": (1.0, 1.0, 1.0),   # +X left, +Y up, +Z to viewer: E2P native, ControlNet normalbae, DSINE
    "opengl_camera": (-1.0, 1.0, 1.0),   # +X right, +Y up, +Z to viewer: Marigold/diffusers, OpenGL camera space
    "directx": (-1.0, -1.0, 1.0),        # +X right, +Y down, +Z to viewer: DirectX-style green channel
}


def unit_normals(vectors: torch.Tensor, eps: float = 1e-8, channel_axis: int = -1) -> torch.Tensor:
    """Divide [..., 3] vectors (components at ``channel_axis``) by their length, as the official post-processing
    does (no clipping)."""
    return vectors / (torch.linalg.vector_norm(vectors, dim=channel_axis, keepdim=True) + eps)


def decode_normals(decoded_rgb: torch.Tensor, channel_axis: int = -1) -> torch.Tensor:
    """Decoder output [..., 3] in about [-1, 1] (channels at ``channel_axis``) -> unit normals in E2P's native
    convention, components on the same axis."""
    return unit_normals(decoded_rgb, channel_axis=channel_axis)


def convention_signs(convention: str, flip_x: bool = False, flip_y: bool = False,
                     flip_z: bool = False) -> torch.Tensor:
    if convention not in NORMAL_CONVENTIONS:
        raise ValueError(f"unknown normal convention '{convention}'; choose one of {sorted(NORMAL_CONVENTIONS)}")
    sx, sy, sz = NORMAL_CONVENTIONS[convention]
    return torch.tensor([-sx if flip_x else sx, -sy if flip_y else sy, -sz if flip_z else sz])


def convert_normals(native: torch.Tensor, convention: str, flip_x: bool = False, flip_y: bool = False,
                    flip_z: bool = False) -> torch.Tensor:
    """E2P-native unit normals [..., 3] -> the chosen convention (each sign flip is its own inverse)."""
    return native * convention_signs(convention, flip_x, flip_y, flip_z).to(native)


def marigold_to_native_normals(normals: torch.Tensor) -> torch.Tensor:
    """Marigold-format ground truth (+X right) -> E2P native (+X left): the official training/eval flip."""
    return convert_normals(normals, "opengl_camera")


def normals_to_rgb(normals: torch.Tensor) -> torch.Tensor:
    """Unit normals [..., 3] -> colours in [0, 1] (``(n + 1) / 2``)."""
    return torch.clamp((normals + 1.0) / 2.0, 0.0, 1.0)


def rgb_to_normals(rgb: torch.Tensor) -> torch.Tensor:
    """Colours in [0, 1] -> unit normals (inverse of :func:`normals_to_rgb` up to quantisation)."""
    return unit_normals(rgb * 2.0 - 1.0)


def encode_normals(native_normals: torch.Tensor) -> torch.Tensor:
    """Unit normals [..., 3] (native convention) -> training target in [-1, 1] (re-unit-normalised)."""
    return unit_normals(native_normals)


# ---------------------------------------------------------------------------------------------------------------
# Matting
# ---------------------------------------------------------------------------------------------------------------

def encode_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """Alpha [..., H, W] in [0, 1] -> training target [..., H, W, 3] in [-1, 1]."""
    return (alpha.clamp(0.0, 1.0) * 2.0 - 1.0).unsqueeze(-1).expand(*alpha.shape, 3)


def decode_alpha(decoded_rgb: torch.Tensor, channel_axis: int = -1) -> torch.Tensor:
    """Decoder output [..., H, W, 3] in [-1, 1] (channels at ``channel_axis``) -> alpha [..., H, W] in [0, 1]."""
    return ((torch.clamp(decoded_rgb, -1.0, 1.0) + 1.0) / 2.0).mean(dim=channel_axis)


def clamp_unit_interval(values: torch.Tensor) -> torch.Tensor:
    """Depth and alpha live in [0, 1]; resampling (bicubic, say) can overshoot it."""
    return values.clamp(0.0, 1.0)
