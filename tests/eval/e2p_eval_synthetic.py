"""Small synthetic copies of the evaluation sets, in the distributors' on-disk layouts (names, formats, units).

Each builder writes a few samples under ``root`` and returns {image key: ground truth as the reader should
decode it}. Images encode their ground truth (see ``depth_image``), so a fake predictor can "predict" well.
"""

from __future__ import annotations

import os
import tarfile

import numpy as np
from PIL import Image


def _save_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _save_jpg(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


def _save_npy(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, array)


def smooth_depth(height: int, width: int, near: float, far: float, seed: int) -> np.ndarray:
    """A plane-like depth ramp with a bump, in metres."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height)[:, None]
    cols = np.linspace(0.0, 1.0, width)[None, :]
    angle = rng.uniform(0.2, 0.8)
    ramp = angle * rows + (1 - angle) * cols
    bump = 0.2 * np.exp(-((rows - 0.5) ** 2 + (cols - 0.5) ** 2) / 0.02)
    t = np.clip(ramp + bump, 0.0, 1.0)
    return (near + t * (far - near)).astype(np.float32)


def depth_image(depth: np.ndarray) -> np.ndarray:
    """RGB whose grey level is the min-max normalised sqrt depth (what the fake predictor reads back)."""
    root = np.sqrt(depth)
    grey = (root - root.min()) / (root.max() - root.min())
    return np.repeat((grey * 255).round().astype(np.uint8)[:, :, None], 3, axis=2)


# -- depth --------------------------------------------------------------------------------------------------------

def make_nyu(root: str, count: int = 2) -> dict[str, np.ndarray]:
    truth = {}
    for i in range(count):
        scene = f"test/kitchen_000{i}"
        depth_mm = (smooth_depth(480, 640, 0.8, 6.0, seed=i) * 1000).round().astype(np.uint16)
        depth_mm[:5, :5] = 0   # holes
        _save_png(f"{root}/{scene}/rgb_0001.png", depth_image(depth_mm.astype(np.float32) / 1000 + 0.1))
        _save_png(f"{root}/{scene}/depth_0001.png", depth_mm)
        _save_png(f"{root}/{scene}/filled_0001.png", np.maximum(depth_mm, 1000).astype(np.uint16))
        truth[f"{scene}/rgb_0001.png"] = depth_mm.astype(np.float32) / 1000.0
    train = smooth_depth(480, 640, 1.0, 3.0, seed=99)
    _save_png(f"{root}/train/bedroom_0001/rgb_0001.png", depth_image(train))
    _save_png(f"{root}/train/bedroom_0001/depth_0001.png", (train * 1000).astype(np.uint16))
    return truth


def make_kitti(root: str) -> dict[str, np.ndarray]:
    truth = {}
    drive = "2011_09_26_drive_0002_sync"
    for i, frame in enumerate(("0000000069", "0000000054")):
        depth = smooth_depth(375, 1242, 4.0, 70.0, seed=10 + i)
        sparse = np.zeros_like(depth)
        rng = np.random.default_rng(i)
        keep = rng.random(depth.shape) < 0.3
        sparse[keep] = depth[keep]
        encoded = (sparse * 256).round().astype(np.uint16)
        image_key = f"2011_09_26/{drive}/image_02/data/{frame}.png"
        _save_png(f"{root}/{image_key}", depth_image(depth))
        _save_png(f"{root}/{drive}/proj_depth/groundtruth/image_02/{frame}.png", encoded)
        truth[image_key] = encoded.astype(np.float32) / 256.0
    _save_png(f"{root}/2011_09_26/{drive}/image_02/data/0000000001.png",   # no ground truth: left out
              depth_image(smooth_depth(375, 1242, 4.0, 70.0, seed=5)))
    return truth


def make_eth3d(root: str, height: int = 40, width: int = 60) -> dict[str, np.ndarray]:
    truth = {}
    for i, name in enumerate(("DSC_6487.JPG", "DSC_6489.JPG")):
        depth = smooth_depth(height, width, 1.0, 20.0, seed=20 + i)
        stored = depth.copy()
        stored[0, :7] = np.inf
        image_key = f"rgb/kicker/images/dslr_images/{name}"
        _save_jpg(f"{root}/{image_key}", depth_image(depth))
        path = f"{root}/depth/kicker_dslr_depth/kicker/ground_truth_depth/dslr_images/{name}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stored.astype("<f4").tofile(path)
        expected = depth.copy()
        expected[0, :7] = 0.0
        truth[image_key] = expected
    return truth


def make_scannet(root: str) -> dict[str, np.ndarray]:
    truth = {}
    for i, scene in enumerate(("scene0406_02", "scene0088_02")):
        depth_mm = (smooth_depth(48, 64, 0.5, 4.0, seed=30 + i) * 1000).round().astype(np.uint16)
        image_key = f"{scene}/color/000300.jpg"
        _save_jpg(f"{root}/{image_key}", depth_image(depth_mm / 1000.0 + 0.1))
        _save_png(f"{root}/{scene}/depth/000300.png", depth_mm)
        truth[image_key] = depth_mm.astype(np.float32) / 1000.0
    return truth


def make_diode(root: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    truth = {}
    for i, (kind, name) in enumerate((("indoors", "00019_00183_indoors_300_050"),
                                      ("outdoor", "00024_00201_outdoor_070_030"))):
        depth = smooth_depth(48, 64, 0.7, 40.0, seed=40 + i)
        mask = np.ones(depth.shape, dtype=np.float32)
        mask[:, :6] = 0
        base = f"{root}/{kind}/scene_0001{i}/scan_0018{i}/{name}"
        _save_png(base + ".png", depth_image(depth))
        _save_npy(base + "_depth.npy", depth[:, :, None])
        _save_npy(base + "_depth_mask.npy", mask)
        truth[f"{kind}/scene_0001{i}/scan_0018{i}/{name}.png"] = (depth, mask > 0)
    return truth


# -- normals ------------------------------------------------------------------------------------------------------

def smooth_normals(height: int, width: int, seed: int) -> np.ndarray:
    """Unit normals (Marigold convention) varying smoothly, facing the camera, with a zero (unknown) corner."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(-0.5, 0.5, height)[:, None]
    cols = np.linspace(-0.5, 0.5, width)[None, :]
    tilt = rng.uniform(0.3, 0.9)
    normals = np.stack([tilt * cols + 0 * rows, 0.5 * rows + 0 * cols, np.ones((height, width))], axis=2)
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    normals[:3, :3] = 0.0
    return normals.astype(np.float32)


def normals_image(normals: np.ndarray) -> np.ndarray:
    """RGB = (n + 1) / 2 of the normals in E2P's native convention (x negated), for the fake predictor."""
    native = normals * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
    return ((native + 1.0) / 2.0 * 255).round().astype(np.uint8)


def make_normals(root: str, layout: str, folders: tuple[str, ...] = ("test", "test/sub")
                 ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """layout: 'img' (X_img.png + X_normal.npy, NYUv2/ScanNet/iBims/Sintel/OASIS) or 'diode'."""
    truth = {}
    for i, folder in enumerate(folders):
        normals = smooth_normals(32, 40, seed=50 + i)
        if layout == "img":
            key = f"{folder}/00000{i}_img.png"
            _save_png(f"{root}/{key}", normals_image(normals))
            _save_npy(f"{root}/{folder}/00000{i}_normal.npy", normals)
            truth[key] = (normals, None)
        else:
            key = f"{folder}/00024_00201_outdoor_0{i}0_030.png"
            base = f"{root}/{key}"[:-len(".png")]
            _save_png(f"{root}/{key}", normals_image(normals))
            _save_npy(base + "_normal.npy", normals)
            mask = np.ones(normals.shape[:2], dtype=np.float32)
            mask[-4:, :] = 0
            _save_npy(base + "_depth_mask.npy", mask)
            truth[key] = (normals, mask > 0)
    return truth


# -- matting ------------------------------------------------------------------------------------------------------

def blob_alpha(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 alpha: a solid ellipse with a soft rim."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(-1, 1, height)[:, None]
    cols = np.linspace(-1, 1, width)[None, :]
    radius = np.sqrt((rows / rng.uniform(0.5, 0.7)) ** 2 + (cols / rng.uniform(0.5, 0.7)) ** 2)
    return (np.clip((1.15 - radius) / 0.3, 0.0, 1.0) * 255).round().astype(np.uint8)


def trimap_from_alpha(alpha: np.ndarray) -> np.ndarray:
    trimap = np.full(alpha.shape, 128, dtype=np.uint8)
    trimap[alpha == 0] = 0
    trimap[alpha == 255] = 255
    return trimap


def _matting_sample(root: str, images_dir: str, seed: int, rgb_alpha: bool = False,
                    with_trimap: bool = True) -> tuple[str, np.ndarray]:
    alpha = blob_alpha(36, 44, seed)
    name = f"x_{seed:04d}"
    key = f"{images_dir}/{name}.jpg"
    _save_jpg(f"{root}/{key}", np.repeat(alpha[:, :, None], 3, axis=2))
    parent = os.path.dirname(images_dir)
    stored = np.repeat(alpha[:, :, None], 3, axis=2) if rgb_alpha else alpha
    _save_png(f"{root}/{parent}/mask/{name}.png" if parent else f"{root}/mask/{name}.png", stored)
    if with_trimap:
        _save_png(f"{root}/{parent}/trimap/{name}.png" if parent else f"{root}/trimap/{name}.png",
                  trimap_from_alpha(alpha))
    return key, alpha.astype(np.float32) / 255.0


def make_aim500(root: str) -> dict[str, np.ndarray]:
    return dict(_matting_sample(root, "original", seed, rgb_alpha=(seed == 61)) for seed in (60, 61))


def make_p3m(root: str) -> dict[str, np.ndarray]:
    truth = dict(_matting_sample(root, "validation/P3M-500-NP/original_image", seed) for seed in (70, 71))
    _matting_sample(root, "validation/P3M-500-P/blurred_image", 72)    # the face-blurred subset: not evaluated
    return truth


def make_am2k(root: str) -> dict[str, np.ndarray]:
    truth = dict(_matting_sample(root, "validation/original", seed) for seed in (80, 81))
    _matting_sample(root, "train/original", 82, with_trimap=False)     # training part: not evaluated
    return truth


def pack_tar(folder: str, tar_path: str) -> str:
    """Pack like the Marigold archives: uncompressed, member names starting with './'."""
    with tarfile.open(tar_path, "w") as archive:
        archive.add(folder, arcname=".")
    return tar_path
