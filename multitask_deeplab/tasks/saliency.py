"""Salient-object maps: which pixels belong to the objects that catch the eye."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from multitask_deeplab.metrics.saliency import ASTMT_THRESHOLDS, SaliencyMetrics
from multitask_deeplab.tasks.base import TASKS
from multitask_deeplab.tasks.binary import BINARY_IGNORE, BinaryMapTask


@TASKS.register("saliency")
class SaliencyTask(BinaryMapTask):
    """Saliency estimation: the probability that a pixel belongs to a salient object.

    Target: ``1 x H x W`` float32, 1 salient, 0 not, 255 unknown (PASCAL-Context's distilled maps binarised at 0.5).
    Default loss: the class-balanced cross-entropy with HED's per-batch weight, as Multi-Task-Learning-PyTorch trains
    saliency. Metrics: ``max_f`` and ``miou`` over thresholds
    (:class:`~multitask_deeplab.metrics.saliency.SaliencyMetrics`), set per task in ``eval.protocol``.

    Args:
        base: ``target`` (see :class:`TaskKind`).
    """

    default_target = "saliency"
    default_loss: ClassVar[Mapping[str, Any]] = {"type": "balanced_bce"}
    primary_metric = "max_f"
    delta_m_metrics = ("max_f",)

    def metrics(self, *, thresholds: int | Sequence[float] = ASTMT_THRESHOLDS, beta_squared: float = 0.3, average: str = "image") -> SaliencyMetrics:
        """maxF and mIoU over thresholds.

        Args:
            thresholds: A list, or a count of evenly spaced ones (19: 0.05 .. 0.95, the ATRC/InvPT meter); by default
                ASTMT's 15 from 0.2 to 0.9.
            beta_squared: The F-measure's beta^2 (0.3; Multi-Task-Learning-PyTorch's code uses 1).
            average: ``"image"`` (ASTMT, Multi-Task-Learning-PyTorch) or ``"dataset"`` (ATRC, InvPT).
        """
        return SaliencyMetrics(thresholds=thresholds, beta_squared=beta_squared, average=average, ignore_value=BINARY_IGNORE)
