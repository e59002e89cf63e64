"""Evaluation over a whole split, and the picture of predictions saved at each evaluation."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from multitask_deeplab import visualize
from multitask_deeplab.data.loader import to_device
from multitask_deeplab.metrics.base import Metrics
from multitask_deeplab.runtime.precision import autocast
from multitask_deeplab.tasks import TaskKind

Protocols = Mapping[str, Mapping[str, Any]]
"""``{task: {argument: value}}``: the keyword arguments of each task's ``metrics()`` (a recipe's ``eval.protocol``)."""


def build_metrics(tasks: Mapping[str, TaskKind], protocols: Protocols | None = None) -> dict[str, Metrics]:
    """A fresh metrics accumulator per task, under its evaluation protocol (a bad value raises naming its key)."""
    metrics = {}
    for name, task in tasks.items():
        protocol = (protocols or {}).get(name, {})
        try:
            metrics[name] = task.metrics(**protocol)
        except ValueError as error:
            raise ValueError(f"eval.protocol.{name}: {error}" if protocol else str(error)) from error
    return metrics


def protocol_lines(tasks: Mapping[str, TaskKind], protocols: Protocols | None = None) -> list[str]:
    """One line per task whose metrics describe how they are computed, for printing beside the results."""
    return [f"  {name}: {text}" for name, metrics in build_metrics(tasks, protocols).items() if (text := metrics.describe())]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    tasks: Mapping[str, TaskKind],
    device: torch.device,
    *,
    amp: str = "off",
    channels_last: bool = False,
    protocols: Protocols | None = None,
    predict: Callable[[torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """Accumulates every task's metrics over the loader (reduced over processes) as ``{"task.metric": value}``.

    Args:
        model: The model (its outputs are the predictions, unless ``predict`` is given).
        loader: The split.
        tasks: The tasks.
        device: Where the batches go.
        amp: The autocast precision of the model's forward pass.
        channels_last: Feed images in channels-last layout.
        protocols: Each task's metrics arguments (``eval.protocol``).
        predict: Maps a batch of images to ``{task: prediction}`` instead of the model's plain forward pass, e.g. a
            :class:`~multitask_deeplab.inference.predictor.Predictor`'s ``predict_batch`` (flipping, scales, window).
    """
    metrics = build_metrics(tasks, protocols)
    was_training = model.training
    model.eval()
    for batch in loader:
        batch = to_device(batch, device, channels_last)
        if predict is not None:
            outputs = predict(batch["image"])
        else:
            with autocast(device, amp):
                outputs = model(batch["image"])
        for name, task in tasks.items():
            metrics[name].update(outputs[name].float(), task.prepare_target(batch[task.target]))
    model.train(was_training)
    results = {}
    for name, accumulator in metrics.items():
        accumulator.all_reduce()
        results.update({f"{name}.{key}": value for key, value in accumulator.compute().items()})
    return results


def higher_is_better(tasks: Mapping[str, TaskKind], metric: str) -> bool:
    """Whether a larger value of ``"task.metric"`` is better."""
    task, _, name = metric.partition(".")
    return tasks[task].higher_is_better(name)


@torch.no_grad()
def save_prediction_grid(
    model: nn.Module, batch: dict[str, torch.Tensor], tasks: Mapping[str, TaskKind], path: str | os.PathLike, *, amp: str = "off"
) -> np.ndarray:
    """Saves one row per image: the image, then each task's prediction next to its ground truth, coloured by its kind,
    each picture with its kind's scale key (depth: colours scaled to the truth's 95th percentile, shared by both
    pictures), and a last row of legends (segmentation: the class colours).

    Returns:
        The picture, ``H x W x 3`` uint8.
    """
    device = batch["image"].device
    was_training = model.training
    model.eval()
    with autocast(device, amp):
        outputs = model(batch["image"])
    model.train(was_training)
    titles = ["image", *(f"{name} {what}" for name in tasks for what in ("predicted", "true"))]
    rows = []
    for i in range(batch["image"].shape[0]):
        row = [visualize.image_to_uint8(batch["image"][i].float().cpu())]
        for name, task in tasks.items():
            target = task.prepare_target(batch[task.target][i : i + 1])[0].cpu()
            for value in (outputs[name][i].float().cpu(), target):
                picture = task.colorize(value, reference=target)
                row.append(visualize.with_key(picture, task.scale_key(value, reference=target, width=picture.shape[1])))
        rows.append(row)
    width = rows[0][0].shape[1]
    legends = [None, *(legend for task in tasks.values() for legend in (task.legend(2 * width), None))]
    grid = visualize.picture_sheet(rows, titles, legends)
    visualize.save_png(grid, path)
    return grid
