"""Segmentation losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from multitask_deeplab.config.validation import check_number
from multitask_deeplab.losses.base import LOSSES, DenseLoss, zero_loss
from multitask_deeplab.tasks import SegmentationTask, TaskKind


@LOSSES.register("cross_entropy")
class CrossEntropyLoss(DenseLoss):
    """Pixel-wise cross-entropy, exactly ``torch.nn.functional.cross_entropy`` with mean reduction.

    With ``class_weights`` the mean is weighted, as in torch: the sum of weighted losses divided by the sum
    of the weights of the valid pixels' classes.

    Args:
        ignore_index: Target label of pixels that do not count.
        class_weights: One non-negative weight per class, or ``None`` for equal weights.
        label_smoothing: Share of the target mass spread uniformly over the classes, in ``[0, 1]``.
    """

    kinds = (SegmentationTask,)

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"cross_entropy ignore_index must be an integer, got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.label_smoothing = check_number(self.name, "label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.class_weights: torch.Tensor | None
        if class_weights is None:
            self.register_buffer("class_weights", None)
        else:
            if isinstance(class_weights, (str, bytes)) or not isinstance(class_weights, Sequence) or not class_weights:
                raise ValueError(
                    f"cross_entropy class_weights must be a non-empty list of numbers (one per class), "
                    f"got {class_weights!r}"
                )
            weights = [check_number(self.name, "class_weights entry", w, low=0.0) for w in class_weights]
            if not any(weights):
                raise ValueError(
                    f"cross_entropy class_weights are all zero ({class_weights!r}); give some class a weight"
                )
            self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32))

    def check_task(self, task: TaskKind) -> None:
        super().check_task(task)
        if self.class_weights is not None and len(self.class_weights) != task.out_channels:
            raise ValueError(
                f"cross_entropy has {len(self.class_weights)} class_weights but the task has {task.out_channels} "
                "classes; give one weight per class"
            )

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over pixels whose label is not ``ignore_index``.

        Args:
            pred: ``B x C x H x W`` logits.
            target: ``B x H x W`` integer labels in ``[0, C)`` or ``ignore_index``.
        """
        if pred.dim() != 4 or target.shape != (pred.shape[0], *pred.shape[2:]):
            raise ValueError(
                f"cross_entropy needs B x C x H x W logits and a B x H x W target, "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        num_classes = pred.shape[1]
        valid = target != self.ignore_index
        if not valid.any():
            return zero_loss(pred)
        labels = target[valid]
        out_of_range = (labels < 0) | (labels >= num_classes)
        if out_of_range.any():
            raise ValueError(
                f"cross_entropy target holds label {int(labels[out_of_range][0])}, outside [0, {num_classes}) "
                f"and not ignore_index {self.ignore_index}; fix the labels or the ignore_index"
            )
        weight = None if self.class_weights is None else self.class_weights.to(pred.device, pred.dtype)
        return F.cross_entropy(
            pred, target, weight=weight, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )
