"""Procedural training scenes with exact ground truth, written in the generic and official on-disk formats.

Scenes are rooms (floor, back and side walls) or open roads (floor only, sky beyond) holding textured spheres and
boxes, ray-cast through a pinhole camera by ``train.raytrace``. Depth is the exact planar distance of the first hit
(rays are cast as (x, y, 1) so the ray parameter *is* planar depth), normals are the exact surface normals, and the
alpha of the scene's nearest sphere (the matting foreground) is its pixel coverage from ``supersample``² rays.

    python -m train.data.synthetic --out DIR --format generic|hypersim|vkitti2|interiorverse|sintel|am2k \\
        [--count 32] [--val-count 8] [--size 256x192] [--seed 0] [--supersample 3]

Camera coordinates inside this module are OpenCV's (+X right, +Y down, +Z forward); written normals use the
Marigold convention (+X right, +Y up, +Z towards the viewer), as the official data does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..raytrace import Box, Camera, Plane, Scene, Sphere
from . import io

FORMAT_CHOICES = ("generic", "hypersim", "vkitti2", "interiorverse", "sintel", "am2k")
DEFAULT_SIZES = {"vkitti2": (1242, 375), "hypersim": (256, 192)}
VKITTI_SKY = 65535


# ---------------------------------------------------------------------------------------------------------------
# Random scenes
# ---------------------------------------------------------------------------------------------------------------

def _colours(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(0.15, 0.9, size=3)
    return np.stack([base, np.clip(base * rng.uniform(0.4, 0.8) + rng.uniform(0.0, 0.2, 3), 0, 1)])


def random_scene(rng: np.random.Generator, width: int, height: int, outdoor: bool = False) -> Scene:
    """A room (or, ``outdoor``, a road under open sky) with one foreground sphere, more spheres and boxes."""
    camera = Camera(width, height, focal=float(rng.uniform(0.8, 1.1) * max(width, height) * (0.6 if outdoor else 1.0)))
    eye_height = float(rng.uniform(1.2, 1.8))
    shapes: list = [Plane(np.array([0.0, -1.0, 0.0]), -eye_height, _colours(rng), cell=float(rng.uniform(0.3, 1.0)))]
    depth_far = float(rng.uniform(6.0, 12.0)) if not outdoor else float(rng.uniform(25.0, 60.0))
    if not outdoor:
        shapes.append(Plane(np.array([0.0, 0.0, -1.0]), -depth_far, _colours(rng), cell=float(rng.uniform(0.4, 1.2))))
        half_width = float(rng.uniform(2.5, 4.0))
        shapes.append(Plane(np.array([1.0, 0.0, 0.0]), -half_width, _colours(rng)))
        shapes.append(Plane(np.array([-1.0, 0.0, 0.0]), -half_width, _colours(rng)))
    foreground = len(shapes)
    radius = float(rng.uniform(0.5, 0.9))
    distance = float(rng.uniform(2.8, 4.0))
    shapes.append(Sphere(np.array([rng.uniform(-0.4, 0.4) * distance / 3, eye_height - radius - rng.uniform(0, 0.6),
                                   distance]), radius, _colours(rng), bands=int(rng.integers(3, 9))))
    spread = 2.0 if not outdoor else 6.0
    for _ in range(int(rng.integers(1, 3))):
        r = float(rng.uniform(0.3, 0.7))
        shapes.append(Sphere(np.array([rng.uniform(-spread, spread), eye_height - r,
                                       rng.uniform(distance + 1.0, depth_far * 0.8)]), r, _colours(rng)))
    for _ in range(int(rng.integers(1, 3))):
        half = rng.uniform([0.3, 0.3, 0.3], [0.8, 0.9, 0.8])
        shapes.append(Box(np.array([rng.uniform(-spread, spread), eye_height - half[1],
                                    rng.uniform(distance + 0.5, depth_far * 0.8)]), half,
                          float(rng.uniform(0, math.pi)), _colours(rng)))
    return Scene(camera, shapes, foreground)


# ---------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------

def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if path.suffix == ".jpg" else {}
    Image.fromarray(rgb).save(path, **options)


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array.astype(np.float32))


def _save_png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_integer_png(path, values)


def millimetres(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (0 stays 0 = invalid), rounded."""
    return np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)


