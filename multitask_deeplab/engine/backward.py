"""One backward driver for every weighting strategy: task losses in, ``.grad`` of every parameter out.

In the spirit of torchjd's ``mtl_backward``, :func:`mtl_backward` owns everything between the losses and the
gradients, so that strategies stay pure functions of losses, Gram matrices and task gradients: per-task gradients
of the shared parameters (or of the shared features, for representation-level strategies) with the heads' own
gradients in the same autograd pass, gradient accumulation over the micro-batches of an optimizer step,
averaging over ``torch.distributed`` processes, the AMP GradScaler's scale, and the non-finite checks.

**Accumulation.** With N micro-batches per optimizer step every micro-batch loss counts 1/N. Loss-level
strategies backpropagate each micro-batch's combination at once (their weights, when they depend on the
losses, come from that micro-batch). Gradient-level strategies add up the micro-batches' task gradients and are
solved once, after the last one, on the gradients of the whole step: accumulating 4 x 2 equals one step of 8.
A representation-level strategy adds up the Gram matrices of the feature gradients (the features of different
micro-batches are different coordinates, so the sum is the whole step's Gram matrix) and, since its weights are
known only after the last micro-batch, each task's backbone gradient: N > 1 costs it one backbone backward
per task, as the parameter level does.

**Processes.** Gradient-level strategies run inside DDP's ``no_sync()`` (see :func:`ddp_syncs`): the driver
averages the task gradients (or the feature Gram matrices) over the processes before solving, so every process
solves the same problem as one process on the whole batch would; loss-level strategies let DDP average the
gradients on the last micro-batch. Strategies get losses averaged over processes.

**AMP.** Under a GradScaler the scaled task gradients are accumulated; strategies get them unscaled and the
scaled combination is written, so ``scaler.step``'s unscale and inf check work unchanged. A non-finite Gram
matrix (fp16 overflow) gives the plain sum, which keeps the inf so the scaler skips the step; the strategy's
state is then left untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from multitask_deeplab.engine.features import SharedFeatures
from multitask_deeplab.runtime.distributed import any_process_each
from multitask_deeplab.weighting.base import ACTIVE_RTOL, GradientWeighting, LossWeighting, Weighting


class NonFiniteLoss(RuntimeError):
    """A task loss is NaN or infinite on some process (every process raises it together).

    Attributes:
        tasks: The tasks whose loss is not finite.
    """

    def __init__(self, tasks: list[str]) -> None:
        super().__init__(f"non-finite loss in task {', '.join(tasks)}")
        self.tasks = tasks


@dataclass
class Accumulation:
    """The micro-batches of one optimizer step: create one per step and pass it to every :func:`mtl_backward`.

    Attributes:
        steps: The number of micro-batches N.
        done: How many have been backpropagated.
    """

    steps: int = 1
    done: int = 0
    grads: Tensor | None = None  # T x P task gradients of the shared parameters (1 x P with fixed coefficients)
    gram: Tensor | None = None  # representation level: the sum of the micro-batches' feature Gram matrices
    pieces: Tensor | None = None  # sum of the micro-batches' own Gram matrices, for the independent estimate
    losses: Tensor | None = None  # sum of the micro-batches' detached losses (averaged over processes)
    layer: Tensor | None = None  # the task gradients at the last shared layer (layer-norm strategies)
    sq_norm: float = 0.0  # representation level with fixed coefficients: squared norm of the update so far
    mean_losses: Tensor | None = None  # the mean of ``losses`` over the micro-batches so far

    @property
    def last(self) -> bool:
        """Whether the micro-batch being backpropagated is the step's last."""
        return self.done == self.steps - 1


def _add(total: Tensor | None, value: Tensor) -> Tensor:
    return value if total is None else total.add_(value)


# --- torch.distributed ------------------------------------------------------------------------------------------


