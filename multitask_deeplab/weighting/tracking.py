"""Gradient-level strategies whose state tracks the task gradients or weights across steps: MoCo, MoDo, SDMGrad,
DB-MTL, ExcessMTL, and CR-MOGM's smoothing of another strategy's weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from multitask_deeplab.config.validation import check_number
from multitask_deeplab.weighting.base import WEIGHTINGS, GradientWeighting
from multitask_deeplab.weighting.solvers import project_to_simplex


class CoordinateStateMixin:
    """Buffers shaped like the T x P task gradients (a value per task and gradient coordinate), created at the
    first step and resized when a checkpoint is loaded into a fresh strategy. They make the state dict as large
    as T copies of the shared parameters."""

    coordinate_buffers: tuple[str, ...] = ()

    def _init_coordinate_state(self) -> None:
        for name in self.coordinate_buffers:
            self.register_buffer(name, torch.zeros(0))

    def coordinate_state(self, name: str, like: Tensor) -> Tensor:
        """The buffer ``name``, zeros shaped like ``like`` at the first call."""
        buffer = getattr(self, name)
        if buffer.shape != like.shape:
            buffer = torch.zeros_like(like)
            setattr(self, name, buffer)
        return buffer

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self.coordinate_buffers:
            if prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name], device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _rate(base: float, sigma: float, step: Tensor) -> float:
    """``base / k^sigma`` at step ``k`` (1 for the first step)."""
    return base / float(step.item()) ** sigma


@WEIGHTINGS.register("moco")
class MoCo(CoordinateStateMixin, GradientWeighting):
    """MoCo, Multi-objective gradient Correction (Fernando et al., "Mitigating Gradient Bias in Multi-objective
    Learning: A Provably Convergent Approach", ICLR 2023).

    Tracks each task's gradient, normalised to the task's loss (``g_t / |g_t| L_t``, as the authors' code and
    LibMTL do), with ``y <- y - beta_k (y - g)``; then ``lambda <- softmax(lambda - gamma_k (y y^T + rho I)
    lambda)`` (the authors' code and LibMTL use the softmax where the paper projects onto the simplex) and the
    update is ``y^T lambda``, with ``beta_k = beta / k^beta_sigma``, ``gamma_k = gamma / k^gamma_sigma`` at step k.
    Parameter level only (the tracked gradients are per coordinate). ``task_weights()`` reports ``lambda``.

    Args:
        beta: Tracking rate (LibMTL's default 0.5).
        beta_sigma: Its decay exponent (0.5).
        gamma: Step size of ``lambda`` (0.1).
        gamma_sigma: Its decay exponent (0.5).
        rho: L2 regularisation of ``lambda``'s update (0).
    """

    uses_matrix = True
    supports_features = False
    coordinate_buffers = ("tracked",)

    def __init__(
        self, *, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1, gamma_sigma: float = 0.5, rho: float = 0.0, **base: Any
    ) -> None:
        super().__init__(**base)
        self.beta = check_number("moco", "beta", beta, low=0.0, high=1.0)
        self.beta_sigma = check_number("moco", "beta_sigma", beta_sigma, low=0.0)
        self.gamma = check_number("moco", "gamma", gamma, low=0.0)
        self.gamma_sigma = check_number("moco", "gamma_sigma", gamma_sigma, low=0.0)
        self.rho = check_number("moco", "rho", rho, low=0.0)
        self._init_coordinate_state()
        self.register_buffer("lambd", torch.full((self.num_tasks,), 1.0 / self.num_tasks))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        self.step += 1
        norms = grads.norm(dim=1, keepdim=True)
        target = torch.where(norms > 0, grads / norms.clamp_min(torch.finfo(grads.dtype).tiny), 0.0) * losses[:, None]
        tracked = self.coordinate_state("tracked", grads)
        tracked.sub_(_rate(self.beta, self.beta_sigma, self.step) * (tracked - target))
        products = tracked @ tracked.T + self.rho * torch.eye(self.num_tasks, device=grads.device)
        lambd = self.lambd.to(grads)
        self.lambd.copy_(torch.softmax(lambd - _rate(self.gamma, self.gamma_sigma, self.step) * products @ lambd, dim=0))
        return self.lambd.to(grads) @ tracked, self.lambd


@WEIGHTINGS.register("db_mtl")
class DBMTL(CoordinateStateMixin, GradientWeighting):
    """DB-MTL, Dual-Balancing Multi-Task Learning (Lin et al., arXiv 2308.12029, 2023; LibMTL's ``DB_MTL``).

    Loss scale balancing: the gradients are those of ``log(L_t + 1e-8)``, ``g_t / (L_t + 1e-8)`` (the heads get them
    too). Gradient
    magnitude balancing: an EMA ``m_t <- g_t + beta_k (m_t - g_t)`` (``beta_k = beta / k^beta_sigma``) of each
    task's gradient, every ``m_t`` scaled to the largest norm, summed. Parameter level only.
    ``task_weights()`` reports the scale factors ``max_j |m_j| / |m_t|``.

    Args:
        beta: The EMA rate (LibMTL's default 0.9).
        beta_sigma: Its decay exponent (0: constant).
    """

    uses_matrix = True
    supports_features = False
    coordinate_buffers = ("average",)

    def __init__(self, *, beta: float = 0.9, beta_sigma: float = 0.0, **base: Any) -> None:
        super().__init__(**base)
        self.beta = check_number("db_mtl", "beta", beta, low=0.0, high=1.0)
        self.beta_sigma = check_number("db_mtl", "beta_sigma", beta_sigma, low=0.0)
        self._init_coordinate_state()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def loss_scales(self, losses: Tensor) -> Tensor:
        return 1.0 / (losses + 1e-8)  # d log(L + 1e-8) / dL

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        self.step += 1
        average = self.coordinate_state("average", grads)
        average.copy_(grads + _rate(self.beta, self.beta_sigma, self.step) * (average - grads))
        norms = average.norm(dim=1)
        scales = torch.where(norms > 0, norms.max() / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
        return scales @ average, scales


@WEIGHTINGS.register("excess_mtl")
class ExcessMTL(CoordinateStateMixin, GradientWeighting):
    """ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024).

    Each task's excess risk is estimated as ``g_t^T H_t^-1 g_t`` with the diagonal AdaGrad preconditioner
    ``H_t = sqrt(sum of past g_t^2 + 1e-7)`` (their Eq. 6-7), divided by its first value (Section 3.2); the weights
    take an exponentiated-gradient step ``w_t <- w_t exp(step_size * excess_t)`` and are renormalised to sum to T
    (as the official code in LibMTL; the first step keeps weight 1). The update is ``sum_t w_t g_t``; the heads
    keep weight 1, like every gradient-level strategy here (the official code weights them too). Parameter level
    only.

    Args:
        robust_step_size: The step size of the weights (the official code's default 0.01).
    """

    uses_matrix = True
    supports_features = False
    coordinate_buffers = ("sq_sum",)

    def __init__(self, *, robust_step_size: float = 1e-2, **base: Any) -> None:
        super().__init__(**base)
        self.robust_step_size = check_number("excess_mtl", "robust_step_size", robust_step_size, low=0.0)
        self._init_coordinate_state()
        self.register_buffer("initial", torch.zeros(self.num_tasks))

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        sq_sum = self.coordinate_state("sq_sum", grads)
        sq_sum.add_(grads.square())
        excess = (grads.square() / (sq_sum + 1e-7).sqrt()).sum(1)
        initial = self.initial.to(excess)
        fresh = initial <= 0  # no baseline yet (first step, or a task absent until now): no move this step
        self.initial.copy_(torch.where(fresh, excess, initial))
        ratio = torch.where(fresh, 0.0, excess / initial.clamp_min(torch.finfo(excess.dtype).tiny))
        weights = self.weights.to(excess) * torch.exp(self.robust_step_size * ratio)
        weights = weights * self.num_tasks / weights.sum()
        return weights @ grads, weights


@WEIGHTINGS.register("modo")
class MoDo(GradientWeighting):
    """MoDo, Multi-objective gradient with Double sampling (Chen, Fernando et al., "Three-Way Trade-Off in
    Multi-Objective Learning", NeurIPS 2023 / JMLR 2024).

    ``lambda <- Pi_simplex(lambda - gamma (G lambda + rho lambda))`` with ``G`` estimated from independent samples
    (``E[g] E[g]^T``, unbiased; the paper's double sampling): the driver forms it from the step's micro-batches
    and processes taken pairwise, so set ``train.accumulate_steps >= 2`` or train on several processes (with one
    batch the plain, biased Gram matrix is used). The update is ``lambda`` times the step's mean gradient (the
    paper's Eq. 2.9b). Parameter level only.

    Args:
        gamma: Step size of ``lambda`` (LibMTL's default 1e-3).
        rho: L2 regularisation of ``lambda`` (0.1).
    """

    independent_gram = True
    supports_features = False

    def __init__(self, *, gamma: float = 1e-3, rho: float = 0.1, **base: Any) -> None:
        super().__init__(**base)
        self.gamma = check_number("modo", "gamma", gamma, low=0.0, low_open=True)
        self.rho = check_number("modo", "rho", rho, low=0.0)
        self.register_buffer("lambd", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))

    def coefficients(self, gram: Tensor, losses: Tensor, active: Tensor) -> Tensor:
        lambd = self.lambd.cpu()
        lambd = project_to_simplex(lambd - self.gamma * (gram @ lambd + self.rho * lambd))
        self.lambd.copy_(lambd)
        return lambd


@WEIGHTINGS.register("sdmgrad")
class SDMGrad(GradientWeighting):
    """SDMGrad, Stochastic Direction-oriented Multi-objective Gradient descent (Xiao, Ban & Ji, NeurIPS 2023).

    ``niter`` steps of SGD with momentum (``lr``, ``momentum``) from the last step's ``w``, each projected onto the
    simplex, on ``|G_w + lamda g_0|^2 / 2`` (``g_0`` the mean gradient), with the Gram matrix estimated from
    independent samples (as for ``modo``: ``train.accumulate_steps >= 2`` or several processes) and divided by the
    squared mean gradient norm; the update is ``(g_w + lamda g_0) / (1 + lamda)`` on the step's mean gradients.
    The fixed ``niter`` inner steps are the method (the paper's Algorithm 1), not a solve to convergence.
    Parameter level only.

    Args:
        lamda: Pull towards the mean gradient (the authors' experiments and LibMTL: 0.3).
        niter: Inner steps (20).
        lr: Inner learning rate (LibMTL: 5; torchjd: 10).
        momentum: Inner momentum (0.5).
    """

    independent_gram = True
    supports_features = False

    def __init__(self, *, lamda: float = 0.3, niter: int = 20, lr: float = 5.0, momentum: float = 0.5, **base: Any) -> None:
        super().__init__(**base)
        self.lamda = check_number("sdmgrad", "lamda", lamda, low=0.0)
        if isinstance(niter, bool) or not isinstance(niter, int) or niter < 1:
            raise ValueError(f"sdmgrad niter must be an integer >= 1, got {niter!r}")
        self.niter = niter
        self.lr = check_number("sdmgrad", "lr", lr, low=0.0, low_open=True)
        self.momentum = check_number("sdmgrad", "momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.register_buffer("w", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))

    def coefficients(self, gram: Tensor, losses: Tensor, active: Tensor) -> Tensor:
        scale = gram.diagonal().clamp_min(0.0).sqrt().mean().item() ** 2
        a = gram / max(scale, torch.finfo(gram.dtype).tiny)
        target = a.mean(1)  # a @ (1 / T)
        w, velocity = self.w.cpu(), None
        for _ in range(self.niter):
            grad = a @ w + self.lamda * target
            velocity = grad if velocity is None else self.momentum * velocity + grad
            w = project_to_simplex(w - self.lr * velocity)
        self.w.copy_(w)
        return (w + self.lamda / self.num_tasks) / (1.0 + self.lamda)


@WEIGHTINGS.register("cr_mogm")
class CRMOGM(GradientWeighting):
    """CR-MOGM (Zhou et al., "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond",
    NeurIPS 2022): another strategy's weights smoothed across steps, ``lambda_k = alpha lambda_{k-1} +
    (1 - alpha) lambda_hat_k`` (``lambda_0 = lambda_hat_1``), as torchjd's ``CRMOGMWeighting``.

    Args:
        weighting: The strategy whose weights are smoothed, ``{type: name, **args}`` (default MGDA); any
            Gram-based gradient-level strategy. Its ``gradients`` is this strategy's.
        alpha: The EMA coefficient of the previous weights, in [0, 1] (torchjd's default 0.9).
    """

    def __init__(self, *, weighting: Mapping[str, Any] | None = None, alpha: float = 0.9, **base: Any) -> None:
        super().__init__(**base)
        cfg = dict(weighting or {"type": "mgda"})
        if "type" not in cfg or "gradients" in cfg or "task_names" in cfg:
            raise ValueError(f"cr_mogm weighting must be {{type: name, ...}} without gradients (set it on cr_mogm), got {cfg}")
        builder = WEIGHTINGS.get(cfg["type"])
        if not (isinstance(builder, type) and issubclass(builder, GradientWeighting)) or builder.uses_matrix:
            raise ValueError(f"cr_mogm smooths task weights from the Gram matrix; {cfg['type']!r} does not give them: pick another weighting")
        self.inner = WEIGHTINGS.build(cfg, task_names=self.task_names, task_kinds=self.task_kinds, gradients=self.gradients)
        self.alpha = check_number("cr_mogm", "alpha", alpha, low=0.0, high=1.0)
        self.register_buffer("smoothed", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @property
    def independent_gram(self) -> bool:  # type: ignore[override]
        return self.inner.independent_gram

    def begin_step(self) -> None:
        self.inner.begin_step()

    def loss_scales(self, losses: Tensor) -> Tensor:
        return self.inner.loss_scales(losses)

    def fixed_coefficients(self) -> Tensor | None:
        return self.inner.fixed_coefficients()

    def scale_update(self, norm: float) -> float:
        return self.inner.scale_update(norm)

    def coefficients(self, gram: Tensor, losses: Tensor, active: Tensor) -> Tensor:
        estimate = self.inner.coefficients(gram, losses, active)
        smoothed = estimate if not self.started else self.alpha * self.smoothed.cpu() + (1.0 - self.alpha) * estimate
        self.smoothed.copy_(smoothed)
        self.started.fill_(True)
        return smoothed
