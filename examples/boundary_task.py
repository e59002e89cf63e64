"""A new task kind: object boundaries, derived from the segmentation labels the built-in scenes already have.

    mtdl train examples/boundary_task.yaml --plugin examples/boundary_task.py
"""

import torch
import torch.nn.functional as F
from torch import nn

from multitask_deeplab import LOSSES, TASKS, DenseLoss, TaskKind
from multitask_deeplab.metrics.base import Metrics, ratio
from multitask_deeplab.tasks import SegmentationTask
from multitask_deeplab.visualize import colorize_scalar


@TASKS.register("boundary")
class BoundaryTask(TaskKind):
    """1 where a pixel's 3x3 neighbourhood holds two classes of the label map the task reads, else 0."""

    default_target, default_loss = "seg", {"type": "boundary_bce"}
    primary_metric, delta_m_metrics = "fmeasure", ("fmeasure",)
    target_channels, target_dtype, classification, out_channels = None, torch.int64, True, 1

    def prepare_target(self, labels):
        x = labels[:, None].float()
        return (F.max_pool2d(x, 3, 1, 1) != -F.max_pool2d(-x, 3, 1, 1)).float()

    def accepts(self, provided):
        return None if isinstance(provided, SegmentationTask) else "it derives boundaries from a label map"

    def activation(self):
        return nn.Sigmoid()

    def example_target(self, batch, height, width, generator):
        return torch.randint(0, 3, (batch, height, width), generator=generator)

    def colorize(self, value, **options):
        return colorize_scalar(value)

    def metrics(self):
        return BoundaryF()


@LOSSES.register("boundary_bce")
class BalancedBCE(DenseLoss):
    """Binary cross-entropy with each class weighted by the other's share (Xie & Tu, HED, 2015)."""

    kinds = (BoundaryTask,)

    def forward(self, pred, target):
        weight = torch.where(target > 0.5, 1 - target.mean(), target.mean())
        return F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target, weight=weight)


class BoundaryF(Metrics):
    """F-measure of the boundary pixels at a 0.5 threshold, counted over the whole split."""

    HIGHER_IS_BETTER = {"fmeasure": True}

    def empty_state(self):
        return {"hits": torch.zeros((), dtype=torch.int64), "misses": torch.zeros((), dtype=torch.int64)}

    def update(self, pred, target):
        found, true = pred > 0.5, target > 0.5
        self.accumulate(hits=(found & true).sum(), misses=(found ^ true).sum())

    def compute(self):
        hits = float(self.state["hits"])
        return {"fmeasure": ratio(2 * hits, 2 * hits + float(self.state["misses"]))}
