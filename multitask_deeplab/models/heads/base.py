"""The head registry and what every dense head shares."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multitask_deeplab.registry import Registry

RESERVED_HEAD_ARGS = ("in_channels", "reductions", "out_channels")
"""Keyword arguments the model passes to every head itself; recipes must not set them."""


class DenseHead(nn.Module):
    """Base class of task-neutral dense heads.

    A head maps the backbone's feature list to ``out_channels`` maps at feature resolution. It knows nothing of the
    task it serves: the model upsamples its output once, to the input size, and the task's kind applies its activation
    (softmax-free logits for segmentation, a positive depth, unit normals).

    Args:
        in_index: Which backbone feature level the head reads (negative counts from the deepest).
        num_levels: How many levels the backbone returns, to check ``in_index``.
    """

    def __init__(self, *, in_index: int, num_levels: int) -> None:
        super().__init__()
        if not -num_levels <= in_index < num_levels:
            raise ValueError(
                f"in_index {in_index} is out of range for a backbone with {num_levels} feature levels; "
                f"use a value in [{-num_levels}, {num_levels - 1}]"
            )
        self.in_index = in_index

    def select(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The feature map this head reads."""
        return features[self.in_index]


HEADS: Registry[DenseHead] = Registry("head", DenseHead)
"""Every registered head, by the name recipes give as ``head: {type: ...}``."""


class ConvBNReLU(nn.Sequential):
    """Convolution (bias-free), batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def check_out_channels(out_channels: int) -> None:
    """Raises when a head is asked for no output channel."""
    if out_channels < 1:
        raise ValueError(f"a head needs out_channels >= 1 (num_classes for segmentation), got {out_channels}")


def check_upsampling(factor: int) -> int:
    """Returns a head's ``upsampling`` factor, checked to be a positive integer."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"upsampling must be an integer >= 1 (1: none), got {factor!r}")
    return factor


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``x`` upsampled ``factor`` times, bilinearly with aligned corners (segmentation_models_pytorch's way)."""
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)
