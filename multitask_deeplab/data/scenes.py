"""Procedural rooms for segmentation, depth and normals: a dataset that needs no download.

Each sample is ray cast on the fly, deterministically from ``(seed, split, index)``: a pinhole camera in a
box-shaped room (floor, four walls, ceiling) with 1 to ``max_objects`` spheres, boxes (turned about the vertical)
and cylinders standing on the floor, occluding each other. Every surface gets a random colour and a plain, checker
or wave-noise solid texture in a darker shade of it, drawn from one distribution whatever its class, so colour never
gives the class away; random object sizes keep apparent size from giving the depth. Shading is Lambertian from one
directional light plus ambient; Gaussian pixel noise comes last.

Labels: classes ``floor, wall, sphere, box, cylinder`` (ids 0..4). The ceiling is labelled ``wall``, so every ray
hits a labelled surface and ``ignore_index`` never appears. ``edges`` are the thinned boundaries of the labels, derived
as PASCAL-Context's edge labels are (:func:`~multitask_deeplab.data.boundaries.label_boundaries`); computing them draws
no random number and changes no other target. Depth is z-depth along the optical axis in metres;
normals are unit vectors in the camera frame (x right, y down, z forward) facing the camera. World frame: y up,
the room spans ``[-w, w] x [0, h] x [-d, d]``.

Speed and determinism: ``__getitems__`` renders a whole batch in one vectorised call. Per-sample parameters are
computed in Python floats from a ``torch.Generator`` seeded by the sample, and per-pixel work uses only exactly
rounded operations (+, -, *, /, sqrt, floor, min, max) plus an exact scatter-min, so a sample is bit-identical
whether rendered alone or in any batch, worker or order.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from multitask_deeplab.data.base import DATASETS, IGNORE_INDEX
from multitask_deeplab.data.boundaries import label_boundaries
from multitask_deeplab.data.targets import standard_target_kinds
from multitask_deeplab.tasks import TaskKind

CLASS_NAMES = ("floor", "wall", "sphere", "box", "cylinder")
SPLIT_SIZES = {"train": 4000, "val": 200, "test": 200}
_SPLIT_OFFSETS = {"train": 0, "val": 1 << 40, "test": 2 << 40}  # disjoint global sample ids per split
_KINDS = ("sphere", "box", "cylinder")
_TILE = 8  # objects are ray cast only in the 8x8 pixel tiles their projection may touch
_ROOM_CHUNK = 1 << 16  # pixels per room rendering chunk: small enough for the tensors to stay in cache
_MISS = 1e9  # distance given to rays that miss an object, beyond any room wall
_NO_SLAB = 1e3  # slab half-size that never clips inside a room (metres)
_NO_QUADRIC = 1e-4  # quadric coefficient of a 100 m sphere: no constraint inside a room
_SCENE_DRAWS = 35  # uniforms drawn per scene, then per object slot (fixed, so slots never shift)
_OBJECT_DRAWS = 13

Vec = tuple[Any, Any, Any]  # three broadcastable components (tensors or floats)


class _Scenes(NamedTuple):
    """A batch of B scenes with N objects in all, ready to render; vectors in the camera frame unless stated.

    Surfaces are rows of 9: colour (3), second colour minus colour (3), inverse texture cell size (1/m),
    checker weight, wave-noise weight.
    """

    rot: Tensor  # B x 3 x 3 camera-to-world rotation (columns: camera axes in the world frame)
    pos: Tensor  # B x 3 camera position (world)
    focal: Tensor  # B focal length in pixels
    room_lo: Tensor  # B x 3 room corners (world)
    room_hi: Tensor  # B x 3
    light: Tensor  # B x 3 unit direction towards the light
    shade: Tensor  # B x 2 ambient, diffuse intensity
    floor: Tensor  # B x 9 floor surface
    wall: Tensor  # B x 9 walls and ceiling surface
    waves: Tensor  # B x 2 x 4 noise texture waves: wave vector (3), phase
    obj_scene: Tensor  # N scene of each object (int64)
    obj_class: Tensor  # N class id
    obj_axes: Tensor  # N x 3 x 3 rows: the object's local x, y (up), z axes
    obj_origin: Tensor  # N x 3 camera centre in the object's local frame
    obj_center: Tensor  # N x 3 object centre
    obj_radius: Tensor  # N bounding-sphere radius
    obj_quadric: Tensor  # N x 3 a: the object lies in sum(a_i q_i^2) <= 1 ...
    obj_slab: Tensor  # N x 3 s: ... and |q_i| <= s_i (local frame)
    obj_surface: Tensor  # N x 9


_SCENE_FIELDS = 10  # the first fields of _Scenes hold one row per scene


def _sample_seed(seed: int, global_id: int) -> int:
    """A 64-bit generator seed from the dataset seed and a global sample id (SplitMix64 finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + global_id + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _uniform(u: Iterator[float], low: float, high: float) -> float:
    return low + (high - low) * next(u)


def _random_surface(u: Iterator[float]) -> list[float]:
    """A surface row: a random colour, textured with a darker shade of it; one distribution for every class."""
    colour = colorsys.hsv_to_rgb(next(u), _uniform(u, 0.1, 0.9), _uniform(u, 0.4, 1.0))
    shade, cell, texture = _uniform(u, -0.45, -0.15), _uniform(u, 0.25, 0.8), next(u)
    checker, noise = float(0.3 <= texture < 0.65), float(texture >= 0.65)  # else plain
    return [*colour, *(c * shade for c in colour), 1.0 / cell, checker, noise]


def _random_scene(u: Iterator[float], max_objects: int, aspect: float) -> dict[str, Any]:
    """Draws one scene description (see ``_pack`` for the keys) from a stream of uniforms in [0, 1)."""
    half_width, height, half_depth = _uniform(u, 3.0, 6.0), _uniform(u, 2.8, 4.0), _uniform(u, 4.0, 7.0)
    cam_height, pitch = _uniform(u, 1.1, 1.7), math.radians(_uniform(u, 10.0, 30.0))
    vfov, yaw = math.radians(_uniform(u, 50.0, 65.0)), math.radians(_uniform(u, -35.0, 35.0))
    roll = math.radians(_uniform(u, -4.0, 4.0))
    cam = (_uniform(u, -0.4, 0.4) * half_width, cam_height, -half_depth + _uniform(u, 0.3, 1.5))
    elevation, azimuth = math.radians(_uniform(u, 20.0, 60.0)), _uniform(u, 0.0, 2.0 * math.pi)
    light = (math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth))
    shade = (_uniform(u, 0.25, 0.4), _uniform(u, 0.6, 0.85))
    floor, wall = _random_surface(u), _random_surface(u)
    waves = []
    for _ in range(2):  # a random direction (z up, uniform azimuth) times a frequency, and a phase
        z, phi, freq = _uniform(u, -1.0, 1.0), _uniform(u, 0.0, 2.0 * math.pi), _uniform(u, 0.6, 1.4)
        r = math.sqrt(1.0 - z * z)
        waves.append([freq * r * math.cos(phi), freq * z, freq * r * math.sin(phi), next(u)])
    count = 1 + min(int(next(u) * max_objects), max_objects - 1)

    # Objects stand on the floor in front of the camera, their near side within the visible stretch of floor.
    near = cam_height / math.tan(min(pitch + vfov / 2, math.radians(85.0)))
    far = cam_height / math.tan(pitch - vfov / 2) if pitch > vfov / 2 + 0.05 else math.inf
    d_min = max(1.2, near)
    d_max = max(d_min + 0.5, min(5.5, far))
    spread = 0.8 * math.tan(vfov / 2) * aspect
    forward, right = (math.sin(yaw), math.cos(yaw)), (-math.cos(yaw), math.sin(yaw))
    objects = []
    for slot in range(max_objects):
        kind = _KINDS[min(int(next(u) * 3), 2)]
        dist, lateral, turn = _uniform(u, d_min, d_max), _uniform(u, -spread, spread), _uniform(u, 0.0, math.pi)
        dims = [_uniform(u, 0.2, 0.7) for _ in range(3)]
        surface = _random_surface(u)
        if slot >= count:
            continue
        if kind == "sphere":
            size = (dims[0] + 0.05,) * 3
        elif kind == "box":
            size = tuple(dims)
        else:
            size = (dims[0] * 0.8, dims[1], dims[0] * 0.8)
        footprint = math.hypot(size[0], size[2]) if kind == "box" else size[0]
        x = cam[0] + (dist + footprint) * forward[0] + lateral * dist * right[0]
        z = cam[2] + (dist + footprint) * forward[1] + lateral * dist * right[1]
        x = min(max(x, -half_width + footprint), half_width - footprint)
        z = min(max(z, -half_depth + footprint), half_depth - footprint)
        objects.append({"kind": kind, "center": (x, size[1], z), "yaw": turn, "size": size, "surface": surface})
    return {
        "room": (half_width, height, half_depth),
        "camera": {"position": cam, "yaw": yaw, "pitch": pitch, "roll": roll, "vfov": vfov},
        "light": {"direction": light, "ambient": shade[0], "diffuse": shade[1]},
        "floor": floor,
        "wall": wall,
        "waves": waves,
        "objects": objects,
    }


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _camera_axes(yaw: float, pitch: float, roll: float) -> list[tuple[float, float, float]]:
    """Camera x (right), y (down), z (forward) axes in the world frame; pitch > 0 looks down."""
    fwd = (math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch))
    right = (-math.cos(yaw), 0.0, math.sin(yaw))
    down = (fwd[1] * right[2], fwd[2] * right[0] - fwd[0] * right[2], -fwd[1] * right[0])
    c, s = math.cos(roll), math.sin(roll)
    x = tuple(c * r + s * d for r, d in zip(right, down))
    y = tuple(c * d - s * r for r, d in zip(right, down))
    return [x, y, fwd]


