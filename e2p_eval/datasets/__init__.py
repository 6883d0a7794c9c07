"""Readers for the public evaluation sets, by task and name."""

from __future__ import annotations

from .base import EvalDataset, Sample
from .depth import DEPTH_DATASETS
from .matting import MATTING_DATASETS
from .normals import NORMAL_DATASETS
from .source import DatasetError, DatasetSource

DATASETS = {"depth": DEPTH_DATASETS, "normal": NORMAL_DATASETS, "matting": MATTING_DATASETS}

# Column order of the paper's tables (datasets not listed follow in registry order).
PAPER_ORDER = {
    "depth": ("nyuv2", "kitti", "eth3d", "scannet", "diode"),
    "normal": ("nyuv2", "scannet", "ibims", "sintel", "diode", "oasis"),
    "matting": ("aim500", "p3m500np", "am2k"),
}


def dataset_class(task: str, name: str) -> type[EvalDataset]:
    if task not in DATASETS:
        raise DatasetError(f"unknown task '{task}'; use one of {', '.join(DATASETS)}")
    if name not in DATASETS[task]:
        raise DatasetError(f"unknown {task} dataset '{name}'; use one of {', '.join(DATASETS[task])}")
    return DATASETS[task][name]


def open_dataset(task: str, name: str, root: str, split_file: str | None = None,
                 limit: int | None = None) -> EvalDataset:
    return dataset_class(task, name)(root, split_file=split_file, limit=limit)


__all__ = ["DATASETS", "PAPER_ORDER", "DatasetError", "DatasetSource", "EvalDataset", "Sample", "dataset_class",
           "open_dataset"]
