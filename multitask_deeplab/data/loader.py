"""Datasets and DataLoaders from a recipe: resumable shuffled shards for training, exact shards for evaluation."""

from __future__ import annotations

import atexit
import itertools
import multiprocessing.util  # noqa: F401  (registers its exit hook now, so the one below runs before it)
import sys
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate
from tqdm import tqdm

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


SKIPPED_KEY = "skipped_samples"
"""Batch key of the messages of the samples that failed to load and were left out of the batch."""


class BadSample:
    """Stands in for a sample whose files could not be loaded; ``message`` names the file and the problem."""

    def __init__(self, message: str) -> None:
        self.message = message


class SkipBadSamples(Dataset):
    """A dataset whose samples that raise ``ValueError`` (the datasets' error for a bad file) become a
    :class:`BadSample`, which :func:`collate_skipping` leaves out of the batch."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except ValueError as error:
            return BadSample(str(error))

    def __getitems__(self, indices: list[int]) -> list[Any]:
        many = getattr(self.dataset, "__getitems__", None)
        if many is not None:
            try:
                return many(indices)
            except ValueError:
                pass  # one bad sample: load them one by one to find it
        return [self[index] for index in indices]


def collate_skipping(samples: Sequence[Any]) -> dict[str, Any]:
    """``default_collate`` of the samples that loaded; each bad one is warned about (naming its file), and their
    messages are kept under :data:`SKIPPED_KEY` so the trainer can count them.

    Raises:
        ValueError: when no sample of the batch loaded (the data or the recipe is wrong throughout, e.g. a wrong
            ``num_classes``), or when the samples differ in size.
    """
    good = [sample for sample in samples if not isinstance(sample, BadSample)]
    bad = [sample.message for sample in samples if isinstance(sample, BadSample)]
    if not good:
        raise ValueError(f"no sample of a batch could be loaded, e.g. {bad[0]}; `mtdl data verify RECIPE` lists every problem")
    for key in good[0]:
        sizes = {tuple(sample[key].shape) for sample in good if isinstance(sample[key], torch.Tensor)}
        if len(sizes) > 1:
            shown = " and ".join("x".join(map(str, size)) for size in sorted(sizes)[:2])
            raise ValueError(
                f"the samples of a batch differ in {key} size ({shown}), so they cannot be stacked: set size: [h, w] in "
                "the data section to resize on load (`mtdl data verify RECIPE` names the files)"
            )
    for message in bad:
        tqdm.write(f"warning: skipped a sample that failed to load: {message}", file=sys.stderr)
    return {**default_collate(good), SKIPPED_KEY: bad}


_LOADERS: weakref.WeakSet[DataLoader] = weakref.WeakSet()


def build_loader(
    dataset: Dataset, *, batch_size: int, sampler: Sampler, num_workers: int, train: bool, device: torch.device, seed: int = 0
) -> DataLoader:
    """A DataLoader with seeded, persistent workers and pinned memory on CUDA that skips samples which fail to load
    (see :func:`collate_skipping`).

    The loader draws its workers' seeds from its own generator (seeded with ``seed``), never from torch's
    global one: persistent workers start once per process, so drawing from the global generator would shift
    the random numbers of augmentation and dropout after a resume that starts the workers mid-run.

    Its workers ignore SIGINT and SIGTERM (see :func:`~multitask_deeplab.runtime.rng.seed_worker`), so they must be
    ended explicitly: call :func:`shutdown_workers` when done; loaders still running at interpreter exit are shut
    down then.
    """
    loader = DataLoader(
        SkipBadSamples(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skipping,
        drop_last=train,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
    _LOADERS.add(loader)
    return loader


def shutdown_workers(loader: DataLoader) -> None:
    """Ends the worker processes of a loader with persistent workers (a no-op for others); it can be iterated again."""
    iterator = getattr(loader, "_iterator", None)  # DataLoader keeps the iterator of persistent workers here
    if iterator is not None:
        loader._iterator = None
        iterator._shutdown_workers()


@atexit.register
def _shutdown_all() -> None:
    """At exit, before multiprocessing terminates (and waits for) its children, which ignore SIGTERM."""
    for loader in list(_LOADERS):
        shutdown_workers(loader)


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """Moves a batch's tensors to ``device`` (non-blocking from pinned memory); other values stay as they are."""
    moved = {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    if channels_last:
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved
