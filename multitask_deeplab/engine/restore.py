"""Rebuilding a trained model from nothing but its checkpoint, a pretrained folder or a Hugging Face Hub repo.

Importing this module installs :func:`load_model` as :attr:`MultiTaskModel.loader`, so that
``MultiTaskModel.from_pretrained`` works without the models importing the engine above them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.config.recipe import Recipe
from multitask_deeplab.engine.build import build_model, build_tasks, check_components
from multitask_deeplab.engine.checkpoint import load_checkpoint, load_safetensors, non_finite_tensors, state_mismatch
from multitask_deeplab.engine.delta_m import recipe_delta_m
from multitask_deeplab.models.model import MultiTaskModel
from multitask_deeplab.models.pretrained import CONFIG_NAME, WEIGHTS_NAME
from multitask_deeplab.runtime.hub import download, is_repo_id, split_revision
from multitask_deeplab.tasks import TaskKind

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


class Restored(NamedTuple):
    """What :func:`model_from_checkpoint` and :func:`model_from_pretrained` rebuild."""

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
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} holds no model weights ('model' entry); was it written by `mtdl train`?")
    weights = state["ema"] if ema and state.get("ema") is not None else state["model"]
    if broken := non_finite_tensors(weights):
        raise ValueError(
            f"{path} holds NaN or infinite values in {len(broken)} tensors (e.g. {', '.join(broken[:3])}): it was saved "
            "from a run that diverged; use an earlier checkpoint (best.pt) or retrain with a lower train.lr"
        )
    try:
        recipe = recipe_module.from_dict(state["recipe"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path} has no usable recipe inside ({error}); was it written by `mtdl train`?") from error
    model, tasks = _rebuild(recipe, path)
    if problem := state_mismatch(model.state_dict(), weights):
        raise ValueError(f"the weights in {path} do not fit the model its recipe builds: {problem}")
    model.load_state_dict(weights)
    return Restored(model.to(device).eval(), recipe, tasks, state)


def model_from_pretrained(source: str | os.PathLike, device: str | torch.device = "cpu", *, revision: str | None = None) -> Restored:
    """Rebuilds a model that :meth:`MultiTaskModel.save_pretrained` wrote, from a folder or a Hub repo id.

    A repo id (``org/name``, optionally ``@revision``) is read through ``huggingface_hub``: from its cache when the
    files are there, and only from there under ``HF_HUB_OFFLINE=1``.

    Returns:
        The model in eval mode on ``device``, the recipe, its task kinds, and an empty state (no checkpoint).
    """
    folder = Path(source)
    if folder.is_dir():
        config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        missing = [path.name for path in (config, weights) if not path.is_file()]
        if missing:
            raise ValueError(
                f"{folder} holds no {' or '.join(missing)}: give a folder written by save_pretrained (or `mtdl export "
                "--format pretrained`), a checkpoint such as best.pt, or a Hub repo id (org/name)"
            )
    else:
        repo_id, tag = split_revision(str(source))
        config = download(repo_id, CONFIG_NAME, revision=revision or tag, what="model")
        weights = download(repo_id, WEIGHTS_NAME, revision=revision or tag, what="model")
    recipe = recipe_module.load(config)
    model, tasks = _rebuild(recipe, source)
    load_safetensors(model, weights)
    return Restored(model.to(device).eval(), recipe, tasks, {})


def restore(source: str | os.PathLike, device: str | torch.device = "cpu", *, ema: bool = True, revision: str | None = None) -> Restored:
    """A model from a checkpoint file, a pretrained folder or a Hub repo id, whichever ``source`` names.

    Args:
        source: ``runs/x/best.pt``, a folder written by ``save_pretrained``, or ``org/name[@revision]``.
        device: Where the model goes.
        ema: For checkpoints: the moving average of the weights when there is one.
        revision: For Hub repos: the branch, tag or commit.
    """
    path = Path(source)
    if path.is_dir():
        return model_from_pretrained(path, device)
    if path.is_file() or path.suffix in CHECKPOINT_SUFFIXES:  # a missing checkpoint says so
        return model_from_checkpoint(path, device, ema=ema)
    if not is_repo_id(str(source)):
        raise ValueError(f"{source} is not a checkpoint file, a folder written by save_pretrained or a Hub repo id (org/name)")
    try:
        return model_from_pretrained(str(source), device, revision=revision)
    except ValueError as error:
        raise ValueError(f"no file or folder {source} here, and as a Hub repo: {error}") from error


def load_model(source: str | os.PathLike, *, revision: str | None = None, device: str | torch.device = "cpu") -> MultiTaskModel:
    """The model of :func:`restore` (what ``MultiTaskModel.from_pretrained`` returns)."""
    return restore(source, device, revision=revision).model


def _rebuild(recipe: Recipe, source: str | os.PathLike) -> tuple[MultiTaskModel, dict[str, TaskKind]]:
    """The model and tasks of a recipe, without reading its pretrained or ``init_from`` weights (they are replaced)."""
    rebuilt = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, pretrained=False, init_from=None))
    try:
        check_components(rebuilt)
        tasks = build_tasks(rebuilt)
        model = build_model(rebuilt, tasks)
    except ValueError as error:
        raise ValueError(f"cannot rebuild the model of {source}: {error}") from error
    model.config = recipe_module.to_dict(recipe)
    return model, tasks


def export_pretrained(source: str | os.PathLike, folder: str | os.PathLike, *, ema: bool = True, repo_id: str | None = None) -> Path:
    """Writes the model of ``source`` (see :func:`restore`) as a pretrained folder; a checkpoint's val metrics and its
    Δm against the recipe's single-task baselines (when there are some) go into the model card."""
    restored = restore(source, ema=ema)
    metrics = restored.state.get("metrics") or {}
    delta = recipe_delta_m(restored.recipe, restored.tasks, metrics) if metrics else None
    return restored.model.save_pretrained(folder, metrics=metrics, delta_m=delta, repo_id=repo_id)


MultiTaskModel.loader = load_model
