"""Atrous spatial pyramid pooling (Chen et al. 2017) and the DeepLabV3 head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from multitask_deeplab.models.heads.base import HEADS, ConvBNReLU, DenseHead, check_out_channels, check_upsampling, upsample

TRUNKS = ("aspp", "conv", "light")


def default_rates(reduction: int) -> tuple[int, ...]:
    """DeepLabV3's atrous rates for a feature map at ``reduction``: 16 -> (6, 12, 18), 8 -> (12, 24, 36)."""
    return tuple(max(1, rate * 16 // reduction) for rate in (6, 12, 18))


class ASPPConv(nn.Sequential):
    """A 3x3 atrous branch; depthwise-separable (depthwise atrous + pointwise) when ``separable``, with batch norm and
    ReLU after the depthwise convolution too unless ``depthwise_norm`` is false (segmentation_models_pytorch has none)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, separable: bool = False, depthwise_norm: bool = True) -> None:
        if not separable:
            super().__init__(*ConvBNReLU(in_channels, out_channels, 3, dilation))
            return
        depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False)
        norm = [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)] if depthwise_norm else []
        super().__init__(depthwise, *norm, *ConvBNReLU(in_channels, out_channels, 1))


class ASPPPooling(nn.Sequential):
    """The image-level branch: global average pooling, 1x1 conv, broadcast back to the map size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *ConvBNReLU(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """A 1x1 branch, one atrous branch per rate, the pooling branch, then a 1x1 projection with dropout.

    Args:
        in_channels: Channels of the input feature map.
        out_channels: Channels of every branch and of the output.
        rates: Atrous rates, any number of them.
        separable: Use depthwise-separable atrous convolutions.
        dropout: Dropout probability after the projection.
        depthwise_norm: Batch norm and ReLU between the depthwise and the pointwise part of separable convolutions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int],
        *,
        separable: bool = False,
        dropout: float = 0.5,
        depthwise_norm: bool = True,
    ) -> None:
        super().__init__()
        if not rates or any(rate < 1 for rate in rates):
            raise ValueError(f"ASPP rates must be a non-empty list of positive integers, got {list(rates)}")
        branches = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [ASPPConv(in_channels, out_channels, rate, separable, depthwise_norm) for rate in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*ConvBNReLU(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def build_trunk(
    kind: str,
    in_channels: int,
    channels: int,
    *,
    reduction: int,
    rates: Sequence[int] | None,
    separable: bool,
    dropout: float,
    depthwise_norm: bool = True,
) -> nn.Sequential:
    """The layers a head runs before its classifier: ``"aspp"`` (ASPP + 3x3 conv), ``"conv"`` (two 3x3 convs) or
    ``"light"`` (one 3x3 conv: the per-task part of a head reading a :class:`SharedTrunk`)."""
    if kind == "aspp":
        aspp = ASPP(in_channels, channels, rates or default_rates(reduction), separable=separable, dropout=dropout, depthwise_norm=depthwise_norm)
        return nn.Sequential(aspp, ConvBNReLU(channels, channels, 3))
    if kind == "conv":
        return nn.Sequential(ConvBNReLU(in_channels, channels, 3), ConvBNReLU(channels, channels, 3))
    if kind == "light":
        return nn.Sequential(ConvBNReLU(in_channels, channels, 3))
    raise ValueError(f"unknown trunk {kind!r}: use one of {', '.join(TRUNKS)}")


@HEADS.register("deeplabv3")
class DeepLabV3Head(DenseHead):
    """DeepLabV3: ASPP on one feature level, a 3x3 conv, then a 1x1 classifier (as torchvision's DeepLabHead).

    Args:
        in_channels: Channels of every backbone level (passed by the model).
        reductions: Reduction of every backbone level (passed by the model).
        out_channels: Output channels, e.g. the number of classes (passed by the model).
        in_index: Feature level to read; the deepest by default.
        channels: Width of the trunk.
        rates: Atrous rates; by default DeepLabV3's, scaled to the level's reduction.
        separable: Depthwise-separable atrous convolutions (cheaper).
        dropout: Dropout after the ASPP projection.
        trunk: ``"aspp"``, the lighter ``"conv"``, or ``"light"`` on a shared trunk's output.
        depthwise_norm: Batch norm and ReLU after the depthwise part of separable convolutions (false in
            segmentation_models_pytorch).
        upsampling: Upsample the output by this factor in the head, bilinearly with aligned corners, as
            segmentation_models_pytorch's segmentation head does (the model then resizes it to the input size, which
            changes nothing when the sizes already agree).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        out_channels: int,
        *,
        in_index: int = -1,
        channels: int = 256,
        rates: Sequence[int] | None = None,
        separable: bool = False,
        dropout: float = 0.5,
        trunk: str = "aspp",
        depthwise_norm: bool = True,
        upsampling: int = 1,
    ) -> None:
        super().__init__(in_index=in_index, num_levels=len(in_channels))
        check_out_channels(out_channels)
        self.upsampling = check_upsampling(upsampling)
        self.trunk = build_trunk(
            trunk,
            in_channels[in_index],
            channels,
            reduction=reductions[in_index],
            rates=rates,
            separable=separable,
            dropout=dropout,
            depthwise_norm=depthwise_norm,
        )
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return upsample(self.classifier(self.trunk(self.select(features))), self.upsampling)


class SharedTrunk(DenseHead):
    """An ASPP that several task heads share: the model runs it once and appends its output to the feature list.

    With it, each task's head reads the last level (the default ``in_index``) and can be light, e.g.
    ``{type: depth, trunk: light}``: ASPP here, then one 3x3 conv and a 1x1 classifier per task, which splits
    torchvision's DeepLabV3 head between the shared and the per-task part.

    Args:
        in_channels: Channels of every backbone level.
        reductions: Reduction of every backbone level.
        in_index: Feature level to read; the deepest by default.
        channels: Width of the ASPP and of its output.
        rates: Atrous rates; by default DeepLabV3's, scaled to the level's reduction.
        separable: Depthwise-separable atrous convolutions.
        dropout: Dropout after the ASPP projection.

    Attributes:
        channels: Channels of the output.
        reduction: Reduction of the output (that of the level read).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        *,
        in_index: int = -1,
        channels: int = 256,
        rates: Sequence[int] | None = None,
        separable: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(in_index=in_index, num_levels=len(in_channels))
        if channels < 1:
            raise ValueError(f"shared trunk channels must be >= 1, got {channels}")
        self.channels, self.reduction = channels, reductions[in_index]
        rates = rates or default_rates(self.reduction)
        self.aspp = ASPP(in_channels[in_index], channels, rates, separable=separable, dropout=dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.aspp(self.select(features))
