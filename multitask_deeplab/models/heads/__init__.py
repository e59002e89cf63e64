"""Task-neutral dense heads; importing this package registers the built-in ones (deeplabv3, deeplabv3plus, hrnet)."""

from multitask_deeplab.models.heads.aspp import ASPP, DeepLabV3Head, SharedTrunk
from multitask_deeplab.models.heads.base import HEADS, RESERVED_HEAD_ARGS, ConvBNReLU, DenseHead
from multitask_deeplab.models.heads.deeplabv3plus import DeepLabV3PlusHead
from multitask_deeplab.models.heads.hrnet import HRNetHead

__all__ = ["ASPP", "HEADS", "RESERVED_HEAD_ARGS", "ConvBNReLU", "DeepLabV3Head", "DeepLabV3PlusHead", "DenseHead", "HRNetHead", "SharedTrunk"]
