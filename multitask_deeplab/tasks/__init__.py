"""Task kinds; importing this package registers the built-in ones (segmentation, depth, normals) in ``TASKS``."""

from multitask_deeplab.tasks.base import TASKS, TaskKind
from multitask_deeplab.tasks.depth import DepthTask, PositiveDepth
from multitask_deeplab.tasks.normals import NormalsTask, UnitNormals
from multitask_deeplab.tasks.segmentation import SegmentationTask

__all__ = ["TASKS", "DepthTask", "NormalsTask", "PositiveDepth", "SegmentationTask", "TaskKind", "UnitNormals"]
