"""Losses of binary maps (boundaries, saliency)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multitask_deeplab.config.validation import check_number
from multitask_deeplab.losses.base import LOSSES, DenseLoss, check_same_shape, zero_loss
from multitask_deeplab.tasks import BINARY_IGNORE, BinaryMapTask


@LOSSES.register("balanced_bce")
class BalancedBCELoss(DenseLoss):
    """Class-balanced binary cross-entropy (HED, Xie & Tu 2015), as Multi-Task-Learning-PyTorch computes it.

    ``(w * sum over positive pixels of BCE + (1 - w) * sum over negative pixels of BCE) / valid pixels``, where a
    pixel is positive when its target is >= 0.5. ``w`` is ``pos_weight`` when given (0.95 for edges there:
    ``edge_w``), else the batch's share of negative pixels (HED). Pixels whose target is ``ignore_value`` do not count.
    The prediction is a probability; the cross-entropy is torch's (its logarithms are clamped at -100).

    Args:
        pos_weight: The positive pixels' weight in ``[0, 1]``, or ``None`` for HED's per-batch balance.
        ignore_value: Target value of unknown pixels.
    """

    kinds = (BinaryMapTask,)

    def __init__(self, *, pos_weight: float | None = None, ignore_value: float = BINARY_IGNORE) -> None:
        super().__init__()
        self.pos_weight = None if pos_weight is None else check_number(self.name, "pos_weight", pos_weight, low=0.0, high=1.0)
        self.ignore_value = check_number(self.name, "ignore_value", ignore_value)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss over valid pixels.

        Args:
            pred: ``B x 1 x H x W`` probabilities.
            target: ``B x 1 x H x W`` targets, 1 or 0, ``ignore_value`` where unknown.
        """
        check_same_shape(self.name, pred, target)
        valid = target != self.ignore_value
        if not valid.any():
            return zero_loss(pred)
        positive = (target >= 0.5) & valid
        negative = valid & ~positive
        bce = F.binary_cross_entropy(pred.float(), positive.float(), reduction="none")
        count = valid.sum()
        weight = self.pos_weight if self.pos_weight is not None else negative.sum() / count
        return (weight * (bce * positive).sum() + (1 - weight) * (bce * negative).sum()) / count
