"""Depth evaluation sets in the layouts of the Marigold evaluation archives (folder or .tar).

Units, depth caps and evaluation crops are those of the official Edit2Perceive evaluation: every set has a
minimum depth of 1e-3 m; caps NYUv2 10, KITTI 80, ETH3D 99999 (no cap), ScanNet 10, DIODE 80.
"""

from __future__ import annotations

import posixpath

import numpy as np

from ..protocol import DepthTarget
from .base import EvalDataset, Sample, replace_folder, sibling, stem
from .source import DatasetError

MIN_DEPTH = 1e-3


def _png_depth(source, path: str, divisor: float) -> np.ndarray:
    image = source.read_image(path)
    values = np.asarray(image)
    if values.ndim != 2 or values.dtype not in (np.uint16, np.int32, np.uint8):
        raise DatasetError(f"{path} should be a single-channel 16-bit depth PNG, got mode {image.mode}")
    return values.astype(np.float32) / divisor


class DepthDataset(EvalDataset):
    task = "depth"
    max_depth = 80.0
    required_roles = ("depth",)
    split_roles = ("depth",)

    def eval_mask(self, sample: Sample, depth: np.ndarray) -> np.ndarray:
        return np.ones(depth.shape, dtype=bool)

    def prediction_box(self, depth: np.ndarray) -> tuple[int, int, int, int] | None:
        return None

    def read_depth(self, sample: Sample) -> np.ndarray:
        """Abstract hook: metric depth in metres, in the dataset's own file format."""
        raise NotImplementedError(f"{type(self).__name__} must define read_depth (its depth file format)")

    def read_target(self, sample: Sample) -> DepthTarget:
        depth = self.read_depth(sample)
        return DepthTarget(depth=depth, eval_mask=self.eval_mask(sample, depth), min_depth=MIN_DEPTH,
                           max_depth=self.max_depth, prediction_box=self.prediction_box(depth))


class NYUv2Depth(DepthDataset):
    """``test/<scene>/rgb_NNNN.png`` + ``depth_NNNN.png`` (uint16 millimetres); the Eigen crop
    (rows 45:471, columns 41:601) is always applied."""

    name, title = "nyuv2", "NYUv2"
    max_depth = 10.0
    image_patterns = ("*rgb_*.png",)
    prefer_component = "test"
    layout_hint = "test/<scene>/rgb_0001.png with depth_0001.png beside it (nyu_labeled_extracted.tar)"

    def ground_truth_files(self, image: str) -> dict[str, str]:
        name = posixpath.basename(image)
        return {"depth": sibling(image, "depth_" + name[len("rgb_"):])}

    def read_depth(self, sample: Sample) -> np.ndarray:
        return _png_depth(self.source, sample.files["depth"], 1000.0)

    def eval_mask(self, sample: Sample, depth: np.ndarray) -> np.ndarray:
        mask = np.zeros(depth.shape, dtype=bool)
        mask[45:471, 41:601] = True
        return mask


KB_CROP_HEIGHT, KB_CROP_WIDTH = 352, 1216


