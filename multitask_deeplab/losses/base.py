"""The loss registry, the base class of dense losses and the checks they share."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from multitask_deeplab.registry import Registry
from multitask_deeplab.tasks import TASKS, TaskKind


class DenseLoss(nn.Module):
    """Base class of per-task losses: ``forward(pred, target)`` returns a scalar over valid pixels.

    ``pred`` is the task's prediction (after the task kind's activation), ``target`` the batch's target as the task
    kind prepares it. A loss written for particular task kinds lists their classes in ``kinds`` (any kind when empty);
    :meth:`check_task` refuses other tasks before training, and a loss may override it to check more (e.g. one class
    weight per class). Before training starts every loss is also tried once on a random valid target.
    """

    kinds: ClassVar[tuple[type[TaskKind], ...]] = ()

    @property
    def name(self) -> str:
        """The name the loss is registered under (its class name when it is not registered)."""
        return getattr(type(self), "registered_name", type(self).__name__)

    def check_task(self, task: TaskKind) -> None:
        """Raises a ``ValueError`` when this loss cannot serve ``task``."""
        if self.kinds and not isinstance(task, self.kinds):
            fits = " or ".join(TASKS.name_of(kind) for kind in self.kinds)
            raise ValueError(f"{self.name!r} is a loss for {fits} tasks, not for {task.describe()}; pick a loss of that kind")


LOSSES: Registry[DenseLoss] = Registry("loss", DenseLoss)
"""Every registered loss, by the name recipes give as ``loss: {type: ...}``."""


def zero_loss(pred: torch.Tensor) -> torch.Tensor:
    """An exact zero that still depends on ``pred``, for batches without a valid pixel."""
    return pred.sum() * 0.0


def check_same_shape(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raises when ``pred`` and ``target`` differ in shape."""
    if pred.shape != target.shape:
        raise ValueError(
            f"{name} needs pred and target of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
