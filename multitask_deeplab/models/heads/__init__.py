"""Dense prediction heads; importing this package registers the built-in ones."""

from multitask_deeplab.models.heads.aspp import ASPP, DeepLabV3Head, SharedTrunk
from multitask_deeplab.models.heads.base import HEADS, RESERVED_HEAD_ARGS, DenseHead
from multitask_deeplab.models.heads.deeplabv3plus import DeepLabV3PlusHead
from multitask_deeplab.models.heads.depth import DepthHead, DepthPlusHead
from multitask_deeplab.models.heads.normals import NormalsHead

__all__ = [
    "ASPP", "HEADS", "RESERVED_HEAD_ARGS", "DeepLabV3Head", "DeepLabV3PlusHead", "DenseHead", "DepthHead", "DepthPlusHead", "NormalsHead",
    "SharedTrunk",
]
