"""Loggers: metrics.jsonl always (the record), metrics.csv by default, TensorBoard on request, read back with
TensorBoard's own reader and compared with the JSON logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_training import TINY_RECIPE, read_steps

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as R
from multitask_deeplab.config.validation import RecipeError

# 8 samples at batch 4: 2 steps per epoch, an evaluation after each; the step scalars at steps 1, 2 and 4.
RUN = ["train.epochs=null", "train.steps=4", "train.log_interval=2", "data.num_samples=8", "eval.num_visualize=2", "--no-progress"]


@pytest.fixture()
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


def test_tensorboard_holds_every_loss_metric_weight_rate_and_picture_of_the_json_logs(recipe_file, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    loggers = "train.loggers=[jsonl,csv,tensorboard]"
    assert main(["train", str(recipe_file), *RUN, loggers, "weighting.type=uncertainty", f"train.output_dir={out}"]) == 0

    events = event_accumulator.EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()

    def series(tag: str) -> list[tuple[int, float]]:
        return [(event.step, event.value) for event in events.Scalars(tag)]

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4]
    for key in rows[0]:
        if key in ("epoch", "step"):
            continue
        tag = key.replace(".", "/", 1)  # val.seg.miou -> val/seg.miou, train.loss.seg -> train/loss.seg
        assert series(tag) == [(row["step"], pytest.approx(row[key], rel=1e-6, abs=1e-7)) for row in rows], tag
    assert {"val/seg.miou", "val/depth.abs_rel", "train/loss.seg", "weight/depth"} <= set(events.Tags()["scalars"])

    steps = {row["step"]: row["losses"] for row in read_steps(out)}
    for task in ("seg", "depth"):
        assert series(f"step/loss.{task}") == [(s, pytest.approx(steps[s][task], rel=1e-6)) for s in (1, 2, 4)]
        assert [step for step, _ in series(f"step/weight.{task}")] == [1, 2, 4]
    # The rate each step used: poly decay of 1e-3 over 4 steps, power 0.9 (step k runs at factor (1 - (k-1)/4)^0.9).
    assert series("step/lr") == [(k, pytest.approx(1e-3 * (1 - (k - 1) / 4) ** 0.9, rel=1e-6)) for k in (1, 2, 4)]

    pictures = events.Images("val/predictions")
    assert [picture.step for picture in pictures] == [2, 4]
    saved = (out / "pictures" / "val_epoch002.png").stat()
    assert pictures[-1].width > pictures[-1].height > 0 and saved.st_size > 0
    assert (out / "metrics.csv").is_file()


def test_jsonl_alone_writes_neither_csv_nor_tensorboard(recipe_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(recipe_file), *RUN, "train.steps=2", "train.loggers=[jsonl]", f"train.output_dir={out}"]) == 0
    assert (out / "metrics.jsonl").is_file() and not (out / "metrics.csv").exists() and not (out / "tensorboard").exists()


@pytest.mark.parametrize("loggers", ["[csv, tensorboard]", "[jsonl, jsonl]", "[jsonl, wandb]"])
def test_bad_logger_lists_fail_in_one_line(loggers):
    with pytest.raises(RecipeError) as info:
        R.loads(TINY_RECIPE, [f"train.loggers={loggers}"])
    assert str(info.value).startswith("train.loggers")


def test_tensorboard_missing_is_named_before_any_work(recipe_file, tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    out = tmp_path / "run"
    assert main(["train", str(recipe_file), *RUN, "train.loggers=[jsonl,tensorboard]", f"train.output_dir={out}"]) == 2
    assert 'tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"' in capsys.readouterr().err
    assert not out.exists()
