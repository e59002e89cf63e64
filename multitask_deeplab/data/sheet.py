"""A picture of a few samples of a dataset: the image and each target, coloured by its kind."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from torch.utils.data import Dataset

from multitask_deeplab import visualize
from multitask_deeplab.tasks import TaskKind


def save_sample_sheet(dataset: Dataset, path: str | os.PathLike, kinds: Mapping[str, TaskKind], indices: Iterable[int] = range(4)) -> Path:
    """Saves one row per sample: the image, then every target of ``kinds`` the samples hold.

    Args:
        dataset: A dataset returning sample dicts.
        path: PNG file to write.
        kinds: The kind of each target key (see :func:`~multitask_deeplab.data.targets.batch_target_kinds`).
        indices: Samples to show.
    """
    samples = [dataset[i] for i in indices]
    if not samples:
        raise ValueError("indices is empty: give at least one sample index")
    keys = [key for key in kinds if key in samples[0]]
    rows = [
        [visualize.image_to_uint8(sample["image"]), *(kinds[key].colorize(sample[key], reference=sample[key]) for key in keys)]
        for sample in samples
    ]
    return visualize.save_png(visualize.make_grid(rows, titles=["image", *keys]), path)
