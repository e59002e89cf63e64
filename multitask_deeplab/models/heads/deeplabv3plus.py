"""DeepLabV3+ (Chen et al. 2018): ASPP plus a decoder with a low-level skip for sharper boundaries."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multitask_deeplab.models.heads.aspp import ASPP, ASPPConv, default_rates
from multitask_deeplab.models.heads.base import HEADS, ConvBNReLU, DenseHead, check_out_channels, check_upsampling, upsample


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
        depthwise_norm: Batch norm and ReLU after the depthwise part of separable convolutions.
        aspp_conv: A 3x3 convolution after the ASPP, before the upsampling.
        decoder_convs: 3x3 convolutions after joining the skip (2 in the paper).
        align_corners: Upsample the ASPP output to the skip's size with aligned corners.
        upsampling: Upsample the output by this factor in the head (bilinear, aligned corners).

    segmentation_models_pytorch's ``DeepLabV3Plus`` is ``separable: true, depthwise_norm: false, aspp_conv: true,
    decoder_convs: 1, align_corners: true, upsampling: 4`` with its rates (12, 24, 36); see
    :func:`~multitask_deeplab.models.convert.load_smp_deeplabv3`.
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
        depthwise_norm: bool = True,
        aspp_conv: bool = False,
        decoder_convs: int = 2,
        align_corners: bool = False,
        upsampling: int = 1,
    ) -> None:
        super().__init__(in_index=in_index, num_levels=len(in_channels))
        check_out_channels(out_channels)
        if decoder_convs < 1:
            raise ValueError(f"deeplabv3plus needs decoder_convs >= 1, got {decoder_convs}")
        self.upsampling, self.align_corners = check_upsampling(upsampling), align_corners
        if low_level_index is None:
            if 4 not in reductions:
                raise ValueError(
                    f"deeplabv3plus needs a stride-4 feature for its skip, the backbone gives reductions "
                    f"{list(reductions)}; set low_level_index to one of those levels"
                )
            low_level_index = list(reductions).index(4)
        self.low_level_index = low_level_index
        rates = rates or default_rates(reductions[in_index])
        self.aspp = ASPP(in_channels[in_index], channels, rates, separable=separable, dropout=dropout, depthwise_norm=depthwise_norm)
        self.aspp_conv = ASPPConv(channels, channels, 1, separable, depthwise_norm) if aspp_conv else nn.Identity()
        self.skip = ConvBNReLU(in_channels[low_level_index], low_level_channels, 1)
        widths = [channels + low_level_channels] + [channels] * (decoder_convs - 1)
        self.decoder = nn.Sequential(*(ASPPConv(width, channels, 1, separable, depthwise_norm) for width in widths))
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        skip = self.skip(features[self.low_level_index])
        deep = self.aspp_conv(self.aspp(self.select(features)))
        deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return upsample(self.classifier(self.decoder(torch.cat([deep, skip], dim=1))), self.upsampling)
