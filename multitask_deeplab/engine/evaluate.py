"""Evaluation over a whole split, and the picture of predictions saved at each evaluation."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from multitask_deeplab import visualize
from multitask_deeplab.data.loader import to_device
from multitask_deeplab.runtime.precision import autocast
from multitask_deeplab.tasks import TaskKind


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, tasks: Mapping[str, TaskKind], device: torch.device, *, amp: str = "off", channels_last: bool = False
) -> dict[str, float]:
    """Accumulates every task's metrics over the loader (reduced over processes) as ``{"task.metric": value}``."""
    metrics = {name: task.metrics() for name, task in tasks.items()}
    was_training = model.training
    model.eval()
    for batch in loader:
        batch = to_device(batch, device, channels_last)
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
    """Saves one row per image: the image, then each task's prediction next to its ground truth, coloured by its kind.

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
            row.append(task.colorize(outputs[name][i].float().cpu(), reference=target))
            row.append(task.colorize(target, reference=target))
        rows.append(row)
    grid = visualize.make_grid(rows, titles=titles)
    visualize.save_png(grid, path)
    return grid
