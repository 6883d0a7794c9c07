"""Synthetic composites with known foreground, background and alpha, for measuring foreground colour estimation.

The subject is a disc whose boundary is soft (2 px on one side, widening to 14 px on the other, like motion blur),
with thin hair-like strands (about 1.5 px wide, fractional alpha, gently curved) growing out of it over the
background. The foreground colour is a smooth, colourful field; the background is saturated and far from it:

* ``flat``: one saturated green, the green screen;
* ``smooth``: saturated green, magenta and blue blending into each other, a textured but smooth backdrop;
* ``stripes``: hard-edged green and magenta stripes 12 px wide, detail of the background hidden under the soft
  edges, which no method that sees only the image and alpha can recover exactly (the hard case).

The disc fills 60 % of the short side and its hair is 45 % of its radius long; everything else has the same size in
pixels at every image size (strands 1.5 px, edges 2-14 px, colours changing over 150-320 px, as in a ~1 MP
photo), so a small composite is a small subject, not a blurrier one.
``image = alpha * foreground + (1 - alpha) * background`` exactly (in float64, then stored as float32).

``soft_edge_errors`` measures an estimate against the known layers; the tests and ``bench/foreground.py`` share it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

BACKGROUNDS = ("flat", "smooth", "stripes")
GREEN, MAGENTA, BLUE = (0.05, 0.85, 0.1), (0.9, 0.05, 0.8), (0.1, 0.2, 0.95)
STRIPE_PERIOD = 24                                          # px, two stripes
STRAND_HALF_WIDTH = 0.75                                    # px: hair is thin in pixels at any image size
SOFT_EDGE_MIN, SOFT_EDGE_MAX = 2.0, 14.0                    # px, width of the disc's alpha ramp


@dataclass(frozen=True)
class Composite:
    """[H, W, 3] colours and [H, W] alpha, float32 in [0, 1]."""

    image: torch.Tensor
    foreground: torch.Tensor
    background: torch.Tensor
    alpha: torch.Tensor


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    columns = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    return rows, columns


def _wave(rows: torch.Tensor, columns: torch.Tensor, wavelength: float, direction: float, phase: float):
    """A plane wave in [-1, 1] with ``wavelength`` px travelling at ``direction`` radians."""
    along = columns * math.cos(direction) + rows * math.sin(direction)
    return torch.sin(2.0 * math.pi * along / wavelength + phase)


def foreground_field(height: int, width: int) -> torch.Tensor:
    """A smooth field of changing hues, far from pure green or magenta: the subject's colour everywhere."""
    rows, columns = _grid(height, width)
    red = 0.55 + 0.35 * _wave(rows, columns, 260.0, 0.3, 0.0)
    green = 0.35 + 0.2 * _wave(rows, columns, 320.0, 2.2, 1.0)
    blue = 0.5 + 0.35 * _wave(rows, columns, 200.0, 1.1, 2.0)
    return torch.stack([red, green, blue], dim=-1)


def background_field(height: int, width: int, kind: str) -> torch.Tensor:
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background '{kind}'; use one of {', '.join(BACKGROUNDS)}")
    green, magenta, blue = (torch.tensor(colour, dtype=torch.float64) for colour in (GREEN, MAGENTA, BLUE))
    if kind == "flat":
        return green.expand(height, width, 3).clone()
    rows, columns = _grid(height, width)
    if kind == "smooth":
        to_magenta = (0.5 + 0.5 * _wave(rows, columns, 180.0, 0.6, 0.5))[..., None]
        to_blue = (0.5 + 0.5 * _wave(rows, columns, 150.0, 2.4, 1.5))[..., None]
        return ((green * (1.0 - to_blue) + blue * to_blue) * (1.0 - to_magenta) + magenta * to_magenta)
    stripe = (torch.floor((columns + 0.5 * rows) / (STRIPE_PERIOD / 2)) % 2)[..., None]
    return green * (1.0 - stripe) + magenta * stripe


