"""A skipped or stopping non-finite step leaves nothing behind: the saved state equals the true state before it
(weights, batch-norm statistics, optimizer, random generators), so evaluating it gives finite metrics."""

from __future__ import annotations

import json
import math

import pytest
from fault_helpers import TINY_BACKBONE, assert_same_state
from helpers_training import InfAtSteps, load, one_thread, write_recipe  # noqa: F401

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.engine.trainer import Trainer, TrainingStopped

pytestmark = pytest.mark.usefixtures("one_thread")

# A constant learning rate: a run whose third step is skipped must then equal a run of two steps exactly.
CONSTANT = (TINY_BACKBONE, "train.schedule=constant", "train.device=cpu")


def run(tmp_path, name: str, steps: int, inf_at: list[int], *overrides: str) -> Trainer:
    recipe = recipe_module.load(write_recipe(tmp_path), [*CONSTANT, f"train.steps={steps}", f"train.output_dir={tmp_path / name}", *overrides])
    trainer = Trainer(recipe, show_progress=False)
    trainer.losses["depth"] = InfAtSteps(steps=inf_at)
    return trainer


@pytest.fixture
def two_clean_steps(tmp_path):
    run(tmp_path, "clean", 2, []).fit()
    return load(tmp_path / "clean" / "last.pt")


def test_a_skipped_last_step_leaves_the_state_of_the_steps_before(tmp_path, two_clean_steps):
    run(tmp_path, "skipped", 3, [3]).fit()
    skipped = load(tmp_path / "skipped" / "last.pt")
    assert skipped["step"] == 3 and skipped["skipped_steps"] == 1
    assert_same_state(skipped, two_clean_steps)


def test_stop_saves_exactly_the_state_before_the_bad_step(tmp_path, two_clean_steps):
    with pytest.raises(TrainingStopped) as stop:
        run(tmp_path, "stopped", 5, [3], "train.nonfinite=stop").fit()
    assert stop.value.exit_code == 3
    stopped = load(tmp_path / "stopped" / "last.pt")
    assert stopped["step"] == 2
    assert_same_state(stopped, two_clean_steps)


def test_a_diverging_run_stops_with_finite_statistics_and_evaluate_fails_loudly_on_its_nan_metrics(tmp_path, capsys):
    """lr 1e6: the first update makes the weights huge; the next forward overflows and stops the run."""
    recipe, out = write_recipe(tmp_path), tmp_path / "run"
    args = [TINY_BACKBONE, "train.lr=1.0e6", "train.warmup_steps=0", "train.nonfinite=stop", "train.steps=8", f"train.output_dir={out}"]
    assert main(["train", str(recipe), *args, "--no-progress"]) == 3
    assert "non-finite" in capsys.readouterr().err
    state = load(out / "last.pt")
    assert all(value.isfinite().all() for value in state["model"].values() if value.is_floating_point()), "no NaN statistics"
    assert main(["evaluate", str(out / "last.pt"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mtdl: error: depth.abs_rel, ") and "are not finite: the model predicts NaN or infinity" in err
    assert err.count("\n") == 1
    metrics = json.loads((out / "eval_val.json").read_text())["metrics"]
    assert not math.isfinite(metrics["depth.abs_rel"]), "the report is still written, for a look"
