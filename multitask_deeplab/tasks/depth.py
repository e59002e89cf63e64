"""Metric depth: metres along the optical axis, 0 where unknown."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from multitask_deeplab import visualize
from multitask_deeplab.config.validation import check_choice, check_number
from multitask_deeplab.metrics.depth import DepthMetrics
from multitask_deeplab.runtime.files import atomic_write
from multitask_deeplab.tasks.base import TASKS, TaskKind

DEPTH_PNG_SCALE = 1000.0
"""Depth PNGs written by ``mtdl predict`` hold millimetres: metres times this, as uint16 (0 = invalid)."""


class PositiveDepth(nn.Module):
    """Maps a head's raw upsampled output to depth in metres.

    Args:
        activation: ``"softplus"`` (unbounded, + ``min_depth``) or ``"sigmoid"`` (scaled to ``max_depth``).
        min_depth: Smallest depth the head can output, in metres.
        max_depth: Largest depth for the sigmoid activation, in metres.
    """

    def __init__(self, activation: str = "softplus", min_depth: float = 1e-3, max_depth: float = 10.0) -> None:
        super().__init__()
        self.activation = activation
        self.min_depth = min_depth
        self.max_depth = max_depth

    def forward(self, output: Tensor) -> Tensor:
        if self.activation == "sigmoid":
            return self.min_depth + torch.sigmoid(output) * (self.max_depth - self.min_depth)
        return self.min_depth + F.softplus(output)

    def extra_repr(self) -> str:
        return f"{self.activation}, min_depth={self.min_depth}, max_depth={self.max_depth}"


@TASKS.register("depth")
class DepthTask(TaskKind):
    """Metric depth in metres; the head's one output channel is made positive by the task's activation.

    Target: ``1 x H x W`` float32 metres, 0 (or non-finite) where unknown. Zooming into an image by ``s`` looks like a
    camera ``s`` times closer, so augmentation divides depth by each sample's zoom (Eigen et al. 2014). ``mtdl predict``
    writes depth as a 16-bit PNG of millimetres and a colour picture.

    Args:
        activation: ``"softplus"`` (``min_depth`` + softplus) or ``"sigmoid"`` (between ``min_depth`` and ``max_depth``).
        min_depth: Smallest depth the head can output, in metres.
        max_depth: Largest depth of the sigmoid activation, in metres.
        base: ``target`` (see :class:`TaskKind`).
    """

    default_target = "depth"
    default_loss: ClassVar[Mapping[str, Any]] = {"type": "l1"}
    primary_metric = "abs_rel"
    delta_m_metrics = ("abs_err", "abs_rel")
    target_channels = 1
    comparison = "rel_difference"

    def __init__(self, *, activation: str = "softplus", min_depth: float = 1e-3, max_depth: float = 10.0, **base: Any) -> None:
        super().__init__(**base)
        self.activation_name = check_choice("depth", "activation", activation, ("softplus", "sigmoid"))
        self.min_depth = check_number("depth", "min_depth", min_depth, low=0.0)
        self.max_depth = check_number("depth", "max_depth", max_depth, low=self.min_depth, low_open=True)

    @property
    def out_channels(self) -> int:
        return 1

    def activation(self) -> nn.Module:
        return PositiveDepth(self.activation_name, self.min_depth, self.max_depth)

    def example_target(self, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        return 1.0 + 4.0 * torch.rand(batch, 1, height, width, generator=generator)

    def check_target(self, target: Tensor, source: str) -> tuple[Tensor, Counter]:
        target, counts = super().check_target(target, source)
        bad = ~torch.isfinite(target) | (target < 0)
        if bad.any():
            counts["depth pixels NaN, infinite or negative (set to 0 = invalid)"] += int(bad.sum())
            target = target.masked_fill(bad, 0.0)
        return target, counts

    def transform_values(self, target: Tensor, linear: Tensor) -> Tensor:
        zoom = linear.det().abs().sqrt().to(target.dtype)
        return target / zoom.view(-1, 1, 1, 1)

    def compare(self, reference: Tensor, candidate: Tensor) -> Tensor:
        """``|candidate - reference| / reference``: the relative difference of the depths."""
        return ((candidate - reference).abs() / reference.clamp_min(1e-6))[:, 0]

    def colorize(self, value: Tensor | np.ndarray, *, reference: Tensor | np.ndarray | None = None, options: visualize.PictureOptions | None = None) -> np.ndarray:
        options = options or visualize.PictureOptions()
        vmax = options.depth_max
        if vmax is None and reference is not None:
            valid = np.asarray(torch.as_tensor(reference).float().cpu()).reshape(-1)
            valid = valid[np.isfinite(valid) & (valid > 0)]
            vmax = float(np.percentile(valid, 95)) if valid.size else None
        depth = value[0] if value.ndim == 3 else value
        return visualize.colorize_depth(depth, cmap=options.depth_cmap, vmax=vmax)

    def write_prediction(self, folder: Path, stem: str, prediction: np.ndarray, image: np.ndarray, *, options: visualize.PictureOptions) -> np.ndarray:
        save_depth_png(prediction, folder / f"{stem}.png")
        panel = self.colorize(prediction, options=options)
        visualize.save_png(panel, folder / f"{stem}_color.png")
        return panel

    def metrics(self, *, min_depth: float = 1e-3, max_depth: float | None = None, crop: str | None = None, average: str = "pixel") -> DepthMetrics:
        """The depth metrics under an evaluation protocol (``eval.protocol``; see
        :class:`~multitask_deeplab.metrics.depth.DepthMetrics`): the valid target range ``min_depth`` .. ``max_depth``
        (predictions clamped to it), ``crop`` (``None`` or ``"eigen"``) and ``average`` (``"pixel"`` or ``"image"``).
        The NYUv2 protocol of BTS and AdaBins is ``max_depth: 10, crop: eigen, average: image``."""
        return DepthMetrics(min_depth, max_depth, crop=crop, average=average)

    def __repr__(self) -> str:
        return f"DepthTask(activation={self.activation_name!r}, min_depth={self.min_depth}, max_depth={self.max_depth}, target={self.target!r})"


def save_depth_png(depth: np.ndarray, path: Path) -> None:
    """Depth in metres as a 16-bit PNG of millimetres: 0 where invalid (not finite or <= 0), clipped to 1..65535 elsewhere."""
    valid = np.isfinite(depth) & (depth > 0)
    millimetres = np.where(valid, np.clip(np.rint(np.where(valid, depth, 0) * DEPTH_PNG_SCALE), 1, 65535), 0)
    picture = Image.fromarray(millimetres.astype(np.uint16))

    def write(temp: Path) -> None:
        picture.save(temp, format="PNG")

    atomic_write(path, write)
