"""PASCAL-Context and NYUD-v2 in the layouts of ASTMT / Multi-Task-Learning-PyTorch, read from fixtures written in those
formats (palette PNGs, MATLAB v5 structs, .npy); every bad file is named by ``mtdl data verify``. Training two steps on
them is in test_train_smoke.py (the recipes pascal_context_* and nyud_*)."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from fixtures_formats import NYUD_SPLITS, PASCAL_SPLITS, write_image, write_nyud, write_pascal_context

from multitask_deeplab.cli import main
from multitask_deeplab.data import DATASETS
from multitask_deeplab.data.boundaries import label_boundaries
from multitask_deeplab.tasks import EdgesTask, HumanPartsTask, SaliencyTask

pytest.importorskip("scipy")


@pytest.fixture
def pascal(tmp_path):
    return tmp_path, write_pascal_context(tmp_path)


@pytest.fixture
def nyud(tmp_path):
    return tmp_path, write_nyud(tmp_path)


def test_pascal_context_gives_the_five_targets_as_astmt_builds_them(pascal):
    root, written = pascal
    dataset = DATASETS.build({"type": "pascal_context", "root": str(root)}, split="train")
    assert dataset.names == PASCAL_SPLITS["train"] and dataset.num_classes == 21
    assert isinstance(dataset.target_kinds["edges"], EdgesTask) and isinstance(dataset.target_kinds["human_parts"], HumanPartsTask)
    assert isinstance(dataset.target_kinds["saliency"], SaliencyTask)
    for index, name in enumerate(dataset.names):
        sample, expected = dataset[index], written[name]
        assert torch.equal(sample["seg"], torch.from_numpy(expected["seg"]))
        assert torch.equal(sample["saliency"][0], torch.from_numpy(expected["saliency"]))
        assert torch.equal(sample["normals"], torch.from_numpy(expected["normals"]).permute(2, 0, 1))
        assert torch.equal(sample["edges"][0], label_boundaries(torch.from_numpy(expected["label_map"])))
        if expected["human_parts"] is None:  # no person with parts: no label, the task skips the image
            assert (sample["human_parts"] == 255).all()
        else:
            assert torch.equal(sample["human_parts"], torch.from_numpy(expected["human_parts"]))
    assert set(torch.unique(dataset[0]["human_parts"]).tolist()) == {0, 1, 2, 3, 6}, "head, torso, upper arm, lower leg"
    assert not dataset[0]["normals"][:, written[dataset.names[0]]["label_map"] == 2].any(), "aeroplane pixels: no normals"


def test_pascal_context_reads_the_voc12_semseg_first(pascal):
    root, written = pascal
    name = PASCAL_SPLITS["train"][0]
    other = np.zeros((32, 32), dtype=np.uint8)
    write_image(root / "semseg" / "pascal-context" / f"{name}.png", other)  # a second file: the VOC12 one wins
    dataset = DATASETS.build({"type": "pascal_context", "root": str(root), "targets": ["seg"]}, split="train")
    assert torch.equal(dataset[0]["seg"], torch.from_numpy(written[name]["seg"])) and set(dataset[0]) == {"image", "seg"}


def test_pascal_context_verify_names_every_bad_file(pascal, capsys):
    root, _ = pascal
    first, second, third = PASCAL_SPLITS["train"]
    (root / "human_parts" / f"{first}.mat").write_bytes(b"not a mat file")
    (root / "sal_distill" / f"{second}.png").unlink()
    write_image(root / "semseg" / "pascal-context" / f"{third}.png", np.full((32, 32), 30, dtype=np.uint8))
    recipe = root / "recipe.yaml"
    recipe.write_text(f"tasks: {{seg: {{kind: segmentation, num_classes: 21, head: {{type: deeplabv3}}}}}}\n"
                      f"data: {{type: pascal_context, root: {root}, num_workers: 0}}\n")
    assert main(["data", "verify", str(recipe)]) == 1
    printed = capsys.readouterr().out
    assert "3 problem(s)" in printed
    assert f"{first}: cannot read {root / 'human_parts' / first}.mat as a MATLAB v5 .mat file" in printed
    assert f"{second}: image file not found: expected a file at {root / 'sal_distill' / second}.png" in printed
    assert f"{third}: {root / 'semseg' / 'pascal-context' / third}.png: class ids 30 are outside the classes 0..20" in printed


def test_pascal_context_names_an_unknown_person_part_and_missing_scipy(pascal, monkeypatch):
    from fixtures_formats import mat_struct_array
    from scipy.io import savemat

    root, _ = pascal
    name = PASCAL_SPLITS["val"][0]
    mask = np.ones((32, 32), dtype=np.uint8)
    parts = mat_struct_array([{"part_name": "tail", "mask": mask}], ("part_name", "mask"))
    objects = mat_struct_array([{"class": "person", "class_ind": 15, "mask": mask, "parts": parts}], ("class", "class_ind", "mask", "parts"))
    savemat(root / "human_parts" / f"{name}.mat", {"anno": {"imname": name, "objects": objects}})
    dataset = DATASETS.build({"type": "pascal_context", "root": str(root), "targets": ["human_parts"]}, split="val")
    with pytest.raises(ValueError, match=r"human_parts/2008_000008.mat: unknown person part 'tail'"):
        dataset[0]
    real_import = builtins.__import__

    def no_scipy(module, *args, **kwargs):
        if module.startswith("scipy"):
            raise ImportError("No module named 'scipy'")
        return real_import(module, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ValueError, match=r'^PASCAL-Part annotation needs scipy to read MATLAB .mat files: pip install -e "\.\[mtl-benchmarks\]"$'):
        dataset[1]


def test_nyud_maps_labels_as_astmt_and_keeps_depth_normals_and_edges(nyud):
    root, written = nyud
    dataset = DATASETS.build({"type": "nyud", "root": str(root)}, split="val")
    assert dataset.names == NYUD_SPLITS["val"] and dataset.num_classes == 40 and dataset.class_names[0] == "wall"
    for index, name in enumerate(dataset.names):
        sample, expected = dataset[index], written[name]
        labels = torch.from_numpy(expected["segmentation"].astype(np.int64))
        assert torch.equal(sample["seg"], torch.where(labels == 0, 255, labels - 1)), "0 is unlabelled, 1..40 are 0..39"
        assert torch.equal(sample["depth"][0], torch.from_numpy(expected["depth"]))
        assert torch.equal(sample["normals"], torch.from_numpy(expected["normals"]).permute(2, 0, 1))
        assert torch.equal(sample["edges"][0], torch.from_numpy(expected["edge"]))
    assert DATASETS.build({"type": "nyud", "root": str(root), "targets": ["depth"]}, split="train")[0].keys() == {"image", "depth"}


def test_nyud_verify_names_every_bad_file(nyud):
    root, _ = nyud
    first, second, third = NYUD_SPLITS["train"]
    (root / "depth" / f"{first}.npy").unlink()
    np.save(root / "edge" / f"{second}.npy", np.full((32, 32), np.nan, dtype=np.float32))
    write_image(root / "segmentation" / f"{third}.png", np.zeros((32, 32, 3), dtype=np.uint8))
    report = DATASETS.build({"type": "nyud", "root": str(root)}, split="train").verify()
    assert len(report.problems) == 3
    assert report.problems[0] == f"{first}: array file not found: expected a file at {root / 'depth' / first}.npy"
    assert report.problems[1] == f"{second}: {root / 'edge' / second}.npy: edge maps must be finite numbers (>= 0.5 = boundary)"
    assert report.problems[2].startswith(f"{third}: {root / 'segmentation' / third}.png: label PNGs hold class ids in one channel")


def test_a_missing_split_file_or_folder_is_one_line(tmp_path):
    write_nyud(tmp_path)
    with pytest.raises(ValueError, match=r"nyud split file of 'test' not found: expected a file at .*gt_sets/test.txt"):
        DATASETS.build({"type": "nyud", "root": str(tmp_path)}, split="test")
    with pytest.raises(ValueError, match=r"pascal_context image folder not found: expected a directory at .*JPEGImages"):
        DATASETS.build({"type": "pascal_context", "root": str(tmp_path)}, split="train")
