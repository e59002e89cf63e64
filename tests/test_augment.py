"""Batch augmentation keeps every target aligned with its image, pads with invalid values, and scales depth."""

from __future__ import annotations

import math

import pytest
import torch

from multitask_deeplab.data.augment import build_augmentation as build
from multitask_deeplab.tasks import DepthTask, NormalsTask, SegmentationTask

B, H, W = 8, 24, 32
NORMAL = (0.48, 0.36, -0.8)  # unit length
IGNORED_BAND = 5
KINDS = {"seg": SegmentationTask(num_classes=W // 4), "depth": DepthTask(), "normals": NormalsTask()}


def build_augmentation(**options):
    """The augmentation of the three standard targets (``targets`` may replace them)."""
    return build(**{"targets": KINDS, **options})


def depth_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1.0 + x / W + 2.0 * y / H


def coordinate_batch() -> dict[str, torch.Tensor]:
    """Image channels encode pixel x and y; seg is the 4-pixel column band (band 5 ignored); depth = f(x, y)."""
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    image = torch.stack([(x + 0.5) / W, (y + 0.5) / H, torch.full_like(x, 0.5)])
    seg = torch.div(x, 4, rounding_mode="floor").long()
    seg[seg == IGNORED_BAND] = 255
    return {
        "image": image.expand(B, -1, -1, -1).clone(),
        "seg": seg.expand(B, -1, -1).clone(),
        "depth": depth_of(x, y).expand(B, 1, -1, -1).clone(),
        "normals": torch.tensor(NORMAL).view(1, 3, 1, 1).expand(B, 3, H, W).clone(),
        "index": torch.arange(B),
        "name": [f"s{i}" for i in range(B)],
    }


def decode(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source coordinates (x, y) of every output pixel, and the pixels far from padding (exact bilinear)."""
    x, y = image[:, 0] * W - 0.5, image[:, 1] * H - 0.5
    inside = (image[:, 2] - 0.5).abs() < 1e-4
    interior = -torch.nn.functional.max_pool2d(-inside[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0.5
    return x, y, interior


def jacobians(x: torch.Tensor, y: torch.Tensor, interior: torch.Tensor) -> torch.Tensor:
    """B x 2 x 2 output -> source Jacobian per sample, median of finite differences over interior pixels."""
    both = interior[:, :-1, :-1] & interior[:, 1:, :-1] & interior[:, :-1, 1:]
    out = torch.empty(len(x), 2, 2)
    for b in range(len(x)):
        for i, coord in enumerate((x[b], y[b])):
            out[b, i, 0] = (coord[:-1, 1:] - coord[:-1, :-1])[both[b]].median()
            out[b, i, 1] = (coord[1:, :-1] - coord[:-1, :-1])[both[b]].median()
    return out


@pytest.mark.parametrize("crop", [(20, 28), (30, 40)])
def test_targets_stay_aligned_with_the_image(crop):
    augment = build_augmentation(scale=(0.7, 1.4), crop=crop, hflip=True, rotation=20.0, color_jitter=0.0)
    batch = coordinate_batch()
    out = augment(batch)
    assert out["image"].shape == (B, 3, *crop) and out["seg"].shape == (B, *crop) and out["seg"].dtype == torch.int64
    assert out["name"] == batch["name"] and torch.equal(out["index"], batch["index"])
    x, y, interior = decode(out["image"])
    jac = jacobians(x, y, interior)
    assert (jac.det() < 0).any() and (jac.det() > 0).any(), "the seed should flip some samples and not others"
    zoom = jac.det().abs().rsqrt()  # output pixels per source pixel
    assert zoom.min() < 0.95 and zoom.max() > 1.05
    # segmentation: the nearest source pixel's band, ignore kept
    seg, band = out["seg"][interior], torch.div(x[interior].round(), 4, rounding_mode="floor").long()
    near_edge = ((x[interior] + 0.5) % 4 - 2).abs() > 1.99 - 1e-3
    expected = torch.where(band == IGNORED_BAND, 255, band)
    assert ((seg == expected) | near_edge).all()
    # depth: f of the nearest source pixel, divided by the zoom
    scaled = out["depth"][:, 0] * zoom.view(-1, 1, 1)
    assert (scaled - depth_of(x, y)).abs()[interior].max() < 0.5 * (1 / W + 2 / H) + 1e-3
    # normals: turned by the sample's rotation / reflection R = J^-1 / zoom
    rotation = torch.linalg.inv(jac) / zoom.view(-1, 1, 1)
    expected_xy = rotation @ torch.tensor(NORMAL[:2])
    normals = out["normals"].permute(0, 2, 3, 1)
    for b in range(B):
        n = normals[b][interior[b]]
        torch.testing.assert_close(n[:, :2], expected_xy[b].expand_as(n[:, :2]), atol=2e-3, rtol=0)
        assert torch.allclose(n[:, 2], torch.tensor(NORMAL[2]))
    # padding: invalid in every target, and only there
    invalid = out["depth"][:, 0] == 0
    assert invalid.any() and not invalid[interior].any()
    assert (out["seg"][invalid] == 255).all() and (out["normals"].permute(0, 2, 3, 1)[invalid] == 0).all()
    assert torch.equal(invalid, (out["normals"] == 0).all(dim=1))
    assert (out["image"][invalid.unsqueeze(1).expand_as(out["image"])] < 0.5).all()


def test_fixed_zoom_divides_depth_and_pads_with_ignore():
    batch = coordinate_batch()
    zoom_in = build_augmentation(scale=(2.0, 2.0), hflip=False, color_jitter=0.0)(batch)
    x, y, interior = decode(zoom_in["image"])
    assert interior.all() and (zoom_in["seg"] != 255).sum() > 0
    torch.testing.assert_close(zoom_in["depth"][:, 0] * 2, depth_of(x.round(), y.round()), atol=0.05, rtol=0)
    zoom_out = build_augmentation(scale=(0.5, 0.5), hflip=False, color_jitter=0.0)(batch)
    assert (zoom_out["seg"][:, :5] == 255).all() and (zoom_out["seg"][:, :, :7] == 255).all()
    assert (zoom_out["depth"][:, :, :5] == 0).all() and (zoom_out["normals"][:, :, :, :7] == 0).all()
    centre = zoom_out["depth"][:, 0, H // 2, W // 2]
    torch.testing.assert_close(centre, 2 * depth_of(torch.tensor(W / 2), torch.tensor(H / 2)).expand(B),
                               atol=0.2, rtol=0)
    kept = build_augmentation(scale=(0.5, 0.5), hflip=False, color_jitter=0.0, scale_depth=False)(batch)
    torch.testing.assert_close(kept["depth"][:, 0, H // 2, W // 2], centre / 2)


def test_photometric_changes_only_the_image():
    batch = coordinate_batch()
    out = build_augmentation(scale=None, hflip=False, color_jitter=0.5, blur=1.5)(batch)
    for key in ("seg", "depth", "normals"):
        assert torch.equal(out[key], batch[key]), key
    assert not torch.allclose(out["image"], batch["image"], atol=1e-3)
    assert out["image"].min() >= 0 and out["image"].max() <= 1


def test_crop_pads_small_images_and_custom_target_keys():
    batch = {"image": torch.rand(2, 3, 8, 8), "semantic": torch.randint(0, 3, (2, 8, 8))}
    augment = build_augmentation(scale=None, hflip=False, crop=(12, 16), color_jitter=0.0,
                                 targets={"semantic": SegmentationTask(num_classes=3, ignore_index=99, target="semantic")})
    out = augment(batch)
    assert out["semantic"].shape == (2, 12, 16)
    assert (out["semantic"] == 99).sum() == 2 * (12 * 16 - 64)
    assert torch.equal(out["semantic"][out["semantic"] != 99].sort().values,
                       batch["semantic"].flatten().sort().values)


def test_unknown_targets_and_bad_arguments_raise():
    batch = {"image": torch.rand(2, 3, 8, 8), "edges": torch.rand(2, 1, 8, 8)}
    with pytest.raises(ValueError, match="batch key 'edges' has the image's size but no augmentation target kind"):
        build_augmentation()(batch)
    for kwargs, message in [({"scale": (1.2, 0.8)}, "scale"), ({"crop": (0, 4)}, "crop"),
                            ({"rotation": -5}, "rotation"), ({"color_jitter": 2}, "color_jitter"),
                            ({"blur": -1}, "blur")]:
        with pytest.raises(ValueError, match=f"augment {message}"):
            build_augmentation(**kwargs)


def test_identity_when_everything_is_off():
    batch = coordinate_batch()
    out = build_augmentation(scale=None, hflip=False, color_jitter=0.0)(batch)
    for key in ("image", "seg", "depth", "normals"):
        torch.testing.assert_close(out[key], batch[key])
    assert math.isclose(float(out["depth"].mean()), float(batch["depth"].mean()))
