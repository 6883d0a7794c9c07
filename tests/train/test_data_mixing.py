"""MixedDataset: exact ratios, order a pure function of (seed, epoch, index), per-batch sources, collate."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from train.data import DataSpecError, MixedDataset, SampleError, SampleSource, build_dataset, collate
from train.data.readers import Record
from train.data.synthetic import write_dataset
from train.data.targets import Framing


class CountingSource(SampleSource):
    """In-memory source: sample ``i`` is a tiny depth-like dict named '<label>/<i>'; listed indices fail."""

    tasks = ("depth",)

    def __init__(self, root, label: str, size: int, broken=(), resolution=(16, 16), task="depth"):
        super().__init__(root, task, Framing(*resolution))
        self.label = label
        self.broken = set(broken)
        self.records = [Record(f"{label}/{i}", {}) for i in range(size)]

    def decode(self, record, rng):
        index = int(record.name.split("/")[1])
        if index in self.broken:
            raise SampleError(record.name, "unreadable test sample")
        height, width = self.framing.height, self.framing.width
        return {"image": torch.full((3, height, width), float(index)), "target": torch.zeros(3, height, width),
                "valid": torch.ones(1, height, width, dtype=torch.bool), "crop": torch.tensor(rng.integers(1000)),
                "task": self.task, "name": record.name}


def names(dataset) -> list[str]:
    return [dataset[i]["name"] for i in range(len(dataset))]


def make(tmp_path, weights=(0.9, 0.1), sizes=(50, 30), **options) -> MixedDataset:
    sources = [CountingSource(tmp_path, f"s{i}", size) for i, size in enumerate(sizes)]
    return MixedDataset(sources, list(weights), **options)


def test_ratios_are_exact_per_epoch(tmp_path):
    dataset = make(tmp_path, length=1000, seed=1)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        counts = Counter(name.split("/")[0] for name in names(dataset))
        assert counts == {"s0": 900, "s1": 100}
    assert list(make(tmp_path, (0.5, 0.45, 0.05), (10, 10, 10), length=7).source_counts(7)) == [4, 3, 0]


def test_order_depends_only_on_seed_epoch_index(tmp_path):
    first, again = make(tmp_path, seed=4), make(tmp_path, seed=4)
    first.set_epoch(2)
    again.set_epoch(2)
    assert names(first) == names(again)
    assert [first[i]["crop"] for i in (5, 9)] == [again[i]["crop"] for i in (5, 9)]
    order_epoch_2 = names(first)
    first.set_epoch(3)
    assert names(first) != order_epoch_2
    assert names(make(tmp_path, seed=5)) != names(make(tmp_path, seed=4))
    resumed = make(tmp_path, seed=4)
    resumed.set_epoch(2)
    assert [resumed[i]["name"] for i in range(40, 80)] == order_epoch_2[40:80]     # random access = resume


def test_each_sample_once_per_pass_and_wraps_when_oversampled(tmp_path):
    dataset = make(tmp_path, weights=(0.5, 0.5), sizes=(40, 10), length=80, seed=0)
    counts = Counter(names(dataset))
    assert all(counts[f"s0/{i}"] == 1 for i in range(40))
    assert all(counts[f"s1/{i}"] == 4 for i in range(10))                          # 40 draws from 10 samples


def test_default_length_and_size_proportional_weights(tmp_path):
    for name, count in (("a", 2), ("b", 3)):
        write_dataset(tmp_path / name, "sintel", count, 32, 32, supersample=1)
    dataset = build_dataset([{"format": "sintel", "root": str(tmp_path / "a")},
                             {"format": "sintel", "root": str(tmp_path / "b")}], resolution=32)
    assert len(dataset) == 5 and np.allclose(dataset.weights, [0.4, 0.6]) and dataset.task == "normal"
    assert sorted(names(dataset)) == sorted(f"alley_1/frame_{i:04d}_img.png" for i in (1, 2, 1, 2, 3))


def test_group_size_draws_each_batch_from_one_source(tmp_path):
    sources = [CountingSource(tmp_path, "a", 20, resolution=(16, 16)), CountingSource(tmp_path, "b", 20,
                                                                                       resolution=(32, 16))]
    with pytest.raises(DataSpecError, match="group_size"):
        MixedDataset(sources, [1, 1])
    dataset = MixedDataset(sources, [1, 1], group_size=4, seed=2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 10
    for batch in batches:
        assert len({name.split("/")[0] for name in batch["name"]}) == 1


def test_broken_samples_are_substituted_from_the_same_source(tmp_path, caplog):
    sources = [CountingSource(tmp_path, "good", 20), CountingSource(tmp_path, "bad", 20, broken=range(0, 20, 2))]
    dataset = MixedDataset(sources, [0.5, 0.5], seed=3)
    caplog.set_level("WARNING", logger="e2p.train.data")
    for epoch in range(2):
        dataset.set_epoch(epoch)
        drawn = names(dataset)
        assert len(drawn) == 40
        assert all(int(name.split("/")[1]) % 2 == 1 for name in drawn if name.startswith("bad/"))
        assert Counter(name.split("/")[0] for name in drawn) == {"good": 20, "bad": 20}
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == len(set(warned)) == len(dataset.skipped) == 10


def test_weights_and_tasks_are_validated(tmp_path):
    source = CountingSource(tmp_path, "a", 5)
    with pytest.raises(DataSpecError, match="weights"):
        MixedDataset([source], [0])
    with pytest.raises(DataSpecError, match="2 weights"):
        MixedDataset([source], [1, 1])
    with pytest.raises(DataSpecError, match="one task"):
        normal = CountingSource(tmp_path, "n", 5)
        normal.task = "normal"
        MixedDataset([source, normal], [1, 1])
    with pytest.raises(IndexError):
        MixedDataset([source], [1])[5]
    with pytest.raises(DataSpecError, match="every dataset or for none"):
        build_dataset([{"format": "sintel", "root": str(tmp_path), "weight": 1},
                       {"format": "sintel", "root": str(tmp_path)}], resolution=16)


def test_collate_stacks_tensors_and_lists_strings(tmp_path):
    source = CountingSource(tmp_path, "a", 3)
    batch = collate([source[0], source[1], source[2]])
    assert batch["image"].shape == (3, 3, 16, 16) and batch["valid"].dtype == torch.bool
    assert batch["name"] == ["a/0", "a/1", "a/2"] and batch["task"] == ["depth"] * 3
    assert torch.equal(batch["image"][:, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    other = source[0]
    del other["crop"]
    with pytest.raises(ValueError, match="different fields"):
        collate([source[0], other])
    large = CountingSource(tmp_path, "b", 1, resolution=(32, 32))[0]
    with pytest.raises(ValueError, match="shapes"):
        collate([source[0], large])
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_worker_processes_see_the_same_epoch(tmp_path):
    def epoch_batches(dataset, workers, epoch):
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=collate, num_workers=workers)
        return [(batch["name"], batch["crop"].tolist()) for batch in loader]

    dataset = make(tmp_path, seed=9)
    in_process = epoch_batches(dataset, 0, 1)
    assert epoch_batches(dataset, 2, 1) == in_process
    assert epoch_batches(dataset, 2, 2) != in_process
