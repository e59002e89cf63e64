"""Every built-in component registry, and the check of a recipe's open mappings against them.

Importing this module registers the built-in heads, losses, weightings and datasets.
"""

from __future__ import annotations

from torch import nn

from multitask_deeplab.config.recipe import Recipe
from multitask_deeplab.config.validation import RecipeError, check_component
from multitask_deeplab.data import DATASETS
from multitask_deeplab.data.augment import build_augmentation
from multitask_deeplab.losses import LOSSES
from multitask_deeplab.models.backbone import TimmBackbone
from multitask_deeplab.models.convert import init_from
from multitask_deeplab.models.heads import HEADS, RESERVED_HEAD_ARGS
from multitask_deeplab.models.model import MultiTaskModel, build_head, build_trunk
from multitask_deeplab.registry import Registry
from multitask_deeplab.tasks import head_channels
from multitask_deeplab.weighting import WEIGHTINGS

REGISTRIES: dict[str, Registry] = {"heads": HEADS, "losses": LOSSES, "weightings": WEIGHTINGS, "datasets": DATASETS}


def check_components(recipe: Recipe) -> None:
    """Checks every ``type`` a recipe names and the keyword arguments given to it, naming dotted keys."""
    for name, task in recipe.tasks.items():
        path = f"tasks.{name}"
        try:
            check_component(HEADS, task.head, f"{path}.head", reserved=RESERVED_HEAD_ARGS)
        except RecipeError as error:
            if "unknown head" in str(error):
                raise RecipeError(f"{error}; if it is your own head, pass --plugin <module that registers it>") from None
            raise
        check_component(LOSSES, task.loss, f"{path}.loss")
    check_component(WEIGHTINGS, recipe.weighting, "weighting", reserved=("task_names", "task_kinds"))
    check_component(DATASETS, recipe.data.dataset_cfg, "data", reserved=("split",))
    augment = Registry("augmentation")
    augment.register("augment")(build_augmentation)
    check_component(augment, {"type": "augment", **recipe.data.augment}, "data.augment", reserved=("ignore_index",))


def build_losses(recipe: Recipe) -> dict[str, nn.Module]:
    """One loss per task, checked to fit the task's kind and head."""
    losses = {}
    for name, task in recipe.tasks.items():
        kind = LOSSES.get(task.loss["type"]).kind
        if kind != task.kind:
            raise ValueError(f"tasks.{name}.loss: {task.loss['type']!r} is a {kind} loss, but task {name!r} is {task.kind}")
        defaults = {"ignore_index": task.ignore_index} if task.kind == "segmentation" else {}
        loss = LOSSES.build(task.loss, **defaults)
        loss.check_channels(head_channels(task.kind, task.num_classes))
        losses[name] = loss
    return losses


def unused_weights_note(recipe: Recipe) -> str | None:
    """A line for the user when tasks set a ``weight`` that the weighting strategy does not read (only ``fixed``
    does; the others learn or compute their own); ``None`` otherwise."""
    strategy = recipe.weighting["type"]
    custom = [f"tasks.{name}.weight={task.weight:g}" for name, task in recipe.tasks.items() if task.weight != 1.0]
    if strategy == "fixed" or not custom:
        return None
    return f"note: {', '.join(custom)} only counts with weighting.type=fixed; {strategy} sets the task weights itself"


def build_weighting(recipe: Recipe) -> nn.Module:
    """The weighting strategy; fixed weights default to the tasks' ``weight`` values."""
    cfg = dict(recipe.weighting)
    if cfg["type"] == "fixed":
        cfg.setdefault("weights", {name: task.weight for name, task in recipe.tasks.items()})
    return WEIGHTINGS.build(cfg, task_names=list(recipe.tasks), task_kinds={n: t.kind for n, t in recipe.tasks.items()})


def build_model(recipe: Recipe) -> MultiTaskModel:
    """Builds the model a recipe describes (weights from ``model.init_from`` are loaded too)."""
    cfg = recipe.model
    backbone = TimmBackbone(
        cfg.backbone,
        output_stride=cfg.output_stride,
        pretrained=cfg.pretrained,
        in_chans=cfg.in_chans,
        out_indices=cfg.out_indices,
    )
    trunk = build_trunk(backbone, cfg.shared_trunk)
    heads = {
        name: build_head(backbone, task.head, head_channels(task.kind, task.num_classes), trunk)
        for name, task in recipe.tasks.items()
    }
    model = MultiTaskModel(backbone, heads, trunk=trunk, mean=cfg.mean, std=cfg.std)
    if cfg.init_from:
        init_from(model, cfg.init_from)
    return model
