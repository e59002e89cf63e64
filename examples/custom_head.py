"""A custom head, registered from user code and named in a recipe.

``fpn_lite`` reads the deepest feature and the stride-4 feature, adds them after 1x1 projections
(a one-step feature pyramid), and predicts at stride 4 — sharper than a stride-8/16 head for little cost.
It is task-neutral: the same head serves segmentation, depth or normals (the model sets out_channels).

Train with it:
    mtdl train examples/custom_head.yaml --plugin examples/custom_head.py
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multitask_deeplab import HEADS, DenseHead
from multitask_deeplab.models.heads.base import ConvBNReLU


@HEADS.register("fpn_lite")
class FPNLiteHead(DenseHead):
    """Deep feature + stride-4 feature, fused by addition, then a 3x3 conv and a 1x1 classifier.

    Args:
        in_channels, reductions, out_channels: Passed by the model.
        channels: Width of the fused features.
    """

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], out_channels: int, *, channels: int = 64) -> None:
        super().__init__(in_index=-1, num_levels=len(in_channels))
        if 4 not in reductions:
            raise ValueError(f"fpn_lite needs a stride-4 feature; the backbone gives reductions {list(reductions)}")
        self.skip_index = list(reductions).index(4)
        self.deep = ConvBNReLU(in_channels[-1], channels, 1)
        self.skip = ConvBNReLU(in_channels[self.skip_index], channels, 1)
        self.fuse = ConvBNReLU(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        skip = self.skip(features[self.skip_index])
        deep = F.interpolate(self.deep(self.select(features)), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(deep + skip))
