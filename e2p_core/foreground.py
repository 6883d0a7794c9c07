"""The foreground colour of a matted subject, so that soft edges stop carrying the old background into a composite.

A pixel of the image is ``I = alpha * F + (1 - alpha) * B``. Where alpha is strictly between 0 and 1 (hair, fur,
motion blur, a soft boundary) the image's colour still holds ``(1 - alpha) * B``; composited with its alpha over a
new background it brings a fringe of the old one along. ``estimate_foreground`` recovers ``F`` (and ``B``) by
multi-level foreground estimation (Germer, Uelwer, Conrad, Harmeling, "Fast Multi-Level Foreground Estimation",
ICPR 2020). Per colour channel it minimises

    sum_i (alpha_i F_i + (1 - alpha_i) B_i - I_i)²
    + sum_(i, j neighbours) (EPSILON + OMEGA |alpha_i - alpha_j|) ((F_i - F_j)² + (B_i - B_j)²)

(the image must be explained; F and B are smooth, and smoothest across alpha edges), starting from the mean colour
of a 1 x 1 copy of the image and then at every doubling of the size up to the full one, each level starting from
the coarser level's solution. The paper relaxes each level with a few Gauss-Seidel sweeps in scan order, which does not
vectorise; here each level takes a fixed number of conjugate-gradient steps preconditioned by each pixel's own
2 x 2 (F, B) block, which on the tests' synthetic composites needed about a tenth of the steps that vectorised
(Jacobi) sweeps needed for the same error. Two constraints the compositing equation implies are kept
exactly: where alpha is 1 the foreground is the image, where it is 0 the background is the image. Cost: O(pixels)
per step, in all about 13 steps' worth at full size; memory about 50 floats (200 bytes) per pixel of the image
being worked on, its outputs included.

Output modes (the choices the matting node's options are built on):

* ``FOREGROUND_COLOURS``: ``estimated`` (the above) or ``original`` (the image's own colour, the behaviour before
  the estimate existed);
* ``ALPHA_MODES``: the RGBA's colour ``straight`` (colour, alpha: what PNG and ComfyUI's image-with-alpha nodes
  expect) or ``premultiplied`` (colour * alpha, alpha: what additive compositors expect).

The three-channel ``foreground`` image is always colour * alpha (the subject over black). ``original`` with
``straight`` gives exactly the earlier ``rgba`` and ``foreground`` outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .matte_edges import MatteError, checked_alpha

FOREGROUND_COLOURS = ("estimated", "original")
ALPHA_MODES = ("straight", "premultiplied")
EPSILON = 1e-5                 # smoothness everywhere (the paper's regularisation)
OMEGA = 1.0                    # extra smoothness across alpha changes (the paper's gradient weight)
# Conjugate-gradient steps per level. The coarser levels carry colour over long distances (into long hair, across
# wide soft edges) and cost a quarter of the next finer one; the full-size level only refines locally.
FULL_SIZE_STEPS = 6
COARSER_LEVEL_STEPS = 20


@dataclass(frozen=True)
class ForegroundEstimate:
    """``foreground`` and ``background`` [B, H, W, 3] in [0, 1]. The background is the colour the estimate assumed
    behind the subject: exact where alpha is 0, inferred under soft pixels, a smooth fill under opaque ones."""

    foreground: torch.Tensor
    background: torch.Tensor


def checked_image_and_alpha(image: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B, H, W, 3 or 4] as float RGB clipped to [0, 1] and its alpha [B, H, W], or a clear error."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise MatteError(f"the image must be a ComfyUI IMAGE [B, H, W, 3] (RGB, or RGBA whose alpha is ignored), got "
                         f"{shape}")
    alpha = checked_alpha(alpha)
    if image.shape[:3] != alpha.shape:
        raise MatteError(f"the image is {tuple(image.shape[:3])} [B, H, W] and its alpha {tuple(alpha.shape)}: give "
                         "one matte per image at the image's size (resize the mask, or match the batch)")
    rgb = image[..., :3].float()
    bad = int((~torch.isfinite(rgb)).sum())
    if bad:
        raise MatteError(f"the image has {bad} NaN or infinite values (of {rgb.numel()}); give a finite image in "
                         "[0, 1]")
    return rgb.clamp(0.0, 1.0), alpha.to(device=rgb.device, dtype=rgb.dtype)


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(h, w) of every level, 1 x 1 first, each side halved (rounded up) from the full size."""
    sizes = [(height, width)]
    while sizes[-1] != (1, 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes[::-1]


class _Level:
    """The quadratic problem at one level for image [3, h, w] and alpha [1, h, w]: unknowns x = [F; B] [6, h, w].

    Pixel i's equations: (alpha² + W_i) F_i + alpha (1 - alpha) B_i - sum_j w_ij F_j = alpha I_i, and the same
    with (1 - alpha) for B, where w_ij are the edge weights and W_i their sum. Entries fixed by the constraints
    (F where alpha = 1, B where alpha = 0) have zero preconditioner, so the solver never moves them."""

    def __init__(self, image: torch.Tensor, alpha: torch.Tensor):
        self.image, self.alpha = image, alpha
        self.vertical = (alpha[:, 1:] - alpha[:, :-1]).abs_().mul_(OMEGA).add_(EPSILON)
        self.horizontal = (alpha[:, :, 1:] - alpha[:, :, :-1]).abs_().mul_(OMEGA).add_(EPSILON)
        total = torch.zeros_like(alpha)
        total[:, 1:] += self.vertical
        total[:, :-1] += self.vertical
        total[:, :, 1:] += self.horizontal
        total[:, :, :-1] += self.horizontal
        clear = 1.0 - alpha
        self.d11, self.d12, self.d22 = alpha * alpha + total, alpha * clear, clear * clear + total
        determinant = self.d11 * self.d22 - self.d12 * self.d12
        self.opaque, self.transparent = alpha >= 1.0, alpha <= 0.0
        zero = torch.zeros_like(alpha)
        self.p11 = torch.where(self.opaque, zero, self.d22 / determinant)
        self.p22 = torch.where(self.transparent, zero, self.d11 / determinant)
        self.p12 = torch.where(self.opaque | self.transparent, zero, -self.d12 / determinant)

    def constrain(self, x: torch.Tensor) -> None:
        x[:3] = torch.where(self.opaque, self.image, x[:3])
        x[3:] = torch.where(self.transparent, self.image, x[3:])

    def apply(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = A x."""
        out.zero_()
        out[:, 1:].addcmul_(self.vertical, x[:, :-1])
        out[:, :-1].addcmul_(self.vertical, x[:, 1:])
        out[:, :, 1:].addcmul_(self.horizontal, x[:, :, :-1])
        out[:, :, :-1].addcmul_(self.horizontal, x[:, :, 1:])
        out.neg_()
        out[:3].addcmul_(self.d11, x[:3]).addcmul_(self.d12, x[3:])
        out[3:].addcmul_(self.d12, x[:3]).addcmul_(self.d22, x[3:])
        return out

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """b - A x, with b = [alpha I; (1 - alpha) I]."""
        r = self.apply(x, torch.empty_like(x)).neg_()
        r[:3].addcmul_(self.alpha, self.image)
        r[3:].addcmul_(1.0 - self.alpha, self.image)
        return r

    def precondition(self, r: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        torch.mul(r[:3], self.p11, out=out[:3])
        out[:3].addcmul_(r[3:], self.p12)
        torch.mul(r[3:], self.p22, out=out[3:])
        out[3:].addcmul_(r[:3], self.p12)
        return out


def _per_channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot products of [6, h, w] vectors per colour channel (F and B of a channel form one system) -> [6, 1, 1]
    float64. torch sums float32 in cascades, accurate to ~1e-7 relative even over 8K images; one plane at a time
keeps the temporary product small."""
    sums = torch.stack([torch.mul(a_plane, b_plane).sum() for a_plane, b_plane in zip(a, b)]).to(torch.float64)
    return (sums[:3] + sums[3:]).repeat(2).view(6, 1, 1)


def _solve(level: _Level, x: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` preconditioned conjugate-gradient steps from x (constrained entries set first)."""
    level.constrain(x)
    r = level.residual(x)
    q = torch.empty_like(r)
    z = level.precondition(r, q)
    p = z.clone()
    rz = _per_channel_dot(r, z)
    for _ in range(steps):
        level.apply(p, q)
        pq = _per_channel_dot(p, q)
        step = torch.where(pq > 0, rz / pq.clamp(min=1e-300), torch.zeros_like(pq)).to(x.dtype)
        x.addcmul_(step, p)
        r.addcmul_(step, q, value=-1.0)
        z = level.precondition(r, q)
        rz_next = _per_channel_dot(r, z)
        beta = torch.where(rz > 0, rz_next / rz.clamp(min=1e-300), torch.zeros_like(rz)).to(x.dtype)
        p.mul_(beta).add_(z)
        rz = rz_next
    return x


def _estimate_one(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Image [3, H, W] and alpha [1, H, W] -> [F; B] [6, H, W] in [0, 1]."""
    sizes = level_sizes(*alpha.shape[-2:])
    pyramid = [(image, alpha)]
    for size in sizes[-2::-1]:
        finer_image, finer_alpha = pyramid[-1]
        pyramid.append((F.adaptive_avg_pool2d(finer_image[None], size)[0],
                        F.adaptive_avg_pool2d(finer_alpha[None], size)[0]))
    coarsest_image = pyramid[-1][0]
    x = coarsest_image.repeat(2, 1, 1)
    for level_image, level_alpha in pyramid[-2::-1]:
        height, width = level_alpha.shape[-2:]
        x = F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        steps = FULL_SIZE_STEPS if level_alpha is alpha else COARSER_LEVEL_STEPS
        x = _solve(_Level(level_image, level_alpha), x, steps)
    if len(pyramid) == 1:                       # a one-pixel image: F = B = I satisfies it exactly
        return x
    return x.clamp_(0.0, 1.0)


def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor) -> ForegroundEstimate:
    """Foreground and background colour [B, H, W, 3] in [0, 1] of IMAGE [B, H, W, 3] under alpha [B, H, W]; on
    the image's device, one image of the batch at a time."""
    rgb, alpha = checked_image_and_alpha(image, alpha)
    foreground, background = torch.empty_like(rgb), torch.empty_like(rgb)
    for index, (one_image, one_alpha) in enumerate(zip(rgb, alpha)):
        solution = _estimate_one(one_image.permute(2, 0, 1).contiguous(), one_alpha[None].contiguous())
        foreground[index] = solution[:3].permute(1, 2, 0)
        background[index] = solution[3:].permute(1, 2, 0)
    return ForegroundEstimate(foreground, background)


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise MatteError(f"unknown {what} '{value}'; use one of {', '.join(choices)}")


def foreground_colour(image: torch.Tensor, alpha: torch.Tensor, colour: str = "estimated") -> torch.Tensor:
    """Straight foreground colour [B, H, W, 3]: the estimate, or the image's own colour (``original``)."""
    _check_choice(colour, FOREGROUND_COLOURS, "foreground colour")
    if colour == "estimated":
        return estimate_foreground(image, alpha).foreground
    return checked_image_and_alpha(image, alpha)[0]


def matting_outputs(image: torch.Tensor, alpha: torch.Tensor, colour: str = "estimated",
                    alpha_mode: str = "straight",
                    output_alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgba [B, H, W, 4], foreground [B, H, W, 3]): the RGBA in the chosen alpha mode and the subject over black
    (colour * alpha). The colour is estimated under ``alpha``, the matte the image was formed with; the outputs
    carry ``output_alpha`` when given (the matte after the edge controls of e2p_core.matte_edges)."""
    _check_choice(alpha_mode, ALPHA_MODES, "alpha mode")
    straight = foreground_colour(image, alpha, colour)
    alpha = checked_alpha(alpha if output_alpha is None else output_alpha).to(device=straight.device,
                                                                            dtype=straight.dtype)
    if alpha.shape != straight.shape[:-1]:
        raise MatteError(f"the output alpha is {tuple(alpha.shape)} but the image is {tuple(straight.shape[:-1])}; "
                         "give one matte per image at its size")
    premultiplied = straight * alpha[..., None]
    rgba_colour = straight if alpha_mode == "straight" else premultiplied
    return torch.cat([rgba_colour, alpha[..., None]], dim=-1), premultiplied
