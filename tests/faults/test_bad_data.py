"""Bad files in a folder dataset: ``mtdl data verify`` names each one; training leaves a sample that fails to load
out of its batch with a warning naming the file and counts it, and fixes (and verify counts) NaN or negative depth
and missing labels; a data set that cannot give one batch stops training before its first step."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fault_helpers import TINY_BACKBONE
from fixtures_formats import write_image
from helpers_training import load, one_thread  # noqa: F401

from multitask_deeplab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = f"""\
model: {{backbone: {TINY_BACKBONE.split('=')[1]}, output_stride: 32}}
tasks:
  seg: {{kind: segmentation, num_classes: 5, head: {{type: deeplabv3, channels: 8}}, loss: {{type: cross_entropy}}}}
  depth: {{kind: depth, head: {{type: deeplabv3, channels: 8}}, loss: {{type: l1}}}}
data: {{type: folder, root: ROOT, num_classes: 5, depth_scale: 1000, num_workers: 0, augment: {{scale: null}}}}
train: {{steps: 2, batch_size: 4, device: cpu, output_dir: OUT}}
eval: {{num_visualize: 0}}
"""


def write_dataset(root, bad: str):
    """Eight good 32 x 32 samples (seg PNG, depth PNG of millimetres); sample img3 damaged as ``bad`` says.

    Returns the file the damage is in.
    """
    rng = np.random.default_rng(0)
    for index in range(8):
        write_image(root / "images" / f"img{index}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        write_image(root / "seg" / f"img{index}.png", rng.integers(0, 5, (32, 32), dtype=np.uint8))
        write_image(root / "depth" / f"img{index}.png", rng.integers(500, 5000, (32, 32), dtype=np.uint16))
    image, seg, depth = (root / folder / "img3.png" for folder in ("images", "seg", "depth"))
    if bad == "corrupt image":
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
        return image
    if bad == "label of the wrong size":
        write_image(seg, np.zeros((24, 32), np.uint8))
        return seg
    if bad == "8-bit depth PNG":
        write_image(depth, np.full((32, 32), 200, np.uint8))
        return depth
    if bad == "class ids >= num_classes":
        write_image(seg, np.full((32, 32), 7, np.uint8))
        return seg
    if bad == "NaN and negative depth":
        depth.unlink()
        values = np.ones((32, 32), np.float32)
        values[0, :4] = [np.nan, -1.0, np.inf, -np.inf]
        np.save(root / "depth" / "img3.npy", values)
        return root / "depth" / "img3.npy"
    if bad == "missing depth file":
        depth.unlink()
        return depth
    raise AssertionError(bad)


def make(tmp_path, bad: str):
    root = tmp_path / "data"
    damaged = write_dataset(root, bad)
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(RECIPE.replace("ROOT", str(root)).replace("OUT", str(tmp_path / "run")))
    return recipe, damaged


SKIPPED = {
    "corrupt image": "cannot read",
    "label of the wrong size": "seg is 24x32 but the image",
    "8-bit depth PNG": "expected a 16-bit single-channel PNG, got uint8",
    "class ids >= num_classes": "class ids 7 are outside the classes 0..4 and ignore 255",
}
FIXED = {
    "NaN and negative depth": "note: depth pixels NaN, infinite or negative (set to 0 = invalid): 4 (img3)",
    "missing depth file": "note: samples without a depth label (filled with invalid values): 1 (img3)",
}


@pytest.mark.parametrize("bad", list(SKIPPED))
def test_a_sample_that_fails_to_load_is_named_by_verify_and_skipped_with_a_counted_warning(tmp_path, capsys, bad):
    recipe, damaged = make(tmp_path, bad)
    assert main(["data", "verify", str(recipe)]) == 1
    out = capsys.readouterr().out
    problem = next(line for line in out.splitlines() if line.startswith("  problem: "))
    assert out.startswith("train: Folder (train): 8 samples, image sizes 32x32 (7), 1 problem(s)\n")
    assert problem.startswith("  problem: img3: ") and str(damaged) in problem and SKIPPED[bad] in problem
    assert "val: the same samples as train (checked above)" in out

    assert main(["train", str(recipe), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    warning = next(line for line in err.splitlines() if line.startswith("warning: skipped a sample that failed to load: "))
    assert str(damaged) in warning and SKIPPED[bad] in warning
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = rows[-1]["skipped_samples"]
    assert skipped >= 1 and load(tmp_path / "run" / "last.pt")["skipped_samples"] == skipped
    assert f"warning: {skipped} samples failed to load and were skipped" in out


@pytest.mark.parametrize("bad", list(FIXED))
def test_nan_negative_depth_and_missing_labels_are_made_invalid_and_verify_names_the_sample(tmp_path, capsys, bad):
    recipe, _ = make(tmp_path, bad)
    assert main(["data", "verify", str(recipe), "--split", "train"]) == 0
    assert FIXED[bad] in capsys.readouterr().out
    assert main(["train", str(recipe), "--no-progress"]) == 0
    assert load(tmp_path / "run" / "last.pt")["skipped_samples"] == 0


def test_data_that_cannot_give_one_batch_stops_before_the_first_step(tmp_path, capsys):
    recipe, _ = make(tmp_path, "corrupt image")
    assert main(["train", str(recipe), "data.num_classes=3", "tasks.seg.num_classes=3", "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("mtdl: error: no sample of a batch could be loaded, e.g. ") and "outside the classes 0..2" in err[-1]
    assert not (tmp_path / "run" / "steps.jsonl").exists() or (tmp_path / "run" / "steps.jsonl").read_text() == ""

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    assert main(["train", str(recipe), f"data.root={empty}", "--no-progress"]) == 2
    assert capsys.readouterr().err == f"mtdl: error: Folder split 'train' is empty: no samples found under {empty / 'images'}\n"
