"""Picture keys: a depth scale bar and a class legend (drawn by visualize, called by the task kinds), a fixed
``--depth-max`` instead of each image's 95th percentile, and a summary sheet of bounded size."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_training import one_thread, write_recipe  # noqa: F401
from PIL import Image

from multitask_deeplab import visualize
from multitask_deeplab.cli import main
from multitask_deeplab.cli.predict import SUMMARY_IMAGES, SUMMARY_SIDE

pytestmark = pytest.mark.usefixtures("one_thread")


def colours(picture: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(c) for c in pixel) for pixel in picture.reshape(-1, 3)}


def test_the_depth_scale_bar_runs_the_colour_map_from_0_to_vmax_under_labels():
    bar = visualize.depth_scale_bar(200, 7.5, "turbo")
    assert bar.shape[1] == 200 and bar.dtype == np.uint8
    lut = visualize._colour_map_lut("turbo")
    np.testing.assert_array_equal(bar[0, 0], lut[0])
    np.testing.assert_array_equal(bar[0, -1], lut[255])
    np.testing.assert_array_equal(bar[4], bar[0])
    text = bar[9:]
    assert (text < 128).any() and (text == 255).all(axis=-1).mean() > 0.5, "dark labels on white under the bar"
    with pytest.raises(ValueError, match="vmax=0 must be positive"):
        visualize.depth_scale_bar(200, 0, "turbo")


def test_the_class_legend_shows_every_class_colour_and_wraps_to_the_width():
    names = [f"thing {i}" for i in range(12)]
    legend = visualize.class_legend(names, 12, 200)
    palette = np.array(visualize.segmentation_palette(12), dtype=np.uint8).reshape(256, 3)[:12]
    assert {tuple(int(c) for c in colour) for colour in palette} <= colours(legend)
    assert legend.shape[1] == 200 and legend.shape[0] > 3 * visualize.KEY_TEXT, "several lines"
    with pytest.raises(ValueError, match="got 2 class names for 3 classes"):
        visualize.class_legend(["a", "b"], 3, 100)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    args = ["train", str(write_recipe(folder)), "model.backbone=test_efficientnet", "train.steps=1", f"train.output_dir={folder / 'run'}"]
    assert main([*args, "--no-progress"]) == 0
    return folder / "run" / "last.pt"


def test_summary_is_bounded_with_legend_and_scale_bars_and_depth_max_fixes_the_colours(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(SUMMARY_IMAGES + 1):
        Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(inputs / f"big{index}.png")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(inputs), "--out", str(out), "--depth-max", "4", "--save-npy", "--no-progress"]) == 0
    summary = np.asarray(Image.open(out / "summary.png").convert("RGB"))
    columns = 3  # image, seg, depth
    assert summary.shape[1] <= columns * (SUMMARY_SIDE + 2) + 2, "each picture shrunk to SUMMARY_SIDE"
    assert summary.shape[0] <= SUMMARY_IMAGES * (SUMMARY_SIDE * 3 // 4 + 40) + 120, "one row per summary image plus legend"
    palette = np.array(visualize.segmentation_palette(5), dtype=np.uint8).reshape(256, 3)[:5]
    assert {tuple(int(c) for c in colour) for colour in palette} <= colours(summary[-40:]), "the class legend at the bottom"
    lut = visualize._colour_map_lut("turbo")
    assert {tuple(int(c) for c in lut[0]), tuple(int(c) for c in lut[255])} <= colours(summary), "a depth scale bar"

    depth = np.load(out / "big0_depth.npy")
    colour = np.asarray(Image.open(out / "big0_depth_color.png").convert("RGB"))
    assert colour.shape[:2] == (600, 800), "the prediction pictures keep the input's size"
    np.testing.assert_array_equal(colour, visualize.colorize_depth(depth, vmax=4.0))
    assert main(["predict", str(checkpoint), str(inputs), "--out", str(out), "--depth-max", "0", "--no-progress"]) == 2
