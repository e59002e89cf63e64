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
    """Saves a checkpoint dict of plain types and tensors atomically.

    Raises:
        WriteError: naming ``path`` and the operating system's reason (e.g. a full disk); any previous file at
            ``path`` is intact.
    """

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            writer = _ErrorKeepingWriter(handle)
            try:
                torch.save({"format": FORMAT, **state}, writer)
            except RuntimeError:
                if writer.error is not None:  # torch's zip writer hides the OSError behind its own message
                    raise writer.error from None
                raise

    atomic_write(path, write)


class _ErrorKeepingWriter:
    """A binary file wrapper that remembers the ``OSError`` of a failed write."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint with ``torch.load(weights_only=True)``; never falls back to unsafe loading.

    Raises:
        ValueError: naming the file when it is missing, truncated, not a checkpoint, or carries
            Python objects (for example a pickle payload) that weights-only loading refuses.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file; give its last.pt or best.pt")
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:] == b"{":  # safetensors: an 8-byte header length, then a JSON header
        raise ValueError(
            f"{path} is a safetensors weights file (as `mtdl export` writes), not a checkpoint; give the last.pt or "
            "best.pt it was exported from"
        )
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
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    data = save(state)  # bytes written by Python, so a full disk is an OSError, not a SafetensorError
    atomic_write(path, lambda temp: temp.write_bytes(data))


def load_safetensors(model: nn.Module, path: str | os.PathLike) -> None:
    """Loads ``.safetensors`` weights strictly; a mismatch (names or shapes) names the file and the keys."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as error:
        raise ValueError(f"cannot read safetensors file {path}: {error}") from error
    if problem := state_mismatch(unwrap(model).state_dict(), state):
        raise ValueError(f"{path} does not fit the model: {problem}")
    unwrap(model).load_state_dict(state)


def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, Any]) -> str | None:
    """What keeps ``state`` from loading strictly into a model whose state dict is ``expected``, or None.

    Returns:
        e.g. "0 missing, 0 unexpected and 2 differently shaped tensors, e.g. heads.seg.conv.weight (checkpoint
        32x64x1x1, model 8x64x1x1)".
    """
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key in state if key in expected and getattr(state[key], "shape", None) != expected[key].shape]
    if not (missing or unexpected or reshaped):
        return None
    examples = [*missing[:2], *unexpected[:2], *(f"{key} (checkpoint {_shape(state[key])}, model {_shape(expected[key])})" for key in reshaped[:2])]
    return (
        f"{len(missing)} missing, {len(unexpected)} unexpected and {len(reshaped)} differently shaped tensors, "
        f"e.g. {', '.join(examples)}"
    )


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """The keys of floating-point tensors in ``state`` that hold NaN or infinity."""
    return [
        key for key, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


def _shape(value: Any) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
