"""Task-consistent batch augmentation on the training device, with kornia.

One :class:`kornia.augmentation.AugmentationSequential` transforms the image (``"input"``: bilinear, colour) and
one stacked ``"mask"`` (nearest resampling, no colour change) that carries, channel by channel, a validity plane
(1 inside the source image, 0 in padding) and every target: segmentation ids, depth, normals. Afterwards:

- padding becomes invalid: ``ignore_index`` for segmentation (kornia pads with 0, a real class, so the validity
  plane marks it); depth and normals are padded with 0, which already means invalid;
- depth is divided by each sample's zoom factor ``s`` (zooming in by ``s`` looks like a camera ``s`` times
  closer; Eigen et al. 2014);
- the normals' (x, y) components are turned by the in-plane rotation/reflection of each sample (a horizontal
  flip negates x; a rotation about the optical axis rotates (x, y) by the same angle).

``s`` and the rotation come from the chained ``transform_matrix``: its 2x2 part is ``s * R``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import kornia.augmentation as K
import torch
from torch import nn

from multitask_deeplab.data.base import IGNORE_INDEX

DEFAULT_TARGETS = {"seg": "segmentation", "depth": "depth", "normals": "normals"}
_CHANNELS = {"segmentation": 1, "depth": 1, "normals": 3}


class BatchAugment(nn.Module):
    """Applies one random geometric + photometric augmentation per sample to a batch dict.

    Args:
        geometric: kornia geometric augmentations, applied in order to the image and all targets.
        photometric: kornia intensity augmentations, applied to the image only.
        scale_depth: Divide depth by each sample's zoom factor.
        ignore_index: Segmentation label of padding and of unknown pixels.
        targets: Batch key -> task kind ("segmentation", "depth" or "normals"); keys absent from a batch are
            skipped. Default: seg, depth, normals.
    """

    def __init__(self, *, geometric: Sequence[nn.Module], photometric: Sequence[nn.Module], scale_depth: bool = True,
                 ignore_index: int = IGNORE_INDEX, targets: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.targets = dict(DEFAULT_TARGETS if targets is None else targets)
        unknown = {key: kind for key, kind in self.targets.items() if kind not in _CHANNELS}
        if unknown:
            raise ValueError(f"augmentation targets {unknown} have unknown kinds: use {sorted(_CHANNELS)}")
        self.scale_depth, self.ignore_index = scale_depth, ignore_index
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
            planes.append(value[:, None].to(image.dtype) if self.targets[key] == "segmentation" else value)
        new_image, mask = self.augment(image, torch.cat(planes, dim=1))
        out = {**batch, "image": new_image.clamp(0.0, 1.0)}
        padding = mask[:, 0] < 0.5
        linear = self._linear_part(len(image), image)
        zoom = linear.det().abs().sqrt()  # per-sample s, with the 2x2 part = s * R
        planes = mask[:, 1:].split([_CHANNELS[self.targets[key]] for key in keys], dim=1)
        for key, plane in zip(keys, planes):
            kind = self.targets[key]
            if kind == "segmentation":
                seg = plane[:, 0].round().to(batch[key].dtype)
                out[key] = seg.masked_fill(padding, self.ignore_index)
            elif kind == "depth":
                out[key] = plane / zoom.view(-1, 1, 1, 1) if self.scale_depth else plane
            else:
                rotation = linear / zoom.view(-1, 1, 1)
                xy = torch.einsum("bij,bjhw->bihw", rotation.to(plane.dtype), plane[:, :2])
                out[key] = torch.cat([xy, plane[:, 2:]], dim=1)
        return out

    def _linear_part(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """The B x 2 x 2 linear part of the last call's input -> output pixel transform (identity if none)."""
        matrix = self.augment.transform_matrix if self.geometric else None
        if matrix is None:
            return torch.eye(2, device=like.device).expand(batch_size, 2, 2)
        return matrix[:, :2, :2].to(device=like.device, dtype=torch.float32)


def build_augmentation(*, scale: Sequence[float] | None = (0.75, 1.25), crop: Sequence[int] | None = None,
                       hflip: bool = True, rotation: float = 0.0, color_jitter: float = 0.2, blur: float = 0.0,
                       scale_depth: bool = True, ignore_index: int = IGNORE_INDEX,
                       targets: Mapping[str, str] | None = None) -> BatchAugment:
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
        scale_depth: Divide depth by the zoom factor.
        ignore_index: Segmentation label of padding.
        targets: Batch key -> task kind, see :class:`BatchAugment`.
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
    return BatchAugment(geometric=geometric, photometric=photometric, scale_depth=scale_depth,
                        ignore_index=ignore_index, targets=targets)
