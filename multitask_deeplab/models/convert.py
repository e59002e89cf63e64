"""Initialising a model from other weights: torchvision's DeepLabV3 (ResNet-50/101) checkpoints and
segmentation_models_pytorch's DeepLabV3 / DeepLabV3Plus with a timm (``tu-``) encoder."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from multitask_deeplab.models.heads import DeepLabV3Head, DeepLabV3PlusHead
from multitask_deeplab.models.model import MultiTaskModel

TORCHVISION_DEEPLABV3 = "torchvision-deeplabv3"
SMP_DEEPLABV3 = "smp-deeplabv3"
SCHEMES = (TORCHVISION_DEEPLABV3, SMP_DEEPLABV3)
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
    _load_converted(model, converted, task, weights, "it needs a torchvision deeplabv3_resnet50/101 file and the matching timm backbone")
    return task


def _load_converted(model: MultiTaskModel, converted: Mapping[str, torch.Tensor], task: str, weights: Any, hint: str) -> None:
    """Loads converted weights into the backbone and the head of ``task``, which they must fill exactly."""
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(("backbone.body.", f"heads.{task}."))}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(converted) if expected[k].shape != converted[k].shape)
    if missing or unexpected or mismatched:
        problems = (missing + unexpected + mismatched)[:3]
        raise ValueError(
            f"{weights} does not fit the model ({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
            f"mismatched keys, e.g. {', '.join(problems)}); {hint}"
        )
    model.load_state_dict(converted, strict=False)


# ---------------------------------------------------------------------------------------- segmentation_models_pytorch
_SMP_RATES = (12, 24, 36)
_SMP_OLD_V3_KEYS = (("decoder.0.", "decoder.aspp."), ("decoder.1.", "decoder.conv."), ("decoder.2.", "decoder.bn."))


def _smp_aspp(smp: str, ours: str, separable: bool) -> list[tuple[str, str]]:
    """Key prefixes of smp's ASPP and ours (``depthwise_norm: false``: depthwise, pointwise, batch norm, ReLU)."""
    pairs = [(f"{smp}.convs.0.", f"{ours}.convs.0."), (f"{smp}.convs.4.", f"{ours}.convs.4."), (f"{smp}.project.", f"{ours}.project.")]
    for i in (1, 2, 3):
        if separable:
            pairs += [(f"{smp}.convs.{i}.0.0.", f"{ours}.convs.{i}.0."), (f"{smp}.convs.{i}.0.1.", f"{ours}.convs.{i}.1.")]
            pairs.append((f"{smp}.convs.{i}.1.", f"{ours}.convs.{i}.2."))
        else:
            pairs.append((f"{smp}.convs.{i}.", f"{ours}.convs.{i}."))
    return pairs