def _pack(scenes: Sequence[dict[str, Any]], height: int) -> _Scenes:
    """Turns scene descriptions into batched tensors, computing camera-frame quantities in Python floats.

    A description has keys room (half width, height, half depth), camera (position, yaw, pitch, roll, vfov in
    radians), light (world direction towards the light, ambient, diffuse), floor and wall (surface rows), waves
    (2 rows of wave vector and phase) and objects (kind, world centre, yaw, size: sphere radius x3, box half
    extents, cylinder (radius, half height, radius); surface).
    """
    cams, objs = [], []
    for index, scene in enumerate(scenes):
        cam = scene["camera"]
        axes = _camera_axes(cam["yaw"], cam["pitch"], cam["roll"])
        pos = cam["position"]
        w, h, d = scene["room"]
        light = [_dot(a, scene["light"]["direction"]) for a in axes]
        rot = [axes[j][k] for k in range(3) for j in range(3)]
        focal = height / 2 / math.tan(cam["vfov"] / 2)
        shade = [scene["light"]["ambient"], scene["light"]["diffuse"]]
        cams.append((rot, pos, focal, (-w, 0.0, -d), (w, h, d), light, shade, scene["floor"], scene["wall"]))
        for obj in scene["objects"]:
            c, s = math.cos(obj["yaw"]), math.sin(obj["yaw"])
            local = [(c, 0.0, -s), (0.0, 1.0, 0.0), (s, 0.0, c)]
            rel = [p - q for p, q in zip(obj["center"], pos)]
            size = obj["size"]
            if obj["kind"] == "sphere":
                quadric, slab, radius = [size[0] ** -2] * 3, [_NO_SLAB] * 3, size[0]
            elif obj["kind"] == "box":
                quadric, slab, radius = [_NO_QUADRIC] * 3, list(size), math.sqrt(_dot(size, size))
            else:
                quadric, slab = [size[0] ** -2, 0.0, size[0] ** -2], [_NO_SLAB, size[1], _NO_SLAB]
                radius = math.hypot(size[0], size[1])
            objs.append(
                (
                    index,
                    CLASS_NAMES.index(obj["kind"]),
                    [_dot(e, a) for e in local for a in axes],
                    [-_dot(e, rel) for e in local],
                    [_dot(a, rel) for a in axes],
                    radius,
                    quadric,
                    slab,
                    obj["surface"],
                )
            )
    f32 = torch.float32
    cam_cols = [torch.tensor(col, dtype=f32) for col in zip(*cams)]
    obj_cols = [torch.tensor(col, dtype=f32) for col in zip(*objs)] if objs else [torch.zeros(0)] * 9
    return _Scenes(
        rot=cam_cols[0].view(-1, 3, 3),
        pos=cam_cols[1],
        focal=cam_cols[2],
        room_lo=cam_cols[3],
        room_hi=cam_cols[4],
        light=cam_cols[5],
        shade=cam_cols[6],
        floor=cam_cols[7],
        wall=cam_cols[8],
        waves=torch.tensor([scene["waves"] for scene in scenes], dtype=f32),
        obj_scene=obj_cols[0].long(),
        obj_class=obj_cols[1],
        obj_axes=obj_cols[2].view(-1, 3, 3),
        obj_origin=obj_cols[3].view(-1, 3),
        obj_center=obj_cols[4].view(-1, 3),
        obj_radius=obj_cols[5],
        obj_quadric=obj_cols[6].view(-1, 3),
        obj_slab=obj_cols[7].view(-1, 3),
        obj_surface=obj_cols[8].view(-1, 9),
    )


