"""The standard monocular depth metrics over a whole split."""

from __future__ import annotations

import math

import torch

from multitask_deeplab.config.validation import check_number
from multitask_deeplab.metrics.base import Metrics, ratio


class DepthMetrics(Metrics):
    """The standard monocular depth metrics (Eigen et al. 2014) plus ``abs_err`` (MTAN, LibMTL).

    Pixels count when the target is finite, > ``min_depth`` and < ``max_depth`` (if set). Predictions are
    clamped to ``[min_depth, max_depth]`` first. All metrics are pixel-weighted over the whole split (sums
    over every valid pixel, in float64, divided by the pixel count), unlike the per-image averaging of the
    BTS/AdaBins evaluation scripts; ``rmse`` and ``rmse_log`` are the roots of split-wide means.

    Returns ``abs_rel`` (mean |p - t| / t), ``sq_rel`` (mean (p - t)^2 / t), ``rmse``, ``rmse_log`` (natural
    log), ``log10`` (mean |log10 p - log10 t|), ``delta1/2/3`` (share of pixels with max(p/t, t/p) < 1.25,
    1.25^2, 1.25^3) and ``abs_err`` (mean |p - t|, metres).

    Args:
        min_depth: Smallest valid target depth (exclusive), and the lower clamp of predictions.
        max_depth: Largest valid target depth (exclusive), and the upper clamp of predictions; ``None`` for none.
    """

    HIGHER_IS_BETTER = {
        "abs_rel": False, "sq_rel": False, "rmse": False, "rmse_log": False, "log10": False,
        "delta1": True, "delta2": True, "delta3": True, "abs_err": False,
    }
    _SUMS = ("abs_rel", "sq_rel", "sq_err", "sq_log", "log10", "abs_err")
    _COUNTS = ("count", "delta1", "delta2", "delta3")

    def __init__(self, min_depth: float = 1e-3, max_depth: float | None = None) -> None:
        self.min_depth = check_number("depth metrics", "min_depth", min_depth, low=0.0, low_open=True)
        self.max_depth = None
        if max_depth is not None:
            self.max_depth = check_number("depth metrics", "max_depth", max_depth, low=self.min_depth, low_open=True)
        super().__init__()

    def empty_state(self) -> dict[str, torch.Tensor]:
        sums = {name: torch.zeros((), dtype=torch.float64) for name in self._SUMS}
        return {**sums, **{name: torch.zeros((), dtype=torch.int64) for name in self._COUNTS}}

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds one batch.

        Args:
            pred: ``B x 1 x H x W`` predicted depth in metres.
            target: ``B x 1 x H x W`` depth in metres, 0 (or non-finite) where unknown.
        """
        if pred.shape != target.shape:
            raise ValueError(f"depth pred {tuple(pred.shape)} does not match target {tuple(target.shape)}")
        valid = torch.isfinite(target) & (target > self.min_depth)
        if self.max_depth is not None:
            valid &= target < self.max_depth
        t = target[valid].double()
        p = pred[valid].double().clamp(self.min_depth, self.max_depth)
        error = p - t
        ratio = torch.maximum(p / t, t / p)
        self.accumulate(
            abs_rel=(error.abs() / t).sum(),
            sq_rel=(error**2 / t).sum(),
            sq_err=(error**2).sum(),
            sq_log=((p.log() - t.log()) ** 2).sum(),
            log10=(p.log10() - t.log10()).abs().sum(),
            abs_err=error.abs().sum(),
            count=valid.sum(),
            **{f"delta{k}": (ratio < 1.25**k).sum() for k in (1, 2, 3)},
        )

    def compute(self) -> dict[str, float]:
        n = float(self.state["count"])
        mean = {name: ratio(self.state[name], n) for name in (*self._SUMS, "delta1", "delta2", "delta3")}
        return {
            "abs_rel": mean["abs_rel"],
            "sq_rel": mean["sq_rel"],
            "rmse": math.sqrt(mean["sq_err"]),
            "rmse_log": math.sqrt(mean["sq_log"]),
            "log10": mean["log10"],
            "delta1": mean["delta1"],
            "delta2": mean["delta2"],
            "delta3": mean["delta3"],
            "abs_err": mean["abs_err"],
        }