def subject_alpha(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Soft-edged disc with hair strands, [H, W] float64 in [0, 1] (a new tensor each call)."""
    return _subject_alpha(height, width, seed).clone()


@functools.lru_cache(maxsize=8)
def _subject_alpha(height: int, width: int, seed: int) -> torch.Tensor:
    """The strands cost a second at 512 x 512; every background of a size shares them."""
    rows, columns = _grid(height, width)
    centre_y, centre_x = 0.5 * (height - 1), 0.5 * (width - 1)
    radius = 0.3 * min(height, width)
    dy, dx = rows - centre_y, columns - centre_x
    distance = torch.sqrt(dx * dx + dy * dy)
    angle = torch.atan2(dy, dx)
    edge_width = SOFT_EDGE_MIN + (SOFT_EDGE_MAX - SOFT_EDGE_MIN) * 0.5 * (1.0 + torch.cos(angle))
    body = ((radius - distance) / edge_width + 0.5).clamp(0.0, 1.0)

    generator = torch.Generator().manual_seed(seed)
    strands = max(12, round(2.0 * math.pi * radius / 6.0))              # one every ~6 px of the circumference
    length = 0.45 * radius
    reach = (distance - radius) / length                                # 0 at the root, 1 at the tip
    grows = (reach > -0.1) & (reach < 1.0)
    reach, ring_distance, ring_angle = reach[grows], distance[grows], angle[grows]
    along = 1.0 - reach.clamp(min=0.0)
    ring = torch.zeros_like(reach)
    for _ in range(strands):
        root = float(torch.rand((), generator=generator)) * 2.0 * math.pi
        bend = (float(torch.rand((), generator=generator)) - 0.5) * 0.6
        peak = 0.3 + 0.6 * float(torch.rand((), generator=generator))
        from_root = torch.remainder(ring_angle - root + math.pi, 2.0 * math.pi) - math.pi
        near = (from_root.abs() <= abs(bend) + 2.0 * STRAND_HALF_WIDTH / ring_distance).nonzero()[:, 0]
        offset = from_root[near] - bend * reach[near] ** 2                # the strand bends by up to ``bend``
        across = (ring_distance[near] * offset).abs()                   # px from the strand's centre line
        profile = (1.0 - across / (2.0 * STRAND_HALF_WIDTH)).clamp(0.0, 1.0)
        ring[near] = torch.maximum(ring[near], peak * profile * along[near])
    hair = torch.zeros_like(body)
    hair[grows] = ring
    return torch.maximum(body, hair)


def synthetic_composite(height: int, width: int, background: str = "flat", seed: int = 0) -> Composite:
    foreground = foreground_field(height, width)
    backdrop = background_field(height, width, background)
    alpha = subject_alpha(height, width, seed)
    image = alpha[..., None] * foreground + (1.0 - alpha[..., None]) * backdrop
    return Composite(*(tensor.float() for tensor in (image, foreground, backdrop, alpha)))


def soft_edge_errors(composite: Composite, foreground: torch.Tensor, background: torch.Tensor) -> dict[str, float]:
    """Mean absolute colour errors (0..1 per channel, averaged over channels) over the soft pixels, 0 < alpha < 1:

    * ``premultiplied_estimated`` |alpha F_hat - alpha F| and ``premultiplied_original`` |alpha I - alpha F|: the
      colour a compositor adds over a new background from the estimate, and from the image's own colour (what the
      earlier ``rgba`` composites to, and exactly the earlier ``foreground`` = image x alpha);
    * ``straight_estimated`` |F_hat - F| and ``straight_original`` |I - F|: the straight colours themselves;
    * ``recomposite`` |alpha F_hat + (1 - alpha) B_hat - I|: how well estimate and its background explain the image,
      and ``recomposite_all_pixels`` the same over the whole image.
    """
    alpha = composite.alpha[..., None]
    soft = (composite.alpha > 0) & (composite.alpha < 1)

    def soft_mean(difference: torch.Tensor) -> float:
        return float(difference.abs().mean(dim=-1)[soft].mean())

    recomposite = alpha * foreground + (1.0 - alpha) * background - composite.image
    return {
        "premultiplied_estimated": soft_mean(alpha * (foreground - composite.foreground)),
        "premultiplied_original": soft_mean(alpha * (composite.image - composite.foreground)),
        "straight_estimated": soft_mean(foreground - composite.foreground),
        "straight_original": soft_mean(composite.image - composite.foreground),
        "recomposite": soft_mean(recomposite),
        "recomposite_all_pixels": float(recomposite.abs().mean()),
    }
