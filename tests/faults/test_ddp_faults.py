"""Two gloo processes: SIGTERM to the torchrun parent stops both ranks at one step with one last.pt, resuming
under two processes ends bit-identical to an uninterrupted two-process run, and an error on one rank ends the
other instead of leaving it waiting in a collective."""

from __future__ import annotations

import re
import signal
import subprocess

import pytest
from fault_helpers import RUN, assert_same_state, outcome
from helpers_training import (  # noqa: F401
    ROOT,
    TORCHRUN,
    child_env,
    finish,
    launch_ranks,
    load,
    one_thread,
    read_steps,
    wait_for_logged_step,
    write_recipe,
)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# Per process batch 4 of 32 samples: 4 steps per epoch, 8 in all, last.pt every 3 steps and at each evaluation.
ARGS = (*RUN, "--no-progress")

RAISES_ON_RANK_1 = """
import os
import torch
from multitask_deeplab.losses import LOSSES
from multitask_deeplab.losses.depth import L1DepthLoss


@LOSSES.register("fails_on_rank_1")
class FailsOnRank1(L1DepthLoss):
    calls = 0

    def forward(self, pred, target):
        if torch.is_grad_enabled():
            FailsOnRank1.calls += 1
            if FailsOnRank1.calls == 3 and os.environ.get("RANK") == "1":
                raise RuntimeError("a bug on rank 1 at step 3")
        return super().forward(pred, target)
"""


def train_args(recipe, run, *extra: str) -> list[str]:
    overrides = [item for item in extra if "=" in item]
    return ["train", str(recipe), f"train.output_dir={run}", *overrides, *ARGS, *(item for item in extra if item not in overrides)]


def test_sigterm_to_torchrun_stops_both_ranks_together_and_a_two_process_resume_is_bit_identical(tmp_path):
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "multitask_deeplab", *train_args(recipe, run)]
    parent = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_logged_step(run, 3, [parent], timeout=150)
        parent.send_signal(signal.SIGTERM)
    finally:
        ((code, _, err),) = finish([parent], timeout=150)
    assert code != 0
    steps = re.findall(r"mtdl: stopped by SIGTERM at step (\d+);", err)
    assert len(steps) == 2 and len(set(steps)) == 1, err[-3000:]
    stopped = int(steps[0])
    assert load(run / "last.pt")["step"] == stopped and [row["step"] for row in read_steps(run)] == list(range(1, stopped + 1))
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()

    for code, _, err in finish(launch_ranks(2, *train_args(recipe, run, "--resume", "auto")), timeout=150):
        assert code == 0, err[-3000:]
    for code, _, err in finish(launch_ranks(2, *train_args(recipe, tmp_path / "straight")), timeout=150):
        assert code == 0, err[-3000:]
    resumed, straight = outcome(run), outcome(tmp_path / "straight")
    assert resumed["steps"] == straight["steps"] and resumed["metrics"] == straight["metrics"]
    assert_same_state(resumed["last"], straight["last"])


def test_an_error_on_one_rank_ends_the_other(tmp_path):
    recipe, plugin = write_recipe(tmp_path), tmp_path / "fails_on_rank_1.py"
    plugin.write_text(RAISES_ON_RANK_1)
    args = train_args(recipe, tmp_path / "run", "tasks.depth.loss={type: fails_on_rank_1}", "--plugin", str(plugin))
    (code0, _, err0), (code1, _, err1) = finish(launch_ranks(2, *args), timeout=150)
    assert code1 != 0 and "a bug on rank 1 at step 3" in err1
    assert code0 != 0, "rank 0 ended too"
    assert err0.strip().splitlines()[-1].startswith("mtdl: error: ") and "Traceback" not in err0, err0[-2000:]

