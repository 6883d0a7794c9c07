"""Pseudo-labelling a dataset with depth, normals or alpha on one or many accelerators.

``python -m e2p_eval.label --task depth --input FOLDER|LIST.txt|VIDEO --out OUT --model ... --vae ...
--conditioning ...`` on one process, or the same under ``accelerate launch`` for several GPUs and machines
(usage: docs/labelling.md).

Every item runs through the evaluation's predictor (``e2p_core.comfyui.api.E2PPredictor``, the nodes' path) and is saved
as the 16-bit PNG or float EXR that *Save Float Image* writes, under ``OUT/labels/``. Why it can be killed and
restarted at any time:

- the item list is fixed in ``OUT/items.jsonl`` on the first run; the main process hands the items still to do
  round-robin to the processes of this run, so no two processes ever own the same item;
- a label is published by an atomic rename (``e2p_core.atomic_files.atomic_write``), then recorded in the process's own
  ``OUT/shards/shard-R-of-N.jsonl`` (one fsynced line per item); only recorded items count as done;
- at the end the main process merges the shards into ``OUT/manifest.jsonl`` (one record per item) and
  ``OUT/summary.json`` (counts, items/s).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import sys
import time
from collections import deque
from dataclasses import asdict
from typing import Iterator

import numpy as np
import torch

from e2p_core import float_images, representations
from e2p_core.atomic_files import (TEMPORARY_PREFIX, atomic_write_bytes, atomic_write_text, explain_os_error,
                                   fsync_folder)
from e2p_core.tasks import TASK_NAMES, task_spec

from .cli import add_model_args, prediction_settings
from .label_inputs import Item, UnreadableItem, list_items, read_items
from .predict import check_prediction, ensure_comfyui, load_predictor, model_input, predictor_resize_mode

RUN_FILE = "label_run.json"
ITEMS_FILE = "items.jsonl"
LABELS = "labels"
SHARDS = "shards"
MANIFEST_FILE = "manifest.jsonl"
SUMMARY_FILE = "summary.json"
OK, FAILED = "ok", "failed"
# How long the processes wait for each other at the end. Shards differ by at most a few items, but a process can be
# slowed by its images or its disk; one that is still late after this fails the merge, not the labels (rerun to
# merge).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
PROGRESS_INTERVAL_S = 60.0
WRITE_QUEUE = 4                       # labels waiting to be encoded and written while the model runs on
# Different images failing in the pipeline with the very same message point at a setting (a processing resolution
# the pipeline refuses, say), not at the images: the run stops with that message instead of failing every item.
SAME_FAILURE_STREAK = 3


def label_content(task: str, normal_convention: str) -> str:
    """The Save Float Image content each task's label is saved as."""
    return task_spec(task).saved_content(normal_convention)


def label_map(prediction: np.ndarray, task: str, normal_convention: str) -> tuple[np.ndarray, str]:
    """Predictor output -> (map to save, channel description), exactly what the task node's output gives in
    Save Float Image: depth as its three equal channels (stored gray), alpha as a MASK, normals as (n + 1) / 2."""
    spec = task_spec(task)
    if spec.uses_normal_convention:
        native = torch.from_numpy(prediction)
        prediction = representations.normals_to_rgb(representations.convert_normals(native, normal_convention)).numpy()
    return prediction, spec.float_channels


# ---------------------------------------------------------------------------------------------------------------
# The output folder
# ---------------------------------------------------------------------------------------------------------------

def label_path(out_dir: str, item: Item, file_format: str) -> str:
    return os.path.join(out_dir, LABELS, *f"{item.key}.{float_images.FILE_FORMATS[file_format]}".split("/"))


def shard_path(out_dir: str, process: int, processes: int) -> str:
    return os.path.join(out_dir, SHARDS, f"shard-{process:05d}-of-{processes:05d}.jsonl")


def read_jsonl(path: str) -> Iterator[dict]:
    """Records of a JSONL file, one at a time; a last line cut short by a kill is ignored."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n"):
                yield json.loads(line)


def read_items_file(out_dir: str, indices: set[int] | None = None) -> list[Item]:
    """The run's items (only those in ``indices`` when given: a process keeps its share, not millions)."""
    return [Item.from_json(record) for record in read_jsonl(os.path.join(out_dir, ITEMS_FILE))
            if indices is None or record["index"] in indices]


