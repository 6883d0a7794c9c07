"""A metric-alignment test scene: the ray-traced example scene's exact depth, what E2PDepth would make of it, and
what Depth Anything 3 would give as a reference (coarse, blurred, with outliers, sky and invalid pixels).

Shared by the core alignment tests and the metric depth node's tests, so both measure the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from e2p_core import matte_edges
from e2p_core import representations as rep
from e2p_dev.example_run.scene import example_scene

WIDTH, HEIGHT = 160, 120
REFERENCE_FACTOR = 4                 # DA3-like: the reference at a quarter of the resolution ...
REFERENCE_BLUR = 1.0                 # ... and blurred (Gaussian sigma in reference pixels)
NOISE = 0.01                         # std of the noise on sqrt depth (its range is [0, 1])
OUTLIER_SHARE = 0.08                 # reference pixels off by a factor 0.3..3, not flagged by anything
SKY_ROWS = 3                         # top rows of the reference: sky, with a meaningless depth


def scene_depth(width: int, height: int) -> torch.Tensor:
    return torch.from_numpy(example_scene(width, height).render(supersample=1)["depth"])


def e2p_like(truth: torch.Tensor, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(clean, noisy) sqrt depth of ``truth`` as E2PDepth represents it, and the true s, t of sqrt(d) = s y + t."""
    clean = (rep.encode_depth(truth.float()) + 1.0) / 2.0
    root = torch.sqrt(truth + rep.SQRT_EPS)
    low = float(rep.percentile(root, rep.DEPTH_LOW_PERCENTILE))
    high = float(rep.percentile(root, rep.DEPTH_HIGH_PERCENTILE))
    generator = torch.Generator().manual_seed(seed)
    noisy = (clean + noise * torch.randn(clean.shape, generator=generator)).clamp(0.0, 1.0)
    return clean, noisy, high - low, low


def da3_like_reference(truth: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(depth, confidence, sky probability) at a quarter of the truth's resolution."""
    generator = torch.Generator().manual_seed(seed)
    depth = matte_edges.gaussian_blur(F.avg_pool2d(truth[None, None], REFERENCE_FACTOR)[0], REFERENCE_BLUR)[0]
    height, width = depth.shape
    confidence = 0.5 + torch.rand(height, width, generator=generator, dtype=torch.float64)
    outliers = torch.rand(height, width, generator=generator, dtype=torch.float64) < OUTLIER_SHARE
    factors = torch.empty(height, width, dtype=torch.float64).uniform_(math.log(0.3), math.log(3.0),
                                                                       generator=generator).exp()
    depth = torch.where(outliers, depth * factors, depth)
    depth[18:24, 4:12] *= 2.5                        # a region the model got wrong and knows it
    confidence[18:24, 4:12] = 0.01
    sky = torch.zeros(height, width, dtype=torch.float64)
    sky[:SKY_ROWS] = 1.0
    depth[:SKY_ROWS] = 1000.0
    depth[10, 10], depth[11, 20], depth[12, 30] = float("nan"), 0.0, float("inf")
    return depth, confidence, sky


def absolute_relative_error(depth: torch.Tensor, truth: torch.Tensor, where: torch.Tensor) -> float:
    return float(((depth.double() - truth).abs() / truth)[where].mean())
