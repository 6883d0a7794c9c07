"""Surface-normal evaluation sets in the Marigold-normals layout.

Ground truth is ``*_normal.npy`` [H, W, 3] float in the Marigold convention (+X right, +Y up, +Z to the viewer;
zero vectors where unknown). NYUv2, ScanNet, iBims-1, Sintel and OASIS store the image as ``X_img.png`` beside
``X_normal.npy``; DIODE stores ``X.png`` beside ``X_normal.npy`` (and, in the DIODE release, ``X_depth_mask.npy``).
"""

from __future__ import annotations

import numpy as np

from ..protocol import NormalTarget
from .base import EvalDataset, Sample
from .source import DatasetError


class NormalDataset(EvalDataset):
    task = "normal"
    image_patterns = ("*_img.png",)
    required_roles = ("normal",)
    split_roles = ("normal",)

    def ground_truth_files(self, image: str) -> dict[str, str]:
        if not image.endswith("_img.png"):
            raise DatasetError(f"{image} does not end in _img.png")
        return {"normal": image[:-len("_img.png")] + "_normal.npy"}

    def read_target(self, sample: Sample) -> NormalTarget:
        normals = np.asarray(self.source.read_npy(sample.files["normal"]), dtype=np.float32)
        if normals.ndim != 3 or normals.shape[2] != 3:
            raise DatasetError(f"{sample.files['normal']} should hold [H, W, 3] normals, got {normals.shape}")
        mask = None
        if "mask" in sample.files:
            mask = np.asarray(self.source.read_npy(sample.files["mask"])).reshape(normals.shape[:2]) > 0
        return NormalTarget(normals=normals, mask=mask)


class NYUv2Normals(NormalDataset):
    name, title = "nyuv2", "NYUv2"
    layout_hint = "000000_img.png with 000000_normal.npy (nyuv2/test)"


class ScanNetNormals(NormalDataset):
    name, title = "scannet", "ScanNet"
    layout_hint = "scene0001_01/001170_img.png with scene0001_01/001170_normal.npy"


class IBimsNormals(NormalDataset):
    name, title = "ibims", "iBims-1"
    layout_hint = "ibims/corridor_01_img.png with ibims/corridor_01_normal.npy"


class SintelNormals(NormalDataset):
    name, title = "sintel", "Sintel"
    layout_hint = "alley_2/frame_0001_img.png with alley_2/frame_0001_normal.npy"


class OASISNormals(NormalDataset):
    name, title = "oasis", "OASIS"
    layout_hint = "268584_ALI_img.png with 268584_ALI_normal.npy (oasis/val)"


class DIODENormals(NormalDataset):
    """Images ``X.png`` (not ``*_img.png``) with ``X_normal.npy``; ``X_depth_mask.npy`` is read when present. The
    official protocol ignores it (its mask path is derived wrongly and the masks are never used)."""

    name, title = "diode", "DIODE"
    image_patterns = ("*.png",)
    layout_hint = "outdoor/scene_00024/scan_00201/X.png with X_normal.npy (diode/val)"

    def ground_truth_files(self, image: str) -> dict[str, str]:
        base = image[:-len(".png")]
        return {"normal": base + "_normal.npy", "mask": base + "_depth_mask.npy"}


NORMAL_DATASETS = {cls.name: cls for cls in (NYUv2Normals, ScanNetNormals, IBimsNormals, SintelNormals,
                                             OASISNormals, DIODENormals)}
