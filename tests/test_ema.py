"""The moving average of the weights (timm's ModelEmaV3) and early stopping, through the real trainer.

Resuming both bit-exactly is tested with everything else in ``tests/test_resume.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers_training import NO_RANDOMNESS, load, write_recipe
from torch.utils.data import DataLoader

from multitask_deeplab.cli import main
from multitask_deeplab.data.loader import build_dataset
from multitask_deeplab.engine.evaluate import evaluate
from multitask_deeplab.engine.restore import model_from_checkpoint
from multitask_deeplab.engine.stopping import EarlyStopping

# 8 samples at batch 4: 2 steps per epoch. A constant rate and no randomness, so a shorter run is a prefix of a longer.
RUN = [*NO_RANDOMNESS, "train.schedule=constant", "data.num_samples=8", "train.epochs=null", "--no-progress"]


def train(recipe: Path, out: Path, *overrides: str) -> dict:
    assert main(["train", str(recipe), *RUN, f"train.output_dir={out}", *overrides]) == 0
    return load(out / "last.pt")


def test_the_average_follows_its_formula_over_the_weights_of_each_step(tmp_path):
    recipe = write_recipe(tmp_path)
    weights = [train(recipe, tmp_path / f"steps{k}", f"train.steps={k}")["model"] for k in (1, 2, 3)]
    state = train(recipe, tmp_path / "ema", "train.steps=3", "train.ema.decay=0.6")
    # timm's convention: the first update copies the weights, then ema = decay * ema + (1 - decay) * weights.
    expected = {key: 0.36 * weights[0][key] + 0.24 * weights[1][key] + 0.4 * weights[2][key] for key in weights[2]}
    moved = 0.0
    for key, value in state["ema"].items():
        assert torch.equal(state["model"][key], weights[2][key]), f"the average must not change training ({key})"
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)
            moved = max(moved, float((value - weights[2][key]).abs().max()))
        else:
            assert torch.equal(value, weights[2][key]), key  # counters are copied
    assert moved > 1e-3, "the average differs from the last weights"


def test_evaluation_and_best_pt_use_the_average(tmp_path):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    last = train(recipe, out, "train.steps=4", "train.ema.decay=0.9", "train.schedule=poly")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val.seg.miou"] == last["metrics"]["seg.miou"]

    def metrics(ema: bool) -> dict[str, float]:
        model, saved_recipe, tasks, _ = model_from_checkpoint(out / "last.pt", ema=ema)
        loader = DataLoader(build_dataset(saved_recipe, "val"), batch_size=16)
        return evaluate(model, loader, tasks, torch.device("cpu"))

    averaged, trained = metrics(ema=True), metrics(ema=False)
    for key, value in last["metrics"].items():
        assert averaged[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
    assert any(not math.isclose(trained[key], value, rel_tol=1e-4) for key, value in averaged.items() if math.isfinite(value))
    assert main(["evaluate", str(out / "last.pt"), "--device", "cpu", "--no-ema", "--out", str(tmp_path / "raw.json")]) == 0
    raw = json.loads((tmp_path / "raw.json").read_text())["metrics"]
    assert all(raw[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True) for key, value in trained.items())
    best_row = max(rows, key=lambda row: row["val.seg.miou"])  # the first of equal values, as the trainer keeps it
    assert load(out / "best.pt")["metrics"]["seg.miou"] == best_row["val.seg.miou"]


def test_early_stop_ends_training_and_its_count_survives_a_resume(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    never_improves = ["train.epochs=6", "train.early_stop.patience=2", "train.early_stop.min_delta=1.0"]  # mIoU cannot gain 1
    state = train(recipe, out, *never_improves)
    assert state["step"] == 6, "evaluation 1 sets the best, 2 and 3 do not improve: stop after epoch 3 of 6"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and state["early_stop"] == {"best": rows[0]["val.seg.miou"], "evaluations_without_improvement": 2}
    assert "early stop at step 6: val seg.miou did not improve by more than 1 in 2 evaluations" in capsys.readouterr().out

    assert train(recipe, out, *never_improves, "--resume", "auto")["step"] == 6
    assert "it had stopped early" in capsys.readouterr().out
    # More patience goes on from the count saved: 3 and 4 evaluations without improvement, so it stops at step 10.
    assert train(recipe, out, *never_improves, "train.early_stop.patience=4", "--resume", "auto")["step"] == 10


@pytest.mark.parametrize(
    ("higher", "values", "stops"),
    [
        (True, [0.5, 0.54, 0.56, 0.6, 0.61, 0.62], [False, False, False, False, True, False]),  # 0.62 beats the best, 0.56
        (False, [0.5, 0.46, 0.44, 0.4, 0.39], [False, False, False, False, True]),
        (True, [math.nan, 0.5, math.nan, math.nan], [False, False, False, True]),
    ],
)
def test_early_stopping_counts_evaluations_without_an_improvement_beyond_min_delta(higher, values, stops):
    stopping = EarlyStopping("seg.miou", higher_is_better=higher, patience=2, min_delta=0.05)
    assert [stopping.update(value) for value in values] == stops
    again = EarlyStopping("seg.miou", higher_is_better=higher, patience=2, min_delta=0.05)
    again.load_state_dict(stopping.state_dict())
    assert again.should_stop == stops[-1] and again.best == stopping.best
