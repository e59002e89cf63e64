"""PASCAL-Context for multi-task learning, in the layout of ASTMT and Multi-Task-Learning-PyTorch (``PASCAL_MT``).

Layout (the ``PASCAL_MT.tgz`` archive those code bases download, unpacked)::

    <root>/JPEGImages/<id>.jpg
    <root>/ImageSets/Context/{train,val}.txt          one image id per line (4998 train, 5105 val)
    <root>/semseg/VOC12/<id>.png or semseg/pascal-context/<id>.png   21 classes (VOC's 20 + background), 255 unknown
    <root>/human_parts/<id>.mat                        PASCAL-Part annotation struct ``anno`` (MATLAB v5)
    <root>/sal_distill/<id>.png                        distilled saliency, 8-bit grey
    <root>/normals_distill/<id>.png                    distilled surface normals, RGB of (n + 1) / 2 * 255
    <root>/pascal-context/trainval/<id>.mat            the PASCAL-Context label map ``LabelMap`` (459 classes)

Targets, as those code bases build them:

- ``seg``: the semseg PNG (the VOC12 file when there is one).
- ``human_parts``: the parts of every ``person`` object (``class_ind`` 15) with parts, grouped into the 6 parts of
  :data:`~multitask_deeplab.tasks.human_parts.HUMAN_PART_NAMES` (0 = background); an image without such a person
  has no label (its target is unknown everywhere), so the task skips it.
- ``saliency``: the distilled map thresholded at 0.5.
- ``normals``: ``2 * png / 255 - 1``, kept only on pixels whose ``LabelMap`` class is one of the
  :data:`NORMALS_CLASSES` (elsewhere unknown).
- ``edges``: the thinned boundaries of ``LabelMap``, ``thin(|Laplacian(LabelMap)| > 0)``.

The ``.mat`` files need scipy (``pip install -e ".[mtl-benchmarks]"``). The semantic labels are the 21 classes those code
bases train and score (not the 59-class PASCAL-Context benchmark of the segmentation literature).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from multitask_deeplab.data.base import DATASETS, IGNORE_INDEX
from multitask_deeplab.data.boundaries import label_boundaries
from multitask_deeplab.data.matlab import read_mat
from multitask_deeplab.data.targets import standard_target_kinds
from multitask_deeplab.data.verify import (
    FileDataset,
    Sample,
    parse_size,
    parse_targets,
    read_label_png,
    read_png,
    read_rgb,
    read_stems,
    require_dir,
)

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
PERSON_CLASS = 15
"""PASCAL-Part's ``class_ind`` of people."""
HUMAN_PARTS = {
    1: ("hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow", "reye"),
    2: ("neck", "torso"),
    3: ("luarm", "ruarm"),
    4: ("llarm", "rlarm", "lhand", "rhand"),
    5: ("luleg", "ruleg"),
    6: ("llleg", "rlleg", "lfoot", "rfoot"),
}
"""Part id -> PASCAL-Part's person part names: head, torso, upper arms, lower arms, upper legs, lower legs."""
PART_IDS = {name: part for part, names in HUMAN_PARTS.items() for name in names}
NORMALS_CLASSES = frozenset([
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51, 53, 55, 56, 59,
    61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107, 111, 113, 115, 122, 124, 135,
    141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215,
    216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272,
    273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323, 329,
    330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405,
    407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457,
])  # fmt: skip
"""The 170 PASCAL-Context classes whose distilled normals count: those whose name is also an NYUv2 class name (the
distilling model learnt normals on NYUv2), plus ``tvmonitor``, as ASTMT's ``normals_valid_classes``."""
TARGETS = ("seg", "human_parts", "saliency", "normals", "edges")


