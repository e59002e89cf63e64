"""Real-format dataset loaders: round trips on tiny fixtures, label mappings, errors, and verify reports."""

from __future__ import annotations

import json
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from fixtures_formats import (
    CITYSCAPES_CAMERA,
    write_cityscapes,
    write_folder,
    write_image,
    write_nyuv2,
    write_nyuv2_mat,
)

from multitask_deeplab.data import DATASETS, IGNORE_INDEX
from multitask_deeplab.data.cityscapes import disparity_to_depth, label_id_lookup
from multitask_deeplab.data.nyuv2 import NYU13_CLASSES, NYU40_CLASSES


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()


# --- nyuv2 (.npy) -----------------------------------------------------------------------------------------------


def test_nyuv2_round_trip(tmp_path):
    written = write_nyuv2(tmp_path)
    dataset = DATASETS.build({"type": "nyuv2", "root": str(tmp_path)}, split="train")
    assert len(dataset) == 3 and dataset.class_names == NYU13_CLASSES and dataset.ignore_index == IGNORE_INDEX
    sample, arrays = dataset[1], written["train"][1]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 24, 32)
    torch.testing.assert_close(sample["image"], chw(arrays["image"]))
    label = arrays["label"].astype(np.int64)
    assert torch.equal(sample["seg"], torch.from_numpy(np.where(label == -1, 255, label)))
    assert sample["seg"].dtype == torch.int64
    torch.testing.assert_close(sample["depth"], chw(arrays["depth"]))
    torch.testing.assert_close(sample["normals"], chw(arrays["normal"]))


def test_nyuv2_sorts_numerically_and_test_reads_val(tmp_path):
    written = write_nyuv2(tmp_path, sizes={"train": 11, "val": 2}, height=4, width=6)
    train = DATASETS.build({"type": "nyuv2", "root": tmp_path}, split="train")
    assert train.names == [str(i) for i in range(11)]
    torch.testing.assert_close(train[10]["depth"], chw(written["train"][10]["depth"]))
    test = DATASETS.build({"type": "nyuv2", "root": tmp_path, "targets": ["depth"]}, split="test")
    assert len(test) == 2 and sorted(test[0]) == ["depth", "image"]
    torch.testing.assert_close(test[1]["image"], chw(written["val"][1]["image"]))


def test_nyuv2_errors(tmp_path):
    with pytest.raises(ValueError, match=f"expected a directory at {tmp_path / 'nope'}"):
        DATASETS.build({"type": "nyuv2", "root": tmp_path / "nope"}, split="train")
    write_nyuv2(tmp_path, sizes={"train": 2})
    with pytest.raises(ValueError, match="split 'val'.*expected a directory at .*val"):
        DATASETS.build({"type": "nyuv2", "root": tmp_path}, split="val")
    with pytest.raises(ValueError, match="'dev' unknown"):
        DATASETS.build({"type": "nyuv2", "root": tmp_path}, split="dev")
    for folder in ("image", "label", "depth", "normal"):
        (tmp_path / "val" / folder).mkdir(parents=True)
    with pytest.raises(ValueError, match="split 'val' is empty: no samples found under .*image"):
        DATASETS.build({"type": "nyuv2", "root": tmp_path}, split="val")
    np.save(tmp_path / "train" / "label" / "0.npy", np.zeros((20, 32)))
    np.save(tmp_path / "train" / "label" / "1.npy", np.full((24, 32), 13.0))
    dataset = DATASETS.build({"type": "nyuv2", "root": tmp_path}, split="train")
    with pytest.raises(ValueError, match=r"label/0\.npy: seg is 20x32 but the image .*image/0\.npy is 24x32"):
        dataset[0]
    with pytest.raises(ValueError, match=r"label/1\.npy: class ids 13 are outside the classes 0\.\.12 and ignore 255"):
        dataset[1]


