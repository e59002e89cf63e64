"""The weighting registry and the base classes every strategy builds on.

A strategy is pure: it sees the task losses (loss level) or the T x T Gram matrix / the T x P task gradients of
the shared parameters (gradient level) and returns task weights, a scalar to backpropagate or a combined
direction. Autograd, gradient accumulation, ``torch.distributed`` and the AMP loss scale are the business of
one driver, :func:`multitask_deeplab.engine.backward.mtl_backward`: every value a strategy receives is
already averaged over processes and unscaled, so its state stays identical on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from multitask_deeplab.config.validation import check_choice
from multitask_deeplab.registry import Registry
from multitask_deeplab.tasks import TaskKind

ACTIVE_RTOL = 1e-8
"""A task whose shared gradient norm is at most this fraction of the largest is left out of a gradient-level
combination for that step (weight 0), as if absent from the batch: a loss that is an exact 0 without a valid
pixel (``pred.sum() * 0``) has a zero gradient, which would otherwise drive MGDA's min-norm point to 0, make
Nash-MTL's ``1 / alpha`` infinite and IMTL-G's unit vector undefined."""


class Weighting(nn.Module):
    """Base class of the multi-task loss weighting strategies.

    Everything a strategy needs to resume bit-exactly is in its ``state_dict`` (buffers, parameters and, for
    seeded strategies, the random generator's state as a uint8 tensor, so ``torch.load(weights_only=True)``
    works). The hooks are called on every process with the same (process-averaged) values.

    Args:
        task_names: The tasks, in a fixed order (weights, histories and state follow it).
        task_kinds: ``{task: TaskKind}``; only ``uncertainty`` uses it (each kind's ``classification`` flag).
    """

    level: ClassVar[str] = ""
    """"loss" or "gradient": what the strategy combines (set by :class:`LossWeighting` and :class:`GradientWeighting`)."""

    needs_post_step_losses: bool = False
    """True when the trainer must call :meth:`after_step` with the batch's losses after the optimizer step."""

    def __init__(self, *, task_names: Sequence[str], task_kinds: Mapping[str, TaskKind] | None = None) -> None:
        super().__init__()
        if type(self).level not in ("loss", "gradient"):
            raise ValueError(f"{type(self).__name__} must subclass LossWeighting or GradientWeighting (not Weighting itself)")
        names = list(task_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"task_names must be a non-empty list of distinct names, got {names}")
        self.task_names = names
        self.task_kinds = dict(task_kinds or {})
        self.register_buffer("weights", torch.ones(len(names)))

    @property
    def needs_features(self) -> bool:
        """True when the step must run the model through ``forward_with_shared_features`` (representation level)."""
        return False

    @property
    def num_tasks(self) -> int:
        """The number of tasks T."""
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

    def begin_step(self) -> None:
        """Hook before the first micro-batch of every optimizer step (draws that hold for the whole step)."""

    def after_step(self, losses: Mapping[str, Tensor]) -> None:
        """Hook after the optimizer step with the same batch's losses (only when ``needs_post_step_losses``)."""

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Hook at each epoch end with the epoch's mean task losses."""

    def task_weights(self) -> dict[str, float]:
        """The weights of the last step (coefficients of the task gradients for gradient-level methods; the
        current weights for ``fixed``, ``dwa`` and ``gradnorm``); 1 per task before any step."""
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
    """Strategies that backpropagate one combination of the task losses (the shared and the heads' gradients
    alike). Subclasses implement :meth:`loss_weights` or override :meth:`combine`.
    """

    level = "loss"

    needs_layer_norms: bool = False
    """True when :meth:`observe_layer_norms` must get each task's gradient norm at the last shared layer."""

    def combine(self, losses: Tensor, detached: Tensor) -> Tensor:
        """The scalar to backpropagate; by default ``sum_t w_t L_t`` with ``w = loss_weights(detached)``.

        Args:
            losses: The T task losses with their autograd graphs (this process's micro-batch).
            detached: The same losses, detached and averaged over processes.
        """
        weights = self.loss_weights(detached)
        self.weights.copy_(weights)
        return (weights * losses).sum()

    def loss_weights(self, losses: Tensor) -> Tensor:
        """The T weights for this step, given the detached task losses (averaged over processes)."""
        raise NotImplementedError

    def observe_layer_norms(self, norms: Tensor, losses: Tensor) -> None:
        """After the step's backward (``needs_layer_norms``): each task's gradient norm at the last shared layer
        and the step's mean losses."""


class GradientWeighting(Weighting):
    """Strategies that combine the per-task gradients of the shared parameters (heads keep weight 1).

    The driver takes one autograd pass per task: the gradient of the shared parameters goes into a T x P
    matrix (one flat row per task) and the heads' gradient is added to their ``.grad`` in the same pass, so
    **heads always get weight 1**: each head receives the plain gradient of its own task's loss (heads are
    disjoint), as in the papers' algorithms for task-specific parameters. The shared update is
    ``sum_t c_t g_t`` with the coefficients of :meth:`solve` (from the Gram matrix), or the direction
    :meth:`combine` returns from the matrix itself (``uses_matrix``).

    ``gradients="features"`` is the representation-level variant (MGDA-UB's, LibMTL's ``rep_grad``): the
    strategy is solved on the task gradients of the shared features (``forward_with_shared_features``) and the
    backbone takes one backward of the combined feature gradient, instead of one per task.

    Args:
        gradients: "params" (the shared parameters' gradients) or "features" (the shared features').
    """

    level = "gradient"

    uses_matrix: bool = False
    """True when :meth:`combine` needs the T x P task gradients; False when :meth:`solve` needs only their Gram."""

    supports_features: bool = True
    """False for strategies whose state follows each coordinate of the gradient across steps: a coordinate of
    the shared features belongs to a different sample at every step."""

    independent_gram: bool = False
    """True when :meth:`solve` wants the Gram matrix estimated from independent batches (``E[g] E[g]^T``, the
    micro-batches and processes of the step taken pairwise), MoDo's and SDMGrad's double sampling."""

    def __init__(self, *, gradients: str = "params", **base: Any) -> None:
        super().__init__(**base)
        name = type(self).__name__
        self.gradients = check_choice(name, "gradients", gradients, ("params", "features"))
        if gradients == "features" and not self.supports_features:
            raise ValueError(
                f"{name} keeps state per gradient coordinate across steps, which the shared features do not have "
                "(each step's features belong to other samples): use gradients: params"
            )

    @property
    def needs_features(self) -> bool:
        return self.gradients == "features"

    def loss_scales(self, losses: Tensor) -> Tensor:
        """Factors of the task losses before their gradients are taken (1: none), from the detached losses
        averaged over processes: ``d f(L) / dL`` makes the gradients those of ``f(L)`` (DB-MTL's log), exactly as
        one process on the whole batch (or micro-batch) would take them."""
        return torch.ones_like(losses)

    def fixed_coefficients(self) -> Tensor | None:
        """Coefficients to use this step without per-task gradients (one backward of ``sum_t c_t L_t``), or None."""
        return None

    def coefficients(self, gram: Tensor, losses: Tensor, active: Tensor) -> Tensor:
        """The T coefficients from the float64 CPU Gram matrix (unscaled, averaged over processes) and losses.

        The default gives the tasks outside ``active`` (zero gradient) weight 0 and :meth:`solve` the rest.
        """
        coefs = torch.zeros(len(active), dtype=torch.float64)
        if active.any():
            coefs[active] = self.solve(gram[active][:, active], losses[active])
        return coefs

    def solve(self, gram: Tensor, losses: Tensor) -> Tensor:
        """Coefficients of the active tasks from their float64 CPU Gram matrix and losses."""
        raise NotImplementedError

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """For ``uses_matrix`` strategies: the direction (P) and the T weights to report, from the T x P task
        gradients (unscaled, averaged over processes; zero rows for absent tasks) and the losses."""
        raise NotImplementedError

    def scale_update(self, norm: float) -> float:
        """A factor for the combined shared update given its norm (1: none); Nash-MTL clips."""
        return 1.0

    def extra_repr(self) -> str:
        return f"tasks={self.task_names}, gradients={self.gradients}"
