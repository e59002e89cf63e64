"""Plugins: a user's mistake ends in one line and a non-zero exit before any work, never a traceback; plugins load by
their path; overrides may stand anywhere on the command line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from multitask_deeplab.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "recipes" / "scenes_seg_depth.yaml"
TINY = [
    "data.height=32", "data.width=32", "data.num_samples=8", "data.num_workers=0", "train.steps=1", "train.batch_size=4",
    "train.warmup_steps=0", "train.amp=off", "eval.num_visualize=0", "--no-progress",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("isolated_registries")


def plugin(folder: Path, code: str, name: str = "plugin.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(code))
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *args: str, code: int = 2) -> str:
    exit_code, _, err = run(capsys, *args)
    assert exit_code == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_a_loss_factory_works_and_one_that_returns_something_else_is_one_line(capsys, tmp_path):
    path = plugin(tmp_path, """
        from multitask_deeplab import LOSSES
        from multitask_deeplab.losses.depth import L1DepthLoss

        @LOSSES.register("l1_made")
        def make_l1():
            return L1DepthLoss()

        @LOSSES.register("not_a_loss")
        def make_nothing():
            return "l1"
    """)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", DEFAULT, "--plugin", path, *TINY, f"train.output_dir={out}", "tasks.depth.loss.type=l1_made")
    assert code == 0, err
    assert json.loads((out / "steps.jsonl").read_text().splitlines()[0])["losses"]["depth"] > 0
    err = one_line_error(capsys, "train", DEFAULT, "--plugin", path, *TINY, f"train.output_dir={tmp_path / 'bad'}", "tasks.depth.loss.type=not_a_loss")
    assert err == "mtdl: error: tasks.depth.loss: loss 'not_a_loss' must subclass DenseLoss or return one; its factory returned a str"
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "registry, base, message",
    [
        ("WEIGHTINGS", "torch.nn.Module", "weighting 'mine' must subclass Weighting or be a function that returns one"),
        ("HEADS", "torch.nn.Module", "head 'mine' must subclass DenseHead or be a function that returns one"),
        ("LOSSES", "torch.nn.Module", "loss 'mine' must subclass DenseLoss or be a function that returns one"),
        ("TASKS", "object", "task kind 'mine' must subclass TaskKind or be a function that returns one"),
    ],
)
def test_a_class_of_the_wrong_base_fails_when_the_plugin_is_imported(capsys, tmp_path, registry, base, message):
    path = plugin(tmp_path, f"""
        import torch
        from multitask_deeplab import {registry}

        @{registry}.register("mine")
        class Mine({base}):
            pass
    """)
    err = one_line_error(capsys, "train", DEFAULT, "--plugin", path, *TINY, f"train.output_dir={tmp_path / 'out'}")
    assert err.startswith(f"mtdl: error: plugin {path}: {message}; Mine (in {path}) does not")
    assert not (tmp_path / "out").exists()


def test_two_plugins_with_one_file_name_both_load_and_a_name_clash_names_both_files(capsys, tmp_path):
    code = """
        from multitask_deeplab import HEADS
        from multitask_deeplab.models.heads import DeepLabV3PlusHead

        @HEADS.register("{name}")
        class Head(DeepLabV3PlusHead):
            pass
    """
    first = plugin(tmp_path / "a", code.format(name="head_a"))
    second = plugin(tmp_path / "b", code.format(name="head_b"))
    out = tmp_path / "run"
    args = ["train", DEFAULT, "--plugin", first, "--plugin", second, *TINY, f"train.output_dir={out}"]
    code_, _, err = run(capsys, *args, "tasks.seg.head.type=head_a", "tasks.depth.head.type=head_b")
    assert code_ == 0, err
    clash = plugin(tmp_path / "c", code.format(name="head_a"))
    err = one_line_error(capsys, "train", DEFAULT, "--plugin", first, "--plugin", clash, *TINY)
    assert f"head 'head_a' is already registered (by {first}); pick another name for the one in {clash}" in err


def test_overrides_may_follow_the_flags_and_keep_their_order(capsys, tmp_path):
    out = tmp_path / "run"
    path = plugin(tmp_path, "x = 1\n")
    code, printed, err = run(capsys, "train", DEFAULT, "train.steps=5", "--plugin", path, "--print-recipe", "train.steps=3", "train.warmup_steps=0", f"train.output_dir={out}")
    assert code == 0, err
    assert "  steps: 3\n" in printed and f"output_dir: {out}" in printed
    with pytest.raises(SystemExit) as info:
        main(["train", str(DEFAULT), "--plugin", str(path), "--bogus", "train.lr=1"])
    assert info.value.code == 2 and "error: unrecognized arguments: --bogus\n" in capsys.readouterr().err


@pytest.mark.parametrize(
    "code, expected",
    [
        ("def broken(:\n", r"mtdl: error: cannot import plugin {path}: SyntaxError: .* \(at {path}:1\)"),
        ("import numpy\nnumpy.this_does_not_exist\n", r"mtdl: error: cannot import plugin {path}: AttributeError: .* \(at {path}:2 in <module>\)"),
    ],
)
def test_a_plugin_that_fails_to_import_is_one_line_with_its_location(capsys, tmp_path, code, expected):
    path = plugin(tmp_path, code)
    import re

    err = one_line_error(capsys, "train", DEFAULT, "--plugin", path, *TINY)
    assert re.fullmatch(expected.format(path=re.escape(str(path))), err), err


def test_a_head_that_breaks_or_ignores_out_channels_is_refused_before_training(capsys, tmp_path):
    path = plugin(tmp_path, """
        import torch
        from multitask_deeplab import HEADS, DenseHead

        @HEADS.register("three")
        class Three(DenseHead):
            def __init__(self, in_channels, reductions, out_channels):
                super().__init__(in_index=-1, num_levels=len(in_channels))
                self.conv = torch.nn.Conv2d(in_channels[-1], 3, 1)

            def forward(self, features):
                return self.conv(self.select(features))

        @HEADS.register("crash")
        class Crash(Three):
            def forward(self, features):
                return self.conv(features)
    """)
    err = one_line_error(capsys, "train", DEFAULT, "--plugin", path, *TINY, "tasks.seg.head={type: three}", f"train.output_dir={tmp_path / 'a'}")
    assert "tasks.seg.head: the head's output is (2, 3, 64, 64) for a (2, 3, 64, 64) probe, but task 'seg' (segmentation (5 classes)) needs (2, 5, 64, 64)" in err
    err = one_line_error(capsys, "train", DEFAULT, "--plugin", path, *TINY, "tasks.depth.head={type: crash}", f"train.output_dir={tmp_path / 'b'}")
    assert "the model failed on a probe batch of (2, 3, 64, 64): TypeError: " in err and f"(at {path}:17 in forward)" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unknown_names_suggest_the_closest_and_the_plugin_flag(capsys):
    err = one_line_error(capsys, "train", DEFAULT, "tasks.seg.kind=segmentaton", "--print-recipe")
    assert err == (
        "mtdl: error: tasks.seg.kind: unknown task kind 'segmentaton': did you mean 'segmentation'? registered task kinds are "
        "depth, edges, human_parts, normals, saliency, segmentation; if it is your own, pass --plugin <the .py file or module "
        "that registers it>"
    )
    err = one_line_error(capsys, "train", DEFAULT, "tasks.depth.head.type=depthplus", "--print-recipe")
    assert "heads are task-neutral since 0.2: use type: deeplabv3plus" in err
    err = one_line_error(capsys, "train", DEFAULT, "tasks.seg.num_clases=5", "--print-recipe")
    assert err == "mtdl: error: unknown key tasks.seg.num_clases: did you mean tasks.seg.num_classes?"


def test_list_tasks(capsys):
    code, out, _ = run(capsys, "list", "tasks")
    assert code == 0 and out.split() == ["depth", "edges", "human_parts", "normals", "saliency", "segmentation"]
