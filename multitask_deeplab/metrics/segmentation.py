"""Confusion-matrix metrics of a segmentation over a whole split."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from multitask_deeplab.config.validation import check_choice
from multitask_deeplab.metrics.base import Metrics, ratio

MIOU_CLASSES = ("present", "all")


def _check_labels(what: str, labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Raises when ``labels`` hold a value outside ``[0, num_classes)``."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"segmentation {what} holds class {int(labels[bad][0])}, outside [0, {num_classes}) and not "
            f"ignore_index {ignore_index}; fix num_classes or the labels"
        )


class SegmentationMetrics(Metrics):
    """Confusion-matrix metrics: mIoU, pixel accuracy, mean class accuracy and per-class IoU.

    With ``classes: present`` (the default, as torchmetrics and mmseg) ``miou`` averages the IoU of the classes with
    a non-zero union (present in the target or predicted somewhere in the split); classes never seen nor predicted
    are left out of the mean. With ``classes: all`` it averages over all ``num_classes`` classes, such a class
    counting 0 (Multi-Task-Learning-PyTorch's ``tp / max(tp + fp + fn, 1e-8)``; LibMTL's plain mean would be NaN
    there). Either way that class's ``iou/<name>`` is NaN. ``mean_acc`` averages recall over the classes present in
    the target. Pixels labelled ``ignore_index`` do not count.

    Args:
        num_classes: Number of classes (>= 2).
        ignore_index: Target label of pixels to skip; must lie outside ``[0, num_classes)``.
        class_names: One name per class for the ``iou/<name>`` keys; ``class_<i>`` by default.
        classes: Which classes ``miou`` averages over: ``"present"`` or ``"all"``.
    """

    HIGHER_IS_BETTER = {"miou": True, "pixel_acc": True, "mean_acc": True}
    PREFIXES = {"iou/": True}

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None, *, classes: str = "present"
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"segmentation metrics need an integer num_classes >= 2, got {num_classes!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or 0 <= ignore_index < num_classes:
            raise ValueError(
                f"segmentation metrics need an integer ignore_index outside [0, {num_classes}), got "
                f"{ignore_index!r}; a class id as ignore_index would count that class only when predicted"
            )
        names = [f"class_{i}" for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(
                f"segmentation metrics need {num_classes} distinct class_names, got {list(class_names or [])}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = names
        self.classes = check_choice("segmentation metrics", "classes", classes, MIOU_CLASSES)
        super().__init__()

    def empty_state(self) -> dict[str, torch.Tensor]:
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    @property
    def confusion(self) -> torch.Tensor:
        """``num_classes x num_classes`` int64 counts; rows are target classes, columns predicted ones."""
        return self.state["confusion"]

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds one batch.

        Args:
            pred: ``B x C x H x W`` logits (arg-maxed here) or a ``B x H x W`` integer class map.
            target: ``B x H x W`` integer labels, ``ignore_index`` where unknown.
        """
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"segmentation metrics expect {self.num_classes} logit channels, got {pred.shape[1]} "
                    f"(pred shape {tuple(pred.shape)})"
                )
            pred = pred.argmax(dim=1)
        elif pred.is_floating_point():
            raise ValueError(f"a segmentation class map must hold integers, got dtype {pred.dtype}")
        if pred.shape != target.shape:
            raise ValueError(
                f"segmentation pred {tuple(pred.shape)} does not match target {tuple(target.shape)}; give "
                "B x C x H x W logits or a B x H x W class map with a B x H x W target"
            )
        valid = target != self.ignore_index
        labels, predicted = target[valid].long(), pred[valid].long()
        _check_labels("target", labels, self.num_classes, self.ignore_index)
        _check_labels("prediction", predicted, self.num_classes, self.ignore_index)
        counts = torch.bincount(labels * self.num_classes + predicted, minlength=self.num_classes**2)
        self.accumulate(confusion=counts.reshape(self.num_classes, self.num_classes))

    def compute(self) -> dict[str, float]:
        confusion = self.confusion.cpu().double()
        hits = confusion.diag()
        support, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
        union = support + predicted - hits
        iou = [ratio(h, u) for h, u in zip(hits, union)]
        present = [value for value, u in zip(iou, union) if u > 0]
        divisor = len(present) if self.classes == "present" else self.num_classes
        recalls = [ratio(h, s) for h, s in zip(hits, support) if s > 0]
        return {
            "miou": ratio(sum(present), divisor) if present else math.nan,
            "pixel_acc": ratio(hits.sum(), confusion.sum()),
            "mean_acc": ratio(sum(recalls), len(recalls)),
            **{f"iou/{name}": value for name, value in zip(self.class_names, iou)},
        }

    def describe(self) -> str:
        if self.classes == "all":
            return f"mIoU over all {self.num_classes} classes, a class absent from target and prediction counting 0"
        return "mIoU over the classes present in the split (in the target or the prediction)"


class LabelledImagesMetrics(SegmentationMetrics):
    """Segmentation metrics that also count the images with a label (any pixel not ``ignore_index``) as ``images``.

    For a task whose label only some images have (human parts exist only where people are): the other images add
    nothing to the confusion matrix, so every metric is over the labelled images, and ``images`` says how many.
    """

    HIGHER_IS_BETTER = {**SegmentationMetrics.HIGHER_IS_BETTER, "images": True}

    def empty_state(self) -> dict[str, torch.Tensor]:
        return {**super().empty_state(), "images": torch.zeros((), dtype=torch.int64)}

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        super().update(pred, target)
        self.accumulate(images=(target != self.ignore_index).flatten(1).any(1).sum())

    def compute(self) -> dict[str, float]:
        return {**super().compute(), "images": float(self.state["images"])}

    def describe(self) -> str:
        return f"{super().describe()}; over the images that have the label"
