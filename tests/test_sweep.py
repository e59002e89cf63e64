"""Every weighting strategy through the real trainer, single-task baselines, Δm and the sweep table."""

from __future__ import annotations

import json

import pytest
import torch

from helpers_training import TINY_RECIPE
from multitask_deeplab.cli import main
from multitask_deeplab.weighting import WEIGHTINGS

FAST = ["train.steps=2", "train.device=cpu", "data.num_samples=8", "eval.batch_size=8"]


@pytest.fixture()
def recipe_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.mark.parametrize("strategy", WEIGHTINGS.names())
def test_every_strategy_trains_two_steps(recipe_file, tmp_path, strategy):
    out = tmp_path / strategy
    assert main(["train", str(recipe_file), *FAST, f"weighting.type={strategy}", f"train.output_dir={out}", "--no-progress"]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"weight.seg", "weight.depth"} <= row.keys(), "task weights are logged"


def test_baselines_then_sweep_reports_delta_m(recipe_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["baselines", str(recipe_file), *FAST, f"train.output_dir={out}", "--no-progress"]) == 0
    baselines = json.loads((out / "baselines" / "baselines.json").read_text())
    assert baselines["split"] == "val" and set(baselines["baselines"]) == {"seg", "depth"}
    assert "miou" in baselines["baselines"]["seg"] and "abs_rel" in baselines["baselines"]["depth"]
    assert (out / "baselines" / "seg" / "last.pt").is_file()
    seg_only = torch.load(out / "baselines" / "seg" / "last.pt", weights_only=True)
    assert not any(key.startswith("heads.depth.") for key in seg_only["model"])

    capsys.readouterr()
    assert main(["sweep", str(recipe_file), *FAST, f"train.output_dir={out}", "--weightings", "fixed", "pcgrad", "--no-progress"]) == 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| weighting | seg.miou | depth.abs_rel | Δm % | s/step |")
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["fixed", "pcgrad"]
    assert all(line.split("|")[4].strip() not in ("", "n/a") for line in lines[1:]), "Δm is reported against the baselines"
    assert "test split never" in table


def test_sweep_rejects_an_unknown_strategy_before_training(recipe_file, tmp_path, capsys):
    assert main(["sweep", str(recipe_file), f"train.output_dir={tmp_path / 'run'}", "--weightings", "pcgrd"]) == 2
    assert "did you mean 'pcgrad'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
