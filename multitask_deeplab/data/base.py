"""The dataset registry and the sample format every dataset returns."""

from __future__ import annotations

from multitask_deeplab.registry import Registry

DATASETS: Registry = Registry("dataset")

IGNORE_INDEX = 255
"""Default segmentation label for unknown pixels."""
