"""SIGINT, then SIGKILL in the middle of a checkpoint write, then SIGKILL at a random step, each time resumed with
``--resume auto``: the previous last.pt is always loadable, the temporary file of the killed save is removed when
the next run starts, the logs are cut back to the checkpoint, and the run ends bit-identical to one never stopped."""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pytest
from fault_helpers import RUN, assert_same_state, outcome, train
from helpers_training import ROOT, child_env, load, mtdl, one_thread, read_steps, wait_for_logged_step, write_recipe  # noqa: F401
from PIL import Image

from multitask_deeplab.engine.checkpoint import load_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

EVERY_STEP = ("train.checkpoint_interval=1", "eval.num_visualize=1")

# Loaded with --plugin: the third checkpoint write of the process writes a few bytes, then hangs (to be killed).
SLOW_SAVE_PLUGIN = """
import time
import torch

_save, _calls = torch.save, []


def _hanging_third_save(obj, file, *args, **kwargs):
    _calls.append(1)
    if len(_calls) == 3:
        file.write(b"PK\\x03\\x04 the first bytes of a checkpoint")
        file.flush()
        print("hanging in a checkpoint write", flush=True)
        time.sleep(120)
    return _save(obj, file, *args, **kwargs)


torch.save = _hanging_third_save
"""


def start(recipe: Path, run: Path, *extra: str) -> subprocess.Popen:
    command = mtdl("train", str(recipe), *RUN, *EVERY_STEP, f"train.output_dir={run}", "--no-progress", *extra)
    return subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def temp_files(run: Path) -> list[Path]:
    return sorted(p for folder in (run, run / "pictures") if folder.is_dir() for p in folder.glob(".*.tmp"))


def assert_resumable(run: Path) -> int:
    """last.pt loads, every picture is a whole PNG; returns the checkpoint's step."""
    state = load_checkpoint(run / "last.pt")
    for picture in (run / "pictures").glob("*.png"):
        with Image.open(picture) as image:
            image.verify()
    return state["step"]


def test_sigint_and_sigkills_mid_save_and_mid_run_never_lose_the_last_checkpoint(tmp_path):
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    draw = random.Random(23)

    first = start(recipe, run)
    wait_for_logged_step(run, draw.randint(2, 5), [first], timeout=120)
    code, err = stop(first, signal.SIGINT)
    assert code == 130, err
    step = assert_resumable(run)

    plugin = tmp_path / "slow_save.py"
    plugin.write_text(SLOW_SAVE_PLUGIN)
    second = start(recipe, run, "--resume", "auto", "--plugin", str(plugin))
    lines = iter(second.stdout.readline, "")
    assert "hanging in a checkpoint write\n" in lines, second.communicate()
    cut = [p for p in temp_files(run) if p.name.startswith(".last.pt.")]
    assert len(cut) == 1 and cut[0].read_bytes().startswith(b"PK\x03\x04 the first bytes")
    code, _ = stop(second, signal.SIGKILL)
    assert code == -signal.SIGKILL
    killed_at = assert_resumable(run)
    assert killed_at == step + 2, "the two saves before the hanging one completed"
    assert max(row["step"] for row in read_steps(run)) == killed_at + 1, "the step log ran one step ahead of last.pt"

    third = start(recipe, run, "--resume", "auto")
    wait_for_logged_step(run, killed_at + draw.randint(2, 4), [third], timeout=120)
    assert not any(p in temp_files(run) for p in cut), "the next run removed the killed save's temporary file"
    code, _ = stop(third, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert_resumable(run)

    assert train(recipe, run, *EVERY_STEP, "--resume", "auto") == 0
    assert train(recipe, tmp_path / "straight", *EVERY_STEP) == 0
    resumed, straight = outcome(run), outcome(tmp_path / "straight")
    assert resumed["steps"] == straight["steps"], "the step log holds each step once, as in a straight run"
    assert resumed["metrics"] == straight["metrics"]
    assert_same_state(resumed["last"], straight["last"])
    assert temp_files(run) == []
