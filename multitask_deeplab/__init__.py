"""multitask_deeplab: multi-task dense prediction on one shared atrous timm backbone."""

from multitask_deeplab.models.backbone import TimmBackbone
from multitask_deeplab.models.heads import HEADS, DenseHead
from multitask_deeplab.models.model import MultiTaskModel, create_model

__version__ = "0.1.0"
__all__ = ["HEADS", "DenseHead", "MultiTaskModel", "TimmBackbone", "create_model"]
