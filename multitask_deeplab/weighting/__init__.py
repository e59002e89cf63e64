"""Multi-task loss weighting strategies, built by name from the ``WEIGHTINGS`` registry.

``WEIGHTINGS.build({"type": name, **args}, task_names=[...], task_kinds={...})`` returns a :class:`Weighting`;
:func:`multitask_deeplab.engine.backward.mtl_backward` turns a step's task losses into gradients with it.
Loss-level strategies backpropagate one combination of the task losses; gradient-level ones combine the per-task
gradients of the shared backbone parameters, or with ``gradients: features`` of the shared features (each head
keeps its own task's gradient, weight 1).

Loss level:
    fixed        constant per-task weights (default 1 each).
    uncertainty  learned homoscedastic-uncertainty weights exp(-s_t) plus a log-variance penalty (Kendall et al. 2018).
    dwa          Dynamic Weight Average: T * softmax of last-two-epoch loss ratios / temperature (Liu et al. 2019).
    rlw          Random Loss Weighting: softmax of standard-normal draws each step (Lin et al. 2022).
    gradnorm     weights trained to equalise last-shared-layer gradient norms, times training rates (Chen et al. 2018).
    famo         FAMO: weights move to the task whose log-loss decreases slowest (Liu et al. 2023).
    gls          Geometric Loss Strategy: minimise the geometric mean of the task losses (Chennupati et al. 2019).
    stch         Smooth Tchebycheff: a smooth maximum of the log-losses relative to a nadir point (Lin et al. 2024).
    imtl_l       IMTL-L: learned loss scales exp(s_t) with a -s_t penalty (Liu et al. 2021).

Gradient level:
    pcgrad       project each task gradient off the gradients it conflicts with, then sum (Yu et al. 2020).
    mgda         min-norm point of the convex hull of the task gradients; MGDA-UB by default (Sener & Koltun 2018).
    cagrad       average gradient corrected towards the worst-off task within a ball of radius c (Liu et al. 2021).
    imtl         IMTL-G: update with equal projections onto every task's unit gradient (Liu et al. 2021).
    aligned_mtl  align the task gradients to condition number 1 (Gram eigenbasis), then sum (Senushkin et al. 2023).
    nash_mtl     Nash bargaining weights solving G^T G alpha = 1/alpha, clipped to max_norm (Navon et al. 2022).
    fairgrad     alpha-fair weights solving G^T G x = x^(-1/alpha) (Ban & Ji 2024).
    upgrad       sum of the task gradients projected onto their dual cone (Quinton & Rey 2024).
    dualproj     the mean gradient projected onto the dual cone (Lopez-Paz & Ranzato 2017).
    config       the direction of equal cosine to every task gradient, ConFIG (Liu et al. 2025).
    gradvac      PCGrad towards EMA cosine targets, Gradient Vaccine (Wang et al. 2021).
    graddrop     per-coordinate sign dropout by sign purity; on the features by default (Chen et al. 2020).
    pcd          a primary task's gradient, constrained to give the others a fraction of progress (torchjd, 2026).
    moco         tracked, loss-normalised task gradients with softmax-updated weights (Fernando et al. 2023).
    modo         weights stepped on a double-sampled Gram matrix (Chen et al. 2023).
    sdmgrad      direction-oriented MGDA on a double-sampled Gram matrix (Xiao et al. 2023).
    db_mtl       log-loss gradients, EMA-averaged and scaled to the largest norm (Lin et al. 2023).
    excess_mtl   exponentiated-gradient weights from AdaGrad-estimated excess risks (He et al. 2024).
    cr_mogm      another strategy's weights smoothed by an EMA (Zhou et al. 2022).
"""

from multitask_deeplab.weighting import conflict, gradient_level, loss_level, tracking  # noqa: F401  (registers the strategies)
from multitask_deeplab.weighting.base import WEIGHTINGS, GradientWeighting, LossWeighting, Weighting

__all__ = ["WEIGHTINGS", "GradientWeighting", "LossWeighting", "Weighting"]
