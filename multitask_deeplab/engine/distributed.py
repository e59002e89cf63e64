"""Process-group set-up for ``torchrun``: NCCL on CUDA, gloo on CPU; a no-op for a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def resolve_device(preference: str, info: DistInfo) -> torch.device:
    """The device from a recipe's ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"train.device is {preference!r} but no CUDA device is available; use 'auto' or 'cpu'")
        if preference == "cuda":
            return torch.device("cuda", info.local_rank)
    return torch.device(preference)


def setup_distributed() -> DistInfo:
    """Joins the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def cleanup_distributed() -> None:
    """Leaves the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any of them, so all take the same decision."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Averages scalar logs over processes (for display only; metrics reduce their sums instead)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / dist.get_world_size()).tolist()))
