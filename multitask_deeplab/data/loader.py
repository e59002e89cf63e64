"""Datasets and DataLoaders from a recipe: resumable shuffled shards for training, exact shards for evaluation."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from multitask_deeplab.data.base import DATASETS
from multitask_deeplab.runtime.distributed import DistInfo
from multitask_deeplab.runtime.rng import seed_worker

if TYPE_CHECKING:
    from multitask_deeplab.config.recipe import Recipe


def build_dataset(recipe: Recipe, split: str) -> Dataset:
    """The dataset the recipe's ``data`` section names, for one split (``train``, ``val`` or ``test``)."""
    data = recipe.data
    split_name = {"train": data.train_split, "val": data.val_split, "test": data.test_split}[split]
    dataset = DATASETS.build(data.dataset_cfg, split=split_name)
    if len(dataset) == 0:
        raise ValueError(f"the {split} split ({split_name!r}) of dataset {data.type!r} is empty; check data.{split}_split and the data folder")
    return dataset


class ResumableSampler(Sampler[int]):
    """``DistributedSampler``'s per-epoch shuffled shard that can start partway through an epoch.

    Rank ``r`` of ``N`` takes every ``N``-th index of the epoch's permutation, starting at ``r``, so step ``s`` at
    batch ``B`` on ``N`` processes covers together the same samples as step ``s`` at batch ``N x B`` on one.

    Args:
        dataset: The training set.
        info: This process's rank and the world size.
        seed: Shuffling seed; the permutation of epoch ``e`` depends on ``seed + e`` only.
    """

    def __init__(self, dataset: Dataset, *, info: DistInfo, seed: int) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Selects the epoch's permutation and how many of its first samples were already consumed."""
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: each sample evaluated exactly once over all processes."""

    def __init__(self, length: int, info: DistInfo) -> None:
        self.indices = range(info.rank, length, info.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(
    dataset: Dataset, *, batch_size: int, sampler: Sampler, num_workers: int, train: bool, device: torch.device, seed: int = 0
) -> DataLoader:
    """A DataLoader with seeded, persistent workers and pinned memory on CUDA.

    The loader draws its workers' seeds from its own generator (seeded with ``seed``), never from torch's
    global one: persistent workers start once per process, so drawing from the global generator would shift
    the random numbers of augmentation and dropout after a resume that starts the workers mid-run.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=train,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def to_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Moves a batch to ``device`` (non-blocking from pinned memory)."""
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    if channels_last:
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved
