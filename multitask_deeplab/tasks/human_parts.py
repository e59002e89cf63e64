"""Human part segmentation: a label only images with people have."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multitask_deeplab.metrics.segmentation import LabelledImagesMetrics
from multitask_deeplab.tasks.base import TASKS
from multitask_deeplab.tasks.segmentation import SegmentationTask

HUMAN_PART_NAMES = ("background", "head", "torso", "upper arm", "lower arm", "upper leg", "lower leg")
"""The 6 parts (plus background) that ASTMT and Multi-Task-Learning-PyTorch group PASCAL-Part's 24 person parts into."""


@TASKS.register("human_parts")
class HumanPartsTask(SegmentationTask):
    """Segmentation of people into parts, learnt and scored only on the images that have people.

    Target: ``H x W`` int64 part ids, ``ignore_index`` where unknown. An image without a person has no label: its
    target is ``ignore_index`` everywhere, so its loss is an exact zero and it adds nothing to the metrics, which are
    therefore over the images with people; ``images`` counts them. Everything else is as for segmentation.

    Args:
        num_classes: Parts plus background (7: :data:`HUMAN_PART_NAMES`).
        class_names: One name per class; :data:`HUMAN_PART_NAMES` for 7 classes.
        base: ``ignore_index`` and ``target`` (see :class:`SegmentationTask`).
    """

    default_target = "human_parts"

    def __init__(self, *, num_classes: int = len(HUMAN_PART_NAMES), class_names: Sequence[str] | None = None, **base: Any) -> None:
        if class_names is None and num_classes == len(HUMAN_PART_NAMES):
            class_names = HUMAN_PART_NAMES
        super().__init__(num_classes=num_classes, class_names=class_names, **base)

    def metrics(self, *, classes: str = "present") -> LabelledImagesMetrics:
        return LabelledImagesMetrics(self.num_classes, self.ignore_index, self.class_names, classes=classes)

    def describe(self) -> str:
        return f"human parts ({self.num_classes} classes)"

    def __repr__(self) -> str:
        return f"HumanPartsTask(num_classes={self.num_classes}, ignore_index={self.ignore_index}, target={self.target!r})"
