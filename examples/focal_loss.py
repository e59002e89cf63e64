"""A loss: focal loss for segmentation (Lin et al., ICCV 2017), which lets well-classified pixels count less.

    mtdl train recipes/scenes_seg_depth.yaml --plugin examples/focal_loss.py tasks.seg.loss.type=focal
"""

import torch.nn.functional as F

from multitask_deeplab import LOSSES, DenseLoss
from multitask_deeplab.tasks import SegmentationTask


@LOSSES.register("focal")
class FocalLoss(DenseLoss):
    """Mean of ``-(1 - p)^gamma log p`` over labelled pixels, ``p`` the probability of the true class; gamma 0 is
    cross-entropy.

    Args:
        gamma: Focusing parameter (2 in the paper).
        ignore_index: The label of pixels that do not count (the task passes its own).
    """

    kinds = (SegmentationTask,)

    def __init__(self, *, gamma: float = 2.0, ignore_index: int = 255) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma, self.ignore_index = gamma, ignore_index

    def forward(self, pred, target):
        valid = target != self.ignore_index
        log_p = F.log_softmax(pred, dim=1).gather(1, target.where(valid, 0)[:, None])[:, 0][valid]
        return -((1 - log_p.exp()) ** self.gamma * log_p).mean() if valid.any() else pred.sum() * 0.0
