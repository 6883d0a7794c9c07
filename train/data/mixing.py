"""Mixing several sources with fixed ratios, skipping malformed samples, batching, and building from a config.

The order of an epoch is a pure function of (seed, epoch, index): which source position ``index`` draws from,
which of that source's samples it gets, its crop and its trimap. Resuming at a step therefore replays exactly the
samples an uninterrupted run would have seen, in any number of DataLoader workers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataSpecError, SampleError
from .readers import FORMATS, SampleSource
from .targets import Framing, parse_resolution, sample_rng

LOG = logging.getLogger("e2p.train.data")
PLAN_STREAM = 1                  # random streams of sample_rng, so no two uses of one (seed, epoch, index) collide
PERMUTATION_STREAM = 2
ATTEMPT_STREAMS = 4              # attempt k loads with stream 4k and picks its substitute with stream 4k + 3
DEFAULT_MAX_SUBSTITUTES = 32


class MixedDataset(Dataset):
    """Draws from ``sources`` in the ratio ``weights`` (normalised), ``length`` samples per epoch.

    Exact ratios: an epoch's positions are split among the sources by largest remainder and shuffled; each source
    is then walked through its own per-epoch permutation (wrapping around when it is drawn more often than it has
    samples). With ``group_size`` = batch size, every run of ``group_size`` consecutive positions comes from one
    source, as in the official batch sampler (needed when sources have different resolutions).

    A sample whose reader raises :class:`SampleError` is logged once, remembered, and replaced by another sample of
    the same source chosen deterministically; only ``max_substitutes`` failures in a row stop the epoch.
    """

    def __init__(self, sources: list[SampleSource], weights: list[float], seed: int = 0, length: int | None = None,
                 group_size: int = 1, max_substitutes: int = DEFAULT_MAX_SUBSTITUTES, labels: list[str] | None = None):
        if not sources:
            raise DataSpecError("no datasets configured")
        if len(weights) != len(sources):
            raise DataSpecError(f"{len(sources)} datasets but {len(weights)} weights")
        weights = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise DataSpecError(f"weights must be non-negative numbers with a positive sum, got {weights.tolist()}")
        tasks = {source.task for source in sources}
        if len(tasks) != 1:
            raise DataSpecError(f"one training run learns one task; the datasets mix {sorted(tasks)}")
        for source, weight in zip(sources, weights):
            if weight > 0 and len(source) == 0:
                raise DataSpecError(f"{type(source).__name__} at {source.root} is empty but has weight {weight}")
        if group_size < 1:
            raise DataSpecError(f"group_size must be at least 1, got {group_size}")
        sizes = {(source.framing.height, source.framing.width) for source in sources}
        if len(sizes) > 1 and group_size == 1:
            raise DataSpecError(f"the datasets have different resolutions {sorted(sizes)}: set group_size to the "
                                "batch size so each batch comes from one dataset, or use one resolution")
        self.sources = list(sources)
        self.weights = weights / weights.sum()
        self.task = tasks.pop()
        self.seed = int(seed)
        self.length = int(length if length is not None else sum(len(source) for source in sources))
        if self.length < 1:
            raise DataSpecError("an epoch must have at least one sample")
        self.group_size = int(group_size)
        self.max_substitutes = int(max_substitutes)
        self.labels = labels or [f"{type(source).__name__}({source.root})" for source in sources]
        self.epoch = 0
        self.skipped: dict[tuple[int, int], str] = {}
        self._plan_epoch: int | None = None
        self._assignment = np.zeros(0, dtype=np.int64)
        self._rank = np.zeros(0, dtype=np.int64)
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__getitem__`` follows (call before creating each epoch's iterator)."""
        self.epoch = int(epoch)
        for source in self.sources:
            source.set_epoch(epoch)

    def source_counts(self, groups: int) -> np.ndarray:
        """Groups per source: largest-remainder rounding of ``groups * weights`` (sums exactly to ``groups``)."""
        ideal = groups * self.weights
        counts = np.floor(ideal).astype(np.int64)
        order = np.argsort(-(ideal - counts), kind="stable")
        counts[order[: groups - int(counts.sum())]] += 1
        return counts

    def _plan(self) -> None:
        if self._plan_epoch == self.epoch:
            return
        groups = math.ceil(self.length / self.group_size)
        counts = self.source_counts(groups)
        assignment = np.repeat(np.arange(len(self.sources)), counts)
        sample_rng(self.seed, self.epoch, 0, PLAN_STREAM).shuffle(assignment)
        rank = np.zeros(groups, dtype=np.int64)
        for source_id in range(len(self.sources)):
            positions = np.nonzero(assignment == source_id)[0]
            rank[positions] = np.arange(len(positions))
        self._assignment, self._rank = assignment, rank
        self._permutations = {}
        self._plan_epoch = self.epoch

    def _permutation(self, source_id: int, cycle: int) -> np.ndarray:
        key = (source_id, cycle)
        if key not in self._permutations:
            rng = sample_rng(self.seed, self.epoch, source_id * 1_000_003 + cycle, PERMUTATION_STREAM)
            self._permutations[key] = rng.permutation(len(self.sources[source_id]))
        return self._permutations[key]

    def locate(self, index: int) -> tuple[int, int]:
        """Position in the epoch -> (source id, sample index in that source)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} outside an epoch of {self.length} samples")
        self._plan()
        group = index // self.group_size
        source_id = int(self._assignment[group])
        draw = int(self._rank[group]) * self.group_size + index % self.group_size
        size = len(self.sources[source_id])
        return source_id, int(self._permutation(source_id, draw // size)[draw % size])

    def __getitem__(self, index: int) -> dict:
        source_id, local = self.locate(index)
        source = self.sources[source_id]
        failures = []
        for attempt in range(self.max_substitutes + 1):
            if (source_id, local) not in self.skipped:
                try:
                    return source.load(local, sample_rng(self.seed, self.epoch, index, ATTEMPT_STREAMS * attempt))
                except SampleError as error:
                    self.skipped[(source_id, local)] = error.reason
                    LOG.warning("skipping %s from %s: %s", error.name, self.labels[source_id], error.reason)
                    failures.append(str(error))
            substitute = sample_rng(self.seed, self.epoch, index, ATTEMPT_STREAMS * attempt + 3)
            local = int(substitute.integers(len(source)))
        raise RuntimeError(f"{self.max_substitutes + 1} samples of {self.labels[source_id]} in a row could not be "
                           f"read; the dataset is unusable. Recent errors: {failures[-3:]}")


def collate(samples: list[dict]) -> dict:
    """Samples -> batch: tensors stacked on a new first dimension, strings kept as lists."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = set(samples[0])
    for sample in samples[1:]:
        if set(sample) != keys:
            raise ValueError(f"cannot batch samples with different fields ({sorted(keys)} vs {sorted(sample)}): "
                             "one batch must hold one task")
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(value.shape) for value in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack '{key}' of shapes {sorted(shapes)}: give the datasets one resolution "
                                 "or draw each batch from one dataset (group_size = batch size)")
            batch[key] = torch.stack(values)
        else:
            batch[key] = list(values)
    return batch


