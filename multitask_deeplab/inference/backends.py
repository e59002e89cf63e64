"""Inference backends: what runs the model for the :class:`~multitask_deeplab.inference.predictor.Predictor`, and at
which precision.

A backend maps a ``B x C x H x W`` float batch in [0, 1], on the predictor's device, to the model's raw task outputs
``{task: B x C_t x H x W}`` on that device; the predictor pads, flips, tiles and post-processes around it. Backends
are registered in ``BACKENDS`` and built with the model and one :class:`BackendOptions`:

- ``torch``: the PyTorch model itself, float32 or under bf16 autocast, with batch norm folded and in channels-last
  layout by default.
- ``onnxruntime``: the model exported to ONNX (:func:`~multitask_deeplab.inference.export.export_onnx`) and run by
  ONNX Runtime, float32 or int8 after post-training static quantization
  (:func:`~multitask_deeplab.inference.quantize.quantize_onnx`). Needs the ``export`` extra.

A user's backend (TensorRT, OpenVINO, ...) subclasses :class:`Backend`, lists its ``precisions`` and registers itself
with ``@BACKENDS.register("name")``.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from multitask_deeplab.config.validation import check_choice
from multitask_deeplab.models.fuse import fold_batchnorm
from multitask_deeplab.registry import Registry
from multitask_deeplab.runtime.precision import native_bf16

PRECISIONS = ("auto", "fp32", "bf16", "int8")
"""``auto`` is bf16 autocast where the device computes bf16 natively (and the backend runs bf16), else float32;
int8 is never picked automatically."""


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """How a backend runs the model; a backend refuses (``ValueError``) an option it cannot honour.

    Args:
        device: Where the inputs and outputs live and, where the backend can, where it computes.
        precision: ``fp32``, ``bf16`` or ``int8`` (already resolved: never ``auto``), one of the backend's ``precisions``.
        fold_bn: Fold eval-mode batch norms into their convolutions first (into a copy of the model).
        channels_last: Run in channels-last memory layout (``torch``; ONNX Runtime picks its own layouts).
        compile: ``torch.compile`` the model (``torch`` only).
        calibration: ``C x H x W`` images in [0, 1] that set the int8 activation ranges (int8 only).
        exported: A file exported from the model that the backend runs instead of converting the model itself
            (``onnxruntime``: an ``.onnx`` from ``mtdl export``, float32 or int8).
    """

    device: torch.device
    precision: str
    fold_bn: bool = True
    channels_last: bool = True
    compile: bool = False
    calibration: Sequence[torch.Tensor] = ()
    exported: str | os.PathLike | None = None


class Backend(ABC):
    """Runs a model on float batches in [0, 1] and returns its raw outputs keyed by task.

    Args:
        model: The model (a ``MultiTaskModel`` or any module with the same call: image batch in, dict out).
        options: How to run it.

    Attributes:
        precisions: The precisions the backend runs (``fp32``, ``bf16``, ``int8``).
    """

    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, model: nn.Module, options: BackendOptions) -> None:
        check_choice(f"the {type(self).__name__} backend", "precision", options.precision, self.precisions)
        self.options = options

    @property
    def device(self) -> torch.device:
        return self.options.device

    @property
    def precision(self) -> str:
        return self.options.precision

    @abstractmethod
    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: B x C_t x H x W}`` for a ``B x C x H x W`` float batch in [0, 1] on ``device``."""


BACKENDS: Registry[Backend] = Registry("backend", Backend)


def resolve_precision(precision: str, device: torch.device, backend: str) -> str:
    """The precision a backend runs for ``precision`` on ``device``: ``auto`` becomes ``bf16`` where the device
    computes bf16 natively and the backend runs it, else ``fp32``; an explicit one must be the backend's."""
    check_choice("inference", "precision", precision, PRECISIONS)
    supported = BACKENDS.get(backend).precisions
    if precision == "auto":
        return "bf16" if "bf16" in supported and native_bf16(device) else "fp32"
    if precision not in supported:
        others = [name for name in BACKENDS.names() if precision in BACKENDS.get(name).precisions]
        fix = f"use the {' or '.join(others)} backend for {precision}" if others else "no registered backend runs it"
        raise ValueError(f"the {backend} backend runs {', '.join(supported)}, not {precision}: {fix}")
    return precision


def prepare_for_inference(
    model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True, compile: bool = False, inplace: bool = False
) -> nn.Module:
    """``model`` in eval mode with the inference options applied.

    Args:
        fold_bn: Fold eval-mode batch norms into their convolutions (see :func:`~multitask_deeplab.models.fuse.fold_batchnorm`),
            in a copy unless ``inplace``.
        channels_last: Convert the weights to channels-last layout (feed it channels-last inputs too).
        compile: Wrap the result in ``torch.compile``.
    """
    model = fold_batchnorm(model, inplace=inplace) if fold_bn else model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile else model


