"""The targets the benchmark checks, and its results as markdown tables."""

from __future__ import annotations

from typing import Any

SEG_ONLY_TARGET = 0.90
MULTITASK_TIME_TARGET = 0.60
MULTITASK_MEMORY_TARGET = 0.65
CHECKPOINT_MEMORY_TARGET = 0.60  # at least 40% lower peak memory ...
CHECKPOINT_TIME_TARGET = 1.35  # ... for at most 35% more time per step
FLOP_UTILISATION_TARGET = 0.9


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the figure measured for it and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool) -> None:
        rows.append({"target": target, "measured": measured, "met": met})

    seg = results.get("inference")
    if seg:
        fast = seg["fast"]
        for batch, timings in seg["batches"].items():
            ratio = timings[fast]["ratio_to_torchvision"]
            add(f"seg-only inference, batch {batch}: ours / torchvision <= {SEG_ONLY_TARGET}", f"{ratio:.3f} ({fast})", ratio <= SEG_ONLY_TARGET)
        for batch, timings in seg["batches"].items():
            util = timings[fast]["flop_utilisation"]
            add(f"FLOP rate, seg-only batch {batch}: >= {FLOP_UTILISATION_TARGET} x matmul", f"{util:.2f}", util >= FLOP_UTILISATION_TARGET)
    multitask = results.get("multitask")
    if multitask:
        for name, row in multitask["models"].items():
            if name == "two torchvision models":
                continue
            met = row["time_ratio"] <= MULTITASK_TIME_TARGET and row["memory_ratio"] <= MULTITASK_MEMORY_TARGET
            add(
                f"seg + depth ({name}) / two models: time <= {MULTITASK_TIME_TARGET}, memory <= {MULTITASK_MEMORY_TARGET}",
                f"time {row['time_ratio']:.3f}, memory {row['memory_ratio']:.3f}",
                met,
            )
    training = results.get("training")
    if training:
        for recipe, section in training.items():
            if section["output_stride"] != 8:
                continue  # the checkpointing target is set for stride 8, where activations dominate
            options = section["options"]
            for name in ("grad checkpointing (backbone)", "grad checkpointing (backbone + heads)"):
                row = options.get(name)
                if row is None:
                    continue
                met = row["memory_ratio"] <= CHECKPOINT_MEMORY_TARGET and row["time_ratio"] <= CHECKPOINT_TIME_TARGET
                add(
                    f"{recipe}, {name}: peak memory -40%, time <= +35%",
                    f"peak {_change(row['memory_ratio'])} (tensors {_change(row['allocated_ratio'])}), time {_change(row['time_ratio'])}",
                    met,
                )
    return rows


