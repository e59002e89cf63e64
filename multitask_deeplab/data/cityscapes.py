"""Cityscapes: 19-class fine segmentation and depth from stereo disparity.

Layout (as downloaded: leftImg8bit, gtFine, disparity and camera packages unpacked into one root)::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    <root>/disparity/<split>/<city>/<city>_<seq>_<frame>_disparity.png
    <root>/camera/<split>/<city>/<city>_<seq>_<frame>_camera.json

Label ids map to the 19 train ids of cityscapesScripts' ``labels.py`` (everything else -> ignore). Disparity PNGs
are 16-bit: ``p > 0`` gives ``d = (p - 1) / 256`` pixels, ``p == 0`` is invalid; depth = baseline * fx / d metres
with ``extrinsic.baseline`` and ``intrinsic.fx`` from the camera json (``d == 0`` is invalid too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from multitask_deeplab.data.base import DATASETS, IGNORE_INDEX
from multitask_deeplab.data.targets import standard_target_kinds
from multitask_deeplab.data.verify import (
    FileDataset,
    Sample,
    natural_key,
    parse_size,
    parse_targets,
    read_png,
    read_png16,
    read_rgb,
    require_dir,
    require_file,
)

CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle"]
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                     25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
"""Label id -> train id for the 19 evaluated classes; the other ids 0..33 are ignored."""
NUM_LABEL_IDS = 34

_SUFFIX = "_leftImg8bit.png"


def label_id_lookup(ignore_index: int) -> np.ndarray:
    """The 34-entry label id -> train id table, with ``ignore_index`` for ids that are not evaluated."""
    table = np.full(NUM_LABEL_IDS, ignore_index, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


def disparity_to_depth(pixels: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes 16-bit disparity PNG values -> depth in metres (0 = invalid)."""
    disparity = (pixels.astype(np.float64) - 1.0) / 256.0
    valid = (pixels > 0) & (disparity > 0)
    depth = np.zeros(pixels.shape, dtype=np.float64)
    depth[valid] = baseline * fx / disparity[valid]
    return depth.astype(np.float32)


@DATASETS.register("cityscapes")
class Cityscapes(FileDataset):
    """Cityscapes images with fine labels (19 train ids) and depth from disparity.

    Args:
        split: Folder name under ``leftImg8bit`` ("train", "val" or "test").
        root: Folder holding ``leftImg8bit/``, ``gtFine/``, ``disparity/`` and ``camera/``.
        targets: Which of "seg", "depth" to load; default both (only the needed packages must be present).
        size: Optional [h, w] to resize on load, e.g. [512, 1024]: bilinear image, nearest labels and depth.
        max_depth: Optional limit in metres; farther depth (tiny, noisy disparities) becomes invalid.
        ignore_index: Label of pixels outside the 19 classes.
    """

    def __init__(self, split: str, *, root: str | Path, targets: Sequence[str] | None = None,
                 size: Sequence[int] | None = None, max_depth: float | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        if max_depth is not None and not max_depth > 0:
            raise ValueError(f"cityscapes max_depth must be positive metres or null, got {max_depth!r}")
        self.max_depth = max_depth
        self.split, self.root = split, require_dir(Path(root).expanduser(), "cityscapes root")
        self.targets = parse_targets(targets, ("seg", "depth"), "cityscapes")
        self.size, self.ignore_index = parse_size(size), ignore_index
        self.class_names, self.num_classes = list(CITYSCAPES_CLASSES), len(CITYSCAPES_CLASSES)
        self.target_kinds = standard_target_kinds(self.targets, num_classes=self.num_classes, ignore_index=ignore_index,
                                                  class_names=self.class_names)
        self.lut = label_id_lookup(ignore_index)
        image_dir = require_dir(self.root / "leftImg8bit" / split, f"cityscapes images of split {split!r}")
        packages = {"seg": ["gtFine"], "depth": ["disparity", "camera"]}
        for package in (p for key in self.targets for p in packages[key]):
            require_dir(self.root / package / split, f"cityscapes {package} of split {split!r} "
                        f"(or leave its task out with targets)")
        images = image_dir.glob(f"*/*{_SUFFIX}")
        self.names = sorted((p.relative_to(image_dir).as_posix()[: -len(_SUFFIX)] for p in images), key=natural_key)
        self._check_not_empty(image_dir)

    def files(self, index: int) -> dict[str, Path]:
        """The files of sample ``index``: image, and the label, disparity and camera files of its targets."""
        stem, split = self.names[index], self.split
        files = {"image": self.root / "leftImg8bit" / split / f"{stem}{_SUFFIX}"}
        if "seg" in self.targets:
            files["seg"] = self.root / "gtFine" / split / f"{stem}_gtFine_labelIds.png"
        if "depth" in self.targets:
            files["depth"] = self.root / "disparity" / split / f"{stem}_disparity.png"
            files["camera"] = self.root / "camera" / split / f"{stem}_camera.json"
        return files

    def read(self, index: int) -> tuple[Sample, dict[str, Path]]:
        files = self.files(index)
        sample = {"image": read_rgb(files["image"])}
        if "seg" in files:
            label_ids = read_png(files["seg"]).astype(np.int64)
            if label_ids.ndim != 2 or label_ids.min() < 0 or label_ids.max() >= NUM_LABEL_IDS:
                raise ValueError(f"{files['seg']}: expected a single-channel PNG of label ids 0..{NUM_LABEL_IDS - 1}, "
                                 f"got shape {label_ids.shape} with values {label_ids.min()}..{label_ids.max()}")
            sample["seg"] = torch.from_numpy(self.lut[label_ids])
        if "depth" in files:
            pixels = read_png16(files["depth"])
            baseline, fx = _read_camera(files["camera"])
            depth = disparity_to_depth(pixels, baseline, fx)
            if self.max_depth is not None:
                depth[depth > self.max_depth] = 0.0
            sample["depth"] = torch.from_numpy(depth)[None]
        return sample, files


def _read_camera(path: Path) -> tuple[float, float]:
    """(baseline in metres, fx in pixels) from a Cityscapes camera json."""
    require_file(path, "cityscapes camera file")
    try:
        camera = json.loads(path.read_text())
        baseline, fx = float(camera["extrinsic"]["baseline"]), float(camera["intrinsic"]["fx"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: expected JSON with extrinsic.baseline and intrinsic.fx ({error!r})") from error
    if not (baseline > 0 and fx > 0):
        raise ValueError(f"{path}: baseline {baseline} and fx {fx} must be positive")
    return baseline, fx
