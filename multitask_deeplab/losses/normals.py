"""Surface normal losses, computed in float32 on the pixels whose target normal is valid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multitask_deeplab.losses.base import LOSSES, DenseLoss, check_same_shape, zero_loss
from multitask_deeplab.metrics.normals import valid_normals
from multitask_deeplab.tasks import NormalsTask


class NormalsLoss(DenseLoss):
    """Base class of normals losses: selects the valid pixels and hands them to :meth:`reduce`.

    A pixel is valid when its target normal is finite with length > 0.5 (see :func:`valid_normals`).
    """

    kinds = (NormalsTask,)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss over valid pixels.

        Args:
            pred: ``B x 3 x H x W`` predicted normals (normalised by the losses).
            target: ``B x 3 x H x W`` unit normals, all-zero where unknown.
        """
        check_same_shape(self.name, pred, target)
        if pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"{self.name} needs B x 3 x H x W normals, got {tuple(pred.shape)}")
        valid = valid_normals(target)
        if not valid.any():
            return zero_loss(pred)
        return self.reduce(pred.movedim(1, -1)[valid].float(), target.movedim(1, -1)[valid].float())

    def reduce(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of the valid pixels, given as ``N x 3`` ``pred`` and ``target``."""
        raise NotImplementedError


@LOSSES.register("cosine")
class CosineNormalsLoss(NormalsLoss):
    """Mean of ``1 - cos(angle)`` between the normalised prediction and target over valid pixels: 0 for identical
    directions, 1 for orthogonal ones, 2 for opposite ones."""

    def reduce(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1.0 - (F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(dim=-1)).mean()


@LOSSES.register("normals_l1")
class L1NormalsLoss(NormalsLoss):
    """Mean absolute difference between the normalised prediction and the target, over the three components of the
    valid pixels: Multi-Task-Learning-PyTorch's ``NormalsLoss(normalize=True, norm=1)``, its loss for normals."""

    def reduce(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (F.normalize(pred, dim=-1, eps=1e-12) - target).abs().mean()
