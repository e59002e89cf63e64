"""The procedural scenes dataset: format, determinism, splits, geometry on hand-computed cases, workers."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from multitask_deeplab.data import scenes as S
from multitask_deeplab.data.base import DATASETS
from multitask_deeplab.data.scenes import ScenesDataset

GREY = [0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # a plain surface row


def _scene(pitch: float = 0.0, height: float = 1.5, camera_z: float = -4.0, objects: list | None = None) -> dict:
    """A hand-made scene: room 8 x 3 x 10 m, camera at x = 0 looking along +z, 60 degree vertical field of view."""
    return {
        "room": (4.0, 3.0, 5.0),
        "camera": {
            "position": (0.0, height, camera_z), "yaw": 0.0, "pitch": pitch, "roll": 0.0, "vfov": math.radians(60)
        },
        "light": {"direction": (0.0, 1.0, 0.0), "ambient": 0.5, "diffuse": 0.5},
        "floor": GREY,
        "wall": GREY,
        "waves": [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]],
        "objects": objects or [],
    }


def _render_one(scene: dict, size: int) -> dict[str, torch.Tensor]:
    return {key: value[0] for key, value in S._render(S._pack([scene], size), size, size).items()}


def _rays(focal: float, height: int, width: int) -> torch.Tensor:
    """Camera-frame ray directions (x, y, 1) of every pixel centre, 3 x H x W."""
    rows, cols = torch.arange(height) + 0.5 - height / 2, torch.arange(width) + 0.5 - width / 2
    gy, gx = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([gx / focal, gy / focal, torch.ones(height, width)])


def _random_scenes(count: int, seed: int, aspect: float = 1.0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(count, S._SCENE_DRAWS + 6 * S._OBJECT_DRAWS, dtype=torch.float64, generator=generator)
    return [S._random_scene(iter(row), 6, aspect) for row in draws.tolist()]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------- format and API


def test_sample_format_and_value_ranges() -> None:
    dataset = ScenesDataset("val", num_samples=6, height=50, width=70)
    for sample in dataset.__getitems__(range(6)):
        assert sample.keys() == {"image", "seg", "depth", "normals", "edges"}
        assert sample["image"].shape == (3, 50, 70) and sample["image"].dtype == torch.float32
        assert sample["seg"].shape == (50, 70) and sample["seg"].dtype == torch.int64
        assert sample["depth"].shape == (1, 50, 70) and sample["depth"].dtype == torch.float32
        assert sample["normals"].shape == (3, 50, 70) and sample["normals"].dtype == torch.float32
        assert 0 <= sample["image"].min() and sample["image"].max() <= 1
        assert 0 <= sample["seg"].min() and sample["seg"].max() <= 4  # every ray hits a labelled surface
        assert (sample["depth"] > 0).all() and sample["depth"].isfinite().all() and sample["depth"].max() < 30
        assert torch.allclose(sample["normals"].norm(dim=0), torch.ones(50, 70), atol=1e-5)


def test_attributes_registration_and_pickling() -> None:
    dataset = DATASETS.build({"type": "scenes", "num_samples": 3, "height": 16, "width": 16}, split="test")
    assert isinstance(dataset, ScenesDataset) and len(dataset) == 3
    assert dataset.class_names == ["floor", "wall", "sphere", "box", "cylinder"]
    assert dataset.num_classes == 5 and dataset.ignore_index == 255
    assert [len(ScenesDataset(split)) for split in ("train", "val", "test")] == [4000, 200, 200]
    _assert_same(pickle.loads(pickle.dumps(dataset))[2], dataset[2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "validation"}, "unknown split 'validation'"),
        ({"height": 8}, "8x128 is too small"),
        ({"width": 15}, "128x15 is too small"),
        ({"num_samples": 0}, "num_samples=0"),
        ({"max_objects": 0}, "max_objects=0"),
        ({"noise": -0.1}, "noise=-0.1"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScenesDataset(**kwargs)


def test_index_out_of_range() -> None:
    with pytest.raises(IndexError, match="index 3 out of range"):
        ScenesDataset("val", num_samples=3, height=16, width=16)[3]


def test_noise_is_gaussian_with_the_given_sigma() -> None:
    clean = ScenesDataset("val", num_samples=2, height=64, width=64, noise=0.0)
    noisy = ScenesDataset("val", num_samples=2, height=64, width=64, noise=0.05)
    difference = noisy[1]["image"] - clean[1]["image"]
    inside = (clean[1]["image"] > 0.2) & (clean[1]["image"] < 0.8)  # away from clipping
    assert abs(difference[inside].std().item() - 0.05) < 0.005 and abs(difference[inside].mean().item()) < 0.005
    for key in ("seg", "depth", "normals"):
        assert torch.equal(noisy[1][key], clean[1][key])


def test_random_scene_consumes_exactly_its_draws() -> None:
    for max_objects in (1, 6):
        uniforms = iter(torch.rand(S._SCENE_DRAWS + S._OBJECT_DRAWS * max_objects, dtype=torch.float64).tolist())
        scene = S._random_scene(uniforms, max_objects, 1.0)
        assert next(uniforms, None) is None
        assert 1 <= len(scene["objects"]) <= max_objects


# ----------------------------------------------------------------------------------------------- determinism


def test_same_seed_split_index_gives_identical_samples() -> None:
    first, again = ScenesDataset("train", height=32, width=32), ScenesDataset("train", height=32, width=32)
    _assert_same(first[7], again[7])
    other_seed = ScenesDataset("train", height=32, width=32, seed=1)
    assert not torch.equal(first[7]["depth"], other_seed[7]["depth"])


def test_batch_and_single_renders_are_identical() -> None:
    dataset = ScenesDataset("train", height=40, width=56)
    indices = [11, 3, 25, 3, 0, 17, 8, 30, 2]
    batch = dataset.__getitems__(indices)
    for index, sample in zip(indices, batch):
        _assert_same(sample, dataset[index])
    for index, sample in zip(indices[2:5], dataset.__getitems__(indices[2:5])):  # another batch composition
        _assert_same(sample, dataset[index])


def test_dataloader_workers_match_direct_indexing() -> None:
    dataset = ScenesDataset("val", num_samples=12, height=32, width=32)
    loader = DataLoader(dataset, batch_size=4, shuffle=False, num_workers=2)
    for start, batch in zip(range(0, 12, 4), loader):
        expected = [dataset[i] for i in range(start, start + 4)]
        for key in batch:
            assert torch.equal(batch[key], torch.stack([sample[key] for sample in expected])), key


def test_splits_never_share_a_scene() -> None:
    depths = {
        split: [s["depth"] for s in ScenesDataset(split, num_samples=24, height=16, width=16).__getitems__(range(24))]
        for split in ("train", "val", "test")
    }
    fingerprints = [(split, tuple(d.flatten()[::17].tolist())) for split, ds in depths.items() for d in ds]
    assert len({fp for _, fp in fingerprints}) == len(fingerprints)
    seeds = {S._sample_seed(0, S._SPLIT_OFFSETS[split] + i) for split in S._SPLIT_OFFSETS for i in range(1000)}
    assert len(seeds) == 3000


# ------------------------------------------------------------------------------------------------- content


def test_every_class_appears() -> None:
    dataset = ScenesDataset("train", height=32, width=32)
    seen = torch.cat([s["seg"].flatten() for s in dataset.__getitems__(range(40))]).unique()
    assert seen.tolist() == [0, 1, 2, 3, 4]


def test_object_colours_do_not_give_away_the_class() -> None:
    """Surfaces of every class draw colours from one distribution: mean colours per class stay close."""
    colours: dict[str, list[list[float]]] = {}
    for scene in _random_scenes(400, seed=0):
        colours.setdefault("floor", []).append(scene["floor"][:3])
        colours.setdefault("wall", []).append(scene["wall"][:3])
        for obj in scene["objects"]:
            colours.setdefault(obj["kind"], []).append(obj["surface"][:3])
    means = torch.stack([torch.tensor(c).mean(0) for c in colours.values()])
    assert len(colours) == 5 and (means.max(0).values - means.min(0).values).max() < 0.06


def test_culling_skips_no_covered_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendering only the tiles an object's bounds cover equals ray casting every object in every tile."""
    scenes = S._pack(_random_scenes(16, seed=1, aspect=60 / 44), 44)
    culled = S._render(scenes, 44, 60)
    rows, cols = -(-44 // S._TILE), -(-60 // S._TILE)
    every = torch.cartesian_prod(torch.arange(len(scenes.obj_scene)), torch.arange(rows), torch.arange(cols))
    assert len(S._object_tiles(scenes, 44, 60)) < len(every) / 2
    monkeypatch.setattr(S, "_object_tiles", lambda *args: every)
    _assert_same(culled, S._render(scenes, 44, 60))


# ------------------------------------------------------------------------------------ geometry, known answers


def test_ray_box_exit_known_answers() -> None:
    origin, lo, hi = (0.0, 1.0, 0.0), (-2.0, 0.0, -4.0), (2.0, 3.0, 4.0)
    direction = tuple(torch.tensor(c) for c in ([0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]))
    t, exits = S._leave_box(origin, direction, lo, hi)
    assert t.tolist() == [4.0, 1.0, 2.0, 2.0]  # far z wall, floor, side wall, ceiling (y: 1 -> 3) before z = 4
    assert exits[1][3].item() == 2.0 and exits[2][3].item() == 4.0


@pytest.mark.parametrize(
    ("shape", "origin", "direction", "distance", "face"),
    [
        ("sphere", (0.0, 0.0, -5.0), (0.0, 0.0, 1.0), 4.0, None),
        ("sphere", (0.6, 0.0, -5.0), (0.0, 0.0, 2.0), (5.0 - 0.8) / 2, None),  # t scales with 1 / |direction|
        ("box", (0.5, 0.2, -5.0), (0.0, 0.0, 1.0), 4.0, 2),
        ("box", (0.5, 5.0, 0.3), (0.0, -1.0, 0.0), 3.0, 1),
        ("cylinder", (-5.0, 0.0, 0.0), (1.0, 0.0, 0.0), 4.0, None),
        ("cylinder", (0.2, 5.0, 0.0), (0.0, -1.0, 0.0), 3.0, 1),  # the cap at y = 2
    ],
)
def test_ray_shape_entry_known_answers(
    shape: str, origin: tuple, direction: tuple, distance: float, face: int | None
) -> None:
    quadric, slab = {
        "sphere": ((1.0, 1.0, 1.0), (S._NO_SLAB,) * 3),  # radius 1
        "box": ((S._NO_QUADRIC,) * 3, (1.0, 2.0, 1.0)),
        "cylinder": ((1.0, 0.0, 1.0), (S._NO_SLAB, 2.0, S._NO_SLAB)),  # radius 1, half height 2
    }[shape]
    d = tuple(torch.tensor([c]) for c in direction)
    t, enter, faces = S._enter_shape(origin, d, quadric, slab)
    assert t.item() == pytest.approx(distance, abs=1e-5)
    point = tuple(o + enter * c for o, c in zip(origin, d))
    normal = torch.cat(S._shape_normal(point, d, quadric, enter, faces))
    if face is not None:
        expected = torch.zeros(3)
        expected[face] = -math.copysign(1.0, direction[face])
        assert torch.equal(normal, expected)
    assert torch.dot(normal, torch.tensor(direction)) < 0  # the normal faces the ray


def test_rays_missing_or_starting_inside_are_far() -> None:
    d = (torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0]))
    t, _, _ = S._enter_shape((1.5, 0.0, -5.0), d, (1.0, 1.0, 1.0), (S._NO_SLAB,) * 3)  # passes beside / away
    assert (t > S._MISS / 2).all()
    t, _, _ = S._enter_shape((0.0, 0.0, 0.0), d, (1.0, 1.0, 1.0), (S._NO_SLAB,) * 3)  # starts inside
    assert (t > S._MISS / 2).all()


