"""Faults: non-finite losses (skip, stop, too many in a row, on one rank of two), checkpoint writes that fail or
are killed midway, unreadable and malicious checkpoint files, and an output folder that stops taking writes."""

from __future__ import annotations

import errno
import pickle
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_training import (  # noqa: F401
    ROOT,
    InfAtSteps,
    child_env,
    finish,
    launch_ranks,
    load,
    one_thread,
    read_steps,
    write_inf_loss_plugin,
    write_recipe,
)

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.engine.build import build_model
from multitask_deeplab.engine.checkpoint import export_safetensors, load_checkpoint, load_safetensors, save_checkpoint
from multitask_deeplab.engine.trainer import Trainer, TrainingStopped

pytestmark = pytest.mark.usefixtures("one_thread")


def trainer_with_inf_depth_loss(tmp_path: Path, steps: list[int], *overrides: str) -> Trainer:
    """A tiny trainer whose depth loss is inf at ``steps``."""
    recipe = recipe_module.load(write_recipe(tmp_path), [f"train.output_dir={tmp_path / 'run'}", *overrides])
    trainer = Trainer(recipe, show_progress=False)
    trainer.losses["depth"] = InfAtSteps(steps=steps)
    return trainer


# ------------------------------------------------------------------------------------------- non-finite losses
def test_skip_drops_the_step_warns_naming_step_and_task_and_counts_it(tmp_path, capsys):
    trainer = trainer_with_inf_depth_loss(tmp_path, [2], "train.steps=4")
    trainer.fit()
    assert "warning: step 2: non-finite loss in task depth; skipped this step (1 skipped so far)" in capsys.readouterr().out
    run = tmp_path / "run"
    assert [row.get("skipped", False) for row in read_steps(run)] == [False, True, False, False]
    state = load(run / "last.pt")
    assert state["step"] == 4 and state["skipped_steps"] == 1
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {3.0}, "3 updates in 4 steps"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert '"skipped_steps": 1' in (run / "metrics.jsonl").read_text()


def test_stop_saves_the_state_before_the_bad_step_and_exits_3(tmp_path):
    trainer = trainer_with_inf_depth_loss(tmp_path, [3], "train.steps=5", "train.nonfinite=stop")
    with pytest.raises(TrainingStopped) as stop:
        trainer.fit()
    last = tmp_path / "run" / "last.pt"
    assert stop.value.exit_code == 3
    assert str(stop.value) == (
        f"step 3: non-finite loss in task depth; stopped because train.nonfinite is 'stop' (last good state saved to {last})"
    )
    assert load(last)["step"] == 2 and [row["step"] for row in read_steps(tmp_path / "run")] == [1, 2]


def test_more_than_max_skipped_steps_in_a_row_stops(tmp_path):
    trainer = trainer_with_inf_depth_loss(tmp_path, [2, 3, 5, 6, 7], "train.steps=8", "train.max_skipped_steps=2")
    with pytest.raises(TrainingStopped, match=r"^step 7: .* more than 2 steps in a row were skipped") as stop:
        trainer.fit()
    assert stop.value.exit_code == 3
    state = load(tmp_path / "run" / "last.pt")
    assert state["step"] == 6 and state["skipped_steps"] == 5, "the good step 4 reset the count in a row"


def test_a_non_finite_loss_on_one_rank_skips_and_then_stops_both_ranks_together(tmp_path):
    recipe, plugin = write_recipe(tmp_path), write_inf_loss_plugin(tmp_path)
    args = ["train", str(recipe), f"train.output_dir={tmp_path / 'run'}", "train.steps=8", "train.max_skipped_steps=1",
            "tasks.depth.loss={type: inf_at_steps, steps: [2, 4, 5], rank: 1}", "--no-progress", "--plugin", str(plugin)]
    results = finish(launch_ranks(2, *args), timeout=150)
    stopped = "step 5: non-finite loss in task depth; stopped because more than 1 steps in a row were skipped"
    for code, _, err in results:
        assert code == 3 and stopped in err, err[-2000:]
    assert "warning: step 2: non-finite loss in task depth; skipped this step" in results[0][1], "rank 0 names rank 1's task"
    assert "warning" not in results[1][1], "only rank 0 prints"
    assert [row.get("skipped", False) for row in read_steps(tmp_path / "run")] == [False, True, False, True]
    assert load(tmp_path / "run" / "last.pt")["step"] == 4


