"""Stand-in predictors with a known answer, for the tiling and temporal-alignment tests and benchmark.

They return the exact geometry of a scene the way E2P would: depth in sqrt space, normalised by the region's own
2nd..98th percentiles as the model's output is, then put through a known random affine distortion (each call and
each image its own), Gaussian noise, optionally a tilt across the region (a low-frequency error no scale and shift
can remove), and clipped to [0, 1]. Normals and alpha get the noise only (they are absolute). The predictor follows
``e2p_core.tiling.Predictor``, so the tests stitch through the same code the nodes use. The truth is either a
ray-traced scene (``train.raytrace`` through ``e2p_dev.example_run.scene``), rendered once at full size and cropped
and resized to each region asked for, or a scene given by a formula that is evaluated for the region alone (for
benchmarks at sizes a ray-traced truth would not fit).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from e2p_core import imaging, representations
from e2p_core.tiling import Region
from e2p_dev.example_run.scene import example_scene
from train.raytrace import Plane, Scene, Sphere


def moved_scene(width: int, height: int, camera_x: float = 0.0, subject_x: float = 0.0) -> Scene:
    """The example scene seen from a camera moved ``camera_x`` metres to its right (a truck, parallel to floor and
    back wall, so their depth at each pixel stays the same) with the orange sphere moved ``subject_x`` metres on its
    own: a clip with static background, parallax and a moving object."""
    scene = example_scene(width, height)
    offset = np.array([camera_x, 0.0, 0.0])
    shapes = []
    for index, shape in enumerate(scene.shapes):
        if isinstance(shape, Plane):
            shapes.append(dataclasses.replace(shape, offset=shape.offset - float(shape.normal @ offset)))
        elif isinstance(shape, Sphere):
            own = np.array([subject_x, 0.0, 0.0]) if index == scene.foreground else 0.0
            shapes.append(dataclasses.replace(shape, centre=shape.centre - offset + own))
        else:
            raise TypeError(f"moved_scene does not move {type(shape).__name__}")
    return Scene(scene.camera, shapes, scene.foreground)


def region_of(full: torch.Tensor, region: Region, height: int, width: int) -> torch.Tensor:
    """[H, W, C] of the full image -> [height, width, C] of the region (area-averaged when smaller), as the model
    sees it."""
    crop = full[region.top:region.top + region.height, region.left:region.left + region.width]
    return imaging.resize(crop.movedim(-1, 0)[None], height, width, "bilinear")[0].movedim(0, -1)


@dataclass(frozen=True)
class SceneTruth:
    """One image and its exact maps, as tensors: rgb [H, W, 3] in [0, 1], depth [H, W] (metres, > 0 everywhere in
    the example scene), normals [H, W, 3] in E2P's native convention, alpha [H, W] of the orange sphere."""

    rgb: torch.Tensor
    depth: torch.Tensor
    normals: torch.Tensor
    alpha: torch.Tensor

    def depth_of(self, region: Region, height: int, width: int) -> torch.Tensor:
        return region_of(self.depth[..., None], region, height, width)[..., 0]

    def normals_of(self, region: Region, height: int, width: int) -> torch.Tensor:
        return representations.unit_normals(region_of(self.normals, region, height, width))

    def alpha_of(self, region: Region, height: int, width: int) -> torch.Tensor:
        return region_of(self.alpha[..., None], region, height, width)[..., 0]


@dataclass(frozen=True)
class AnalyticTruth:
    """Depth of a scene given by a formula at any pixel of a ``height`` x ``width`` image: a floor that recedes to
    a back wall at the horizon, with balls standing on it. A region's depth is computed for that region alone (at the
    centres of the pixels asked for), so a stand-in for an 8K image costs the memory of one tile, not of a rendered
    8K truth."""

    height: int
    width: int
    horizon: float = 0.3                # of the image height
    wall_depth: float = 9.0             # metres
    balls: tuple = ((0.3, 0.62, 0.09, 3.6), (0.68, 0.5, 0.05, 5.2), (0.52, 0.8, 0.12, 2.4))   # x, y, radius, depth

    def depth_of(self, region: Region, height: int, width: int) -> torch.Tensor:
        rows = region.top + (torch.arange(height, dtype=torch.float64) + 0.5) * region.height / height
        columns = region.left + (torch.arange(width, dtype=torch.float64) + 0.5) * region.width / width
        y, x = (rows / self.height)[:, None], (columns / self.width)[None, :]
        below = (y - self.horizon).clamp(min=1e-6)
        depth = (0.9 / below).clamp(max=self.wall_depth).expand(height, width).clone()
        aspect = self.width / self.height
        for centre_x, centre_y, radius, centre_depth in self.balls:
            distance = torch.sqrt(((x - centre_x) * aspect) ** 2 + (y - centre_y) ** 2) / radius
            surface = centre_depth - radius * 4.0 * torch.sqrt((1.0 - distance ** 2).clamp(min=0.0))
            depth = torch.where((distance < 1.0) & (surface < depth), surface, depth)
        return depth.float()


