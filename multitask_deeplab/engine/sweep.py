"""Single-task baselines and weighting-strategy sweeps: several trainings of one recipe, one table."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from multitask_deeplab.config.recipe import Recipe
from multitask_deeplab.engine.delta_m import recipe_delta_m, write_baselines
from multitask_deeplab.engine.trainer import Trainer
from multitask_deeplab.runtime.files import atomic_write
from multitask_deeplab.weighting import WEIGHTINGS


def single_task_recipe(recipe: Recipe, task: str, output_dir: Path) -> Recipe:
    """The recipe with only ``task`` (same backbone, head, data and schedule) and fixed weighting."""
    best = recipe.train.best_metric if recipe.train.best_metric and recipe.train.best_metric.startswith(f"{task}.") else None
    train = dataclasses.replace(recipe.train, output_dir=str(output_dir), best_metric=best)
    return dataclasses.replace(recipe, tasks={task: recipe.tasks[task]}, train=train, weighting={"type": "fixed"})


def train_baselines(recipe: Recipe, *, overwrite: bool = False, show_progress: bool = True) -> dict[str, dict[str, float]]:
    """Trains one single-task model per task and writes ``<output_dir>/baselines/baselines.json``.

    ``overwrite`` starts afresh over the runs of an earlier call (see :class:`Trainer`).

    Returns:
        ``{task: {metric: value}}``: each model's val metrics at the end of its training.
    """
    folder = Path(recipe.train.output_dir) / "baselines"
    baselines = {}
    for task in recipe.tasks:
        print(f"single-task baseline: {task}")
        metrics = Trainer(single_task_recipe(recipe, task, folder / task), overwrite=overwrite, show_progress=show_progress).fit()
        baselines[task] = {key.removeprefix(f"{task}."): value for key, value in metrics.items()}
    write_baselines(folder / "baselines.json", baselines, split="val")
    print(f"wrote {folder / 'baselines.json'}")
    return baselines


def sweep(
    recipe: Recipe, strategies: Sequence[str], *, gradients: str | None = None, overwrite: bool = False, show_progress: bool = True
) -> list[dict[str, float | str | None]]:
    """Trains the recipe once per weighting strategy (default arguments) into ``<output_dir>/sweep/<row>``.

    Args:
        recipe: The recipe (its ``weighting`` is replaced).
        strategies: Registered names.
        gradients: "params" or "features" for every gradient-level strategy (rows ``name@features``), or None for
            each one's default; loss-level strategies train as they are.
        overwrite: Start afresh over the runs of an earlier sweep (see :class:`Trainer`).
        show_progress: Show the trainer's progress bars.

    Returns:
        One row per strategy: its val metrics, Δm against the recipe's baselines (None without them) and
        the mean training-step time in seconds.
    """
    folder = Path(recipe.train.output_dir) / "sweep"
    rows = []
    for strategy in strategies:
        weighting, row = sweep_entry(strategy, gradients)
        print(f"weighting strategy: {row}")
        train = dataclasses.replace(recipe.train, output_dir=str(folder / row))
        trainer = Trainer(dataclasses.replace(recipe, weighting=weighting, train=train), overwrite=overwrite, show_progress=show_progress)
        metrics = trainer.fit()
        rows.append({"weighting": row, **metrics, "delta_m": recipe_delta_m(recipe, trainer.tasks, metrics), "seconds_per_step": trainer.seconds_per_step})
    return rows


def sweep_entry(strategy: str, gradients: str | None) -> tuple[dict[str, str], str]:
    """The weighting config and the row name of one sweep entry."""
    if gradients is None or WEIGHTINGS.get(strategy).level != "gradient":
        return {"type": strategy}, strategy
    return {"type": strategy, "gradients": gradients}, f"{strategy}@{gradients}"


def level_variants(strategies: Sequence[str], gradients: str) -> tuple[list[str], list[str]]:
    """The strategies a sweep at ``gradients`` trains (``fixed``, the reference, and every gradient-level one that
    has that level) and those it leaves out."""
    kept, left = [], []
    for name in strategies:
        cls = WEIGHTINGS.get(name)
        takes = name == "fixed" or (cls.level == "gradient" and (gradients == "params" or cls.supports_features))
        (kept if takes else left).append(name)
    return kept, left


def format_sweep(rows: list[dict[str, float | str | None]], columns: Sequence[str]) -> str:
    """A markdown table of sweep rows over the given metric columns, plus Δm and time per step.

    When ``fixed`` is among the rows, a last column gives each strategy's time per step relative to it.
    """
    reference = next((row["seconds_per_step"] for row in rows if row["weighting"] == "fixed"), None)
    header = ["weighting", *columns, "Δm %", "s/step", *(["× fixed"] if reference else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        delta = "n/a" if row["delta_m"] is None else f"{row['delta_m']:+.2f}"
        cells = [str(row["weighting"]), *(f"{row[c]:.4f}" for c in columns), delta, f"{row['seconds_per_step']:.3f}"]
        if reference:
            cells.append(f"{row['seconds_per_step'] / reference:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_sweep(folder: Path, rows: list[dict[str, float | str | None]], table: str, name: str = "sweep") -> Path:
    """Writes the table (``<name>.md``) and every row with all its metrics (``<name>.json``); returns the table's path."""
    atomic_write(folder / f"{name}.json", lambda temp: temp.write_text(json.dumps(rows, indent=2) + "\n"))
    atomic_write(folder / f"{name}.md", lambda temp: temp.write_text(table + "\n"))
    return folder / f"{name}.md"
