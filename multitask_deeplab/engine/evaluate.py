"""Evaluation over a whole split, and the picture of predictions saved at each evaluation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from multitask_deeplab import visualize
from multitask_deeplab.data.loader import to_device
from multitask_deeplab.metrics import build_metrics
from multitask_deeplab.runtime.precision import autocast
from multitask_deeplab.tasks import task_kind


def task_metrics(tasks: Mapping[str, Any]) -> dict[str, Any]:
    """One metric accumulator per task."""
    return {
        name: build_metrics(task.kind, num_classes=task.num_classes, ignore_index=task.ignore_index, class_names=task.class_names)
        if task.kind == "segmentation"
        else build_metrics(task.kind)
        for name, task in tasks.items()
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, tasks: Mapping[str, Any], device: torch.device, *, amp: str = "off", channels_last: bool = False
) -> dict[str, float]:
    """Accumulates every task's metrics over the loader (reduced over processes) as ``{"task.metric": value}``."""
    metrics = task_metrics(tasks)
    was_training = model.training
    model.eval()
    for batch in loader:
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp):
            outputs = model(batch["image"])
        for name, task in tasks.items():
            metrics[name].update(outputs[name].float(), batch[task_kind(task.kind).target_key])
    model.train(was_training)
    results = {}
    for name, accumulator in metrics.items():
        accumulator.all_reduce()
        results.update({f"{name}.{key}": value for key, value in accumulator.compute().items()})
    return results


def higher_is_better(tasks: Mapping[str, Any], metric: str) -> bool:
    """Whether a larger value of ``"task.metric"`` is better."""
    task, _, name = metric.partition(".")
    return task_metrics({task: tasks[task]})[task].higher_is_better(name)


def _colour(kind: str, value: torch.Tensor, task: Any, vmax: float | None) -> Any:
    if kind == "segmentation":
        labels = value.argmax(0) if value.dim() == 3 else value
        return visualize.colorize_segmentation(labels, task.num_classes, task.ignore_index)
    if kind == "depth":
        return visualize.colorize_depth(value[0], vmax=vmax)
    return visualize.colorize_normals(value)


@torch.no_grad()
def save_prediction_grid(
    model: nn.Module, batch: dict[str, torch.Tensor], tasks: Mapping[str, Any], path: str | os.PathLike, *, amp: str = "off"
) -> None:
    """One row per image: the image, then each task's prediction next to its ground truth, coloured."""
    device = batch["image"].device
    was_training = model.training
    model.eval()
    with autocast(device, amp):
        outputs = model(batch["image"])
    model.train(was_training)
    rows, titles = [], ["image"]
    for name in tasks:
        titles += [f"{name} predicted", f"{name} true"]
    for i in range(batch["image"].shape[0]):
        row = [visualize.image_to_uint8(batch["image"][i].float().cpu())]
        for name, task in tasks.items():
            target = batch[task_kind(task.kind).target_key][i].cpu()
            vmax = float(target[target > 0].quantile(0.95)) if task.kind == "depth" and (target > 0).any() else None
            row.append(_colour(task.kind, outputs[name][i].float().cpu(), task, vmax))
            row.append(_colour(task.kind, target, task, vmax))
        rows.append(row)
    visualize.save_png(visualize.make_grid(rows, titles=titles), path)
