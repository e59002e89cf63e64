"""Loss-level strategies: one backward of a weighted combination of the task losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from multitask_deeplab.config.validation import check_number
from multitask_deeplab.weighting.base import WEIGHTINGS, LossWeighting, SeededMixin
from multitask_deeplab.weighting.solvers import adam_step_


@WEIGHTINGS.register("fixed")
class FixedWeighting(LossWeighting):
    """Constant weights: ``sum_t w_t L_t``.

    Args:
        weights: ``{task: weight}`` naming every task (non-negative); ``None`` gives 1 to every task.
    """

    def __init__(self, *, weights: Mapping[str, float] | None = None, **base: Any) -> None:
        super().__init__(**base)
        if weights is not None:
            values = [
                check_number("fixed weighting", f"weight of {task!r}", w, low=0.0)
                for task, w in zip(self.task_names, self.ordered(weights, "weights"))
            ]
            self.weights.copy_(torch.tensor(values))

    def loss_weights(self, losses: Tensor) -> Tensor:
        return self.weights


@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learns ``s_t = log sigma_t^2`` (initialised to 0) jointly with the network; ``s`` is an ``nn.Parameter``
    for the trainer's optimizer (no weight decay). From the paper's Gaussian and softmax likelihoods:
    regression tasks add ``0.5 * exp(-s) * L + 0.5 * s`` (``L / (2 sigma^2) + log sigma``, optimum
    ``s = log L``), classification tasks add ``exp(-s) * L + 0.5 * s`` (``L / sigma^2 + log sigma``, optimum
    ``s = log 2L``). Tasks whose kind is a classification (``task_kinds``, e.g. segmentation) use the classification form, every other task the
    regression form (LibMTL uses the regression form for every task). ``task_weights()`` reports the
    effective factors ``0.5 exp(-s)`` or ``exp(-s)``.
    """

    def __init__(self, **base: Any) -> None:
        super().__init__(**base)
        self.log_vars = nn.Parameter(torch.zeros(self.num_tasks))
        factors = [1.0 if name in self.task_kinds and self.task_kinds[name].classification else 0.5 for name in self.task_names]
        self.register_buffer("factors", torch.tensor(factors), persistent=False)

    def combine(self, losses: Tensor, detached: Tensor) -> Tensor:
        precision = self.factors * torch.exp(-self.log_vars)
        self.weights.copy_(precision.detach())
        return (precision * losses + 0.5 * self.log_vars).sum()