def world_size() -> int:
    """The number of processes (1 outside an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Averages ``tensor`` in place over the processes (sum, then divide: gloo has no AVG); returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor)
        tensor.div_(world_size())
    return tensor


def all_reduce_grads_(params: Iterable[Tensor]) -> None:
    """Gives every parameter without a ``.grad`` a zero one, then averages all ``.grad`` over the processes
    in one flat buffer (one collective). Outside ``torch.distributed`` only the zero fill happens."""
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not params or world_size() == 1:
        return
    flat = all_reduce_mean_(torch.cat([p.grad.reshape(-1) for p in params]))
    for p, g in zip(params, unflatten(flat, params)):
        p.grad.copy_(g)


def ddp_syncs(weighting: Weighting, accumulation: Accumulation | None = None) -> bool:
    """Whether DDP's reducer may average the gradients of this micro-batch's backward (else: ``no_sync()``).

    Gradient-level strategies never: the driver averages each task's gradient itself. Loss-level strategies on
    the last micro-batch of the step only, as usual for gradient accumulation.
    """
    return weighting.level == "loss" and (accumulation is None or accumulation.last)


# --- autograd ---------------------------------------------------------------------------------------------------


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Splits a flat vector into views shaped (and typed) like the tensors in ``like``."""
    out, offset = [], 0
    for x in like:
        out.append(flat[offset : offset + x.numel()].view_as(x).to(x.dtype))
        offset += x.numel()
    return out


def accumulate_grads_(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Adds ``grads`` to the parameters' ``.grad`` (sets it when there is none); ``None`` entries are skipped."""
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)


def task_gradients(
    losses: Tensor,
    inputs: Sequence[Tensor],
    *,
    direct: Sequence[Tensor] = (),
    keep_graph: bool = False,
) -> Tensor:
    """One flattened gradient per loss, as the rows of a ``len(losses) x numel(inputs)`` float32 matrix.

    Row ``t`` is ``d losses[t] / d inputs`` (zeros for inputs the loss does not reach). The same autograd call
    also takes each loss's gradient w.r.t. ``direct`` (the heads) and adds it to their ``.grad``, so every head
    gets the plain gradient of its task's loss without a separate backward pass. Only one row plus one set of
    temporary gradients is alive beyond the matrix itself.

    Args:
        losses: 1-D tensor of losses (already scaled when a GradScaler is in use).
        inputs: Tensors to differentiate into rows (shared parameters, or shared features).
        direct: Parameters whose gradients accumulate into ``.grad`` instead.
        keep_graph: Keep the autograd graph after the last loss (needed when another backward follows).
    """
    rows = torch.empty(len(losses), sum(x.numel() for x in inputs), device=losses.device)
    targets = [*inputs, *direct]
    for t in range(len(losses)):
        grads = torch.autograd.grad(losses[t], targets, retain_graph=keep_graph or t < len(losses) - 1, allow_unused=True)
        offset = 0
        for x, g in zip(inputs, grads):
            row = rows[t, offset : offset + x.numel()]
            if g is None:
                row.zero_()
            else:
                row.copy_(g.reshape(-1))
            offset += x.numel()
        accumulate_grads_(direct, grads[len(inputs) :])
    return rows


def last_shared_layer(shared_parameters: Sequence[Tensor]) -> Tensor:
    """The last shared parameter with more than one dimension (the backbone's last conv or linear weight)."""
    for p in reversed(list(shared_parameters)):
        if p.dim() > 1:
            return p
    raise ValueError("this weighting strategy needs a shared parameter with more than one dimension (a conv/linear weight)")


# --- the driver -------------------------------------------------------------------------------------------------


def mtl_backward(
    losses: Mapping[str, Tensor],
    *,
    weighting: Weighting,
    shared_parameters: Sequence[Tensor],
    head_parameters: Sequence[Tensor],
    features: SharedFeatures | None = None,
    scaler: torch.amp.GradScaler | None = None,
    accumulation: Accumulation | None = None,
) -> None:
    """Backpropagates one micro-batch's task losses under ``weighting`` (see the module notes).

    After the step's last micro-batch every parameter's ``.grad`` holds the step's gradient (scaled like
    ``scaler.scale``), identical on every process. Call it on every process, inside DDP's ``no_sync()`` unless
    :func:`ddp_syncs` says otherwise.

    Args:
        losses: ``{task: scalar loss}``, unweighted, float32, with their autograd graphs.
        weighting: The strategy.
        shared_parameters: The backbone's parameters that require grad.
        head_parameters: Every other model parameter that requires grad (the task heads).
        features: ``forward_with_shared_features(model, image)[1]`` when ``weighting.needs_features`` (ignored otherwise).
        scaler: A ``torch.amp.GradScaler`` or ``None``.
        accumulation: The step's :class:`Accumulation` (None: the step is this one batch).

    Raises:
        NonFiniteLoss: a loss is not finite on some process (on every process; nothing was backpropagated).
        ValueError: ``losses`` does not name exactly the tasks, or features are missing.
    """
    vector = weighting.stack(losses)
    bad = any_process_each(~torch.isfinite(vector.detach()))
    if any(bad):
        raise NonFiniteLoss([name for name, flag in zip(weighting.task_names, bad) if flag])
    if not weighting.needs_features:
        features = None
    elif features is None:
        raise ValueError(
            f"{type(weighting).__name__} with gradients='features' needs the shared features: pass "
            "features=forward_with_shared_features(model, image)[1], or use gradients='params'"
        )
    acc = accumulation or Accumulation()
    if acc.done == 0:
        weighting.begin_step()
    detached = all_reduce_mean_(vector.detach().clone())
    acc.losses = _add(acc.losses, detached.clone())
    acc.mean_losses = acc.losses / (acc.done + 1)
    scale = float(scaler.get_scale()) if scaler is not None else 1.0
    if scaler is not None:
        scaler.scale(vector)  # initialises the scaler's per-device state that scaler.step needs
    if isinstance(weighting, LossWeighting):
        _loss_level(vector, detached, weighting, shared_parameters, acc, scale)
    elif isinstance(weighting, GradientWeighting):
        _gradient_level(vector, detached, weighting, shared_parameters, head_parameters, features, acc, scale)
    else:
        raise TypeError(f"{type(weighting).__name__} is neither a LossWeighting nor a GradientWeighting; subclass one of them")
    acc.done += 1


