"""Single-task baselines and sweeps (weighting strategies, any grid of recipe values): several trainings of one
recipe, one table."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path

from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.config.recipe import Recipe
from multitask_deeplab.engine.build import check_components, resolve_recipe
from multitask_deeplab.engine.delta_m import recipe_delta_m, write_baselines
from multitask_deeplab.engine.trainer import Trainer
from multitask_deeplab.runtime.files import atomic_write
from multitask_deeplab.weighting import WEIGHTINGS


def single_task_recipe(recipe: Recipe, task: str, output_dir: Path) -> Recipe:
    """The recipe with only ``task`` (same backbone, head, data and schedule) and fixed weighting."""
    best = recipe.train.best_metric if recipe.train.best_metric and recipe.train.best_metric.startswith(f"{task}.") else None
    train = dataclasses.replace(recipe.train, output_dir=str(output_dir), best_metric=best)
    return dataclasses.replace(recipe, tasks={task: recipe.tasks[task]}, train=train, weighting={"type": "fixed"})


def train_baselines(
    recipe: Recipe, *, overwrite: bool = False, resume: bool = False, show_progress: bool = True
) -> dict[str, dict[str, float]]:
    """Trains one single-task model per task and writes ``<output_dir>/baselines/baselines.json``; ``overwrite``
    starts afresh over the runs of an earlier call, ``resume`` continues them (see :func:`check_resumable`).

    Returns:
        ``{task: {metric: value}}``: each model's val metrics at the end of its training.
    """
    folder = Path(recipe.train.output_dir) / "baselines"
    recipes = {task: single_task_recipe(recipe, task, folder / task) for task in recipe.tasks}
    if resume:
        check_resumable(list(recipes.values()))
    baselines = {}
    for task, single in recipes.items():
        print(f"single-task baseline: {task}")
        metrics = Trainer(single, resume="auto" if resume else None, overwrite=overwrite, show_progress=show_progress).fit()
        baselines[task] = {key.removeprefix(f"{task}."): value for key, value in metrics.items()}
    write_baselines(folder / "baselines.json", baselines, split="val")
    print(f"wrote {folder / 'baselines.json'}")
    return baselines


SweepRow = dict[str, float | str | None]


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One training of a sweep.

    Attributes:
        labels: ``{axis: value}`` as written on the command line, e.g. ``{"train.lr": "1e-3", "weighting": "pcgrad"}``.
        recipe: The recipe of this point, writing into its own folder under ``<output_dir>/sweep``.
    """

    labels: dict[str, str]
    recipe: Recipe


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["train.lr=1e-3,2e-3", ...]`` as ``[("train.lr", ["1e-3", "2e-3"]), ...]``; commas inside brackets or quotes
    belong to a value (``model.out_indices=[1,4],[2,4]`` has two)."""
    axes = []
    for item in items:
        key, sep, text = item.partition("=")
        values = _split_top_level(text)
        if not sep or not key or not all(values):
            raise ValueError(f"--grid {item!r}: expected dotted.key=value1,value2,..., e.g. train.lr=1e-3,2e-3")
        if key in (axis for axis, _ in axes):
            raise ValueError(f"--grid names {key} twice; give all its values in one item: {key}=a,b,c")
        axes.append((key, values))
    return axes


def _split_top_level(text: str) -> list[str]:
    values, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += char
    return [*values, current.strip()]


def sweep_points(
    recipe: Recipe, strategies: Sequence[str] | None = None, *, grid: Sequence[str] = (), gradients: str | None = None
) -> list[SweepPoint]:
    """Every combination of the grid's values (the first axis varying slowest), each under every weighting strategy
    when ``strategies`` are given (``weighting`` replaced by ``{type: strategy}``: default arguments; with
    ``gradients``, every gradient-level strategy at that level, labelled ``name@level`` unless it is its default
    level, see :func:`sweep_entry`).

    Each point's recipe is built and checked here, so a bad value fails before anything trains; it writes into
    ``<output_dir>/sweep/<point>``, the point named by its values (``train.lr=1e-3_pcgrad``).

    Raises:
        ValueError: a malformed grid item, or a point whose recipe does not validate (the error names the point).
    """
    axes = parse_grid(grid)
    if strategies and any(key.partition(".")[0] == "weighting" for key, _ in axes):
        raise ValueError("--weightings replaces the whole weighting section, so --grid weighting.* would be lost; use one of them")
    combinations = itertools.product(*[[(key, value) for value in values] for key, values in axes], strategies or [None])
    folder, points, names = Path(recipe.train.output_dir) / "sweep", [], {}
    for *settings, strategy in combinations:
        weighting, row = sweep_entry(strategy, gradients) if strategy is not None else (None, None)
        labels = dict(settings) | ({} if row is None else {"weighting": row})
        shown = " ".join(f"{key}={value}" for key, value in labels.items())
        name = point_name(labels)
        if name in names:
            raise ValueError(f"sweep points {names[name]} and {shown} would share the folder {folder / name}; give values that differ in letters or digits")
        names[name] = shown
        raw = recipe_module.apply_overrides(recipe_module.to_dict(recipe), [f"{key}={value}" for key, value in settings])
        if weighting is not None:
            raw["weighting"] = weighting
        raw["train"]["output_dir"] = str(folder / name)
        try:
            point = recipe_module.from_dict(raw)
            check_components(point)
        except ValueError as error:
            raise ValueError(f"sweep point {shown}: {error}") from error
        points.append(SweepPoint(labels, resolve_recipe(point)))
    return points


def point_name(labels: dict[str, str]) -> str:
    """A point's folder name: ``key=value`` per grid axis and the strategy, joined by ``_`` (other characters ``-``)."""
    parts = [value if key == "weighting" else f"{key}={value}" for key, value in labels.items()]
    return re.sub(r"[^A-Za-z0-9._=+@-]", "-", "_".join(parts))


