"""Per-pixel binary maps (boundaries, saliency): one sigmoid channel, a 0/1 target with an unknown value."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from multitask_deeplab import visualize
from multitask_deeplab.tasks.base import TaskKind

BINARY_IGNORE = 255.0
"""Target value of a binary-map pixel whose label is unknown (augmentation padding too), as in ASTMT's loaders."""


class BinaryMapTask(TaskKind):
    """Base of kinds whose target says, per pixel, yes (1) or no (0); the head's one channel goes through a sigmoid.

    Target: ``1 x H x W`` float32, 1 or 0, :data:`BINARY_IGNORE` where unknown. Predictions are probabilities;
    ``mtdl predict`` writes them as an 8-bit grey PNG (probability x 255, as ASTMT and Multi-Task-Learning-PyTorch
    save edge and saliency maps) and a colour picture.
    """

    target_channels: ClassVar[int] = 1
    classification = True

    @property
    def out_channels(self) -> int:
        return 1

    @property
    def invalid_value(self) -> float:
        return BINARY_IGNORE

    def activation(self) -> nn.Module:
        return nn.Sigmoid()

    def loss_defaults(self) -> dict[str, Any]:
        return {"ignore_value": BINARY_IGNORE}

    def example_target(self, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        return (torch.rand(batch, 1, height, width, generator=generator) < 0.2).float()

    def check_target(self, target: Tensor, source: str) -> tuple[Tensor, Counter]:
        target, counts = super().check_target(target, source)
        bad = (target != 0) & (target != 1) & (target != BINARY_IGNORE)
        if bad.any():
            shown = ", ".join(f"{v:g}" for v in torch.unique(target[bad])[:5].tolist())
            raise ValueError(f"{source}: {self.describe()} values must be 0, 1 or {BINARY_IGNORE:g} (unknown), got {shown}")
        return target, counts

    def colorize(self, value: Tensor | np.ndarray, *, reference: Tensor | np.ndarray | None = None, options: visualize.PictureOptions | None = None) -> np.ndarray:
        values = np.asarray(torch.as_tensor(value).float().cpu())
        return visualize.colorize_scalar(np.where(values == BINARY_IGNORE, np.nan, values))

    def write_prediction(self, folder: Path, stem: str, prediction: np.ndarray, image: np.ndarray, *, options: visualize.PictureOptions) -> np.ndarray:
        visualize.save_png(np.round(np.clip(prediction, 0.0, 1.0) * 255).astype(np.uint8), folder / f"{stem}.png")
        panel = self.colorize(prediction)
        visualize.save_png(panel, folder / f"{stem}_color.png")
        return panel

