"""Stage 2: compare saved predictions with the ground truth.

Writes, into the metrics folder: one ``<dataset>.csv`` with a row per image, ``summary.json`` with the dataset
means, ``summary.md`` (the paper's table layout plus every metric) and ``summary.png`` (bars of the headline
metrics).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from e2p_core.atomic_files import atomic_write, atomic_write_text
from e2p_core.tasks import task_spec

from . import protocol as protocols, report
from .datasets import EvalDataset, open_dataset
from .predict import prediction_path

@dataclass
class DatasetResult:
    name: str
    title: str
    summary: dict[str, float]
    missing_predictions: int
    csv_path: str


def evaluate_dataset(task: str, dataset: EvalDataset, out_dir: str, protocol: protocols.Protocol,
                     alignment: str | None, csv_path: str, show_progress: bool = True) -> DatasetResult:
    """Per-image metrics of one dataset into ``csv_path``; dataset-level numbers returned."""
    aggregate = protocols.DatasetAggregate(task, protocol)
    columns = ["image", "status"] + list(protocols.TASK_METRICS[task]) + list(protocols.EXTRA_COLUMNS[task])
    missing = 0
    with atomic_write(csv_path, suffix=".csv") as temporary, \
            open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for sample in tqdm(dataset.samples, desc=f"evaluate {dataset.name}", unit="img", disable=not show_progress):
            path = prediction_path(out_dir, dataset.name, sample.key)
            if not os.path.isfile(path):
                missing += 1
                writer.writerow({"image": sample.key, "status": "no prediction"})
                continue
            prediction = np.load(path)
            row = protocols.IMAGE_ROWS[task](prediction, dataset.read_target(sample), aggregate, alignment)
            row["image"] = sample.key
            writer.writerow(row)
    summary = aggregate.result()
    summary["missing_predictions"] = missing
    return DatasetResult(dataset.name, dataset.title, summary, missing, csv_path)


def metrics_folder_name(protocol: protocols.Protocol) -> str:
    safe = "".join(c if c.isalnum() or c in "-_=+." else "_" for c in protocol.name)
    return "metrics-" + safe


def evaluate_run(out_dir: str, protocol: protocols.Protocol, task: str, datasets: list[tuple[str, str, str | None]],
                 label: str, checkpoint_name: str | None, metrics_dir: str | None = None,
                 limit: int | None = None, show_progress: bool = True) -> dict:
    """Evaluate the predictions under ``out_dir`` for ``datasets`` ``(name, root, split)``; returns the summary
    that is also written to ``summary.json``."""
    alignment = protocols.resolve_alignment(protocol, checkpoint_name) if task_spec(task).affine_invariant else None
    if alignment is not None and protocol.depth_align == protocols.ALIGN_FROM_CHECKPOINT:
        print(f"depth alignment space (official rule, from the checkpoint path '{checkpoint_name}'): {alignment}")
    metrics_dir = metrics_dir or os.path.join(out_dir, metrics_folder_name(protocol))
    results = []
    for name, root, split in datasets:
        dataset = open_dataset(task, name, root, split, limit=limit)
        result = evaluate_dataset(task, dataset, out_dir, protocol, alignment,
                                  os.path.join(metrics_dir, f"{name}.csv"), show_progress)
        if result.missing_predictions:
            print(f"{name}: {result.missing_predictions} of {len(dataset)} images have no prediction yet "
                  "(run the predict stage again to finish them)")
        results.append(result)
    summary = {
        "label": label,
        "task": task,
        "protocol": asdict(protocol),
        "depth_alignment": alignment,
        "checkpoint_name": checkpoint_name,
        "datasets": {r.name: {"title": r.title, **r.summary} for r in results},
    }
    atomic_write_text(os.path.join(metrics_dir, "summary.json"), json.dumps(summary, indent=2, allow_nan=True) + "\n")
    markdown = report.summary_markdown([summary])
    atomic_write_text(os.path.join(metrics_dir, "summary.md"), markdown)
    plot_message = report.save_plot([summary], os.path.join(metrics_dir, "summary.png"))
    print(markdown)
    print(plot_message)
    return summary
