"""NYUD-v2 for multi-task learning, in the layout of ASTMT and Multi-Task-Learning-PyTorch (``NYUD_MT``).

Layout (the ``NYUD_MT.tgz`` archive those code bases download, unpacked; 795 train / 654 val images, 480 x 640)::

    <root>/images/<id>.jpg
    <root>/segmentation/<id>.png      40 classes of Gupta et al. as 1 .. 40, 0 = unlabelled
    <root>/depth/<id>.npy             float metres, H x W (or H x W x 1), 0 = missing
    <root>/normals/<id>.npy           float H x W x 3 (or 3 x H x W) surface normals, all-zero = unknown
    <root>/edge/<id>.npy              float H x W boundary map, >= 0.5 = boundary
    <root>/gt_sets/{train,val}.txt    one image id per line

Labels ``1 .. 40`` become classes ``0 .. 39`` and ``0`` becomes ``ignore_index``, as those code bases do ("we ignore
the background class as other related works"). The release has no test split: give ``test_split: val``. For the
MTAN / LibMTL ``.npy`` release (13 classes) use ``nyuv2``; for the official labelled ``.mat``, ``nyuv2_mat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from multitask_deeplab.data.base import DATASETS, IGNORE_INDEX
from multitask_deeplab.data.nyuv2 import NYU40_CLASSES
from multitask_deeplab.data.targets import standard_target_kinds
from multitask_deeplab.data.verify import (
    FileDataset,
    Sample,
    channels_first,
    parse_size,
    parse_targets,
    read_label_png,
    read_npy,
    read_rgb,
    read_stems,
    require_dir,
)

FOLDERS = {"image": "images", "seg": "segmentation", "depth": "depth", "normals": "normals", "edges": "edge"}
SUFFIXES = {"image": ".jpg", "seg": ".png", "depth": ".npy", "normals": ".npy", "edges": ".npy"}


@DATASETS.register("nyud")
class NYUD(FileDataset):
    """NYUD-v2 with 40-class segmentation, depth, normals and edges (see the module docstring for the layout).

    Args:
        split: A split file of ``gt_sets`` (``train`` or ``val``).
        root: The ``NYUD_MT`` folder.
        targets: Which of "seg", "depth", "normals", "edges" to load; default all.
        size: Optional [h, w] to resize on load.
        ignore_index: Label of unlabelled pixels.
    """

    def __init__(self, split: str, *, root: str | Path, targets: Sequence[str] | None = None,
                 size: Sequence[int] | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        self.split, self.root = split, require_dir(Path(root).expanduser(), "nyud root")
        self.targets = parse_targets(targets, ("seg", "depth", "normals", "edges"), "nyud")
        self.size, self.ignore_index = parse_size(size), ignore_index
        self.class_names, self.num_classes = list(NYU40_CLASSES), len(NYU40_CLASSES)
        self.target_kinds = standard_target_kinds(self.targets, num_classes=self.num_classes, ignore_index=ignore_index,
                                                  class_names=self.class_names)
        for key in ("image", *self.targets):
            require_dir(self.root / FOLDERS[key], f"nyud {key} folder")
        self.names = read_stems(self.root / "gt_sets" / f"{split}.txt", f"nyud split file of {split!r}")
        self._check_not_empty(self.root / "gt_sets")

    def read(self, index: int) -> tuple[Sample, dict[str, Path]]:
        name = self.names[index]
        files = {key: self.root / FOLDERS[key] / f"{name}{SUFFIXES[key]}" for key in ("image", *self.targets)}
        sample = {"image": read_rgb(files["image"])}
        if "seg" in files:
            labels = read_label_png(files["seg"])
            sample["seg"] = torch.from_numpy(np.where(labels == 0, self.ignore_index, labels - 1))
        if "depth" in files:
            sample["depth"] = channels_first(read_npy(files["depth"]), 1, files["depth"])
        if "normals" in files:
            sample["normals"] = channels_first(read_npy(files["normals"]), 3, files["normals"])
        if "edges" in files:
            edges = channels_first(read_npy(files["edges"]), 1, files["edges"])
            if not torch.isfinite(edges).all():
                raise ValueError(f"{files['edges']}: edge maps must be finite numbers (>= 0.5 = boundary)")
            sample["edges"] = (edges >= 0.5).float()
        return sample, files
