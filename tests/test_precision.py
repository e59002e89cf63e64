"""train.amp: what `auto` picks on each kind of device, and the notes a user gets."""

from __future__ import annotations

import pytest
import torch

from multitask_deeplab.runtime import precision
from multitask_deeplab.runtime.precision import amp_note, autocast, resolve_amp

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Pretends the CPU does (True) or does not (False) compute bf16 natively."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    return set_native


@pytest.fixture
def cuda_bf16(monkeypatch):
    """Pretends the GPU does (True) or does not (False) have bf16 units."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)

    return set_native


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_explicit_settings_are_kept(amp, cpu_bf16):
    cpu_bf16(False)
    assert resolve_amp(amp, CPU) == resolve_amp(amp, CUDA) == amp


def test_auto_on_the_cpu_is_bf16_only_where_the_cpu_has_it(cpu_bf16):
    cpu_bf16(True)
    assert resolve_amp("auto", CPU) == "bf16"
    assert amp_note("auto", CPU) == "note: train.amp=auto runs bf16 autocast (cpu computes bf16 natively)"
    assert amp_note("bf16", CPU) is None and amp_note("off", CPU) is None
    cpu_bf16(False)
    assert resolve_amp("auto", CPU) == "off"
    assert amp_note("auto", CPU) == "note: train.amp=auto runs float32 (cpu has no native bf16)"


def test_auto_on_cuda_is_bf16_on_bf16_gpus_else_fp16(cuda_bf16):
    cuda_bf16(True)
    assert resolve_amp("auto", CUDA) == "bf16"
    cuda_bf16(False)  # emulated bf16 (e.g. a V100 or T4) does not count
    assert resolve_amp("auto", CUDA) == "fp16"
    assert amp_note("fp16", CUDA) is None


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_emulated_precision_on_the_cpu_gets_a_note_naming_the_fix(amp, cpu_bf16):
    cpu_bf16(False)
    note = amp_note(amp, CPU)
    assert note.startswith(f"note: train.amp={amp} is emulated on this CPU and slower than float32")
    assert "train.amp=auto" in note and "or off" in note


def test_cpu_probe_missing_from_torch_counts_as_no_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert precision.native_bf16(CPU) is False


def test_autocast_contexts():
    layer = torch.nn.Linear(4, 4)
    with autocast(CPU, "bf16"):
        assert layer(torch.rand(2, 4)).dtype == torch.bfloat16
    with autocast(CPU, "off"):
        assert layer(torch.rand(2, 4)).dtype == torch.float32