def _leave_box(origin: Vec, direction: Vec, lo: Vec, hi: Vec) -> tuple[Tensor, list[Tensor]]:
    """Ray parameter where rays from inside the box ``[lo, hi]`` leave it, and the per-axis exit parameters."""
    exits = []
    for o, d, low, high in zip(origin, direction, lo, hi):
        inv = 1.0 / d
        exits.append(torch.maximum((low - o) * inv, (high - o) * inv))
    return torch.minimum(torch.minimum(exits[0], exits[1]), exits[2]), exits


def _enter_shape(origin: Vec, direction: Vec, quadric: Vec, slab: Vec) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Ray entry into ``{q : sum(a_i q_i^2) <= 1 and |q_i| <= s_i}`` for rays ``origin + t * direction``.

    Returns:
        The entry parameter where the ray hits (``> _MISS / 2`` where it misses or starts inside), the raw entry
        parameter (valid only where hit) and the per-axis slab entry parameters (to find the face hit).
    """
    (o0, o1, o2), (d0, d1, d2), (a0, a1, a2) = origin, direction, quadric
    a = (a0 * d0 * d0 + a1 * d1 * d1 + a2 * d2 * d2).clamp_min(1e-30)  # 0: ray along a cylinder's axis
    neg_half_b = (-a0 * o0) * d0 + (-a1 * o1) * d1 + (-a2 * o2) * d2
    c = a0 * o0 * o0 + a1 * o1 * o1 + a2 * o2 * o2 - 1.0
    disc = neg_half_b * neg_half_b - a * c
    root = disc.clamp_min(0.0).sqrt()
    enter, leave = (neg_half_b - root) / a, (neg_half_b + root) / a
    faces = []
    for o, d, s in zip(origin, direction, slab):
        inv = 1.0 / d
        t0, t1 = (-s - o) * inv, (s - o) * inv
        near = torch.minimum(t0, t1)
        faces.append(near)
        enter, leave = torch.maximum(enter, near), torch.minimum(leave, torch.maximum(t0, t1))
    hit = (disc >= 0.0) & (enter <= leave) & (enter > 0.0)
    return enter + (~hit) * _MISS, enter, faces


def _shape_normal(point: Vec, direction: Vec, quadric: Vec, enter: Tensor, faces: list[Tensor]) -> Vec:
    """Outward (unnormalised) normal, in the shape frame, where rays entered a shape of ``_enter_shape``."""
    on_x = faces[0] == enter
    on_y = (faces[1] == enter) & ~on_x
    on_z = (faces[2] == enter) & ~(on_x | on_y)
    on_quadric = ~(on_x | on_y | on_z)
    return tuple(
        on_quadric * (a * q) - on_face * d.sign()
        for q, d, a, on_face in zip(point, direction, quadric, (on_x, on_y, on_z))
    )


def _albedo(point: Vec, surface: Sequence[Tensor], waves: Sequence[Sequence[Tensor]]) -> Vec:
    """Solid-texture colour at ``point`` from the 9 surface columns and the 2 noise waves' 4 columns each."""
    p = [x * surface[6] for x in point]
    cells = p[0].floor() + p[1].floor() + p[2].floor()
    pattern = (surface[7] * 2.0) * (cells * 0.5).frac().abs()  # checker: parity of the cell index sum
    bumps = 0.0
    for wave in waves:  # sum of periodic bumps |f| (1 - |f|) along random directions
        f = (p[0] * wave[0] + p[1] * wave[1] + p[2] * wave[2] + wave[3]).frac()
        bumps = f.abs() - f * f + bumps
    pattern = pattern + (surface[8] * 2.0) * bumps
    return tuple(surface[k] + pattern * surface[k + 3] for k in range(3))


