"""Which device to run on: ``auto`` picks CUDA when there is one."""

from __future__ import annotations

import torch


def resolve_device(preference: str | torch.device | None = "auto", *, local_rank: int = 0) -> torch.device:
    """The device for ``auto`` (or ``None``), ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.

    ``auto`` is CUDA when it is available, else the CPU; a bare ``cuda`` is GPU ``local_rank`` (one GPU per process
    under ``torchrun``). Asking for CUDA on a machine without it is a ``ValueError``.
    """
    if preference is None or preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(preference)!r} asked for, but no CUDA device is available; use 'auto' or 'cpu'")
        if device.index is None:
            return torch.device("cuda", local_rank)
    return device
