"""What a dataset's targets are: each batch key described by a task kind, and the check that a recipe's tasks fit them.

A dataset may describe its targets with a ``target_kinds`` attribute, ``{batch key: TaskKind}`` (the built-in datasets
do). Augmentation, ``mtdl data verify`` and the sample sheet then treat every key as its kind says, and a recipe task is
checked against the key it reads before training starts (``num_classes``, ``ignore_index``, the kind itself). For a
dataset without the attribute, the kinds come from the recipe's tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from multitask_deeplab.tasks import DepthTask, EdgesTask, HumanPartsTask, NormalsTask, SaliencyTask, SegmentationTask, TaskKind


def standard_target_kinds(
    keys: Iterable[str], *, num_classes: int | None = None, ignore_index: int = 255, class_names: Sequence[str] | None = None
) -> dict[str, TaskKind]:
    """The kinds of the keys the built-in datasets use: ``seg`` (segmentation, with the given classes), ``depth``,
    ``normals``, ``edges``, ``saliency`` and ``human_parts`` (7 classes)."""
    makers = {
        "seg": lambda: SegmentationTask(num_classes=num_classes, ignore_index=ignore_index, class_names=class_names),
        "depth": DepthTask,
        "normals": NormalsTask,
        "edges": EdgesTask,
        "saliency": SaliencyTask,
        "human_parts": lambda: HumanPartsTask(ignore_index=ignore_index),
    }
    return {key: makers[key]() for key in keys}


def declared_target_kinds(dataset: Dataset) -> dict[str, TaskKind]:
    """The dataset's own description of its targets (empty when it has none)."""
    return dict(getattr(dataset, "target_kinds", None) or {})


def batch_target_kinds(dataset: Dataset, tasks: Mapping[str, TaskKind]) -> dict[str, TaskKind]:
    """The kind of every batch key the tasks read: as the dataset describes it, else as the first task that reads it."""
    declared = declared_target_kinds(dataset)
    kinds: dict[str, TaskKind] = {}
    for task in tasks.values():
        kinds.setdefault(task.target, declared.get(task.target, task))
    return kinds


def check_tasks_fit(dataset: Dataset, tasks: Mapping[str, TaskKind], *, name: str) -> None:
    """Raises a one-line ``ValueError`` when a task reads a key the dataset lacks, or a target of another kind or shape.

    Args:
        dataset: The dataset (its ``target_kinds``, else the keys of its first sample, are compared).
        tasks: The recipe's tasks.
        name: The dataset's registry name, for messages.
    """
    declared = declared_target_kinds(dataset)
    keys: Iterable[Any] = declared or dataset[0].keys()
    for task_name, task in tasks.items():
        if task.target not in keys:
            provided = ", ".join(sorted(k for k in keys if k != "image"))
            raise ValueError(
                f"tasks.{task_name} reads batch key {task.target!r}, which dataset {name!r} does not provide (it has "
                f"{provided}); set tasks.{task_name}.target to one of them"
            )
        if task.target in declared and (reason := task.accepts(declared[task.target])) is not None:
            raise ValueError(f"tasks.{task_name} ({task.describe()}) cannot read {task.target!r}: {reason}")