def _shaded(albedo: Vec, normal: Vec, light: Sequence[Tensor], shade: Sequence[Tensor]) -> Vec:
    """Lambertian shading: albedo * (ambient + diffuse * max(0, n . l))."""
    lambert = (normal[0] * light[0] + normal[1] * light[1] + normal[2] * light[2]).clamp_min(0.0)
    intensity = shade[0] + shade[1] * lambert
    return tuple(c * intensity for c in albedo)


def _cols(table: Tensor, view: tuple[int, ...]) -> list[Tensor]:
    """The last-dimension columns of ``table`` reshaped to broadcast (e.g. B x 1 x 1 against B x H x W)."""
    return [col.reshape(view) for col in table.unbind(-1)]


def _render_room(scenes: _Scenes, gx: Tensor, gy: Tensor) -> list[Tensor]:
    """Depth, class (0 floor, 1 wall), normal (3) and colour (3) planes where each pixel's ray leaves the room."""
    per_scene = (-1, 1, 1)
    rot = [_cols(row, per_scene) for row in scenes.rot.unbind(1)]  # rot[k][j]: world axis k of camera axis j
    inv_focal = (1.0 / scenes.focal).view(per_scene)
    direction = tuple(
        (r[0] * inv_focal) * gx.view(1, 1, -1) + ((r[1] * inv_focal) * gy.view(1, -1, 1) + r[2]) for r in rot
    )
    origin = _cols(scenes.pos, per_scene)
    depth, exits = _leave_box(origin, direction, _cols(scenes.room_lo, per_scene), _cols(scenes.room_hi, per_scene))
    on_y = exits[1] == depth
    on_x = (exits[0] == depth) & ~on_y
    is_floor = (on_y & (direction[1] < 0.0)).float()
    # The inward normal -sign(d_k) e_k of the exit axis k, turned into the camera frame.
    signs = [on * d.sign() for on, d in zip((on_x, on_y, ~(on_x | on_y)), direction)]
    normal = tuple(signs[0] * -rot[0][j] - signs[1] * rot[1][j] - signs[2] * rot[2][j] for j in range(3))
    point = tuple(o + depth * d for o, d in zip(origin, direction))
    wall, floor_minus_wall = _cols(scenes.wall, per_scene), _cols(scenes.floor - scenes.wall, per_scene)
    surface = [w + is_floor * f for w, f in zip(wall, floor_minus_wall)]
    albedo = _albedo(point, surface, [_cols(wave, per_scene) for wave in scenes.waves.unbind(1)])
    colour = _shaded(albedo, normal, _cols(scenes.light, per_scene), _cols(scenes.shade, per_scene))
    return [depth, 1.0 - is_floor, *normal, *colour]


