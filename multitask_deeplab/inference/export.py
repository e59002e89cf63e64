"""ONNX export with dynamic batch, height and width, checked against eager PyTorch with ONNX Runtime.

The exported graph takes ``image`` (``B x C x H x W`` float32 in [0, 1], not normalised: the model normalises
itself) and has one output per task, named by task: segmentation logits, depth in metres, unit normals, each at
the input size. Needs the ``export`` extra: ``pip install -e ".[export]"`` (onnx and onnxruntime).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from multitask_deeplab.models.model import MultiTaskModel
from multitask_deeplab.runtime.files import atomic_write

INPUT_NAME = "image"
DEFAULT_OPSET = 17
TOLERANCE = 1e-4
TRACE_SHAPE = (2, 64, 96)
"""Batch, height and width of the tracing input (distinct values so that no axis gets tied to another)."""
CHECK_SHAPES = ((1, 48, 80), (3, 37, 53))
"""Batch, height and width of the parity checks: sizes unlike the traced one, one of them odd."""


class _TupleOutputs(nn.Module):
    """The model with its output dict as a tuple in task order (ONNX outputs are positional)."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(image)
        return tuple(outputs[name] for name in self.model.task_names)


def require_onnx() -> None:
    """Raises a ``ValueError`` that says what to install when onnx or onnxruntime is missing."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"ONNX export needs {' and '.join(missing)}, which are not installed: "
            'pip install -e ".[export]" (or pip install onnx onnxruntime)'
        )


def export_onnx(model: MultiTaskModel, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> None:
    """Writes ``model`` as ONNX with dynamic batch, height and width, atomically.

    Uses the TorchScript-based exporter (``dynamo=False``), which traces the sizes of ``F.interpolate`` and the
    ASPP pooling broadcast as dynamic shape operations and needs no extra package.

    Args:
        model: The model, exported from CPU in eval mode (its mode is restored).
        path: The ``.onnx`` file to write.
        opset: ONNX opset version.
    """
    require_onnx()
    batch, height, width = TRACE_SHAPE
    sample = torch.rand(batch, model.backbone.in_chans, height, width, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 2: "height", 3: "width"}
    names = model.task_names
    was_training = model.training
    wrapper = _TupleOutputs(model).cpu().eval()

    def write(temp: os.PathLike) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter's notice
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper,
                (sample,),
                str(temp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={name: axes for name in [INPUT_NAME, *names]},
                opset_version=opset,
            )

    try:
        atomic_write(path, write)
    except RuntimeError as error:
        raise ValueError(f"could not export the model to ONNX: {str(error).strip().splitlines()[0]}") from error
    finally:
        model.train(was_training)


def onnx_max_difference(
    model: MultiTaskModel, path: str | os.PathLike, shapes: Sequence[tuple[int, int, int]] = CHECK_SHAPES
) -> float:
    """The largest absolute difference between ONNX Runtime and eager PyTorch over every output.

    Args:
        model: The model the file was exported from (run on CPU in eval mode).
        path: The exported ``.onnx`` file; it is also checked with ``onnx.checker``.
        shapes: ``(batch, height, width)`` of the random test inputs.
    """
    require_onnx()
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output_names = [output.name for output in session.get_outputs()]
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    was_training = model.training
    model.cpu().eval()
    try:
        for batch, height, width in shapes:
            image = torch.rand(batch, model.backbone.in_chans, height, width, generator=generator)
            with torch.inference_mode():
                expected = model(image)
            got = session.run(output_names, {INPUT_NAME: image.numpy()})
            for name, value in zip(output_names, got):
                worst = max(worst, float(np.abs(value - expected[name].numpy()).max()))
    finally:
        model.train(was_training)
    return worst
