"""The targets the benchmark checks, and its results as markdown tables."""

from __future__ import annotations

from typing import Any

SEG_ONLY_TARGET = 0.90
MULTITASK_TIME_TARGET = 0.60
MULTITASK_MEMORY_TARGET = 0.65
CHECKPOINT_MEMORY_TARGET = 0.60  # at least 40% lower peak memory ...
CHECKPOINT_TIME_TARGET = 1.35  # ... for at most 35% more time per step
FLOP_UTILISATION_TARGET = 0.9
PEER_SEG_TARGET = 0.6  # ours / the fastest peer, seg only, same generic options
PEER_MULTITASK_TARGET = 0.4  # ours / the fastest pair of peer models, seg + depth, same generic options
SAME_OPTIONS = "same options"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the figure measured for it and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool) -> None:
        rows.append({"target": target, "measured": measured, "met": met})

    peers = results.get("peers")
    if peers:
        accuracy = results.get("precision", {}).get("candidates")
        for group, section in peers["groups"].items():
            bound = PEER_MULTITASK_TARGET if group == "seg + depth" else PEER_SEG_TARGET
            for batch, timings in section["regimes"][SAME_OPTIONS].items():
                eligible = [name for name in peers["ours"] if name != "ours" and _accurate(peers["ours"][name], accuracy)]
                best = min(eligible, key=lambda name: timings["rows"][name]["ratio_to_best_peer"])
                ratio = timings["rows"][best]["ratio_to_best_peer"]
                note = "" if accuracy else "; bf16/int8 count once the precision section has passed them"
                add(
                    f"{group}, batch {batch}, same options: ours / fastest peer <= {bound} (fp32, or bf16/int8 passing the accuracy bars)",
                    f"{ratio:.3f} ({best} vs {timings['best_peer']}{note})",
                    ratio <= bound,
                )

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


def _accurate(spec: list[str], accuracy: dict[str, Any] | None) -> bool:
    """Whether ours with ``[backend, precision]`` may count for a target: float32, or a precision that the precision
    section measured and passed."""
    backend, precision = spec
    if precision == "fp32":
        return True
    row = (accuracy or {}).get(f"{backend} {precision}")
    return bool(row and row.get("passes"))


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
    fp32 = results["matmul"]["fp32"]
    parts = [
        "# Benchmark results",
        f"**fp32 matrix multiply: {fp32['flop_per_s'] / 1e9:.0f} GFLOP/s** ({fp32['size']}^2, same run): times scale with it.",
        f"{machine['device_name']}, {settings['threads']} threads; torch {machine['torch']}, torchvision {machine['torchvision']}, "
        f"timm {machine['timm']}{'; QUICK MODE: tiny sizes, the targets do not apply' if settings['quick'] else ''}. Inference times are medians of "
        f"{settings['repeats']} timed rounds after {settings['warmup']} warm-up rounds, models taking turns in each round; "
        "the ratio of minimums is given too, as it is the least sensitive to other processes on the machine.",
    ]
    if "peers" in results:
        parts.append(_headline(results["peers"], results.get("precision")))
        parts.append(_peers(results["peers"], settings))
    if "precision" in results:
        parts.append(_precision(results["precision"]))
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


def _precision_columns(spec: list[str], accuracy: dict[str, Any] | None) -> list[str]:
    """Agreement with float32, metric changes and the verdict of ours at ``[backend, precision]``, from the precision
    section (``-`` where it did not run)."""
    row = (accuracy or {}).get(" ".join(spec))
    if row is None:
        return ["-", "-", "-"]
    agreement = ", ".join(_measure(key, value) for key, value in row.get("agreement", {}).items()) or "reference"
    changes = ", ".join(f"{key} {value:+.4f}" for key, value in row["changes"].items())
    return [agreement, changes, "yes" if row.get("passes", True) else "**no**"]


