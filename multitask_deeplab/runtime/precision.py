"""Mixed precision: what ``train.amp`` means on a device, and its autocast context."""

from __future__ import annotations

import contextlib

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (not by emulation, which is slower than float32).

    True for a CUDA GPU with bf16 units (Ampere or newer) and for a CPU with AVX512-BF16 or AMX.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def resolve_amp(amp: str, device: torch.device) -> str:
    """``train.amp`` on ``device``: ``auto`` becomes ``bf16`` where the device computes bf16 natively, else ``fp16``
    on CUDA and ``off`` on the CPU; ``off``, ``bf16`` and ``fp16`` stay as they are."""
    if amp != "auto":
        return amp
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "off"


def amp_note(amp: str, device: torch.device) -> str | None:
    """A line for the user when ``train.amp`` on ``device`` is automatic or likely slow; ``None`` otherwise."""
    resolved = resolve_amp(amp, device)
    if amp == "auto":
        why = "computes bf16 natively" if resolved == "bf16" else "has no native bf16"
        return f"note: train.amp=auto runs {'float32' if resolved == 'off' else resolved + ' autocast'} ({device.type} {why})"
    if device.type == "cpu" and (amp == "fp16" or (amp == "bf16" and not native_bf16(device))):
        return (
            f"note: train.amp={amp} is emulated on this CPU and slower than float32; use train.amp=auto "
            "(bf16 where the CPU has AVX512-BF16 or AMX) or off"
        )
    return None


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for a resolved ``train.amp`` (``off``, ``bf16``, ``fp16``)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
