"""Surface normals: unit vectors in the camera frame (x right, y down, z forward), all-zero where unknown."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multitask_deeplab import visualize
from multitask_deeplab.metrics.normals import NormalsMetrics
from multitask_deeplab.tasks.base import TASKS, TaskKind


class UnitNormals(nn.Module):
    """L2-normalises a ``B x 3 x H x W`` output per pixel."""

    def forward(self, output: Tensor) -> Tensor:
        return F.normalize(output, dim=1, eps=1e-6)


@TASKS.register("normals")
class NormalsTask(TaskKind):
    """Surface normals; the head's three channels are normalised to unit length per pixel.

    Target: ``3 x H x W`` float32 unit vectors, all-zero where unknown. A geometric augmentation or a horizontal flip
    turns the (x, y) components by the same rotation or reflection as the pixels; ``mtdl predict`` writes normals as an
    RGB picture of ``(n + 1) / 2``.

    Args:
        base: ``target`` (see :class:`TaskKind`).
    """

    default_target = "normals"
    default_loss: ClassVar[Mapping[str, Any]] = {"type": "cosine"}
    primary_metric = "mean_angle"
    delta_m_metrics = ("mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30")
    target_channels = 3
    comparison = "angle_deg"

    @property
    def out_channels(self) -> int:
        return 3

    def activation(self) -> nn.Module:
        return UnitNormals()

    def example_target(self, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        normals = torch.randn(batch, 3, height, width, generator=generator)
        normals[:, 2] = -normals[:, 2].abs() - 0.1  # facing the camera
        return F.normalize(normals, dim=1)

    def check_target(self, target: Tensor, source: str) -> tuple[Tensor, Counter]:
        target, counts = super().check_target(target, source)
        bad = ~torch.isfinite(target).all(dim=0)
        if bad.any():
            counts["normals pixels not finite (set to 0 = invalid)"] += int(bad.sum())
            target = target.masked_fill(bad[None], 0.0)
        return target, counts

    def transform_values(self, target: Tensor, linear: Tensor) -> Tensor:
        zoom = linear.det().abs().sqrt()
        rotation = (linear / zoom.view(-1, 1, 1)).to(target.dtype)
        xy = torch.einsum("bij,bjhw->bihw", rotation, target[:, :2])
        return torch.cat([xy, target[:, 2:]], dim=1)

    def compare(self, reference: Tensor, candidate: Tensor) -> Tensor:
        """The angle between the two normals, in degrees."""
        return torch.rad2deg(torch.acos((reference * candidate).sum(1).clamp(-1.0, 1.0)))

    def finish_average(self, mean: Tensor) -> Tensor:
        return F.normalize(mean, dim=1, eps=1e-6)

    def colorize(self, value: Tensor | np.ndarray, *, reference: Tensor | np.ndarray | None = None, options: visualize.PictureOptions | None = None) -> np.ndarray:
        return visualize.colorize_normals(value)

    def metrics(self) -> NormalsMetrics:
        return NormalsMetrics()