def _loss_level(
    vector: Tensor, detached: Tensor, weighting: LossWeighting, shared: Sequence[Tensor], acc: Accumulation, scale: float
) -> None:
    factor = scale / acc.steps
    if weighting.needs_layer_norms:
        acc.layer = _add(acc.layer, task_gradients(vector * factor, [last_shared_layer(shared)], keep_graph=True))
    (weighting.combine(vector, detached) * factor).backward()
    if not acc.last:
        return
    all_reduce_grads_(weighting.parameters())
    if acc.layer is not None:
        norms = all_reduce_mean_(acc.layer).norm(dim=1) / scale
        if torch.isfinite(norms).all():  # fp16 overflow: the GradScaler skips this step, so does the strategy
            weighting.observe_layer_norms(norms, acc.mean_losses)


def _gradient_level(
    vector: Tensor,
    detached: Tensor,
    weighting: GradientWeighting,
    shared: Sequence[Tensor],
    heads: Sequence[Tensor],
    features: SharedFeatures | None,
    acc: Accumulation,
    scale: float,
) -> None:
    direct = [*heads, *(p for p in weighting.parameters() if p.requires_grad)]
    scaled = vector * weighting.loss_scales(detached).to(vector) * (scale / acc.steps)
    fixed = weighting.fixed_coefficients()
    inputs = features.leaves if features is not None else list(shared)
    if fixed is not None:  # one backward: sum_t c_t L_t into the shared inputs, sum_t L_t into the heads
        if direct:
            torch.autograd.backward(scaled.sum(), inputs=direct, retain_graph=True)
        rows = task_gradients((fixed.to(scaled) * scaled).sum().reshape(1), inputs)
    else:
        rows = task_gradients(scaled, inputs, direct=direct)
    if features is None:
        acc.grads = _add(acc.grads, rows)
        if weighting.independent_gram:
            acc.pieces = _add(acc.pieces, rows @ rows.T)
    elif fixed is not None or weighting.uses_matrix:  # this micro-batch's feature direction is known now
        if fixed is not None:
            direction = rows[0]
            acc.sq_norm += float(direction.double().square().sum())
        else:
            direction = _matrix_direction(weighting, rows, acc, scale)
        _backward_features(features, direction, shared)
    elif acc.steps == 1:  # solve on this batch's feature gradients, then one backbone backward
        gram = all_reduce_mean_(rows @ rows.T) / world_size()
        _backward_features(features, _solve(weighting, gram, gram, acc, scale).to(rows) @ rows, shared)
    else:  # the weights are known after the last micro-batch only: keep each task's backbone gradient
        acc.gram = _add(acc.gram, rows @ rows.T)
        acc.grads = _add(acc.grads, torch.stack([_backbone_gradient(features, row, shared, keep=t < len(rows) - 1) for t, row in enumerate(rows)]))
    if acc.last:
        _finish_gradient_level(weighting, shared, direct, features, fixed, acc, scale)


def _backward_features(features: SharedFeatures, direction: Tensor, shared: Sequence[Tensor]) -> None:
    """One backbone backward of a combined feature gradient into the shared parameters' ``.grad``."""
    torch.autograd.backward(features.tensors, grad_tensors=unflatten(direction, features.tensors), inputs=list(shared))


