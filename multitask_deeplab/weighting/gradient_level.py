"""Gradient-level strategies: combine the per-task gradients of the shared parameters (heads keep weight 1)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from multitask_deeplab.config.validation import check_choice, check_number
from multitask_deeplab.weighting.base import WEIGHTINGS, GradientWeighting, SeededMixin
from multitask_deeplab.weighting.solvers import (
    aligned_mtl_matrix,
    cagrad_weights,
    fair_coefficients,
    imtl_g_coefficients,
    min_norm_coefficients,
    pcgrad_projection,
)


@WEIGHTINGS.register("pcgrad")
class PCGrad(SeededMixin, GradientWeighting):
    """PCGrad, gradient surgery (Yu et al., NeurIPS 2020).

    Each task gradient is projected onto the normal plane of every other task gradient it conflicts with
    (negative inner product), in a random order per task drawn from a generator seeded with ``seed``; the
    shared update is the sum of the projected gradients (the paper's sum; weights 1 without conflicts).

    Args:
        seed: Seed of the task orders (its state is saved in the state dict).
    """

    def __init__(self, *, seed: int = 0, **base: Any) -> None:
        super().__init__(**base)
        self._init_generator(seed)

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        return pcgrad_projection(gram, self.generator).sum(0)


@WEIGHTINGS.register("mgda")
class MGDA(GradientWeighting):
    """MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

    The shared update is the min-norm point of the convex hull of the task gradients (weights summing to 1),
    found exactly by an active-set solve (:func:`min_norm_coefficients`). By default (``gradients="features"``,
    MGDA-UB, the paper's upper-bound variant) the weights come from the gradients w.r.t. the shared features:
    the heads read detached leaves, so ``dL_t/dleaves`` are the direct partials of each level (a total derivative
    w.r.t. a level would also contain the paths through the deeper levels computed from it, and count them
    twice), and the backbone takes one backward of ``sum_t alpha_t dL_t/dleaves``. ``gradients="params"`` uses
    the gradients w.r.t. the shared parameters. ``normalization`` divides each gradient before the solve, as in
    the authors' code: "none", "l2" (by its norm), "loss" (by the loss) or "loss+" (by loss times norm); as
    there, the weights then apply to the raw task gradients.

    Args:
        gradients: "features" (MGDA-UB) or "params".
        normalization: "none", "l2", "loss" or "loss+".
    """

    def __init__(self, *, gradients: str = "features", normalization: str = "none", **base: Any) -> None:
        super().__init__(gradients=gradients, **base)
        self.normalization = check_choice("mgda", "normalization", normalization, ("none", "l2", "loss", "loss+"))

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        norms = gram.diagonal().sqrt()
        divisor = {
            "none": torch.ones_like(norms),
            "l2": norms,
            "loss": losses.clamp_min(1e-12),
            "loss+": losses.clamp_min(1e-12) * norms,
        }[self.normalization]
        return min_norm_coefficients(gram / torch.outer(divisor, divisor), owner="mgda")


@WEIGHTINGS.register("cagrad")
class CAGrad(GradientWeighting):
    """Conflict-Averse Gradient descent (Liu et al., NeurIPS 2021).

    Maximises the worst task's improvement within a ball of radius ``c |g_0|`` around the average gradient
    ``g_0``: ``d = g_0 + (c |g_0| / |g_w|) g_w`` with ``g_w = sum_t w_t g_t`` and ``w`` the minimiser of the dual
    ``w^T G^T g_0 + c |g_0| |g_w|`` over the simplex (:func:`cagrad_weights`, an exact solve in place of the
    reference's scipy SLSQP). As in the reference, ``d`` is divided by ``1 + c^2``
    (``rescale=1``; 0: no division, 2: ``1 + c``) and multiplied by T "to match the sum loss", so with ``c=0``
    the update is the plain sum of the task gradients (weights 1).

    Args:
        c: The conflict-aversion radius (paper: 0.4 on NYUv2 and Cityscapes).
        rescale: 0, 1 or 2, as above.
    """

    def __init__(self, *, c: float = 0.4, rescale: int = 1, **base: Any) -> None:
        super().__init__(**base)
        check_choice("cagrad", "rescale", rescale, (0, 1, 2))
        self.c = check_number("cagrad", "c", c, low=0.0)
        self.rescale = rescale

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        k = gram.shape[0]
        w = cagrad_weights(gram, self.c, owner="cagrad")
        average_norm = gram.mean().clamp_min(0.0).sqrt()
        combined_norm = (w @ gram @ w).clamp_min(0.0).sqrt()
        lam = self.c * average_norm / combined_norm.clamp_min(1e-12 * gram.diagonal().max().sqrt())
        divisor = (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        return k * (1.0 / k + lam * w) / divisor


@WEIGHTINGS.register("imtl")
class IMTLG(GradientWeighting):
    """IMTL-G, the gradient half of Impartial Multi-Task Learning (Liu et al., ICLR 2021).

    Closed-form weights summing to 1 such that the update has equal projections onto every task's unit
    gradient (:func:`imtl_g_coefficients`). IMTL-L (learned loss scales) is not included.
    """

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        return imtl_g_coefficients(gram)


@WEIGHTINGS.register("aligned_mtl")
class AlignedMTL(GradientWeighting):
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023).

    Aligns the task gradients so their matrix has condition number 1 (orthogonal, equal-norm components,
    rescaled by the smallest singular value with ``scale_mode="min"``) through the eigendecomposition of the
    Gram matrix, and sums the aligned gradients (:func:`aligned_mtl_matrix`), as the authors' code does.

    Args:
        scale_mode: "min", "median" or "rmse": which singular value sets the aligned gradients' norm.
    """

    def __init__(self, *, scale_mode: str = "min", **base: Any) -> None:
        super().__init__(**base)
        check_choice("aligned_mtl", "scale_mode", scale_mode, ("min", "median", "rmse"))
        self.scale_mode = scale_mode

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        return aligned_mtl_matrix(gram, self.scale_mode).sum(1)


@WEIGHTINGS.register("nash_mtl")
class NashMTL(GradientWeighting):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022).

    The update ``sum_t alpha_t g_t`` with ``alpha > 0`` solving ``G^T G alpha = 1 / alpha`` (element-wise), the
    Nash bargaining solution, found by Newton's method on a convex potential (:func:`fair_coefficients`, scale-free
    on the unit-diagonal Gram matrix) instead of the reference's cvxpy sequence. ``alpha`` is recomputed every
    ``update_weights_every`` steps; in between, one backward of ``sum_t alpha_t L_t`` with the last ``alpha``
    (0 for a task absent from that solve) gives the shared gradient (the heads still get weight 1). The shared
    update is then clipped to norm ``max_norm`` (0 disables), after the backward, as in the authors' code,
    LibMTL and torchjd. ``task_weights()`` reports ``alpha`` times the clip factor.

    Args:
        update_weights_every: Steps between two solves of ``alpha``.
        max_norm: Norm the shared update is clipped to (0: no clipping).
    """

    def __init__(self, *, update_weights_every: int = 1, max_norm: float = 1.0, **base: Any) -> None:
        super().__init__(**base)
        every = update_weights_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"update_weights_every must be an integer >= 1, got {update_weights_every!r}")
        self.update_weights_every = update_weights_every
        self.max_norm = check_number("nash_mtl", "max_norm", max_norm, low=0.0)
        self.register_buffer("alpha", torch.ones(self.num_tasks))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._solving = True

    def begin_step(self) -> None:
        self._solving = self.step.item() % self.update_weights_every == 0
        self.step += 1

    def fixed_coefficients(self) -> Tensor | None:
        return None if self._solving else self.alpha

    def coefficients(self, gram: Tensor, losses: Tensor, active: Tensor) -> Tensor:
        alpha = super().coefficients(gram, losses, active)
        self.alpha.copy_(alpha)
        return alpha

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        return fair_coefficients(gram, owner="nash_mtl")

    def scale_update(self, norm: float) -> float:
        return min(1.0, self.max_norm / norm) if self.max_norm > 0 and math.isfinite(norm) and norm > 0 else 1.0


@WEIGHTINGS.register("fairgrad")
class FairGrad(GradientWeighting):
    """FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, Algorithm 1).

    alpha-fair allocation of the update's first-order progress among the tasks: weights ``x > 0`` with
    ``(G^T G x)_i = x_i^(-1/alpha)`` (their Eq. 4), found exactly by Newton's method (:func:`fair_coefficients`)
    instead of the reference's scipy ``least_squares``. Every task's loss then decreases to first order
    (``<g_i, d> = x_i^(-1/alpha) > 0``); ``alpha = 1`` gives Nash-MTL's weights (without its clip).

    Args:
        alpha: The fairness parameter (> 0; the authors' run script: 2; LibMTL's default: 1).
    """

    def __init__(self, *, alpha: float = 2.0, **base: Any) -> None:
        super().__init__(**base)
        self.alpha = check_number("fairgrad", "alpha", alpha, low=0.0, low_open=True)

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        return fair_coefficients(gram, self.alpha, owner="fairgrad")