def _measure(key: str, value: float) -> str:
    task, _, measure = key.rpartition(".")
    return f"{task} {value:.2f}°" if measure == "angle_deg" else f"{task} {100 * value:.2f} %"


def _headline(section: dict[str, Any], precision: dict[str, Any] | None) -> str:
    accuracy = (precision or {}).get("candidates")
    rows = []
    for group, result in section["groups"].items():
        for regime, batches in result["regimes"].items():
            for batch, timings in batches.items():
                names = ["ours"] if regime != SAME_OPTIONS else [name for name in section["ours"] if name != "ours"]
                for name in names:
                    spec = section["ours"][name]
                    row = timings["rows"][name]
                    rows.append([
                        group, regime, batch, f"{name} ({' '.join(spec)})" if name == "ours" else name, timings["best_peer"],
                        f"**{row['ratio_to_best_peer']:.3f}**", f"{row['ratio_of_minimums']:.3f}", *_precision_columns(spec, accuracy),
                    ])
    return (
        "## Headline: ours / the fastest peer\n\n"
        f"Same options: {section['options']} for every model. Agreement and metric changes: ours at that precision on the "
        "default recipe's trained model over its val split (the precision section); the targets count bf16 and int8 only "
        "where they pass its bars.\n\n"
        + _table(["group", "regime", "batch", "ours", "fastest peer", "ours / peer", "(of minimums)", "agreement with fp32",
                  "metric change", "passes the bars"], rows)
    )


def _peers(section: dict[str, Any], settings: dict[str, Any]) -> str:
    rows = []
    for group, result in section["groups"].items():
        for regime, batches in result["regimes"].items():
            for batch, timings in batches.items():
                for name, t in timings["rows"].items():
                    flops = result["flops_per_image"].get(name if name in result["peers"] else "ours")
                    rows.append([
                        group, regime, batch, name, f"{flops / 1e9:.1f}", _s(t["median_s"]), _s(t["min_s"]),
                        f"{t['ratio_to_best_peer']:.3f}", f"{t['ratio_of_minimums']:.3f}",
                    ])
    return (
        f"## 0. Against the peers ({settings['size']}x{settings['size']}, {settings['encoder']})\n\n"
        "torchvision `deeplabv3_resnet50` (ResNet-50 runs only) and segmentation_models_pytorch `DeepLabV3`/`DeepLabV3Plus` "
        f"with the `tu-{settings['encoder']}` encoder, each with its defaults, random weights. As shipped: the peers in eval mode, float32; ours "
        "through the Predictor's default backend and precision. Same options: "
        f"{section['options']} for every model, and ours at every precision and backend.\n\n"
        + _table(["group", "regime", "batch", "model", "GFLOP / image", "median s", "min s", "/ fastest peer", "(of minimums)"], rows)
    )


def _precision(section: dict[str, Any]) -> str:
    if "skipped" in section:
        return f"## 7. Precision and backends: accuracy\n\nSkipped: {section['skipped']}."
    rows = []
    for name, row in section["candidates"].items():
        metrics = ", ".join(f"{key} {row['metrics'][key]:.4f}" for key in row["changes"])
        rows.append([name, row["device"], metrics, *_precision_columns(name.split(" "), section["candidates"])])
    bf16 = section["candidates"]["torch bf16"]
    verdict = (
        f"**precision=auto may become the default: {'yes' if section['auto_may_be_default'] else 'no'}** "
        f"(bf16 {'is' if section['bf16_native'] else 'is not'} native on this device)."
    )
    return (
        f"## 7. Precision and backends: accuracy (`{section['checkpoint']}`, {section['val_images']} val images)\n\n"
        f"Bars: segmentation pixel agreement with float32 >= {100 * section['bars']['agreement']:.1f} %, depth AbsRel "
        f"change <= {section['bars']['abs_rel']}. {verdict} bf16 passes: {bf16['passes']}.\n\n"
        + _table(["run", "device", "val metrics", "agreement with fp32", "change from fp32", "passes the bars"], rows)
    )
