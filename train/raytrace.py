"""A small numpy ray caster: a pinhole camera and scenes of planes, spheres and boxes, with exact depth, normals,
shape ids and shaded colour per ray, and per-pixel coverage from supersampling.

It draws the trainer's synthetic data (``train.data.synthetic``) and the example photo of ``scripts/run_example.py``
(``e2p_dev.example_run.scene``). numpy only, so the main job can import it from a ComfyUI venv without any of the
trainer's packages.

Coordinates are OpenCV's (+X right, +Y down, +Z forward); rays are cast as (x, y, 1), so a ray's parameter *is*
planar depth. ``Scene.render`` returns normals in the Marigold convention (+X right, +Y up, +Z towards the viewer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LIGHT_DIRECTION = np.array([-0.4, -0.8, -0.45]) / np.linalg.norm([-0.4, -0.8, -0.45])  # towards the light
AMBIENT = 0.35


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at the origin looking down +Z; principal point at the image centre."""

    width: int
    height: int
    focal: float

    def rays(self, supersample: int = 1) -> np.ndarray:
        """Ray directions (x, y, 1) [H, W, s*s, 3] through ``supersample``² evenly spaced points of each pixel."""
        offsets = (np.arange(supersample) + 0.5) / supersample
        cols = np.arange(self.width)[:, None] + offsets[None, :]                  # [W, s]
        rows = np.arange(self.height)[:, None] + offsets[None, :]                 # [H, s]
        x = (cols - self.width / 2.0) / self.focal
        y = (rows - self.height / 2.0) / self.focal
        xs = np.broadcast_to(x[None, :, None, :], (self.height, self.width, supersample, supersample))
        ys = np.broadcast_to(y[:, None, :, None], (self.height, self.width, supersample, supersample))
        directions = np.stack([xs, ys, np.ones_like(xs)], axis=-1)
        return directions.reshape(self.height, self.width, supersample * supersample, 3)

    def pixel_rays(self) -> np.ndarray:
        """One ray through each pixel centre [H, W, 3] (the rays that define depth and normals)."""
        return self.rays(1)[:, :, 0]


