"""Task-consistent batch augmentation on the training device, with kornia.

One :class:`kornia.augmentation.AugmentationSequential` transforms the image (``"input"``: bilinear, colour) and
one stacked ``"mask"`` (nearest resampling, no colour change) that carries, channel by channel, a validity plane
(1 inside the source image, 0 in padding) and every target. Afterwards each target is finished by its task kind:

- padding becomes the kind's invalid value (kornia pads with 0, a real class for segmentation, so the validity plane
  marks it): ``ignore_index`` for segmentation, 0 for depth and normals;
- integer targets are rounded back to their dtype;
- the kind's :meth:`~multitask_deeplab.tasks.TaskKind.transform_values` gets each sample's 2 x 2 linear part of the
  chained ``transform_matrix`` (``s * R``: zoom times rotation or reflection): depth is divided by the zoom ``s``
  (zooming in by ``s`` looks like a camera ``s`` times closer; Eigen et al. 2014), normals' (x, y) are turned by ``R``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import kornia.augmentation as K
import torch
from torch import nn

from multitask_deeplab.tasks import TaskKind


class BatchAugment(nn.Module):
    """Applies one random geometric + photometric augmentation per sample to a batch dict.

    Args:
        geometric: kornia geometric augmentations, applied in order to the image and all targets.
        photometric: kornia intensity augmentations, applied to the image only.
        targets: Batch key -> the kind of target it holds; keys absent from a batch are skipped.
        scale_depth: Let the zoom change target values (depth is divided by it); ``False`` passes only the rotation.
    """

    def __init__(self, *, geometric: Sequence[nn.Module], photometric: Sequence[nn.Module], targets: Mapping[str, TaskKind],
                 scale_depth: bool = True) -> None:
        super().__init__()
        self.targets = dict(targets)
        self.scale_depth = scale_depth
        self.geometric = bool(geometric)
        self.augment = K.AugmentationSequential(*photometric, *geometric, data_keys=["input", "mask"])

    def forward(self, batch: dict) -> dict:
        """Augments ``batch`` (image B x 3 x H x W in [0, 1], optional targets); other keys pass through."""
        image = batch["image"]
        size = image.shape[-2:]
        for key, value in batch.items():
            if (key != "image" and key not in self.targets and isinstance(value, torch.Tensor)
                    and value.ndim >= 3 and value.shape[-2:] == size):
                raise ValueError(f"batch key {key!r} has the image's size but no augmentation target kind, so it "
                                 f"would fall out of alignment: add it to targets (known: {sorted(self.targets)})")
        keys = [key for key in self.targets if key in batch]
        planes = [torch.ones_like(image[:, :1])]
        for key in keys:
            value = batch[key]
            planes.append(value[:, None].to(image.dtype) if self.targets[key].target_channels is None else value.to(image.dtype))
        new_image, mask = self.augment(image, torch.cat(planes, dim=1))
        out = {**batch, "image": new_image.clamp(0.0, 1.0)}
        padding = mask[:, :1] < 0.5
        linear = self._linear_part(len(image), image)
        if not self.scale_depth:
            linear = linear / linear.det().abs().sqrt().view(-1, 1, 1)
        widths = [self.targets[key].target_channels or 1 for key in keys]
        for key, plane in zip(keys, mask[:, 1:].split(widths, dim=1)):
            kind = self.targets[key]
            plane = plane.masked_fill(padding, kind.invalid_value)
            if kind.target_channels is None:
                plane = plane[:, 0]
            if not kind.target_dtype.is_floating_point:
                plane = plane.round()
            out[key] = kind.transform_values(plane.to(batch[key].dtype), linear)
        return out

    def _linear_part(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """The B x 2 x 2 linear part of the last call's input -> output pixel transform (identity if none)."""
        matrix = self.augment.transform_matrix if self.geometric else None
        if matrix is None:
            return torch.eye(2, device=like.device).expand(batch_size, 2, 2)
        return matrix[:, :2, :2].to(device=like.device, dtype=torch.float32)


def build_augmentation(*, scale: Sequence[float] | None = (0.75, 1.25), crop: Sequence[int] | None = None,
                       hflip: bool = True, rotation: float = 0.0, color_jitter: float = 0.2, blur: float = 0.0,
                       scale_depth: bool = True, targets: Mapping[str, TaskKind]) -> BatchAugment:
    """Builds the standard dense-prediction augmentation (the keys of ``data.augment`` in a recipe).

    Order: colour jitter and blur (image only), random zoom and rotation about the centre, horizontal flip,
    random crop (padded with invalid labels when the image is smaller).

    Args:
        scale: Zoom factor range, e.g. (0.75, 1.25); None disables zooming.
        crop: Output [h, w] of a random crop, padded if needed; None keeps the input size.
        hflip: Flip horizontally with probability 0.5.
        rotation: Maximum rotation in degrees (uniform in +-rotation); 0 disables.
        color_jitter: Brightness, contrast and saturation strength in [0, 1] (hue: a quarter of it), applied with
            probability 0.8; 0 disables.
        blur: Maximum Gaussian blur sigma in pixels, applied with probability 0.5; 0 disables.
        scale_depth: Divide depth by the zoom factor (let the zoom change target values).
        targets: Batch key -> the kind of target it holds, see :class:`BatchAugment`.
    """
    geometric: list[nn.Module] = []
    if scale is not None:
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"augment scale must be [low, high] with 0 < low <= high, got {scale!r}")
    if rotation < 0:
        raise ValueError(f"augment rotation is a maximum angle in degrees, >= 0, got {rotation!r}")
    if scale is not None or rotation > 0:
        zoom = None if scale is None else (float(scale[0]), float(scale[1]))
        geometric.append(K.RandomAffine(degrees=float(rotation), scale=zoom, p=1.0))
    if hflip:
        geometric.append(K.RandomHorizontalFlip(p=0.5))
    if crop is not None:
        if len(crop) != 2 or not all(isinstance(c, int) and c > 0 for c in crop):
            raise ValueError(f"augment crop must be [height, width] with positive integers, got {crop!r}")
        geometric.append(K.RandomCrop((int(crop[0]), int(crop[1])), pad_if_needed=True, p=1.0))
    photometric: list[nn.Module] = []
    if not 0 <= color_jitter <= 1:
        raise ValueError(f"augment color_jitter must be in [0, 1], got {color_jitter!r}")
    if color_jitter > 0:
        photometric.append(K.ColorJitter(color_jitter, color_jitter, color_jitter, color_jitter / 4, p=0.8))
    if blur < 0:
        raise ValueError(f"augment blur is a maximum sigma in pixels, >= 0, got {blur!r}")
    if blur > 0:
        kernel = 2 * math.ceil(3 * blur) + 1
        photometric.append(K.RandomGaussianBlur((kernel, kernel), (min(0.1, blur), blur), p=0.5))
    return BatchAugment(geometric=geometric, photometric=photometric, targets=targets, scale_depth=scale_depth)
