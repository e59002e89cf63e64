"""A weighting strategy: each task's loss divided by its first value, so that every task starts at 1 whatever its units.

    mtdl train recipes/scenes_seg_depth.yaml --plugin examples/initial_loss_weighting.py weighting.type=initial_loss
"""

import torch

from multitask_deeplab import WEIGHTINGS
from multitask_deeplab.weighting import LossWeighting


@WEIGHTINGS.register("initial_loss")
class InitialLossWeighting(LossWeighting):
    """``w_t = 1 / L_t(first step with L_t > 0)``; a task waits at weight 0 until its first batch with a valid pixel."""

    def __init__(self, **base) -> None:
        super().__init__(**base)
        self.register_buffer("initial", torch.zeros(self.num_tasks))  # in the state dict: resumes exactly

    def loss_weights(self, losses):  # detached, averaged over processes: the same weights on every process
        self.initial.copy_(torch.where(self.initial > 0, self.initial, losses))
        return torch.where(self.initial > 0, 1 / self.initial, 0.0)
