"""Process-group set-up for ``torchrun``: NCCL on CUDA, gloo on CPU; a no-op for a single process.

One process per GPU (or a few on a CPU), all started by ``torchrun``, which sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``::

    torchrun --nproc_per_node 4 -m multitask_deeplab train RECIPE                      # one machine, 4 GPUs
    torchrun --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT \
        --nproc_per_node 4 -m multitask_deeplab train RECIPE                          # run on each of 2 machines

Multi-node is only torchrun's rendezvous: nothing here depends on the number of machines. A scheduler that
starts the processes itself (SLURM ``srun``) works when it sets the same five variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import timm.layers
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and pictures."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1


def backend_for(device: str) -> str:
    """The process-group backend for a recipe's ``train.device``: NCCL when training on CUDA, gloo otherwise."""
    return "gloo" if device == "cpu" or not torch.cuda.is_available() else "nccl"


def setup_distributed(device: str = "auto") -> DistInfo:
    """Joins the process group that ``torchrun`` describes in the environment, if any, for ``device``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def cleanup_distributed() -> None:
    """Leaves the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def any_process_each(flags: torch.Tensor) -> list[bool]:
    """Element-wise "true on any process" of a boolean vector, identical on every process."""
    if _initialized():
        flags = flags.float()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.bool().tolist()


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any of them, so all take the same decision."""
    return any_process_each(torch.tensor([flag], device=device))[0]


def mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Averages scalar logs over processes (for display only; metrics reduce their sums instead)."""
    if not _initialized() or not values:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / dist.get_world_size()).tolist()))


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Turns every BatchNorm layer into one that normalises with the statistics of the whole global batch.

    timm's converter is used because it keeps the activation of timm's ``BatchNormAct2d`` layers (PyTorch's
    drops it). On the CPU the layers become :class:`CpuSyncBatchNorm`: PyTorch's SyncBatchNorm kernels are
    CUDA-only, and DistributedDataParallel refuses SyncBatchNorm layers in a CPU model.
    """
    model = timm.layers.convert_sync_batchnorm(model)
    if device.type == "cpu":
        for module in model.modules():
            if isinstance(module, nn.SyncBatchNorm):
                module.__class__ = CpuSyncBatchNorm
    return model


class _SumOverProcesses(torch.autograd.Function):
    """``all_reduce(SUM)`` whose backward sums the gradients over the processes in the same way."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        tensor = tensor.clone()
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """What ``nn.SyncBatchNorm`` (and timm's ``SyncBatchNormAct``, whose ``drop`` and ``act`` it keeps) compute,
    for CPU tensors under gloo: in training, the mean and then the variance are summed over the processes
    with differentiable all-reduces. Made by :func:`convert_sync_batchnorm`, not directly."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self._synchronised(input) if self.training and _initialized() else super().forward(input)
        if hasattr(self, "drop"):
            x = self.drop(x)
        if hasattr(self, "act"):
            x = self.act(x)
        return x

    def _synchronised(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        group = getattr(self, "process_group", None) or dist.group.WORLD
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # float32 statistics under autocast too
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_tensor([x.numel() / x.shape[1]])
        totals = _SumOverProcesses.apply(torch.cat([x.sum(dims), count]), group)
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centred = x - mean.view(shape)
        var = _SumOverProcesses.apply((centred * centred).sum(dims), group) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * count / (count - 1).clamp_min(1), factor)
        return out.to(input.dtype)
