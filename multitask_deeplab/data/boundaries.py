"""Boundary maps derived from label maps, the way the multi-task benchmarks derive their edge labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multitask_deeplab.metrics.edges import thin


def label_boundaries(labels: torch.Tensor) -> torch.Tensor:
    """The thinned boundaries of ``... x H x W`` integer label maps, as float 1 (boundary) / 0.

    A pixel is on a boundary where the 4-neighbour Laplacian of the labels is not zero (image borders mirrored
    without repeating the edge pixel), and the result is thinned to lines one pixel wide: ASTMT's and
    Multi-Task-Learning-PyTorch's ``thin(abs(cv2.Laplacian(LabelMap, cv2.CV_64F)) > 0)`` for PASCAL-Context.
    Deterministic; draws no random numbers.
    """
    shape = labels.shape
    flat = labels.reshape(-1, 1, *shape[-2:]).double()
    if min(shape[-2:]) < 2:
        raise ValueError(f"label maps must be at least 2 x 2 pixels to have boundaries, got {tuple(shape[-2:])}")
    padded = F.pad(flat, (1, 1, 1, 1), mode="reflect")
    centre = padded[..., 1:-1, 1:-1]
    laplacian = padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:] - 4 * centre
    return thin(laplacian[:, 0] != 0).reshape(shape).float()
