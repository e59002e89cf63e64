"""What every metric accumulator shares: fixed-size state summed over batches and processes.

Every accumulator keeps fixed-size sums and counts (never per-batch averages), so the result over a split
does not depend on how it was cut into batches, and ``all_reduce`` sums the state over processes exactly.
Call ``update`` per batch, ``all_reduce`` once after the split (it sums in place: calling it twice double
counts), then ``compute``. A metric with nothing to average (no valid pixel seen) is NaN.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist


class Metrics(ABC):
    """Base class: a dict of state tensors summed over batches and processes.

    Subclasses define ``HIGHER_IS_BETTER`` (every name :meth:`compute` returns, or its prefix for per-class names),
    :meth:`empty_state`, ``update`` and ``compute``. The state lives on the device of the latest update.
    """

    HIGHER_IS_BETTER: ClassVar[dict[str, bool]]
    PREFIXES: ClassVar[dict[str, bool]] = {}
    """Per-class name prefixes (``"iou/"``) and whether higher is better for names that start with them."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor]
        self.reset()

    @abstractmethod
    def empty_state(self) -> dict[str, torch.Tensor]:
        """Zeroed state tensors (on the CPU)."""

    @abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds one batch."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics over everything added since the last :meth:`reset`."""

    def describe(self) -> str:
        """How the metrics are computed, in a few words for the results table (the evaluation protocol); ``""``
        when there is nothing to say beyond the metric names."""
        return ""

    def reset(self) -> None:
        """Forgets everything added so far."""
        self.state = self.empty_state()

    def accumulate(self, **increments: torch.Tensor) -> None:
        """Adds ``increments`` to the state tensors of the same names, moving the state to their device."""
        for name, increment in increments.items():
            self.state[name] = self.state[name].to(increment.device) + increment

    def all_reduce(self) -> None:
        """Sums the state over all processes when ``torch.distributed`` is initialised; a no-op otherwise.

        With the NCCL backend the state is reduced on the current CUDA device, otherwise on the CPU, so a
        process that saw no batch (state still on the CPU) takes part too.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        for name, value in self.state.items():
            reduced = value.to(device)
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            self.state[name] = reduced

    @classmethod
    def higher_is_better(cls, name: str) -> bool:
        """Whether a larger value of metric ``name`` (including per-class names) is better."""
        if name in cls.HIGHER_IS_BETTER:
            return cls.HIGHER_IS_BETTER[name]
        for prefix, higher in cls.PREFIXES.items():
            if name.startswith(prefix):
                return higher
        known = [*cls.HIGHER_IS_BETTER, *(f"{prefix}<class>" for prefix in cls.PREFIXES)]
        raise ValueError(f"{cls.__name__} has no metric {name!r}; its metrics are {', '.join(known)}")


def ratio(numerator: torch.Tensor | float, denominator: torch.Tensor | float) -> float:
    """``numerator / denominator`` as a float, NaN when the denominator is 0."""
    return float(numerator) / float(denominator) if float(denominator) > 0 else math.nan


def parse_thresholds(owner: str, thresholds: int | Sequence[float]) -> list[float]:
    """Thresholds of a metric over thresholds: ``n`` evenly spaced in ``(0, 1)`` (``linspace(1/(n+1), n/(n+1), n)``,
    so 99 gives 0.01 .. 0.99 and 19 gives 0.05 .. 0.95), or the increasing values in ``(0, 1)`` given.

    Args:
        owner: Whose thresholds they are, for messages (e.g. ``"edges metrics"``).
        thresholds: A count or a list of values.
    """
    if isinstance(thresholds, bool) or not isinstance(thresholds, (int, list, tuple)):
        raise ValueError(f"{owner} thresholds must be a count or a list of values in (0, 1), got {thresholds!r}")
    if isinstance(thresholds, int):
        if thresholds < 1:
            raise ValueError(f"{owner} thresholds must be at least 1, got {thresholds}")
        return np.linspace(1.0 / (thresholds + 1), 1.0 - 1.0 / (thresholds + 1), thresholds).tolist()
    values = [float(t) for t in thresholds if not isinstance(t, bool) and isinstance(t, (int, float))]
    if len(values) != len(thresholds) or not values or not all(0 < t < 1 for t in values) or any(
        b <= a for a, b in zip(values, values[1:])
    ):
        raise ValueError(f"{owner} thresholds must be a non-empty increasing list of values in (0, 1), got {list(thresholds)!r}")
    return values
