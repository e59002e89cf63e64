"""Metric accumulators over a whole split; each task kind builds the ones it reports (see ``tasks``)."""

from multitask_deeplab.metrics.base import Metrics
from multitask_deeplab.metrics.depth import DepthMetrics
from multitask_deeplab.metrics.normals import NormalsMetrics, valid_normals
from multitask_deeplab.metrics.segmentation import SegmentationMetrics

__all__ = ["DepthMetrics", "Metrics", "NormalsMetrics", "SegmentationMetrics", "valid_normals"]