def test_wall_straight_ahead_has_constant_z_depth() -> None:
    """Looking level along +z from z = 3 at the wall z = 5, which fills the view: z-depth 2 everywhere."""
    out = _render_one(_scene(pitch=0.0, camera_z=3.0), 33)
    assert (out["seg"] == 1).all()
    assert torch.allclose(out["depth"], torch.full((1, 33, 33), 2.0), rtol=1e-6)  # not the ray length
    assert torch.allclose(out["normals"], torch.tensor([0.0, 0.0, -1.0]).view(3, 1, 1).expand(3, 33, 33), atol=1e-6)


def test_floor_depth_for_known_height_and_pitch() -> None:
    """Height h, pitch p down: a pixel row at offset g (focal units) sees floor z-depth h / (sin p + g cos p)."""
    size, pitch, height = 33, math.radians(30), 1.5
    out = _render_one(_scene(pitch=pitch, height=height), size)
    focal = size / 2 / math.tan(math.radians(30))
    gy = _rays(focal, size, size)[1]
    floor = out["seg"] == 0
    assert floor[-5:].all() and floor.sum() > size * size / 3
    expected = height / (math.sin(pitch) + gy * math.cos(pitch))
    assert torch.allclose(out["depth"][0][floor], expected[floor], rtol=1e-5)
    up = torch.tensor([0.0, -math.cos(pitch), -math.sin(pitch)])  # world up in the camera frame
    assert torch.allclose(out["normals"][:, floor], up[:, None].expand(3, int(floor.sum())), atol=1e-6)


