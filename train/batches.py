"""What feeds the loop: the datasets a config names and a loader whose order every process and a resume agree on.

Batches are global: the loader draws ``batch_size x processes`` samples per step from one seeded order and
accelerate hands each process its slice (``split_batches``); each sample carries its index, from which the
objective derives that sample's timestep and noise.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import TrainConfig
from .errors import TrainingError


class IndexedDataset(Dataset):
    """Adds each sample's index, from which the objective derives that sample's timestep and noise."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.dataset[index])
        sample["index"] = index
        return sample


class EpochOrder(Sampler):
    """Sample order of an epoch, identical on every process and after a resume.

    A dataset with ``set_epoch`` (train.data's MixedDataset) orders and mixes itself per epoch and may group
    consecutive positions by source, so it is walked in order; any other dataset gets a permutation seeded by
    (seed, epoch).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.size = len(dataset)
        self.seed = seed
        self.epoch = 0
        self.self_ordering = callable(getattr(dataset, "set_epoch", None))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.self_ordering:
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self.self_ordering:
            return iter(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class CollateWithIndex:
    """The dataset's collate function, with the samples' indices carried through as one tensor."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, samples: list[dict]) -> dict:
        indices = [s.pop("index") for s in samples]
        batch = self.collate_fn(samples)
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        return batch


def build_datasets(config: TrainConfig, global_batch: int):
    """Training and validation datasets from the config's specs (train.data), and its collate function.

    Each global batch is drawn from one dataset (``group_size``), as officially, so sets of different sizes mix.
    """
    from . import data

    if not config.train_data:
        raise TrainingError("train_data is empty: list at least one dataset (format, root, task) in the config")
    train_set = data.build_dataset(config.train_data, resolution=config.resolution, seed=config.seed,
                                   group_size=global_batch)
    val_set = data.build_dataset(config.val_data, resolution=config.resolution, seed=config.seed) \
        if config.val_data else None
    for name, dataset in (("train_data", train_set), ("val_data", val_set)):
        if dataset is not None and dataset.task != config.task:
            raise TrainingError(f"{name} holds {dataset.task} samples but the run's task is {config.task}")
    return train_set, val_set, data.collate


def build_loader(config: TrainConfig, dataset: Dataset, collate_fn, processes: int) -> DataLoader:
    """The global-batch loader over ``dataset`` in :class:`EpochOrder` (not yet prepared by accelerate)."""
    global_batch = config.batch_size * processes
    if len(dataset) < global_batch:
        raise TrainingError(f"the training set has {len(dataset)} samples, fewer than one global batch "
                            f"({config.batch_size} x {processes} processes)")
    return DataLoader(IndexedDataset(dataset), batch_size=global_batch, sampler=EpochOrder(dataset, config.seed),
                      drop_last=True, collate_fn=CollateWithIndex(collate_fn), num_workers=config.num_workers)
