"""Angular-error metrics of surface normals over a whole split."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from multitask_deeplab.metrics.base import Metrics, ratio


def valid_normals(target: torch.Tensor) -> torch.Tensor:
    """``B x H x W`` mask of pixels whose ``B x 3 x H x W`` target normal is finite with length > 0.5.

    All-zero targets mark unknown pixels.
    """
    return torch.isfinite(target).all(dim=1) & (torch.linalg.vector_norm(target, dim=1) > 0.5)


class NormalsMetrics(Metrics):
    """Angular error, in degrees, between normalised predicted and target normals on valid pixels.

    A pixel is valid when its target normal is finite with length > 0.5 (as for the ``cosine`` loss).
    ``mean_angle`` and the ``within_<t>`` shares (angle < t degrees) are exact. ``median_angle`` comes from
    a fixed histogram of 18000 bins of 0.01 degree, so the state stays fixed-size and sums across
    processes; it is the centre of the median's bin (the mean of the two middle bins for an even count),
    within 0.005 degree of the exact median.
    """

    HIGHER_IS_BETTER = {
        "mean_angle": False, "median_angle": False, "within_11.25": True, "within_22.5": True, "within_30": True,
    }
    BIN_WIDTH = 0.01
    NUM_BINS = 18000
    THRESHOLDS = {"within_11.25": 11.25, "within_22.5": 22.5, "within_30": 30.0}

    def empty_state(self) -> dict[str, torch.Tensor]:
        counts = {name: torch.zeros((), dtype=torch.int64) for name in ("count", *self.THRESHOLDS)}
        return {
            "histogram": torch.zeros(self.NUM_BINS, dtype=torch.int64),
            "angle_sum": torch.zeros((), dtype=torch.float64),
            **counts,
        }

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds one batch.

        Args:
            pred: ``B x 3 x H x W`` predicted normals (normalised here).
            target: ``B x 3 x H x W`` normals, all-zero where unknown.
        """
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"normals metrics need B x 3 x H x W pred and target, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        valid = valid_normals(target)
        p = F.normalize(pred.movedim(1, -1)[valid].double(), dim=-1)
        t = F.normalize(target.movedim(1, -1)[valid].double(), dim=-1)
        # 2 atan2(|p - t|, |p + t|) is accurate at every angle, unlike acos of the cosine near 0 and 180
        # degrees, and gives 90 degrees for an all-zero prediction.
        angle = torch.rad2deg(2 * torch.atan2((p - t).norm(dim=-1), (p + t).norm(dim=-1)))
        bins = (angle / self.BIN_WIDTH).long().clamp(0, self.NUM_BINS - 1)
        self.accumulate(
            histogram=torch.bincount(bins, minlength=self.NUM_BINS),
            angle_sum=angle.sum(),
            count=valid.sum(),
            **{name: (angle < limit).sum() for name, limit in self.THRESHOLDS.items()},
        )

    def median(self) -> float:
        """The median angle from the histogram (NaN when empty)."""
        histogram = self.state["histogram"].cpu()
        n = int(histogram.sum())
        if n == 0:
            return math.nan
        cumulative = histogram.cumsum(0)
        middle = torch.tensor([(n - 1) // 2, n // 2])
        bins = torch.searchsorted(cumulative, middle, right=True)
        return float(((bins.double() + 0.5) * self.BIN_WIDTH).mean())

    def compute(self) -> dict[str, float]:
        n = float(self.state["count"])
        return {
            "mean_angle": ratio(self.state["angle_sum"], n),
            "median_angle": self.median(),
            **{name: ratio(self.state[name], n) for name in self.THRESHOLDS},
        }