SPEC_KEYS = {"format", "root", "task", "weight", "ratio", "split", "list", "manifest", "resolution", "framing",
             "depth_scale", "depth_min", "depth_max", "normal_convention", "kitti_crop"}
FORMAT_OPTIONS = {
    "generic": {"split", "manifest", "depth_scale", "depth_min", "depth_max", "normal_convention"},
    "vkitti2": {"split", "list", "kitti_crop"},
}


def build_source(entry: dict, resolution=None, seed: int = 0) -> SampleSource:
    """One dataset entry of the trainer config -> its reader (see :func:`build_dataset` for the fields)."""
    if not isinstance(entry, dict):
        raise DataSpecError(f"a dataset entry must be a mapping, got {entry!r}")
    unknown = set(entry) - SPEC_KEYS
    if unknown:
        raise DataSpecError(f"unknown dataset fields {sorted(unknown)}; allowed: {', '.join(sorted(SPEC_KEYS))}")
    name = str(entry.get("format", "")).lower()
    if name not in FORMATS:
        raise DataSpecError(f"dataset format '{entry.get('format')}' is unknown; choose one of {', '.join(FORMATS)}")
    constructor, tasks = FORMATS[name]
    task = entry.get("task") or (tasks[0] if len(tasks) == 1 else None)
    if task not in tasks:
        raise DataSpecError(f"format '{name}' provides {' / '.join(tasks)}; set 'task' to one of them (got {task!r})")
    size = entry.get("resolution", resolution)
    if size is None:
        raise DataSpecError("no training resolution: set 'resolution' (e.g. 768 or [512, 768]) for the datasets")
    try:
        height, width = parse_resolution(size)
        framing = Framing(height, width, entry.get("framing", "stretch"))
    except ValueError as error:
        raise DataSpecError(str(error)) from error
    if height % 16 or width % 16:
        raise DataSpecError(f"resolution {width}x{height}: both sides must be multiples of 16 (8x VAE, 2x2 patches)")
    root = entry.get("root")
    if root is None and name == "generic" and entry.get("manifest"):
        root = Path(entry["manifest"]).parent
    if root is None:
        raise DataSpecError(f"dataset '{name}' needs 'root', the folder its list paths are relative to")
    options = {"split": entry.get("split", "train")}
    allowed = FORMAT_OPTIONS.get(name, {"split", "list"})
    for key in ("list", "manifest", "depth_scale", "depth_min", "depth_max", "normal_convention", "kitti_crop"):
        if key in entry:
            if key not in allowed:
                raise DataSpecError(f"'{key}' does not apply to format '{name}'")
            options[key] = entry[key]
    if "list" in options:
        options["list_file"] = options.pop("list")
    return constructor(Path(root), framing, task=task, seed=seed, **options)