def sweep_entry(strategy: str, gradients: str | None) -> tuple[dict[str, str], str]:
    """The weighting config and the row name of one sweep entry: a strategy whose default level is ``gradients``
    is its default entry (the same training, so one folder serves both sweeps)."""
    cls = WEIGHTINGS.get(strategy)
    if gradients is None or cls.level != "gradient" or default_level(cls) == gradients:
        return {"type": strategy}, strategy
    return {"type": strategy, "gradients": gradients}, f"{strategy}@{gradients}"


def default_level(cls: type) -> str:
    """The ``gradients`` default of a gradient-level strategy's constructor (its own or the nearest base's)."""
    for klass in cls.__mro__:
        if parameter := inspect.signature(klass.__init__).parameters.get("gradients"):
            return parameter.default
    raise TypeError(f"{cls.__name__} takes no gradients argument")


def level_variants(strategies: Sequence[str], gradients: str) -> tuple[list[str], list[str]]:
    """The strategies a sweep at ``gradients`` trains (``fixed``, the reference, and every gradient-level one that
    has that level) and those it leaves out."""
    kept, left = [], []
    for name in strategies:
        cls = WEIGHTINGS.get(name)
        takes = name == "fixed" or (cls.level == "gradient" and (gradients == "params" or cls.supports_features))
        (kept if takes else left).append(name)
    return kept, left


def sweep(
    recipe: Recipe, points: Sequence[SweepPoint], *, overwrite: bool = False, resume: bool = False, show_progress: bool = True
) -> list[SweepRow]:
    """Trains every point (see :func:`sweep_points`); ``overwrite`` starts afresh over the runs of an earlier sweep,
    ``resume`` continues an interrupted one (see :func:`check_resumable`).

    Returns:
        One row per point: its labels, its val metrics, Δm against ``recipe``'s baselines (None without them) and the
        mean training-step time in seconds.
    """
    if resume:
        check_resumable([point.recipe for point in points])
    rows = []
    for point in points:
        print(f"sweep point: {' '.join(f'{key}={value}' for key, value in point.labels.items())}")
        trainer = Trainer(point.recipe, resume="auto" if resume else None, overwrite=overwrite, show_progress=show_progress)
        metrics = trainer.fit()
        delta = recipe_delta_m(recipe, trainer.tasks, metrics)
        rows.append({**point.labels, **metrics, "delta_m": delta, "seconds_per_step": trainer.seconds_per_step})
    return rows


def check_resumable(recipes: Sequence[Recipe]) -> None:
    """Checks, before a resumed sweep or baselines call trains anything, that every folder already holding a run
    holds one of the same recipe. Resumed, a finished training is read back from its ``last.pt`` (metrics and step
    time) without a step, an interrupted one continues from it, one not begun trains from scratch.

    Raises:
        ValueError: a folder whose ``recipe.yaml`` differs from its point's recipe (naming the keys).
    """
    for recipe in recipes:
        saved = Path(recipe.train.output_dir) / "recipe.yaml"
        if not saved.is_file():
            continue
        old, new = recipe_module.to_dict(recipe_module.load(saved)), recipe_module.to_dict(recipe)
        if changed := recipe_module.differences(old, new, sections={*old, *new}):
            raise ValueError(
                f"--resume: {saved.parent} holds a run of another recipe ({', '.join(changed[:4])}); give the values "
                "it was trained with, or --overwrite to train it afresh"
            )


def format_sweep(rows: list[SweepRow], columns: Sequence[str], labels: Sequence[str] = ("weighting",)) -> str:
    """A markdown table of sweep rows: the label columns, the given metric columns, Δm and time per step.

    When a ``weighting`` column has ``fixed`` among its values, a last column gives each row's time per step relative
    to the ``fixed`` row with the same other labels.
    """
    reference = {}
    if "weighting" in labels:
        others = [label for label in labels if label != "weighting"]
        reference = {tuple(row[k] for k in others): row["seconds_per_step"] for row in rows if row["weighting"] == "fixed"}
    header = [*labels, *columns, "Δm %", "s/step", *(["× fixed"] if reference else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        delta = "n/a" if row["delta_m"] is None else f"{row['delta_m']:+.2f}"
        cells = [*(str(row[label]) for label in labels), *(f"{row[c]:.4f}" for c in columns), delta, f"{row['seconds_per_step']:.3g}"]
        if reference:
            fixed = reference.get(tuple(row[k] for k in labels if k != "weighting"))
            cells.append("n/a" if fixed is None else f"{row['seconds_per_step'] / fixed:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_sweep(folder: Path, rows: list[SweepRow], table: str, name: str = "sweep") -> Path:
    """Writes the table (``<name>.md``) and every row with all its metrics (``<name>.json``); returns the table's path."""
    atomic_write(folder / f"{name}.json", lambda temp: temp.write_text(json.dumps(rows, indent=2) + "\n"))
    atomic_write(folder / f"{name}.md", lambda temp: temp.write_text(table + "\n"))
    return folder / f"{name}.md"
