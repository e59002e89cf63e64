"""Measuring tools: interleaved median timings, peak memory in a fresh process, FLOPs, matrix-multiply throughput."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

MiB = 1024 * 1024
_PRELOAD = ["torch", "torchvision", "timm", "kornia", "multitask_deeplab.engine.build", "multitask_deeplab.engine.trainer"]


def synchronize(device: torch.device) -> None:
    """Waits for queued device work, so that a wall-clock interval covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    candidates: Mapping[str, Callable[[], Any]], *, device: torch.device, warmup: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Times each zero-argument callable, taking turns in every round so that machine noise hits all alike.

    Args:
        candidates: Name -> callable doing one unit of work (e.g. one forward pass).
        device: Where the work runs (synchronised around each call).
        warmup: Untimed rounds first (allocator, oneDNN/cuDNN plans, compilation).
        repeats: Timed rounds.

    Returns:
        Name -> ``{"median_s", "min_s", "times_s"}``.
    """
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(warmup + repeats):
        for name, work in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            work()
            synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: summary(values) for name, values in times.items()}


def summary(values: list[float]) -> dict[str, Any]:
    """Median, minimum and all values of a list of seconds."""
    return {"median_s": statistics.median(values), "min_s": min(values), "times_s": [round(v, 6) for v in values]}


def count_flops(work: Callable[[], Any]) -> int:
    """Floating-point operations (a multiply-add counts 2) of one call, from ``FlopCounterMode``."""
    counter = FlopCounterMode(display=False)
    with counter:
        work()
    return int(counter.get_total_flops())


def matmul_throughput(
    *, device: torch.device, dtype: torch.dtype, size: int, warmup: int = 2, repeats: int = 5
) -> dict[str, float]:
    """Dense ``size x size`` matrix-multiply throughput in FLOP/s (median of ``repeats``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    timing = time_interleaved({"mm": lambda: torch.mm(a, b, out=out)}, device=device, warmup=warmup, repeats=repeats)["mm"]
    flops = 2 * size**3
    return {"size": size, "flops": flops, "median_s": timing["median_s"], "flop_per_s": flops / timing["median_s"]}


# ------------------------------------------------------------------------------------------------ peak memory


def allocated_peak(work: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of tensors allocated during one call and not freed before that point (the call's transient
    and new memory; tensors that existed before it are not counted).

    On CUDA this is ``torch.cuda.max_memory_allocated``; on the CPU it is replayed from the profiler's record of
    every allocation and free, which sees tensor memory only (not library workspaces or allocator slack).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        work()
    records = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        live += record.nbytes()
        peak = max(peak, live)
    return peak


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} field; peak memory on the CPU needs Linux")


def _child(task: Callable[..., dict], args: tuple, device_type: str) -> dict:
    """Runs in a fresh process: ``task(*args)`` and the memory it took at its peak."""
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _status_bytes("VmRSS")
    result = task(*args)
    peak = torch.cuda.max_memory_allocated() - before if device_type == "cuda" else _status_bytes("VmHWM") - before
    return {**result, "peak_bytes": peak}


def in_fresh_process(task: Callable[..., dict], *args: Any, device: torch.device) -> dict:
    """Runs ``task(*args)`` (a module-level function returning a dict) in a fresh process; adds ``peak_bytes``.

    On the CPU ``peak_bytes`` is the growth of the process's peak resident set (``VmHWM``) over its resident
    set before the task: everything the task allocates (weights, gradients, optimizer state, activations,
    library workspaces) and nothing another measurement left behind. On CUDA it is the growth of
    ``torch.cuda.max_memory_allocated``. The process comes from a fork server that has imported torch, timm and
    this project once, so a measurement costs no import time.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    with context.Pool(processes=1, maxtasksperchild=1) as pool:
        return pool.apply(_child, (task, args, device.type))


def main() -> None:
    """``python -m benchmarks.measure [--threads N]``: prints this machine's matrix-multiply throughput, the figure
    every published time is quoted with (run it in the same session as the timed command)."""
    import argparse

    from multitask_deeplab.runtime.precision import native_bf16

    parser = argparse.ArgumentParser(prog="python -m benchmarks.measure", description=main.__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--size", type=int, default=2048, help="side of the square matrices")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if native_bf16(cpu) else {})}
    for name, dtype in dtypes.items():
        rate = matmul_throughput(device=cpu, dtype=dtype, size=args.size)["flop_per_s"]
        print(f"{name} matrix multiply: {rate / 1e9:.0f} GFLOP/s ({args.size}^2, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