@WEIGHTINGS.register("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019).

    ``w_t = K * softmax_t(r / T)`` with ``r_t = L_t(e-1) / L_t(e-2)`` the ratio of the task's mean training loss
    over the last two epochs; weight 1 for every task in the first two epochs. The weights sum to K.

    Args:
        temperature: The softmax temperature ``T`` (paper: 2).
    """

    def __init__(self, *, temperature: float = 2.0, **base: Any) -> None:
        super().__init__(**base)
        self.temperature = check_number("dwa", "temperature", temperature, low=0.0, low_open=True)
        self.register_buffer("history", torch.zeros(2, self.num_tasks))  # mean losses of epochs e-2, e-1
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def loss_weights(self, losses: Tensor) -> Tensor:
        return self.weights

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Records the epoch's mean losses and sets the next epoch's weights."""
        values = torch.tensor(self.ordered(mean_losses, "mean_losses"), dtype=torch.float32, device=self.history.device)
        self.history.copy_(torch.stack([self.history[1], values]))
        self.epochs += 1
        if self.epochs.item() >= 2:
            ratio = self.history[1] / self.history[0].clamp_min(1e-12)
            self.weights.copy_(self.num_tasks * torch.softmax(ratio / self.temperature, dim=0))


@WEIGHTINGS.register("rlw")
class RandomLossWeighting(SeededMixin, LossWeighting):
    """Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random Weighting", TMLR 2022; arXiv 2021).

    Every optimizer step draws ``w = softmax(z)`` with ``z ~ N(0, I)`` from a generator seeded with ``seed``, as in
    the paper and LibMTL: the weights sum to 1 (not T). The same seed on every process gives the same weights.

    Args:
        seed: Seed of the weight generator (its state is saved in the state dict).
    """

    def __init__(self, *, seed: int = 0, **base: Any) -> None:
        super().__init__(**base)
        self._init_generator(seed)

    def begin_step(self) -> None:
        self.weights.copy_(torch.softmax(torch.randn(self.num_tasks, generator=self.generator), dim=0))

    def loss_weights(self, losses: Tensor) -> Tensor:
        return self.weights


@WEIGHTINGS.register("gls")
class GeometricLossStrategy(LossWeighting):
    """Geometric loss strategy (Chennupati et al., "MultiNet++", CVPR Workshops 2019): minimise ``(prod_t L_t)^(1/K)``.

    Backpropagated as ``sum_t c_t L_t`` with ``c_t = G / (T L_t)``, ``G`` the geometric mean: the same
    gradient, computed from the task losses averaged over processes, so DDP training matches single-process
    training on the whole batch. A task whose loss is exactly 0 (no valid pixel in the batch) is left out
    of the product for that step (its factor would zero every other task's gradient).
    """

    def loss_weights(self, losses: Tensor) -> Tensor:
        active = losses > 0
        count = active.sum().clamp_min(1)
        log_losses = torch.where(active, losses, torch.ones_like(losses)).log()
        geometric = torch.exp(log_losses.sum() / count)
        return torch.where(active, geometric / (count * losses.clamp_min(torch.finfo(losses.dtype).tiny)), 0.0)


@WEIGHTINGS.register("gradnorm")
class GradNorm(LossWeighting):
    """GradNorm (Chen et al., ICML 2018).

    Weights ``w`` (buffers, 1 at the start) scale the losses; after each backward they take one Adam step on
    ``L_grad = sum_t |w_t n_t - mean(w n) * r_t^alpha|`` with the target treated as constant, where ``n_t`` is
    the norm of ``d L_t / d W`` for the last shared layer ``W`` (the last shared parameter with more than one
    dimension: the last conv/linear weight of the backbone), and ``r_t`` the task's
    inverse training rate ``(L_t / L_t(0)) / mean(L / L(0))``. The gradient of ``L_grad`` w.r.t. ``w_t`` is
    ``sign(w_t n_t - target_t) * n_t``, so no second-order graph is needed. Then ``w`` is renormalised to sum
    to K (after a floor of 1e-4 keeps it positive). ``L_t(0)`` is the first positive loss seen for the task.
    The paper trains ``w`` with the network's optimizer; here a separate Adam on buffers (``lr``), and the
    ``W`` gradients and losses come averaged over processes (and micro-batches), so all ranks keep the same weights.

    Args:
        alpha: The restoring-force exponent (paper: 1.5 on NYUv2).
        lr: Adam learning rate of the weights.
    """

    needs_layer_norms = True

    def __init__(self, *, alpha: float = 1.5, lr: float = 0.025, **base: Any) -> None:
        super().__init__(**base)
        self.alpha = check_number("gradnorm", "alpha", alpha, low=0.0)
        self.lr = check_number("gradnorm", "lr", lr, low=0.0, low_open=True)
        self.register_buffer("initial_losses", torch.zeros(self.num_tasks))
        self.register_buffer("exp_avg", torch.zeros(self.num_tasks))
        self.register_buffer("exp_avg_sq", torch.zeros(self.num_tasks))
        self.register_buffer("step", torch.zeros(()))

    def loss_weights(self, losses: Tensor) -> Tensor:
        return self.weights

    def observe_layer_norms(self, norms: Tensor, losses: Tensor) -> None:
        """One GradNorm step on the weights from the gradient norms at ``W`` and the step's losses."""
        self.initial_losses.copy_(torch.where(self.initial_losses > 0, self.initial_losses, losses))
        ratio = torch.where(self.initial_losses > 0, losses / self.initial_losses.clamp_min(1e-12), 1.0)
        inverse_rate = ratio / ratio.mean()
        weighted = self.weights * norms
        target = weighted.mean() * inverse_rate**self.alpha
        grad = torch.sign(weighted - target) * norms
        adam_step_(self.weights, grad, self.exp_avg, self.exp_avg_sq, self.step, lr=self.lr)
        self.weights.clamp_(min=1e-4)
        self.weights.mul_(self.num_tasks / self.weights.sum())


@WEIGHTINGS.register("famo")
class FAMO(LossWeighting):
    """Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023).

    Logits ``xi`` (buffers, 0 at the start), ``z = softmax(xi)``. The step backpropagates
    ``sum_t z_t log(L_t - m_t + 1e-8) / c`` with ``c = sum_t z_t / (L_t - m_t + 1e-8)`` detached, i.e. weights
    ``z_t / (c (L_t - m_t + 1e-8))`` (summing to 1). After the optimizer step, :meth:`after_step` gets the same
    batch's new losses, forms the log-loss decrease ``delta_t``, and takes one Adam step (``lr``, L2
    ``weight_decay`` = the paper's gamma) on ``xi`` with gradient ``J_softmax(xi)^T delta``: the weight moves to
    the task whose loss decreases slowest (with several micro-batches per step, the step's mean losses before and
    after). Losses come averaged over processes. A task whose loss is exactly
    0 (no valid pixel) gets weight 0 for the step, and FAMO skips the logit update for a batch where a task's
    loss is 0 before or after the step (its log-decrease is undefined). The reference also clips the shared
    gradient norm to 1; here clipping is the trainer's.

    Args:
        lr: Adam learning rate of the logits (paper: 0.025).
        weight_decay: Regularisation gamma of the logits (1e-3).
        min_losses: ``{task: known minimum of its loss}`` (default 0 for every task).
    """

    needs_post_step_losses = True

    def __init__(
        self,
        *,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Mapping[str, float] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.lr = check_number("famo", "lr", lr, low=0.0, low_open=True)
        self.weight_decay = check_number("famo", "weight_decay", weight_decay, low=0.0)
        minimum = self.ordered(min_losses, "min_losses") if min_losses is not None else [0.0] * self.num_tasks
        self.register_buffer("min_losses", torch.tensor(minimum, dtype=torch.float32))
        self.register_buffer("logits", torch.zeros(self.num_tasks))
        self.register_buffer("exp_avg", torch.zeros(self.num_tasks))
        self.register_buffer("exp_avg_sq", torch.zeros(self.num_tasks))
        self.register_buffer("step", torch.zeros(()))
        self._previous: list[Tensor] = []

    def begin_step(self) -> None:
        self._previous = []

    def _shifted(self, losses: Tensor) -> Tensor:
        return (losses - self.min_losses).clamp_min(0.0) + 1e-8

    def loss_weights(self, losses: Tensor) -> Tensor:
        self._previous.append(losses)
        ratio = torch.where(losses > 0, torch.softmax(self.logits, dim=0) / self._shifted(losses), 0.0)
        return ratio / ratio.sum().clamp_min(torch.finfo(ratio.dtype).tiny)

    def after_step(self, losses: Mapping[str, Tensor]) -> None:
        """Updates the logits from the log-loss decrease between the last backward and these losses."""
        if not self._previous:
            return
        previous, self._previous = torch.stack(self._previous).mean(0), []
        current = self.stack(losses).detach()
        if not bool(torch.cat([previous, current]).gt(0).all()):
            return
        delta = self._shifted(previous).log() - self._shifted(current).log()
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - z @ delta)
        adam_step_(
            self.logits, grad, self.exp_avg, self.exp_avg_sq, self.step, lr=self.lr, weight_decay=self.weight_decay
        )


@WEIGHTINGS.register("stch")
class SmoothTchebycheff(LossWeighting):
    """STCH, Smooth Tchebycheff scalarisation (Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective
    Optimization", ICML 2024), in the form of the authors' multi-task code and LibMTL.

    Up to epoch ``warmup_epoch`` (0-based, included) the losses' logs are summed (``sum_t log L_t``), and during
    that epoch the mean losses are recorded as the nadir point ``z``. Then each step backpropagates
    ``T mu log sum_t exp(log(L_t / z_t) / mu)``, a smooth maximum of the log-losses relative to ``z`` that tends to
    the worst task's as ``mu -> 0``. Backpropagated as ``sum_t w_t L_t`` with ``w_t = d objective / d L_t`` at the
    losses averaged over processes (as ``gls``), so DDP training matches one process on the whole batch. Epochs are
    counted by the trainer's epoch ends (a schedule shorter than the warm-up only ever sums the logs).

    Args:
        mu: The smoothing parameter (LibMTL's default 1).
        warmup_epoch: The epoch that records the nadir point, after which STCH starts (LibMTL's default 4).
    """

    def __init__(self, *, mu: float = 1.0, warmup_epoch: int = 4, **base: Any) -> None:
        super().__init__(**base)
        self.mu = check_number("stch", "mu", mu, low=0.0, low_open=True)
        if isinstance(warmup_epoch, bool) or not isinstance(warmup_epoch, int) or warmup_epoch < 0:
            raise ValueError(f"stch warmup_epoch must be an integer >= 0, got {warmup_epoch!r}")
        self.warmup_epoch = warmup_epoch
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("loss_sum", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros((), dtype=torch.long))

    def loss_weights(self, losses: Tensor) -> Tensor:
        epoch = int(self.epochs.item())
        if epoch <= self.warmup_epoch:
            if epoch == self.warmup_epoch:
                self.loss_sum.add_(losses.to(self.loss_sum))
                self.loss_count += 1
            return 1.0 / (losses + 1e-20)  # d/dL of sum_t log(L_t + 1e-20)
        nadir = (self.loss_sum / self.loss_count.clamp_min(1)).to(losses)
        relative = torch.log(losses / nadir + 1e-20)
        return self.num_tasks * torch.softmax(relative / self.mu, dim=0) / (losses + 1e-20 * nadir)

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        self.epochs += 1


@WEIGHTINGS.register("imtl_l")
class IMTLL(LossWeighting):
    """IMTL-L, the loss half of Impartial Multi-Task Learning (Liu et al., ICLR 2021; torchjd's ``IMTLL``).

    Learns a scale ``s_t`` (an ``nn.Parameter``, 0 at the start, trained by the trainer's optimizer without
    weight decay) per task and backpropagates ``sum_t (exp(s_t) L_t - s_t)``: at its optimum every scaled loss
    ``exp(s_t) L_t`` equals 1. ``task_weights()`` reports ``exp(s_t)``. (IMTL-G, the gradient half, is ``imtl``.)
    """

    def __init__(self, **base: Any) -> None:
        super().__init__(**base)
        self.log_scales = nn.Parameter(torch.zeros(self.num_tasks))

    def combine(self, losses: Tensor, detached: Tensor) -> Tensor:
        scales = torch.exp(self.log_scales)
        self.weights.copy_(scales.detach())
        return (scales * losses - self.log_scales).sum()
