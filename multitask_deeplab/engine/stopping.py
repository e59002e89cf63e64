"""Early stopping: end training when a val metric has not improved for a number of evaluations."""

from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
    """Counts the evaluations since ``metric`` last improved by more than ``min_delta``.

    Args:
        metric: The ``"task.metric"`` watched (for messages).
        higher_is_better: Whether a larger value is an improvement.
        patience: Evaluations without improvement after which training stops.
        min_delta: How much a value must beat the best one so far to count as an improvement.
    """

    def __init__(self, metric: str, *, higher_is_better: bool, patience: int, min_delta: float = 0.0) -> None:
        self.metric, self.higher_is_better, self.patience, self.min_delta = metric, higher_is_better, patience, min_delta
        self.best: float | None = None
        self.evaluations_without_improvement = 0

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` evaluations in a row brought no improvement."""
        return self.evaluations_without_improvement >= self.patience

    def update(self, value: float) -> bool:
        """Records one evaluation's value (NaN never improves) and returns :attr:`should_stop`."""
        change = math.nan if self.best is None else (value - self.best if self.higher_is_better else self.best - value)
        if (self.best is None and math.isfinite(value)) or change > self.min_delta:
            self.best, self.evaluations_without_improvement = value, 0
        else:
            self.evaluations_without_improvement += 1
        return self.should_stop

    def describe(self) -> str:
        """A line for the log when training stops."""
        best = "none finite" if self.best is None else f"best {self.best:.4g}"
        return f"val {self.metric} did not improve by more than {self.min_delta:g} in {self.patience} evaluation{'s' * (self.patience != 1)} ({best})"

    def state_dict(self) -> dict[str, Any]:
        """Plain values for the checkpoint."""
        return {"best": self.best, "evaluations_without_improvement": self.evaluations_without_improvement}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved."""
        self.best, self.evaluations_without_improvement = state["best"], state["evaluations_without_improvement"]