# ------------------------------------------------------------------------------------------ checkpoint writes
def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "weight": torch.ones(3)})

    def disk_full(obj, file):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"step": 2, "weight": torch.zeros(3)})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "the temporary file is removed"


KILLED_WRITER = """
import sys, time
from multitask_deeplab.runtime.files import atomic_write

def write(temp):
    temp.write_bytes(b"PK\\x03\\x04 the first bytes of a checkpoint")
    print("writing", flush=True)
    time.sleep(60)

atomic_write(sys.argv[1], write)
"""


def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    command = [sys.executable, "-c", KILLED_WRITER, str(path)]
    process = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "writing\n"
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert load_checkpoint(path)["step"] == 1
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p != path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.") and leftovers[0].endswith(".tmp")


def test_an_output_folder_that_stops_taking_writes_stops_training_with_exit_4(tmp_path, monkeypatch, capsys):
    """Running as root, chmod cannot take the permission away: creating files fails from step 4 instead."""
    recipe = write_recipe(tmp_path)
    real_mkstemp, calls = tempfile.mkstemp, []

    def mkstemp_that_starts_failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_that_starts_failing)
    code = main(["train", str(recipe), f"train.output_dir={tmp_path / 'run'}", "train.steps=6", "train.checkpoint_interval=2",
                 "--no-progress"])
    err = capsys.readouterr().err
    last = tmp_path / "run" / "last.pt"
    assert code == 4
    assert err.startswith(f"mtdl: could not write {last}: Permission denied; stopped at step 4.") and "--resume auto" in err
    assert load_checkpoint(last)["step"] == 2


# ---------------------------------------------------------------------------------------- reading checkpoints
@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "text"])
def test_an_unreadable_checkpoint_is_named_in_one_line(tmp_path, capsys, damage):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.randn(64, 64)}})
    payloads = {
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "random": np.random.default_rng(0).bytes(4096),
        "empty": b"",
        "text": b"seg: {kind: segmentation}\n",
    }
    bad = tmp_path / "bad.pt"
    bad.write_bytes(payloads[damage])
    with pytest.raises(ValueError, match=f"^{re.escape(str(bad))} is not a readable checkpoint"):
        load_checkpoint(bad)
    assert main(["evaluate", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mtdl: error: {bad} is not a readable checkpoint") and err.count("\n") == 1


class Payload:
    """Unpickling this creates ``marker``: a stand-in for any code a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, capsys):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"format": "multitask_deeplab/1", "model": {}, "payload": Payload(marker)}, evil)
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists(), "the payload is live"
    marker.unlink()

    with pytest.raises(ValueError, match=rf"^refused to load {re.escape(str(evil))}: it holds Python objects \(io\.open\)"):
        load_checkpoint(evil)
    assert main(["evaluate", str(evil), "--device", "cpu"]) == 2
    assert f"refused to load {evil}" in capsys.readouterr().err
    assert not marker.exists()


def test_safetensors_export_round_trip_and_mismatch(tmp_path):
    recipe = recipe_module.load(write_recipe(tmp_path))
    model, fresh = build_model(recipe), build_model(recipe)
    path = tmp_path / "weights.safetensors"
    export_safetensors(model, path)
    load_safetensors(fresh, path)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    other = build_model(recipe_module.load(write_recipe(tmp_path), ["tasks.seg.head.channels=16"]))
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} does not fit the model"):
        load_safetensors(other, path)
