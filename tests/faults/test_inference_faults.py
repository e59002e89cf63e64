"""Inference on awkward inputs: a 3000 x 2000 photo through a 512 sliding window, a 1 x 1 image, 200 small images
(memory stays flat), a text file named like an image, and symlink loops in an input folder."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from fault_helpers import TINY_BACKBONE
from helpers_training import ROOT, child_env, mtdl, one_thread, write_recipe  # noqa: F401
from PIL import Image

from multitask_deeplab.cli import main
from multitask_deeplab.inference.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")
MiB = 2**20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    assert main(["train", str(write_recipe(folder)), TINY_BACKBONE, "train.steps=1", f"train.output_dir={folder / 'run'}", "--no-progress"]) == 0
    return folder / "run" / "last.pt"


# Predicts the same folder twice in one process: 20 images, then 200; prints the peak resident memory after each.
# The peak only ever grows, so a second peak close to the first means the 180 more images took no more memory.
TWICE = """
import resource, sys
from multitask_deeplab.cli import main
from multitask_deeplab.inference.predictor import Predictor

checkpoint, out = sys.argv[1], sys.argv[2]
for count, paths in (("20", sys.argv[3:23]), ("200", sys.argv[3:])):
    assert main(["predict", checkpoint, *paths, "--out", out + count, "--device", "cpu", "--no-progress"]) == 0
    print(count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_memory_stays_flat_over_200_images(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    paths = [tmp_path / "in" / f"im{index:03d}.png" for index in range(200)]
    paths[0].parent.mkdir()
    for path in paths:
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
    command = [sys.executable, "-c", TWICE, str(checkpoint), str(tmp_path / "out"), *map(str, paths)]
    result = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    peaks = dict(line.split() for line in result.stdout.splitlines() if line.split()[0] in ("20", "200"))
    assert len(list((tmp_path / "out200").glob("*_seg.png"))) == 200
    grown = int(peaks["200"]) - int(peaks["20"])
    assert grown < 64 * MiB, f"180 more images raised the peak by {grown / MiB:.0f} MiB"


def test_a_photo_many_windows_large_goes_through_the_network_in_window_sized_tiles(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu", window=512)
    seen, backend = [], predictor.backend
    predictor.backend = lambda views: seen.append(tuple(views.shape[-2:])) or backend(views)
    ys, xs = np.mgrid[0:2000, 0:3000]
    photo = np.stack([xs % 256, ys % 256, (xs + ys) % 256], -1).astype(np.uint8)
    result = predictor(photo)
    assert result["seg"].shape == result["depth"].shape == (2000, 3000)
    assert np.isfinite(result["depth"]).all() and (result["depth"] > 0).all()
    assert len(seen) > 24 and max(h for h, _ in seen) == max(w for _, w in seen) == 512, "every tile is at most 512 x 512"


def test_a_1x1_image_a_text_file_named_png_and_symlink_loops(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(inputs / "dot.png")
    (inputs / "notes.png").write_text("not an image\n")
    (inputs / "loop").symlink_to(inputs, target_is_directory=True)
    (inputs / "self.png").symlink_to(inputs / "self.png")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(inputs), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"mtdl: warning: skipped {inputs / 'notes.png'}: cannot identify image file" in err
    assert err.splitlines()[-1].startswith("mtdl: 1 input failed: ") and "notes.png" in err.splitlines()[-1]
    with Image.open(out / "dot_seg.png") as seg, Image.open(out / "dot_depth.png") as depth:
        assert seg.size == depth.size == (1, 1)