def _change(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def markdown(results: dict[str, Any]) -> str:
    """All sections present in ``results`` as markdown."""
    settings, machine = results["settings"], results["machine"]
    parts = [
        "# Benchmark results",
        f"{machine['device_name']}, {settings['threads']} threads; torch {machine['torch']}, torchvision {machine['torchvision']}, "
        f"timm {machine['timm']}{'; QUICK MODE: tiny sizes, the targets do not apply' if settings['quick'] else ''}. Inference times are medians of "
        f"{settings['repeats']} timed rounds after {settings['warmup']} warm-up rounds, models taking turns in each round; "
        "the ratio of minimums is given too, as it is the least sensitive to other processes on the machine.",
    ]
    if "inference" in results:
        parts.append(_seg_only(results["inference"], settings))
    if "multitask" in results:
        parts.append(_multitask(results["multitask"], settings))
    if "inference" in results or "multitask" in results:
        parts.append(_flops(results))
    if "training" in results:
        parts.append(_training(results["training"], results["settings"]["device"]))
    if "data" in results:
        parts.append(_data(results["data"], results.get("training")))
    if "weighting" in results:
        parts.append(_weighting(results["weighting"], results["settings"]["device"]))
    if "accuracy" in results:
        parts.append(_accuracy(results["accuracy"]))
    rows = [[t["target"], t["measured"], "yes" if t["met"] else "**no**"] for t in results["targets"]]
    if rows:
        parts.append("## Targets\n\n" + _table(["target", "measured", "met"], rows))
    return "\n\n".join(parts) + "\n"


def _seg_only(section: dict[str, Any], settings: dict[str, Any]) -> str:
    rows = []
    for batch, timings in section["batches"].items():
        for name, t in timings.items():
            rows.append([
                batch, name, _s(t["median_s"]), _s(t["min_s"]), f"{t['ratio_to_torchvision']:.3f}",
                f"{t['ratio_of_minimums']:.3f}", f"{t['flop_utilisation']:.2f}",
            ])
    return (
        f"## 1. Seg-only inference against torchvision ({settings['size']}x{settings['size']})\n\n"
        f"timm ResNet-50, stride 8, `deeplabv3` head with weights converted from torchvision's `deeplabv3_resnet50`: "
        f"largest output difference {section['max_abs_difference']:.1e} (checked <= 1e-4). Options are cumulative; "
        f"{section['flops_per_image'] / 1e9:.1f} GFLOP per image; batch-norm layers {section['batchnorm_layers']['before']} "
        f"-> {section['batchnorm_layers']['after folding']} after folding.\n\n"
        + _table(["batch", "model / options", "median s", "min s", "ours / torchvision", "(of minimums)", "FLOP utilisation"], rows)
    )


def _multitask(section: dict[str, Any], settings: dict[str, Any]) -> str:
    rows = [
        [name, f"{r['flops_per_image'] / 1e9:.1f}", _s(r["median_s"]), f"{r['time_ratio']:.3f}", f"{r['ratio_of_minimums']:.3f}",
         f"{r['peak_mib']:.0f}", f"{r['memory_ratio']:.3f}"]
        for name, r in section["models"].items()
    ]
    memory = "peak RSS growth in a fresh process" if settings["device"] == "cpu" else "max allocated"
    return (
        f"## 2. Seg + depth against two separate models (batch {section['batch']}, {settings['size']}x{settings['size']})\n\n"
        f"One ResNet-50 stride-8 backbone and two heads (options: {section['options']}) against two torchvision-style DeepLabV3 "
        f"ResNet-50 models (segmentation; depth with a 1-channel head). Peak memory: {memory}, weights included.\n\n"
        + _table(["model", "GFLOP / image", "median s", "time ratio", "(of minimums)", "peak MiB", "memory ratio"], rows)
    )


def _flops(results: dict[str, Any]) -> str:
    rows = []

    def add(label: str, batch: int, flops: float, seconds: float, utilisation: float) -> None:
        rows.append([label, batch, f"{flops / 1e9:.1f}", f"{flops * batch / seconds / 1e9:.0f}", f"{utilisation:.2f}"])

    seg = results.get("inference")
    if seg:
        for batch, timings in seg["batches"].items():
            for name in ("torchvision", seg["fast"]):
                t = timings[name]
                add(f"seg only, {name}", int(batch), seg["flops_per_image"], t["median_s"], t["flop_utilisation"])
    multitask = results.get("multitask")
    if multitask:
        for name, r in multitask["models"].items():
            add(f"seg + depth, {name}", multitask["batch"], r["flops_per_image"], r["median_s"], r["flop_utilisation"])
    matmul = ", ".join(f"{dtype} {m['flop_per_s'] / 1e9:.0f} GFLOP/s" for dtype, m in results["matmul"].items())
    return (
        f"## 3. FLOP rate against the matrix-multiply throughput ({matmul}, {results['matmul']['fp32']['size']}^2)\n\n"
        "FLOPs from `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts 2), divided by the median time.\n\n"
        + _table(["model", "batch", "GFLOP / image", "GFLOP/s", "utilisation"], rows)
    )


def _training(section: dict[str, Any], device: str) -> str:
    parts = ["## 4. Training step, each option alone"]
    memory = "peak RSS MiB" if device == "cpu" else "peak allocated MiB"
    for recipe, result in section.items():
        rows = [
            [name, _s(r["median_s"]), f"{r['images_per_s']:.2f}", _change(r["time_ratio"]), f"{r['peak_mib']:.0f}",
             _change(r["memory_ratio"]), f"{r['allocated_peak_mib']:.0f}", _change(r["allocated_ratio"])]
            for name, r in result["options"].items()
        ]
        parts.append(
            f"`{recipe}` (output stride {result['output_stride']}) at {result['size']}x{result['size']}, batch {result['batch']}:\n\n"
            + _table(["option", "step s", "images/s", "time", memory, "change", "step tensors MiB", "change"], rows)
        )
    parts.append(
        "Peak: the whole process (weights, gradients, optimizer state, activations) above its size before the "
        "Trainer was built. Step tensors: the most tensor memory one step holds beyond what existed before it."
    )
    return "\n\n".join(parts)


def _weighting(section: dict[str, Any], device: str) -> str:
    memory = "peak RSS MiB" if device == "cpu" else "peak allocated MiB"
    rows = [
        [name, r["level"], _s(r["median_s"]), f"{r['time_ratio']:.2f}", f"{r['peak_mib']:.0f}", f"{r['memory_ratio']:.2f}"]
        for name, r in section["strategies"].items()
    ]
    return (
        f"## 6. Weighting strategies: training step against fixed weights (`{section['recipe']}` at "
        f"{section['size']}x{section['size']}, batch {section['batch']})\n\n"
        + _table(["strategy", "level", "step s", "time × fixed", memory, "memory × fixed"], rows)
    )


def _data(section: dict[str, Any], training: dict[str, Any] | None) -> str:
    rows = [[name, f"{section[name]['samples_per_s']:.1f}"] for name in section if isinstance(section[name], dict)]
    if training:
        first = next(iter(training.values()))
        rows.append(["training step (default recipe, baseline)", f"{first['options']['baseline']['images_per_s']:.1f}"])
    return (
        f"## 5. Data (default recipe, {section['height']}x{section['width']}, batch {section['batch']})\n\n"
        + _table(["stage", "samples / s"], rows)
    )


def _accuracy(section: dict[str, Any]) -> str:
    rows = [
        [name, f"{r['seg.miou']:.3f}", f"{r['depth.abs_rel']:.3f}", f"{r['depth.delta1']:.3f}", f"{r['train_s']:.0f}"]
        for name, r in section["variants"].items()
    ]
    return (
        f"## Depth heads: accuracy after a short run ({section['backbone']}, stride 8, {section['size']}x{section['size']}, "
        f"{section['steps']} steps, val split)\n\n" + _table(["depth head", "seg mIoU", "depth abs_rel", "depth delta1", "train s"], rows)
    )
