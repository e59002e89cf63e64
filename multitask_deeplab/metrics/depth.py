"""The standard monocular depth metrics over a whole split."""

from __future__ import annotations

import math

import torch

from multitask_deeplab.config.validation import check_choice, check_number
from multitask_deeplab.metrics.base import Metrics, ratio

EIGEN_CROP = (45 / 480, 471 / 480, 41 / 640, 601 / 640)
"""The NYUv2 evaluation crop of Eigen et al. (2014), rows 45:471 and columns 41:601 of the 480 x 640 frame, as
shares of the height and width (top, bottom, left, right)."""
CROPS = (None, "eigen")
AVERAGES = ("pixel", "image")


def crop_mask(height: int, width: int, crop: str | None, device: torch.device) -> torch.Tensor:
    """``H x W`` bool mask of the evaluated region: everything, or the Eigen crop scaled to the image size."""
    mask = torch.ones(height, width, dtype=torch.bool, device=device)
    if crop == "eigen":
        top, bottom, left, right = EIGEN_CROP
        mask[:] = False
        mask[round(top * height) : round(bottom * height), round(left * width) : round(right * width)] = True
    return mask


class DepthMetrics(Metrics):
    """The standard monocular depth metrics (Eigen et al. 2014) plus ``abs_err`` (MTAN, LibMTL).

    Pixels count when the target is finite, > ``min_depth`` and < ``max_depth`` (if set), and lie inside the
    ``crop``. Predictions are clamped to ``[min_depth, max_depth]`` first (the BTS and AdaBins NYUv2 protocol is
    ``min_depth: 1e-3, max_depth: 10, crop: eigen``).

    ``average: pixel`` (the default, as LibMTL and Multi-Task-Learning-PyTorch): every metric is pixel-weighted over
    the whole split (sums over every valid pixel, in float64, divided by the pixel count); ``rmse`` and ``rmse_log``
    are the roots of split-wide means. ``average: image`` (monodepth2, BTS, AdaBins, ASTMT): each metric is computed
    per image (``rmse`` as the root of the image's mean) and the image values are averaged; images without a valid
    pixel are left out.

    Returns ``abs_rel`` (mean |p - t| / t), ``sq_rel`` (mean (p - t)^2 / t), ``rmse``, ``rmse_log`` (natural
    log), ``log10`` (mean |log10 p - log10 t|), ``delta1/2/3`` (share of pixels with max(p/t, t/p) < 1.25,
    1.25^2, 1.25^3) and ``abs_err`` (mean |p - t|, metres).

    Args:
        min_depth: Smallest valid target depth (exclusive), and the lower clamp of predictions.
        max_depth: Largest valid target depth (exclusive), and the upper clamp of predictions; ``None`` for none.
        crop: ``None`` (the whole image) or ``"eigen"`` (:data:`EIGEN_CROP`, scaled to the image size).
        average: ``"pixel"`` or ``"image"``.
    """

    HIGHER_IS_BETTER = {
        "abs_rel": False, "sq_rel": False, "rmse": False, "rmse_log": False, "log10": False,
        "delta1": True, "delta2": True, "delta3": True, "abs_err": False,
    }
    _SUMS = ("abs_rel", "sq_rel", "sq_err", "sq_log", "log10", "abs_err")
    _COUNTS = ("count", "delta1", "delta2", "delta3")

    def __init__(self, min_depth: float = 1e-3, max_depth: float | None = None, *, crop: str | None = None, average: str = "pixel") -> None:
        self.min_depth = check_number("depth metrics", "min_depth", min_depth, low=0.0, low_open=True)
        self.max_depth = None
        if max_depth is not None:
            self.max_depth = check_number("depth metrics", "max_depth", max_depth, low=self.min_depth, low_open=True)
        self.crop = check_choice("depth metrics", "crop", crop, CROPS)
        self.average = check_choice("depth metrics", "average", average, AVERAGES)
        super().__init__()

    def empty_state(self) -> dict[str, torch.Tensor]:
        sums = {name: torch.zeros((), dtype=torch.float64) for name in self._SUMS}
        images = {f"image_{name}": torch.zeros((), dtype=torch.float64) for name in self.HIGHER_IS_BETTER}
        counts = {name: torch.zeros((), dtype=torch.int64) for name in (*self._COUNTS, "images")}
        return {**sums, **counts, **images}

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
        if self.crop is not None:
            valid &= crop_mask(*target.shape[-2:], self.crop, target.device)
        if self.average == "pixel":
            self.accumulate(**self._sums(pred[valid], target[valid]))
            return
        for image in range(pred.shape[0]):
            sums = self._sums(pred[image][valid[image]], target[image][valid[image]])
            if int(sums["count"]) > 0:
                values = self._metrics(sums)
                self.accumulate(images=torch.tensor(1), **{f"image_{name}": torch.tensor(v, dtype=torch.float64) for name, v in values.items()})

    def _sums(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sums and counts of the state over the given valid pixels (1-D ``pred`` and ``target``)."""
        t = target.double()
        p = pred.double().clamp(self.min_depth, self.max_depth)
        error = p - t
        fold = torch.maximum(p / t, t / p)
        return {
            "abs_rel": (error.abs() / t).sum(),
            "sq_rel": (error**2 / t).sum(),
            "sq_err": (error**2).sum(),
            "sq_log": ((p.log() - t.log()) ** 2).sum(),
            "log10": (p.log10() - t.log10()).abs().sum(),
            "abs_err": error.abs().sum(),
            "count": torch.tensor(t.numel(), device=t.device),
            **{f"delta{k}": (fold < 1.25**k).sum() for k in (1, 2, 3)},
        }

    def _metrics(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """The metrics of one set of sums (a split, or one image)."""
        n = float(sums["count"])
        mean = {name: ratio(sums[name], n) for name in (*self._SUMS, "delta1", "delta2", "delta3")}
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

    def compute(self) -> dict[str, float]:
        if self.average == "pixel":
            return self._metrics(self.state)
        images = float(self.state["images"])
        return {name: ratio(self.state[f"image_{name}"], images) for name in self.HIGHER_IS_BETTER}

    def describe(self) -> str:
        targets = f"targets in ({self.min_depth:g}, {self.max_depth:g}) m" if self.max_depth else f"targets > {self.min_depth:g} m"
        where = ", Eigen crop" if self.crop == "eigen" else ""
        return f"averaged per {self.average}{' over the split' if self.average == 'pixel' else ''}, {targets} (predictions clamped){where}"