def test_nyuv2_verify_reports_every_problem(tmp_path):
    write_nyuv2(tmp_path, sizes={"train": 4})
    np.save(tmp_path / "train" / "label" / "0.npy", np.full((24, 32), 20.0))
    np.save(tmp_path / "train" / "depth" / "2.npy", np.zeros((24, 30, 1), np.float32))
    depth = np.ones((24, 32, 1), np.float32)
    depth[0, :5, 0] = [np.nan, -1.0, np.inf, 0.0, 2.0]
    np.save(tmp_path / "train" / "depth" / "3.npy", depth)
    (tmp_path / "train" / "normal" / "1.npy").unlink()
    dataset = DATASETS.build({"type": "nyuv2", "root": tmp_path}, split="train")
    report = dataset.verify()
    assert not report.ok and report.num_samples == 4 and len(report.problems) == 3
    text = str(report)
    assert "label/0.npy: class ids 20" in text
    assert "normal/1.npy" in text and "depth/2.npy: depth is 24x30" in text
    assert report.counts["depth pixels NaN, infinite or negative (set to 0 = invalid)"] == 3
    cleaned = dataset[3]["depth"]
    assert cleaned[0, 0, :5].tolist() == [0.0, 0.0, 0.0, 0.0, 2.0]


# --- nyuv2_mat (official labelled .mat) ----------------------------------------------------------------------


def mat_cfg(root, **kwargs):
    return {"type": "nyuv2_mat", "root": root, "splits": {"train": "train.txt", "val": "test.txt"},
            "mapping_file": "mapping40.txt", **kwargs}


def test_nyuv2_mat_round_trip_40_classes(tmp_path):
    pytest.importorskip("h5py")
    written = write_nyuv2_mat(tmp_path)
    train = DATASETS.build(mat_cfg(tmp_path), split="train")
    assert len(train) == 3 and train.class_names == NYU40_CLASSES
    sample, frame = train[1], written["train"][1] - 1  # train.txt lists 1, 3, 5 (1-based)
    torch.testing.assert_close(sample["image"], chw(written["images"][frame]) / 255)
    torch.testing.assert_close(sample["depth"][0], torch.from_numpy(written["depths"][frame]))
    raw = written["labels"][frame].astype(np.int64)
    mapped = np.concatenate([[0], written["mapping"]])[raw]
    assert torch.equal(sample["seg"], torch.from_numpy(np.where(mapped == 0, 255, mapped - 1)))
    assert len(DATASETS.build(mat_cfg(tmp_path), split="val")) == 2
    worker_copy = pickle.loads(pickle.dumps(train))  # the open HDF5 handle stays behind (spawned workers)
    assert torch.equal(worker_copy[1]["seg"], sample["seg"])


def test_nyuv2_mat_13_classes_by_hand(tmp_path):
    pytest.importorskip("h5py")
    written = write_nyuv2_mat(tmp_path, frames=2)
    mapping = np.full(895, 40)  # 895 entries: raw label 0 first
    mapping[[0, 1, 2, 3]] = [0, 1, 23, 25]  # unlabelled, wall, books, television
    np.save(tmp_path / "map.npy", mapping)
    cfg = mat_cfg(tmp_path, mapping_file="map.npy", classes=13)
    sample = DATASETS.build(cfg, split="train")[0]
    raw = torch.from_numpy(written["labels"][0].astype(np.int64))
    expect = {0: 255, 1: NYU13_CLASSES.index("wall"), 2: NYU13_CLASSES.index("books"),
              3: NYU13_CLASSES.index("tv"), 500: NYU13_CLASSES.index("objects")}  # 40 = otherprop -> objects
    for value, label in expect.items():
        assert (sample["seg"][raw == value] == label).all()


def test_nyuv2_mat_errors(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    write_nyuv2_mat(tmp_path)
    (tmp_path / "bad.txt").write_text("1\n9\n")
    with pytest.raises(ValueError, match=r"bad\.txt: frame indices must be whole numbers in 1\.\.5"):
        DATASETS.build(mat_cfg(tmp_path, splits={"train": "bad.txt"}), split="train")
    with pytest.raises(ValueError, match="split 'test' has no index file"):
        DATASETS.build(mat_cfg(tmp_path), split="test")
    np.savetxt(tmp_path / "short.txt", np.ones(10), fmt="%d")
    with pytest.raises(ValueError, match="expected 894 .* got 10 values"):
        DATASETS.build(mat_cfg(tmp_path, mapping_file="short.txt"), split="train")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ValueError, match=r'pip install -e "\.\[nyuv2-mat\]"'):
        DATASETS.build(mat_cfg(tmp_path), split="train")


# --- cityscapes -----------------------------------------------------------------------------------------------