def latest_records(out_dir: str) -> dict[int, dict]:
    """The deciding record of every item in all shard files: a success over a failure, else the latest attempt."""
    best: dict[int, dict] = {}
    folder = os.path.join(out_dir, SHARDS)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for name in names:
        if not name.endswith(".jsonl"):
            continue
        for record in read_jsonl(os.path.join(folder, name)):
            current = best.get(record["index"])
            rank = (record["status"] == OK, record["time"])
            if current is None or rank > (current["status"] == OK, current["time"]):
                best[record["index"]] = record
    return best


def prepare_run(out_dir: str, run: dict, retry_failed: bool) -> tuple[list[int], int]:
    """On the main process, before any process writes: fix or check the run's settings and item list, remove
    temporary files a killed run left. Returns the indices still to label and the number of items."""
    run_file = os.path.join(out_dir, RUN_FILE)
    records = latest_records(out_dir)
    recorded = None
    if os.path.isfile(run_file):
        with open(run_file, encoding="utf-8") as handle:
            recorded = json.load(handle)
    if recorded is not None and recorded != run and records:
        changed = ", ".join(f"{key}: {recorded.get(key)!r} -> {run.get(key)!r}"
                            for key in sorted(set(recorded) | set(run)) if recorded.get(key) != run.get(key))
        raise ValueError(f"{out_dir} holds labels made with other settings ({changed}); use another --out "
                         "folder, or the same settings to resume")
    if recorded == run:
        items = read_items_file(out_dir)
    else:      # a first run, or earlier ones that recorded nothing (a mistyped model path, say): start afresh
        items = list_items(run["input"])
        atomic_write_text(os.path.join(out_dir, ITEMS_FILE),
                          "".join(json.dumps(item.to_json()) + "\n" for item in items))
        atomic_write_text(run_file, json.dumps(run, indent=2) + "\n")
    pending = [item.index for item in items if item.index not in records
               or (retry_failed and records[item.index]["status"] == FAILED)]
    _remove_partial_files({os.path.dirname(label_path(out_dir, items[i], run["file_format"])) for i in pending})
    return pending, len(items)


def _remove_partial_files(folders: set[str]) -> None:
    """Temporary files of labels a kill interrupted; they can only be in the folders of unfinished items."""
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        with os.scandir(folder) as entries:
            stale = [entry.path for entry in entries if entry.name.startswith(TEMPORARY_PREFIX) and entry.is_file()]
        for path in stale:
            os.remove(path)


class ShardWriter:
    """This process's record file: one line per item, flushed to disk before the next item counts as done."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _cut_partial_last_line(path)
        self._handle = open(path, "a", encoding="utf-8")
        fsync_folder(os.path.dirname(path))

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def _cut_partial_last_line(path: str) -> None:
    """A kill during an append can leave half a line; drop it so the next record starts on its own line."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep != size:
            handle.truncate(keep)


