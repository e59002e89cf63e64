"""SIGTERM and SIGINT at random points of a run (a step, an evaluation, a checkpoint write): exit 143 / 130, a
loadable last.pt, and ``--resume auto`` ends bit-identical to a run that was never interrupted.

The signal is sent by the process to itself from inside the run (the trainer's handler is installed by then), so
the probe runs in-process; ``test_resume.py`` and ``test_sigkill.py`` send real signals to real processes.
"""

from __future__ import annotations

import os
import random
import signal

import pytest
from fault_helpers import STEPS, assert_same_state, outcome, straight_run, train
from helpers_training import load, one_thread, read_steps, write_recipe  # noqa: F401

from multitask_deeplab.engine import trainer as trainer_module

pytestmark = pytest.mark.usefixtures("one_thread")

_DRAW = random.Random(19)
# (signal, where, which occurrence): steps 1..16, evaluations 1..2, checkpoint writes 1..11 (5 every 3 steps, then
# best and last at each evaluation, fewer when best does not improve), each drawn at random once, then fixed.
POINTS = [
    ("SIGTERM", "step", _DRAW.randint(1, STEPS - 1)),
    ("SIGINT", "step", _DRAW.randint(1, STEPS - 1)),
    ("SIGTERM", "evaluation", _DRAW.randint(1, 2)),
    ("SIGINT", "checkpoint write", _DRAW.randint(1, 6)),
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return straight_run(tmp_path_factory.mktemp("straight"))


def send_at(monkeypatch, where: str, occurrence: int, signum: int) -> None:
    """Makes the run send ``signum`` to itself during the ``occurrence``-th step, evaluation or checkpoint write."""
    target, name = {
        "step": (trainer_module.Trainer, "train_step"),
        "evaluation": (trainer_module, "evaluate"),
        "checkpoint write": (trainer_module, "save_checkpoint"),
    }[where]
    original, calls = getattr(target, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == occurrence:
            os.kill(os.getpid(), signum)  # arrives in the middle: the handler runs at the next bytecode
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, interrupted)


@pytest.mark.parametrize(("name", "where", "occurrence"), POINTS, ids=[f"{s}-{w}-{n}" for s, w, n in POINTS])
def test_a_signal_stops_with_a_checkpoint_and_resume_ends_bit_identical(tmp_path, monkeypatch, capsys, straight, name, where, occurrence):
    signum = getattr(signal, name)
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    with monkeypatch.context() as patch:
        send_at(patch, where, occurrence, signum)
        assert train(recipe, run) == 128 + signum
    err = capsys.readouterr().err
    stopped = load(run / "last.pt")["step"]
    assert f"mtdl: stopped by {name} at step {stopped}; checkpoint saved to {run / 'last.pt'}" in err and err.count("\n") == 1
    assert 1 <= stopped <= STEPS
    assert [row["step"] for row in read_steps(run)] == list(range(1, stopped + 1))

    assert train(recipe, run, "--resume", "auto") == 0
    resumed = outcome(run)
    assert resumed["steps"] == straight["steps"], "per-step losses differ"
    assert resumed["metrics"] == straight["metrics"]
    assert_same_state(resumed["last"], straight["last"])