def test_cityscapes_tables_by_hand():
    lut = label_id_lookup(255)
    assert [lut[i] for i in (0, 6, 7, 8, 11, 24, 26, 29, 33)] == [255, 255, 0, 1, 2, 11, 13, 255, 18]
    baseline, fx = CITYSCAPES_CAMERA["baseline"], CITYSCAPES_CAMERA["fx"]
    depth = disparity_to_depth(np.array([0, 1, 257, 2561], dtype=np.uint16), baseline, fx)
    np.testing.assert_allclose(depth, [0.0, 0.0, baseline * fx, baseline * fx / 10], rtol=1e-6)


def test_cityscapes_round_trip_and_resize(tmp_path):
    written = write_cityscapes(tmp_path)
    dataset = DATASETS.build({"type": "cityscapes", "root": tmp_path}, split="train")
    assert dataset.names == ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019",
                             "bochum/bochum_000000_000313"]
    assert len(dataset.class_names) == 19 and dataset.class_names[13] == "car"
    arrays = written[dataset.names[2]]
    sample = dataset[2]
    torch.testing.assert_close(sample["image"], chw(arrays["image"]) / 255)
    assert torch.equal(sample["seg"], torch.from_numpy(label_id_lookup(255)[arrays["label_ids"]]))
    baseline, fx = CITYSCAPES_CAMERA["baseline"], CITYSCAPES_CAMERA["fx"]
    assert sample["depth"][0, 0, :3].tolist() == pytest.approx([0.0, 0.0, baseline * fx])
    expected_depth = disparity_to_depth(arrays["disparity"], baseline, fx)
    torch.testing.assert_close(sample["depth"][0], torch.from_numpy(expected_depth))
    capped = DATASETS.build({"type": "cityscapes", "root": tmp_path, "max_depth": 80.0}, split="train")[2]["depth"]
    assert torch.equal(capped, torch.where(sample["depth"] > 80, 0.0, sample["depth"])) and (capped == 0).sum() > 3
    small = DATASETS.build({"type": "cityscapes", "root": tmp_path, "size": [12, 16]}, split="val")[0]
    assert [tuple(small[key].shape) for key in ("image", "seg", "depth")] == [(3, 12, 16), (12, 16), (1, 12, 16)]
    full = written["frankfurt/frankfurt_000000_000294"]
    assert set(small["seg"].unique().tolist()) <= set(label_id_lookup(255)[full["label_ids"]].ravel().tolist())


