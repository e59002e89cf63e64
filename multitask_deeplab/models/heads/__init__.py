"""Task-neutral dense heads; importing this package registers the built-in ones (deeplabv3, deeplabv3plus)."""

from multitask_deeplab.models.heads.aspp import ASPP, DeepLabV3Head, SharedTrunk
from multitask_deeplab.models.heads.base import HEADS, RESERVED_HEAD_ARGS, ConvBNReLU, DenseHead
from multitask_deeplab.models.heads.deeplabv3plus import DeepLabV3PlusHead

__all__ = ["ASPP", "HEADS", "RESERVED_HEAD_ARGS", "ConvBNReLU", "DeepLabV3Head", "DeepLabV3PlusHead", "DenseHead", "SharedTrunk"]
