"""Every weighting strategy through the real trainer, single-task baselines, Δm and the sweep table."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers_training import TINY_RECIPE, assert_trained, initial_parameters, read_steps

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as R
from multitask_deeplab.engine.sweep import sweep_points
from multitask_deeplab.engine.trainer import Trainer
from multitask_deeplab.weighting import WEIGHTINGS

FAST = ["train.steps=2", "train.device=cpu", "data.num_samples=8", "eval.batch_size=8"]


@pytest.fixture()
def recipe_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


def test_task_weights_a_strategy_ignores_get_a_note(recipe_file, tmp_path, capsys):
    weights = ["tasks.depth.weight=2", "tasks.seg.weight=0.5"]
    out = ["--no-progress"]
    assert main(["train", str(recipe_file), *FAST, *weights, "weighting.type=dwa", f"train.output_dir={tmp_path / 'a'}", *out]) == 0
    expected = "note: tasks.seg.weight=0.5, tasks.depth.weight=2 only counts with weighting.type=fixed; dwa sets the task weights itself"
    assert expected in capsys.readouterr().out
    assert main(["train", str(recipe_file), *FAST, *weights, f"train.output_dir={tmp_path / 'b'}", *out]) == 0
    assert main(["train", str(recipe_file), *FAST, "weighting.type=dwa", f"train.output_dir={tmp_path / 'c'}", *out]) == 0
    assert "only counts with weighting.type=fixed" not in capsys.readouterr().out


@pytest.mark.parametrize("strategy", ["mgda", "imtl"])
def test_gradient_level_strategies_train_with_grad_checkpointing(recipe_file, tmp_path, strategy):
    out = tmp_path / strategy
    args = [*FAST, f"weighting.type={strategy}", "train.grad_checkpointing=true", f"train.output_dir={out}", "--no-progress"]
    assert main(["train", str(recipe_file), *args]) == 0
    assert (out / "last.pt").is_file()


def test_baselines_then_sweep_reports_delta_m(recipe_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["baselines", str(recipe_file), *FAST, f"train.output_dir={out}", "--no-progress"]) == 0
    baselines = json.loads((out / "baselines" / "baselines.json").read_text())
    assert baselines["split"] == "val" and set(baselines["baselines"]) == {"seg", "depth"}
    assert "miou" in baselines["baselines"]["seg"] and "abs_rel" in baselines["baselines"]["depth"]
    assert (out / "baselines" / "seg" / "last.pt").is_file()
    seg_only = torch.load(out / "baselines" / "seg" / "last.pt", weights_only=True)
    assert not any(key.startswith("heads.depth.") for key in seg_only["model"])
    finished = (out / "baselines" / "seg" / "last.pt").read_bytes()
    assert main(["baselines", str(recipe_file), *FAST, f"train.output_dir={out}", "--no-progress", "--resume"]) == 0
    assert (out / "baselines" / "seg" / "last.pt").read_bytes() == finished, "resumed, finished baselines are read back"
    assert json.loads((out / "baselines" / "baselines.json").read_text()) == baselines

    capsys.readouterr()
    assert main(["sweep", str(recipe_file), *FAST, f"train.output_dir={out}", "--weightings", "fixed", "pcgrad", "--no-progress"]) == 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0] == "| weighting | seg.miou | depth.abs_rel | Δm % | s/step | × fixed |"
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[1:]]
    assert [row[0] for row in cells] == ["fixed", "pcgrad"]
    assert all(row[3] not in ("", "n/a") for row in cells), "Δm is reported against the baselines"
    assert "test split never" in table
    assert (out / "sweep" / "sweep.md").read_text().strip() in table, "the printed table is saved"
    rows = json.loads((out / "sweep" / "sweep.json").read_text())
    seconds = [row["seconds_per_step"] for row in rows]
    assert [float(row[4]) for row in cells] == pytest.approx(seconds, rel=5e-3), "s/step to three significant digits"
    assert cells[0][5] == "1.00" and float(cells[1][5]) == pytest.approx(seconds[1] / seconds[0], abs=0.005)
    assert [row["weighting"] for row in rows] == ["fixed", "pcgrad"] and "seg.pixel_acc" in rows[0]


def test_sweep_all_trains_every_strategy_fixed_first(recipe_file, tmp_path):
    """Every registered strategy trains two real steps that move the shared parameters (weight decay off, so zero
    gradients would leave them): finite weights, its task weights logged."""
    out, overrides = tmp_path / "run", [*FAST, "train.weight_decay=0"]
    initial = initial_parameters(recipe_file, overrides, tmp_path / "initial")  # every strategy starts from these
    assert main(["sweep", str(recipe_file), *overrides, f"train.output_dir={out}", "--weightings", "all", "--no-progress"]) == 0
    rows = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [row["weighting"] for row in rows] == ["fixed", *(name for name in WEIGHTINGS.names() if name != "fixed")]
    for strategy in WEIGHTINGS.names():
        state = torch.load(out / "sweep" / strategy / "last.pt", weights_only=True)
        assert state["step"] == 2 and state["skipped_steps"] == 0, strategy
        assert_trained(out / "sweep" / strategy, initial, ["backbone."], steps=2)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()), strategy
        row = json.loads((out / "sweep" / strategy / "metrics.jsonl").read_text().splitlines()[-1])
        assert {"weight.seg", "weight.depth"} <= row.keys(), f"{strategy}: task weights are logged"


def test_sweep_rejects_an_unknown_strategy_before_training(recipe_file, tmp_path, capsys):
    assert main(["sweep", str(recipe_file), f"train.output_dir={tmp_path / 'run'}", "--weightings", "pcgrd"]) == 2
    assert "did you mean 'pcgrad'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_grid_points_cover_every_combination_each_with_its_recipe_and_folder(recipe_file, tmp_path):
    recipe = R.load(recipe_file, [f"train.output_dir={tmp_path / 'run'}"])
    points = sweep_points(recipe, grid=["train.lr=1e-3,2e-3", "weighting.type=fixed,uncertainty", "model.out_indices=[1,4],[2,4]"])
    assert len(points) == 8
    assert points[1].labels == {"train.lr": "1e-3", "weighting.type": "fixed", "model.out_indices": "[2,4]"}
    seen = {(p.recipe.train.lr, p.recipe.weighting["type"], tuple(p.recipe.model.out_indices)) for p in points}
    assert seen == {(lr, w, o) for lr in (1e-3, 2e-3) for w in ("fixed", "uncertainty") for o in ((1, 4), (2, 4))}
    folders = {p.recipe.train.output_dir for p in points}
    assert len(folders) == 8 and all(Path(f).parent == tmp_path / "run" / "sweep" for f in folders)
    assert Path(points[1].recipe.train.output_dir).name == "train.lr=1e-3_weighting.type=fixed_model.out_indices=-2-4-"
    assert all(p.recipe.tasks["seg"].loss == {"type": "cross_entropy"} for p in points), "points are resolved recipes"


def test_grid_with_weightings_trains_each_point_into_its_folder_with_one_table(recipe_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sweep", str(recipe_file), *FAST, f"train.output_dir={out}", "--weightings", "fixed", "pcgrad", "--no-progress"]
    assert main([*args, "--grid", "train.lr=1e-3,2e-3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines[0] == "| train.lr | weighting | seg.miou | depth.abs_rel | Δm % | s/step | × fixed |"
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[1:]]
    assert [row[:2] for row in cells] == [["1e-3", "fixed"], ["1e-3", "pcgrad"], ["2e-3", "fixed"], ["2e-3", "pcgrad"]]
    assert cells[0][6] == cells[2][6] == "1.00", "each point is timed against the fixed run with the same lr"
    for lr in ("1e-3", "2e-3"):
        for strategy in ("fixed", "pcgrad"):
            saved = R.load(out / "sweep" / f"train.lr={lr}_{strategy}" / "recipe.yaml")
            assert saved.train.lr == float(lr) and saved.weighting["type"] == strategy
    rows = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [(row["train.lr"], row["weighting"]) for row in rows] == [(r[0], r[1]) for r in cells]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("train.lr=1e-3,-1", "sweep point train.lr=-1: train.lr: must be > 0, got -1.0"),
        ("train.lr", "--grid 'train.lr': expected dotted.key=value1,value2,..."),
        ("train.lr=1e-3,", "--grid 'train.lr=1e-3,': expected dotted.key=value1,value2,..."),
        ("weighting.type=fixed,pcgrd", "sweep point weighting.type=pcgrd: weighting.type: unknown weighting 'pcgrd': did you mean 'pcgrad'"),
    ],
)
def test_a_bad_grid_fails_before_anything_trains(recipe_file, tmp_path, capsys, grid, message):
    assert main(["sweep", str(recipe_file), f"train.output_dir={tmp_path / 'run'}", "--grid", grid]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_sweep_on_the_features_trains_the_representation_level_variants(recipe_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sweep", str(recipe_file), *FAST, f"train.output_dir={out}", "--gradients", "features", "--no-progress"]
    assert main([*args, "--weightings", "fixed", "pcgrad", "moco"]) == 2
    assert "--gradients features: moco has no such variant; leave it out of --weightings" in capsys.readouterr().err
    assert not (out / "sweep").exists()
    assert main([*args, "--weightings", "fixed", "pcgrad"]) == 0
    rows = json.loads((out / "sweep" / "sweep-features.json").read_text())
    assert [row["weighting"] for row in rows] == ["fixed", "pcgrad@features"]
    state = torch.load(out / "sweep" / "pcgrad@features" / "last.pt", weights_only=True)
    assert state["recipe"]["weighting"] == {"type": "pcgrad", "gradients": "features"}
    assert not (out / "sweep" / "sweep.json").exists(), "the default-level table is not overwritten"


def test_a_strategy_at_its_default_level_is_its_default_point_in_both_sweeps(recipe_file, tmp_path):
    recipe = R.load(recipe_file, [f"train.output_dir={tmp_path / 'run'}"])
    for gradients, expected in [("features", ["graddrop", "mgda", "pcgrad@features"]), ("params", ["graddrop@params", "mgda@params", "pcgrad"])]:
        points = sweep_points(recipe, ["graddrop", "mgda", "pcgrad"], gradients=gradients)
        assert [point.labels["weighting"] for point in points] == expected
        assert [Path(point.recipe.train.output_dir).name for point in points] == expected
    assert sweep_points(recipe, ["mgda"], gradients="params")[0].recipe.weighting == {"type": "mgda", "gradients": "params"}


def test_an_interrupted_sweep_resumes_reading_finished_points_back(recipe_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["sweep", str(recipe_file), *FAST, "train.steps=4", f"train.output_dir={out}", "--weightings", "fixed", "pcgrad", "--no-progress"]
    original, calls = Trainer.train_step, []

    def interrupted(self, *batches):
        calls.append(1)
        if len(calls) == 6:  # pcgrad's second step
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *batches)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", interrupted)
        assert main(args) == 128 + signal.SIGTERM
    fixed, pcgrad = out / "sweep" / "fixed", out / "sweep" / "pcgrad"
    finished = (fixed / "last.pt").read_bytes()
    assert torch.load(pcgrad / "last.pt", weights_only=True)["step"] == 2
    capsys.readouterr()
    assert main([*args, "--resume", "train.lr=2e-3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--resume: {fixed} holds a run of another recipe (train.lr (0.001 -> 0.002))" in err
    assert torch.load(pcgrad / "last.pt", weights_only=True)["step"] == 2, "nothing trains before the check"

    assert main([*args, "--resume"]) == 0
    assert (fixed / "last.pt").read_bytes() == finished, "a finished point is read back, not trained again"
    assert [row["step"] for row in read_steps(fixed)] == [1, 2, 3, 4]
    assert [row["step"] for row in read_steps(pcgrad)] == [1, 2, 3, 4], "the interrupted point continues at step 3"
    rows = json.loads((out / "sweep" / "sweep.json").read_text())
    state = torch.load(fixed / "last.pt", weights_only=True)
    assert rows[0]["seg.miou"] == state["metrics"]["seg.miou"]
    assert state["timing"]["steps"] == 4 and rows[0]["seconds_per_step"] == state["timing"]["seconds"] / 4 > 0
    assert torch.load(pcgrad / "last.pt", weights_only=True)["timing"]["steps"] == 4, "step times span the resume"
