"""Precision: how bf16 and int8 (and the ONNX Runtime backend) change a trained model's predictions and metrics.

Every way of running the checkpoint's model goes through the ``Predictor`` over the whole val split of its recipe:
PyTorch float32 (the reference), bf16 autocast, ONNX Runtime float32 and int8 (calibrated on images of the train
split, CPU only). For each: the val metrics, their change from float32 (mIoU, AbsRel, δ1), and how closely its
predictions follow float32's pixel by pixel (:class:`~multitask_deeplab.inference.agreement.Agreement`).

The bars a precision has to pass to become a default (issue 18): segmentation pixel agreement with float32 at
least 99.5 % and depth AbsRel changed by at most 0.002. ``precision="auto"`` (bf16 where native) may become the
``Predictor``'s default only where bf16 passes them on the default recipe's trained model.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.settings import DEFAULT_RECIPE, Settings
from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.data.loader import build_dataset
from multitask_deeplab.inference.agreement import Agreement
from multitask_deeplab.inference.predictor import Predictor
from multitask_deeplab.runtime.precision import native_bf16
from multitask_deeplab.tasks import TASKS, TaskKind

AGREEMENT_BAR = 0.995
ABS_REL_BAR = 0.002
REFERENCE = "torch fp32"
CHANGED = ("miou", "abs_rel", "delta1")
"""The metrics whose change from float32 is reported (for the tasks that have them)."""


def candidates(device: torch.device) -> dict[str, dict[str, Any]]:
    """The ways of running the model: name -> Predictor options. int8 runs on the CPU whatever ``device`` is."""
    return {
        REFERENCE: {"device": device, "precision": "fp32"},
        "torch bf16": {"device": device, "precision": "bf16"},
        "onnxruntime fp32": {"device": device, "backend": "onnxruntime", "precision": "fp32"},
        "onnxruntime int8": {"device": "cpu", "backend": "onnxruntime", "precision": "int8"},
    }


def quick_checkpoint(settings: Settings, folder: Path) -> Path:
    """A checkpoint of the default recipe after a few steps at the quick sizes (for ``--quick`` runs only)."""
    from multitask_deeplab.engine.trainer import Trainer

    overrides = [
        f"data.height={settings.accuracy_size}", f"data.width={settings.accuracy_size}", f"data.num_samples={settings.accuracy_samples}",
        "data.num_workers=0", f"train.steps={settings.accuracy_steps}", "train.epochs=null", "train.warmup_steps=0", "train.batch_size=4",
        f"train.device={settings.device.type}", "eval.num_visualize=0", f"train.output_dir={folder}",
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        Trainer(recipe_module.load(DEFAULT_RECIPE, overrides), show_progress=False).fit()
    return folder / "last.pt"


def run_precision(settings: Settings) -> dict[str, Any]:
    """Metrics and agreement with float32 of every precision and backend over the val split of ``--checkpoint``'s
    recipe; a quick run without one trains a tiny model of the default recipe for it, a full run is skipped."""
    if settings.checkpoint is not None:
        return measure(Path(settings.checkpoint), settings.device)
    if not settings.quick:
        return {"skipped": "needs --checkpoint: the default recipe's trained model (mtdl train recipes/scenes_seg_depth.yaml)"}
    with tempfile.TemporaryDirectory() as folder:
        return measure(quick_checkpoint(settings, Path(folder)), settings.device)


def measure(checkpoint: Path, device: torch.device) -> dict[str, Any]:
    """Every candidate's val metrics, their change from float32 and its agreement with float32, and the verdict."""
    predictors = {name: Predictor.from_checkpoint(checkpoint, **options) for name, options in candidates(device).items()}
    reference = predictors[REFERENCE]
    recipe = reference.recipe
    dataset = build_dataset(recipe, "val")
    tasks = reference.tasks
    metrics = {name: {task_name: task.metrics() for task_name, task in tasks.items()} for name in predictors}
    agreements = {name: Agreement(reference.tasks) for name in predictors if name != REFERENCE}
    for batch in DataLoader(dataset, batch_size=recipe.eval_batch_size, num_workers=0):
        expected = reference.predict_batch(batch["image"].to(reference.device))
        for name, predictor in predictors.items():
            outputs = expected if name == REFERENCE else predictor.predict_batch(batch["image"].to(predictor.device))
            for task_name, task in tasks.items():
                metrics[name][task_name].update(outputs[task_name].cpu(), task.prepare_target(batch[task.target]))
            if name != REFERENCE:
                agreements[name].update({k: v.cpu() for k, v in expected.items()}, {k: v.cpu() for k, v in outputs.items()})
    values = {name: {f"{task}.{key}": value for task, m in per_task.items() for key, value in m.compute().items()} for name, per_task in metrics.items()}
    rows: dict[str, Any] = {}
    for name, predictor in predictors.items():
        row: dict[str, Any] = {"precision": predictor.precision, "device": str(predictor.device), "metrics": values[name]}
        row["changes"] = {
            key: value - values[REFERENCE][key] for key, value in values[name].items() if key.rpartition(".")[2] in CHANGED
        }
        if name != REFERENCE:
            row["agreement"] = agreements[name].compute()
            row["passes"] = passes(tasks, row)
        rows[name] = row
    return {
        "checkpoint": str(checkpoint),
        "tasks": {name: TASKS.name_of(type(task)) for name, task in tasks.items()},
        "val_images": len(dataset),
        "bf16_native": native_bf16(device),
        "bars": {"agreement": AGREEMENT_BAR, "abs_rel": ABS_REL_BAR},
        "candidates": rows,
        "auto_may_be_default": rows["torch bf16"]["passes"],
    }


def passes(tasks: dict[str, TaskKind], row: dict[str, Any]) -> bool:
    """Whether a candidate meets the bars: the pixel agreement of every task compared by class (segmentation) and the
    AbsRel change of every task measured by AbsRel (depth)."""
    checks = []
    for name, task in tasks.items():
        if task.comparison == "agreement":
            checks.append(row["agreement"][f"{name}.agreement"] >= AGREEMENT_BAR)
        if f"{name}.abs_rel" in row["changes"]:
            checks.append(abs(row["changes"][f"{name}.abs_rel"]) <= ABS_REL_BAR)
    return all(checks)