def centimetres_vkitti(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 centimetres; no surface (sky) is stored as 65535 like Virtual KITTI 2."""
    values = np.clip(np.round(depth * 100.0), 0, VKITTI_SKY).astype(np.uint16)
    return np.where(depth > 0, values, VKITTI_SKY).astype(np.uint16)


def write_dataset(out: Path, fmt: str, count: int, width: int | None = None, height: int | None = None,
                  seed: int = 0, split: str = "train", supersample: int = 3) -> Path:
    """Render ``count`` scenes into ``out`` in format ``fmt``; returns the split list / manifest written."""
    if fmt not in FORMAT_CHOICES:
        raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(FORMAT_CHOICES)}")
    if count < 1:
        raise ValueError("count must be at least 1")
    default_width, default_height = DEFAULT_SIZES.get(fmt, (256, 192))
    width, height = width or default_width, height or default_height
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split_offset = {"train": 0, "val": 1, "test": 2}.get(split, 3)
    rows, samples = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, split_offset, index])
        scene = random_scene(rng, width, height, outdoor=(fmt == "vkitti2"))
        frame = scene.render(supersample)
        if fmt == "generic":
            stem = f"{split}_{index:05d}"
            _save_rgb(out / "rgb" / f"{stem}.png", frame["rgb"])
            _save_png(out / "depth" / f"{stem}.png", millimetres(frame["depth"]))
            _save_npy(out / "normal" / f"{stem}.npy", frame["normals"])
            _save_png(out / "alpha" / f"{stem}.png", np.round(frame["alpha"] * 255).astype(np.uint8))
            samples.append({"name": stem, "image": f"rgb/{stem}.png", "depth": f"depth/{stem}.png",
                            "normal": f"normal/{stem}.npy", "alpha": f"alpha/{stem}.png"})
        elif fmt == "hypersim":
            scene_dir = f"{split}/ai_{index // 10 + 1:03d}_{seed % 1000:03d}"
            frame_id = f"cam_00_fr{index % 10:04d}"
            _save_rgb(out / scene_dir / f"rgb_{frame_id}.png", frame["rgb"])
            _save_png(out / scene_dir / f"depth_plane_{frame_id}.png", millimetres(frame["depth"]))
            _save_npy(out / scene_dir / f"normal_cam_{frame_id}.npy", frame["normals"])
            rows.append((f"{scene_dir}/rgb_{frame_id}.png", f"{scene_dir}/depth_plane_{frame_id}.png",
                         f"{scene_dir}/normal_cam_{frame_id}.npy"))
        elif fmt == "vkitti2":
            scene_name = f"Scene{index // 50 + 1:02d}/clone/frames"
            rgb_path = f"rgb/{scene_name}/rgb/Camera_0/rgb_{index:05d}.jpg"
            depth_path = f"depth/{scene_name}/depth/Camera_0/depth_{index:05d}.png"
            _save_rgb(out / rgb_path, frame["rgb"])
            _save_png(out / depth_path, centimetres_vkitti(frame["depth"]))
            rows.append((rgb_path, depth_path))
        elif fmt in ("interiorverse", "sintel"):
            if fmt == "interiorverse":
                folder, stem = f"L3D{seed:03d}S{index // 10:02d}{split.upper()}", f"{index % 10:03d}"
            else:
                folder, stem = f"alley_{index // 10 + 1}", f"frame_{index % 10 + 1:04d}"
            _save_rgb(out / folder / f"{stem}_img.png", frame["rgb"])
            _save_npy(out / folder / f"{stem}_normal.npy", frame["normals"])
            rows.append((f"{folder}/{stem}_img.png", f"{folder}/{stem}_normal.npy"))
        else:
            folder = "train" if split == "train" else "validation"
            stem = f"m_{seed:04x}{split_offset:x}{index:05x}"
            _save_rgb(out / folder / "original" / f"{stem}.jpg", frame["rgb"])
            _save_png(out / folder / "mask" / f"{stem}.png", np.round(frame["alpha"] * 255).astype(np.uint8))
            rows.append((f"{folder}/original/{stem}.jpg", f"{folder}/mask/{stem}.png"))
    return _write_index(out, fmt, split, rows, samples)


def _write_index(out: Path, fmt: str, split: str, rows: list, samples: list) -> Path:
    if fmt == "generic":
        manifest = {"description": "synthetic scenes from python -m train.data.synthetic", "depth_scale": 0.001,
                    "depth_min": 0.001, "depth_max": 65.5, "normal_convention": "opengl_camera", "samples": samples}
        path = out / f"manifest_{split}.json"
        path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        return path
    if fmt == "hypersim":
        (out / f"hypersim_filtered_{split}.txt").write_text("".join(f"{r[0]} {r[2]}\n" for r in rows), "utf-8")
        rows = [(r[0], r[1]) for r in rows]
    names = {"hypersim": f"filename_list_{split}.txt", "vkitti2": f"vkitti_{split}.txt",
             "interiorverse": f"interiorverse_filtered_{split}.txt", "sintel": f"sintel_filtered_{split}.txt",
             "am2k": f"filenames_{split}.txt"}
    path = out / names[fmt]
    path.write_text("".join(" ".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (the dataset root)")
    parser.add_argument("--format", default="generic", choices=FORMAT_CHOICES)
    parser.add_argument("--count", type=int, default=32, help="training scenes to render")
    parser.add_argument("--val-count", type=int, default=0, help="also render this many scenes as split 'val'")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default 256x192; vkitti2 1242x375)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--supersample", type=int, default=3, help="rays per pixel side for RGB and alpha")
    args = parser.parse_args(argv)
    width = height = None
    if args.size:
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            parser.error(f"--size {args.size!r}: use WIDTHxHEIGHT, e.g. 256x192")
    if args.supersample < 1:
        parser.error("--supersample must be at least 1")
    for split, count in (("train", args.count), ("val", args.val_count)):
        if count > 0:
            path = write_dataset(args.out, args.format, count, width, height, args.seed, split, args.supersample)
            print(f"wrote {count} {args.format} {split} samples; index: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
