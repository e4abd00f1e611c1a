"""`netc viz activations`: one example's feature maps at a layer, as a mosaic of heat maps.

The net runs forward (netc.runtime.infer) on the given inputs; the picture shows the
first example's blob [C, H, W] as C tiles in a near-square grid. Each map is stretched
over its own min..max (a constant map is black), coloured with mosaic's heat map and
enlarged so that its longer side is at least 32 pixels. A layer name means its first
top; an in-place layer after it (ReLU!) has already been applied to that blob, as in
Caffe, where the blob is shared.
"""
from __future__ import annotations

import numpy as np

from netc.errors import NetcError
from netc.viz.mosaic import (Grid, check_picture_path, colourise, compose, enlarge, heat_table, normalise,
                             scale_for, square_columns, write_png)

MIN_TILE = 32
SEP = 2
SEPARATOR = (96, 112, 128)    # a blue-grey that the heat map never produces


def blob_for(net_path: str, layer_or_blob: str) -> str:
    """The blob a --layer names: a layer's first top, or a blob by its own name."""
    from netc.compile import build_ir
    from netc.errors import did_you_mean

    ir = build_ir(net_path, "test")
    for layer in ir.layers:
        if layer.name == layer_or_blob:
            if not layer.tops:
                raise NetcError(f"layer '{layer_or_blob}' has no output to draw", layer.span)
            return layer.tops[0]
    blobs = [top for layer in ir.layers for top in layer.tops]
    if layer_or_blob in blobs:
        return layer_or_blob
    raise NetcError(f"the net has no layer or blob '{layer_or_blob}'", None,
                    did_you_mean(layer_or_blob, [l.name for l in ir.layers] + blobs))


def activations_picture(maps: np.ndarray, scale: int | None = None) -> np.ndarray:
    """The mosaic of one example's feature maps [C, H, W], as uint8 H×W×3."""
    channels, h, w = maps.shape
    scale = scale or scale_for(max(h, w), MIN_TILE)
    table = heat_table()
    tiles = [enlarge(colourise(normalise(m), table), scale) for m in maps]
    return compose(tiles, Grid(channels, square_columns(channels), h * scale, w * scale, SEP), SEPARATOR)


def feature_maps(value: np.ndarray, blob: str) -> np.ndarray:
    """The first example of a blob as [C, H, W]; a blob without a spatial extent is refused."""
    if value.ndim == 4:
        return value[0]
    if value.ndim == 3:                    # [N, C, W] as one row per map
        return value[0][:, None, :]
    raise NetcError(f"blob '{blob}' is {list(value.shape)}: no feature maps to draw", None,
                    "draw a convolution, pooling or normalisation layer's output ([N, C, H, W])")


def draw_activations(net_path: str, inputs: dict[str, np.ndarray], blob: str, output: str, weights=None,
                     seed: int = 0, scale: int | None = None, allow_missing: bool = False) -> tuple[int, ...]:
    """Run the net on the inputs and write the first example's maps of `blob`; returns [C, H, W]."""
    from netc.runtime.infer import run_inference

    check_picture_path(output)
    first = {name: array[:1] if array.ndim else array for name, array in inputs.items()}   # only the first example is drawn
    value = run_inference(net_path, first, weights, blobs=[blob], seed=seed, allow_missing=allow_missing)[blob]
    maps = feature_maps(value, blob)
    write_png(output, activations_picture(maps, scale))
    return tuple(maps.shape)
