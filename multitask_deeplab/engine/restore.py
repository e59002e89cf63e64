"""Rebuilding a trained model from nothing but its checkpoint."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.config.recipe import Recipe
from multitask_deeplab.engine.build import build_model
from multitask_deeplab.engine.checkpoint import load_checkpoint, non_finite_tensors, state_mismatch
from multitask_deeplab.models.model import MultiTaskModel


def model_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MultiTaskModel, Recipe, dict[str, Any]]:
    """Loads a checkpoint, rebuilds its model from the recipe inside it, and loads the weights.

    Pretrained and ``init_from`` weights named in the recipe are not read again (the checkpoint has the
    weights), so neither those files nor a network are needed.

    Returns:
        The model in eval mode on ``device``, the recipe, and the raw checkpoint dict.
    """
    state = load_checkpoint(path)
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} holds no model weights (no 'model' entry); give a checkpoint written by `mtdl train`")
    if broken := non_finite_tensors(state["model"]):
        raise ValueError(
            f"{path} holds NaN or infinite values in {len(broken)} tensors (e.g. {', '.join(broken[:3])}): it was saved "
            "from a run that diverged; use an earlier checkpoint (best.pt) or retrain with a lower train.lr"
        )
    try:
        recipe = recipe_module.from_dict(state["recipe"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path} has no usable recipe inside ({error}); was it written by `mtdl train`?") from error
    rebuilt = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, pretrained=False, init_from=None))
    try:
        model = build_model(rebuilt)
    except ValueError as error:
        hint = "; pass --plugin <module> that registers it" if "unknown head" in str(error) else ""
        raise ValueError(f"cannot rebuild the model of {path}: {error}{hint}") from error
    if problem := state_mismatch(model.state_dict(), state["model"]):
        raise ValueError(f"the weights in {path} do not fit the model its recipe builds: {problem}")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), recipe, state
