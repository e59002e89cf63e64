"""The `mtdl` command line: one clear line and a non-zero exit for bad input, before any output is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from multitask_deeplab.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "recipes" / "scenes_seg_depth.yaml"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


TINY = """
model: {backbone: resnet18, output_stride: 16}
tasks:
  seg: {kind: segmentation, num_classes: 5, head: {type: deeplabv3, channels: 8}, loss: {type: cross_entropy}}
data: {type: scenes, num_samples: 4, height: 32, width: 32, num_workers: 0}
train: {steps: 1, batch_size: 2, output_dir: OUT}
"""


@pytest.mark.parametrize(
    "text,overrides,message",
    [
        (TINY, ["train.epoch=3"], "unknown key train.epoch: did you mean train.epochs?"),
        (TINY, ["train.batch_size=0"], "train.batch_size"),
        (TINY.replace("cross_entropy", "l1"), [], "tasks.seg.loss: 'l1' is a loss for depth tasks, not for segmentation (5 classes)"),
        (TINY.replace("num_classes: 5", "num_classes: 0"), [], "num_classes"),
        (TINY.replace("deeplabv3,", "deeplab_v3,"), [], "unknown head 'deeplab_v3': did you mean 'deeplabv3'"),
        (TINY.replace("channels: 8", "chanels: 8"), [], "unknown key tasks.seg.head.chanels: did you mean tasks.seg.head.channels?"),
        (TINY + "weighting: {type: dwa, temprature: 2}\n", [], "unknown key weighting.temprature: did you mean weighting.temperature?"),
        (TINY.replace("data:", "  depth: {kind: depth, head: {type: deeplabv3plus, chanels: 8}, loss: {type: l1}}\ndata:"), [],
         "unknown key tasks.depth.head.chanels: did you mean tasks.depth.head.channels?"),
        (TINY.replace("resnet18", "resnet181"), [], "unknown timm backbone 'resnet181'"),
        (TINY.replace("resnet18, output_stride: 16", "vgg11, output_stride: 8"), [], "backbone 'vgg11' cannot run at output_stride 8"),
        (TINY.replace("num_samples: 4", "num_sample: 4"), [], "unknown key data.num_sample: did you mean data.num_samples?"),
        ("tasks: [1, 2", [], "recipe.yaml"),
    ],
)
def test_bad_recipes_fail_with_one_line_and_no_output_dir(tmp_path, capsys, text, overrides, message):
    out_dir = tmp_path / "out"
    recipe = write(tmp_path, text.replace("OUT", str(out_dir)))
    code, _, err = run_cli(capsys, "train", str(recipe), *overrides, "--no-progress")
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_dir.exists()


def test_missing_recipe_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == 2 and f"recipe file not found: {tmp_path / 'nope.yaml'}" in err


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    recipe = write(tmp_path, TINY.replace("OUT", str(blocker / "run")))
    code, _, err = run_cli(capsys, "train", str(recipe), "--no-progress")
    assert code == 4 and err.startswith(f"mtdl: could not write {blocker / 'run'}: ") and err.count("\n") == 1


def test_print_recipe_shows_resolved_values_and_writes_nothing(tmp_path, capsys):
    recipe = write(tmp_path, TINY.replace("OUT", str(tmp_path / "out")))
    code, out, _ = run_cli(capsys, "train", str(recipe), "train.lr=5e-4", "--print-recipe")
    assert code == 0
    assert "lr: 0.0005" in out and "weighting:" in out and "amp: 'off'" in out
    assert not (tmp_path / "out").exists()


def test_list_components(capsys):
    for what, expected in [("heads", "deeplabv3plus"), ("losses", "silog"), ("weightings", "pcgrad"), ("datasets", "scenes")]:
        code, out, _ = run_cli(capsys, "list", what)
        assert code == 0 and expected in out.split()


def test_list_backbones_filters_by_stride(capsys):
    code, out, _ = run_cli(capsys, "list", "backbones", "--filter", "resnet1*", "--output-stride", "8")
    assert code == 0 and "resnet18" in out.split()
    code, out, err = run_cli(capsys, "list", "backbones", "--filter", "vgg1*", "--output-stride", "8")
    assert code == 1 and out == "" and "no timm backbone matching 'vgg1*' runs at output stride 8" in err


def test_data_sheet_writes_a_png(tmp_path, capsys):
    out = tmp_path / "sheet.png"
    code, _, _ = run_cli(capsys, "data", "sheet", str(DEFAULT), "data.height=32", "data.width=32", "--out", str(out), "--count", "2")
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_verify_scenes(capsys):
    code, out, _ = run_cli(capsys, "data", "verify", str(DEFAULT), "data.num_samples=3", "data.height=32", "data.width=32")
    assert code == 0 and "OK" in out


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "multitask_deeplab", "list", "heads"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "deeplabv3" in result.stdout
    result = subprocess.run([sys.executable, "-m", "multitask_deeplab", "evaluate", "/nowhere.pt"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == "mtdl: error: checkpoint not found: /nowhere.pt"


def test_list_backbones_into_a_closed_pipe_ends_quietly():
    """`mtdl list backbones | head`: the reader goes away before the list is printed."""
    command = [sys.executable, "-m", "multitask_deeplab", "list", "backbones", "--filter", "resnet1*", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and err == ""


def test_evaluate_takes_data_overrides_for_a_moved_data_folder(tmp_path, capsys):
    from fixtures_formats import write_folder

    write_folder(tmp_path / "data")
    recipe = write(tmp_path, FOLDER.replace("ROOT", str(tmp_path / "data")).replace("OUT", str(tmp_path / "run")))
    assert run_cli(capsys, "train", str(recipe), "--no-progress")[0] == 0
    (tmp_path / "data").rename(tmp_path / "moved")
    checkpoint = str(tmp_path / "run" / "last.pt")
    code, _, err = run_cli(capsys, "evaluate", checkpoint, "--device", "cpu")
    assert code == 2 and "folder dataset root not found" in err
    code, out, _ = run_cli(capsys, "evaluate", checkpoint, f"data.root={tmp_path / 'moved'}", "eval.batch_size=1", "--device", "cpu")
    assert code == 0 and "seg.miou" in out
    code, _, err = run_cli(capsys, "evaluate", checkpoint, "tasks.seg.num_classes=3", "--device", "cpu")
    assert code == 2 and err.startswith("mtdl: error: override 'tasks.seg.num_classes=3': mtdl evaluate takes eval.* and data.* ")


FOLDER = """
model: {backbone: test_efficientnet, output_stride: 32}
tasks:
  seg: {kind: segmentation, num_classes: 5, head: {type: deeplabv3, channels: 8}, loss: {type: cross_entropy}}
data: {type: folder, root: ROOT, num_classes: 5, targets: [seg], splits: {train: train.txt, val: val.txt}, num_workers: 0}
train: {steps: 1, batch_size: 2, device: cpu, output_dir: OUT}
eval: {num_visualize: 0}
"""
