"""Tiny datasets written in the real on-disk formats, for loader tests and recipe smoke tests.

Each ``write_*`` function fills a folder and returns what it wrote (arrays in their natural H x W layout), so
tests can check round trips. Sizes are small (24 x 32 by default) and everything is seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CITYSCAPES_CAMERA = {"baseline": 0.209313, "fx": 2262.52}


def write_image(path: Path, array: np.ndarray) -> None:
    """Saves uint8 (grey/RGB) or uint16 (16-bit grey, PIL mode "I;16") arrays; the suffix picks PNG or JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def unit_normals(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random unit normals facing the camera (n.z < 0), H x W x 3 float32."""
    normals = rng.normal(size=(height, width, 3))
    normals[..., 2] = -np.abs(normals[..., 2]) - 0.5
    return (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32)


def write_nyuv2(root: Path, *, sizes: dict[str, int] | None = None, height: int = 24, width: int = 32,
                seed: int = 0) -> dict[str, list[dict[str, np.ndarray]]]:
    """The MTAN / LibMTL ``.npy`` layout: ``<root>/<split>/{image,label,depth,normal}/<i>.npy``.

    Images are float64 in [0, 1] (H x W x 3), labels float64 with -1 = unknown, depth float32 H x W x 1 with
    zeros = missing, normals float32 H x W x 3. Returns split -> list of the arrays written, by index.
    """
    rng = np.random.default_rng(seed)
    written: dict[str, list[dict[str, np.ndarray]]] = {}
    for split, count in (sizes or {"train": 3, "val": 2}).items():
        written[split] = []
        for index in range(count):
            arrays = {
                "image": rng.random((height, width, 3)),
                "label": rng.integers(-1, 13, (height, width)).astype(np.float64),
                "depth": (rng.random((height, width, 1)) * 5 * (rng.random((height, width, 1)) > 0.1))
                .astype(np.float32),
                "normal": unit_normals(rng, height, width),
            }
            for folder, array in arrays.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / split / folder / f"{index}.npy", array)
            written[split].append(arrays)
    return written


def write_nyuv2_mat(root: Path, *, frames: int = 5, height: int = 24, width: int = 32, seed: int = 0) -> dict:
    """``nyu_depth_v2_labeled.mat`` as MATLAB v7.3 stores it (HDF5, arrays transposed), plus the split index
    files ``train.txt`` (frames 1, 3, 5) and ``test.txt`` (2, 4) and ``mapping40.txt`` (894 40-class ids).

    Returns the natural-layout arrays: images N x H x W x 3 uint8, depths N x H x W float32, labels N x H x W
    uint16 (raw 0..894), mapping (894,) and the 1-based train/test indices.
    """
    import h5py

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    depths = (rng.random((frames, height, width)) * 10).astype(np.float32)
    labels = rng.integers(0, 895, (frames, height, width)).astype(np.uint16)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w", userblock_size=512) as mat:
        mat["images"] = images.transpose(0, 3, 2, 1)  # N x 3 x W x H
        mat["depths"] = depths.transpose(0, 2, 1)  # N x W x H
        mat["labels"] = labels.transpose(0, 2, 1)
    mapping = rng.integers(1, 41, 894)
    np.savetxt(root / "mapping40.txt", mapping, fmt="%d")
    train, test = list(range(1, frames + 1, 2)), list(range(2, frames + 1, 2))
    (root / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (root / "test.txt").write_text(" ".join(str(i) for i in test) + "\n")
    return {"images": images, "depths": depths, "labels": labels, "mapping": mapping, "train": train, "test": test}


def write_cityscapes(root: Path, *, frames: dict[str, list[str]] | None = None, height: int = 24, width: int = 32,
                     seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """The Cityscapes layout: leftImg8bit RGB PNGs, gtFine labelIds (uint8), 16-bit disparity, camera json.

    Args:
        frames: Split -> sample stems ``<city>/<city>_<seq>_<frame>``; default two train cities and one val.

    Returns stem -> {"image", "label_ids", "disparity"} arrays.
    """
    rng = np.random.default_rng(seed)
    frames = frames or {"train": ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019",
                                  "bochum/bochum_000000_000313"],
                        "val": ["frankfurt/frankfurt_000000_000294"]}
    written = {}
    for split, stems in frames.items():
        for stem in stems:
            arrays = {
                "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                "label_ids": rng.integers(0, 34, (height, width), dtype=np.uint8),
                "disparity": rng.integers(0, 30000, (height, width)).astype(np.uint16),
            }
            arrays["disparity"][0, :3] = [0, 1, 257]  # invalid, zero disparity, d = 1 px
            write_image(root / "leftImg8bit" / split / f"{stem}_leftImg8bit.png", arrays["image"])
            write_image(root / "gtFine" / split / f"{stem}_gtFine_labelIds.png", arrays["label_ids"])
            write_image(root / "disparity" / split / f"{stem}_disparity.png", arrays["disparity"])
            camera = root / "camera" / split / f"{stem}_camera.json"
            camera.parent.mkdir(parents=True, exist_ok=True)
            camera.write_text(json.dumps({"extrinsic": {"baseline": CITYSCAPES_CAMERA["baseline"], "pitch": 0.038},
                                          "intrinsic": {"fx": CITYSCAPES_CAMERA["fx"], "fy": 2225.54,
                                                        "u0": 1096.98, "v0": 513.137}}))
            written[stem] = arrays
    return written


def write_folder(root: Path, *, num_classes: int = 5, depth_scale: float = 1000.0, height: int = 24,
                 width: int = 32, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A ``folder`` dataset of six smooth images (PNG, one JPEG) with every label format and partial labels.

    seg: uint8 PNGs, one 16-bit; ``img5`` has none. depth: 16-bit PNGs of millimetres (``depth_scale``), one
    float .npy in metres; ``img4`` has none. normals: .npy (3 x H x W and H x W x 3) and one RGB PNG.
    ``train.txt`` lists img0..img3, ``val.txt`` img4 and img5.

    Returns stem -> the arrays the loader should return (seg int, depth metres H x W, normals H x W x 3).
    """
    rng = np.random.default_rng(seed)
    written = {}
    for index in range(6):
        stem = f"img{index}"
        ys, xs = np.mgrid[0:height, 0:width]
        image = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 40 * index)], -1).astype(np.uint8)
        write_image(root / "images" / f"{stem}{'.jpg' if index == 1 else '.png'}", image)
        arrays = {"image": image}
        if index != 5:
            seg = rng.integers(0, num_classes, (height, width))
            seg[0, 0] = 255  # ignore
            write_image(root / "seg" / f"{stem}.png", seg.astype(np.uint16 if index == 2 else np.uint8))
            arrays["seg"] = seg
        if index == 3:
            depth = (rng.random((height, width)) * 4).astype(np.float32)
            (root / "depth").mkdir(parents=True, exist_ok=True)
            np.save(root / "depth" / f"{stem}.npy", depth)
            arrays["depth"] = depth
        elif index != 4:
            millimetres = rng.integers(0, 10000, (height, width)).astype(np.uint16)
            write_image(root / "depth" / f"{stem}.png", millimetres)
            arrays["depth"] = millimetres / depth_scale
        normals = unit_normals(rng, height, width)
        if index == 0:
            rgb = np.round((normals + 1) / 2 * 255).astype(np.uint8)
            write_image(root / "normals" / f"{stem}.png", rgb)
            arrays["normals"] = rgb.astype(np.float32) / 255 * 2 - 1
        else:
            (root / "normals").mkdir(parents=True, exist_ok=True)
            np.save(root / "normals" / f"{stem}.npy", normals.transpose(2, 0, 1) if index % 2 else normals)
            arrays["normals"] = normals
        written[stem] = arrays
    (root / "train.txt").write_text("img0\nimg1.jpg\nimg2\n\n# comment\nimg3\n")
    (root / "val.txt").write_text("img4\nimg5\n")
    return written