@DATASETS.register("pascal_context")
class PascalContext(FileDataset):
    """PASCAL-Context with its five multi-task labels (see the module docstring for the layout and the targets).

    Args:
        split: A split file of ``ImageSets/Context`` (``train`` or ``val``; the release has no test split).
        root: The ``PASCAL_MT`` folder.
        targets: Which of "seg", "human_parts", "saliency", "normals", "edges" to load; default all.
        size: Optional [h, w] to resize on load: the images differ in size (the papers train and test at 512 x 512).
        ignore_index: Label of unknown pixels of ``seg`` and ``human_parts``.
    """

    def __init__(self, split: str, *, root: str | Path, targets: Sequence[str] | None = None,
                 size: Sequence[int] | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        self.split, self.root = split, require_dir(Path(root).expanduser(), "pascal_context root")
        self.targets = parse_targets(targets, TARGETS, "pascal_context")
        self.size, self.ignore_index = parse_size(size), ignore_index
        self.class_names, self.num_classes = list(VOC_CLASSES), len(VOC_CLASSES)
        self.target_kinds = standard_target_kinds(self.targets, num_classes=self.num_classes, ignore_index=ignore_index,
                                                  class_names=self.class_names)
        folders = {"image": "JPEGImages", "human_parts": "human_parts", "saliency": "sal_distill",
                   "normals": "normals_distill", "label_map": "pascal-context/trainval", "seg": "semseg"}
        needed = [key for key in self.targets if key != "edges"]
        if {"normals", "edges"} & set(self.targets):
            needed.append("label_map")  # normals are masked by it, edges derived from it
        for key in ("image", *needed):
            require_dir(self.root / folders[key], f"pascal_context {key} folder")
        self.names = read_stems(self.root / "ImageSets" / "Context" / f"{split}.txt", f"pascal_context split file of {split!r}")
        self._check_not_empty(self.root / "ImageSets" / "Context")

    def files(self, index: int) -> dict[str, Path]:
        """The files of sample ``index``: the image and the files its targets are read from."""
        name, root = self.names[index], self.root
        files = {"image": root / "JPEGImages" / f"{name}.jpg"}
        if "seg" in self.targets:
            voc = root / "semseg" / "VOC12" / f"{name}.png"
            files["seg"] = voc if voc.is_file() else root / "semseg" / "pascal-context" / f"{name}.png"
        if "human_parts" in self.targets:
            files["human_parts"] = root / "human_parts" / f"{name}.mat"
        if "saliency" in self.targets:
            files["saliency"] = root / "sal_distill" / f"{name}.png"
        if "normals" in self.targets:
            files["normals"] = root / "normals_distill" / f"{name}.png"
        if "normals" in self.targets or "edges" in self.targets:
            files["label_map"] = root / "pascal-context" / "trainval" / f"{name}.mat"
        if "edges" in self.targets:
            files["edges"] = files["label_map"]
        return files

    def read(self, index: int) -> tuple[Sample, dict[str, Path]]:
        files = self.files(index)
        sample = {"image": read_rgb(files["image"])}
        label_map = _read_label_map(files["label_map"]) if "label_map" in files else None
        if "seg" in files:
            sample["seg"] = torch.from_numpy(read_label_png(files["seg"]))
        if "human_parts" in files and (parts := _read_human_parts(files["human_parts"])) is not None:
            sample["human_parts"] = torch.from_numpy(parts)
        if "saliency" in files:
            sample["saliency"] = torch.from_numpy((_read_grey(files["saliency"]) / 255.0 > 0.5).astype(np.float32))[None]
        if "normals" in files:
            sample["normals"] = _read_normals(files["normals"], label_map, files["label_map"])
        if "edges" in files:
            sample["edges"] = label_boundaries(torch.from_numpy(label_map))[None]
        return sample, {key: path for key, path in files.items() if key != "label_map"}


def _read_grey(path: Path) -> np.ndarray:
    grey = read_png(path)
    if grey.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel (grey) PNG, got shape {grey.shape}")
    return grey.astype(np.float64)


def _read_label_map(path: Path) -> np.ndarray:
    """PASCAL-Context's ``LabelMap``: H x W int64 class ids (0 .. 459)."""
    label_map = np.asarray(read_mat(path, "PASCAL-Context label map", needs="LabelMap")["LabelMap"])
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"{path}: LabelMap must be an H x W array of integer class ids, got {label_map.dtype} {label_map.shape}")
    return label_map.astype(np.int64)


def _read_normals(path: Path, label_map: np.ndarray, label_path: Path) -> torch.Tensor:
    """The distilled normals on the pixels of :data:`NORMALS_CLASSES` (zero, i.e. unknown, elsewhere)."""
    rgb = read_png(path)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{path}: normals PNGs must be 8-bit RGB, got {rgb.dtype} with shape {rgb.shape}")
    if label_map.shape != rgb.shape[:2]:
        raise ValueError(f"{path} is {rgb.shape[0]}x{rgb.shape[1]} but its label map {label_path} is "
                         f"{label_map.shape[0]}x{label_map.shape[1]}")
    normals = 2.0 * rgb.astype(np.float32) / 255.0 - 1.0
    keep = np.isin(label_map, list(NORMALS_CLASSES))
    return torch.from_numpy(np.where(keep[..., None], normals, 0.0).astype(np.float32).transpose(2, 0, 1).copy())


def _field(record: np.ndarray, name: str, path: Path) -> np.ndarray:
    if record.dtype.names is None or name not in record.dtype.names:
        raise ValueError(f"{path}: the PASCAL-Part struct has no field {name!r} (fields: {record.dtype.names})")
    return record[name]


def _read_human_parts(path: Path) -> np.ndarray | None:
    """The part labels of the people in a PASCAL-Part annotation, or ``None`` when it has no person with parts.

    ``anno.objects(k)`` holds ``class``, ``class_ind``, ``mask`` and ``parts``; each of ``parts(j)`` a
    ``part_name`` and a ``mask``. Later parts overwrite earlier ones where they overlap, as in ASTMT.
    """
    anno = read_mat(path, "PASCAL-Part annotation", needs="anno")["anno"]
    if anno.size != 1:
        raise ValueError(f"{path}: expected one 'anno' struct, got {anno.size}")
    objects = _field(anno.flat[0], "objects", path)
    target = None
    for obj in np.asarray(objects).ravel():
        if int(np.asarray(_field(obj, "class_ind", path)).ravel()[0]) != PERSON_CLASS:
            continue
        parts = np.asarray(_field(obj, "parts", path)).ravel()
        if parts.size == 0:
            continue
        mask = np.asarray(_field(obj, "mask", path))
        target = np.zeros(mask.shape, dtype=np.int64) if target is None else target
        for part in parts:
            name = str(np.asarray(_field(part, "part_name", path)).ravel()[0])
            if name not in PART_IDS:
                raise ValueError(f"{path}: unknown person part {name!r}; the 6-part grouping knows {', '.join(sorted(PART_IDS))}")
            part_mask = np.asarray(_field(part, "mask", path)).astype(bool)
            if part_mask.shape != target.shape:
                raise ValueError(f"{path}: part {name!r} mask is {part_mask.shape}, the object mask {target.shape}")
            target[part_mask] = PART_IDS[name]
    if target is None or not target.any():
        return None
    return target
