"""Metric depth heads: a DeepLabV3-style trunk or a DeepLabV3+ decoder, with one positive output channel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from multitask_deeplab.models.heads.aspp import DeepLabV3Head
from multitask_deeplab.models.heads.base import HEADS
from multitask_deeplab.models.heads.deeplabv3plus import DeepLabV3PlusHead

ACTIVATIONS = ("softplus", "sigmoid")


class PositiveDepth(nn.Module):
    """Maps a head's raw upsampled output to depth in metres.

    Args:
        activation: ``"softplus"`` (unbounded, + ``min_depth``) or ``"sigmoid"`` (scaled to ``max_depth``).
        min_depth: Smallest depth the head can output, in metres.
        max_depth: Largest depth for the sigmoid activation, in metres.
    """

    def __init__(self, activation: str = "softplus", min_depth: float = 1e-3, max_depth: float = 10.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"depth activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"depth head needs 0 <= min_depth < max_depth, got {min_depth} and {max_depth}")
        self.activation = activation
        self.min_depth = min_depth
        self.max_depth = max_depth

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return self.min_depth + torch.sigmoid(output) * (self.max_depth - self.min_depth)
        return self.min_depth + F.softplus(output)


class _DepthOutput:
    """Makes a head's output depth in metres: takes the :class:`PositiveDepth` arguments and hands every other
    argument to the head class after it in the MRO."""

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        out_channels: int = 1,
        *,
        activation: str = "softplus",
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        **head: Any,
    ) -> None:
        to_depth = PositiveDepth(activation, min_depth, max_depth)  # checked before any layer is built
        super().__init__(in_channels, reductions, out_channels, **head)
        self.to_depth = to_depth

    def finalize(self, output: torch.Tensor) -> torch.Tensor:
        return self.to_depth(output)


@HEADS.register("depth")
class DepthHead(_DepthOutput, DeepLabV3Head):
    """Predicts depth in metres from one feature level, made positive after upsampling.

    Args:
        in_channels, reductions, out_channels: Passed by the model (out_channels is 1).
        activation, min_depth, max_depth: As for :class:`PositiveDepth`.
        head: The ``deeplabv3`` arguments (in_index, channels, rates, separable, dropout, trunk).
    """


@HEADS.register("depthplus")
class DepthPlusHead(_DepthOutput, DeepLabV3PlusHead):
    """Predicts depth in metres through a DeepLabV3+ decoder (ASPP + stride-4 skip): sharper depth edges.

    Args:
        in_channels, reductions, out_channels: Passed by the model (out_channels is 1).
        activation, min_depth, max_depth: As for :class:`PositiveDepth`.
        head: The ``deeplabv3plus`` arguments (in_index, low_level_index, channels, low_level_channels, rates,
            separable, dropout).
    """
