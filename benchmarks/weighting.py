"""Weighting strategies: each one's training step on the default recipe, in time and memory, against fixed weights.

Each strategy runs in a fresh process (so peak memory is its own) through the real ``Trainer``, on one fixed batch,
with its default arguments; gradient-level strategies pay one backward pass per task into the shared parameters.
"""

from __future__ import annotations

from typing import Any

from benchmarks.settings import DEFAULT_RECIPE, Settings
from benchmarks.training import add_ratios, measure_step
from multitask_deeplab.weighting import WEIGHTINGS, GradientWeighting


def run_weighting(settings: Settings) -> dict[str, Any]:
    """Step time and peak memory of every registered strategy, and their ratios to ``fixed``."""
    size = settings.weighting_train
    rows = {}
    for name in sorted(WEIGHTINGS.names(), key=lambda strategy: strategy != "fixed"):
        rows[name] = measure_step(DEFAULT_RECIPE, [f"weighting.type={name}"], size, settings)
        rows[name]["level"] = "gradient" if issubclass(WEIGHTINGS.get(name), GradientWeighting) else "loss"
    add_ratios(rows, "fixed")
    return {"recipe": DEFAULT_RECIPE.name, "size": size.size, "batch": size.batch, "strategies": rows}
