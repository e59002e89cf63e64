"""A surface-normals head: three channels, unit length per pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multitask_deeplab.models.heads.aspp import DeepLabV3Head
from multitask_deeplab.models.heads.base import HEADS


@HEADS.register("normals")
class NormalsHead(DeepLabV3Head):
    """A ``deeplabv3``-style head whose 3-channel output is L2-normalised after upsampling.

    Takes the same arguments as ``deeplabv3``.
    """

    def finalize(self, output: torch.Tensor) -> torch.Tensor:
        return F.normalize(output, dim=1, eps=1e-6)
