"""Your own data: a folder of images with any of segmentation, depth and normals labels, matched by file stem.

Layout::

    <root>/images/<stem>.{png,jpg,jpeg}
    <root>/seg/<stem>.png         class ids, 8- or 16-bit grey or palette PNG (ignore_index = unknown)
    <root>/depth/<stem>.png|.npy  16-bit PNG of metres * depth_scale, or float .npy in metres; 0 = invalid
    <root>/normals/<stem>.npy|.png  float 3xHxW or HxWx3, or RGB PNG of (n + 1) / 2 * 255; all-zero = invalid
    <root>/train.txt, val.txt ... optional stem lists, named by ``splits``

Normals use the camera frame of this package: x right, y down, z forward (n.z < 0 on visible surfaces).
A target folder may lack some samples' files: those samples get invalid labels for that task (partial labels).
Without ``splits`` every split holds all images (fine for overfitting checks; give ``splits`` for a real
held-out evaluation). A split file lists one stem (or file name) per line; blank lines and ``#`` comments skip.
"""

from __future__ import annotations

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
    read_label_png,
    read_npy,
    read_png,
    read_png16,
    read_rgb,
    read_stems,
    require_dir,
    resolve,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = {"seg": (".png",), "depth": (".png", ".npy"), "normals": (".npy", ".png")}


def _index_files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Stem -> file for the files of ``folder`` with one of ``suffixes``; two files with one stem raise."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in suffixes:
            if path.stem in files:
                raise ValueError(f"{folder}: {files[path.stem].name} and {path.name} share the stem {path.stem!r}; "
                                 "keep one file per stem")
            files[path.stem] = path
    return files


def decode_normals_png(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB of (n + 1) / 2 * 255 -> 3xHxW unit normals; black or near-zero pixels -> 0 (invalid)."""
    normals = rgb.astype(np.float32).transpose(2, 0, 1) / 255.0 * 2.0 - 1.0
    length = np.linalg.norm(normals, axis=0)
    valid = (rgb.max(axis=-1) > 0) & (length > 0.5)
    return np.where(valid, normals / np.maximum(length, 1e-6), 0.0).astype(np.float32)


@DATASETS.register("folder")
class Folder(FileDataset):
    """Images with optional seg / depth / normals labels from a folder (see the module docstring for the layout).

    Args:
        split: Split name; a key of ``splits`` when given.
        root: The dataset folder.
        num_classes: Number of segmentation classes (needed with ``seg/`` unless ``class_names`` is given).
        class_names: Segmentation class names; their count is ``num_classes``.
        depth_scale: PNG depth value per metre (1000 for millimetres); needed when depth PNGs exist.
        splits: Split name -> text file of stems, relative to ``root``, e.g. {train: train.txt, val: val.txt}.
        targets: Which of "seg", "depth", "normals" to load; default every label folder that exists.
        size: Optional [h, w] to resize on load (needed when images differ in size).
        ignore_index: Label of unknown pixels.
    """

    def __init__(self, split: str, *, root: str | Path, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, depth_scale: float | None = None,
                 splits: Mapping[str, str] | None = None, targets: Sequence[str] | None = None,
                 size: Sequence[int] | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        self.split, self.root = split, require_dir(Path(root).expanduser(), "folder dataset root")
        self.size, self.ignore_index, self.depth_scale = parse_size(size), ignore_index, depth_scale
        images = _index_files(require_dir(self.root / "images", "folder images"), IMAGE_SUFFIXES)
        if targets is None:
            targets = [key for key in LABEL_SUFFIXES if (self.root / key).is_dir()]
        unknown = [key for key in targets if key not in LABEL_SUFFIXES]
        if unknown:
            raise ValueError(f"folder targets {unknown} unknown: choose from {list(LABEL_SUFFIXES)}")
        self.targets = tuple(key for key in LABEL_SUFFIXES if key in targets)
        self.labels = {key: _index_files(require_dir(self.root / key, f"folder {key} labels"), LABEL_SUFFIXES[key])
                       for key in self.targets}
        self.class_names, self.num_classes = self._classes(num_classes, class_names)
        self.target_kinds = standard_target_kinds(self.targets, num_classes=self.num_classes, ignore_index=ignore_index,
                                                  class_names=self.class_names or None)
        if depth_scale is None and any(p.suffix.lower() == ".png" for p in self.labels.get("depth", {}).values()):
            raise ValueError(f"{self.root / 'depth'} holds PNG depth: set depth_scale (PNG value per metre, "
                             "e.g. 1000 for millimetres) in the data section")
        if depth_scale is not None and not depth_scale > 0:
            raise ValueError(f"depth_scale must be positive, got {depth_scale!r}")
        self.images = images
        self.names = self._split_stems(images, splits)
        self._check_not_empty(self.root / "images")

    def _classes(self, num_classes: int | None, class_names: Sequence[str] | None) -> tuple[list[str], int | None]:
        if class_names is not None:
            if num_classes is not None and num_classes != len(class_names):
                raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names are given; "
                                 "give one of them or make them agree")
            return list(class_names), len(class_names)
        if num_classes is not None:
            return [f"class {i}" for i in range(num_classes)], num_classes
        if "seg" in self.targets:
            raise ValueError(f"{self.root / 'seg'} holds segmentation labels: set num_classes or class_names")
        return [], None

    def _split_stems(self, images: dict[str, Path], splits: Mapping[str, str] | None) -> list[str]:
        if splits is None:
            return sorted(images, key=natural_key)
        if self.split not in splits:
            raise ValueError(f"folder split {self.split!r} has no stem list: splits gives {sorted(splits)}")
        path = resolve(self.root, splits[self.split])
        stems = [Path(line).stem if Path(line).suffix.lower() in IMAGE_SUFFIXES else line for line in read_stems(path, f"split file of {self.split!r}")]
        missing = [stem for stem in stems if stem not in images]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"{path}: {len(missing)} stem(s) have no image in {self.root / 'images'}: {shown}")
        return stems

    def read(self, index: int) -> tuple[Sample, dict[str, Path]]:
        stem = self.names[index]
        files = {"image": self.images[stem]}
        files.update({key: self.labels[key][stem] for key in self.targets if stem in self.labels[key]})
        sample = {"image": read_rgb(files["image"])}
        if "seg" in files:
            sample["seg"] = torch.from_numpy(read_label_png(files["seg"]))
        if "depth" in files:
            path = files["depth"]
            depth = (channels_first(read_npy(path), 1, path) if path.suffix.lower() == ".npy"
                     else torch.from_numpy(read_png16(path) / self.depth_scale).float()[None])
            sample["depth"] = depth
        if "normals" in files:
            sample["normals"] = self._read_normals(files["normals"])
        return sample, files

    @staticmethod
    def _read_normals(path: Path) -> torch.Tensor:
        if path.suffix.lower() == ".npy":
            return channels_first(read_npy(path), 3, path)
        rgb = read_png(path)
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"{path}: normals PNGs must be 8-bit RGB, got {rgb.dtype} with shape {rgb.shape}")
        return torch.from_numpy(decode_normals_png(rgb))
