"""Checkpoints: atomic writes, weights-only loading, safetensors export."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multitask_deeplab.config.migrate import upgrade_recipe
from multitask_deeplab.runtime.files import atomic_write

FORMAT = "multitask_deeplab/2"
"""The format tag of checkpoints written now."""

READABLE_FORMATS = ("multitask_deeplab/1", FORMAT)
"""Format tags this version loads (format 1 recipes are upgraded, see :mod:`multitask_deeplab.config.migrate`)."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Saves a checkpoint dict of plain types and tensors atomically."""
    atomic_write(path, lambda temp: torch.save({"format": FORMAT, **state}, temp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint with ``torch.load(weights_only=True)``; never falls back to unsafe loading.

    Raises:
        ValueError: naming the file when it is missing, truncated, not a checkpoint, or carries
            Python objects (for example a pickle payload) that weights-only loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        message = str(error)
        if isinstance(error, pickle.UnpicklingError) and (refused := re.search(r"GLOBAL (\S+)", message)):
            raise ValueError(
                f"refused to load {path}: it holds Python objects ({refused[1]}) that safe (weights-only) loading does "
                "not allow; only load checkpoints from sources you trust, and re-save them with plain tensors"
            ) from error
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", message) or re.match(r"\s*(.+)", message)
        reason = f"{type(error).__name__}: {detail[1]}" if detail else type(error).__name__
        raise ValueError(f"{path} is not a readable checkpoint (truncated or another kind of file; {reason})") from error
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path} is not a multitask_deeplab checkpoint (no '{FORMAT}' format tag)")
    if state["format"] != FORMAT and isinstance(state.get("recipe"), dict):
        state["recipe"] = upgrade_recipe(state["recipe"])
    return state


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel or compiled wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def export_safetensors(model: nn.Module, path: str | os.PathLike) -> None:
    """Writes the model's weights (no code, no pickle) as ``.safetensors``, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write(path, lambda temp: save_file(state, str(temp)))


def load_safetensors(model: nn.Module, path: str | os.PathLike) -> None:
    """Loads ``.safetensors`` weights strictly; a mismatch (names or shapes) names the file and the keys."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as error:
        raise ValueError(f"cannot read safetensors file {path}: {error}") from error
    expected = unwrap(model).state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key in state if key in expected and state[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        keys = ", ".join((missing + unexpected + reshaped)[:3])
        raise ValueError(
            f"{path} does not fit the model: {len(missing)} missing, {len(unexpected)} unexpected and "
            f"{len(reshaped)} differently shaped tensors, e.g. {keys}"
        )
    unwrap(model).load_state_dict(state)
