"""Datasets; importing this package registers the built-in ones."""

from multitask_deeplab.data import cityscapes, folder, nyud, nyuv2, pascal_context, scenes  # noqa: F401  (registration)
from multitask_deeplab.data.base import DATASETS, IGNORE_INDEX

__all__ = ["DATASETS", "IGNORE_INDEX"]
