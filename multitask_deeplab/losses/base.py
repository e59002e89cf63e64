"""The loss registry, the base class of dense losses and the checks they share."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from multitask_deeplab.registry import Registry

LOSSES: Registry = Registry("loss")


class DenseLoss(nn.Module):
    """Base class of per-task losses: ``forward(pred, target)`` returns a scalar over valid pixels.

    Subclasses set ``name`` (their registry name, used in messages), ``kind`` (the task kind they fit)
    and ``channels`` (the head output channels they need), or override :meth:`check_channels`.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    channels: ClassVar[int]

    def check_channels(self, out_channels: int) -> None:
        """Raises a ``ValueError`` when a head with ``out_channels`` outputs does not fit this loss."""
        if out_channels != self.channels:
            raise ValueError(
                f"{self.name} needs a head with exactly {self.channels} output channel(s), got {out_channels}; "
                f"use it on a {self.kind} task"
            )


def zero_loss(pred: torch.Tensor) -> torch.Tensor:
    """An exact zero that still depends on ``pred``, for batches without a valid pixel."""
    return pred.sum() * 0.0


def check_same_shape(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raises when ``pred`` and ``target`` differ in shape."""
    if pred.shape != target.shape:
        raise ValueError(
            f"{name} needs pred and target of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
