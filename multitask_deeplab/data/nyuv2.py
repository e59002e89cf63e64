"""NYU Depth v2: the preprocessed ``.npy`` release (``"nyuv2"``) and the official labelled ``.mat`` (``"nyuv2_mat"``).

``"nyuv2"`` reads the layout used by MTAN, LibMTL, Auto-lambda and Nash-MTL (13 classes, 288x384)::

    <root>/train/{image,label,depth,normal}/0.npy, 1.npy, ...
    <root>/val/{image,label,depth,normal}/0.npy, ...

That release has no separate test set: split ``"test"`` reads the ``val`` folder, as those papers do.

``"nyuv2_mat"`` reads ``nyu_depth_v2_labeled.mat`` (1449 frames, 480x640, HDF5 / MATLAB v7.3) with h5py
(``pip install -e ".[nyuv2-mat]"``). It has no normals. The standard 795/654 split comes as text files of
1-based frame indices; make them from the official ``splits.mat`` once with scipy::

    python -c "import numpy as np, scipy.io as io; m = io.loadmat('splits.mat');
        np.savetxt('train.txt', m['trainNdxs'], fmt='%d'); np.savetxt('test.txt', m['testNdxs'], fmt='%d')"

and the 894 -> 40 class mapping of Gupta et al. from ``classMapping40.mat`` the same way::

    python -c "import numpy as np, scipy.io as io;
        np.savetxt('mapping40.txt', io.loadmat('classMapping40.mat')['mapClass'].ravel(), fmt='%d')"
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from multitask_deeplab.data.base import DATASETS, IGNORE_INDEX
from multitask_deeplab.data.targets import standard_target_kinds
from multitask_deeplab.data.verify import (
    FileDataset,
    Sample,
    channels_first,
    natural_key,
    parse_size,
    parse_targets,
    read_npy,
    require_dir,
    require_file,
    resolve,
)

NYU13_CLASSES = ["bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa",
                 "table", "tv", "wall", "window"]
NYU40_CLASSES = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                 "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
                 "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
                 "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
                 "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop"]
NYU40_TO_13 = np.array([0, 12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7, 3, 2, 6, 11,
                        7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7])
"""1-based 40-class id -> 1-based 13-class id (Couprie et al. 2013; 0 = unlabelled), index 0 included."""

_NPY_FOLDERS = {"image": "image", "seg": "label", "depth": "depth", "normals": "normal"}


@DATASETS.register("nyuv2")
class NYUv2(FileDataset):
    """NYUv2 in the preprocessed ``.npy`` layout: 13 classes, depth in metres, surface normals.

    Label ``-1`` (unknown) becomes ``ignore_index``; depth ``0`` is missing.

    Args:
        split: "train", "val", or "test" (reads the val folder: the release has no test set).
        root: Folder holding ``train/`` and ``val/``.
        targets: Which of "seg", "depth", "normals" to load; default all.
        size: Optional [h, w] to resize on load.
        ignore_index: Label of unknown pixels.
    """

    def __init__(self, split: str, *, root: str | Path, targets: Sequence[str] | None = None,
                 size: Sequence[int] | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        folders = {"train": "train", "val": "val", "test": "val"}
        if split not in folders:
            raise ValueError(f"nyuv2 split {split!r} unknown: use one of {sorted(folders)}")
        self.split, self.root = split, require_dir(Path(root).expanduser(), "nyuv2 root")
        self.targets = parse_targets(targets, ("seg", "depth", "normals"), "nyuv2")
        self.size, self.ignore_index = parse_size(size), ignore_index
        self.class_names, self.num_classes = list(NYU13_CLASSES), len(NYU13_CLASSES)
        self.target_kinds = standard_target_kinds(self.targets, num_classes=self.num_classes, ignore_index=ignore_index,
                                                  class_names=self.class_names)
        split_dir = require_dir(self.root / folders[split], f"nyuv2 split {split!r}")
        self.dirs = {key: require_dir(split_dir / _NPY_FOLDERS[key], f"nyuv2 {key} folder")
                     for key in ("image", *self.targets)}
        self.names = sorted((p.stem for p in self.dirs["image"].glob("*.npy")), key=natural_key)
        self._check_not_empty(self.dirs["image"])

    def read(self, index: int) -> tuple[Sample, dict[str, Path]]:
        files = {key: folder / f"{self.names[index]}.npy" for key, folder in self.dirs.items()}
        sample = {"image": channels_first(read_npy(files["image"]), 3, files["image"])}
        if "seg" in files:
            sample["seg"] = _labels_from_float(read_npy(files["seg"]), files["seg"], self.ignore_index)
        if "depth" in files:
            sample["depth"] = channels_first(read_npy(files["depth"]), 1, files["depth"])
        if "normals" in files:
            sample["normals"] = channels_first(read_npy(files["normals"]), 3, files["normals"])
        return sample, files


def _labels_from_float(label: np.ndarray, path: Path, ignore_index: int) -> torch.Tensor:
    """HxW float labels with -1 = unknown -> int64 with ``ignore_index``; non-integers raise ``ValueError``."""
    label = np.squeeze(label)
    if label.ndim != 2:
        raise ValueError(f"{path}: expected an HxW label array, got shape {label.shape}")
    if not np.array_equal(label, np.round(label)):  # NaN fails too
        raise ValueError(f"{path}: label values must be whole numbers (class ids, -1 for unknown)")
    label = label.astype(np.int64)
    return torch.from_numpy(np.where(label == -1, ignore_index, label))


@DATASETS.register("nyuv2_mat")
class NYUv2Mat(FileDataset):
    """NYUv2 from the official ``nyu_depth_v2_labeled.mat``: RGB, depth in metres, 40 or 13 classes.

    The file stores MATLAB's column-major arrays, which h5py reads transposed: images N x 3 x W x H, depths and
    labels N x W x H; they are transposed back here. Raw labels (1..894, 0 = unlabelled) map to the 40 classes
    of Gupta et al. through ``mapping_file``, then optionally to the 13 classes of Couprie et al.

    Args:
        split: A key of ``splits`` ("train", "val" or "test").
        root: Folder holding the .mat file; relative ``splits`` and ``mapping_file`` paths are taken from here.
        splits: Split name -> text file of 1-based frame indices, e.g. {train: train.txt, val: test.txt}.
        mapping_file: .npy or .txt array of 894 ints (40-class id of raw labels 1..894) or 895 (with label 0 first).
        classes: 40 or 13.
        file: The .mat file name inside ``root``.
        targets: Which of "seg", "depth" to load; default both.
        size: Optional [h, w] to resize on load.
        ignore_index: Label of unlabelled pixels.
    """

    def __init__(self, split: str, *, root: str | Path, splits: Mapping[str, str], mapping_file: str | Path,
                 classes: int = 40, file: str = "nyu_depth_v2_labeled.mat", targets: Sequence[str] | None = None,
                 size: Sequence[int] | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        try:
            import h5py
        except ImportError as error:
            raise ValueError('nyuv2_mat needs h5py: pip install -e ".[nyuv2-mat]"') from error
        if classes not in (13, 40):
            raise ValueError(f"nyuv2_mat classes={classes!r} unsupported: use 40 or 13")
        if split not in splits:
            raise ValueError(f"nyuv2_mat split {split!r} has no index file: splits gives {sorted(splits)}")
        self.split, self.root = split, require_dir(Path(root).expanduser(), "nyuv2_mat root")
        self.path = require_file(self.root / file, "NYUv2 labelled .mat")
        self.targets = parse_targets(targets, ("seg", "depth"), "nyuv2_mat")
        self.size, self.ignore_index = parse_size(size), ignore_index
        self.class_names = list(NYU40_CLASSES if classes == 40 else NYU13_CLASSES)
        self.num_classes = classes
        self.target_kinds = standard_target_kinds(self.targets, num_classes=classes, ignore_index=ignore_index,
                                                  class_names=self.class_names)
        self.lut = self._lookup_table(resolve(self.root, mapping_file), classes, ignore_index)
        with h5py.File(self.path, "r") as mat:
            missing = [k for k in ("images", "depths", "labels") if k not in mat]
            if missing:
                raise ValueError(f"{self.path}: datasets {missing} missing; is this nyu_depth_v2_labeled.mat?")
            count = mat["images"].shape[0]
        self.frames = _read_indices(resolve(self.root, splits[split]), count)
        self.names = [f"frame {i + 1}" for i in self.frames]
        self._check_not_empty(self.path)
        self._mat, self._pid = None, os.getpid()

    @staticmethod
    def _lookup_table(path: Path, classes: int, ignore_index: int) -> np.ndarray:
        """Raw label (0..894) -> 0-based class id or ``ignore_index``."""
        table = (read_npy(path).ravel() if path.suffix == ".npy" else _read_text_ints(path)).astype(np.int64)
        if table.size == 894:
            table = np.concatenate([[0], table])
        if table.size != 895 or table.min() < 0 or table.max() > 40:
            raise ValueError(f"{path}: expected 894 (or 895 with label 0 first) 40-class ids in 0..40, got "
                             f"{table.size} values in {table.min()}..{table.max()}")
        if classes == 13:
            table = NYU40_TO_13[table]
        return np.where(table == 0, ignore_index, table - 1)

    def read(self, index: int) -> tuple[Sample, dict[str, Path]]:
        if self._mat is None or self._pid != os.getpid():  # opened lazily, once per DataLoader worker
            import h5py

            self._mat, self._pid = h5py.File(self.path, "r"), os.getpid()
        frame = self.frames[index]
        where = Path(f"{self.path} (frame {frame + 1})")
        image = np.asarray(self._mat["images"][frame]).transpose(0, 2, 1)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)}
        if "depth" in self.targets:
            depth = np.asarray(self._mat["depths"][frame], dtype=np.float32).T
            sample["depth"] = torch.from_numpy(np.ascontiguousarray(depth))[None]
        if "seg" in self.targets:
            raw = np.asarray(self._mat["labels"][frame]).T.astype(np.int64)
            if raw.min() < 0 or raw.max() >= self.lut.size:
                raise ValueError(f"{where}: raw labels span {raw.min()}..{raw.max()}, expected 0..894")
            sample["seg"] = torch.from_numpy(self.lut[raw])
        return sample, dict.fromkeys(("image", *self.targets), where)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mat": None}  # h5py handles do not cross process boundaries


def _read_text_ints(path: Path) -> np.ndarray:
    require_file(path, "index/mapping file")
    try:
        return np.loadtxt(path, dtype=np.float64, ndmin=1, comments="#").ravel()
    except ValueError as error:
        raise ValueError(f"{path}: expected whitespace-separated integers: {error}") from error


def _read_indices(path: Path, count: int) -> list[int]:
    """1-based frame indices from a text file -> 0-based, checked against the number of frames."""
    values = _read_text_ints(path)
    if not np.array_equal(values, np.round(values)) or values.min(initial=1) < 1 or values.max(initial=1) > count:
        raise ValueError(f"{path}: frame indices must be whole numbers in 1..{count} (1-based, as in splits.mat)")
    return [int(v) - 1 for v in values]