def render_truth(scene: Scene, supersample: int = 1) -> SceneTruth:
    rendered = scene.render(supersample)
    if not (rendered["depth"] > 0).all():
        raise ValueError("the stand-in needs a scene that covers every pixel (no sky)")
    normals = torch.from_numpy(rendered["normals"]).float()
    return SceneTruth(torch.from_numpy(rendered["rgb"]).float() / 255.0, torch.from_numpy(rendered["depth"]).float(),
                      representations.marigold_to_native_normals(normals), torch.from_numpy(rendered["alpha"]).float())


@dataclass(frozen=True)
class Call:
    """What one call returned for one image: its region and, for depth, the affine of
    ``prediction = clip(scale * sqrt(depth) + shift + noise + tilt)``."""

    region: Region
    scale: float
    shift: float


@dataclass
class TruthPredictor:
    """``e2p_core.tiling.Predictor`` for ``task`` over images whose truths are ``truths`` (SceneTruth, or
    AnalyticTruth for depth; one per image of the batch it is called with). Each image of each call gets its own
    distortion: the sqrt depth's percentile normalisation scaled by a factor in 1 +- ``scale_jitter`` about a random
    pivot and shifted by +- ``shift_jitter`` (or one ``fixed_affine`` for all), Gaussian noise of ``noise`` (output
    units), and a ramp of +- ``tilt`` / 2 across the region's width. The uncertainty returned is ``noise``
    everywhere (output units; normals: 0). ``calls`` records every call's regions and affine maps."""

    truths: list
    task: str
    noise: float = 0.01
    scale_jitter: float = 0.05
    shift_jitter: float = 0.02
    tilt: float = 0.0
    fixed_affine: tuple[float, float] | None = None
    seed: int = 0
    calls: list[list[Call]] = field(default_factory=list)

    def __post_init__(self):
        self._generator = torch.Generator().manual_seed(self.seed)

    def _uniform(self, half_width: float) -> float:
        return (2.0 * float(torch.rand((), generator=self._generator, dtype=torch.float64)) - 1.0) * half_width

    def depth_frame(self, depth: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """Metric depth [h, w] -> (distorted sqrt depth [h, w] in [0, 1], scale, shift): the percentile
        normalisation ``n`` of sqrt(depth), turned into ``pivot + factor * (n - pivot) + offset`` (or
        ``fixed_affine``'s scale and shift for every call: a consistent clip)."""
        root = torch.sqrt(depth.double())
        if self.fixed_affine is not None:
            scale, shift = self.fixed_affine
            return self._finish(root * scale + shift, clip=True), scale, shift
        low = float(representations.percentile(root, representations.DEPTH_LOW_PERCENTILE))
        high = float(representations.percentile(root, representations.DEPTH_HIGH_PERCENTILE))
        factor, pivot = 1.0 + self._uniform(self.scale_jitter), 0.5 + self._uniform(0.2)
        scale = factor / max(high - low, 1e-12)          # a flat region: its noise fills the range, as for E2P
        shift = pivot * (1.0 - factor) - scale * low + self._uniform(self.shift_jitter)
        return self._finish(root * scale + shift, clip=True), scale, shift

    def _finish(self, value: torch.Tensor, clip: bool) -> torch.Tensor:
        height, width = value.shape[:2]
        noisy = value + self.noise * torch.randn(value.shape, generator=self._generator, dtype=torch.float64)
        if self.tilt:
            ramp = (torch.arange(width, dtype=torch.float64) + 0.5) / width - 0.5
            noisy = noisy + self.tilt * ramp.reshape(1, width, *([1] * (value.dim() - 2)))
        return (noisy.clamp(0.0, 1.0) if clip else noisy).float()

    def _depth(self, truth, region: Region, height: int, width: int):
        return self.depth_frame(truth.depth_of(region, height, width))

    def _normals(self, truth, region: Region, height: int, width: int):
        normals = truth.normals_of(region, height, width).double()
        return representations.unit_normals(self._finish(normals, clip=False)), math.nan, math.nan

    def _alpha(self, truth, region: Region, height: int, width: int):
        return self._finish(truth.alpha_of(region, height, width).double(), clip=True), math.nan, math.nan

    def __call__(self, images: torch.Tensor, region: Region) -> tuple[torch.Tensor, torch.Tensor]:
        batch, height, width = images.shape[:3]
        if batch != len(self.truths):
            raise ValueError(f"the stand-in knows {len(self.truths)} images and was given {batch}")
        values, calls = [], []
        predict = {"depth": self._depth, "normal": self._normals, "matting": self._alpha}[self.task]
        for truth in self.truths:
            value, scale, shift = predict(truth, region, height, width)
            values.append(value)
            calls.append(Call(region, scale, shift))
        self.calls.append(calls)
        uncertainty = torch.full((batch, height, width), 0.0 if self.task == "normal" else self.noise)
        return torch.stack(values), uncertainty
