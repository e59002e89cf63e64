"""Post-training static int8 quantization of an exported model with ONNX Runtime (QDQ format), for the CPU.

Weights are quantized to int8 per output channel; activations to uint8 per tensor, with ranges set by the
smallest and largest values seen on a few calibration images (ONNX Runtime's MinMax calibration). The graph is
first prepared by ONNX Runtime's ``quant_pre_process`` (ONNX shape inference, constant folding, fusions; its
symbolic shape inference, meant for transformers, gives up on some of these graphs and is skipped). On a CPU
without VNNI instructions, weights use 7 bits (``reduce_range``): ONNX Runtime's uint8 x int8 kernels there can
saturate their 16-bit intermediate sums, which VNNI's do not.

Each task's output tail stays in float32: the last convolution on every path to an output, and everything after
it (the upsampling to the input size, the depth activation, the normals' normalisation). Quantizing it would
round logits, depth and normals to 256 levels per tensor before the outputs, which costs far more accuracy than
the few cheap layers it would speed up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from multitask_deeplab.runtime.files import atomic_write

if TYPE_CHECKING:
    import onnx

    from multitask_deeplab.config.recipe import Recipe

CALIBRATION_IMAGES = 32
"""Training images the int8 activation ranges are calibrated on, by default."""


def quantize_onnx(source: str | os.PathLike, target: str | os.PathLike, images: Iterable[torch.Tensor]) -> None:
    """Writes an int8 (QDQ) copy of the float32 ONNX model ``source`` to ``target``, atomically.

    Args:
        source: An ONNX file written by :func:`~multitask_deeplab.inference.export.export_onnx`.
        target: The int8 ``.onnx`` file to write.
        images: Calibration images, ``C x H x W`` in [0, 1] (each run as a batch of one; sizes may differ).
    """
    from multitask_deeplab.inference.export import INPUT_NAME, require_onnx

    require_onnx()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [image.detach().float().cpu()[None].numpy() for image in images]
    if not batches:
        raise ValueError("int8 calibration needs at least one image; pass a few training images")
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        tail = float_tail(onnx.load(str(prepared)).graph)

        def write(temp: Path) -> None:
            quantize_static(
                str(prepared),
                str(temp),
                _Images(batches, INPUT_NAME),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=not getattr(torch.cpu, "_is_vnni_supported", lambda: False)(),
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=tail,
            )

        atomic_write(target, write)


def float_tail(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that stay in float32: every node on a path back from a graph output up to and including
    the first convolution met (shape computations are not followed: they carry sizes, not values)."""
    producers = {output: node for node in graph.node for output in node.output}
    tail: dict[str, None] = {}
    stack = [producers[output.name] for output in graph.output if output.name in producers]
    while stack:
        node = stack.pop()
        if node.name in tail:
            continue
        tail[node.name] = None
        if node.op_type != "Conv":
            stack += [producers[name] for name in node.input if name in producers and producers[name].op_type != "Shape"]
    return list(tail)


def sample_images(recipe: Recipe, count: int = CALIBRATION_IMAGES, split: str = "train") -> list[torch.Tensor]:
    """``count`` images spread evenly over one of the recipe's splits (all of them when it has fewer): int8
    calibration images from the train split, held-out checks from the val split.

    Raises:
        ValueError: the split cannot be read (the message says how to do without it).
    """
    from multitask_deeplab.data.loader import build_dataset

    if count < 1:
        raise ValueError(f"int8 calibration needs at least 1 image, got {count}")
    try:
        dataset = build_dataset(recipe, split)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"reading images from the recipe's {split} split failed: {error}; make the data available, or pass "
            "calibration images yourself: Predictor(..., precision='int8', calibration=[...])"
        ) from error
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    return [dataset[int(index)]["image"] for index in indices]


class _Images:
    """ONNX Runtime's calibration data reader protocol (``get_next``, ``rewind``) over a list of batches."""

    def __init__(self, batches: Sequence[np.ndarray], input_name: str) -> None:
        self.batches, self.input_name, self.position = batches, input_name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position == len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0
