"""The example photo used when the user gives none: two shaded spheres on a checkered floor before a back wall,
seen from eye height looking slightly down, ray-cast with the trainer's scene tracer (``train.raytrace``), so depth,
orientation and a salient subject are all clear."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from train.raytrace import Camera, Plane, Scene, Sphere

EYE_HEIGHT = 1.2                      # metres above the floor
LOOK_DOWN_DEGREES = 12.0
BACK_WALL_DISTANCE = 9.0
SUPERSAMPLE = 3                       # rays per pixel side: smooth edges


def plain(rgb: tuple[float, float, float]) -> np.ndarray:
    """One colour for both cells of the tracer's two-colour textures."""
    return np.array([rgb, rgb])


def example_scene(width: int, height: int) -> Scene:
    """The scene in the tracer's camera frame (OpenCV: +Y down, +Z forward). The tracer's camera looks straight
    ahead, so the world is turned up by the look-down angle instead of the camera down."""
    angle = math.radians(LOOK_DOWN_DEGREES)
    to_camera = np.array([[1.0, 0.0, 0.0],
                          [0.0, math.cos(angle), -math.sin(angle)],
                          [0.0, math.sin(angle), math.cos(angle)]])
    floor = Plane(to_camera @ [0.0, -1.0, 0.0], -EYE_HEIGHT, np.array([[0.78, 0.76, 0.7], [0.35, 0.33, 0.3]]))
    wall = Plane(to_camera @ [0.0, 0.0, -1.0], -BACK_WALL_DISTANCE, plain((0.55, 0.62, 0.58)))
    orange = Sphere(to_camera @ [-0.55, EYE_HEIGHT - 0.5, 3.6], 0.5, plain((0.85, 0.33, 0.18)))
    blue = Sphere(to_camera @ [0.85, EYE_HEIGHT - 0.35, 4.6], 0.35, plain((0.2, 0.42, 0.8)))
    return Scene(Camera(width, height, focal=0.9 * width), [floor, wall, orange, blue], foreground=2)


def render_example_scene(path: Path, width: int, height: int) -> None:
    """Writes the example photo, ``width`` x ``height`` px, as PNG to ``path``."""
    Image.fromarray(example_scene(width, height).render(SUPERSAMPLE)["rgb"]).save(path)