@dataclass
class Plane:
    """Points p with normal . p = offset; two-colour checker texture of cell size ``cell`` metres."""

    normal: np.ndarray
    offset: float
    colours: np.ndarray
    cell: float = 0.5

    def intersect(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        facing = d @ self.normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(np.abs(facing) > 1e-12, self.offset / facing, np.inf)
        t = np.where(t > 1e-9, t, np.inf)
        normals = np.broadcast_to(self.normal, d.shape).copy()
        normals[facing > 0] *= -1.0
        return t, normals

    def albedo(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        helper = np.array([0.0, 0.0, 1.0]) if abs(self.normal[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        u = np.cross(self.normal, helper)
        u /= np.linalg.norm(u)
        v = np.cross(self.normal, u)
        cells = np.floor(points @ u / self.cell) + np.floor(points @ v / self.cell)
        return self.colours[(cells.astype(np.int64) % 2)]


@dataclass
class Sphere:
    centre: np.ndarray
    radius: float
    colours: np.ndarray
    bands: int = 6

    def intersect(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.einsum("...i,...i->...", d, d)
        b = d @ self.centre
        c = self.centre @ self.centre - self.radius ** 2
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        t = np.where(disc >= 0, (b - root) / a, np.inf)
        t = np.where(t > 1e-9, t, np.inf)
        hit = np.isfinite(t)
        normals = (np.where(hit, t, 0.0)[..., None] * d - self.centre) / self.radius
        return t, np.where(hit[..., None], normals, 0.0)

    def albedo(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        longitude = np.arctan2(normals[..., 0], normals[..., 2])
        latitude = np.arcsin(np.clip(normals[..., 1], -1.0, 1.0))
        cells = np.floor(longitude * self.bands / math.pi) + np.floor(latitude * self.bands / math.pi)
        return self.colours[(cells.astype(np.int64) % 2)]


@dataclass
class Box:
    """Box of half extents ``half`` centred at ``centre``, turned by ``yaw`` radians about the vertical axis."""

    centre: np.ndarray
    half: np.ndarray
    yaw: float
    colours: np.ndarray
    cell: float = 0.25
    rotation: np.ndarray = field(init=False)

    def __post_init__(self):
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        self.rotation = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])

    def intersect(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        origin = self.rotation.T @ (-self.centre)
        local = d @ self.rotation                                                # R^T d for row vectors
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-self.half - origin) / local
            t2 = (self.half - origin) / local
        near = np.where(np.isnan(t1), -np.inf, np.minimum(t1, t2))
        far = np.where(np.isnan(t1), np.inf, np.maximum(t1, t2))
        t_near = near.max(axis=-1)
        t_far = far.min(axis=-1)
        axis = near.argmax(axis=-1)
        hit = (t_far >= t_near) & (t_near > 1e-9)
        t = np.where(hit, t_near, np.inf)
        local_normals = np.zeros(d.shape)
        component = np.take_along_axis(local, axis[..., None], axis=-1)[..., 0]
        np.put_along_axis(local_normals, axis[..., None], -np.sign(component)[..., None], axis=-1)
        normals = local_normals @ self.rotation.T
        return t, np.where(hit[..., None], normals, 0.0)

    def albedo(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        local = (points - self.centre) @ self.rotation
        cells = np.floor(local / self.cell).sum(axis=-1)
        return self.colours[(cells.astype(np.int64) % 2)]


@dataclass
class Scene:
    camera: Camera
    shapes: list
    foreground: int          # index in ``shapes`` of the matting foreground

    def trace(self, d: np.ndarray) -> dict:
        """Nearest hit along rays ``d`` [..., 3]: depth (inf = miss), unit normal, shape id (-1 = miss), colour."""
        depth = np.full(d.shape[:-1], np.inf)
        normals = np.zeros(d.shape)
        ids = np.full(d.shape[:-1], -1, dtype=np.int64)
        for number, shape in enumerate(self.shapes):
            t, n = shape.intersect(d)
            closer = t < depth
            depth = np.where(closer, t, depth)
            normals = np.where(closer[..., None], n, normals)
            ids = np.where(closer, number, ids)
        colour = np.zeros(d.shape)
        points = np.where(np.isfinite(depth), depth, 0.0)[..., None] * d
        for number, shape in enumerate(self.shapes):
            mine = ids == number
            if mine.any():
                colour[mine] = shape.albedo(points[mine], normals[mine])
        shading = AMBIENT + (1.0 - AMBIENT) * np.clip(normals @ LIGHT_DIRECTION, 0.0, 1.0)
        elevation = np.clip(-d[..., 1] / np.linalg.norm(d, axis=-1), 0.0, 1.0)
        sky = np.array([0.55, 0.7, 0.9]) * (1.0 - 0.3 * elevation)[..., None]
        colour = np.where((ids >= 0)[..., None], colour * shading[..., None], sky)
        return {"depth": depth, "normals": normals, "ids": ids, "colour": colour}

    def render(self, supersample: int = 3) -> dict:
        """Exact depth (m, 0 = no surface), Marigold-convention normals (0 = no surface), RGB uint8, alpha."""
        centre = self.trace(self.camera.pixel_rays())
        samples = self.trace(self.camera.rays(supersample))
        rgb = np.clip(samples["colour"].mean(axis=2), 0.0, 1.0)
        alpha = (samples["ids"] == self.foreground).mean(axis=2)
        hit = centre["ids"] >= 0
        depth = np.where(hit, centre["depth"], 0.0)
        normals = centre["normals"] * np.array([1.0, -1.0, -1.0])                # OpenCV -> Marigold/OpenGL
        return {"depth": depth, "normals": np.where(hit[..., None], normals, 0.0), "ids": centre["ids"],
                "rgb": np.round(rgb * 255.0).astype(np.uint8), "alpha": alpha}
