"""Semantic segmentation: one class id per pixel, ``ignore_index`` where unknown."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from multitask_deeplab import visualize
from multitask_deeplab.metrics.segmentation import SegmentationMetrics
from multitask_deeplab.tasks.base import TASKS, TaskKind


@TASKS.register("segmentation")
class SegmentationTask(TaskKind):
    """Per-pixel classification into ``num_classes`` classes; the head outputs logits.

    Target: ``H x W`` int64 class ids, ``ignore_index`` where unknown (and in augmentation padding). Predictions are
    softmax probabilities, written by ``mtdl predict`` as a palette PNG of ids and a colour overlay.

    Args:
        num_classes: Number of classes (>= 2).
        ignore_index: The label of unknown pixels; outside ``[0, num_classes)``.
        class_names: One name per class, for per-class metrics and legends.
        base: ``target`` (see :class:`TaskKind`).
    """

    default_target = "seg"
    default_loss: ClassVar[Mapping[str, Any]] = {"type": "cross_entropy"}
    primary_metric = "miou"
    delta_m_metrics = ("miou", "pixel_acc")
    target_channels = None
    target_dtype = torch.int64
    classification = True
    comparison = "agreement"

    def __init__(self, *, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None, **base: Any) -> None:
        super().__init__(**base)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2 (the number of classes), got {num_classes!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index must be an integer outside the class ids 0..{num_classes - 1}, got {ignore_index!r}"
            )
        if class_names is not None and (isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names)):
            raise ValueError(
                f"class_names must be a list of strings, got {class_names!r}; quote names that YAML reads as something "
                "else (yes, no, on, off, numbers)"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}; give one name per class")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = None if class_names is None else list(class_names)

    @property
    def out_channels(self) -> int:
        return self.num_classes

    @property
    def invalid_value(self) -> float:
        return float(self.ignore_index)

    def loss_defaults(self) -> dict[str, Any]:
        return {"ignore_index": self.ignore_index}

    def invalid_target(self, height: int, width: int) -> Tensor:
        return torch.full((height, width), self.ignore_index, dtype=torch.int64)

    def example_target(self, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        return torch.randint(0, self.num_classes, (batch, height, width), generator=generator)

    def check_target(self, target: Tensor, source: str) -> tuple[Tensor, Counter]:
        target, counts = super().check_target(target, source)
        bad = ((target < 0) | (target >= self.num_classes)) & (target != self.ignore_index)
        if bad.any():
            values = torch.unique(target[bad]).tolist()
            shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
            raise ValueError(
                f"{source}: class ids {shown} are outside the classes 0..{self.num_classes - 1} and ignore "
                f"{self.ignore_index}; check num_classes and the label encoding"
            )
        return target, counts

    def accepts(self, provided: TaskKind) -> str | None:
        reason = super().accepts(provided)
        if reason is not None or not isinstance(provided, SegmentationTask):
            return reason
        if provided.num_classes != self.num_classes:
            return f"the dataset's {provided.target!r} has {provided.num_classes} classes, the task {self.num_classes}: set num_classes: {provided.num_classes}"
        if provided.ignore_index != self.ignore_index:
            return f"the dataset marks unknown pixels of {provided.target!r} with {provided.ignore_index}, the task with {self.ignore_index}: set ignore_index: {provided.ignore_index}"
        return None

    def prediction(self, output: Tensor) -> Tensor:
        return output.softmax(dim=1)

    def compare(self, reference: Tensor, candidate: Tensor) -> Tensor:
        """1 where both predict the same class, else 0: the mean is the share of pixels that agree."""
        return (reference.argmax(1) == candidate.argmax(1)).to(reference.dtype)

    def to_numpy(self, prediction: Tensor, *, probabilities: bool = False) -> dict[str, np.ndarray]:
        result = {"": prediction.argmax(dim=0).cpu().numpy()}
        if probabilities:
            result["_probs"] = prediction.float().cpu().numpy()
        return result

    def colorize(self, value: Tensor | np.ndarray, *, reference: Tensor | np.ndarray | None = None, options: visualize.PictureOptions | None = None) -> np.ndarray:
        labels = value.argmax(0) if value.ndim == 3 else value
        return visualize.colorize_segmentation(labels, self.num_classes, self.ignore_index)

    def write_prediction(self, folder: Path, stem: str, prediction: np.ndarray, image: np.ndarray, *, options: visualize.PictureOptions) -> np.ndarray:
        visualize.save_png(prediction.astype(np.uint8), folder / f"{stem}.png", palette=visualize.segmentation_palette(self.num_classes))
        panel = visualize.overlay(image, self.colorize(prediction))
        visualize.save_png(panel, folder / f"{stem}_overlay.png")
        return panel

    def metrics(self, *, classes: str = "present") -> SegmentationMetrics:
        """The confusion-matrix metrics; ``classes`` (``eval.protocol``): ``"present"`` or ``"all"``, the classes
        mIoU averages over (see :class:`~multitask_deeplab.metrics.segmentation.SegmentationMetrics`)."""
        return SegmentationMetrics(self.num_classes, self.ignore_index, self.class_names, classes=classes)

    def describe(self) -> str:
        return f"segmentation ({self.num_classes} classes)"

    def __repr__(self) -> str:
        return f"SegmentationTask(num_classes={self.num_classes}, ignore_index={self.ignore_index}, target={self.target!r})"
