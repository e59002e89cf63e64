"""Task kinds; importing this package registers the built-in ones in ``TASKS``: segmentation, depth, normals, edges,
saliency and human_parts."""

from multitask_deeplab.tasks.base import TASKS, TaskKind
from multitask_deeplab.tasks.binary import BINARY_IGNORE, BinaryMapTask
from multitask_deeplab.tasks.depth import DepthTask, PositiveDepth
from multitask_deeplab.tasks.edges import EdgesTask
from multitask_deeplab.tasks.human_parts import HumanPartsTask
from multitask_deeplab.tasks.normals import NormalsTask, UnitNormals
from multitask_deeplab.tasks.saliency import SaliencyTask
from multitask_deeplab.tasks.segmentation import SegmentationTask

__all__ = [
    "BINARY_IGNORE", "TASKS", "BinaryMapTask", "DepthTask", "EdgesTask", "HumanPartsTask", "NormalsTask",
    "PositiveDepth", "SaliencyTask", "SegmentationTask", "TaskKind", "UnitNormals",
]
