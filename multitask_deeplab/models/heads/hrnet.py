"""The HRNet segmentation head (Sun et al. 2019): every feature level upsampled to the finest, concatenated, two 1x1
convolutions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multitask_deeplab.models.heads.base import HEADS, ConvBNReLU, DenseHead, check_out_channels


@HEADS.register("hrnet")
class HRNetHead(DenseHead):
    """The head of HRNetV2 and Multi-Task-Learning-PyTorch's ``HighResolutionHead`` for backbones that keep several
    resolutions (HRNet): levels resized (bilinear) to the finest one read, concatenated, then a 1x1 conv with batch
    norm and ReLU and a 1x1 classifier.

    Args:
        in_channels: Channels of every backbone level (passed by the model).
        reductions: Reduction of every backbone level (passed by the model).
        out_channels: Output channels (passed by the model).
        levels: Which levels to fuse; by default every level at reduction 4 or more (HRNet's four branches, not its
            stride-2 stem).
        channels: Width of the hidden 1x1 conv; by default the concatenation's (as HRNetV2).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        out_channels: int,
        *,
        levels: Sequence[int] | None = None,
        channels: int | None = None,
    ) -> None:
        levels = [i for i, r in enumerate(reductions) if r >= 4] if levels is None else list(levels)
        if not levels or any(not -len(in_channels) <= i < len(in_channels) for i in levels):
            raise ValueError(f"hrnet head levels {levels} must be a non-empty list of backbone levels 0..{len(in_channels) - 1}")
        super().__init__(in_index=levels[0], num_levels=len(in_channels))
        check_out_channels(out_channels)
        self.levels = levels
        fused = sum(in_channels[i] for i in levels)
        self.fuse = ConvBNReLU(fused, channels or fused, 1)
        self.classifier = nn.Conv2d(channels or fused, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        selected = [features[i] for i in self.levels]
        size = max((f.shape[-2:] for f in selected), key=lambda s: s[0] * s[1])
        resized = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in selected]
        return self.classifier(self.fuse(torch.cat(resized, dim=1)))