def smp_deeplabv3_to_multitask(state: Mapping[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """Renames an smp ``DeepLabV3``/``DeepLabV3Plus`` state dict (``tu-`` encoder) to this project's keys; the auxiliary
    classification head is dropped, and keys that map nowhere are kept as they are (so a fit check names them)."""
    state = {next((new + key[len(old):] for old, new in _SMP_OLD_V3_KEYS if key.startswith(old)), key): value for key, value in state.items()}
    plus = any(key.startswith("decoder.block1.") for key in state)
    head = f"heads.{task}."
    if plus:
        separable = "decoder.aspp.0.convs.1.0.0.weight" in state
        pairs = _smp_aspp("decoder.aspp.0", f"{head}aspp", separable) + [
            ("decoder.aspp.1.0.", f"{head}aspp_conv.0."), ("decoder.aspp.1.1.", f"{head}aspp_conv.1."), ("decoder.aspp.2.", f"{head}aspp_conv.2."),
            ("decoder.block1.", f"{head}skip."),
            ("decoder.block2.0.0.", f"{head}decoder.0.0."), ("decoder.block2.0.1.", f"{head}decoder.0.1."), ("decoder.block2.1.", f"{head}decoder.0.2."),
        ]  # fmt: skip
    else:
        separable = "decoder.aspp.convs.1.0.0.weight" in state
        pairs = _smp_aspp("decoder.aspp", f"{head}trunk.0", separable) + [("decoder.conv.", f"{head}trunk.1.0."), ("decoder.bn.", f"{head}trunk.1.1.")]
    pairs += [("encoder.model.", "backbone.body."), ("segmentation_head.0.", f"{head}classifier.")]
    converted = {}
    for key, value in state.items():
        if key.startswith("classification_head."):
            continue
        old, new = max(((old, new) for old, new in pairs if key.startswith(old)), key=lambda pair: len(pair[0]), default=("", ""))
        converted[new + key[len(old):]] = value
    return converted


def smp_head_spec(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], output_stride: int) -> dict[str, Any]:
    """The head arguments under which our head computes what the smp model computes (``config``: its ``config.json``,
    empty for a bare state dict, whose model is assumed to use smp's defaults)."""
    plus = any(key.startswith("decoder.block1.") for key in state)
    rates = list(config.get("decoder_atrous_rates") or _SMP_RATES)
    upsampling = config.get("upsampling") or (4 if plus else output_stride)
    if not plus:
        separable = "decoder.aspp.convs.1.0.0.weight" in state or "decoder.0.convs.1.0.0.weight" in state
        return {"type": "deeplabv3", "rates": rates, "separable": separable, "depthwise_norm": False, "upsampling": upsampling}
    return {
        "type": "deeplabv3plus", "rates": rates, "separable": True, "depthwise_norm": False, "aspp_conv": True,
        "decoder_convs": 1, "align_corners": True, "upsampling": upsampling,
    }  # fmt: skip


def read_smp(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An smp checkpoint: a state dict file, or a folder as smp's ``save_pretrained`` writes it (``config.json`` and
    ``model.safetensors``)."""
    path = Path(source)
    if not path.is_dir():
        return read_state_dict(path), {}
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} is a folder without config.json; give an smp state dict file or a folder written by smp's save_pretrained")
    config = json.loads(config_file.read_text())
    if config.get("_model_class") not in ("DeepLabV3", "DeepLabV3Plus"):
        raise ValueError(f"{path} holds an smp {config.get('_model_class')}, not a DeepLabV3 or DeepLabV3Plus")
    return read_state_dict(path / "model.safetensors"), config


def load_smp_deeplabv3(model: MultiTaskModel, weights: str | os.PathLike, *, task: str | None = None) -> str:
    """Loads segmentation_models_pytorch ``DeepLabV3``/``DeepLabV3Plus`` weights with a timm (``tu-``) encoder into the
    backbone and one head; the model's other heads keep their initialisation.

    The backbone must be the encoder's timm model (``tu-resnet50`` -> ``resnet50``) at smp's output stride (8 for
    DeepLabV3, 16 for DeepLabV3Plus by default), and the head must compute what smp's decoder and segmentation head do:
    see :func:`smp_head_spec` (for a DeepLabV3Plus: ``{type: deeplabv3plus, separable: true, depthwise_norm: false,
    aspp_conv: true, decoder_convs: 1, align_corners: true, upsampling: 4, rates: [12, 24, 36]}``). Then both models
    give the same outputs for inputs normalised as smp expects (our model normalises them itself). smp's own ResNet
    encoders are refused: they dilate every convolution of a dilated stage, timm's dilate a stage's first block less.

    Args:
        model: The model to fill.
        weights: An smp state dict file (``torch.save(model.state_dict())`` or safetensors), or a folder written by
            smp's ``save_pretrained`` (its ``config.json`` is checked against the model too).
        task: The task whose head receives the decoder; by default the first with the matching head type and as many
            output channels as smp's ``classes``.

    Returns:
        The task that received the decoder.
    """
    state, config = read_smp(weights)
    if any(key.startswith("encoder.") and not key.startswith("encoder.model.") for key in state):
        raise ValueError(
            f"{weights} has one of smp's own encoders, which dilate every convolution of a stage (timm dilates the first "
            "block less), so no timm backbone computes the same; use an smp model with a tu- encoder (encoder_name='tu-resnet50')"
        )
    if "segmentation_head.0.weight" not in state:
        raise ValueError(f"{weights} is not an smp DeepLabV3 or DeepLabV3Plus state dict (no segmentation_head.0.weight)")
    if getattr(model, "trunk", None) is not None:
        raise ValueError("smp DeepLabV3 weights need a model without model.shared_trunk (each head owns its ASPP)")
    output_stride = model.backbone.output_stride
    spec = smp_head_spec(state, config, output_stride)
    kind = DeepLabV3PlusHead if spec["type"] == "deeplabv3plus" else DeepLabV3Head
    classes = state["segmentation_head.0.weight"].shape[0]
    task = task or next((n for n, h in model.heads.items() if type(h) is kind and h.classifier.out_channels == classes), None)
    smp_name = "DeepLabV3Plus" if kind is DeepLabV3PlusHead else "DeepLabV3"
    wanted = ", ".join(f"{key}: {value}" for key, value in spec.items()).replace("'", "")
    if task is None or type(model.heads[task]) is not kind:
        raise ValueError(f"{weights} is an smp {smp_name} with {classes} classes: give a task with {classes} outputs the head {{{wanted}}}")
    problems = _smp_head_problems(model.heads[task], spec)
    encoder = config.get("encoder_name", f"tu-{model.backbone.name}")
    stride = config.get("encoder_output_stride", 16 if kind is DeepLabV3PlusHead else 8)
    if encoder != f"tu-{model.backbone.name}":
        problems.append(f"model.backbone {model.backbone.name!r} (smp's encoder is {encoder})")
    if stride != output_stride:
        problems.append(f"model.output_stride {output_stride} (smp runs at {stride})")
    if problems:
        assumed = "" if config else " (a bare state dict does not record rates, upsampling or stride: smp's defaults are assumed; give the folder smp's save_pretrained writes for others)"
        raise ValueError(f"{weights} is an smp {smp_name}: tasks.{task}.head needs {{{wanted}}}; differing: {', '.join(problems)}{assumed}")
    converted = smp_deeplabv3_to_multitask(state, task)
    _load_converted(model, converted, task, weights, f"it needs the smp model's timm backbone and tasks.{task}.head {{{wanted}}}")
    return task


def _smp_head_problems(head: torch.nn.Module, spec: Mapping[str, Any]) -> list[str]:
    """What of ``spec`` a head does not do that its weights cannot show (rates, resizing)."""
    aspp = head.aspp if isinstance(head, DeepLabV3PlusHead) else head.trunk[0]
    rates = [branch[0].dilation[0] for branch in aspp.convs[1:-1]]
    problems = [f"rates {rates}"] if rates != spec["rates"] else []
    if head.upsampling != spec["upsampling"]:
        problems.append(f"upsampling {head.upsampling}")
    if spec.get("align_corners") and not head.align_corners:
        problems.append("align_corners false")
    return problems


def init_from(model: MultiTaskModel, source: str) -> None:
    """Initialises ``model`` from a ``scheme:path`` source named in a recipe's ``model.init_from``."""
    scheme, _, path = source.partition(":")
    if scheme not in SCHEMES or not path:
        raise ValueError(
            f"model.init_from {source!r} is not understood: use '{TORCHVISION_DEEPLABV3}:/path/to/weights.pth' or "
            f"'{SMP_DEEPLABV3}:/path/to/smp_model.pth' (an smp DeepLabV3 or DeepLabV3Plus)"
        )
    if scheme == SMP_DEEPLABV3:
        load_smp_deeplabv3(model, path)
    else:
        load_torchvision_deeplabv3(model, path)