PASCAL_SPLITS = {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000008", "2008_000009"]}
PASCAL_CONTEXT_IDS = (0, 2, 22, 25, 59, 65, 284)
"""Context classes for the label maps: background, aeroplane and bird (no distilled normals), bench, car, cat and
person (whose normals count)."""


def voc_palette() -> list[int]:
    """The PASCAL VOC colour palette of the semseg PNGs (bit-interleaved class ids), 256 RGB entries."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


def mat_struct_array(records: list[dict], fields: tuple[str, ...]) -> np.ndarray:
    """A 1 x N MATLAB struct array for ``scipy.io.savemat`` (a record array of object fields)."""
    array = np.zeros((1, len(records)), dtype=[(field, object) for field in fields])
    for index, record in enumerate(records):
        for field in fields:
            array[0, index][field] = record[field]
    return array


def write_pascal_context(root: Path, *, height: int = 32, width: int = 32, seed: int = 0) -> dict[str, dict]:
    """PASCAL-Context as ASTMT / Multi-Task-Learning-PyTorch ship it (``PASCAL_MT``), written with PIL and scipy.

    Per image: a JPEG, a palette PNG of 21-class ids (with 255 unknown; the first train image in ``semseg/VOC12``, the
    others in ``semseg/pascal-context``), a grey ``sal_distill`` PNG, an RGB ``normals_distill`` PNG, the
    ``pascal-context/trainval`` ``LabelMap`` (uint16, v5 .mat) and the PASCAL-Part ``anno`` struct: the first train
    image has a person with parts (and a dog), the second a person without parts, the others no person.

    Returns image id -> the arrays the loader should give: image, label_map, seg, saliency (binary), normals
    (H x W x 3, zero off the normals classes), human_parts (or None).
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    written = {}
    for split, ids in PASCAL_SPLITS.items():
        (root / "ImageSets" / "Context").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Context" / f"{split}.txt").write_text("".join(f"{name}\n" for name in ids))
        for name in ids:
            ys, xs = np.mgrid[0:height, 0:width]
            image = np.stack([xs * 255 // width, ys * 255 // height, rng.integers(0, 255, (height, width))], -1).astype(np.uint8)
            write_image(root / "JPEGImages" / f"{name}.jpg", image)
            blocks = rng.choice(PASCAL_CONTEXT_IDS, (4, 4))
            label_map = np.kron(blocks, np.ones((height // 4, width // 4), dtype=np.int64)).astype(np.uint16)
            (root / "pascal-context" / "trainval").mkdir(parents=True, exist_ok=True)
            savemat(root / "pascal-context" / "trainval" / f"{name}.mat", {"LabelMap": label_map})
            seg = rng.integers(0, 21, (height, width)).astype(np.uint8)
            seg[0, :3] = 255
            folder = "VOC12" if name == PASCAL_SPLITS["train"][0] else "pascal-context"
            (root / "semseg" / folder).mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(seg, mode="P")
            picture.putpalette(voc_palette())
            picture.save(root / "semseg" / folder / f"{name}.png")
            sal = rng.integers(0, 256, (height, width)).astype(np.uint8)
            write_image(root / "sal_distill" / f"{name}.png", sal)
            normals_rgb = np.round((unit_normals(rng, height, width) + 1) / 2 * 255).astype(np.uint8)
            write_image(root / "normals_distill" / f"{name}.png", normals_rgb)
            objects, parts = _pascal_part_objects(name, rng, height, width)
            (root / "human_parts").mkdir(parents=True, exist_ok=True)
            savemat(root / "human_parts" / f"{name}.mat", {"anno": {"imname": name, "objects": objects}})
            valid = np.isin(label_map, [3, 4, 6, 22, 59, 65, 284])  # the fixture's classes of NORMALS_CLASSES
            normals = np.where(valid[..., None], 2.0 * normals_rgb.astype(np.float32) / 255.0 - 1.0, 0.0)
            written[name] = {"image": image, "label_map": label_map.astype(np.int64), "seg": seg.astype(np.int64),
                             "saliency": (sal / 255.0 > 0.5).astype(np.float32), "normals": normals.astype(np.float32),
                             "human_parts": parts}
    return written


def _pascal_part_objects(name: str, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The PASCAL-Part ``anno.objects`` of one fixture image and the 7-class part labels the loader should derive."""
    fields = ("class", "class_ind", "mask", "parts")
    person = np.zeros((height, width), dtype=np.uint8)
    person[4:28, 8:20] = 1
    if name == PASCAL_SPLITS["train"][0]:
        part_masks = {"head": (slice(4, 9), slice(10, 18)), "torso": (slice(9, 18), slice(8, 20)),
                      "ruarm": (slice(9, 14), slice(8, 10)), "llleg": (slice(22, 28), slice(8, 14)), "rfoot": (slice(26, 28), slice(14, 20))}
        parts = []
        labels = np.zeros((height, width), dtype=np.int64)
        for part_name, where in part_masks.items():
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[where] = 1
            parts.append({"part_name": part_name, "mask": mask})
            labels[mask.astype(bool)] = {"head": 1, "torso": 2, "ruarm": 3, "llleg": 6, "rfoot": 6}[part_name]
        dog = np.zeros((height, width), dtype=np.uint8)
        dog[20:30, 22:30] = 1
        objects = [{"class": "person", "class_ind": 15, "mask": person, "parts": mat_struct_array(parts, ("part_name", "mask"))},
                   {"class": "dog", "class_ind": 12, "mask": dog, "parts": np.zeros((0, 0))}]
        return mat_struct_array(objects, fields), labels
    if name == PASCAL_SPLITS["train"][1]:
        objects = [{"class": "person", "class_ind": 15, "mask": person, "parts": np.zeros((0, 0))}]
    else:
        objects = [{"class": "car", "class_ind": 7, "mask": person, "parts": np.zeros((0, 0))}]
    return mat_struct_array(objects, fields), None


NYUD_SPLITS = {"train": ["0003", "0004", "0005"], "val": ["0001", "0002"]}


def write_nyud(root: Path, *, height: int = 32, width: int = 32, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """NYUD-v2 as ASTMT / Multi-Task-Learning-PyTorch ship it (``NYUD_MT``): ``images/*.jpg``, ``segmentation/*.png``
    (uint8, 1 .. 40, 0 = unlabelled), ``depth/*.npy`` (float32 metres, 0 = missing), ``normals/*.npy`` (H x W x 3,
    all-zero = unknown), ``edge/*.npy`` (float32 0/1) and ``gt_sets/{train,val}.txt``.

    Returns image id -> the arrays written (image, segmentation, depth, normals, edge).
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, ids in NYUD_SPLITS.items():
        (root / "gt_sets").mkdir(parents=True, exist_ok=True)
        (root / "gt_sets" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for name in ids:
            arrays = {
                "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                "segmentation": rng.integers(0, 41, (height, width)).astype(np.uint8),
                "depth": (rng.random((height, width)) * 9.5 + 0.5).astype(np.float32),
                "normals": unit_normals(rng, height, width),
                "edge": (rng.random((height, width)) < 0.1).astype(np.float32),
            }
            arrays["depth"][:2] = 0.0
            arrays["normals"][-2:] = 0.0
            write_image(root / "images" / f"{name}.jpg", arrays["image"])
            write_image(root / "segmentation" / f"{name}.png", arrays["segmentation"])
            for folder in ("depth", "normals", "edge"):
                (root / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / folder / f"{name}.npy", arrays[folder])
            written[name] = arrays
    return written
