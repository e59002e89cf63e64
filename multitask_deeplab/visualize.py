"""Colouring helpers for segmentation, depth and normals maps, picture grids and PNG files.

Every colouring function takes a torch tensor or a numpy array and returns a ``uint8`` numpy array of shape
H x W x 3, ready for :func:`make_grid`, :func:`overlay` or :func:`save_png`. Colour maps are built in (no
matplotlib): turbo from its published polynomial approximation, magma from 17 rows of its table.
"""

from __future__ import annotations

import colorsys
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

INVALID_GREY = (128, 128, 128)
"""Colour of pixels without a valid depth or normal."""


@dataclass(frozen=True)
class PictureOptions:
    """How pictures of predictions are drawn (each task kind reads what concerns it).

    Attributes:
        depth_cmap: Colour map of depth pictures, ``"turbo"`` or ``"magma"``.
        depth_max: Depth in metres shown with the last colour; ``None`` scales each picture to the 95th percentile of
            its reference's (else its own) valid depths.
    """

    depth_cmap: str = "turbo"
    depth_max: float | None = None

_BASE_COLOURS = [  # tab10, then a few more distinct colours; further classes get golden-ratio hues
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229), (57, 59, 121),
]  # fmt: skip

_TURBO_POLY = np.array(  # Mikhailov's turbo approximation: rows r, g, b; coefficients of x^0 .. x^5
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)

_MAGMA_ROWS = np.array([*range(0, 256, 16), 255]) / 255.0  # positions of the rows below in matplotlib's table
_MAGMA = np.array(
    [
        [0.001462, 0.000466, 0.013866], [0.039608, 0.031090, 0.133515], [0.113094, 0.065492, 0.276784],
        [0.211718, 0.061992, 0.418647], [0.316654, 0.071690, 0.485380], [0.414709, 0.110431, 0.504662],
        [0.512831, 0.148179, 0.507648], [0.613617, 0.181811, 0.498536], [0.716387, 0.214982, 0.475290],
        [0.816914, 0.255895, 0.436461], [0.904281, 0.319610, 0.388137], [0.960949, 0.418323, 0.359630],
        [0.986700, 0.535582, 0.382210], [0.996096, 0.653659, 0.446213], [0.996898, 0.769591, 0.534892],
        [0.992440, 0.884330, 0.640099], [0.987053, 0.991438, 0.749504],
    ]
)  # fmt: skip


