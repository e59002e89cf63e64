"""A dataset: the built-in scenes plus a second label map, ``layout`` (floor, wall, object), for a second segmentation task.

    mtdl train examples/layout_dataset.yaml --plugin examples/layout_dataset.py
"""

import torch

from multitask_deeplab import DATASETS
from multitask_deeplab.data.scenes import ScenesDataset
from multitask_deeplab.tasks import SegmentationTask

LAYOUT = torch.tensor([0, 1, 2, 2, 2])  # the scenes' floor, wall, sphere, box, cylinder -> floor, wall, object


@DATASETS.register("scenes_layout")
class ScenesWithLayout(ScenesDataset):
    """Every scenes sample with a ``layout`` target: its ``seg`` labels mapped to three coarse classes."""

    @property
    def target_kinds(self):
        layout = SegmentationTask(num_classes=3, class_names=["floor", "wall", "object"], target="layout")
        return {**super().target_kinds, "layout": layout}

    def __getitems__(self, indices):
        samples = super().__getitems__(indices)
        for sample in samples:
            sample["layout"] = LAYOUT[sample["seg"]]
        return samples
