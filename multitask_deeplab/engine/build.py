"""Building what a recipe describes from the registries: its tasks, losses, model and weighting, each checked first.

Importing this module registers the built-in components (task kinds, heads, losses, weightings, datasets). The order
of the checks: :func:`check_components` (every name and key of the recipe, before anything is built), then the
builders (each error names its dotted recipe key), then :func:`check_model_fits_tasks` (one probe batch through the
model, every loss and every task's metrics, before the data is touched).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.config.migrate import renamed_head_hint
from multitask_deeplab.config.recipe import Recipe, from_dict
from multitask_deeplab.config.validation import RecipeError, accepted_subset, check_component, check_kwargs, did_you_mean
from multitask_deeplab.data import DATASETS
from multitask_deeplab.data.augment import build_augmentation
from multitask_deeplab.errors import ComponentError, UnknownComponentError, describe_exception
from multitask_deeplab.losses import LOSSES, DenseLoss
from multitask_deeplab.models.backbone import TimmBackbone
from multitask_deeplab.models.convert import init_from
from multitask_deeplab.models.heads import HEADS, RESERVED_HEAD_ARGS
from multitask_deeplab.models.model import IMAGENET_MEAN, IMAGENET_STD, MultiTaskModel, build_head, build_trunk
from multitask_deeplab.registry import Registry
from multitask_deeplab.tasks import TASKS, TaskKind
from multitask_deeplab.weighting import WEIGHTINGS, Weighting

REGISTRIES: dict[str, Registry] = {
    "tasks": TASKS, "heads": HEADS, "losses": LOSSES, "weightings": WEIGHTINGS, "datasets": DATASETS,
}  # fmt: skip
"""The registries ``mtdl list`` shows, by the plural it takes."""

PLUGIN_HINT = "; if it is your own, pass --plugin <the .py file or module that registers it>"

PROBE_SIZE = 64
"""Side of the probe images that every model, loss and metric is tried on before training."""


# ----------------------------------------------------------------------------------------------------- checks
def check_components(recipe: Recipe) -> None:
    """Checks every name a recipe gives (task kinds, heads, losses, weighting, dataset) and the keys given to each."""
    for name, task in recipe.tasks.items():
        path = f"tasks.{name}"
        try:
            kind = TASKS.get(task.kind)
        except UnknownComponentError as error:
            raise RecipeError(f"{path}.kind: {error}{PLUGIN_HINT}") from None
        check_kwargs(kind, task.args, path, what=f"task kind {task.kind!r}")
        _check_named(HEADS, task.head, f"{path}.head", reserved=RESERVED_HEAD_ARGS, hint=renamed_head_hint(str(task.head["type"])))
        if task.loss is not None:
            _check_named(LOSSES, task.loss, f"{path}.loss")
    for name, options in recipe.eval.protocol.items():
        if name not in recipe.tasks:
            raise RecipeError(f"eval.protocol.{name}: no task {name!r} in tasks ({', '.join(recipe.tasks)})" + did_you_mean(name, recipe.tasks))
        kind = recipe.tasks[name].kind
        check_kwargs(TASKS.get(kind).metrics, options, f"eval.protocol.{name}", what=f"the metrics of task kind {kind!r}", reserved=("self",))
    _check_named(WEIGHTINGS, recipe.weighting, "weighting", reserved=("task_names", "task_kinds"))
    _check_named(DATASETS, recipe.data.dataset_cfg, "data", reserved=("split",))
    augment = Registry("augmentation", nn.Module)
    augment.register("augment")(build_augmentation)
    check_component(augment, {"type": "augment", **recipe.data.augment}, "data.augment", reserved=("targets",))


def _check_named(registry: Registry, cfg: Mapping[str, Any], path: str, *, reserved: Sequence[str] = (), hint: str = "") -> None:
    """:func:`check_component`, with a hint after an unknown name (by default: pass the plugin that registers it)."""
    if "type" in cfg and cfg["type"] not in registry:
        raise RecipeError(f"{path}.type: {registry.unknown_message(cfg['type'])}{hint or PLUGIN_HINT}")
    check_component(registry, cfg, path, reserved=reserved)


def resolve_recipe(recipe: Recipe) -> Recipe:
    """The recipe with every default that depends on a component filled in: each task's loss (its kind's default)."""
    tasks = {
        name: task if task.loss is not None else dataclasses.replace(task, loss=dict(TASKS.get(task.kind).default_loss))
        for name, task in recipe.tasks.items()
    }
    return dataclasses.replace(recipe, tasks=tasks)


def check_model_fits_tasks(
    model: nn.Module, tasks: Mapping[str, TaskKind], losses: Mapping[str, DenseLoss], *, in_chans: int,
    protocols: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Tries the model, every loss and every task's metrics (under its ``eval.protocol``) on one small probe batch,
    before training starts.

    The probe comes from its own random generator and the model runs in eval mode without gradients, so nothing the
    training computes afterwards changes. Catches a head that ignores its ``out_channels`` or fails on the backbone's
    features, a loss that cannot take its task's prediction and target, and metrics that fail, each as one line.

    Raises:
        ComponentError: naming the task, the component and what went wrong.
    """
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    image = torch.rand(2, in_chans, PROBE_SIZE, PROBE_SIZE, generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = _probe_outputs(model, image, tasks)
            for name, task in tasks.items():
                target = task.prepare_target(task.example_target(2, PROBE_SIZE, PROBE_SIZE, generator)).to(device)
                _probe_loss(name, losses[name], outputs[name].float(), target)
                _probe_metrics(name, task, outputs[name].float(), target, (protocols or {}).get(name, {}))
    finally:
        model.train(was_training)


def _probe_outputs(model: nn.Module, image: torch.Tensor, tasks: Mapping[str, TaskKind]) -> dict[str, torch.Tensor]:
    try:
        outputs = model(image)
    except Exception as error:
        raise ComponentError(f"the model failed on a probe batch of {tuple(image.shape)}: {describe_exception(error)}") from error
    for name, task in tasks.items():
        expected = (image.shape[0], task.out_channels, *image.shape[-2:])
        if name not in outputs or tuple(outputs[name].shape) != expected:
            got = tuple(outputs[name].shape) if name in outputs else "nothing"
            raise ComponentError(
                f"tasks.{name}.head: the head's output is {got} for a {tuple(image.shape)} probe, but task {name!r} "
                f"({task.describe()}) needs {expected}; the head must output its out_channels argument"
            )
    return outputs


def _probe_loss(name: str, loss: DenseLoss, prediction: torch.Tensor, target: torch.Tensor) -> None:
    try:
        value = loss(prediction, target)
    except Exception as error:
        raise ComponentError(f"tasks.{name}.loss: {loss.name!r} failed on the task's prediction and target: {describe_exception(error)}") from error
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not torch.isfinite(value):
        shown = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ComponentError(f"tasks.{name}.loss: {loss.name!r} must return a finite scalar tensor, got {shown} on a valid probe target")


def _probe_metrics(name: str, task: TaskKind, prediction: torch.Tensor, target: torch.Tensor, protocol: Mapping[str, Any]) -> None:
    if protocol:
        try:
            task.metrics(**protocol)
        except ValueError as error:
            raise ComponentError(f"eval.protocol.{name}: {error}") from error
    try:
        metrics = task.metrics(**protocol)
        metrics.update(prediction, target)
        names = metrics.compute()
    except Exception as error:
        raise ComponentError(f"tasks.{name}: the metrics of {task.describe()} failed on a probe: {describe_exception(error)}") from error
    missing = [metric for metric in (task.primary_metric, *task.delta_m_metrics) if metric not in names]
    if missing:
        raise ComponentError(
            f"tasks.{name}: {task.describe()} names metrics {', '.join(missing)} that its metrics do not return "
            f"(they return {', '.join(names)}); fix primary_metric or delta_m_metrics"
        )


def unused_weights_note(recipe: Recipe) -> str | None:
    """A line for the user when tasks set a ``weight`` that the weighting strategy does not read (only ``fixed``
    does; the others learn or compute their own); ``None`` otherwise."""
    strategy = recipe.weighting["type"]
    custom = [f"tasks.{name}.weight={task.weight:g}" for name, task in recipe.tasks.items() if task.weight != 1.0]
    if strategy == "fixed" or not custom:
        return None
    return f"note: {', '.join(custom)} only counts with weighting.type=fixed; {strategy} sets the task weights itself"


# ----------------------------------------------------------------------------------------------------- builders
def build_tasks(recipe: Recipe) -> dict[str, TaskKind]:
    """One task-kind object per recipe task, built from the task's kind-specific keys."""
    return {name: TASKS.build(task.kind_cfg, where=f"tasks.{name}") for name, task in recipe.tasks.items()}


def build_losses(recipe: Recipe, tasks: Mapping[str, TaskKind]) -> dict[str, DenseLoss]:
    """One loss per task (its kind's default when the recipe gives none), checked to fit the task."""
    losses = {}
    for name, task in tasks.items():
        cfg = recipe.tasks[name].loss or dict(task.default_loss)
        where = f"tasks.{name}.loss"
        defaults = accepted_subset(LOSSES.get(cfg["type"]), {k: v for k, v in task.loss_defaults().items() if k not in cfg})
        loss = LOSSES.build(cfg, where=where, **defaults)
        try:
            loss.check_task(task)
        except ValueError as error:
            raise ComponentError(f"{where}: {error}") from error
        losses[name] = loss
    return losses


def build_model(recipe: Recipe, tasks: Mapping[str, TaskKind] | None = None) -> MultiTaskModel:
    """Builds the model a recipe describes (weights from ``model.init_from`` are loaded too).

    Args:
        recipe: The recipe.
        tasks: Its task kinds (:func:`build_tasks`), when already built.
    """
    tasks = build_tasks(recipe) if tasks is None else tasks
    cfg = recipe.model
    backbone = TimmBackbone(
        cfg.backbone, output_stride=cfg.output_stride, pretrained=cfg.pretrained, in_chans=cfg.in_chans, out_indices=cfg.out_indices,
        timm_args=cfg.backbone_args,
    )
    trunk = build_trunk(backbone, cfg.shared_trunk)
    heads = {
        name: build_head(backbone, recipe.tasks[name].head, task.out_channels, trunk, where=f"tasks.{name}.head")
        for name, task in tasks.items()
    }
    activations = {name: task.activation() for name, task in tasks.items()}
    config = recipe_module.to_dict(recipe)
    model = MultiTaskModel(backbone, heads, activations=activations, trunk=trunk, mean=cfg.mean, std=cfg.std, config=config)
    if cfg.init_from:
        init_from(model, cfg.init_from)
    return model


def build_weighting(recipe: Recipe, tasks: Mapping[str, TaskKind]) -> Weighting:
    """The weighting strategy; fixed weights default to the tasks' ``weight`` values."""
    cfg = dict(recipe.weighting)
    if cfg["type"] == "fixed":
        cfg.setdefault("weights", {name: task.weight for name, task in recipe.tasks.items()})
    return WEIGHTINGS.build(cfg, where="weighting", task_names=list(recipe.tasks), task_kinds=dict(tasks))


def create_model(
    backbone: str,
    *,
    tasks: Mapping[str, Mapping[str, Any]],
    output_stride: int = 16,
    pretrained: bool | str = False,
    in_chans: int = 3,
    out_indices: Sequence[int] | None = None,
    shared_trunk: Mapping[str, Any] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> MultiTaskModel:
    """Builds a model in one call from Python, with the same checks as a recipe.

    Example:
        >>> model = create_model("resnet50", output_stride=8, tasks={
        ...     "seg": {"kind": "segmentation", "num_classes": 21, "head": {"type": "deeplabv3"}},
        ...     "depth": {"kind": "depth", "head": {"type": "deeplabv3"}},
        ... })

    Args:
        backbone: timm model name.
        tasks: ``{task: {"kind": ..., "head": {"type": ..., **head args}, **kind args}}``, as in a recipe's ``tasks``.
        output_stride, pretrained, in_chans, out_indices: As for :class:`TimmBackbone` (``out_indices``: keep only the
            levels the heads read, which saves memory).
        shared_trunk: ``None``, or the arguments of a :class:`~multitask_deeplab.models.heads.SharedTrunk` run once for
            all heads (e.g. ``{"channels": 256}``); heads then read its output as the last level.
        mean, std: Input normalisation.
    """
    model = {
        "backbone": backbone, "output_stride": output_stride, "pretrained": pretrained, "in_chans": in_chans,
        "out_indices": None if out_indices is None else list(out_indices),
        "shared_trunk": None if shared_trunk is None else dict(shared_trunk), "mean": list(mean), "std": list(std),
    }  # fmt: skip
    recipe = from_dict({"model": model, "tasks": {name: dict(task) for name, task in tasks.items()}})
    check_components(recipe)
    return build_model(recipe)