def build_dataset(spec, resolution=None, seed: int = 0, length: int | None = None, group_size: int = 1,
                  max_substitutes: int = DEFAULT_MAX_SUBSTITUTES) -> MixedDataset:
    """Trainer config -> one :class:`MixedDataset`.

    ``spec`` is a list of entries (or one entry), each a mapping with ``format`` (generic, hypersim, vkitti2,
    interiorverse, sintel, composition1k, distinctions646, am2k, cocomatte, p3m, aim500), ``root``, ``task``
    (when the format offers several), ``weight`` (or ``ratio``; all or none -- none means proportional to size),
    ``split`` (default train), ``list`` (split-list file), ``resolution`` and ``framing`` (stretch, center_crop,
    random_crop), plus format options: generic ``manifest``, ``depth_scale``, ``depth_min``, ``depth_max``,
    ``normal_convention``; vkitti2 ``kitti_crop``.
    """
    entries = [spec] if isinstance(spec, dict) else list(spec or [])
    if not entries:
        raise DataSpecError("no datasets configured")
    weights = [entry.get("weight", entry.get("ratio")) if isinstance(entry, dict) else None for entry in entries]
    if any(weight is None for weight in weights) and not all(weight is None for weight in weights):
        raise DataSpecError("give a weight for every dataset or for none (none = proportional to dataset size)")
    sources = [build_source(entry, resolution, seed=seed) for entry in entries]
    labels = [f"{entry['format']}:{entry.get('root') or entry.get('manifest')}" for entry in entries]
    try:
        weights = [float(len(source)) if weight is None else float(weight) for weight, source in zip(weights, sources)]
    except (TypeError, ValueError) as error:
        raise DataSpecError(f"dataset weights must be numbers ({error})") from error
    return MixedDataset(sources, weights, seed=seed, length=length, group_size=group_size,
                        max_substitutes=max_substitutes, labels=labels)
