"""The dataset registry and the sample format every dataset returns.

A dataset is a map-style ``torch.utils.data.Dataset`` built as ``Dataset(split, **recipe args)`` whose items are dicts
of tensors: ``"image"`` (3 x H x W float32 in [0, 1]) and one entry per target, keyed by the names the recipe's tasks
read (``target:``, or each kind's default key). Describe the targets in a ``target_kinds`` attribute (see
:mod:`multitask_deeplab.data.targets`) so that they are checked against the tasks before training.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from multitask_deeplab.registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset", Dataset)
"""Every registered dataset, by the name recipes give as ``data: {type: ...}``."""

IGNORE_INDEX = 255
"""Default segmentation label for unknown pixels."""
