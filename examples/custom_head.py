"""A head: a one-step feature pyramid that predicts at stride 4, task-neutral like every head.

    mtdl train examples/custom_head.yaml --plugin examples/custom_head.py
"""

import torch.nn.functional as F
from torch import nn

from multitask_deeplab import HEADS, DenseHead
from multitask_deeplab.models.heads import ConvBNReLU


@HEADS.register("fpn_lite")
class FPNLiteHead(DenseHead):
    """The deepest feature and the stride-4 feature, projected, added, then a 3x3 conv and a 1x1 classifier.

    Args:
        in_channels, reductions, out_channels: Passed by the model (out_channels from the task's kind).
        channels: Width of the fused features.
    """

    def __init__(self, in_channels, reductions, out_channels, *, channels: int = 64) -> None:
        super().__init__(in_index=-1, num_levels=len(in_channels))
        if 4 not in reductions:
            raise ValueError(f"fpn_lite needs a stride-4 feature; the backbone gives reductions {list(reductions)}")
        self.skip_index = list(reductions).index(4)
        self.deep = ConvBNReLU(in_channels[-1], channels, 1)
        self.skip = ConvBNReLU(in_channels[self.skip_index], channels, 1)
        self.fuse = ConvBNReLU(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, features):
        skip = self.skip(features[self.skip_index])
        deep = F.interpolate(self.deep(self.select(features)), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(deep + skip))
