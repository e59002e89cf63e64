"""Gradient-level strategies that resolve conflicts between the task gradients geometrically: projections onto the
dual cone (UPGrad, DualProj), a conflict-free direction (ConFIG), cosine targets (GradVac), sign dropout (GradDrop)
and a primary task with guaranteed progress for the others (PCD)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from multitask_deeplab.config.validation import check_number
from multitask_deeplab.weighting.base import WEIGHTINGS, GradientWeighting, SeededMixin
from multitask_deeplab.weighting.solvers import config_coefficients, dual_cone_weights, gradvac_coefficients, pcd_multipliers


@WEIGHTINGS.register("upgrad")
class UPGrad(GradientWeighting):
    """UPGrad, Unconflicting Projection of Gradients (Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", arXiv 2406.16232, 2024).

    Each task gradient, weighted 1/T, is projected onto the dual cone of all the task gradients (the directions
    that improve every task), and the projections are summed: weights ``sum_i v_i`` with
    ``v_i = argmin v^T G v`` s.t. ``v >= e_i / T`` (their Proposition 1), solved exactly and scale-free
    (:func:`dual_cone_weights`). Without conflicts every gradient lies in the cone: the update is the mean.
    """

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        k = gram.shape[0]
        return sum(dual_cone_weights(gram, torch.eye(k, dtype=gram.dtype)[i] / k, owner="upgrad") for i in range(k))


@WEIGHTINGS.register("dualproj")
class DualProj(GradientWeighting):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients (Lopez-Paz & Ranzato,
    "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, Eq. 11; as torchjd's ``DualProj``).

    Weights ``v = argmin v^T G v`` s.t. ``v >= 1/T`` (:func:`dual_cone_weights`): the closest direction to the
    mean that conflicts with no task. Without conflicts the update is the mean.
    """

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        k = gram.shape[0]
        return dual_cone_weights(gram, torch.full((k,), 1.0 / k, dtype=gram.dtype), owner="dualproj")


@WEIGHTINGS.register("config")
class ConFIG(GradientWeighting):
    """ConFIG, Conflict-Free Inverse Gradients (Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of
    Physics Informed Neural Networks", ICLR 2025, Eq. 2).

    The direction ``g_u`` with equal cosine to every task gradient (``U^+ 1`` for the unit gradients ``U``),
    scaled to ``sum_i <g_i, g_u>`` (:func:`config_coefficients`); it conflicts with no task.
    """

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        return config_coefficients(gram)


@WEIGHTINGS.register("gradvac")
class GradVac(SeededMixin, GradientWeighting):
    """GradVac, Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021).

    Like PCGrad, but each pair's cosine is raised to an EMA target ``phi_hat`` of its past cosines, not only to 0
    (:func:`gradvac_coefficients`); the update is the sum of the corrected gradients. The task order is drawn
    from a generator seeded with ``seed``; the targets start at 0 (then GradVac is PCGrad-like).

    Args:
        beta: The targets' EMA rate (paper: 0.01; LibMTL and torchjd default to 0.5).
        seed: Seed of the task orders (its state is saved in the state dict).
    """

    def __init__(self, *, beta: float = 0.01, seed: int = 0, **base: Any) -> None:
        super().__init__(**base)
        self.beta = check_number("gradvac", "beta", beta, low=0.0, high=1.0)
        self._init_generator(seed)
        self.register_buffer("targets", torch.zeros(self.num_tasks, self.num_tasks, dtype=torch.float64))

    def coefficients(self, gram: Tensor, losses: Tensor, active: Tensor) -> Tensor:
        index = active.nonzero().flatten()
        coefs = torch.zeros(len(active), dtype=torch.float64)
        if len(index):
            targets = self.targets[index][:, index].cpu()
            coefs[index] = gradvac_coefficients(gram[index][:, index], targets, self.beta, self.generator).sum(0)
            self.targets[index.unsqueeze(1), index] = targets.to(self.targets.device)
        return coefs


@WEIGHTINGS.register("graddrop")
class GradDrop(SeededMixin, GradientWeighting):
    """GradDrop, Gradient Sign Dropout (Chen et al., "Just Pick a Sign", NeurIPS 2020, Algorithm 1).

    For every coordinate, the positive sign purity ``P = (1 + sum_i g_i / sum_i |g_i|) / 2``; with ``U`` uniform
    in [0, 1) (a generator seeded with ``seed``), the gradients of sign + are kept where ``P > U`` and those of
    sign - where ``P < U``; the update is ``sum_i (leak + (1 - leak) M_i) g_i``. As in the paper (and LibMTL,
    which allows nothing else), it applies to the shared features by default; ``gradients="params"`` applies it
    to the shared parameters, as torchjd does. Here the purity is per coordinate (LibMTL first sums each feature
    gradient times the sign of the feature over the batch). Coordinates without conflict keep their sum.
    ``task_weights()`` reports 1 per task.

    Args:
        leak: The fraction of every gradient that passes unmasked (paper: 0).
        seed: Seed of the draws ``U`` (its state is saved in the state dict).
    """

    uses_matrix = True

    def __init__(self, *, gradients: str = "features", leak: float = 0.0, seed: int = 0, **base: Any) -> None:
        super().__init__(gradients=gradients, **base)
        self.leak = check_number("graddrop", "leak", leak, low=0.0, high=1.0)
        self._init_generator(seed)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        total = grads.abs().sum(0)
        purity = torch.where(total > 0, 0.5 * (1.0 + grads.sum(0) / total.clamp_min(torch.finfo(grads.dtype).tiny)), 0.5)
        draw = torch.rand(purity.shape, generator=self.generator).to(grads.device)
        keep = ((purity > draw) & (grads > 0)) | ((purity < draw) & (grads < 0))
        direction = ((self.leak + (1.0 - self.leak) * keep.to(grads.dtype)) * grads).sum(0)
        return direction, torch.ones(self.num_tasks)


@WEIGHTINGS.register("pcd")
class PCD(GradientWeighting):
    """Priority-Constrained Descent (torchjd's ``PCD``; "Not All Objectives Are Born Equal: Priority-Constrained
    Descent for Hierarchical Multi-Objective Optimization", TMLR 2026).

    The update follows the ``primary`` task's gradient as closely as possible while every other task gets at
    least a fraction ``tau`` of the first-order progress of a step along its own normalised gradient:
    ``min |d - s_1 g_1|^2`` s.t. ``<s_j g_j, d> >= tau |s_j g_j|^2``, with ``s_t = 1 / sqrt(v_t + eps)`` and ``v_t``
    the bias-corrected EMA (decay ``beta``) of ``|g_t|^2``; solved exactly through its dual
    (:func:`pcd_multipliers`), then rescaled to the primary gradient's norm. Infeasible constraints leave the
    primary gradient alone. Without conflicts the update is the primary task's gradient.

    Args:
        primary: The task that leads (default: the first).
        tau: The guaranteed fraction of progress of the other tasks, in [0, 1].
        beta: Decay of the EMA of the squared gradient norms, in [0, 1).
        eps: Added to that EMA before the square root.
    """

    def __init__(self, *, primary: str | None = None, tau: float = 0.02, beta: float = 0.999, eps: float = 1e-8, **base: Any) -> None:
        super().__init__(**base)
        if primary is not None and primary not in self.task_names:
            raise ValueError(f"pcd primary must be one of the tasks {self.task_names}, got {primary!r}")
        self.primary = self.task_names.index(primary) if primary is not None else 0
        self.tau = check_number("pcd", "tau", tau, low=0.0, high=1.0)
        self.beta = check_number("pcd", "beta", beta, low=0.0, high=1.0, high_open=True)
        self.eps = check_number("pcd", "eps", eps, low=0.0)
        self.register_buffer("sq_norm_ema", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def coefficients(self, gram: Tensor, losses: Tensor, active: Tensor) -> Tensor:
        self.step += 1
        self.sq_norm_ema.mul_(self.beta).add_((1.0 - self.beta) * gram.diagonal().to(self.sq_norm_ema))
        debiased = self.sq_norm_ema.cpu() / (1.0 - self.beta ** self.step.item())
        scales = torch.where(debiased + self.eps > 0, (debiased + self.eps).rsqrt(), 0.0)
        coefs = torch.zeros(self.num_tasks, dtype=torch.float64)
        if not active[self.primary]:
            return coefs  # no primary gradient: no update
        order = [self.primary, *(t for t in range(self.num_tasks) if t != self.primary)]
        normalised = (gram * torch.outer(scales, scales))[order][:, order]
        mu = pcd_multipliers(normalised, torch.full((self.num_tasks - 1,), self.tau, dtype=torch.float64), owner="pcd")
        w = torch.cat([torch.ones(1, dtype=torch.float64), mu if mu is not None else torch.zeros(self.num_tasks - 1, dtype=torch.float64)])
        sq_norm = (w @ normalised @ w).item()
        coefs[order] = w * scales[order] * (gram[self.primary, self.primary].item() / sq_norm) ** 0.5 if sq_norm > 0 else 0.0
        return coefs
