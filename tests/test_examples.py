"""The examples of the README's "Extending" section: each plugin trains through ``mtdl train --plugin`` and does what
its docstring says, checked against values computed independently of the plugin's code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from multitask_deeplab.cli import main
from multitask_deeplab.engine.delta_m import delta_m

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEFAULT = ROOT / "recipes" / "scenes_seg_depth.yaml"
TINY = [
    "data.height=32", "data.width=32", "data.num_samples=8", "data.num_workers=0", "train.steps=2", "train.batch_size=4",
    "train.warmup_steps=0", "train.amp=off", "train.channels_last=false", "eval.num_visualize=1", "train.device=cpu",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("isolated_registries")


def train(capsys, recipe: Path, plugin: str, out: Path, *overrides: str) -> str:
    code = main(["train", str(recipe), "--plugin", str(EXAMPLES / plugin), "--no-progress", *TINY, f"train.output_dir={out}", *overrides])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_focal_loss_is_cross_entropy_at_gamma_0_and_the_formula_otherwise(capsys, tmp_path):
    train(capsys, DEFAULT, "focal_loss.py", tmp_path / "run", "tasks.seg.loss={type: focal, gamma: 2.0}")
    assert [row["step"] for row in rows(tmp_path / "run" / "steps.jsonl")] == [1, 2]
    from multitask_deeplab.losses import LOSSES

    pred, target = torch.randn(2, 5, 6, 7), torch.randint(0, 5, (2, 6, 7))
    target[0, :3] = 255
    assert torch.allclose(LOSSES.build({"type": "focal", "gamma": 0.0})(pred, target), F.cross_entropy(pred, target, ignore_index=255))
    p = pred.softmax(1).numpy().transpose(0, 2, 3, 1)[target.numpy() != 255]
    true = p[np.arange(len(p)), target.numpy()[target.numpy() != 255]]
    expected = float(np.mean(-((1 - true) ** 2) * np.log(true)))
    assert LOSSES.build({"type": "focal"})(pred, target).item() == pytest.approx(expected, rel=1e-5)
    assert LOSSES.build({"type": "focal"})(pred, torch.full_like(target, 255)).item() == 0.0


def test_initial_loss_weighting_divides_by_the_first_losses(capsys, tmp_path):
    train(capsys, DEFAULT, "initial_loss_weighting.py", tmp_path / "run", "weighting.type=initial_loss")
    first = rows(tmp_path / "run" / "steps.jsonl")[0]["losses"]
    weights = rows(tmp_path / "run" / "metrics.jsonl")[-1]
    for task in ("seg", "depth"):
        assert weights[f"weight.{task}"] == pytest.approx(1 / first[task], rel=1e-5)


def test_two_segmentation_tasks_with_their_own_classes_train_evaluate_and_predict(capsys, tmp_path):
    out = tmp_path / "run"
    train(capsys, EXAMPLES / "layout_dataset.yaml", "layout_dataset.py", out)
    metrics = rows(out / "metrics.jsonl")[-1]
    assert {"val.seg.iou/cylinder", "val.layout.iou/object", "val.depth.abs_rel"} <= set(metrics)
    assert "val.layout.iou/cylinder" not in metrics
    plugin = ["--plugin", str(EXAMPLES / "layout_dataset.py")]
    assert main(["evaluate", str(out / "last.pt"), *plugin]) == 0
    assert json.loads((out / "eval_val.json").read_text())["metrics"]["layout.miou"] == pytest.approx(metrics["val.layout.miou"])
    image = tmp_path / "room.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(image)
    assert main(["predict", str(out / "last.pt"), str(image), "--out", str(tmp_path / "pred"), "--no-progress", *plugin]) == 0
    capsys.readouterr()
    for task, classes in (("seg", 5), ("layout", 3)):
        ids = Image.open(tmp_path / "pred" / f"room_{task}.png")
        assert ids.mode == "P" and ids.size == (48, 40) and np.asarray(ids).max() < classes


def test_boundary_task_kind_trains_with_seg_and_depth_and_counts_in_delta_m(capsys, tmp_path):
    baselines = "eval.baselines={seg: {miou: 0.5, pixel_acc: 0.5}, depth: {abs_err: 1.0, abs_rel: 0.5}, boundary: {fmeasure: 0.1}}"
    out = tmp_path / "run"
    printed = train(capsys, EXAMPLES / "boundary_task.yaml", "boundary_task.py", out, baselines)
    metrics = {key.removeprefix("val."): value for key, value in rows(out / "metrics.jsonl")[-1].items() if key.startswith("val.")}
    assert 0.0 <= metrics["boundary.fmeasure"] <= 1.0
    selected = {"seg": ["miou", "pixel_acc"], "depth": ["abs_err", "abs_rel"], "boundary": ["fmeasure"]}
    signs = {"seg.miou": 1, "seg.pixel_acc": 1, "depth.abs_err": -1, "depth.abs_rel": -1, "boundary.fmeasure": 1}
    base = {"seg.miou": 0.5, "seg.pixel_acc": 0.5, "depth.abs_err": 1.0, "depth.abs_rel": 0.5, "boundary.fmeasure": 0.1}
    by_task = [[signs[f"{t}.{m}"] * (metrics[f"{t}.{m}"] - base[f"{t}.{m}"]) / base[f"{t}.{m}"] * 100 for m in ms] for t, ms in selected.items()]
    expected = sum(sum(changes) / len(changes) for changes in by_task) / 3
    assert f"Δm vs single-task baselines (task protocol): {expected:+.2f} %" in printed
    assert delta_m(metrics, {t: {m: base[f"{t}.{m}"] for m in ms} for t, ms in selected.items()}, selected, lambda k: signs[k] > 0) == pytest.approx(expected)
    assert (out / "pictures" / "val_epoch001.png").is_file()
    image = tmp_path / "room.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    assert main(["predict", str(out / "best.pt"), str(image), "--out", str(tmp_path / "pred"), "--plugin", str(EXAMPLES / "boundary_task.py"), "--no-progress"]) == 0
    assert np.asarray(Image.open(tmp_path / "pred" / "room_boundary.png")).shape == (32, 32, 3)


def test_boundary_kind_pieces_against_hand_computed_values():
    from multitask_deeplab.plugins import import_plugins
    from multitask_deeplab.tasks import TASKS

    import_plugins([str(EXAMPLES / "boundary_task.py")])
    task = TASKS.build({"type": "boundary"})
    labels = torch.tensor([[[0, 0, 0, 1], [0, 0, 0, 1], [2, 2, 2, 2]]])
    expected = torch.tensor([[[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]]).float()
    assert torch.equal(task.prepare_target(labels)[:, 0], expected)
    metrics = task.metrics()
    metrics.update(torch.tensor([[[0.9, 0.1, 0.8, 0.2]]]), torch.tensor([[[1.0, 0.0, 0.0, 1.0]]]))  # 1 hit, 1 false, 1 missed
    assert metrics.compute()["fmeasure"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    pred, target = torch.tensor([0.9, 0.2, 0.3, 0.6]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    # one boundary pixel in four: it weighs 0.75, the others 0.25
    by_hand = -(0.75 * math.log(0.9) + 0.25 * (math.log(0.8) + math.log(0.7) + math.log(0.4))) / 4
    from multitask_deeplab.losses import LOSSES

    assert LOSSES.build({"type": "balanced_bce"})(pred, target).item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("name", ["boundary_task.py", "custom_head.py", "focal_loss.py", "initial_loss_weighting.py", "layout_dataset.py"])
def test_the_readme_shows_each_example_as_it_is(name):
    text = (EXAMPLES / name).read_text()
    code = text[text.index('"""', 3) + 3 :].strip("\n")
    assert f"```python\n{code}\n```" in (ROOT / "README.md").read_text()
