"""Metric accumulators over a whole split; each task kind builds the ones it reports (see ``tasks``)."""

from multitask_deeplab.metrics.base import Metrics
from multitask_deeplab.metrics.depth import DepthMetrics
from multitask_deeplab.metrics.edges import EdgeMetrics
from multitask_deeplab.metrics.normals import NormalsMetrics, valid_normals
from multitask_deeplab.metrics.saliency import SaliencyMetrics
from multitask_deeplab.metrics.segmentation import LabelledImagesMetrics, SegmentationMetrics

__all__ = [
    "DepthMetrics", "EdgeMetrics", "LabelledImagesMetrics", "Metrics", "NormalsMetrics", "SaliencyMetrics",
    "SegmentationMetrics", "valid_normals",
]