def test_cityscapes_packages_and_errors(tmp_path):
    write_cityscapes(tmp_path)
    shutil.rmtree(tmp_path / "disparity")
    with pytest.raises(ValueError, match="disparity of split 'train'.*expected a directory at .*disparity/train"):
        DATASETS.build({"type": "cityscapes", "root": tmp_path}, split="train")
    seg_only = DATASETS.build({"type": "cityscapes", "root": tmp_path, "targets": ["seg"]}, split="train")
    assert sorted(seg_only[0]) == ["image", "seg"]
    with pytest.raises(ValueError, match="targets .*'normals'.*invalid"):
        DATASETS.build({"type": "cityscapes", "root": tmp_path, "targets": ["normals"]}, split="train")
    bad_ids = np.full((24, 32), 40, np.uint8)
    write_image(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", bad_ids)
    with pytest.raises(ValueError, match=r"aachen_000000_000019_gtFine_labelIds\.png: expected .* label ids 0\.\.33"):
        seg_only[0]


def test_cityscapes_verify_collects_missing_files(tmp_path):
    write_cityscapes(tmp_path)
    (tmp_path / "camera/train/aachen/aachen_000001_000019_camera.json").write_text(json.dumps({"extrinsic": {}}))
    (tmp_path / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png").unlink()
    report = DATASETS.build({"type": "cityscapes", "root": tmp_path}, split="train").verify()
    assert len(report.problems) == 2
    assert "extrinsic.baseline" in report.problems[0] and "aachen_000001_000019_camera.json" in report.problems[0]
    assert "bochum_000000_000313_gtFine_labelIds.png" in report.problems[1]


# --- folder ---------------------------------------------------------------------------------------------------


def folder_cfg(root, **kwargs):
    return {"type": "folder", "root": root, "num_classes": 5, "depth_scale": 1000,
            "splits": {"train": "train.txt", "val": "val.txt"}, **kwargs}


def test_folder_round_trip_every_format(tmp_path):
    written = write_folder(tmp_path)
    train = DATASETS.build(folder_cfg(tmp_path), split="train")
    assert train.names == ["img0", "img1", "img2", "img3"] and train.targets == ("seg", "depth", "normals")
    assert train.class_names == [f"class {i}" for i in range(5)]
    for index, stem in enumerate(train.names):
        sample, arrays = train[index], written[stem]
        tolerance = 0.05 if stem == "img1" else 1e-6  # JPEG
        torch.testing.assert_close(sample["image"], chw(arrays["image"]) / 255, atol=tolerance, rtol=0)
        assert torch.equal(sample["seg"], torch.from_numpy(arrays["seg"]))
        torch.testing.assert_close(sample["depth"][0], torch.from_numpy(arrays["depth"]).float())
        atol = 0.02 if stem == "img0" else 1e-6  # 8-bit PNG normals
        torch.testing.assert_close(sample["normals"], chw(arrays["normals"]), atol=atol, rtol=0)


def test_folder_partial_labels_and_no_splits(tmp_path):
    write_folder(tmp_path)
    val = DATASETS.build(folder_cfg(tmp_path), split="val")
    img4, img5 = val[0], val[1]
    assert (img4["depth"] == 0).all() and (img4["seg"] != 255).any()
    assert (img5["seg"] == 255).all() and img5["seg"].dtype == torch.int64 and (img5["depth"] > 0).any()
    report = val.verify()
    assert report.ok, report
    assert report.counts == {"samples without a depth label (filled with invalid values)": 1,
                             "samples without a seg label (filled with invalid values)": 1}
    everything = DATASETS.build(folder_cfg(tmp_path, splits=None, class_names=list("abcde")), split="test")
    assert len(everything) == 6 and everything.class_names == list("abcde")


def test_folder_errors(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(ValueError, match="set num_classes or class_names"):
        DATASETS.build(folder_cfg(tmp_path, num_classes=None), split="train")
    with pytest.raises(ValueError, match="holds PNG depth: set depth_scale"):
        DATASETS.build(folder_cfg(tmp_path, depth_scale=None), split="train")
    with pytest.raises(ValueError, match="num_classes=5 but 2 class_names"):
        DATASETS.build(folder_cfg(tmp_path, class_names=["a", "b"]), split="train")
    with pytest.raises(ValueError, match="folder split 'test' has no stem list"):
        DATASETS.build(folder_cfg(tmp_path), split="test")
    (tmp_path / "val.txt").write_text("img4\nghost\n")
    with pytest.raises(ValueError, match=r"val\.txt: 1 stem\(s\) have no image .*: ghost"):
        DATASETS.build(folder_cfg(tmp_path), split="val")
    with pytest.raises(ValueError, match="class ids 3, 4 are outside the classes 0..2 and ignore 255"):
        DATASETS.build(folder_cfg(tmp_path, num_classes=3), split="train")[0]


def test_folder_verify_reports_all_problems_and_sizes(tmp_path):
    write_folder(tmp_path)
    write_image(tmp_path / "seg/img1.png", np.zeros((10, 10), np.uint8))
    write_image(tmp_path / "seg/img3.png", np.zeros((24, 32, 3), np.uint8))
    write_image(tmp_path / "images/img2.png", np.zeros((30, 40, 3), np.uint8))
    write_image(tmp_path / "seg/img2.png", np.zeros((30, 40), np.uint8))
    dataset = DATASETS.build(folder_cfg(tmp_path, targets=["seg"]), split="train")
    report = dataset.verify()
    problems = "\n".join(report.problems)
    assert len(report.problems) == 3, problems
    assert "seg/img1.png: seg is 10x10 but the image" in problems and "img1.jpg is 24x32" in problems
    assert "seg/img3.png: label PNGs hold class ids in one channel" in problems
    assert "different sizes" in problems and report.sizes == {(24, 32): 1, (30, 40): 1}
    resized = DATASETS.build(folder_cfg(tmp_path, targets=["seg"], size=[24, 32]), split="val").verify()
    assert resized.ok and resized.sizes == {(24, 32): 2}


def test_verify_works_on_any_dataset():
    from multitask_deeplab.data.verify import verify_dataset

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            if index == 1:
                raise ValueError("broken sample")
            return {"image": torch.zeros(3, 4, 5)}

    report = verify_dataset(Plain())
    assert report.lines() == ["Plain: 2 samples, image sizes 4x5 (1), 1 problem(s)", "  problem: sample 1: broken sample"]
