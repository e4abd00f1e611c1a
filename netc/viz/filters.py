"""`netc viz filters`: a convolution's learned kernels as a mosaic of small pictures,
like the 96 conv1 kernels in AlexNet's paper.

A weights blob [K, C, kh, kw] (Convolution: K outputs × C = inputs/group;
Deconvolution, stored as Caffe does: K = inputs, C = outputs/group) is K kernels.

  C = 3   each kernel is one RGB tile, the kernels in a near-square grid. Caffe's
          nets read images in BGR order, so channel 0 is blue unless --channel-order
          rgb says otherwise.
  C = 1   each kernel is one grey tile, in a near-square grid.
  else    each kernel is a strip of C grey tiles side by side, one strip per row.

Every kernel is normalised on its own over its min..max (all its channels together),
so a kernel and the same kernel ×10 look alike: the picture shows patterns, not
magnitudes.
"""
from __future__ import annotations

import numpy as np

from netc.compile import compile_net
from netc.errors import NetcError, did_you_mean
from netc.ir import Net
from netc.viz.mosaic import Grid, compose, enlarge, normalise, scale_for, square_columns, to_bytes, write_png

CONV_TYPES = ("Convolution", "Deconvolution")
MIN_TILE = 40          # pixels: a 3×3 or 5×5 kernel stays legible
SEPARATOR = 255        # white, as between the kernels in AlexNet's figure
SEP = 1


def kernel_weights(net: Net, weights_path: str, layer_name: str) -> np.ndarray:
    """The layer's weights blob [K, C, kh, kw], read from the weights file."""
    from netc.runtime.weight_files import load_weights

    names = [l.name for l in net.layers]
    if layer_name not in names:
        raise NetcError(f"the net has no layer '{layer_name}'", None,
                        did_you_mean(layer_name, names) or
                        "layers with kernels: " + (", ".join(l.name for l in net.layers if l.type in CONV_TYPES)
                                                   or "none"))
    layer = net.layer(layer_name)
    if layer.type not in CONV_TYPES:
        convs = [l.name for l in net.layers if l.type in CONV_TYPES]
        hint = f"layers with kernels: {', '.join(convs[:12])}" if convs else "this net has no convolution layers"
        raise NetcError(f"layer '{layer_name}' is {layer.type}, not a convolution: it has no kernels to draw",
                        layer.span, hint)
    weights = load_weights(weights_path, net, dtype=np.float32, allow_missing=True)
    blobs = weights.get(layer_name)
    if not blobs:
        raise NetcError(f"weights file '{weights_path}' has no weights for layer '{layer_name}'", layer.span,
                        "is it the weights of this net? layers are matched by name")
    return np.asarray(blobs[0])


def filters_picture(kernels: np.ndarray, scale: int | None = None, channel_order: str = "bgr") -> np.ndarray:
    """The mosaic of a [K, C, kh, kw] weights blob: uint8 H×W×3 for C = 3, else H×W."""
    if kernels.ndim != 4:
        raise NetcError(f"weights of shape {list(kernels.shape)} are not kernels [K, C, kh, kw]")
    count, channels, kh, kw = kernels.shape
    scale = scale or scale_for(max(kh, kw), MIN_TILE)
    tiles = []
    if channels == 3:
        order = [2, 1, 0] if channel_order == "bgr" else [0, 1, 2]
        for kernel in kernels:
            rgb = normalise(kernel)[order].transpose(1, 2, 0)
            tiles.append(enlarge(to_bytes(rgb), scale))
        grid = Grid(count, square_columns(count), kh * scale, kw * scale, SEP)
        return compose(tiles, grid, (SEPARATOR,) * 3)
    if channels == 1:
        tiles = [enlarge(to_bytes(normalise(kernel[0])), scale) for kernel in kernels]
        grid = Grid(count, square_columns(count), kh * scale, kw * scale, SEP)
        return compose(tiles, grid, SEPARATOR)
    # A strip per kernel: its channels as tiles in one row, normalised together.
    strip = Grid(channels, channels, kh * scale, kw * scale, SEP)
    for kernel in kernels:
        unit = normalise(kernel)
        tiles.append(compose([enlarge(to_bytes(c), scale) for c in unit], strip, SEPARATOR))
    strip_h, strip_w = strip.size
    return compose(tiles, Grid(count, 1, strip_h, strip_w, SEP), SEPARATOR)


def draw_filters(weights_path: str, net_path: str, layer_name: str, output: str,
                 scale: int | None = None, channel_order: str = "bgr", phase: str = "test") -> tuple[int, ...]:
    """Write the layer's kernels to `output` (.png); returns the weights blob's shape."""
    from netc.runtime.weight_files import weights_format
    from netc.viz.mosaic import check_picture_path

    check_picture_path(output)
    weights_format(weights_path)      # a wrong extension is reported before the net is compiled
    net = compile_net(net_path, phase)
    kernels = kernel_weights(net, weights_path, layer_name)
    write_png(output, filters_picture(kernels, scale, channel_order))
    return tuple(kernels.shape)