def _covered_tiles(low: Tensor, high: Tensor, size: int) -> Tensor:
    """N x tiles mask of the tiles along one image axis that overlap the pixel ranges [low, high]."""
    start = torch.arange(0, size, _TILE, dtype=torch.float32)
    return (start <= high[:, None]) & (start + (_TILE - 1) >= low[:, None])


def _object_tiles(scenes: _Scenes, height: int, width: int) -> Tensor:
    """(object, tile row, tile column) triples for every tile an object's projection may touch.

    The projection is bounded by the intersection of the bounding sphere's exact screen box and the screen box of
    the 8 corners of the local bounding box; an object reaching behind the camera covers the whole image.
    """
    focal = scenes.focal[scenes.obj_scene]
    extent = torch.minimum(scenes.obj_slab, scenes.obj_quadric.rsqrt())  # local bounding box half sizes
    signs = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.float32) * 2.0 - 1.0
    corners = scenes.obj_center[:, None] + torch.einsum("ci,ni,nij->ncj", signs, extent, scenes.obj_axes)
    r = scenes.obj_radius
    z = scenes.obj_center[:, 2]
    in_front = (corners[:, :, 2].amin(1) > 0.05) & (z - r > 0.05)
    corner_z = torch.where(in_front[:, None], corners[:, :, 2], 1.0)
    z = torch.where(in_front, z, r + 1.0)
    masks = []
    for axis, size in ((1, height), (0, width)):
        u = scenes.obj_center[:, axis]
        # Tangents of the two rays from the camera touching the bounding circle in the (u, z) plane.
        slope, spread = u / z, r / (u * u + z * z - r * r).sqrt()
        ratios = corners[:, :, axis] / corner_z
        low = torch.maximum((slope - spread) / (1.0 + slope * spread), ratios.amin(1)) * focal + (size / 2 - 1.5)
        high = torch.minimum((slope + spread) / (1.0 - slope * spread), ratios.amax(1)) * focal + (size / 2 + 0.5)
        masks.append(_covered_tiles(torch.where(in_front, low, 0.0), torch.where(in_front, high, size - 1.0), size))
    return (masks[0][:, :, None] & masks[1][:, None, :]).nonzero()


