"""Multi-task loss weighting strategies, built by name from the ``WEIGHTINGS`` registry.

``WEIGHTINGS.build({"type": name, **args}, task_names=[...], task_kinds={...})`` returns a :class:`Weighting`
(see :class:`Weighting` for the interface the trainer drives). Loss-level strategies backpropagate one
weighted sum of the task losses; gradient-level ones combine the per-task gradients of the shared backbone
parameters (each head keeps its own task's gradient, weight 1).

Loss level:
    fixed        constant per-task weights (default 1 each).
    uncertainty  learned homoscedastic-uncertainty weights exp(-s_t) plus a log-variance penalty (Kendall et al. 2018).
    dwa          Dynamic Weight Average: K * softmax of last-two-epoch loss ratios / T (Liu et al. 2019).
    rlw          Random Loss Weighting: softmax of standard-normal draws each step (Lin et al. 2021).
    gradnorm     weights trained to equalise last-shared-layer gradient norms, times training rates (Chen et al. 2018).
    famo         FAMO: weights move to the task whose log-loss decreases slowest (Liu et al. 2023).
    gls          Geometric Loss Strategy: minimise the geometric mean of the task losses (Chennupati et al. 2019).

Gradient level:
    pcgrad       project each task gradient off the gradients it conflicts with, then sum (Yu et al. 2020).
    mgda         min-norm point of the convex hull of the task gradients; MGDA-UB by default (Sener & Koltun 2018).
    cagrad       average gradient corrected towards the worst-off task within a ball of radius c (Liu et al. 2021).
    imtl         IMTL-G: update with equal projections onto every task's unit gradient (Liu et al. 2021).
    aligned_mtl  align the task gradients to condition number 1 (Gram eigenbasis), then sum (Senushkin et al. 2023).
    nash_mtl     Nash bargaining weights solving G^T G alpha = 1/alpha, clipped to max_norm (Navon et al. 2022).
"""

from multitask_deeplab.weighting import gradient_level, loss_level  # noqa: F401  (registers the strategies)
from multitask_deeplab.weighting.base import WEIGHTINGS, GradientWeighting, LossWeighting, Weighting

__all__ = ["WEIGHTINGS", "GradientWeighting", "LossWeighting", "Weighting"]
