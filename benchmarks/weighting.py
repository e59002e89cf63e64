"""Weighting strategies: each one's training step on the default recipe, in time and memory, against fixed weights.

Each strategy runs in a fresh process (so peak memory is its own) through the real ``Trainer``, on one fixed batch,
with its default arguments; gradient-level strategies pay one backward pass per task into the shared parameters.
Every gradient-level strategy that has a representation-level variant also runs with the other ``gradients``
setting (``features``: one backbone backward of the combined feature gradient; ``params`` for MGDA and GradDrop,
whose default is the features).
"""

from __future__ import annotations

from typing import Any

from benchmarks.settings import DEFAULT_RECIPE, Settings
from benchmarks.training import add_ratios, measure_step
from multitask_deeplab.weighting import WEIGHTINGS

QUICK_LEVEL_VARIANTS = ("mgda", "pcgrad")
"""With ``--quick``, only these get their other level (one each way), to show that both paths run."""


def variants(quick: bool = False) -> dict[str, list[str]]:
    """Row name -> recipe overrides: every strategy as it comes, then the other level of each gradient-level one."""
    rows = {name: [f"weighting.type={name}"] for name in sorted(WEIGHTINGS.names(), key=lambda strategy: strategy != "fixed")}
    for name in QUICK_LEVEL_VARIANTS if quick else WEIGHTINGS.names():
        strategy = WEIGHTINGS.build({"type": name}, task_names=["seg", "depth"])
        if strategy.level == "gradient" and strategy.supports_features:
            other = "params" if strategy.gradients == "features" else "features"
            rows[f"{name} (gradients: {other})"] = [f"weighting.type={name}", f"weighting.gradients={other}"]
    return rows


def run_weighting(settings: Settings) -> dict[str, Any]:
    """Step time and peak memory of every registered strategy (and level variant), and their ratios to ``fixed``."""
    size = settings.weighting_train
    rows = {}
    for name, overrides in variants(settings.quick).items():
        rows[name] = measure_step(DEFAULT_RECIPE, overrides, size, settings)
        rows[name]["level"] = WEIGHTINGS.get(overrides[0].split("=", 1)[1]).level
    add_ratios(rows, "fixed")
    return {"recipe": DEFAULT_RECIPE.name, "size": size.size, "batch": size.batch, "strategies": rows}