def merge_manifest(out_dir: str, item_count: int, this_run: dict) -> dict:
    """manifest.jsonl (the deciding record of every labelled or failed item, in item order) and summary.json."""
    records = latest_records(out_dir)
    lines = [json.dumps(records[index]) + "\n" for index in sorted(records)]
    atomic_write_text(os.path.join(out_dir, MANIFEST_FILE), "".join(lines))
    statuses = [record["status"] for record in records.values()]
    summary = {"items": item_count, "labelled": statuses.count(OK), "failed": statuses.count(FAILED),
               "not_done": item_count - len(records), "this_run": this_run}
    atomic_write_text(os.path.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Labelling
# ---------------------------------------------------------------------------------------------------------------

def file_metadata(data: np.ndarray, channels: str, item: Item, run: dict) -> dict[str, str]:
    """Save Float Image's metadata, plus where the label came from and how it was made (file names only, so the
    same labels made in another folder or on another machine are the same bytes)."""
    metadata = float_images.float_file_metadata(data, label_content(run["task"], run["normal_convention"]), channels,
                                               run["file_format"])
    settings = {key: value for key, value in run.items() if key != "input"}
    for key in ("model", "lora", "vae", "conditioning"):
        settings[key] = os.path.basename(settings[key]) if settings[key] else None
    metadata["e2p.label_source"] = item.name
    metadata["e2p.label_settings"] = json.dumps(settings, sort_keys=True)
    return metadata


def predict_item(predictor, image: np.ndarray, settings) -> np.ndarray:
    """One image through the predictor the evaluation uses (the nodes' path); matting runs without hints, as the
    node does with nothing clicked (the salient object)."""
    prediction = predictor.predict(model_input(image, settings), hints=None,
                                   processing_resolution=settings.processing_resolution,
                                   resize_mode=predictor_resize_mode(settings), steps=settings.steps,
                                   seed=settings.seed)
    return check_prediction(prediction, settings.task)


def write_label(out_dir: str, item: Item, data: np.ndarray, channels: str, run: dict) -> dict:
    path = label_path(out_dir, item, run["file_format"])
    metadata = file_metadata(data, channels, item, run)
    atomic_write_bytes(path, float_images.encode_float_file(data, run["file_format"], metadata))
    return {"output": os.path.relpath(path, out_dir).replace(os.sep, "/"), "height": int(data.shape[0]),
            "width": int(data.shape[1]), "value_min": float(metadata[float_images.META_VALUE_MIN]),
            "value_max": float(metadata[float_images.META_VALUE_MAX])}


def label_items(predictor, items: list[Item], out_dir: str, run: dict, settings, shard: ShardWriter,
                process: int, processes: int, read_threads: int) -> dict:
    """Label ``items`` (this process's share); unreadable inputs and inputs the pipeline refuses are recorded as
    failed with their reason. Encoding and writing run in a background thread while the next item predicts."""
    started = time.monotonic()
    counts = {OK: 0, FAILED: 0}
    last_report = started

    def finish(item: Item, record: dict, data=None, channels=None) -> None:
        if data is not None:
            try:
                record.update(write_label(out_dir, item, data, channels, run))
            except ValueError as error:   # e.g. a NaN map cannot be a 16-bit PNG
                record = {**record, "status": FAILED, "stage": "write", "reason": str(error)}
        shard.append(record)
        counts[record["status"]] += 1

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
        waiting: deque = deque()
        held: list[tuple[Item, dict]] = []    # the current run of predict failures with one and the same reason

        def submit(item: Item, record: dict, data=None, channels=None) -> None:
            waiting.append(writer.submit(finish, item, record, data, channels))
            while len(waiting) > WRITE_QUEUE or (waiting and waiting[0].done()):
                waiting.popleft().result()

        def release_held() -> None:
            for held_item, held_record in held:
                submit(held_item, held_record)
            held.clear()

        for item, image in read_items(items, read_threads):
            item_started = time.monotonic()
            if item_started - last_report >= PROGRESS_INTERVAL_S:
                done = counts[OK] + counts[FAILED]
                print(f"[process {process + 1}/{processes}] {done}/{len(items)} items, "
                      f"{done / (item_started - started):.2f} items/s, {counts[FAILED]} failed", flush=True)
                last_report = item_started
            record = {"index": item.index, "name": item.name, "process": process}
            if isinstance(image, UnreadableItem):
                record.update(status=FAILED, stage="read", reason=str(image), seconds=0.0, time=time.time())
                submit(item, record)
                continue
            try:
                prediction = predict_item(predictor, image, settings)
            except ValueError as error:      # the pipeline's refusals: too large, degenerate image
                record.update(status=FAILED, stage="predict", reason=str(error),
                              seconds=round(time.monotonic() - item_started, 4), time=time.time())
                if held and held[0][1]["reason"] != record["reason"]:
                    release_held()
                held.append((item, record))
                if len(held) == SAME_FAILURE_STREAK:
                    raise ValueError(f"{len(held)} images in a row failed with the same error, so it is a setting "
                                     f"rather than the images: {record['reason']}. Fix it and run again; the labels "
                                     "made so far are kept and these images were not recorded as failed") from None
                continue
            release_held()
            data, channels = label_map(prediction, run["task"], run["normal_convention"])
            record.update(status=OK, seconds=round(time.monotonic() - item_started, 4), time=time.time())
            submit(item, record, data, channels)
        release_held()
        while waiting:
            waiting.popleft().result()
    return {"process": process, "labelled": counts[OK], "failed": counts[FAILED],
            "seconds": round(time.monotonic() - started, 3)}


def run_record(args, settings) -> dict:
    """Everything that decides what the labels are: a resumed run must match it exactly."""
    return {"input": os.path.abspath(os.path.expanduser(args.input)), "file_format": args.format,
            "normal_convention": args.normal_convention, **asdict(settings)}


def run_labelling(args, predictor=None) -> dict | None:
    """The whole run on this process; returns the summary on the main process. ``predictor`` replaces loading
    the model (tests)."""
    try:
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list, gather_object
    except ImportError:
        raise ValueError("labelling shards its work with Hugging Face accelerate, which is not installed here: "
                         "pip install accelerate (train/requirements.txt pins the tested version)") from None

    matting_hints = "empty" if task_spec(args.task).needs_hint else "none"    # the node with nothing clicked
    settings = prediction_settings(argparse.Namespace(**{**vars(args), "matting_hints": matting_hints}))
    run = run_record(args, settings)
    state = PartialState(cpu=args.cpu or not torch.cuda.is_available(), timeout=COLLECTIVE_TIMEOUT)
    process, processes = state.process_index, state.num_processes
    problem = pending = item_count = None
    if state.is_main_process:
        try:
            pending, item_count = prepare_run(args.out, run, args.retry_failed)
        except ValueError as error:
            problem = str(error)
        except OSError as error:       # an unusable --out: every process stops with the message, none waits
            problem = explain_os_error(error)
    problem, pending, item_count = broadcast_object_list([problem, pending, item_count])
    if problem is not None:
        raise ValueError(problem)
    mine = read_items_file(args.out, set(pending[process::processes]))
    if state.is_main_process:
        print(f"{item_count} items, {item_count - len(pending)} already done, {len(pending)} to label on "
              f"{processes} process(es)", flush=True)
    stats = {"process": process, "labelled": 0, "failed": 0, "seconds": 0.0}
    if mine:
        if predictor is None:
            ensure_comfyui(args.comfyui, args.cpu or not torch.cuda.is_available())
            predictor = load_predictor(settings)
        shard = ShardWriter(shard_path(args.out, process, processes))
        try:
            stats = label_items(predictor, mine, args.out, run, settings, shard, process, processes,
                                args.read_threads)
        finally:
            shard.close()
    stats["device"] = str(state.device)
    everyone = gather_object([stats])
    summary = None
    if state.is_main_process:
        done = sum(s["labelled"] + s["failed"] for s in everyone)
        wall = max(s["seconds"] for s in everyone)
        this_run = {"processes": processes, "labelled": sum(s["labelled"] for s in everyone),
                    "failed": sum(s["failed"] for s in everyone), "seconds": wall,
                    "items_per_second": round(done / wall, 4) if wall > 0 else None, "per_process": everyone}
        summary = merge_manifest(args.out, item_count, this_run)
        rate = f"{this_run['items_per_second']:.3f} items/s" if wall > 0 else "nothing to do"
        print(f"this run: {done} items ({this_run['failed']} failed) in {wall:.1f} s on {processes} process(es): "
              f"{rate} (model loading not counted)\n"
              f"all: {summary['labelled']} labelled, {summary['failed']} failed, {summary['not_done']} not done, "
              f"of {summary['items']}; manifest {os.path.join(args.out, MANIFEST_FILE)}", flush=True)
    state.destroy_process_group()
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m e2p_eval.label",
        description="Label a folder, a file list or a video with depth, normals or alpha mattes, on one process or "
                    "many (accelerate launch); resumable.")
    parser.add_argument("--task", required=True, choices=TASK_NAMES)
    parser.add_argument("--input", required=True,
                        help="a folder of images (recursive), a video file (every frame), or a text file with one "
                             "image path per line (relative to the list's folder)")
    parser.add_argument("--out", required=True, help="output folder: labels/, items.jsonl, shards/, manifest.jsonl, "
                                                     "summary.json; run again with the same arguments to resume")
    add_model_args(parser)
    parser.add_argument("--resize", default="aspect", choices=("aspect", "reference"),
                        help="the nodes' resize_mode: aspect keeps the aspect ratio, reference stretches to a square "
                             "as the official code; labels always come back at the input size")
    parser.add_argument("--format", default="png16", choices=list(float_images.FILE_FORMATS),
                        help="png16: 16-bit PNG (the maps lie in [0, 1]: 0 -> 0, 1 -> 65535); exr32: float32 EXR")
    parser.add_argument("--normal-convention", default="controlnet_bae",
                        choices=list(representations.NORMAL_CONVENTIONS),
                        help="normal task: axes of the saved normals, as the E2P Normal node's convention")
    parser.add_argument("--retry-failed", action="store_true",
                        help="label again the items an earlier run recorded as failed")
    parser.add_argument("--read-threads", type=int, default=4,
                        help="threads reading and decoding images ahead of the model (per process)")
    return parser


def main(argv: list[str] | None = None, predictor=None) -> int:
    args = build_parser().parse_args(argv)
    if args.read_threads < 1:
        print("error: --read-threads must be at least 1", file=sys.stderr)
        return 2
    try:
        run_labelling(args, predictor)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {explain_os_error(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
