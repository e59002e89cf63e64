"""Metric accumulators over a whole split: segmentation, depth and surface normals.

Every accumulator keeps fixed-size sums and counts (never per-batch averages), so the result over a split
does not depend on how it was cut into batches, and ``all_reduce`` sums the state over processes exactly.
Call ``update`` per batch, ``all_reduce`` once after the split (it sums in place: calling it twice double
counts), then ``compute``. A metric with nothing to average (no valid pixel seen) is NaN.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from multitask_deeplab.config.validation import check_number
from multitask_deeplab.losses.normals import valid_normals


class Metrics(ABC):
    """Base class: a dict of state tensors summed over batches and processes.

    Subclasses define ``HIGHER_IS_BETTER`` (every name :meth:`compute` returns, or its prefix for
    per-class names), ``PRIMARY`` (the metric that ranks checkpoints), :meth:`empty_state`, ``update`` and
    ``compute``. The state lives on the device of the latest update.
    """

    HIGHER_IS_BETTER: ClassVar[dict[str, bool]]
    PRIMARY: ClassVar[str]
    PREFIXES: ClassVar[dict[str, bool]] = {}
    """Per-class name prefixes (``"iou/"``) and whether higher is better for names that start with them."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor]
        self.reset()

    @abstractmethod
    def empty_state(self) -> dict[str, torch.Tensor]:
        """Zeroed state tensors (on the CPU)."""

    @abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds one batch."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics over everything added since the last :meth:`reset`."""

    def reset(self) -> None:
        """Forgets everything added so far."""
        self.state = self.empty_state()

    def accumulate(self, **increments: torch.Tensor) -> None:
        """Adds ``increments`` to the state tensors of the same names, moving the state to their device."""
        for name, increment in increments.items():
            self.state[name] = self.state[name].to(increment.device) + increment

    def all_reduce(self) -> None:
        """Sums the state over all processes when ``torch.distributed`` is initialised; a no-op otherwise.

        With the NCCL backend the state is reduced on the current CUDA device, otherwise on the CPU, so a
        process that saw no batch (state still on the CPU) takes part too.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        for name, value in self.state.items():
            reduced = value.to(device)
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            self.state[name] = reduced

    @classmethod
    def higher_is_better(cls, name: str) -> bool:
        """Whether a larger value of metric ``name`` (including per-class names) is better."""
        if name in cls.HIGHER_IS_BETTER:
            return cls.HIGHER_IS_BETTER[name]
        for prefix, higher in cls.PREFIXES.items():
            if name.startswith(prefix):
                return higher
        known = [*cls.HIGHER_IS_BETTER, *(f"{prefix}<class>" for prefix in cls.PREFIXES)]
        raise ValueError(f"{cls.__name__} has no metric {name!r}; its metrics are {', '.join(known)}")


def _ratio(numerator: torch.Tensor | float, denominator: torch.Tensor | float) -> float:
    """``numerator / denominator`` as a float, NaN when the denominator is 0."""
    return float(numerator) / float(denominator) if float(denominator) > 0 else math.nan


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

    ``miou`` averages the IoU of the classes with a non-zero union (present in the target or predicted
    somewhere in the split); classes never seen nor predicted are left out of the mean and their
    ``iou/<name>`` is NaN. ``mean_acc`` averages recall over the classes present in the target. Pixels
    labelled ``ignore_index`` do not count.

    Args:
        num_classes: Number of classes (>= 2).
        ignore_index: Target label of pixels to skip; must lie outside ``[0, num_classes)``.
        class_names: One name per class for the ``iou/<name>`` keys; ``class_<i>`` by default.
    """

    HIGHER_IS_BETTER = {"miou": True, "pixel_acc": True, "mean_acc": True}
    PRIMARY = "miou"
    PREFIXES = {"iou/": True}

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None) -> None:
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
        iou = [_ratio(h, u) for h, u in zip(hits, union)]
        present = [value for value, u in zip(iou, union) if u > 0]
        recalls = [_ratio(h, s) for h, s in zip(hits, support) if s > 0]
        return {
            "miou": _ratio(sum(present), len(present)),
            "pixel_acc": _ratio(hits.sum(), confusion.sum()),
            "mean_acc": _ratio(sum(recalls), len(recalls)),
            **{f"iou/{name}": value for name, value in zip(self.class_names, iou)},
        }


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
    PRIMARY = "abs_rel"
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
        mean = {name: _ratio(self.state[name], n) for name in (*self._SUMS, "delta1", "delta2", "delta3")}
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
    PRIMARY = "mean_angle"
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
            "mean_angle": _ratio(self.state["angle_sum"], n),
            "median_angle": self.median(),
            **{name: _ratio(self.state[name], n) for name in self.THRESHOLDS},
        }


METRICS: dict[str, type[Metrics]] = {
    "segmentation": SegmentationMetrics,
    "depth": DepthMetrics,
    "normals": NormalsMetrics,
}
"""Accumulator class per task kind."""


def build_metrics(kind: str, **task_args: Any) -> Metrics:
    """Builds the accumulator for a task ``kind``.

    Args:
        kind: ``"segmentation"``, ``"depth"`` or ``"normals"``.
        **task_args: Constructor arguments of that kind's class (``num_classes``, ``ignore_index``,
            ``class_names`` for segmentation; ``min_depth``, ``max_depth`` for depth). ``None`` means "use
            the default" and is dropped, so callers may pass the same keys for every kind; any other value
            the class does not take is an error.
    """
    if kind not in METRICS:
        raise ValueError(f"unknown metrics kind {kind!r}: use one of {', '.join(METRICS)}")
    cls = METRICS[kind]
    args = {key: value for key, value in task_args.items() if value is not None}
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(
            f"{kind} metrics take {', '.join(accepted) or 'no arguments'}, not {', '.join(unknown)}; "
            "remove them or set them to None"
        )
    return cls(**args)
