"""Per-task losses; importing this package registers the built-in ones in ``LOSSES``."""

from multitask_deeplab.losses.base import LOSSES, DenseLoss
from multitask_deeplab.losses.binary import BalancedBCELoss
from multitask_deeplab.losses.depth import BerHuLoss, DepthLoss, L1DepthLoss, SILogLoss
from multitask_deeplab.losses.normals import CosineNormalsLoss, L1NormalsLoss
from multitask_deeplab.losses.segmentation import CrossEntropyLoss

__all__ = [
    "LOSSES", "BalancedBCELoss", "BerHuLoss", "CosineNormalsLoss", "CrossEntropyLoss", "DenseLoss", "DepthLoss", "L1DepthLoss",
    "L1NormalsLoss", "SILogLoss",
]