def _render_objects(scenes: _Scenes, tiles: Tensor, width: int, height: int) -> tuple[Tensor, list[Tensor]]:
    """Ray casts objects in their tiles: depth (missed: > _MISS / 2) and class, normal, colour planes (P x T x T)."""
    obj, ty, tx = tiles.unbind(1)
    scene = scenes.obj_scene[obj]
    per_tile = (-1, 1, 1)
    inv_focal = (1.0 / scenes.focal[scene]).view(per_tile)
    local = torch.arange(_TILE, dtype=torch.float32)
    gx = ((tx * _TILE).float().view(per_tile) + local.view(1, 1, -1) + (0.5 - width / 2)) * inv_focal
    gy = ((ty * _TILE).float().view(per_tile) + local.view(1, -1, 1) + (0.5 - height / 2)) * inv_focal
    axes = [_cols(axis, per_tile) for axis in scenes.obj_axes[obj].unbind(1)]
    direction = tuple(ax[0] * gx + (ax[1] * gy + ax[2]) for ax in axes)
    origin, quadric = _cols(scenes.obj_origin[obj], per_tile), _cols(scenes.obj_quadric[obj], per_tile)
    depth, enter, faces = _enter_shape(origin, direction, quadric, _cols(scenes.obj_slab[obj], per_tile))
    point = tuple(o + enter * d for o, d in zip(origin, direction))
    n = _shape_normal(point, direction, quadric, enter, faces)
    normal = tuple(n[0] * axes[0][j] + n[1] * axes[1][j] + n[2] * axes[2][j] for j in range(3))
    length = (normal[0] * normal[0] + normal[1] * normal[1] + normal[2] * normal[2]).sqrt()
    normal = tuple(c / length for c in normal)
    waves = [_cols(wave, per_tile) for wave in scenes.waves[scene].unbind(1)]
    albedo = _albedo(point, _cols(scenes.obj_surface[obj], per_tile), waves)
    colour = _shaded(albedo, normal, _cols(scenes.light[scene], per_tile), _cols(scenes.shade[scene], per_tile))
    label = scenes.obj_class[obj].view(per_tile).expand(-1, _TILE, _TILE)
    return depth, [label, *normal, *colour]


