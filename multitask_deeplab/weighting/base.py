"""The weighting registry and the base classes every strategy builds on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from multitask_deeplab.registry import Registry
from multitask_deeplab.tasks import TaskKind
from multitask_deeplab.weighting.gradients import (
    SharedFeatures,
    accumulate_grads_,
    all_reduce_grads_,
    all_reduce_mean_,
    scale_losses,
    task_gradients,
    unflatten,
)

ACTIVE_RTOL = 1e-8
"""A task whose shared gradient norm is at most this fraction of the largest is left out of a gradient-level
combination for that step (weight 0), as if absent from the batch: a loss that is an exact 0 without a valid
pixel (``pred.sum() * 0``) has a zero gradient, which would otherwise drive MGDA's min-norm point to 0, make
Nash-MTL's ``1 / alpha`` infinite and IMTL-G's unit vector undefined."""


class Weighting(nn.Module):
    """Base class of the multi-task loss weighting strategies.

    A strategy turns the per-task losses of a step into gradients on every parameter (:meth:`backward`).
    Everything it needs to resume bit-exactly is in its ``state_dict`` (buffers, parameters and, for seeded
    strategies, the random generator's state as a uint8 tensor, so ``torch.load(weights_only=True)`` works).
    Every hook (``backward``, ``after_step``, ``end_epoch``) must be called on every process under
    ``torch.distributed``: strategies average the statistics they learn from across processes themselves,
    so their state stays identical on every rank.

    Args:
        task_names: The tasks, in a fixed order (weights, histories and state follow it).
        task_kinds: ``{task: TaskKind}``; only ``uncertainty`` uses it (each kind's ``classification`` flag).
    """

    reduces_gradients_itself: bool = False
    """True when :meth:`backward` must run inside DDP's ``no_sync()``: the strategy averages gradients itself."""

    needs_post_step_losses: bool = False
    """True when the trainer must call :meth:`after_step` with the batch's losses after the optimizer step."""

    def __init__(self, *, task_names: Sequence[str], task_kinds: Mapping[str, TaskKind] | None = None) -> None:
        super().__init__()
        names = list(task_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"task_names must be a non-empty list of distinct names, got {names}")
        self.task_names = names
        self.task_kinds = dict(task_kinds or {})
        self.register_buffer("weights", torch.ones(len(names)))

    @property
    def needs_features(self) -> bool:
        """True when :meth:`backward` needs ``features``: the model must run with ``return_features=True``."""
        return False

    @property
    def num_tasks(self) -> int:
        """The number of tasks K."""
        return len(self.task_names)

    def ordered(self, values: Mapping[str, Any], what: str) -> list[Any]:
        """``values`` as a list in task order; raises a ``ValueError`` unless it names exactly the tasks."""
        if set(values) != set(self.task_names):
            raise ValueError(
                f"{what} must name exactly the tasks {self.task_names}, got {sorted(values)}; "
                "give one entry per task"
            )
        return [values[name] for name in self.task_names]

    def stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The task losses as one float32 vector in task order."""
        return torch.stack(self.ordered(losses, "losses")).float()

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_parameters: Sequence[Tensor],
        head_parameters: Sequence[Tensor],
        features: SharedFeatures | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        """Backpropagates the step's task losses into ``.grad`` of every parameter.

        Args:
            losses: ``{task: scalar loss}``, unweighted, float32, with their autograd graphs.
            shared_parameters: The backbone's parameters that require grad.
            head_parameters: Every other model parameter that requires grad (the task heads).
            features: The model's shared features, ``forward_with_shared_features(model, image)[1]``, when
                :attr:`needs_features` (the heads then read its detached ``leaves``); ``None`` otherwise.
            scaler: A ``torch.amp.GradScaler`` or ``None``; gradients written are scaled like ``scaler.scale``.
        """
        raise NotImplementedError

    def after_step(self, losses: Mapping[str, Tensor]) -> None:
        """Hook after the optimizer step with the same batch's losses (only when ``needs_post_step_losses``)."""

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Hook at each epoch end with the epoch's mean task losses."""

    def task_weights(self) -> dict[str, float]:
        """The weights used by the last backward (coefficients of the task gradients for gradient-level
        methods; the current weights for ``fixed``, ``dwa`` and ``gradnorm``); 1 per task before any step."""
        return dict(zip(self.task_names, self.weights.tolist()))

    def extra_repr(self) -> str:
        return f"tasks={self.task_names}"


WEIGHTINGS: Registry[Weighting] = Registry("weighting", Weighting)
"""Every registered weighting strategy, by the name recipes give as ``weighting: {type: ...}``."""


class SeededMixin:
    """Gives a strategy a CPU ``torch.Generator`` seeded from ``seed`` whose state is saved in the state dict."""

    def _init_generator(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


class LossWeighting(Weighting):
    """Strategies that backpropagate one weighted combination of the task losses.

    ``reduces_gradients_itself`` is False: the single (scaled) backward runs inside DDP, whose reducer averages
    the model's gradients. The strategy's own parameters (uncertainty's log-variances) are not in the DDP
    model, so their gradients are averaged here. Strategies whose weights depend on the batch's losses
    (famo, gls, gradnorm) first average those losses over the processes, so every rank uses the same weights
    and the update equals single-process training on the whole batch.

    Subclasses implement :meth:`loss_weights` or override :meth:`combine`.
    """

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_parameters: Sequence[Tensor],
        head_parameters: Sequence[Tensor],
        features: SharedFeatures | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        total = self.combine(self.stack(losses))
        (total if scaler is None else scaler.scale(total)).backward()
        all_reduce_grads_(self.parameters())

    def combine(self, losses: Tensor) -> Tensor:
        """The scalar to backpropagate; by default ``sum_t w_t L_t`` with ``w = loss_weights(losses)``."""
        weights = self.loss_weights(losses.detach())
        self.weights.copy_(weights)
        return (weights * losses).sum()

    def loss_weights(self, losses: Tensor) -> Tensor:
        """The K weights for this step, given the detached task losses."""
        raise NotImplementedError


class GradientWeighting(Weighting):
    """Strategies that combine the per-task gradients of the shared (backbone) parameters.

    Each step takes one autograd pass per task: the flattened gradient of the shared parameters goes into a
    ``K x n`` matrix (one flat vector per task) and the gradient of the head parameters is added to their
    ``.grad`` in the same pass, so **heads always get weight 1**: each head receives the plain gradient of its
    own task's loss (heads are disjoint), as in the papers' algorithms for task-specific parameters. The
    shared gradient written to ``.grad`` is ``sum_t c_t g_t`` with coefficients ``c`` from :meth:`solve`.

    ``reduces_gradients_itself`` is True: the trainer runs :meth:`backward` inside DDP's ``no_sync()``, and the
    per-task shared gradients are averaged over the processes before combining (so every rank combines the
    same global gradients, as single-process training on the whole batch would), then the heads' gradients.
    Under a GradScaler the task gradients are scaled; the unscale is folded into the Gram matrix (divided by
    ``scale^2``), which is all the solvers see, and the combination of the scaled gradients is written, so
    ``scaler.step``'s unscale and inf check work unchanged. A non-finite Gram matrix (fp16 overflow) falls back
    to the plain sum, which keeps the inf so the scaler skips the step.
    """

    reduces_gradients_itself = True

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_parameters: Sequence[Tensor],
        head_parameters: Sequence[Tensor],
        features: SharedFeatures | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        vector = self.stack(losses)
        scaled, scale = scale_losses(vector, scaler)
        grads = all_reduce_mean_(task_gradients(scaled, shared_parameters, head_parameters=head_parameters))
        coefs = self.coefficients(grads @ grads.T, vector.detach(), scale)
        accumulate_grads_(shared_parameters, unflatten(coefs @ grads, shared_parameters))
        all_reduce_grads_(head_parameters)

    def coefficients(self, gram: Tensor, losses: Tensor, scale: float) -> Tensor:
        """The combination coefficients (float32, on ``gram``'s device); also stored as ``task_weights()``.

        Args:
            gram: K x K Gram matrix of the (scaled) task gradients, already averaged over processes.
            losses: The K detached task losses of this process (averaged over processes here).
            scale: The GradScaler's scale the gradients carry.
        """
        gram64 = gram.detach().double().cpu() / scale**2
        losses64 = all_reduce_mean_(losses.clone()).double().cpu()
        coefs = torch.zeros(self.num_tasks, dtype=torch.float64)
        if not torch.isfinite(gram64).all():
            coefs += 1.0
        else:
            norms = gram64.diagonal().clamp_min(0.0).sqrt()
            active = norms > ACTIVE_RTOL * norms.max()
            if active.any():
                coefs[active] = self.solve(gram64[active][:, active], losses64[active])
        self.weights.copy_(coefs)
        return coefs.to(gram.device, torch.float32)

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        """Coefficients of the active tasks from their float64 CPU Gram matrix (unscaled) and losses."""
        raise NotImplementedError
