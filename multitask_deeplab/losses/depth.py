"""Depth losses, computed in float32 on the pixels whose target is finite and positive."""

from __future__ import annotations

import torch

from multitask_deeplab.config.validation import check_number
from multitask_deeplab.losses.base import LOSSES, DenseLoss, check_same_shape, zero_loss
from multitask_deeplab.tasks import DepthTask


class DepthLoss(DenseLoss):
    """Base class of depth losses: selects the valid pixels and hands them to :meth:`reduce`."""

    kinds = (DepthTask,)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss over pixels whose target is finite and > 0.

        Args:
            pred: ``B x 1 x H x W`` predicted depth in metres.
            target: ``B x 1 x H x W`` depth in metres, 0 (or non-finite) where unknown.
        """
        check_same_shape(self.name, pred, target)
        valid = torch.isfinite(target) & (target > 0)
        if not valid.any():
            return zero_loss(pred)
        return self.reduce(pred[valid].float(), target[valid].float())

    def reduce(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of the valid pixels, given as 1-D ``pred`` and ``target``."""
        raise NotImplementedError


@LOSSES.register("l1")
class L1DepthLoss(DepthLoss):
    """Mean absolute error over valid pixels."""


    def reduce(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean()


@LOSSES.register("log_l1")
class LogL1DepthLoss(DepthLoss):
    """Mean absolute error of log depth over valid pixels: a relative error, so near and far count alike.

    ``mean |log(pred) - log(target)|``; it punishes a wrong global scale (unlike ``silog`` at full variance
    focus) and reads each pixel's error as a ratio, the way AbsRel and the δ thresholds do.

    Args:
        min_depth: Predictions are clamped to at least this many metres before the log.
    """


    def __init__(self, *, min_depth: float = 1e-3) -> None:
        super().__init__()
        self.min_depth = check_number(self.name, "min_depth", min_depth, low=0.0, low_open=True)

    def reduce(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (torch.log(pred.clamp_min(self.min_depth)) - torch.log(target)).abs().mean()


@LOSSES.register("silog")
class SILogLoss(DepthLoss):
    """Scale-invariant log loss in the form of BTS (Lee et al. 2019) and AdaBins (Bhat et al. 2021).

    ``scale * sqrt(mean(d^2) - variance_focus * mean(d)^2)`` with ``d = log(pred) - log(target)``. This is
    ``scale`` times the square root of Eigen et al.'s (2014) scale-invariant error with ``lambda =
    variance_focus``; ``variance_focus = 1`` makes it fully scale-invariant, 0 gives the RMSE of log depth.
    The value under the root is clamped to 1e-12 so a perfect prediction has a finite gradient.

    Args:
        variance_focus: Eigen's lambda, in ``[0, 1]`` (BTS/AdaBins use 0.85).
        scale: Factor on the root (BTS/AdaBins use 10).
        min_depth: Predictions are clamped to at least this many metres before the log.
    """


    def __init__(self, *, variance_focus: float = 0.85, scale: float = 10.0, min_depth: float = 1e-3) -> None:
        super().__init__()
        self.variance_focus = check_number(self.name, "variance_focus", variance_focus, low=0.0, high=1.0)
        self.scale = check_number(self.name, "scale", scale, low=0.0, low_open=True)
        self.min_depth = check_number(self.name, "min_depth", min_depth, low=0.0, low_open=True)

    def reduce(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = torch.log(pred.clamp_min(self.min_depth)) - torch.log(target)
        variance = (d**2).mean() - self.variance_focus * d.mean() ** 2
        return self.scale * torch.sqrt(variance.clamp_min(1e-12))


@LOSSES.register("berhu")
class BerHuLoss(DepthLoss):
    """Reverse Huber loss of Laina et al. (2016), averaged over valid pixels.

    ``|x|`` where ``|x| <= c`` and ``(x^2 + c^2) / (2c)`` elsewhere, with ``x = pred - target`` and
    ``c = threshold * max |x|`` over the batch's valid pixels (``threshold = 0.2`` in the paper); ``c`` is
    treated as a constant (no gradient flows through the max).

    Args:
        threshold: Fraction of the batch's largest absolute error where the loss turns quadratic, in ``(0, 1]``.
    """


    def __init__(self, *, threshold: float = 0.2) -> None:
        super().__init__()
        self.threshold = check_number(self.name, "threshold", threshold, low=0.0, high=1.0, low_open=True)

    def reduce(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        error = (pred - target).abs()
        c = (self.threshold * error.max()).detach()
        quadratic = (error**2 + c**2) / (2 * c.clamp_min(1e-12))
        return torch.where(error <= c, error, quadratic).mean()
