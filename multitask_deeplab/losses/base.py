"""The loss registry, the base class of dense losses and the checks they share."""

from __future__ import annotations

import math
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


def check_number(
    name: str,
    arg: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """Returns ``value`` as a float after checking it is a finite number in ``[low, high]``.

    Args:
        name: The loss name, for the message.
        arg: The argument name, for the message.
        value: The value to check (booleans are refused, as YAML reads ``on``/``no`` as booleans).
        low: Smallest allowed value, or ``None``.
        high: Largest allowed value, or ``None``.
        low_open: Whether ``low`` itself is excluded.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} {arg} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lower = "-inf" if low is None else f"{low}"
        upper = "inf" if high is None else f"{high}"
        raise ValueError(
            f"{name} {arg} must lie in {'(' if low_open else '['}{lower}, {upper}], got {value!r}; "
            "pick a value in that range"
        )
    return float(value)