def kitti_benchmark_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the KITTI benchmark crop: bottom-centred 1216 x 352."""
    if height < KB_CROP_HEIGHT or width < KB_CROP_WIDTH:
        raise DatasetError(f"a KITTI frame of {width}x{height} is smaller than the 1216x352 benchmark crop")
    return height - KB_CROP_HEIGHT, int((width - KB_CROP_WIDTH) / 2), KB_CROP_HEIGHT, KB_CROP_WIDTH


class KITTIDepth(DepthDataset):
    """Eigen test split: ``<date>/<drive>/image_02/data/N.png`` with ground truth
    ``<drive>/proj_depth/groundtruth/image_02/N.png`` (uint16 / 256 m). The input is cropped to the KITTI
    benchmark box; metrics use that box intersected with the Eigen crop of the full frame."""

    name, title = "kitti", "KITTI"
    max_depth = 80.0
    image_patterns = ("*image_02/data/*.png",)
    layout_hint = ("2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png with "
                   "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png")

    def ground_truth_files(self, image: str) -> dict[str, str]:
        parts = image.split("/")
        if len(parts) < 4 or parts[-3:-1] != ["image_02", "data"]:
            raise DatasetError(f"{image} is not of the form <date>/<drive>/image_02/data/<frame>.png")
        drive = parts[-4]
        return {"depth": "/".join(parts[:-5] + [drive, "proj_depth", "groundtruth", "image_02", parts[-1]])}

    def read_image(self, sample: Sample) -> np.ndarray:
        image = super().read_image(sample)
        top, left, height, width = kitti_benchmark_box(*image.shape[:2])
        return image[top:top + height, left:left + width]

    def read_depth(self, sample: Sample) -> np.ndarray:
        return _png_depth(self.source, sample.files["depth"], 256.0)

    def prediction_box(self, depth: np.ndarray) -> tuple[int, int, int, int]:
        return kitti_benchmark_box(*depth.shape)

    def eval_mask(self, sample: Sample, depth: np.ndarray) -> np.ndarray:
        height, width = depth.shape
        top, left, box_h, box_w = kitti_benchmark_box(height, width)
        benchmark = np.zeros((height, width), dtype=bool)
        benchmark[top:top + box_h, left:left + box_w] = True
        eigen = np.zeros((height, width), dtype=bool)
        eigen[int(0.3324324 * height):int(0.91351351 * height), int(0.0359477 * width):int(0.96405229 * width)] = True
        return benchmark & eigen


class ETH3DDepth(DepthDataset):
    """``rgb/<scene>/images/dslr_images/DSC_N.JPG`` with ground truth
    ``depth/<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/DSC_N.JPG``: despite the name a raw
    row-major float32 map at the image size, inf where unknown. The official cap is 99999 m (none)."""

    name, title = "eth3d", "ETH3D"
    max_depth = 99999.0
    image_patterns = ("*rgb/*/images/dslr_images/*",)
    layout_hint = ("rgb/<scene>/images/dslr_images/DSC_6487.JPG with "
                   "depth/<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/DSC_6487.JPG (eth3d.tar)")

    def ground_truth_files(self, image: str) -> dict[str, str]:
        parts = image.split("/")
        if len(parts) < 5 or parts[-5] != "rgb" or parts[-3:-1] != ["images", "dslr_images"]:
            raise DatasetError(f"{image} is not of the form rgb/<scene>/images/dslr_images/<name>")
        scene = parts[-4]
        prefix = parts[:-5]
        return {"depth": "/".join(prefix + ["depth", f"{scene}_dslr_depth", scene, "ground_truth_depth",
                                            "dslr_images", parts[-1]])}

    def read_depth(self, sample: Sample) -> np.ndarray:
        width, height = self.source.image_size(sample.files["image"])
        raw = self.source.read_bytes(sample.files["depth"])
        if len(raw) != width * height * 4:
            raise DatasetError(f"{sample.files['depth']} holds {len(raw)} bytes; a float32 map for the "
                               f"{width}x{height} image needs {width * height * 4}")
        depth = np.frombuffer(raw, dtype="<f4").reshape(height, width).copy()
        depth[~np.isfinite(depth)] = 0.0
        return depth


class ScanNetDepth(DepthDataset):
    """``<scene>/color/N.jpg`` with ``<scene>/depth/N.png`` (uint16 millimetres)."""

    name, title = "scannet", "ScanNet"
    max_depth = 10.0
    image_patterns = ("*color/*.jpg",)
    layout_hint = "scene0406_02/color/000300.jpg with scene0406_02/depth/000300.png"

    def ground_truth_files(self, image: str) -> dict[str, str]:
        return {"depth": posixpath.join(posixpath.dirname(replace_folder(image, "color", "depth")),
                                        stem(image) + ".png")}

    def read_depth(self, sample: Sample) -> np.ndarray:
        return _png_depth(self.source, sample.files["depth"], 1000.0)


class DIODEDepth(DepthDataset):
    """``.../X.png`` with ``X_depth.npy`` (metres, [H, W, 1]) and ``X_depth_mask.npy`` (validity) beside it,
    indoor and outdoor scans together."""

    name, title = "diode", "DIODE"
    max_depth = 80.0
    image_patterns = ("*.png",)
    required_roles = ("depth", "mask")
    split_roles = ("depth", "mask")
    layout_hint = "indoors/scene_00019/scan_00183/X.png with X_depth.npy and X_depth_mask.npy (diode_val.tar)"

    def ground_truth_files(self, image: str) -> dict[str, str]:
        base = image[:-len(".png")]
        return {"depth": base + "_depth.npy", "mask": base + "_depth_mask.npy"}

    def read_depth(self, sample: Sample) -> np.ndarray:
        depth = np.asarray(self.source.read_npy(sample.files["depth"]), dtype=np.float32)
        return depth.reshape(depth.shape[0], depth.shape[1])

    def eval_mask(self, sample: Sample, depth: np.ndarray) -> np.ndarray:
        mask = np.asarray(self.source.read_npy(sample.files["mask"]))
        return mask.reshape(depth.shape) > 0


DEPTH_DATASETS = {cls.name: cls for cls in (NYUv2Depth, KITTIDepth, ETH3DDepth, ScanNetDepth, DIODEDepth)}
