"""What every file-backed dataset shares: file readers, sample checks, and the ``verify`` report.

A dataset subclasses :class:`FileDataset`, describes its targets in ``target_kinds`` (``{batch key: TaskKind}``) and
implements ``read(index)``, which returns the sample in the batch layout (image 3xHxW float32 in [0, 1], each target
as its kind lays it out) and the file each key came from. :meth:`FileDataset.load` then fills missing targets with
their kind's invalid value, checks sizes and values (each kind's ``check_target``: a ``ValueError`` naming the file),
cleans what can be cleaned, and resizes.
:func:`verify_dataset` loads every sample and collects all problems instead of stopping at the first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from multitask_deeplab.tasks import TaskKind

Sample = dict[str, torch.Tensor]


def require_dir(path: Path, what: str) -> Path:
    """Returns ``path`` if it is a directory, else raises a ``ValueError`` naming the expected path."""
    if not path.is_dir():
        raise ValueError(f"{what} not found: expected a directory at {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    """Returns ``path`` if it is a file, else raises a ``ValueError`` naming the expected path."""
    if not path.is_file():
        raise ValueError(f"{what} not found: expected a file at {path}")
    return path


def resolve(root: Path, path: str | Path) -> Path:
    """Resolves a path from a dataset argument: relative paths are taken relative to the dataset root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders digit runs numerically: ``2.npy`` before ``10.npy``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_npy(path: Path) -> np.ndarray:
    """Loads a ``.npy`` array (no pickles); unreadable or missing files raise ``ValueError``."""
    require_file(path, "array file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def read_png(path: Path) -> np.ndarray:
    """Loads an image file as stored: HxW (8/16-bit grey or palette indices) or HxWxC; errors raise ``ValueError``."""
    require_file(path, "image file")
    try:
        with Image.open(path) as image:
            return np.array(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def read_png16(path: Path) -> np.ndarray:
    """Loads a 16-bit single-channel PNG (depth, disparity) as int64; anything else raises ``ValueError``."""
    array = read_png(path)
    if array.ndim != 2 or array.dtype not in (np.uint16, np.int32) or array.max(initial=0) > 65535:
        raise ValueError(f"{path}: expected a 16-bit single-channel PNG, got {array.dtype} with shape {array.shape}")
    return array.astype(np.int64)


def read_label_png(path: Path) -> np.ndarray:
    """Loads a PNG of class ids in one channel (8- or 16-bit grey, or palette indices) as an int64 H x W array."""
    labels = read_png(path)
    if labels.ndim != 2:
        raise ValueError(f"{path}: label PNGs hold class ids in one channel (grey or palette), got shape {labels.shape}")
    return labels.astype(np.int64)


def read_stems(path: Path, what: str) -> list[str]:
    """The sample names a split file lists, one per line; blank lines and ``#`` comments are skipped."""
    require_file(path, what)
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def read_rgb(path: Path) -> torch.Tensor:
    """Loads an image file as a 3xHxW float32 tensor in [0, 1] (grey and RGBA are converted to RGB)."""
    require_file(path, "image file")
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def channels_first(array: np.ndarray, channels: int, path: Path) -> torch.Tensor:
    """Converts an HxW (one channel only), HxWxC or CxHxW array to a CxHxW float32 tensor."""
    if array.ndim == 2 and channels == 1:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] == channels and array.shape[0] != channels:
        array = array.transpose(2, 0, 1)
    elif not (array.ndim == 3 and array.shape[0] == channels):
        raise ValueError(f"{path}: expected {channels} channel(s) as HxWx{channels} or {channels}xHxW, "
                         f"got shape {tuple(array.shape)}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _size(tensor: torch.Tensor) -> str:
    return "x".join(str(s) for s in tensor.shape[-2:])


def check_sample(sample: Sample, files: dict[str, Path], kinds: Mapping[str, TaskKind]) -> Counter:
    """Checks one sample in place and cleans it; returns counts of the values it had to fix.

    Raises ``ValueError`` (naming the file) for an image outside [0, 1], a target whose size differs from the image,
    or a target its kind refuses (see :meth:`TaskKind.check_target`).

    Args:
        sample: The sample in the batch layout.
        files: The file each key was read from, for messages.
        kinds: The kind of each target key.
    """
    image, counts = sample["image"], Counter()
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{files['image']}: expected an RGB image, got shape {tuple(image.shape)}")
    low, high = image.min().item(), image.max().item()
    if not (-1e-3 <= low and high <= 1 + 1e-3):  # NaN fails too
        raise ValueError(f"{files['image']}: image values span [{low:g}, {high:g}], expected floats in [0, 1]")
    for key, kind in kinds.items():
        if key not in files:  # absent or filled in with invalid values
            continue
        if sample[key].shape[-2:] != image.shape[-2:]:
            raise ValueError(f"{files[key]}: {key} is {_size(sample[key])} but the image {files['image']} "
                             f"is {_size(image)}; a label must have its image's size")
        sample[key], fixed = kind.check_target(sample[key], str(files[key]))
        counts += fixed
    return counts


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resizes a sample to ``size`` (h, w): bilinear (antialiased) image, nearest labels, depth and normals.

    Depth values are not changed: resizing changes the intrinsics, not the distances.
    """
    out = {}
    for key, value in sample.items():
        batch = value[None] if value.ndim == 3 else value[None, None]
        if key == "image":
            resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
            resized = resized.clamp_(0.0, 1.0)
        else:
            resized = F.interpolate(batch.float(), size=size, mode="nearest-exact").to(value.dtype)
        out[key] = resized[0] if value.ndim == 3 else resized[0, 0]
    return out


class FileDataset(Dataset):
    """Base of the file-backed datasets.

    Subclasses set ``split``, ``root``, ``names`` (one per sample, used in reports), ``target_kinds`` (the kind of
    each target key it loads) and ``size`` in ``__init__``, and implement :meth:`read`.
    """

    split: str
    root: Path
    names: list[str]
    target_kinds: dict[str, TaskKind]
    size: tuple[int, int] | None

    def read(self, index: int) -> tuple[Sample, dict[str, Path]]:
        """Reads sample ``index`` in the batch layout and the file of each key; absent targets are left out."""
        raise NotImplementedError

    def load(self, index: int) -> tuple[Sample, Counter]:
        """Reads, completes, checks, cleans and resizes sample ``index``; returns it with counts of what was fixed."""
        sample, files = self.read(index)
        height, width = sample["image"].shape[-2:]
        counts = Counter()
        for key, kind in self.target_kinds.items():
            if key not in sample:
                sample[key] = kind.invalid_target(height, width)
                counts[f"samples without a {key} label (filled with invalid values)"] += 1
        counts += check_sample(sample, files, self.target_kinds)
        if self.size is not None and tuple(sample["image"].shape[-2:]) != tuple(self.size):
            sample = resize_sample(sample, tuple(self.size))
        return sample, counts

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)[0]

    def __len__(self) -> int:
        return len(self.names)

    def verify(self) -> VerifyReport:
        """Checks every sample; see :func:`verify_dataset`."""
        return verify_dataset(self)

    def _check_not_empty(self, where: Path) -> None:
        if not self.names:
            raise ValueError(f"{type(self).__name__} split {self.split!r} is empty: no samples found under {where}")


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_dataset`.

    Attributes:
        dataset: Dataset class name and split.
        num_samples: Samples checked.
        problems: One line per bad sample (or per dataset-wide problem); empty when the data is usable.
        counts: Values that were fixed on load (e.g. NaN depth set to invalid), summed over the split.
        sizes: How many samples have each image size (after ``size`` resizing).
    """

    dataset: str
    num_samples: int
    problems: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def lines(self) -> list[str]:
        """The report as text lines: a summary, then problems, then notes."""
        sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in self.sizes.most_common())
        plural = "" if self.num_samples == 1 else "s"
        head = f"{self.dataset}: {self.num_samples} sample{plural}, image sizes {sizes or '-'}, "
        lines = [head + (f"{len(self.problems)} problem(s)" if self.problems else "OK")]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {what}: {n}" for what, n in sorted(self.counts.items())]
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def verify_dataset(dataset: Dataset) -> VerifyReport:
    """Loads every sample of ``dataset`` and reports all problems at once (one bad file does not hide others).

    Works on any map-style dataset; a :class:`FileDataset` also reports the values it fixed on load. Besides
    per-sample errors, samples of different sizes are a problem: the default collate cannot stack them (set
    ``size: [h, w]`` in the recipe's data section to resize on load).
    """
    split = getattr(dataset, "split", None)
    report = VerifyReport(type(dataset).__name__ + (f" ({split})" if split else ""), len(dataset))
    names = getattr(dataset, "names", None)
    for index in range(len(dataset)):
        try:
            sample, counts = dataset.load(index) if isinstance(dataset, FileDataset) else (dataset[index], Counter())
        except ValueError as error:
            report.problems.append(f"{names[index] if names else f'sample {index}'}: {error}")
            continue
        report.counts += counts
        report.sizes[tuple(sample["image"].shape[-2:])] += 1
    if len(report.sizes) > 1:
        report.problems.append("images have different sizes, so batches cannot be stacked: set size: [h, w] "
                               "in the data section to resize on load")
    return report


def parse_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    """Validates an optional ``size: [h, w]`` argument."""
    if size is None:
        return None
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"size must be [height, width] with two positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def parse_targets(targets: Sequence[str] | None, available: Sequence[str], dataset: str) -> tuple[str, ...]:
    """Validates an optional ``targets`` argument against the targets a dataset can provide."""
    if targets is None:
        return tuple(available)
    unknown = [t for t in targets if t not in available]
    if unknown or not targets:
        raise ValueError(f"{dataset} targets {list(targets)!r} invalid: choose a non-empty subset of {list(available)}")
    return tuple(t for t in available if t in targets)
