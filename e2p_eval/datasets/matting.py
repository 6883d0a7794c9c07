"""Matting evaluation sets in the folder layouts their authors distribute.

* AIM-500: ``original/X.jpg``, ``mask/X.png`` (alpha), ``trimap/X.png``.
* P3M-500-NP (inside P3M-10k): ``validation/P3M-500-NP/{original_image,mask,trimap}/``.
* AM-2k: ``validation/{original,mask,trimap}/`` (the training part has no trimaps).

Alphas are 8-bit PNGs (read as the official script does: channels averaged, / 255); trimaps are 0 / 128 / 255.
"""

from __future__ import annotations

import posixpath

import numpy as np

from ..protocol import MattingTarget
from .base import EvalDataset, Sample, stem
from .source import DatasetError


def _folder_sibling(image: str, folder: str) -> str:
    """``.../<images folder>/X.jpg`` -> ``.../<folder>/X.png``."""
    images_dir = posixpath.dirname(image)
    return posixpath.join(posixpath.dirname(images_dir), folder, stem(image) + ".png")


def read_gray(source, path: str) -> np.ndarray:
    """An 8/16-bit matte or trimap as float values in its own units (RGB(A) -> channel mean, like the
    official loader)."""
    values = np.asarray(source.read_image(path))
    if values.ndim == 3:
        values = values[:, :, :3].mean(axis=2)
    return values


class MattingDataset(EvalDataset):
    task = "matting"
    images_folder = "original"
    image_patterns = ("*original/*.jpg", "*original/*.png")
    required_roles = ("alpha",)
    split_roles = ("trimap", "alpha")     # the official lists: image, trimap, alpha

    def ground_truth_files(self, image: str) -> dict[str, str]:
        if posixpath.basename(posixpath.dirname(image)) != self.images_folder:
            raise DatasetError(f"{image} is not inside a folder named {self.images_folder}")
        return {"alpha": _folder_sibling(image, "mask"), "trimap": _folder_sibling(image, "trimap")}

    def read_target(self, sample: Sample) -> MattingTarget:
        raw = read_gray(self.source, sample.files["alpha"])
        scale = 65535.0 if raw.dtype == np.uint16 else 255.0
        alpha = raw.astype(np.float32) / np.float32(scale)
        trimap = None
        if "trimap" in sample.files:
            trimap = read_gray(self.source, sample.files["trimap"])
            if trimap.shape != alpha.shape:
                raise DatasetError(f"{sample.files['trimap']} is {trimap.shape} but the alpha is {alpha.shape}")
        return MattingTarget(alpha=alpha, trimap=trimap)


class AIM500(MattingDataset):
    name, title = "aim500", "AIM-500"
    layout_hint = "original/o_ad03d026.jpg with mask/o_ad03d026.png and trimap/o_ad03d026.png"


class P3M500NP(MattingDataset):
    name, title = "p3m500np", "P3M-500-NP"
    images_folder = "original_image"
    image_patterns = ("*original_image/*.jpg", "*original_image/*.png")
    prefer_component = "P3M-500-NP"
    layout_hint = ("validation/P3M-500-NP/original_image/p_bf2fdaa1.jpg with .../mask/p_bf2fdaa1.png and "
                   ".../trimap/p_bf2fdaa1.png")


class AM2k(MattingDataset):
    name, title = "am2k", "AM-2k"
    prefer_component = "validation"
    layout_hint = "validation/original/m_11d1168a.jpg with validation/mask/... and validation/trimap/..."


MATTING_DATASETS = {cls.name: cls for cls in (AIM500, P3M500NP, AM2k)}