@BACKENDS.register("torch")
class TorchBackend(Backend):
    """The PyTorch model on ``device``: float32, or bf16 autocast (outputs as the model returns them).

    Attributes:
        model: The module it runs (BN folded, channels-last, compiled, as the options say).
    """

    precisions = ("fp32", "bf16")

    def __init__(self, model: nn.Module, options: BackendOptions) -> None:
        super().__init__(model, options)
        if options.exported is not None:
            raise ValueError(f"the torch backend runs the model itself, not {options.exported}: use the onnxruntime backend for it")
        self.model = prepare_for_inference(
            model.to(options.device), fold_bn=options.fold_bn, channels_last=options.channels_last, compile=options.compile
        )

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.options.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(image)


@BACKENDS.register("onnxruntime")
class OnnxRuntimeBackend(Backend):
    """The model exported to ONNX and run by ONNX Runtime: float32, or int8 (static QDQ quantization, CPU only).

    The model is exported once, when the backend is built (with its batch norms folded unless ``fold_bn`` is
    off; ONNX Runtime would fuse them too), quantized for int8 with the ``calibration`` images, and loaded into one
    ``InferenceSession`` with as many intra-op threads as torch uses; or the ``exported`` file is loaded (its
    outputs must be the model's tasks, and int8 files, which hold quantization nodes, need precision int8). On CUDA
    it needs onnxruntime-gpu's CUDA provider; outputs are copied to ``device``.

    Attributes:
        session: The ONNX Runtime session.
    """

    precisions = ("fp32", "int8")

    def __init__(self, model: nn.Module, options: BackendOptions) -> None:
        super().__init__(model, options)
        from multitask_deeplab.inference.export import export_onnx, require_onnx
        from multitask_deeplab.inference.quantize import quantize_onnx

        require_onnx()
        import onnxruntime

        if options.compile:
            raise ValueError("compile is an option of the torch backend; ONNX Runtime optimises the exported graph itself")
        providers = _providers(options.device, options.precision, onnxruntime.get_available_providers())
        if options.precision == "int8" and not options.calibration and options.exported is None:
            raise ValueError(
                "int8 needs calibration images to set its activation ranges: pass a few training images as calibration "
                "(Predictor.from_checkpoint and mtdl predict take them from the recipe's train split)"
            )
        settings = onnxruntime.SessionOptions()
        settings.intra_op_num_threads = torch.get_num_threads()
        if options.exported is not None:
            self.session = _load_exported(onnxruntime, options.exported, options.precision, settings, providers)
        else:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model.onnx"
                export_onnx(fold_batchnorm(model) if options.fold_bn else model, path)
                if options.precision == "int8":
                    quantize_onnx(path, path.with_suffix(".int8.onnx"), options.calibration)
                    path = path.with_suffix(".int8.onnx")
                self.session = onnxruntime.InferenceSession(str(path), settings, providers=providers)
        self._output_names = [output.name for output in self.session.get_outputs()]
        self._input_name = self.session.get_inputs()[0].name
        tasks = getattr(model, "task_names", None)
        if options.exported is not None and tasks is not None and sorted(tasks) != sorted(self._output_names):
            raise ValueError(
                f"{options.exported} has outputs {', '.join(self._output_names)} but the model's tasks are {', '.join(tasks)}; "
                "export this checkpoint again (mtdl export)"
            )

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        array = image.detach().float().cpu().contiguous().numpy()
        outputs = self.session.run(self._output_names, {self._input_name: array})
        return {name: torch.from_numpy(value).to(self.device) for name, value in zip(self._output_names, outputs)}


def _load_exported(
    onnxruntime: Any, path: str | os.PathLike, precision: str, settings: Any, providers: list
) -> Any:
    """An ``InferenceSession`` of an exported file whose precision (int8 when it holds quantization nodes) is ``precision``."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (OSError, DecodeError) as error:
        raise ValueError(f"cannot read the ONNX file {path}: {error}; give a file written by mtdl export") from error
    stored = "int8" if any(node.op_type == "QuantizeLinear" for node in graph.node) else "fp32"
    if stored != precision:
        raise ValueError(f"{path} is a {stored} model but precision {precision} was asked for; pass precision {stored}")
    return onnxruntime.InferenceSession(str(path), settings, providers=providers)


def _providers(device: torch.device, precision: str, available: Sequence[str]) -> list[str | tuple[str, dict]]:
    """ONNX Runtime's execution providers for ``device``, or a ``ValueError`` naming the fix."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise ValueError(f"the onnxruntime backend runs on cpu or cuda, not {device.type}")
    if precision == "int8":
        raise ValueError("int8 runs on the CPU (ONNX Runtime's int8 kernels): use device cpu for int8")
    if "CUDAExecutionProvider" not in available:
        raise ValueError(
            "this onnxruntime has no CUDA provider (it has " + ", ".join(available) + "): pip install onnxruntime-gpu, "
            "or run the onnxruntime backend on device cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
