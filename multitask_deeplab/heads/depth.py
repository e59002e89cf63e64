"""A metric depth head: a DeepLabV3-style trunk with one positive output channel."""

from __future__ import annotations

from collections.abc import Sequence
import torch
import torch.nn.functional as F

from multitask_deeplab.heads.aspp import DeepLabV3Head
from multitask_deeplab.heads.base import HEADS

ACTIVATIONS = ("softplus", "sigmoid")


@HEADS.register("depth")
class DepthHead(DeepLabV3Head):
    """Predicts depth in metres, made positive after upsampling.

    Args:
        in_channels, reductions, out_channels: Passed by the model (out_channels is 1).
        activation: ``"softplus"`` (unbounded, + ``min_depth``) or ``"sigmoid"`` (scaled to ``max_depth``).
        min_depth: Smallest depth the head can output, in metres.
        max_depth: Largest depth for the sigmoid activation, in metres.
        in_index, channels, rates, separable, dropout, trunk: As for ``deeplabv3``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        out_channels: int = 1,
        *,
        activation: str = "softplus",
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        in_index: int = -1,
        channels: int = 256,
        rates: Sequence[int] | None = None,
        separable: bool = False,
        dropout: float = 0.5,
        trunk: str = "aspp",
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"depth activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"depth head needs 0 <= min_depth < max_depth, got {min_depth} and {max_depth}")
        super().__init__(
            in_channels, reductions, out_channels,
            in_index=in_index, channels=channels, rates=rates, separable=separable, dropout=dropout, trunk=trunk,
        )
        self.activation = activation
        self.min_depth = min_depth
        self.max_depth = max_depth

    def finalize(self, output: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return self.min_depth + torch.sigmoid(output) * (self.max_depth - self.min_depth)
        return self.min_depth + F.softplus(output)
