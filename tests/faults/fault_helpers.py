"""What the fault probes share: a tiny run driven through the real command line, and comparisons of final states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from helpers_training import load, read_steps, write_recipe

from multitask_deeplab.cli import main

# 2 epochs of 8 steps, an evaluation (last.pt, best.pt, metrics row) after each, last.pt also every 3 steps, on
# timm's 82k-parameter test_efficientnet (batch norm included), so a checkpoint is small and quick to write.
# Dropout and augmentation stay on: a resumed run must restore every random generator to match.
STEPS = 16
TINY_BACKBONE = "model.backbone=test_efficientnet"
RUN = ("train.epochs=2", "train.checkpoint_interval=3", TINY_BACKBONE)


def train(recipe: Path, run_dir: Path, *extra: str) -> int:
    """``mtdl train RECIPE RUN... train.output_dir=RUN_DIR EXTRA`` in this process; returns the exit code.

    ``extra`` may end with flags (``--resume auto``); overrides come first.
    """
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    flags = [item for item in extra if item not in overrides]
    return main(["train", str(recipe), *RUN, f"train.output_dir={run_dir}", *overrides, "--no-progress", *flags])


def straight_run(folder: Path) -> dict[str, Any]:
    """An uninterrupted run of :data:`RUN`: its final checkpoint, step log and metrics log."""
    recipe = write_recipe(folder)
    assert train(recipe, folder / "straight") == 0
    return outcome(folder / "straight")


def outcome(run_dir: Path) -> dict[str, Any]:
    """What a finished run leaves: ``last.pt``, the per-step rows and the metrics log text."""
    return {"last": load(run_dir / "last.pt"), "steps": read_steps(run_dir), "metrics": (run_dir / "metrics.jsonl").read_text()}


def assert_same_state(a: dict[str, Any], b: dict[str, Any], *, keys: tuple[str, ...] = ("model", "optimizer", "rng")) -> None:
    """Two checkpoints hold bit-identical weights and buffers, optimizer state and random generator states."""
    if "model" in keys:
        assert a["model"].keys() == b["model"].keys()
        for name, tensor in a["model"].items():
            assert torch.equal(tensor, b["model"][name]), f"model tensor {name} differs"
    if "optimizer" in keys:
        for index, slots in a["optimizer"]["state"].items():
            for name, tensor in slots.items():
                assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(b["optimizer"]["state"][index][name])), (index, name)
    if "rng" in keys:
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]), "torch random generator differs"
        assert a["rng"]["numpy"] == b["rng"]["numpy"] and a["rng"]["python"] == b["rng"]["python"], "numpy/python generators differ"
