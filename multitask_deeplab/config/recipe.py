"""Recipes: typed dataclasses filled from strict YAML, plus dotted command-line overrides.

A recipe is read with a safe YAML loader that refuses duplicate keys and tags and reads ``1e-3`` as a float,
merged over the recipes its ``base:`` names (:mod:`~multitask_deeplab.config.layers`), then checked key by key
against the dataclasses below: unknown keys, wrong types and out-of-range values raise a one-line
:class:`RecipeError` naming the dotted key. Adding a setting is one line in a dataclass; ``ge``/``gt``/``le``/``lt``
in :func:`_opt` bound numbers, and a section's ``_check`` method checks fields against each other.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from multitask_deeplab.config.layers import merge_bases
from multitask_deeplab.config.validation import RecipeError, did_you_mean
from multitask_deeplab.config.yaml_io import Dumper, OverrideLoader, parse

__all__ = [
    "DataConfig", "EarlyStopConfig", "EmaConfig", "EvalConfig", "ModelConfig", "Recipe", "RecipeError", "TaskConfig", "TrainConfig",
    "apply_overrides", "differences", "dump", "from_dict", "load", "loads", "to_dict",
]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
MAX_RECIPE_BYTES = 2**20
"""Largest recipe file read (a recipe takes a few KB): a bigger one is refused before it is parsed."""


def _opt(default: Any = MISSING, *, factory: Any = None, **meta: Any) -> Any:
    """A dataclass field with checks in its metadata: ``ge``/``gt``/``le``/``lt`` bounds, ``spec`` (an open
    mapping that needs a ``type`` key) or ``extra`` (collects the section's other keys, written flat in YAML)."""
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The shared backbone, an optional trunk shared by the heads, and input normalisation.

    ``pretrained`` is false, true (timm's default weights), ``hf-hub:<org>/<name>`` (a Hub repo's weights, from the
    local cache when it has them), a weights file or a folder holding ``model.safetensors`` (see
    :class:`~multitask_deeplab.models.backbone.TimmBackbone`).

    ``backbone_args`` are further keyword arguments of ``timm.create_model``, e.g. ``{feature_location: ""}`` for
    HRNet's raw branch outputs instead of its classification neck's.

    ``shared_trunk`` is null, or the arguments of a :class:`~multitask_deeplab.models.heads.SharedTrunk` (``channels``,
    ``rates``, ``separable``, ``dropout``, ``in_index``): one ASPP run once for every task, whose output the heads
    read as the last feature level (give them ``trunk: light``).
    """

    backbone: str = "resnet18"
    backbone_args: dict[str, Any] = _opt(factory=dict)
    output_stride: Literal[8, 16, 32] = 16
    pretrained: bool | str = False
    in_chans: int = _opt(3, ge=1)
    out_indices: list[int] | None = None
    shared_trunk: dict[str, Any] | None = None
    init_from: str | None = None
    mean: list[float] = _opt(factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = _opt(factory=lambda: [0.229, 0.224, 0.225])

    def _check(self, path: str) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.in_chans:
                raise RecipeError(
                    f"{path}.{name}: has {len(values)} values but {path}.in_chans is {self.in_chans}; "
                    "give one value per input channel"
                )
        if min(self.std) <= 0:
            raise RecipeError(f"{path}.std: every value must be > 0, got {self.std}")
        if isinstance(self.pretrained, str) and self.pretrained.removeprefix("hf-hub:").strip() in ("", "."):
            raise RecipeError(
                f"{path}.pretrained: expected true, false, hf-hub:<org>/<name> (e.g. hf-hub:timm/resnet50.a1_in1k), a "
                f"weights file (.safetensors/.pth) or a folder holding one, got {self.pretrained!r}"
            )
        levels = self.out_indices
        if levels is not None and (not levels or len(set(levels)) < len(levels)):
            raise RecipeError(
                f"{path}.out_indices: expected null or a non-empty list of distinct feature levels such as [1, 4], "
                f"got {self.out_indices}"
            )


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """One task: its kind (a registered task kind, ``mtdl list tasks``), head and loss (``{type: name, **kwargs}``; the
    kind's default loss when null) and loss weight. Every other key is an argument of the kind, e.g. ``num_classes``
    for segmentation, or ``target``: the batch key the task reads when it is not the kind's default."""

    kind: str
    head: dict[str, Any] = _opt(spec=True)
    loss: dict[str, Any] | None = _opt(None, spec=True)
    weight: float = _opt(1.0, ge=0)
    args: dict[str, Any] = _opt(factory=dict, extra=True)

    @property
    def kind_cfg(self) -> dict[str, Any]:
        """``{"type": kind, **args}``, the config to build the task kind from the registry."""
        return {"type": self.kind, **self.args}


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The dataset (``type`` plus its keyword arguments, kept in ``args``), splits, loader and augmentation."""

    type: str = "scenes"
    num_workers: int = _opt(2, ge=0)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    augment: dict[str, Any] = _opt(factory=dict)
    args: dict[str, Any] = _opt(factory=dict, extra=True)

    @property
    def dataset_cfg(self) -> dict[str, Any]:
        """``{"type": ..., **args}``, the config to build the dataset from the registry."""
        return {"type": self.type, **self.args}


@dataclass(frozen=True, kw_only=True)
class EmaConfig:
    """An exponential moving average of the weights (timm's ``ModelEmaV3``), updated after every optimizer step;
    evaluation, ``best.pt``, prediction and export use it. ``warmup`` ramps the decay up from 0 (timm's
    ``use_warmup``: ``1 - (1 + step)^(-2/3)``, capped at ``decay``), which suits short runs."""

    decay: float = _opt(0.999, gt=0, lt=1)
    warmup: bool = False


@dataclass(frozen=True, kw_only=True)
class EarlyStopConfig:
    """Stop training when val ``metric`` (``task.metric``; ``train.best_metric`` when null) has not improved by more
    than ``min_delta`` for ``patience`` evaluations in a row."""

    metric: str | None = None
    patience: int = _opt(5, ge=1)
    min_delta: float = _opt(0.0, ge=0)

    def _check(self, path: str) -> None:
        _check_metric_name(self.metric, f"{path}.metric")


def _check_metric_name(metric: str | None, path: str) -> None:
    if metric is not None and not re.fullmatch(r"[^.]+\.[^.]+", metric):
        raise RecipeError(f"{path}: expected 'task.metric' such as 'seg.miou', got {metric!r}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation, schedule, precision, logging and checkpointing.

    ``loggers``: ``jsonl`` (``metrics.jsonl``, always), ``csv`` (``metrics.csv``) and ``tensorboard`` (event files in
    ``<output_dir>/tensorboard``, needs the ``tensorboard`` extra).
    """

    epochs: int | None = _opt(10, ge=1)
    steps: int | None = _opt(None, ge=1)
    batch_size: int = _opt(8, ge=1)
    accumulate_steps: int = _opt(1, ge=1)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = _opt(1.0e-3, gt=0)
    weight_decay: float = _opt(1.0e-4, ge=0)
    momentum: float = _opt(0.9, ge=0, lt=1)
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = _opt(0.9, gt=0)
    warmup_steps: int = _opt(0, ge=0)
    amp: Literal["off", "auto", "bf16", "fp16"] = "off"
    grad_clip: float | None = _opt(None, gt=0)
    channels_last: bool = False
    seed: int = _opt(0, ge=0)
    eval_interval: int = _opt(1, ge=1)
    log_interval: int = _opt(10, ge=1)
    output_dir: str = "runs/default"
    device: str = "auto"
    best_metric: str | None = None
    nonfinite: Literal["skip", "stop"] = "skip"
    max_skipped_steps: int = _opt(10, ge=0)
    checkpoint_interval: int | None = _opt(None, ge=1)
    grad_checkpointing: bool = False
    compile: bool = False
    sync_batchnorm: bool = False
    loggers: list[Literal["jsonl", "csv", "tensorboard"]] = _opt(factory=lambda: ["jsonl", "csv"])
    ema: EmaConfig | None = None
    early_stop: EarlyStopConfig | None = None

    def _check(self, path: str) -> None:
        if "jsonl" not in self.loggers or len(set(self.loggers)) < len(self.loggers):
            raise RecipeError(
                f"{path}.loggers: expected distinct loggers including jsonl (metrics.jsonl is the run's own record, read "
                f"on resume and by sweeps), e.g. [jsonl, csv, tensorboard], got {self.loggers}"
            )
        if self.epochs is None and self.steps is None:
            raise RecipeError(f"{path}.epochs: null needs {path}.steps; set one of them")
        if self.steps is not None and self.warmup_steps >= self.steps:
            raise RecipeError(
                f"{path}.warmup_steps: {self.warmup_steps} leaves no step after warm-up "
                f"({path}.steps is {self.steps}); make it smaller than steps"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise RecipeError(f"{path}.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        _check_metric_name(self.best_metric, f"{path}.best_metric")
        if not self.output_dir:
            raise RecipeError(f"{path}.output_dir: must not be empty")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run: ``steps`` when set, else ``epochs * steps_per_epoch``."""
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch  # type: ignore[operator]


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation batch size (``None``: the training one), how many samples to visualise, the single-task
    baselines for Δm (a ``baselines.json`` path or ``{task: {metric: value}}``, e.g. published numbers), and the
    evaluation protocol of each task: ``protocol: {task: {argument: value}}``, keyword arguments of the task kind's
    ``metrics()`` (e.g. ``{depth: {crop: eigen, max_depth: 10.0, average: image}, seg: {classes: all}}``)."""

    batch_size: int | None = _opt(None, ge=1)
    num_visualize: int = _opt(4, ge=0)
    baselines: str | dict[str, dict[str, float]] | None = None
    delta_m: Literal["task", "metric"] = "task"
    delta_m_metrics: dict[str, list[str]] | None = None
    protocol: dict[str, dict[str, Any]] = _opt(factory=dict)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A whole, validated recipe. Build it with :func:`load`, :func:`loads` or :func:`from_dict`."""

    model: ModelConfig = _opt(factory=ModelConfig)
    tasks: dict[str, TaskConfig]
    data: DataConfig = _opt(factory=DataConfig)
    train: TrainConfig = _opt(factory=TrainConfig)
    weighting: dict[str, Any] = _opt(factory=lambda: {"type": "fixed"}, spec=True)
    eval: EvalConfig = _opt(factory=EvalConfig)

    @property
    def task_names(self) -> list[str]:
        """Task names in recipe order."""
        return list(self.tasks)

    @property
    def eval_batch_size(self) -> int:
        """``eval.batch_size``, or ``train.batch_size`` when it is null."""
        return self.eval.batch_size or self.train.batch_size

    def _check(self, path: str) -> None:
        if not self.tasks:
            raise RecipeError("tasks: at least one task is required, e.g. tasks: {seg: {kind: segmentation, ...}}")
        for name in self.tasks:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise RecipeError(
                    f"tasks.{name}: task names use letters, digits and _ only (not starting with a digit)"
                )
        watched = {"train.best_metric": self.train.best_metric}
        if self.train.early_stop is not None:
            watched["train.early_stop.metric"] = self.train.early_stop.metric
        for key, metric in watched.items():
            task = (metric or "").split(".")[0]
            if metric is not None and task not in self.tasks:
                raise RecipeError(f"{key}: task {task!r} is not in tasks ({', '.join(self.tasks)})" + did_you_mean(task, self.tasks))


# ----------------------------------------------------------------------------------------------------- public API


def load(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Reads and validates a recipe file; the files its ``base:`` names (relative to its folder) are merged under it
    first (see :mod:`multitask_deeplab.config.layers`).

    Args:
        path: The YAML file.
        overrides: ``dotted.key=value`` strings applied before validation (see :func:`apply_overrides`).
    """
    path = Path(path)
    raw = merge_bases(_read_mapping(path), directory=path.parent, source=str(path), read=_read_mapping, chain=(path.resolve(),))
    return from_dict(apply_overrides(raw, overrides))


def loads(text: str, overrides: Iterable[str] = (), *, source: str = "<recipe>", directory: str | Path = ".") -> Recipe:
    """Parses and validates recipe YAML text; ``source`` names it in parse errors, and ``base:`` files are read
    relative to ``directory``."""
    raw = merge_bases(_parse_mapping(text, source), directory=Path(directory), source=source, read=_read_mapping)
    return from_dict(apply_overrides(raw, overrides))


def _read_mapping(path: Path) -> dict[str, Any]:
    """The recipe file at ``path``, parsed (its bases not merged yet)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_RECIPE_BYTES + 1)
        if len(data) > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe {path} is larger than {MAX_RECIPE_BYTES // 2**20} MiB: is it a recipe? (recipes take a few KB)")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"cannot read recipe {path}: {err}") from None
    return _parse_mapping(text, str(path))


def _parse_mapping(text: str, source: str) -> dict[str, Any]:
    raw = parse(text, source)
    if not isinstance(raw, dict):
        got = "nothing (the file is empty)" if raw is None else f"a {type(raw).__name__}"
        sections = ", ".join(_field_names(Recipe))
        raise RecipeError(f"{source}: the top level must be a mapping of sections ({sections}), got {got}")
    return raw


def from_dict(raw: Mapping[str, Any]) -> Recipe:
    """Validates a plain nested mapping (as parsed from YAML or made by :func:`to_dict`) into a :class:`Recipe`."""
    return _build(Recipe, raw, "")


def to_dict(recipe: Any) -> dict[str, Any]:
    """A recipe (or one section) as plain dicts, lists and scalars, fit for YAML and for a checkpoint that
    ``torch.load(weights_only=True)`` reads."""
    return _plain_copy(recipe)


def dump(recipe: Recipe) -> str:
    """The recipe as YAML text that :func:`loads` reads back into an equal recipe."""
    return yaml.dump(to_dict(recipe), Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], sections: Iterable[str]) -> list[str]:
    """The dotted keys of ``sections`` whose values differ between two plain recipe dicts (as :func:`to_dict` makes
    them), each as ``"key (old -> new)"``; a key missing on one side shows as ``unset``."""
    flat_old, flat_new = _flatten({s: old.get(s) for s in sections}), _flatten({s: new.get(s) for s in sections})
    keys = dict.fromkeys([*flat_old, *flat_new])
    return [
        f"{key} ({flat_old.get(key, 'unset')} -> {flat_new.get(key, 'unset')})" for key in keys if flat_old.get(key, _UNSET) != flat_new.get(key, _UNSET)
    ]


_UNSET = object()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping) or not tree:
        return {prefix: tree}
    return {key: value for name, sub in tree.items() for key, value in _flatten(sub, _join(prefix, name)).items()}


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of ``raw`` with ``dotted.key=value`` overrides set; ``raw`` is left unchanged.

    Values are YAML (``train.lr=1e-3`` is a float, ``model.out_indices=[1,4]`` a list, ``train.steps=null`` None),
    except that only true/false are booleans, so ``train.amp=off`` needs no shell quoting. Missing mappings on the
    way are created (``tasks.seg.head.rates=[6,12]``); validation happens afterwards, in :func:`from_dict`.
    """
    result = _plain_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise RecipeError(f"override {item!r}: expected dotted.key=value, e.g. train.epochs=20")
        value = parse(text, f"override {item!r}", OverrideLoader)
        node = result
        for depth, part in enumerate(parts[:-1], start=1):
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                raise RecipeError(f"override {item!r}: {'.'.join(parts[:depth])} is {node[part]!r}, not a mapping")
            node = node[part]
        node[parts[-1]] = value
    return result


# ------------------------------------------------------------------------------------------------------ internals

_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("extra")]


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _build(cls: type, raw: Any, path: str) -> Any:
    """Fills dataclass ``cls`` from mapping ``raw`` at dotted ``path``, checking keys, types and values."""
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping of {', '.join(_field_names(cls))}, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = next((f.name for f in fields.values() if f.metadata.get("extra")), None)
    named = [name for name in fields if name != extra]
    for key in raw:
        if not isinstance(key, str):
            raise RecipeError(f"{_join(path, key)}: keys must be strings, got {key!r} ({type(key).__name__})")
        if key not in named and extra is None:
            hint = did_you_mean(key, named, prefix=_join(path, "")) or f": valid keys are {', '.join(named)}"
            raise RecipeError(f"unknown key {_join(path, key)}{hint}")
    kwargs: dict[str, Any] = {}
    for name in named:
        sub, meta = _join(path, name), fields[name].metadata
        if name not in raw:
            if fields[name].default is MISSING and fields[name].default_factory is MISSING:
                what = " (a mapping with a 'type' key)" if meta.get("spec") else ""
                raise RecipeError(f"{sub}: required key is missing{what}")
            continue
        value = _convert(raw[name], _hints(cls)[name], sub)
        for bound, (op, sign) in _BOUNDS.items():
            if bound in meta and value is not None and not op(value, meta[bound]):
                raise RecipeError(f"{sub}: must be {sign} {meta[bound]}, got {value}")
        if meta.get("spec") and value is not None and not (isinstance(value.get("type"), str) and value["type"]):
            keys = ", ".join(value) or "none"
            raise RecipeError(f"{sub}.type: required, the registered name to build (got keys {keys})")
        kwargs[name] = value
    if extra is not None:
        kwargs[extra] = {key: _convert(raw[key], Any, _join(path, key)) for key in raw if key not in named}
    obj = cls(**kwargs)
    if hasattr(obj, "_check"):
        obj._check(path)
    return obj


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Checks ``value`` against annotation ``tp`` and returns it as plain, fresh Python data."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, UnionType):
        if value is None and NoneType in args:
            return None
        options = [a for a in args if a is not NoneType]
        if len(options) == 1:
            return _convert(value, options[0], path)
        for option in options:
            try:
                return _convert(value, option, path)
            except RecipeError:
                pass
        raise _type_error(value, tp, path)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is Any:
        return _plain_value(value, path)
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            raise _type_error(value, tp, path)
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _choice_error(value, args, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, tp, path)
        return [_convert(item, args[0], f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(value, tp, path)
        for key in value:
            if not isinstance(key, str):
                raise RecipeError(f"{_join(path, key)}: keys must be strings, got {key!r} ({type(key).__name__})")
        return {key: _convert(item, args[1], _join(path, key)) for key, item in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise RecipeError(f"{path}: expected a finite float, got {value}")
        return float(value)
    if isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool):
        return value
    raise _type_error(value, tp, path)


def _type_error(value: Any, tp: Any, path: str) -> RecipeError:
    choices = [a for a in get_args(tp) if isinstance(a, str)] if get_origin(tp) is Literal else []
    if isinstance(value, bool) and (tp is str or choices):
        words = ("on", "yes") if value else ("off", "no")
        word = next((w for w in words if w in choices), None)
        others = ", ".join(repr(c) for c in choices if c != word)
        if word:
            fix = f"write {word!r} in quotes" + (f" or use one of {others}" if others else "")
        else:
            fix = f"use one of {others}" if choices else "put the value in quotes"
        shown = str(value).lower()
        return RecipeError(f"{path}: got boolean {shown} (YAML reads a bare {'/'.join(words)} as {shown}); {fix}")
    return RecipeError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _choice_error(value: Any, choices: Iterable[Any], path: str) -> RecipeError:
    choices = list(choices)
    words = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(value, words, n=1) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RecipeError(f"{path}: expected one of {', '.join(map(repr, choices))}, got {value!r}{hint}")


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is NoneType:
        return "null"
    if origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    return "plain YAML value" if tp is Any else tp.__name__


def _plain_value(value: Any, path: str) -> Any:
    """Checks that ``value`` is plain YAML data (null, bool, number, str, list, str-keyed mapping) and copies it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, Mapping)):
        return _convert(value, list[Any] if not isinstance(value, Mapping) else dict[str, Any], path)
    raise RecipeError(
        f"{path}: unsupported value {value!r} ({type(value).__name__}); use null, booleans, numbers, strings, lists "
        "or mappings (quote dates and other special words)"
    )


def _plain_copy(obj: Any) -> Any:
    """Deep copy into plain dicts and lists; dataclass sections become dicts with their ``extra`` keys inlined.
    Unlike ``copy.deepcopy``, objects shared through YAML aliases become independent copies."""
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = _plain_copy(getattr(obj, f.name))
            if f.metadata.get("extra"):
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(obj, Mapping):
        return {key: _plain_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_copy(value) for value in obj]
    return obj
