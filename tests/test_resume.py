"""Bit-exact resume: a real ``mtdl train`` stopped by SIGTERM mid-epoch and resumed with ``--resume auto`` gives
the same per-step losses, metrics and final state, bit for bit, as a run straight through (CPU, 2 workers,
dropout and random augmentation on, a moving average of the weights and early stopping's count kept)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers_training import ROOT, child_env, load, mtdl, one_thread, read_steps, wait_for_logged_step, write_recipe  # noqa: F401

from multitask_deeplab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

# 3 epochs of 8 steps; last.pt is written at the end of each epoch and every 10 steps, so the first save inside
# an epoch other than the first is at step 10. Stopping after it resumes mid-epoch, where the data loader's
# persistent workers and the random generators must all pick up exactly where they were.
STEPS, FIRST_MID_EPOCH_SAVE = 24, 10
# The moving average and the early-stopping count are resumed too (patience 3 of 3 evaluations: it never stops).
OVERRIDES = [
    "train.epochs=3", "train.checkpoint_interval=10", "data.num_workers=2", "train.ema.decay=0.9", "train.early_stop.patience=3",
    "--no-progress",
]  # fmt: skip


def stop_after_checkpoint(recipe: Path, run_dir: Path, *, timeout: float = 90) -> int:
    """Starts ``mtdl train``, sends SIGTERM once the save at step 10 began, and returns the step at which the
    trainer says it stopped."""
    process = subprocess.Popen(
        mtdl("train", str(recipe), f"train.output_dir={run_dir}", *OVERRIDES),
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_logged_step(run_dir, FIRST_MID_EPOCH_SAVE, [process], timeout=timeout)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert f"resume with: mtdl train RECIPE --resume {run_dir / 'last.pt'}" in err
    return int(re.search(r"stopped by SIGTERM at step (\d+);", err)[1])


def test_sigterm_then_resume_auto_is_bit_identical_to_a_straight_run(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    stopped_at = stop_after_checkpoint(recipe, tmp_path / "resumed")
    assert FIRST_MID_EPOCH_SAVE <= stopped_at < STEPS, "the signal came after the end of training"
    state = load(tmp_path / "resumed" / "last.pt")
    assert state["step"] == stopped_at
    assert [row["step"] for row in read_steps(tmp_path / "resumed")] == list(range(1, stopped_at + 1))

    assert main(["train", str(recipe), f"train.output_dir={tmp_path / 'resumed'}", *OVERRIDES, "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {tmp_path / 'resumed' / 'last.pt'} at epoch " in out and f", step {stopped_at}\n" in out
    assert main(["train", str(recipe), f"train.output_dir={tmp_path / 'straight'}", *OVERRIDES]) == 0

    resumed, straight = read_steps(tmp_path / "resumed"), read_steps(tmp_path / "straight")
    assert [row["step"] for row in straight] == list(range(1, STEPS + 1))
    assert resumed == straight, "per-step losses differ"
    metrics = [(tmp_path / run / "metrics.jsonl").read_text() for run in ("resumed", "straight")]
    assert metrics[0] == metrics[1] and metrics[0].count("\n") == 3
    a, b = load(tmp_path / "resumed" / "last.pt"), load(tmp_path / "straight" / "last.pt")
    assert a["step"] == b["step"] == STEPS
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), f"ema {key}"
    assert not torch.equal(a["ema"]["heads.seg.classifier.weight"], a["model"]["heads.seg.classifier.weight"])
    assert a["early_stop"] == b["early_stop"] and a["early_stop"]["best"] is not None
    for key, value in a["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, b["optimizer"]["state"][key][name]), (key, name)
    assert a["rng"]["torch"].equal(b["rng"]["torch"]) and a["rng"]["numpy"] == b["rng"]["numpy"]


def test_a_used_folder_is_refused_without_resume_and_overwrite_starts_it_afresh(tmp_path, capsys):
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    args = ["train", str(recipe), f"train.output_dir={run}"]
    assert main([*args, "train.steps=3", "--no-progress"]) == 0
    before = {name: (run / name).read_bytes() for name in ("last.pt", "recipe.yaml", "steps.jsonl", "metrics.jsonl")}
    capsys.readouterr()
    assert main([*args, "train.steps=2", "train.seed=1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"mtdl: error: {run} already holds a run (last.pt, best.pt, metrics.jsonl, metrics.csv, steps.jsonl): continue it "
        "with --resume auto, start it afresh with --overwrite (deletes them), or set train.output_dir to a new folder\n"
    )
    assert {name: (run / name).read_bytes() for name in before} == before, "nothing was written"
    assert main([*args, "train.steps=2", "train.seed=1", "--no-progress", "--overwrite"]) == 0
    assert [row["step"] for row in read_steps(run)] == [1, 2]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2]
    assert load(run / "last.pt")["step"] == 2 and load(run / "best.pt")["step"] == 2


@pytest.mark.parametrize(("before", "after"), [("off", "fp16"), ("fp16", "off")])
def test_resume_across_precisions(tmp_path, before, after):
    """train.amp=auto resolves per machine, so a run saved in one precision may resume in another (fp16 keeps a
    loss scale, the others none)."""
    recipe = write_recipe(tmp_path)
    common = ["train", str(recipe), f"train.output_dir={tmp_path / 'run'}", "train.device=cpu"]
    assert main([*common, "train.steps=2", f"train.amp={before}", "--no-progress"]) == 0
    assert main([*common, "train.steps=3", f"train.amp={after}", "--no-progress", "--resume", "auto"]) == 0
    assert load(tmp_path / "run" / "last.pt")["step"] == 3


def test_accumulated_steps_resume_mid_epoch_bit_identically(tmp_path, capsys):
    """``train.accumulate_steps=2`` at batch 4: 32 samples make 4 optimizer steps of 8 per epoch. A run stopped at
    step 3 (micro-batch 6 of the epoch) and resumed skips exactly the 24 samples already seen: the same per-step
    losses and final weights as a run straight through; resuming it with another accumulate_steps is refused."""
    recipe = write_recipe(tmp_path)
    common = ["train.accumulate_steps=2", "train.schedule=constant", "--no-progress"]
    stopped = tmp_path / "resumed"
    assert main(["train", str(recipe), f"train.output_dir={stopped}", "train.steps=3", *common]) == 0
    state = load(stopped / "last.pt")
    assert (state["epoch"], state["step"], state["step_in_epoch"]) == (0, 3, 3)
    assert main(["train", str(recipe), f"train.output_dir={stopped}", "train.steps=6", *common, "--resume", "auto"]) == 0
    assert main(["train", str(recipe), f"train.output_dir={tmp_path / 'straight'}", "train.steps=6", *common]) == 0
    resumed, straight = read_steps(stopped), read_steps(tmp_path / "straight")
    assert [row["step"] for row in straight] == [1, 2, 3, 4, 5, 6]
    assert resumed == straight
    a, b = load(stopped / "last.pt"), load(tmp_path / "straight" / "last.pt")
    assert (a["epoch"], a["step_in_epoch"]) == (b["epoch"], b["step_in_epoch"]) == (1, 2)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert main(["train", str(recipe), f"train.output_dir={tmp_path / 'other'}", "train.steps=3", *common]) == 0
    other = [arg.replace("accumulate_steps=2", "accumulate_steps=1") for arg in common]
    capsys.readouterr()
    assert main(["train", str(recipe), f"train.output_dir={tmp_path / 'other'}", "train.steps=6", *other, "--resume", "auto"]) == 2
    assert "stopped inside an epoch with train.accumulate_steps=2; resume with the same value (got 1)" in capsys.readouterr().err
