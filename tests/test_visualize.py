"""Colouring helpers: palettes, colour maps on known inputs, grids and atomic PNG writing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from multitask_deeplab import visualize as V
from multitask_deeplab.data.scenes import ScenesDataset
from multitask_deeplab.data.sheet import save_sample_sheet
from multitask_deeplab.tasks import DepthTask, SegmentationTask


def test_palette_is_distinct_and_padded() -> None:
    for num_classes in (1, 5, 20, 21, 255):
        palette = V.segmentation_palette(num_classes)
        assert len(palette) == 768 and all(0 <= c <= 255 for c in palette)
        colours = [tuple(palette[3 * i : 3 * i + 3]) for i in range(num_classes)]
        assert len(set(colours)) == num_classes and (0, 0, 0) not in colours
        assert palette[3 * num_classes :] == [0] * (768 - 3 * num_classes)
    assert V.segmentation_palette(5) == V.segmentation_palette(30)[:15] + [0] * 753  # stable prefix
    for bad in (0, 256):
        with pytest.raises(ValueError, match=f"num_classes={bad}"):
            V.segmentation_palette(bad)


def test_colorize_segmentation_known_colours() -> None:
    seg = torch.tensor([[0, 1], [255, 4]])
    out = V.colorize_segmentation(seg, num_classes=5)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [31, 119, 180] and out[0, 1].tolist() == [255, 127, 14]
    assert out[1, 0].tolist() == [0, 0, 0]  # ignore is black
    assert np.array_equal(V.colorize_segmentation(seg.numpy(), 5), out)
    assert V.colorize_segmentation(np.array([[7, 3]]), 5, ignore_index=7)[0, 0].tolist() == [0, 0, 0]


def test_colorize_segmentation_rejects_unknown_labels() -> None:
    with pytest.raises(ValueError, match="label 5, outside \\[0, 5\\)"):
        V.colorize_segmentation(torch.tensor([[0, 5]]), num_classes=5)
    with pytest.raises(ValueError, match="H x W"):
        V.colorize_segmentation(torch.zeros(1, 2, 2, dtype=torch.long), num_classes=5)


def test_colorize_depth_known_colours_and_invalid_grey() -> None:
    depth = torch.tensor([[0.0, 5.0, 10.0, 20.0], [-1.0, float("nan"), float("inf"), 10.0]])
    out = V.colorize_depth(depth, cmap="magma", vmax=10.0)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    for column in range(3):
        assert out[1, column].tolist() == list(V.INVALID_GREY)
    assert out[0, 0].tolist() == list(V.INVALID_GREY)  # 0 is invalid
    assert out[0, 2].tolist() == [252, 253, 191]  # magma's last colour at vmax ...
    assert out[0, 3].tolist() == [252, 253, 191]  # ... and beyond it
    assert out[0, 1].tolist() == [183, 55, 121]  # magma at 0.5 (matplotlib: 0.716, 0.215, 0.475 at 128/255)
    turbo = V.colorize_depth(torch.tensor([[0.5, 10.0]]), vmax=10.0)
    assert turbo[0, 0, 2] > turbo[0, 0, 0] and turbo[0, 1, 0] > turbo[0, 1, 2]  # near blue, far red
    with pytest.raises(ValueError, match="unknown colour map 'jet'"):
        V.colorize_depth(depth, cmap="jet")


def test_colorize_depth_scales_to_the_95th_percentile() -> None:
    depth = torch.arange(1, 101, dtype=torch.float32).view(1, 10, 10)  # 1 x H x W is accepted
    out = V.colorize_depth(depth, cmap="magma")
    last = [252, 253, 191]
    flat = out.reshape(-1, 3).tolist()
    assert all(colour == last for colour in flat[95:]) and flat[90] != last
    assert (V.colorize_depth(torch.zeros(3, 3)) == np.array(V.INVALID_GREY, dtype=np.uint8)).all()


def test_colorize_normals_known_colours() -> None:
    normals = torch.zeros(3, 1, 3)
    normals[:, 0, 0] = torch.tensor([0.0, 0.0, -1.0])
    normals[:, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    out = V.colorize_normals(normals)
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [128, 128, 0] and out[0, 1].tolist() == [255, 128, 128]
    assert out[0, 2].tolist() == list(V.INVALID_GREY)
    with pytest.raises(ValueError, match="3 x H x W"):
        V.colorize_normals(torch.zeros(2, 4, 4))


def test_image_to_uint8_and_overlay() -> None:
    image = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1]).view(1, 1, 5).expand(3, 1, 5)
    out = V.image_to_uint8(image)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 128, 255, 255, 0]
    black, colour = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 200, np.uint8)
    assert (V.overlay(black, colour) == 100).all()
    assert (V.overlay(black, colour, alpha=0.0) == 0).all() and (V.overlay(black, colour, alpha=1.0) == 200).all()
    with pytest.raises(ValueError, match="same shape"):
        V.overlay(black, np.zeros((3, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="alpha=1.5"):
        V.overlay(black, colour, alpha=1.5)


def test_make_grid_layout() -> None:
    tiles = [[np.full((4, 5, 3), 10 * (2 * r + c + 1), np.uint8) for c in range(2)] for r in range(2)]
    grid = V.make_grid(tiles, pad=2)
    assert grid.shape == (4 * 2 + 2 * 3, 5 * 2 + 2 * 3, 3) and grid.dtype == np.uint8
    assert (grid[2:6, 2:7] == 10).all() and (grid[2:6, 9:14] == 20).all() and (grid[8:12, 9:14] == 40).all()
    assert (grid[0:2] == 255).all() and (grid[:, 7:9] == 255).all()  # white padding
    titled = V.make_grid(tiles, titles=["a", "b"], pad=2)
    assert titled.shape == (grid.shape[0] + 14, grid.shape[1], 3) and (titled[14:] == grid).all()
    assert (titled[:14] < 255).any()  # the titles are drawn
    ragged = V.make_grid([[np.zeros((3, 3, 3), np.uint8)], [np.zeros((6, 2, 3), np.uint8)] * 2], pad=0)
    assert ragged.shape == (9, 5, 3)
    with pytest.raises(ValueError, match="1 titles for 2 columns"):
        V.make_grid(tiles, titles=["a"])
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        V.make_grid([[np.zeros((4, 4, 3), np.float32)]])


def test_save_png_round_trip_is_atomic(tmp_path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = V.save_png(array, tmp_path / "sub" / "picture.png")
    assert np.array_equal(np.asarray(Image.open(path)), array)
    V.save_png(array[::-1].copy(), path)  # overwrite
    assert np.array_equal(np.asarray(Image.open(path)), array[::-1])
    assert os.listdir(path.parent) == ["picture.png"]  # no temporary file left behind
    labels = np.array([[0, 1], [4, 255]], dtype=np.uint8)
    indexed = Image.open(V.save_png(labels, tmp_path / "labels.png", palette=V.segmentation_palette(5)))
    assert indexed.mode == "P" and np.array_equal(np.asarray(indexed), labels)
    assert indexed.getpalette()[:6] == [31, 119, 180, 255, 127, 14]
    with pytest.raises(ValueError, match="uint8"):
        V.save_png(array.astype(np.float32), tmp_path / "bad.png")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch) -> None:
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        V.save_png(np.zeros((2, 2, 3), np.uint8), tmp_path / "x.png")
    assert os.listdir(tmp_path) == []


class _ImageSegDataset:
    class_names = ["a", "b"]
    ignore_index = 255

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(3, 10, 12), "seg": torch.full((10, 12), index % 2)}


def test_save_sample_sheet(tmp_path) -> None:
    dataset = ScenesDataset("val", num_samples=3, height=32, width=40)
    path = save_sample_sheet(dataset, tmp_path / "sheet.png", dataset.target_kinds, indices=range(3))
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (14 + 3 * 32 + 4 * 2, 5 * 40 + 6 * 2, 3)  # titles, 3 rows, 5 columns (image, seg, depth, normals, edges)
    assert np.array_equal(sheet[16:48, 2:42], V.image_to_uint8(dataset[0]["image"]))
    assert np.array_equal(sheet[16:48, 44:84], V.colorize_segmentation(dataset[0]["seg"], 5))
    kinds = {"seg": SegmentationTask(num_classes=2), "depth": DepthTask()}  # no depth in these samples: no column
    partial = np.asarray(Image.open(save_sample_sheet(_ImageSegDataset(), tmp_path / "two.png", kinds, indices=[0, 1])))
    assert partial.shape == (14 + 2 * 10 + 3 * 2, 2 * 12 + 3 * 2, 3)  # only image and seg columns
