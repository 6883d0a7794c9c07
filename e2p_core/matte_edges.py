"""Tuning a matte's edge for compositing: grow or shrink it, soften it, and the trimap other matting tools want.

Everything works on alpha mattes [B, H, W] in [0, 1] (ComfyUI's MASK layout), in pixels of that matte, on its
device, one image of the batch at a time. Offsets and feathering at their defaults (0) return the matte unchanged,
bit for bit.

* **Erode / dilate** (``offset_alpha``): grey-scale morphology with a flat *disc* of radius ``|offset|`` px (the
  pixels with dx² + dy² <= r²): dilation takes each pixel's maximum over the disc, erosion its minimum, so a soft
  edge keeps its profile and moves by the offset, and corners stay round. Pixels outside the image do not take part
  (a subject cut by the image border is not eaten from that border). Cost O(r) per pixel.
* **Feather** (``feather_alpha``): a Gaussian blur with sigma = radius / 2, so a hard edge becomes a ramp that runs
  from 2 % to 98 % over ``radius`` px either side of it; the border is extended (replicated).
* **Trimap** (``trimap``): definite foreground (alpha >= 1 - epsilon) = 1, definite background (alpha <= epsilon)
  = 0, the rest unknown = 0.5 (the 128 of an 8-bit trimap); with ``band`` px the definite regions are eroded by a
  disc of that radius, so the unknown band (around soft pixels, or around a hard edge) grows by ``band`` px into
  each side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TRIMAP_EPSILON = 0.02          # alpha within this of 0 or 1 is definite: the model's flat areas are not exactly 0/1
TRIMAP_FOREGROUND, TRIMAP_UNKNOWN, TRIMAP_BACKGROUND = 1.0, 0.5, 0.0
FEATHER_SIGMAS_PER_RADIUS = 0.5
GAUSSIAN_TRUNCATION = 3.0      # kernel taps out to 3 sigma (99.7 % of the weight)


class MatteError(ValueError):
    """A matte, image or setting that cannot be used; the message says what is wrong and what to do."""


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def checked_alpha(alpha: torch.Tensor, name: str = "alpha") -> torch.Tensor:
    """A matte [B, H, W] (or one [H, W]) as float [B, H, W], values outside [0, 1] clipped; NaN/inf refused."""
    if not isinstance(alpha, torch.Tensor) or alpha.dim() not in (2, 3) or alpha.shape[-1] < 1 or alpha.shape[-2] < 1:
        raise MatteError(f"{name} must be a mask [H, W] or a batch of masks [B, H, W] with at least one pixel, got "
                         f"{_shape(alpha)}")
    alpha = alpha if alpha.dim() == 3 else alpha[None]
    if not alpha.is_floating_point():
        alpha = alpha.float()
    bad = int((~torch.isfinite(alpha)).sum())
    if bad:
        raise MatteError(f"{name} has {bad} NaN or infinite values (of {alpha.numel()}); give a finite mask in "
                         "[0, 1] (E2PMatting's alpha is one)")
    return alpha.clamp(0.0, 1.0)


def _checked_pixels(value, name: str, integer: bool) -> float:
    kind = "a whole number of pixels" if integer else "a number of pixels"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise MatteError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise MatteError(f"{name} must be finite, got {value!r}")
    return value


def disc_half_widths(radius: int) -> list[int]:
    """Half-width of the disc dx² + dy² <= radius² in each row dy = -radius .. radius."""
    return [math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1)]


def disc_extreme(maps: torch.Tensor, radius: int, largest: bool) -> torch.Tensor:
    """Each pixel's maximum (``largest``) or minimum over the disc of ``radius`` px around it, for maps [N, H, W]
    with values in [0, 1]; pixels outside the image do not take part.

    The disc is the union of its rows; a row of half-width w is a horizontal extreme of width 2w + 1, and those grow
    one step at a time from w = 0 to ``radius``, so each is two operations more than the last and every row of the
    disc one more: O(radius) per pixel whatever the radius."""
    if radius == 0:
        return maps
    pick = torch.maximum if largest else torch.minimum
    height, width = maps.shape[-2:]
    padded = F.pad(maps, (radius, radius, radius, radius), value=0.0 if largest else 1.0)
    horizontal = padded[..., radius:radius + width]
    rows_by_half_width: dict[int, list[int]] = {}
    for dy, half_width in zip(range(-radius, radius + 1), disc_half_widths(radius)):
        rows_by_half_width.setdefault(half_width, []).append(dy)
    result = None
    for half_width in range(radius + 1):
        if half_width:
            horizontal = pick(horizontal, pick(padded[..., radius - half_width:radius - half_width + width],
                                               padded[..., radius + half_width:radius + half_width + width]))
        for dy in rows_by_half_width.get(half_width, ()):
            row = horizontal[..., radius + dy:radius + dy + height, :]
            result = row.clone() if result is None else pick(result, row)
    return result


def offset_alpha(alpha: torch.Tensor, offset: int) -> torch.Tensor:
    """Dilate (offset > 0) or erode (offset < 0) the matte by ``|offset|`` px with a disc; 0 returns it unchanged."""
    alpha = checked_alpha(alpha)
    offset = int(_checked_pixels(offset, "the edge offset", integer=True))
    if offset == 0:
        return alpha
    return torch.stack([disc_extreme(one[None], abs(offset), largest=offset > 0)[0] for one in alpha])


def gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian taps out to ``GAUSSIAN_TRUNCATION`` sigma."""
    reach = max(1, math.ceil(GAUSSIAN_TRUNCATION * sigma))
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(device=device, dtype=dtype)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Maps [N, H, W] blurred separably with a Gaussian of ``sigma`` px, the border replicated."""
    kernel = gaussian_kernel(sigma, maps.dtype, maps.device)
    reach = (kernel.numel() - 1) // 2
    planes = maps[:, None]
    planes = F.conv2d(F.pad(planes, (reach, reach, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, reach, reach), mode="replicate"), kernel.view(1, 1, -1, 1))
    return planes[:, 0]


def feather_alpha(alpha: torch.Tensor, radius: float) -> torch.Tensor:
    """Soften the matte's edge over ``radius`` px either side (Gaussian, sigma = radius / 2); 0 returns it
    unchanged."""
    alpha = checked_alpha(alpha)
    radius = float(_checked_pixels(radius, "the feather radius", integer=False))
    if radius < 0:
        raise MatteError(f"the feather radius is {radius:g} px; it must be 0 (no feathering) or more")
    if radius == 0:
        return alpha
    sigma = FEATHER_SIGMAS_PER_RADIUS * radius
    return torch.stack([gaussian_blur(one[None], sigma)[0] for one in alpha]).clamp(0.0, 1.0)


def adjust_edges(alpha: torch.Tensor, offset: int = 0, feather: float = 0.0) -> torch.Tensor:
    """Erode/dilate, then feather: the edge moves first and is softened where it ends up."""
    return feather_alpha(offset_alpha(alpha, offset), feather)


def trimap(alpha: torch.Tensor, band: int = 0, epsilon: float = TRIMAP_EPSILON) -> torch.Tensor:
    """Trimap [B, H, W]: 1 definite foreground, 0 definite background, 0.5 unknown. Definite means within
    ``epsilon`` of 1 or 0 and, with a ``band``, everything within ``band`` px being so too (an erosion by a disc):
    the soft pixels and the boundary of a hard edge widen into an unknown band of ``band`` px on either side."""
    alpha = checked_alpha(alpha)
    band = int(_checked_pixels(band, "the trimap band", integer=True))
    if band < 0:
        raise MatteError(f"the trimap band is {band} px; it must be 0 (only the soft pixels are unknown) or more")
    epsilon = float(_checked_pixels(epsilon, "the trimap epsilon", integer=False))
    if not 0.0 <= epsilon < 0.5:
        raise MatteError(f"the trimap epsilon is {epsilon:g}; it must be in [0, 0.5): alpha within it of 0 or 1 "
                         "counts as definite")
    result = torch.full_like(alpha, TRIMAP_UNKNOWN)
    for index, one in enumerate(alpha):
        definite = torch.stack([one >= 1.0 - epsilon, one <= epsilon]).to(one.dtype)
        foreground, background = disc_extreme(definite, band, largest=False) > 0.5
        result[index][foreground] = TRIMAP_FOREGROUND
        result[index][background] = TRIMAP_BACKGROUND
    return result
