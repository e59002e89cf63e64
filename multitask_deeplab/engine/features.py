"""The forward pass that representation-level weighting strategies need: heads reading detached shared features."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class SharedFeatures(NamedTuple):
    """The shared representation of one forward pass, for representation-level strategies (MGDA-UB).

    Attributes:
        tensors: The graph-connected shared features: the backbone's levels, then the shared trunk's output
            if there is one.
        leaves: Detached copies of ``tensors`` that require grad, the only inputs the heads read: the gradient
            of a task loss w.r.t. ``leaves`` is its direct partial derivative w.r.t. each level, without the
            paths through later levels computed from it.
    """

    tensors: list[torch.Tensor]
    leaves: list[torch.Tensor]


def forward_with_shared_features(model: nn.Module, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], SharedFeatures]:
    """Runs ``model`` (a :class:`~multitask_deeplab.models.model.MultiTaskModel`, also inside DDP or
    ``torch.compile``) with its heads reading detached copies of the shared features.

    The task losses then do NOT reach the backbone (or the shared trunk) through autograd on their own: the caller
    backpropagates a combination of the ``d loss / d leaves`` into ``tensors``, e.g.
    ``torch.autograd.backward(shared.tensors, grad_tensors=...)``, as :func:`~multitask_deeplab.engine.backward.mtl_backward`
    does for representation-level strategies.

    Returns:
        The task outputs and the :class:`SharedFeatures` (graph-connected tensors and the leaves the heads read).
    """
    shared = SharedFeatures([], [])

    def read_leaves(features: list[torch.Tensor]) -> list[torch.Tensor]:
        shared.tensors.extend(features)
        shared.leaves.extend(f.detach().requires_grad_() for f in features)
        return shared.leaves

    return model(image, feature_hook=read_leaves), shared
