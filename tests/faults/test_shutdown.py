"""Processes end: with DataLoader workers (which ignore SIGTERM), an error, a full disk and a normal end from a
Python script all exit instead of waiting forever for the workers at interpreter exit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from fault_helpers import TINY_BACKBONE
from fixtures_formats import write_image
from helpers_training import ROOT, child_env, load, mtdl, write_recipe

from multitask_deeplab.cli import main

pytestmark = pytest.mark.slow
WORKERS = ("data.num_workers=2", TINY_BACKBONE)
HANG = 120  # seconds after which a probe that has not ended counts as hanging

FIT_FROM_A_SCRIPT = """
import sys
from multitask_deeplab.config import recipe
from multitask_deeplab.engine.trainer import Trainer

trainer = Trainer(recipe.load(sys.argv[1], sys.argv[2:]), show_progress=False)
trainer.total_steps = 3  # lowered after construction: fit() ends in the middle of an epoch
print(trainer.fit()["seg.miou"] >= 0)
"""

# The disk "fills up" under the checkpoint's size once the workers run (their shared memory must stay unlimited):
# a real failed write() from the kernel (RLIMIT_FSIZE), at the first checkpoint, then in an export.
FULL_DISK = """
import resource, signal, sys
from multitask_deeplab.cli import main
from multitask_deeplab.engine.trainer import Trainer

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit, step = int(sys.argv[1]), Trainer.train_step


def fill_the_disk(self, batch):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return step(self, batch)


Trainer.train_step = fill_the_disk
print([main(sys.argv[2].split("|")), main(sys.argv[3].split("|"))])
"""

FOLDER_RECIPE = """\
model: {backbone: test_efficientnet, output_stride: 32}
tasks:
  seg: {kind: segmentation, num_classes: 5, head: {type: deeplabv3, channels: 8}, loss: {type: cross_entropy}}
data: {type: folder, root: ROOT, num_classes: 5, num_workers: 2, augment: {scale: null}}
train: {steps: 4, batch_size: 4, device: cpu, output_dir: OUT}
eval: {num_visualize: 0}
"""


def run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=HANG)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"still running after {HANG} s (waiting for its DataLoader workers?): {error.stderr}")


def test_fit_from_a_script_that_ends_mid_epoch_exits(tmp_path):
    recipe = write_recipe(tmp_path)
    result = run([sys.executable, "-c", FIT_FROM_A_SCRIPT, str(recipe), *WORKERS, f"train.output_dir={tmp_path / 'run'}"])
    assert result.returncode == 0 and result.stdout.strip().endswith("True"), result.stderr[-2000:]
    assert load(tmp_path / "run" / "last.pt")["step"] == 3
    assert not (tmp_path / "run" / ".lock").exists(), "fit() released the folder's lock"


def test_an_error_in_a_worker_ends_the_run_with_one_line(tmp_path):
    """Images of two sizes (no size: [h, w]): the batch cannot be stacked, in a worker process."""
    root = tmp_path / "data"
    for index in range(8):
        height = 32 if index % 2 else 24
        write_image(root / "images" / f"img{index}.png", np.zeros((height, 32, 3), np.uint8))
        write_image(root / "seg" / f"img{index}.png", np.zeros((height, 32), np.uint8))
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(FOLDER_RECIPE.replace("ROOT", str(root)).replace("OUT", str(tmp_path / "run")))
    result = run(mtdl("train", str(recipe), "--no-progress"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == (
        "mtdl: error: the samples of a batch differ in image size (3x24x32 and 3x32x32), so they cannot be stacked: "
        "set size: [h, w] in the data section to resize on load (`mtdl data verify RECIPE` names the files)\n"
    )


def test_a_full_disk_exits_4_with_one_line_keeping_the_last_checkpoint(tmp_path, capsys):
    recipe, out = write_recipe(tmp_path), tmp_path / "run"
    common = ["train", str(recipe), *WORKERS, f"train.output_dir={out}"]
    assert main([*common, "train.steps=2", "--no-progress"]) == 0
    limit = 16384  # more than the logs and recipe.yaml, less than the checkpoint and the weights
    resume = "|".join([*common, "train.steps=4", "train.checkpoint_interval=1", "--no-progress", "--resume", "auto"])
    export = "|".join(["export", str(out / "last.pt"), "--format", "safetensors", "--out", str(tmp_path / "weights.safetensors")])
    result = run([sys.executable, "-c", FULL_DISK, str(limit), resume, export])
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "[4, 4]", result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"mtdl: could not write {out / 'last.pt'}: File too large; stopped at step 3.")
    assert lines[1].startswith(f"mtdl: could not write {tmp_path / 'weights.safetensors'}: File too large;")
    assert load(out / "last.pt")["step"] == 2, "the previous checkpoint is intact"
    assert not list(out.glob(".*.tmp")) and not (tmp_path / "weights.safetensors").exists()
