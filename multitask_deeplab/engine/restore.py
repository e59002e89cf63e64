"""Rebuilding a trained model from nothing but its checkpoint."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import torch

from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.config.recipe import Recipe
from multitask_deeplab.engine.build import build_model, build_tasks, check_components
from multitask_deeplab.engine.checkpoint import load_checkpoint
from multitask_deeplab.models.model import MultiTaskModel
from multitask_deeplab.tasks import TaskKind


class Restored(NamedTuple):
    """What :func:`model_from_checkpoint` rebuilds."""

    model: MultiTaskModel
    recipe: Recipe
    tasks: dict[str, TaskKind]
    state: dict[str, Any]


def model_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", *, ema: bool = True) -> Restored:
    """Loads a checkpoint, rebuilds its model and tasks from the recipe inside it, and loads the weights.

    Pretrained and ``init_from`` weights named in the recipe are not read again (the checkpoint has the
    weights), so neither those files nor a network are needed. Components registered by a plugin (a head, a task
    kind) need the plugin imported first.

    Args:
        path: The checkpoint.
        device: Where the model goes.
        ema: Load the moving average of the weights when the checkpoint has one (``train.ema``), else the weights
            trained.

    Returns:
        The model in eval mode on ``device``, the recipe, its task kinds, and the raw checkpoint dict.
    """
    state = load_checkpoint(path)
    try:
        recipe = recipe_module.from_dict(state["recipe"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path} has no usable recipe inside ({error}); was it written by `mtdl train`?") from error
    rebuilt = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, pretrained=False, init_from=None))
    try:
        check_components(rebuilt)
        tasks = build_tasks(rebuilt)
        model = build_model(rebuilt, tasks)
    except ValueError as error:
        raise ValueError(f"cannot rebuild the model of {path}: {error}") from error
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} holds no model weights ('model' entry); was it written by `mtdl train`?")
    model.load_state_dict(state["ema"] if ema and state.get("ema") is not None else state["model"])
    return Restored(model.to(device).eval(), recipe, tasks, state)
