"""Runs the benchmark: ``python -m benchmarks.run [--quick] [--out results.json]``.

Writes the results as JSON and as markdown (same name, ``.md``) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler (step memory) otherwise logs to stderr
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import timm
import torch
import torchvision

from benchmarks import report
from benchmarks.data_pipeline import run_data
from benchmarks.inference import run_multitask, run_seg_only
from benchmarks.measure import matmul_throughput
from benchmarks.peers import run_peers
from benchmarks.precision import run_precision
from benchmarks.settings import Settings
from benchmarks.training import run_accuracy, run_training
from benchmarks.weighting import run_weighting
from multitask_deeplab.runtime.precision import native_bf16

SECTIONS = ("peers", "precision", "inference", "multitask", "training", "weighting", "data", "accuracy")


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor() or "CPU")
    return {
        "device_name": name, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
    }


def run(settings: Settings, out: Path) -> dict[str, Any]:
    """Runs the chosen sections and returns every figure, the targets included; ``out`` (JSON) and its markdown
    twin are rewritten after each section, so that an interrupted run keeps what it measured."""
    torch.set_num_threads(settings.threads)
    if settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if native_bf16(settings.device) else {})}
    matmul = {
        name: matmul_throughput(device=settings.device, dtype=dtype, size=settings.matmul_size, repeats=settings.repeats)
        for name, dtype in dtypes.items()
    }
    rates = {name: m["flop_per_s"] for name, m in matmul.items()}
    print(
        f"[benchmark] fp32 matrix multiply on {settings.device.type} ({settings.threads} threads, {settings.matmul_size}^2): "
        f"{rates['fp32'] / 1e9:.0f} GFLOP/s; scale every time below by it",
        file=sys.stderr,
        flush=True,
    )
    results: dict[str, Any] = {"settings": settings.to_dict(), "machine": machine(settings.device), "matmul": matmul}
    runners = {
        "peers": lambda: run_peers(settings),
        "precision": lambda: run_precision(settings),
        "inference": lambda: run_seg_only(settings, rates),
        "multitask": lambda: run_multitask(settings, rates),
        "training": lambda: run_training(settings),
        "weighting": lambda: run_weighting(settings),
        "data": lambda: run_data(settings),
        "accuracy": lambda: run_accuracy(settings),
    }
    for name in settings.sections:
        if name == "accuracy" and settings.accuracy_steps == 0:
            continue
        section_start = time.perf_counter()
        print(f"[benchmark] {name} ...", file=sys.stderr, flush=True)
        results[name] = runners[name]()
        print(f"[benchmark] {name} took {time.perf_counter() - section_start:.0f} s", file=sys.stderr, flush=True)
        results["seconds"] = time.perf_counter() - start
        write(results, out)
    results["seconds"] = time.perf_counter() - start
    write(results, out)
    return results


def write(results: dict[str, Any], out: Path) -> None:
    """Writes ``results`` with the targets checked so far as JSON to ``out`` and as markdown next to it."""
    results["targets"] = report.targets(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(report.markdown(results))


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, under a minute: checks that everything runs")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: benchmarks/results[-quick].json)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--size", type=int, default=None, help="inference image side (default 512; quick 64)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="seg-only inference batch sizes (default 1 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 2; quick 1)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile on a CPU)")
    parser.add_argument("--accuracy-steps", type=int, default=None, help="steps of each short accuracy run (default 150; 0 skips them)")
    parser.add_argument(
        "--checkpoint", default=None, help="trained model for the precision section (the default recipe's; without it a full run skips it)"
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device)
    changes: dict[str, Any] = {"device": device, "compile": args.compile, "sections": tuple(args.sections), "checkpoint": args.checkpoint}
    for name in ("threads", "size", "repeats", "warmup"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.batches:
        changes["batches"] = tuple(args.batches)
    if args.accuracy_steps is not None:
        changes["accuracy_steps"] = args.accuracy_steps
    settings = Settings.tiny(**changes) if args.quick else Settings(**changes)
    out = args.out or Path(__file__).resolve().parent / ("results-quick.json" if args.quick else "results.json")
    return settings, out


def main(argv: Sequence[str] | None = None) -> int:
    settings, out = parse_args(argv)
    results = run(settings, out)
    print(out.with_suffix(".md").read_text())
    print(f"wrote {out} and {out.with_suffix('.md')} ({results['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