def test_sphere_on_the_optical_axis() -> None:
    sphere = {"kind": "sphere", "center": (0.0, 1.5, 0.0), "yaw": 0.3, "size": (0.5, 0.5, 0.5), "surface": GREY}
    out = _render_one(_scene(pitch=0.0, objects=[sphere]), 33)
    assert out["seg"][16, 16] == 2 and out["seg"][0, 0] == 1
    assert out["depth"][0, 16, 16].item() == pytest.approx(3.5, abs=1e-5)  # 4 m to the centre, radius 0.5
    assert torch.allclose(out["normals"][:, 16, 16], torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    # The sphere's angular radius asin(0.5 / 4) decides its pixel extent along the middle row.
    focal = 33 / 2 / math.tan(math.radians(30))
    half_width = focal * math.tan(math.asin(0.5 / 4))
    covered = (out["seg"][16] == 2).sum().item()
    assert abs(covered - 2 * half_width) <= 2


def test_normals_face_the_camera() -> None:
    scenes = S._pack(_random_scenes(8, seed=2), 48)
    out = S._render(scenes, 48, 48)
    for i, focal in enumerate(scenes.focal.tolist()):
        rays = _rays(focal, 48, 48)
        cosine = (out["normals"][i] * rays).sum(0) / rays.norm(dim=0)
        assert (cosine < 1e-4).all()
        assert (out["depth"][i] > 0).all()


def test_the_edges_target_is_derived_from_the_labels_and_the_default_recipe_never_reads_it() -> None:
    from multitask_deeplab.config import recipe as recipe_module
    from multitask_deeplab.data.boundaries import label_boundaries
    from multitask_deeplab.data.targets import batch_target_kinds
    from multitask_deeplab.engine.build import build_tasks

    dataset = ScenesDataset("val", num_samples=3, height=40, width=48)
    for sample in dataset.__getitems__(range(3)):
        assert torch.equal(sample["edges"], label_boundaries(sample["seg"])[None]) and sample["edges"].any()
    default = recipe_module.load(Path(__file__).resolve().parents[1] / "recipes" / "scenes_seg_depth.yaml")
    assert list(batch_target_kinds(dataset, build_tasks(default))) == ["seg", "depth"], "the trainer moves seg and depth only"
