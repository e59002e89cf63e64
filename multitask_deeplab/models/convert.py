"""Initialising a model from other weights: torchvision's DeepLabV3 (ResNet-50/101) checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from multitask_deeplab.models.heads import DeepLabV3Head
from multitask_deeplab.models.model import MultiTaskModel

TORCHVISION_DEEPLABV3 = "torchvision-deeplabv3"
_TORCHVISION_RATES = (12, 24, 36)
_HEAD_RENAMES = (("classifier.0.", "trunk.0."), ("classifier.1.", "trunk.1.0."), ("classifier.2.", "trunk.1.1."), ("classifier.4.", "classifier."))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a ``.safetensors`` or ``.pth`` state dict without executing anything (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read weights file {path}: {str(error).splitlines()[0]}") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a flat state dict of tensors")
    return dict(state)


def torchvision_deeplabv3_to_multitask(state: Mapping[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """Renames a torchvision DeepLabV3 state dict to this project's keys (the aux classifier is dropped)."""
    converted = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            converted["backbone.body." + key.removeprefix("backbone.")] = value
        for old, new in _HEAD_RENAMES:
            if key.startswith(old):
                converted[f"heads.{task}.{new}{key.removeprefix(old)}"] = value
    return converted


def load_torchvision_deeplabv3(model: MultiTaskModel, weights: str | os.PathLike, *, task: str | None = None) -> str:
    """Loads torchvision ``deeplabv3_resnet50/101`` weights into the backbone and one ``deeplabv3`` head.

    The model must have a timm ``resnet50``/``resnet101`` backbone at output stride 8 and a ``deeplabv3``
    head with the default ASPP (256 channels, rates 12/24/36) on the deepest level; then both models
    compute the same function. Other heads keep their initialisation.

    Args:
        model: The model to fill.
        weights: A torchvision DeepLabV3 state dict file.
        task: The task whose head receives the classifier; the first ``deeplabv3`` head by default.

    Returns:
        The task that received the classifier.
    """
    if getattr(model, "trunk", None) is not None:
        raise ValueError("torchvision DeepLabV3 weights need a model without model.shared_trunk (each head owns its ASPP)")
    task = task or next((name for name, head in model.heads.items() if type(head) is DeepLabV3Head), None)
    if task is None or type(model.heads[task]) is not DeepLabV3Head:
        raise ValueError(f"{TORCHVISION_DEEPLABV3} weights need a task with a plain deeplabv3 head, got {task!r}")
    if model.backbone.output_stride != 8:
        raise ValueError(
            f"torchvision's DeepLabV3 runs at output stride 8, the model at {model.backbone.output_stride}: "
            "set model.output_stride=8"
        )
    head = model.heads[task]
    dilations = tuple(branch[0].dilation[0] for branch in head.trunk[0].convs[1:-1])
    if dilations != _TORCHVISION_RATES or head.in_index not in (-1, len(model.backbone.channels) - 1):
        raise ValueError(f"head {task!r} must read the deepest level with rates {list(_TORCHVISION_RATES)}, has {list(dilations)}")
    converted = torchvision_deeplabv3_to_multitask(read_state_dict(weights), task)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(("backbone.body.", f"heads.{task}."))}
    missing = sorted(set(expected) - set(converted))
    mismatched = sorted(k for k in set(expected) & set(converted) if expected[k].shape != converted[k].shape)
    if missing or mismatched:
        problems = (missing + mismatched)[:3]
        raise ValueError(
            f"{weights} does not fit the model ({len(missing)} missing, {len(mismatched)} mismatched keys, e.g. "
            f"{', '.join(problems)}); it needs a torchvision deeplabv3_resnet50/101 file and the matching timm backbone"
        )
    model.load_state_dict(converted, strict=False)
    return task


def init_from(model: MultiTaskModel, source: str) -> None:
    """Initialises ``model`` from a ``scheme:path`` source named in a recipe's ``model.init_from``."""
    scheme, _, path = source.partition(":")
    if scheme != TORCHVISION_DEEPLABV3 or not path:
        raise ValueError(f"model.init_from {source!r} is not understood: use '{TORCHVISION_DEEPLABV3}:/path/to/weights.pth'")
    load_torchvision_deeplabv3(model, path)
