"""Tiles in a grid, a heat colour map and PNG output: what the filter and feature-map
pictures share.

A mosaic of n tiles, each th × tw pixels, in `cols` columns with `sep` pixels between
neighbouring tiles (none around the edge) is

    rows   = ceil(n / cols)
    width  = cols·tw + (cols − 1)·sep
    height = rows·th + (rows − 1)·sep

Cells past the last tile are left in the separator colour.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from netc.errors import NetcError
from netc.fileio import write_bytes_atomic


@dataclass(frozen=True)
class Grid:
    count: int
    cols: int
    tile_h: int
    tile_w: int
    sep: int

    @property
    def rows(self) -> int:
        return math.ceil(self.count / self.cols)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the whole picture in pixels."""
        return (self.rows * self.tile_h + (self.rows - 1) * self.sep,
                self.cols * self.tile_w + (self.cols - 1) * self.sep)

    def origin(self, i: int) -> tuple[int, int]:
        """Top-left pixel of tile i, filled row by row."""
        r, c = divmod(i, self.cols)
        return r * (self.tile_h + self.sep), c * (self.tile_w + self.sep)


def square_columns(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def scale_for(extent: int, at_least: int) -> int:
    """The integer enlargement that makes `extent` pixels at least `at_least`."""
    return max(1, math.ceil(at_least / max(1, extent)))


def normalise(values: np.ndarray) -> np.ndarray:
    """values mapped linearly onto 0..1 over their own min..max; a constant array is all 0
    (a dead kernel or map has no contrast to show, and 0 reads as 'nothing here')."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = values.min(), values.max()
    if not np.isfinite(lo) or not np.isfinite(hi):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = values.min(), values.max()
    if hi <= lo:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


def to_bytes(unit: np.ndarray) -> np.ndarray:
    """0..1 floats as 0..255 uint8, rounded."""
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """Each pixel as a scale × scale block (nearest neighbour, so pixels stay crisp)."""
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def compose(tiles: list[np.ndarray], grid: Grid, background) -> np.ndarray:
    """The tiles (uint8, th × tw or th × tw × 3) placed on a background-coloured canvas."""
    h, w = grid.size
    channels = tiles[0].shape[2:] if tiles else ()
    canvas = np.empty((h, w) + channels, dtype=np.uint8)
    canvas[...] = background
    for i, tile in enumerate(tiles):
        y, x = grid.origin(i)
        canvas[y:y + grid.tile_h, x:x + grid.tile_w] = tile
    return canvas


# A heat map from black through purple, red and orange to near-white. Anchor colours
# are spaced so that luma (Rec. 709 weights) rises at every step: a brighter pixel
# always means a larger value, also when printed in grey, and 0 is black.
HEAT_ANCHORS = np.array([
    (0, 0, 0),
    (36, 4, 66),
    (104, 14, 104),
    (170, 36, 82),
    (222, 74, 44),
    (246, 128, 20),
    (250, 190, 50),
    (252, 232, 130),
    (255, 255, 236),
], dtype=np.float64)


def heat_table(entries: int = 256) -> np.ndarray:
    """The heat map as `entries` RGB uint8 colours, interpolated linearly between anchors."""
    at = np.linspace(0.0, 1.0, len(HEAT_ANCHORS))
    x = np.linspace(0.0, 1.0, entries)
    table = np.stack([np.interp(x, at, HEAT_ANCHORS[:, k]) for k in range(3)], axis=1)
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722


def colourise(unit: np.ndarray, table: np.ndarray) -> np.ndarray:
    """0..1 values as colours of the table (h × w → h × w × 3)."""
    index = np.clip(np.rint(unit * (len(table) - 1)), 0, len(table) - 1).astype(np.intp)
    return table[index]


PICTURE_SUFFIXES = (".png",)


def check_picture_path(path: str) -> None:
    if not str(path).lower().endswith(PICTURE_SUFFIXES):
        raise NetcError(f"cannot write '{path}': pictures are written as .png", None,
                        "give an output name ending in .png")


def write_png(path: str, pixels: np.ndarray) -> None:
    """Write a uint8 H×W (grey) or H×W×3 (RGB) array as a PNG, atomically."""
    from PIL import Image

    check_picture_path(path)
    buffer = io.BytesIO()
    # Pillow reads the mode from the array: uint8 H×W is "L", H×W×3 is "RGB"
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue(), "picture")
