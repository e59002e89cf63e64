"""Training: a recipe's training step with and without each speed/memory option, and short accuracy runs.

Each configuration runs in a fresh process (so peak memory is its own): the real ``Trainer`` is built from the
recipe plus overrides, fed one fixed batch (rendering is measured in the data section), and its training step
(augmentation, forward, losses, weighting, backward, clipping, optimizer step) is timed.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from benchmarks.measure import MiB, allocated_peak, in_fresh_process, summary, synchronize
from benchmarks.settings import DEFAULT_RECIPE, RESNET50_RECIPE, Settings, TrainSize
from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.runtime.precision import native_bf16

MODEL_CHECKPOINTING = "grad checkpointing (backbone + heads)"
_TRUNK_HEADS = ("deeplabv3", "depth", "normals")
"""Head types that take ``trunk: light``, i.e. that can sit on a shared trunk."""

DEPTH_VARIANTS: dict[str, list[str]] = {
    "full ASPP depth head": ["tasks.depth.head={type: deeplabv3}"],
    "separable-ASPP depth head": ["tasks.depth.head={type: deeplabv3, separable: true}"],
    "conv depth head": ["tasks.depth.head={type: deeplabv3, trunk: conv}"],
    "depth head on layer3": ["tasks.depth.head={type: deeplabv3, in_index: -2}"],
    "shared trunk, light heads": [
        "model.shared_trunk={}", "tasks.seg.head={type: deeplabv3, trunk: light}", "tasks.depth.head={type: deeplabv3, trunk: light}",
    ],
    "shared separable trunk, light heads": [
        "model.shared_trunk={separable: true}", "tasks.seg.head={type: deeplabv3, trunk: light}",
        "tasks.depth.head={type: deeplabv3, trunk: light}",
    ],
}
"""Seg + depth at output stride 8 (default recipe, ``deeplabv3`` seg head) with each depth head, for accuracy."""


def training_options(recipe_path: Path, settings: Settings) -> dict[str, list[str]]:
    """Option name -> recipe overrides; each option is added alone to the baseline (every option off)."""
    options = {
        "baseline": [],
        "channels_last": ["train.channels_last=true"],
        "grad checkpointing (backbone)": ["train.grad_checkpointing=true"],
        MODEL_CHECKPOINTING: [],
    }
    recipe = recipe_module.load(recipe_path)
    if all(task.head["type"] in _TRUNK_HEADS for task in recipe.tasks.values()):
        options["shared trunk"] = ["model.shared_trunk={}", *(f"tasks.{name}.head.trunk=light" for name in recipe.tasks)]
    if settings.compile:
        options["torch.compile"] = ["train.compile=true"]
    if native_bf16(settings.device):  # what train.amp=auto picks there
        options["bf16 autocast"] = ["train.amp=bf16"]
    return options


def base_overrides(size: TrainSize, settings: Settings) -> list[str]:
    return [
        f"data.height={size.size}", f"data.width={size.size}", "data.num_workers=0", f"train.batch_size={size.batch}",
        "train.channels_last=false", "train.grad_checkpointing=false", "train.compile=false", "train.amp=off",
        f"train.device={settings.device.type}", "eval.num_visualize=0",
    ]


def train_steps(recipe_path: str, overrides: list[str], model_checkpointing: bool, size: TrainSize, threads: int) -> dict:
    """Runs in a fresh process: builds the Trainer, times its training step, profiles one more step."""
    from multitask_deeplab.engine.checkpoint import unwrap
    from multitask_deeplab.engine.trainer import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        recipe = recipe_module.load(recipe_path, [*overrides, f"train.output_dir={folder}"])
        trainer = Trainer(recipe, show_progress=False)
        if model_checkpointing:
            unwrap(trainer.model).set_grad_checkpointing(True)
        batch = default_collate(trainer.train_set.__getitems__(list(range(size.batch))))

        def step() -> None:
            trainer.train_step(batch)

        times = []
        for index in range(size.warmup + size.steps):
            synchronize(trainer.device)
            start = time.perf_counter()
            step()
            synchronize(trainer.device)
            if index >= size.warmup:
                times.append(time.perf_counter() - start)
        return {**summary(times), "allocated_peak_bytes": allocated_peak(step, trainer.device)}


def measure_step(recipe_path: Path, overrides: list[str], size: TrainSize, settings: Settings, model_checkpointing: bool = False) -> dict:
    """One configuration's training step in a fresh process: time, images/s and peak memory in MiB."""
    row = in_fresh_process(
        train_steps, str(recipe_path), [*base_overrides(size, settings), *overrides], model_checkpointing,
        size, settings.threads, device=settings.device,
    )
    row["images_per_s"] = size.batch / row["median_s"]
    row["peak_mib"] = row.pop("peak_bytes") / MiB
    row["allocated_peak_mib"] = row.pop("allocated_peak_bytes") / MiB
    return row


def add_ratios(rows: dict[str, dict], reference: str) -> None:
    """Adds each row's time and memory (peak, step tensors) as a ratio to the ``reference`` row."""
    base = rows[reference]
    for row in rows.values():
        row["time_ratio"] = row["median_s"] / base["median_s"]
        row["memory_ratio"] = row["peak_mib"] / base["peak_mib"]
        row["allocated_ratio"] = row["allocated_peak_mib"] / base["allocated_peak_mib"]


def run_training(settings: Settings) -> dict[str, Any]:
    """Section 4: each recipe's step time, images/s and peak memory with each option alone."""
    results: dict[str, Any] = {}
    for recipe_path, size in ((DEFAULT_RECIPE, settings.default_train), (RESNET50_RECIPE, settings.resnet50_train)):
        rows = {
            name: measure_step(recipe_path, overrides, size, settings, name == MODEL_CHECKPOINTING)
            for name, overrides in training_options(recipe_path, settings).items()
        }
        add_ratios(rows, "baseline")
        stride = recipe_module.load(recipe_path).model.output_stride
        results[recipe_path.name] = {"size": size.size, "batch": size.batch, "output_stride": stride, "options": rows}
    return results


def run_accuracy(settings: Settings) -> dict[str, Any]:
    """Short training runs of the default recipe at output stride 8 with each depth head: val metrics."""
    from multitask_deeplab.engine.trainer import Trainer

    steps = settings.accuracy_steps
    base = [
        "model.output_stride=8", "tasks.seg.head={type: deeplabv3}", f"data.height={settings.accuracy_size}",
        f"data.width={settings.accuracy_size}", "data.num_workers=0", f"train.steps={steps}", "train.epochs=null",
        f"train.warmup_steps={steps // 10}", "train.batch_size=8", f"train.device={settings.device.type}", "eval.num_visualize=0",
    ]
    if settings.quick:
        base.append(f"data.num_samples={settings.accuracy_samples}")
    rows = {}
    for name, overrides in DEPTH_VARIANTS.items():
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
            recipe = recipe_module.load(DEFAULT_RECIPE, [*base, *overrides, f"train.output_dir={folder}"])
            start = time.perf_counter()
            metrics = Trainer(recipe, show_progress=False).fit()
            seconds = time.perf_counter() - start
        rows[name] = {
            "seg.miou": metrics["seg.miou"], "depth.abs_rel": metrics["depth.abs_rel"], "depth.delta1": metrics["depth.delta1"],
            "train_s": seconds,
        }
    return {"steps": steps, "size": settings.accuracy_size, "backbone": recipe.model.backbone, "variants": rows}
