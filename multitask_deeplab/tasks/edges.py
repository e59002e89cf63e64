"""Object boundaries (edge detection): a binary map of boundary pixels, scored with the BSDS protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from multitask_deeplab.metrics.edges import EdgeMetrics
from multitask_deeplab.tasks.base import TASKS
from multitask_deeplab.tasks.binary import BINARY_IGNORE, BinaryMapTask


@TASKS.register("edges")
class EdgesTask(BinaryMapTask):
    """Boundary detection: the probability that a pixel lies on an object or region boundary.

    Target: ``1 x H x W`` float32, 1 on boundaries (one or a few pixels wide, as the benchmarks' thinned label-map
    boundaries), 0 elsewhere, 255 where unknown. Default loss: the class-balanced cross-entropy with the positive
    weight 0.95 of Multi-Task-Learning-PyTorch (``edge_w``). Metrics: ODS, OIS and AP of the BSDS protocol
    (:class:`~multitask_deeplab.metrics.edges.EdgeMetrics`), whose ``max_dist``, ``thresholds`` and ``thin`` are set
    per task in ``eval.protocol``.

    Args:
        base: ``target`` (see :class:`TaskKind`).
    """

    default_target = "edges"
    default_loss: ClassVar[Mapping[str, Any]] = {"type": "balanced_bce", "pos_weight": 0.95}
    primary_metric = "ods_f"
    delta_m_metrics = ("ods_f",)

    def metrics(self, *, max_dist: float = 0.0075, thresholds: int | Sequence[float] = 99, thin: bool = True) -> EdgeMetrics:
        """The BSDS metrics.

        Args:
            max_dist: Matching distance as a share of the image diagonal: 0.0075 (BSDS, PASCAL-Context) or 0.011
                (NYUD-v2).
            thresholds: How many evenly spaced thresholds (99: 0.01 .. 0.99, as SEISM), or a list; fewer make
                evaluations during training cheaper.
            thin: Thin thresholded predictions to one pixel before matching (the protocol does).
        """
        return EdgeMetrics(max_dist=max_dist, thresholds=thresholds, thin=thin, ignore_value=BINARY_IGNORE)