def _render(scenes: _Scenes, height: int, width: int) -> dict[str, Tensor]:
    """Renders a batch without pixel noise: image B x 3 x H x W, seg B x H x W, depth B x 1 x H x W, normals."""
    hp, wp = -(-height // _TILE) * _TILE, -(-width // _TILE) * _TILE
    gx = torch.arange(wp, dtype=torch.float32) + (0.5 - width / 2)  # pixel offsets from the principal point
    gy = torch.arange(hp, dtype=torch.float32) + (0.5 - height / 2)
    # Planes: depth, class, normal (3), colour (3). The room goes in chunks of about 64k pixels to stay in cache.
    planes = torch.empty(len(scenes.focal), 8, hp, wp)
    step = max(1, _ROOM_CHUNK // (hp * wp))
    for i in range(0, len(planes), step):
        chunk = _Scenes(*(field[i : i + step] for field in scenes[:_SCENE_FIELDS]), *scenes[_SCENE_FIELDS:])
        torch.stack(_render_room(chunk, gx, gy), 1, out=planes[i : i + step])
    tiles = _object_tiles(scenes, height, width)
    if len(tiles):
        depth, values = _render_objects(scenes, tiles, width, height)
        # Depth test: scatter-min every tile pixel into the room depth, then copy the nearest hits' values.
        offsets = (torch.arange(_TILE).view(-1, 1) * wp + torch.arange(_TILE)).view(1, _TILE, _TILE)
        target = scenes.obj_scene[tiles[:, 0]] * (8 * hp * wp) + tiles[:, 1] * (_TILE * wp) + tiles[:, 2] * _TILE
        target, depth = (target.view(-1, 1, 1) + offsets).view(-1), depth.view(-1)
        flat = planes.view(-1)
        flat.scatter_reduce_(0, target, depth, "amin")
        won = (depth == flat.index_select(0, target)).nonzero().squeeze(1)
        dest = target.index_select(0, won)
        for channel, value in enumerate(values, 1):
            flat.scatter_(0, dest + channel * hp * wp, value.reshape(-1).index_select(0, won))
    planes = planes[:, :, :height, :width]
    return {"image": planes[:, 5:8], "seg": planes[:, 1].long(), "depth": planes[:, :1], "normals": planes[:, 2:5]}


@DATASETS.register("scenes")
class ScenesDataset(torch.utils.data.Dataset):
    """Procedurally rendered rooms with segmentation, depth, normals and edges labels (see the module docstring).

    Args:
        split: "train", "val" or "test"; the splits never share a scene.
        num_samples: Number of samples; default 4000 for train and 200 for val and test.
        height: Image height in pixels (at least 16).
        width: Image width in pixels (at least 16).
        seed: Seed of the whole dataset; sample ``i`` of a split is the same for the same seed.
        max_objects: Each scene has 1 to ``max_objects`` objects.
        noise: Standard deviation of the Gaussian pixel noise added to the [0, 1] image.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        split: str = "train",
        *,
        num_samples: int | None = None,
        height: int = 128,
        width: int = 128,
        seed: int = 0,
        max_objects: int = 6,
        noise: float = 0.02,
    ) -> None:
        if split not in SPLIT_SIZES:
            raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLIT_SIZES)}")
        if num_samples is not None and not 0 < num_samples <= 1 << 40:
            raise ValueError(
                f"num_samples={num_samples} must be a positive count (at most 2**40), or None for the split's default"
            )
        if height < 16 or width < 16:
            raise ValueError(f"image size {height}x{width} is too small: use height and width of at least 16")
        if max_objects < 1:
            raise ValueError(f"max_objects={max_objects} must be at least 1")
        if noise < 0:
            raise ValueError(f"noise={noise} must be >= 0 (0 turns pixel noise off)")
        self.split = split
        self.class_names = list(CLASS_NAMES)
        self.num_samples = SPLIT_SIZES[split] if num_samples is None else num_samples
        self.height, self.width, self.seed = height, width, seed
        self.max_objects, self.noise = max_objects, noise

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def target_kinds(self) -> dict[str, TaskKind]:
        """The targets every sample holds: ``seg`` (5 classes), ``depth``, ``normals`` and ``edges``."""
        return standard_target_kinds(("seg", "depth", "normals", "edges"), num_classes=self.num_classes, class_names=self.class_names)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Tensor]]:
        """Renders the samples at ``indices`` in one vectorised call; returns one dict per index."""
        scenes, noise = [], torch.empty(len(indices), 3, self.height, self.width)
        draws = _SCENE_DRAWS + _OBJECT_DRAWS * self.max_objects
        for i, index in enumerate(indices):
            index = int(index)
            if not 0 <= index < self.num_samples:
                raise IndexError(f"index {index} out of range for a {self.split} split of {self.num_samples} samples")
            gen = torch.Generator().manual_seed(_sample_seed(self.seed, _SPLIT_OFFSETS[self.split] + index))
            uniforms = iter(torch.rand(draws, generator=gen, dtype=torch.float64).tolist())
            scenes.append(_random_scene(uniforms, self.max_objects, self.width / self.height))
            torch.randn(3, self.height, self.width, generator=gen, out=noise[i])
        batch = _render(_pack(scenes, self.height), self.height, self.width)
        batch["image"].add_(noise.mul_(self.noise)).clamp_(0.0, 1.0)
        batch["edges"] = label_boundaries(batch["seg"])[:, None]
        return [{key: value[i].contiguous() for key, value in batch.items()} for i in range(len(indices))]

    def __repr__(self) -> str:
        return (
            f"ScenesDataset(split={self.split!r}, num_samples={self.num_samples}, height={self.height}, "
            f"width={self.width}, seed={self.seed}, max_objects={self.max_objects}, noise={self.noise})"
        )
