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
