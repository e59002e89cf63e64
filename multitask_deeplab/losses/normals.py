"""Surface normal losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multitask_deeplab.losses.base import LOSSES, DenseLoss, check_same_shape, zero_loss
from multitask_deeplab.metrics.normals import valid_normals
from multitask_deeplab.tasks import NormalsTask


@LOSSES.register("cosine")
class CosineNormalsLoss(DenseLoss):
    """Mean of ``1 - cos(angle)`` between the normalised prediction and target over valid pixels.

    A pixel is valid when its target normal is finite with length > 0.5 (see :func:`valid_normals`).
    Computed in float32; 0 for identical directions, 1 for orthogonal ones, 2 for opposite ones.
    """

    kinds = (NormalsTask,)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss over valid pixels.

        Args:
            pred: ``B x 3 x H x W`` predicted normals (normalised here).
            target: ``B x 3 x H x W`` unit normals, all-zero where unknown.
        """
        check_same_shape(self.name, pred, target)
        if pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"cosine needs B x 3 x H x W normals, got {tuple(pred.shape)}")
        valid = valid_normals(target)
        if not valid.any():
            return zero_loss(pred)
        pred_valid = F.normalize(pred.movedim(1, -1)[valid].float(), dim=-1)
        target_valid = F.normalize(target.movedim(1, -1)[valid].float(), dim=-1)
        return (1.0 - (pred_valid * target_valid).sum(dim=-1)).mean()
