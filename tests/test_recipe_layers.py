"""Layered recipes: ``base:`` files merged key by key under a recipe, before overrides and the strict checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as R
from multitask_deeplab.config.validation import RecipeError
from multitask_deeplab.engine.build import resolve_recipe

COMMON = """\
model: {backbone: resnet18, output_stride: 16, mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}
data: {type: scenes, height: 32, width: 32, augment: {scale: [0.5, 2.0], hflip: true}}
train: {steps: 5, batch_size: 4, lr: 1.0e-3}
"""
SEG = """\
base: ../shared/common.yaml
tasks:
  seg: {kind: segmentation, num_classes: 5, head: {type: deeplabv3, channels: 16}}
"""
DEPTH = """\
tasks:
  depth: {kind: depth, head: {type: deeplabv3plus}}
"""
CHILD = """\
base: [seg.yaml, depth.yaml]
model: {mean: [0.4, 0.4, 0.4]}
tasks:
  seg: {head: {channels: 32}}
data: {augment: {hflip: false}}
train: {lr: 2.0e-3}
"""
# What CHILD means, written out by hand: mappings merged at every depth, lists and scalars replaced.
FLAT = """\
model: {backbone: resnet18, output_stride: 16, mean: [0.4, 0.4, 0.4], std: [0.2, 0.2, 0.2]}
data: {type: scenes, height: 32, width: 32, augment: {scale: [0.5, 2.0], hflip: false}}
train: {steps: 5, batch_size: 4, lr: 2.0e-3}
tasks:
  seg: {kind: segmentation, num_classes: 5, head: {type: deeplabv3, channels: 32}}
  depth: {kind: depth, head: {type: deeplabv3plus}}
"""


@pytest.fixture()
def layered(tmp_path: Path) -> Path:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "common.yaml").write_text(COMMON)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "seg.yaml").write_text(SEG)
    (recipes / "depth.yaml").write_text(DEPTH)
    (recipes / "child.yaml").write_text(CHILD)
    return recipes / "child.yaml"


def test_bases_merge_key_by_key_like_the_recipe_written_out(layered, monkeypatch):
    monkeypatch.chdir(layered.parent.parent)  # bases are found relative to their file, not to the working folder
    recipe = R.load(layered)
    assert recipe == R.loads(FLAT)
    assert recipe.task_names == ["seg", "depth"], "tasks keep the order of the layers"


def test_overrides_come_last_and_the_saved_recipe_stands_alone(layered, tmp_path):
    recipe = R.load(layered, ["train.lr=3e-3", "tasks.seg.head.channels=8"])
    assert recipe.train.lr == 3e-3 and recipe.train.batch_size == 4
    assert recipe.tasks["seg"].head == {"type": "deeplabv3", "channels": 8}
    text = R.dump(recipe)
    assert "base" not in R.to_dict(recipe) and not re.search(r"^base:", text, flags=re.MULTILINE)
    (tmp_path / "saved.yaml").write_text(text)
    assert R.load(tmp_path / "saved.yaml") == recipe


def test_the_strict_checks_run_on_the_merged_recipe(layered):
    (layered.parent / "depth.yaml").write_text(DEPTH + "train: {epoch: 3}\n")
    with pytest.raises(RecipeError, match=r"^unknown key train\.epoch: did you mean train\.epochs\?$"):
        R.load(layered)


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("missing.yaml", r"child\.yaml: base 'missing\.yaml' not found \(looked for .*missing\.yaml; paths are relative"),
        ("child.yaml", r"child\.yaml: base 'child\.yaml' leads back to itself \(.*child\.yaml -> .*child\.yaml\)"),
        ("[seg.yaml, loop.yaml]", r"loop\.yaml: base 'child\.yaml' leads back to itself \(.*child\.yaml -> .*loop\.yaml -> .*child\.yaml\)"),
        ("3", r"child\.yaml: base: expected a recipe file name or a list of them, got 3$"),
        ("[]", r"child\.yaml: base: expected a recipe file name or a list of them, got \[\]$"),
    ],
)
def test_bad_bases_fail_in_one_line(layered, base, message):
    (layered.parent / "loop.yaml").write_text("base: child.yaml\n")
    layered.write_text(CHILD.replace("[seg.yaml, depth.yaml]", base))
    with pytest.raises(RecipeError) as info:
        R.load(layered)
    assert re.search(message, str(info.value)) and "\n" not in str(info.value)


def test_loads_reads_bases_relative_to_the_folder_it_is_given(layered):
    assert R.loads(CHILD, directory=layered.parent) == R.load(layered)


def test_the_command_line_prints_the_merged_recipe(layered, capsys):
    assert main(["train", str(layered), "--print-recipe"]) == 0
    printed = capsys.readouterr().out
    assert R.loads(printed) == resolve_recipe(R.load(layered)) and "base:" not in printed