def _numpy(array: Any) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _colour_map_lut(name: str) -> np.ndarray:
    """A 256 x 3 uint8 lookup table for the colour map ``name``."""
    x = np.linspace(0.0, 1.0, 256)
    if name == "turbo":
        rgb = np.stack([np.polynomial.polynomial.polyval(x, coeffs) for coeffs in _TURBO_POLY], 1)
    elif name == "magma":
        rgb = np.stack([np.interp(x, _MAGMA_ROWS, _MAGMA[:, c]) for c in range(3)], 1)
    else:
        raise ValueError(f"unknown colour map {name!r}: use 'turbo' or 'magma'")
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def segmentation_palette(num_classes: int) -> list[int]:
    """A flat 768-entry palette (for PIL "P" images): distinct colours for ids below ``num_classes``, black after.

    Args:
        num_classes: Number of classes, 1 to 255 (id 255 is left black for ``ignore_index``).
    """
    if not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes={num_classes} is out of range: use 1 to 255 (255 is kept for ignore)")
    colours = list(_BASE_COLOURS[:num_classes])
    for i in range(len(colours), num_classes):
        hue = (i * 0.618033988749895) % 1.0
        saturation, value = (0.9, 0.75, 0.6)[i % 3], (0.95, 0.7, 0.85)[(i // 3) % 3]
        colours.append(tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
    flat = [channel for colour in colours for channel in colour]
    return flat + [0] * (768 - len(flat))


def colorize_segmentation(seg: Any, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Colours a class map (H x W ints) with :func:`segmentation_palette`; ``ignore_index`` pixels are black.

    Args:
        seg: H x W class ids.
        num_classes: Number of classes; ids must lie in ``[0, num_classes)`` or equal ``ignore_index``.
        ignore_index: Label of unknown pixels.
    """
    seg = _numpy(seg)
    if seg.ndim != 2:
        raise ValueError(f"seg must be H x W, got shape {tuple(seg.shape)}; pass one sample's class map")
    seg = seg.astype(np.int64)
    valid = seg != ignore_index
    bad = seg[valid & ((seg < 0) | (seg >= num_classes))]
    if bad.size:
        raise ValueError(
            f"seg holds label {int(bad[0])}, outside [0, {num_classes}) and not ignore_index={ignore_index}; "
            "pass the dataset's num_classes and ignore_index"
        )
    palette = np.array(segmentation_palette(num_classes), dtype=np.uint8).reshape(256, 3)
    return np.where(valid[..., None], palette[np.where(valid, seg, 0)], np.uint8(0))


def colorize_depth(depth: Any, cmap: str = "turbo", vmax: float | None = None) -> np.ndarray:
    """Colours a depth map; pixels without valid depth (<= 0 or not finite) are grey.

    Args:
        depth: H x W (or 1 x H x W) depth in metres.
        cmap: "turbo" (near blue, far red) or "magma" (near dark, far light).
        vmax: Depth shown with the last colour; default the 95th percentile of the valid depths. Depth runs
            linearly from 0 to ``vmax``; farther pixels take the last colour.
    """
    depth = _numpy(depth).astype(np.float64)
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be H x W or 1 x H x W, got shape {tuple(depth.shape)}")
    lut = _colour_map_lut(cmap)
    valid = np.isfinite(depth) & (depth > 0)
    out = np.empty((*depth.shape, 3), dtype=np.uint8)
    out[:] = INVALID_GREY
    if not valid.any():
        return out
    if vmax is None:
        vmax = float(np.percentile(depth[valid], 95))
    if not vmax > 0:
        raise ValueError(f"vmax={vmax} must be positive")
    index = np.round(np.clip(depth[valid] / vmax, 0.0, 1.0) * 255).astype(np.int64)
    out[valid] = lut[index]
    return out


def colorize_scalar(values: Any, *, vmin: float = 0.0, vmax: float = 1.0, cmap: str = "magma") -> np.ndarray:
    """Colours an H x W (or 1 x H x W) map of scalars, e.g. probabilities, linearly from ``vmin`` to ``vmax``;
    values outside are clipped, non-finite pixels are grey."""
    values = _numpy(values).astype(np.float64)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise ValueError(f"values must be H x W or 1 x H x W, got shape {tuple(values.shape)}")
    if not vmax > vmin:
        raise ValueError(f"vmax={vmax} must be larger than vmin={vmin}")
    finite = np.isfinite(values)
    index = np.round(np.clip((np.where(finite, values, vmin) - vmin) / (vmax - vmin), 0.0, 1.0) * 255).astype(np.int64)
    return np.where(finite[..., None], _colour_map_lut(cmap)[index], np.array(INVALID_GREY, dtype=np.uint8))


def colorize_normals(normals: Any) -> np.ndarray:
    """Colours a 3 x H x W normal map as ``(n + 1) / 2 * 255``; all-zero (invalid) normals are grey."""
    normals = _numpy(normals).astype(np.float64)
    if normals.ndim != 3 or normals.shape[0] != 3:
        raise ValueError(f"normals must be 3 x H x W, got shape {tuple(normals.shape)}")
    rgb = np.round((np.clip(normals, -1.0, 1.0) + 1.0) / 2.0 * 255).astype(np.uint8).transpose(1, 2, 0)
    rgb[~normals.any(0)] = INVALID_GREY
    return rgb


def image_to_uint8(image: Any) -> np.ndarray:
    """Turns a 3 x H x W float image in [0, 1] into H x W x 3 uint8 (values outside [0, 1] are clipped)."""
    image = _numpy(image).astype(np.float64)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be 3 x H x W, got shape {tuple(image.shape)}")
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)


def _check_rgb(array: Any, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name} must be a uint8 H x W x 3 array, got {array.dtype} of shape {array.shape}")
    return array


def overlay(image: Any, colour: Any, alpha: float = 0.5) -> np.ndarray:
    """Blends ``colour`` over ``image`` (both uint8 H x W x 3): ``(1 - alpha) * image + alpha * colour``."""
    image, colour = _check_rgb(image, "image"), _check_rgb(colour, "colour")
    if image.shape != colour.shape:
        raise ValueError(f"image {image.shape} and colour {colour.shape} must have the same shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    blend = (1.0 - alpha) * image.astype(np.float64) + alpha * colour.astype(np.float64)
    return np.round(blend).astype(np.uint8)


def make_grid(rows: Sequence[Sequence[Any]], titles: Sequence[str] | None = None, pad: int = 2) -> np.ndarray:
    """Lays out uint8 H x W x 3 pictures in a grid on white, with optional column titles on top.

    Args:
        rows: Rows of pictures; rows may have different lengths, pictures different sizes (each cell takes the
            tallest picture of its row and the widest of its column, pictures sit in the top-left corner).
        titles: One title per column, drawn above the grid.
        pad: White pixels between and around cells.
    """
    if not rows or not all(rows):
        raise ValueError("make_grid needs at least one row and no empty rows")
    if pad < 0:
        raise ValueError(f"pad={pad} must be >= 0")
    rows = [[_check_rgb(cell, "every grid cell") for cell in row] for row in rows]
    columns = max(len(row) for row in rows)
    if titles is not None and len(titles) != columns:
        raise ValueError(f"got {len(titles)} titles for {columns} columns: give one title per column")
    heights = [max(cell.shape[0] for cell in row) for row in rows]
    widths = [max(row[c].shape[1] for row in rows if c < len(row)) for c in range(columns)]
    title_height = 14 if titles else 0
    grid_height = title_height + sum(heights) + pad * (len(rows) + 1)
    grid = np.full((grid_height, sum(widths) + pad * (columns + 1), 3), 255, np.uint8)
    xs = np.cumsum([pad] + [w + pad for w in widths])
    y = title_height + pad
    for row, height in zip(rows, heights):
        for x, cell in zip(xs, row):
            grid[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
        y += height + pad
    if titles:
        picture = Image.fromarray(grid)
        draw = ImageDraw.Draw(picture)
        for x, title in zip(xs, titles):
            draw.text((int(x), 1), title, fill=(0, 0, 0))
        grid = np.asarray(picture).copy()
    return grid


def save_png(array: Any, path: str | os.PathLike, palette: Sequence[int] | None = None) -> Path:
    """Writes a uint8 H x W x 3 (or H x W) array as a PNG, atomically: a temporary file, then a rename.

    Args:
        array: uint8 H x W x 3 colours, or H x W grey levels or palette indices.
        path: Destination; missing parent folders are created.
        palette: Flat palette (e.g. :func:`segmentation_palette`) to save an H x W array as a "P" image.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"save_png needs uint8 H x W x 3 or H x W, got {array.dtype} of shape {array.shape}")
    picture = Image.fromarray(array)
    if palette is not None:
        if array.ndim != 2:
            raise ValueError("a palette needs an H x W array of class ids, not colours")
        picture = picture.convert("P")
        picture.putpalette(list(palette))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            picture.save(file, format="PNG")
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    return path
