"""DeepLabV3+ (Chen et al. 2018): ASPP plus a decoder with a low-level skip for sharper boundaries."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multitask_deeplab.models.heads.aspp import ASPP, ASPPConv, default_rates
from multitask_deeplab.models.heads.base import HEADS, ConvBNReLU, DenseHead, check_out_channels


@HEADS.register("deeplabv3plus")
class DeepLabV3PlusHead(DenseHead):
    """ASPP on a deep level, upsampled and fused with a projected stride-4 level.

    Args:
        in_channels: Channels of every backbone level (passed by the model).
        reductions: Reduction of every backbone level (passed by the model).
        out_channels: Output channels (passed by the model).
        in_index: Deep level for the ASPP; the deepest by default.
        low_level_index: Level for the skip; by default the first level at reduction 4.
        channels: Width of the ASPP and the decoder.
        low_level_channels: Width of the projected skip (48 in the paper).
        rates: Atrous rates; by default DeepLabV3's, scaled to the deep level's reduction.
        separable: Depthwise-separable convolutions in the ASPP and the decoder.
        dropout: Dropout after the ASPP projection.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        out_channels: int,
        *,
        in_index: int = -1,
        low_level_index: int | None = None,
        channels: int = 256,
        low_level_channels: int = 48,
        rates: Sequence[int] | None = None,
        separable: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(in_index=in_index, num_levels=len(in_channels))
        check_out_channels(out_channels)
        if low_level_index is None:
            if 4 not in reductions:
                raise ValueError(
                    f"deeplabv3plus needs a stride-4 feature for its skip, the backbone gives reductions "
                    f"{list(reductions)}; set low_level_index to one of those levels"
                )
            low_level_index = list(reductions).index(4)
        self.low_level_index = low_level_index
        self.aspp = ASPP(
            in_channels[in_index], channels, rates or default_rates(reductions[in_index]), separable=separable, dropout=dropout
        )
        self.skip = ConvBNReLU(in_channels[low_level_index], low_level_channels, 1)
        self.decoder = nn.Sequential(
            ASPPConv(channels + low_level_channels, channels, 1, separable),
            ASPPConv(channels, channels, 1, separable),
        )
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        skip = self.skip(features[self.low_level_index])
        deep = F.interpolate(self.aspp(self.select(features)), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([deep, skip], dim=1)))
