"""The forward pass that representation-level weighting strategies need: heads reading detached shared features."""

from __future__ import annotations

import torch
from torch import nn

from multitask_deeplab.weighting.gradients import SharedFeatures


def forward_with_shared_features(model: nn.Module, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], SharedFeatures]:
    """Runs ``model`` (a :class:`~multitask_deeplab.models.model.MultiTaskModel`, also inside DDP or
    ``torch.compile``) with its heads reading detached copies of the shared features.

    The task losses then do NOT reach the backbone (or the shared trunk) through autograd on their own: the caller
    backpropagates a combination of the ``d loss / d leaves`` into ``tensors``, e.g.
    ``torch.autograd.backward(shared.tensors, grad_tensors=...)``, as MGDA-UB does.

    Returns:
        The task outputs and the :class:`SharedFeatures` (graph-connected tensors and the leaves the heads read).
    """
    shared = SharedFeatures([], [])

    def read_leaves(features: list[torch.Tensor]) -> list[torch.Tensor]:
        shared.tensors.extend(features)
        shared.leaves.extend(f.detach().requires_grad_() for f in features)
        return shared.leaves

    return model(image, feature_hook=read_leaves), shared
