"""Saliency metrics over thresholds: the best F-measure (maxF) and the best IoU (mIoU) of binarised maps.

Two conventions are in use for the same names, and their numbers differ a lot on PASCAL-Context:

- ``average: image`` (ASTMT, Multi-Task-Learning-PyTorch): at each threshold, each image's precision
  ``tp / (tp + fp + 1e-12)``, recall ``tp / (tp + fn + 1e-12)`` and IoU (1 when the image has neither a salient
  pixel nor a predicted one) are averaged over the images; F comes from the mean precision and mean recall. Their
  default thresholds are ``linspace(0.2, 0.9, 15)`` and their code uses ``2PR / (P + R)``, i.e. ``beta_squared: 1``.
- ``average: dataset`` (the ATRC and InvPT meters): true-positive, predicted and salient pixels are summed over the
  split at each threshold (0.05 .. 0.95, ``thresholds: 19``) and precision, recall and IoU come from the sums, with
  ``beta_squared: 0.3``.

``max_f`` is ``max over thresholds of (1 + b) P R / (b P + R)`` with ``b = beta_squared`` (the ``+ 1e-12`` of the
per-image code is kept in its denominator), ``miou`` the largest IoU over thresholds. A pixel is predicted salient
at threshold ``t`` when its probability is ``>= t``; unknown target pixels do not count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from multitask_deeplab.config.validation import check_choice, check_number
from multitask_deeplab.metrics.base import Metrics, parse_thresholds

ASTMT_THRESHOLDS = np.linspace(0.2, 0.9, 15).tolist()
"""The thresholds of ASTMT's and Multi-Task-Learning-PyTorch's ``SaliencyMeter``."""
AVERAGES = ("image", "dataset")


class SaliencyMetrics(Metrics):
    """``max_f`` and ``miou`` of saliency maps (see the module docstring for the two averaging conventions).

    Args:
        thresholds: The thresholds, a list or a count of evenly spaced ones (19: 0.05 .. 0.95); by default the 15 of
            ASTMT / Multi-Task-Learning-PyTorch, 0.2 .. 0.9.
        beta_squared: The F-measure's beta^2: 0.3 (the saliency literature, ATRC, InvPT) or 1.
        average: ``"image"`` (mean of per-image precision, recall and IoU) or ``"dataset"`` (sums over the split).
        ignore_value: The target value of unknown pixels.
    """

    HIGHER_IS_BETTER = {"max_f": True, "miou": True}

    def __init__(self, *, thresholds: int | Sequence[float] = ASTMT_THRESHOLDS, beta_squared: float = 0.3,
                 average: str = "image", ignore_value: float = 255.0) -> None:
        self.thresholds = parse_thresholds("saliency metrics", thresholds)
        self.beta_squared = check_number("saliency metrics", "beta_squared", beta_squared, low=0.0, low_open=True)
        self.average = check_choice("saliency metrics", "average", average, AVERAGES)
        self.ignore_value = ignore_value
        super().__init__()

    def empty_state(self) -> dict[str, torch.Tensor]:
        count = len(self.thresholds)
        sums = {name: torch.zeros(count, dtype=torch.int64) for name in ("hits", "predicted", "salient")}
        means = {f"image_{name}": torch.zeros(count, dtype=torch.float64) for name in ("precision", "recall", "iou")}
        return {**sums, **means, "images": torch.zeros((), dtype=torch.int64)}

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds one batch.

        Args:
            pred: ``B x 1 x H x W`` saliency probabilities.
            target: ``B x 1 x H x W`` salient (1), not salient (0) and ``ignore_value`` where unknown.
        """
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 1:
            raise ValueError(f"saliency metrics need B x 1 x H x W pred and target, got {tuple(pred.shape)} and {tuple(target.shape)}")
        valid = (target != self.ignore_value).flatten(1)
        salient = (target.flatten(1) >= 0.5) & valid
        levels = torch.tensor(self.thresholds, device=pred.device, dtype=torch.float32).view(1, -1, 1)
        predicted = (pred.float().flatten(1)[:, None] >= levels) & valid[:, None]  # B x T x N
        hits = (predicted & salient[:, None]).sum(-1).double()
        positives, truth = predicted.sum(-1).double(), salient.sum(-1, keepdim=True).double()
        union = positives + truth - hits
        labelled = valid.any(-1)
        iou = torch.where(union > 0, hits / union.clamp_min(1), torch.ones_like(union))
        self.accumulate(
            hits=hits.sum(0).long(),
            predicted=positives.sum(0).long(),
            salient=truth.sum(0).long().expand(len(self.thresholds)),
            image_precision=(hits / (positives + 1e-12))[labelled].sum(0),
            image_recall=(hits / (truth + 1e-12))[labelled].sum(0),
            image_iou=iou[labelled].sum(0),
            images=labelled.sum(),
        )

    def compute(self) -> dict[str, float]:
        images = int(self.state["images"])
        if images == 0:
            return {"max_f": math.nan, "miou": math.nan}
        if self.average == "image":
            precision, recall, iou = (self.state[f"image_{name}"].cpu().numpy() / images for name in ("precision", "recall", "iou"))
            f = (1 + self.beta_squared) * precision * recall / (self.beta_squared * precision + recall + 1e-12)
        else:
            hits, predicted, salient = (self.state[name].cpu().double().numpy() for name in ("hits", "predicted", "salient"))
            with np.errstate(divide="ignore", invalid="ignore"):
                precision, recall = hits / predicted, hits / salient
                f = np.nan_to_num((1 + self.beta_squared) * precision * recall / (self.beta_squared * precision + recall))
                iou = np.nan_to_num(hits / (predicted + salient - hits))
        return {"max_f": float(np.max(f)), "miou": float(np.max(iou))}

    def describe(self) -> str:
        low, high = self.thresholds[0], self.thresholds[-1]
        where = "per image, then averaged (ASTMT)" if self.average == "image" else "summed over the split (ATRC/InvPT)"
        return f"maxF (beta^2 = {self.beta_squared:g}) and best IoU over {len(self.thresholds)} thresholds {low:.2f}..{high:.2f}, {where}"
