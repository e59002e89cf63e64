"""Weighting strategies: each one's training step on the default recipe, in time and memory, against fixed weights.

Each strategy runs in a fresh process (so peak memory is its own) through the real ``Trainer``, on one fixed batch,
with its default arguments; gradient-level strategies pay one backward pass per task into the shared parameters.
"""

from __future__ import annotations

from typing import Any

from benchmarks.measure import MiB, in_fresh_process
from benchmarks.settings import DEFAULT_RECIPE, Settings
from benchmarks.training import base_overrides, train_steps
from multitask_deeplab.weighting import WEIGHTINGS, GradientWeighting


def run_weighting(settings: Settings) -> dict[str, Any]:
    """Step time and peak memory of every registered strategy, and their ratios to ``fixed``."""
    size = settings.weighting_train
    rows = {}
    for name in sorted(WEIGHTINGS.names(), key=lambda strategy: strategy != "fixed"):
        row = in_fresh_process(
            train_steps, str(DEFAULT_RECIPE), [*base_overrides(size, settings), f"weighting.type={name}"], False,
            size, settings.threads, device=settings.device,
        )
        row["level"] = "gradient" if issubclass(WEIGHTINGS.get(name), GradientWeighting) else "loss"
        row["peak_mib"] = row.pop("peak_bytes") / MiB
        row["allocated_peak_mib"] = row.pop("allocated_peak_bytes") / MiB
        rows[name] = row
    fixed = rows["fixed"]
    for row in rows.values():
        row["time_ratio"] = row["median_s"] / fixed["median_s"]
        row["memory_ratio"] = row["peak_mib"] / fixed["peak_mib"]
    return {"recipe": DEFAULT_RECIPE.name, "size": size.size, "batch": size.batch, "strategies": rows}
