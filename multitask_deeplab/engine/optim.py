"""Optimizers and learning-rate schedules (linear warmup, then poly or cosine decay)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

SCHEDULES = ("poly", "cosine", "constant")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for conv/linear weights only; none for norms and biases."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    name: str,
    groups: Iterable[dict],
    *,
    lr: float,
    momentum: float,
    device: torch.device,
) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA), Adam (weight decay as an L2 term of the gradient, as ``torch.optim.Adam``) or SGD with
    momentum."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=device.type == "cuda")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=False)
    raise ValueError(f"unknown optimizer {name!r}: use adamw, adam or sgd")


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str, power: float = 0.9) -> float:
    """The multiplier of the base learning rate at ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "poly":
        return (1.0 - progress) ** power
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, schedule: str, power: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`."""
    lr_factor(0, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule, power=power)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule, power=power),
    )
