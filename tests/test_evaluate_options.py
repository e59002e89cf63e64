"""``mtdl evaluate`` on the three-task scenes recipe: the training-end numbers under the recipe's protocol, and under
each option the numbers its documentation promises: ``--tta`` averages with the flipped image, ``--scales`` with
resized images (depth times the scale), ``--window`` is the Predictor's sliding window, and an ``eval.protocol``
override changes only the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_train_smoke import ROOT, shrink

from multitask_deeplab.cli import main
from multitask_deeplab.data.loader import build_dataset
from multitask_deeplab.engine.evaluate import build_metrics
from multitask_deeplab.engine.restore import model_from_checkpoint
from multitask_deeplab.inference.predictor import Predictor

RECIPE = ROOT / "recipes" / "scenes_seg_depth_edges.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("edges")
    assert main(["train", str(RECIPE), *shrink(RECIPE, tmp), "eval.protocol.edges.thresholds=19", "--no-progress"]) == 0
    return tmp / "run" / "last.pt"


def evaluated(checkpoint: Path, *args: str) -> dict[str, float]:
    out = checkpoint.with_name(f"eval_{abs(hash(args))}.json")
    assert main(["evaluate", str(checkpoint), "--device", "cpu", "--out", str(out), *args]) == 0
    return json.loads(out.read_text())["metrics"]


def by_hand(checkpoint: Path, predict, protocols=None) -> dict[str, float]:
    """The metrics of ``predict(images) -> {task: prediction}`` over the val split, computed here."""
    _, recipe, tasks, _ = model_from_checkpoint(checkpoint)
    dataset = build_dataset(recipe, "val")
    batch = {key: torch.stack([dataset[i][key] for i in range(len(dataset))]) for key in dataset[0]}
    metrics = build_metrics(tasks, recipe.eval.protocol if protocols is None else protocols)
    with torch.no_grad():
        outputs = predict(batch["image"])
    for name, task in tasks.items():
        metrics[name].update(outputs[name], task.prepare_target(batch[task.target]))
    return {f"{name}.{key}": value for name, m in metrics.items() for key, value in m.compute().items()}


def model_and_tasks(checkpoint: Path):
    model, _, tasks, _ = model_from_checkpoint(checkpoint)
    model = model.to(memory_format=torch.channels_last)  # the recipe's layout, as evaluate uses it

    def forward(images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = model(images.contiguous(memory_format=torch.channels_last))
        return {name: task.prediction(outputs[name].float()) for name, task in tasks.items()}

    return forward, tasks


def test_evaluate_gives_the_training_end_numbers_under_the_recipes_protocol(run):
    saved = torch.load(run, weights_only=True)["metrics"]
    assert any(key.startswith("edges.ods_f") for key in saved)
    assert evaluated(run) == pytest.approx(saved, rel=1e-5, abs=1e-6, nan_ok=True)


def test_tta_averages_each_prediction_with_the_flipped_images(run):
    forward, tasks = model_and_tasks(run)

    def flipped(images):
        plain, mirror = forward(images), forward(images.flip(-1))
        return {name: (plain[name] + mirror[name].flip(-1)) / 2 for name in plain}  # seg, depth, edges: values as they are

    got = evaluated(run, "--tta")
    assert got == pytest.approx(by_hand(run, flipped), rel=1e-4, abs=1e-5, nan_ok=True)
    assert got["depth.abs_rel"] != pytest.approx(evaluated(run)["depth.abs_rel"], rel=1e-6), "the option changes the numbers"


def test_scales_average_resized_predictions_with_depth_times_the_scale(run):
    forward, tasks = model_and_tasks(run)

    def multi_scale(images):
        half = forward(F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False, antialias=True))
        back = {name: F.interpolate(value, size=(32, 32), mode="bilinear", align_corners=False) for name, value in half.items()}
        back["depth"] = back["depth"] * 0.5  # half the size looks twice as far (augmentation's zoom): back, times 0.5
        plain = forward(images)
        return {name: (plain[name] + back[name]) / 2 for name in plain}

    expected = by_hand(run, multi_scale)
    got = evaluated(run, "--scales", "0.5", "1")
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5, nan_ok=True)
    assert got["depth.abs_rel"] != pytest.approx(evaluated(run)["depth.abs_rel"], rel=1e-6)


def test_window_is_the_predictors_sliding_window(run):
    model, recipe, tasks, _ = model_from_checkpoint(run)
    predictor = Predictor(model, tasks, stride=8, device="cpu", window=16, fold_bn=False, channels_last=True, precision="fp32")
    got = evaluated(run, "--window", "16")
    assert got == pytest.approx(by_hand(run, predictor.predict_batch), rel=1e-4, abs=1e-5, nan_ok=True)
    assert got["depth.abs_rel"] != pytest.approx(evaluated(run)["depth.abs_rel"], rel=1e-6)


def test_a_protocol_override_changes_only_the_metrics(run):
    forward, _ = model_and_tasks(run)
    _, recipe, _, _ = model_from_checkpoint(run)
    protocols = {**recipe.eval.protocol, "depth": {"average": "image", "max_depth": 10.0}, "seg": {"classes": "all"}}
    got = evaluated(run, "eval.protocol.depth.average=image", "eval.protocol.depth.max_depth=10.0", "eval.protocol.seg.classes=all")
    assert got == pytest.approx(by_hand(run, forward, protocols), rel=1e-4, abs=1e-5, nan_ok=True)
    assert got["depth.abs_rel"] != pytest.approx(evaluated(run)["depth.abs_rel"], rel=1e-9)


def test_evaluate_refuses_overrides_of_the_model(run, capsys):
    assert main(["evaluate", str(run), "tasks.seg.num_classes=3"]) == 2
    assert "mtdl evaluate takes eval.* and data.* overrides only" in capsys.readouterr().err
