"""Autograd, loss-scaling and torch.distributed helpers shared by the weighting strategies."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor


class SharedFeatures(NamedTuple):
    """The shared representation of one forward pass, for representation-level strategies (MGDA-UB).

    Attributes:
        tensors: The graph-connected shared features: the backbone's levels, then the shared trunk's output
            if there is one.
        leaves: Detached copies of ``tensors`` that require grad, the only inputs the heads read: the gradient
            of a task loss w.r.t. ``leaves`` is its direct partial derivative w.r.t. each level, without the
            paths through later levels computed from it.
    """

    tensors: list[Tensor]
    leaves: list[Tensor]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Averages ``tensor`` in place over the processes (sum, then divide: gloo has no AVG); returns it.

    A no-op outside ``torch.distributed``.
    """
    if is_distributed():
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def all_reduce_grads_(params: Iterable[Tensor]) -> None:
    """Gives every parameter without a ``.grad`` a zero one, then averages all ``.grad`` over the processes.

    The gradients travel in one flat buffer (one collective). Outside ``torch.distributed`` only the zero
    fill happens.
    """
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not params or not is_distributed():
        return
    flat = all_reduce_mean_(torch.cat([p.grad.reshape(-1) for p in params]))
    for p, g in zip(params, unflatten(flat, params)):
        p.grad.copy_(g)


def scale_losses(losses: Tensor, scaler: torch.amp.GradScaler | None) -> tuple[Tensor, float]:
    """Returns ``scaler.scale(losses)`` and the scale (``losses`` and 1.0 without a scaler).

    ``scaler.scale`` is called (rather than multiplying by ``get_scale()``) because it also initialises the
    scaler's state that ``scaler.step`` needs.
    """
    if scaler is None:
        return losses, 1.0
    scaled = scaler.scale(losses)
    return scaled, float(scaler.get_scale())


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
    head_parameters: Sequence[Tensor] = (),
    keep_graph: bool = False,
) -> Tensor:
    """One flattened gradient per loss, as the rows of a ``len(losses) x numel(inputs)`` float32 matrix.

    Row ``t`` is ``d losses[t] / d inputs`` (zeros for inputs the loss does not reach). The same autograd call
    also takes each loss's gradient w.r.t. ``head_parameters`` and adds it to their ``.grad``, so every head
    gets the plain gradient of its task's loss without a separate backward pass. Only one row plus one set of
    temporary gradients is alive beyond the matrix itself.

    Args:
        losses: 1-D tensor of losses (already scaled when a GradScaler is in use).
        inputs: tensors to differentiate into rows (shared parameters, or shared features).
        head_parameters: parameters whose gradients accumulate into ``.grad`` instead.
        keep_graph: keep the autograd graph after the last loss (needed when another backward follows).
    """
    rows = torch.empty(len(losses), sum(x.numel() for x in inputs), device=losses.device)
    targets = [*inputs, *head_parameters]
    for t in range(len(losses)):
        grads = torch.autograd.grad(
            losses[t], targets, retain_graph=keep_graph or t < len(losses) - 1, allow_unused=True
        )
        offset = 0
        for x, g in zip(inputs, grads):
            row = rows[t, offset : offset + x.numel()]
            if g is None:
                row.zero_()
            else:
                row.copy_(g.reshape(-1))
            offset += x.numel()
        accumulate_grads_(head_parameters, grads[len(inputs) :])
    return rows
