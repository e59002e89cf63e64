"""Gradient-level strategies: combine the per-task gradients of the shared parameters (heads keep weight 1)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from multitask_deeplab.config.validation import check_choice, check_number
from multitask_deeplab.weighting.base import WEIGHTINGS, GradientWeighting, SeededMixin
from multitask_deeplab.weighting.gradients import (
    SharedFeatures,
    accumulate_grads_,
    all_reduce_grads_,
    all_reduce_mean_,
    scale_losses,
    task_gradients,
    unflatten,
)
from multitask_deeplab.weighting.solvers import (
    aligned_mtl_matrix,
    cagrad_weights,
    imtl_g_coefficients,
    min_norm_coefficients,
    nash_coefficients,
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
    found by Frank-Wolfe (:func:`min_norm_coefficients`). With ``mode="features"`` (MGDA-UB, the paper's
    upper-bound variant; the default) the weights come from the gradients w.r.t. the shared features, the
    :class:`~multitask_deeplab.weighting.gradients.SharedFeatures` that ``forward_with_shared_features(model, image)`` returns and
    ``backward`` takes as ``features``. The heads read its detached ``leaves``, so ``dL_t/dleaves`` are the
    direct partials of each level (a total derivative w.r.t. a level would also contain the paths through the
    deeper levels computed from it, and count them twice); the backbone then takes one backward of
    ``sum_t alpha_t dL_t/dleaves`` from the graph-connected ``tensors``. Under DDP the per-process Gram
    matrices are averaged (the global one up to a factor, which the min-norm weights do not depend on) and the
    backbone's gradients are averaged after. ``mode="params"`` uses the gradients w.r.t. the shared
    parameters. ``normalization`` divides each gradient before the solve, as in the authors' code:
    "none", "l2" (by its norm), "loss" (by the loss) or "loss+" (by loss times norm); as there, the weights
    then apply to the raw task gradients.

    Args:
        mode: "features" (MGDA-UB) or "params".
        normalization: "none", "l2", "loss" or "loss+".
    """

    def __init__(self, *, mode: str = "features", normalization: str = "none", **base: Any) -> None:
        super().__init__(**base)
        check_choice("mgda", "mode", mode, ("features", "params"))
        check_choice("mgda", "normalization", normalization, ("none", "l2", "loss", "loss+"))
        self.mode = mode
        self.normalization = normalization

    @property
    def needs_features(self) -> bool:
        return self.mode == "features"

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        norms = gram.diagonal().sqrt()
        divisor = {
            "none": torch.ones_like(norms),
            "l2": norms,
            "loss": losses.clamp_min(1e-12),
            "loss+": losses.clamp_min(1e-12) * norms,
        }[self.normalization]
        return min_norm_coefficients(gram / torch.outer(divisor, divisor))

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_parameters: Sequence[Tensor],
        head_parameters: Sequence[Tensor],
        features: SharedFeatures | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if self.mode == "params":
            super().backward(
                losses, shared_parameters=shared_parameters, head_parameters=head_parameters, scaler=scaler
            )
            return
        if features is None:
            raise ValueError(
                "mgda with mode='features' needs the backbone's output features: pass "
                "features=forward_with_shared_features(model, image)[1], or use mode='params'"
            )
        vector = self.stack(losses)
        scaled, scale = scale_losses(vector, scaler)
        # The heads' graph ends at the leaves; the backbone's graph is still intact for the backward below.
        grads = task_gradients(scaled, features.leaves, head_parameters=head_parameters)
        coefs = self.coefficients(all_reduce_mean_(grads @ grads.T), vector.detach(), scale)
        combined = unflatten(coefs @ grads, features.tensors)
        torch.autograd.backward(features.tensors, grad_tensors=combined, inputs=list(shared_parameters))
        all_reduce_grads_(shared_parameters)
        all_reduce_grads_(head_parameters)


@WEIGHTINGS.register("cagrad")
class CAGrad(GradientWeighting):
    """Conflict-Averse Gradient descent (Liu et al., NeurIPS 2021).

    Maximises the worst task's improvement within a ball of radius ``c |g_0|`` around the average gradient
    ``g_0``: ``d = g_0 + (c |g_0| / |g_w|) g_w`` with ``g_w = sum_t w_t g_t`` and ``w`` the minimiser of the dual
    ``w^T G^T g_0 + c |g_0| |g_w|`` over the simplex (:func:`cagrad_weights`, a projected-gradient solve in
    place of the reference's scipy SLSQP). As in the reference, ``d`` is divided by ``1 + c^2``
    (``rescale=1``; 0: no division, 2: ``1 + c``) and multiplied by K "to match the sum loss", so with ``c=0``
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
        w = cagrad_weights(gram, self.c)
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
    Nash bargaining solution, found by damped Newton on a convex potential (:func:`nash_coefficients`) instead of
    the reference's cvxpy sequence. ``alpha`` is recomputed every ``update_weights_every`` steps; in between,
    one backward of ``sum_t alpha_t L_t`` with the last ``alpha`` (0 for a task absent from that solve) gives the
    shared gradient (the heads still get weight 1). The shared
    update is then clipped to norm ``max_norm`` (0 disables): the reference calls ``clip_grad_norm_`` before its
    backward, which clips nothing, so here the clip is applied to the combined shared gradient as intended.
    ``task_weights()`` reports ``alpha`` times the clip factor.

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

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        return nash_coefficients(gram)

    def _clip_factor(self, norm: float) -> float:
        return min(1.0, self.max_norm / norm) if self.max_norm > 0 and math.isfinite(norm) and norm > 0 else 1.0

    def coefficients(self, gram: Tensor, losses: Tensor, scale: float) -> Tensor:
        alpha = super().coefficients(gram, losses, scale)
        if not torch.isfinite(gram).all():
            return alpha
        self.alpha.copy_(alpha)
        a = alpha.double().cpu()
        factor = self._clip_factor(math.sqrt(max((a @ gram.detach().double().cpu() @ a).item(), 0.0)) / scale)
        self.weights.mul_(factor)
        return alpha * factor

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_parameters: Sequence[Tensor],
        head_parameters: Sequence[Tensor],
        features: SharedFeatures | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        update = self.step.item() % self.update_weights_every == 0
        self.step += 1
        if update:
            super().backward(
                losses, shared_parameters=shared_parameters, head_parameters=head_parameters, scaler=scaler
            )
            return
        scaled, scale = scale_losses(self.stack(losses), scaler)
        if head_parameters:
            torch.autograd.backward(scaled.sum(), inputs=list(head_parameters), retain_graph=True)
        combined = (self.alpha * scaled).sum().reshape(1)
        shared = all_reduce_mean_(task_gradients(combined, shared_parameters))[0]
        factor = self._clip_factor(shared.norm().item() / scale)
        self.weights.copy_(self.alpha * factor)
        accumulate_grads_(shared_parameters, unflatten(shared * factor, shared_parameters))
        all_reduce_grads_(head_parameters)
