"""Δm: the average relative change of a multi-task model's metrics against single-task baselines.

Δm = (1/T) Σ_t (1/M_t) Σ_m (−1)^{l_m} (M_mt − M_bt) / M_bt × 100 %, where l_m = 1 when a lower value of metric m
is better (Maninis et al. 2019; Vandenhende et al. 2021). Positive is better. Two protocols:

- ``"task"``: average each task's metrics first, then the tasks (the formula above);
- ``"metric"``: one flat average over every (task, metric) pair, as LibMTL reports it.

Which metrics count is each task kind's choice (``delta_m_metrics``: those the multi-task literature — MTAN, LibMTL,
Nash-MTL — puts into Δm), or the recipe's ``eval.delta_m_metrics``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from multitask_deeplab.config.recipe import Recipe
from multitask_deeplab.engine.evaluate import higher_is_better
from multitask_deeplab.runtime.files import atomic_write
from multitask_deeplab.tasks import TaskKind


def delta_m(
    metrics: Mapping[str, float],
    baselines: Mapping[str, Mapping[str, float]],
    selected: Mapping[str, list[str]],
    higher_is_better: Callable[[str], bool],
    *,
    protocol: str = "task",
) -> float:
    """Δm in percent.

    Args:
        metrics: The multi-task model's ``{"task.metric": value}``.
        baselines: ``{task: {metric: value}}`` of the single-task models.
        selected: ``{task: [metric, ...]}``: which metrics count.
        higher_is_better: Whether a larger ``"task.metric"`` is better.
        protocol: ``"task"`` or ``"metric"`` (see the module docstring).
    """
    per_task: list[list[float]] = []
    for task, names in selected.items():
        if task not in baselines:
            raise ValueError(f"no single-task baseline for task {task!r}; run `mtdl baselines RECIPE` or give eval.baselines")
        changes = []
        for name in names:
            key = f"{task}.{name}"
            if key not in metrics or name not in baselines[task]:
                raise ValueError(f"Δm needs {key} in both the model's metrics and the baseline; check eval.delta_m_metrics")
            base = baselines[task][name]
            if base == 0:
                raise ValueError(f"baseline {key} is 0, so its relative change is undefined; leave it out of eval.delta_m_metrics")
            sign = 1.0 if higher_is_better(key) else -1.0
            changes.append(sign * (metrics[key] - base) / abs(base) * 100.0)
        per_task.append(changes)
    if protocol == "task":
        return sum(sum(c) / len(c) for c in per_task) / len(per_task)
    if protocol == "metric":
        flat = [c for changes in per_task for c in changes]
        return sum(flat) / len(flat)
    raise ValueError(f"unknown Δm protocol {protocol!r}: use 'task' or 'metric'")


def read_baselines(source: str | os.PathLike | Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Baselines from a ``baselines.json`` written by ``mtdl baselines``, or given inline."""
    if isinstance(source, Mapping):
        return {task: dict(values) for task, values in source.items()}
    path = Path(source)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read baselines file {path}: {error}; run `mtdl baselines RECIPE` first") from error
    return {task: dict(values) for task, values in data["baselines"].items()}


def write_baselines(path: Path, baselines: Mapping[str, Mapping[str, float]], *, split: str) -> None:
    """Writes ``{"split": ..., "baselines": {task: {metric: value}}}``."""
    atomic_write(path, lambda temp: temp.write_text(json.dumps({"split": split, "baselines": baselines}, indent=2)))


def baselines_for(recipe: Recipe) -> dict[str, dict[str, float]] | None:
    """The recipe's baselines: ``eval.baselines``, else ``<output_dir>/baselines/baselines.json`` if it exists."""
    source = recipe.eval.baselines
    if source is None:
        default = Path(recipe.train.output_dir) / "baselines" / "baselines.json"
        if not default.is_file():
            return None
        source = default
    return read_baselines(source)


def recipe_delta_m(recipe: Recipe, tasks: Mapping[str, TaskKind], metrics: Mapping[str, float]) -> float | None:
    """Δm of ``metrics`` against the recipe's baselines, or None when it has none (or is single-task).

    Each task counts the metrics ``eval.delta_m_metrics`` names for it, by default its kind's ``delta_m_metrics``.
    """
    baselines = baselines_for(recipe)
    if baselines is None or len(tasks) < 2:
        return None
    selected = recipe.eval.delta_m_metrics or {name: list(task.delta_m_metrics) for name, task in tasks.items()}
    return delta_m(metrics, baselines, selected, lambda key: higher_is_better(tasks, key), protocol=recipe.eval.delta_m)