def _backbone_gradient(features: SharedFeatures, row: Tensor, shared: Sequence[Tensor], *, keep: bool) -> Tensor:
    """The flat gradient of the shared parameters that a feature gradient ``row`` backpropagates to."""
    grads = torch.autograd.grad(features.tensors, shared, unflatten(row, features.tensors), retain_graph=keep, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, shared)])


def _finish_gradient_level(
    weighting: GradientWeighting,
    shared: Sequence[Tensor],
    direct: Sequence[Tensor],
    features: SharedFeatures | None,
    fixed: Tensor | None,
    acc: Accumulation,
    scale: float,
) -> None:
    if features is not None and acc.grads is None:  # the feature directions are in the backbone's .grad already
        if fixed is not None:
            norm = (all_reduce_mean_(torch.tensor([acc.sq_norm], dtype=torch.float64)).item() / world_size()) ** 0.5
            factor = weighting.scale_update(norm / scale)
            weighting.weights.copy_(fixed * factor)
            for p in shared:
                if p.grad is not None:
                    p.grad.mul_(factor)
        all_reduce_grads_([*shared, *direct])
        return
    assert acc.grads is not None
    grads = all_reduce_mean_(acc.grads)
    if fixed is not None:
        factor = weighting.scale_update(float(grads[0].double().norm()) / scale)
        weighting.weights.copy_(fixed * factor)
        direction = grads[0] * factor
    elif weighting.uses_matrix:
        direction = _matrix_direction(weighting, grads, acc, scale)
    else:
        if acc.gram is not None:  # representation level: the whole step's feature Gram matrix
            plain = gram = all_reduce_mean_(acc.gram) / world_size()
        else:
            plain = grads @ grads.T
            gram = _independent_gram(grads, acc, fallback=plain) if weighting.independent_gram else plain
        direction = _solve(weighting, gram, plain, acc, scale).to(grads) @ grads
    accumulate_grads_(list(shared), unflatten(direction, shared))
    all_reduce_grads_(direct)


def _independent_gram(grads: Tensor, acc: Accumulation, *, fallback: Tensor) -> Tensor:
    """``E[g] E[g]^T`` estimated without bias from the step's K = N x processes independent micro-batches: the
    mean of ``J_a J_b^T`` over the pairs ``a != b`` (``fallback`` when K = 1)."""
    count = acc.steps * world_size()
    if count < 2 or acc.pieces is None:
        return fallback
    pieces = all_reduce_mean_(acc.pieces) / world_size()  # sum of J_a J_a^T over all K pieces, divided by K^2
    return count * (grads @ grads.T - pieces) / (count - 1)


def _solve(weighting: GradientWeighting, gram: Tensor, plain: Tensor, acc: Accumulation, scale: float) -> Tensor:
    """The strategy's coefficients (float64, also stored as its weights) from a scaled Gram matrix estimate
    ``gram``; ``plain`` is the ordinary Gram matrix, which decides the active tasks and the update's norm.
    Not finite (fp16 overflow): the plain sum, and the strategy's state is left as it was."""
    gram64, plain64 = gram.detach().double().cpu() / scale**2, plain.detach().double().cpu() / scale**2
    if not (torch.isfinite(gram64).all() and torch.isfinite(plain64).all()):
        weighting.weights.fill_(1.0)
        return torch.ones(weighting.num_tasks, dtype=torch.float64)
    norms = plain64.diagonal().clamp_min(0.0).sqrt()
    active = norms > ACTIVE_RTOL * norms.max()
    coefs = weighting.coefficients(gram64, acc.mean_losses.double().cpu(), active)
    coefs = coefs * weighting.scale_update(max(float(coefs @ plain64 @ coefs), 0.0) ** 0.5)
    weighting.weights.copy_(coefs)
    return coefs


def _matrix_direction(weighting: GradientWeighting, grads: Tensor, acc: Accumulation, scale: float) -> Tensor:
    """A ``uses_matrix`` strategy's direction (scaled like ``grads``); the plain sum when ``grads`` is not finite."""
    if not torch.isfinite(grads).all():
        weighting.weights.fill_(1.0)
        return grads.sum(0)
    direction, reported = weighting.combine(grads / scale, acc.mean_losses.to(grads))
    weighting.weights.copy_(reported)
    return direction * scale
