"""A 2-step training run for every recipe in recipes/ and examples/, shrunk by overrides, on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_formats import write_cityscapes, write_folder, write_nyud, write_nyuv2, write_pascal_context

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.plugins import import_plugins

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
TINY_DATA = {
    "scenes": lambda tmp: ["data.num_samples=4", "data.height=32", "data.width=32"],
    "nyuv2": lambda tmp: [f"data.root={write_nyuv2_root(tmp)}"],
    "cityscapes": lambda tmp: [f"data.root={write_root(tmp, write_cityscapes)}", "data.size=[24,32]"],
    "folder": lambda tmp: [f"data.root={write_root(tmp, write_folder)}"],
    "pascal_context": lambda tmp: [f"data.root={write_root(tmp, write_pascal_context)}", "data.size=[32,32]"],
    "nyud": lambda tmp: [f"data.root={write_root(tmp, write_nyud)}"],
}


def write_root(tmp: Path, writer) -> Path:
    writer(tmp / "data")
    return tmp / "data"


def write_nyuv2_root(tmp: Path) -> Path:
    write_nyuv2(tmp / "data", sizes={"train": 2, "val": 2})
    return tmp / "data"


def shrink(recipe_path: Path, tmp: Path) -> list[str]:
    """Overrides that make any recipe train 2 tiny steps on tiny data."""
    recipe = recipe_module.load(recipe_path)
    overrides = [
        "train.steps=2", "train.warmup_steps=0", "train.batch_size=2", "train.amp=off", "train.device=cpu",
        "data.num_workers=0", "data.augment.crop=null", "eval.num_visualize=1", f"train.output_dir={tmp / 'run'}",
        "model.pretrained=false",
    ]
    for name, task in recipe.tasks.items():
        if "channels" in _head_args(task.head["type"]):
            overrides.append(f"tasks.{name}.head.channels=8")
    return overrides + TINY_DATA[recipe.data.type](tmp)


def _head_args(head_type: str) -> set[str]:
    import inspect

    from multitask_deeplab.models.heads import HEADS

    return set(inspect.signature(HEADS.get(head_type)).parameters)


@pytest.mark.parametrize("recipe_path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_trains_two_steps(recipe_path, tmp_path):
    assert main(["train", str(recipe_path), *shrink(recipe_path, tmp_path), "--no-progress"]) == 0
    run = tmp_path / "run"
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 2
    assert recipe_module.from_dict(state["recipe"]) == recipe_module.load(run / "recipe.yaml")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and any(key.startswith("val.") for key in rows[-1])
    assert list((run / "pictures").glob("*.png"))


@pytest.mark.parametrize("amp", ["off", "auto"])
def test_evaluate_reproduces_the_metrics_saved_at_the_end_of_training(tmp_path, capsys, amp):
    recipe_path = ROOT / "recipes" / "scenes_seg_depth.yaml"
    overrides = [*shrink(recipe_path, tmp_path), f"train.amp={amp}"]  # auto: bf16 on a CPU with AVX512-BF16 or AMX
    assert main(["train", str(recipe_path), *overrides, "--no-progress"]) == 0
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["metrics"]
    assert main(["evaluate", str(tmp_path / "run" / "last.pt"), "--device", "cpu"]) == 0
    evaluated = json.loads((tmp_path / "run" / "eval_val.json").read_text())["metrics"]
    assert evaluated.keys() == saved.keys()
    for key, value in saved.items():
        assert evaluated[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key


def test_custom_head_example_trains_and_its_checkpoint_needs_the_plugin(tmp_path, capsys):
    example = ROOT / "examples" / "custom_head.yaml"
    plugin = str(ROOT / "examples" / "custom_head.py")
    assert main(["train", str(example), f"train.output_dir={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err
    assert "unknown head 'fpn_lite'" in error and "--plugin" in error and not (tmp_path / "run").exists()
    import_plugins([plugin])
    assert main(["train", str(example), *shrink(example, tmp_path), "--no-progress", "--plugin", plugin]) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert any(key.startswith("heads.seg.skip.") for key in state["model"]), "the custom fpn_lite head was trained"
    evaluate = [sys.executable, "-m", "multitask_deeplab", "evaluate", str(tmp_path / "run" / "last.pt"), "--device", "cpu"]
    without = subprocess.run(evaluate, capture_output=True, text=True, timeout=300)
    assert without.returncode == 2 and "unknown head 'fpn_lite'" in without.stderr and "--plugin" in without.stderr
    with_plugin = subprocess.run([*evaluate, "--plugin", plugin], capture_output=True, text=True, timeout=300)
    assert with_plugin.returncode == 0, with_plugin.stderr
