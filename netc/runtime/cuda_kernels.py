"""The hand-written CUDA kernels of kernels/*.cu, called with the param dicts the layers get.

    top, mask = max_pool_forward(x, p, out=None, mask=None)
    top = max_pool_infer(x, p, out=None)        (no mask: inference)
    dx = max_pool_backward(dy, mask, x.shape, p, out=None)
    top = ave_pool_forward(x, p, out=None)      dx = ave_pool_backward(dy, x.shape, p, out=None)
    y, scale = lrn_forward(x, p, out=None, scale=None)
    y = lrn_infer(x, p, out=None)               (no scale: inference)
    dx = lrn_backward(x, y, scale, dy, p, out=None)
    y = conv_forward(x, w, bias, p, relu=False, out=None)
    dx = conv_backward_data(dy, w, x.shape, p, out=None)
    dw, db = conv_backward_weights(x, dy, w.shape, p, out=None)     db: None without a bias
    prob = softmax_forward(x, p, out=None)
    loss, prob = softmax_loss_forward(x, labels, p, prob=None)
    dx = softmax_loss_backward(prob, labels, p, top_diff, out=None)

Arrays are C-ordered NCHW CuPy arrays of float32 or float64; the results are new arrays
of the same dtype (MAX's mask: int32, the arg-max's flat index h·W + w in its plane;
the loss: a 0-d array), or, where the caller gives one (out, and mask, scale and prob
for what a forward keeps for its backward), that preallocated C-contiguous array of the
result's shape and dtype, written in place and returned (the executor's arena views;
conv_backward_weights takes a (dw, db) pair, or dw alone without a bias). A kernel's
own temporaries (the weight gradient's partial sums, the loss terms) are the
launcher's scratch: on the device, pieces of the layer call's planned workspace.
The semantics are the layers' (netc.layers.pool, lrn, conv and loss), which stay the
reference: the window geometry, the LRN constants, the convolution's output size and
the loss normalizer are taken from those modules, so a kernel never decides a default
of its own.

Each .cu file is read through the package (netc.kernels, see netc.resources), the
headers it includes (kernels/common.cuh) pasted in by kernel_source, compiled once per
process by CuPy's NVRTC with `-std=c++17`, and its `extern "C"` entry points
(`<kernel>_f32`, `<kernel>_f64`) are launched either one thread per work item with
grid-stride loops (any block size), or, for the cooperative kernels that share tiles
in shared memory (the convolution's), CONV_THREADS threads per block looping over
their tiles. CuPy is imported only when a kernel is first launched, so this module
imports without it.

Every function takes an optional `launcher`: what allocates the outputs
(`empty(shape, dtype)`), hands out temporaries (`scratch(shape, dtype, slot)`) and
launches a kernel by name, `launcher(source, kernel, count, args, threads=None)` (count
work items; threads: the block size a cooperative kernel needs, None for any). The
default runs on the current CUDA device; the tests pass one that poisons the outputs first,
and one that runs the same C entry points compiled for the host (tests/kernel_cases.py),
so the argument order and types are checked without a GPU too.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from netc.layers.base import canonical_axis, count as _count
from netc.layers.conv import Convolution
from netc.layers.im2col import conv_geometry
from netc.layers.loss import normalization_mode, normalizer, refuse_labels_outside
from netc.layers.lrn import LRN
from netc.layers.pool import _window as pool_window
from netc.resources import read_resource
from netc.runtime.scratch import workspace

BLOCK = 256           # threads per block: a multiple of the warp, enough to hide latency
MAX_BLOCKS = 65535    # grid-stride loops cover any size beyond this many blocks
CONV_THREADS = 256    # kernels/conv.cu's CONV_THREADS: its tiled kernels need exactly this many
CONV_TILE = 64        # its output tile: TILE × TILE
CONV_TILE_K = 16      # its reduction step: TILE_K
# Backward weights splits its reduction over N·OH·OW when the weight tiles are fewer than
# about this many blocks (enough to fill a large GPU twice), each split at least this
# many values long, so that a split's work outweighs its partial sum's round trip.
SPLIT_TARGET_BLOCKS = 256
SPLIT_MIN_DEPTH = 512

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _suffix(dtype) -> str:
    try:
        return _SUFFIX[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"the CUDA kernels run on float32 or float64 arrays, not {np.dtype(dtype)}") from None


_INCLUDE = re.compile(r'\s*#\s*include\s*"([^"]+)"')


def kernel_source(name: str, folder: Path | None = None) -> str:
    """kernels/<name> as one text, each `#include "X"` line replaced by kernels/X: NVRTC
    compiles a string and has no folder to find headers in. Headers inside headers are
    pasted too, each file once (a later include of it is dropped, as its guard would
    drop it), between #line directives, so that the compiler's messages name the file
    and line the code came from. folder: where the kernels are read from; None: the
    package's (netc.kernels). A missing file raises FileNotFoundError naming the include."""
    def read(filename: str) -> str:
        if folder is None:
            return read_resource("kernels", filename)
        return (Path(folder) / filename).read_text(encoding="utf-8")

    pasted = set()

    def expand(filename: str, text: str) -> list[str]:
        pasted.add(filename)
        lines = [f'#line 1 "kernels/{filename}"']
        for number, line in enumerate(text.splitlines(), start=1):
            match = _INCLUDE.match(line)
            if match is None:
                lines.append(line)
            elif match[1] in pasted:
                lines.append("")                # keeps the line numbers
            else:
                try:
                    header = read(match[1])
                except FileNotFoundError:
                    raise FileNotFoundError(f'kernels/{filename}:{number} includes "{match[1]}", '
                                            f"which is not among the kernels") from None
                lines += expand(match[1], header)
                lines.append(f'#line {number + 1} "kernels/{filename}"')
        return lines

    return "\n".join(expand(name, read(name))) + "\n"


@functools.lru_cache(maxsize=None)
def _module(source: str):
    """kernels/<source>.cu, its headers pasted in, compiled as a cupy.RawModule (once per process)."""
    import cupy
    return cupy.RawModule(code=kernel_source(f"{source}.cu"), options=("-std=c++17",))


class CupyLauncher:
    """Allocates on, and launches on, the current CUDA device."""

    def __init__(self):
        import cupy
        self.xp = cupy

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def scratch(self, shape, dtype, slot: str):
        """A temporary of one kernel call: in the layer call's planned workspace when
        the executor runs it (netc.runtime.scratch), else from CuPy's pool."""
        return workspace(self.xp, shape, dtype, slot)

    def __call__(self, source: str, kernel: str, count: int, args: tuple, threads: int | None = None) -> None:
        threads = threads or BLOCK
        blocks = min(-(-count // threads), MAX_BLOCKS)
        _module(source).get_function(kernel)((blocks,), (threads,), args)


def _launcher(launcher):
    return launcher if launcher is not None else CupyLauncher()


def divider(d: int) -> tuple[int, int]:
    """(magic, shift) of a kernels/common.cuh Divider for d ≥ 1: the smallest s with
    d ≤ 2^s, m = ⌊2^32·(2^s − d)/d⌋ + 1; the magic number as the int32 with its bits."""
    if not 1 <= d < 2 ** 31:
        raise ValueError(f"a Divider divides by 1 … 2^31 − 1, not {d}")
    shift = (d - 1).bit_length()
    magic = (2 ** 32 * (2 ** shift - d)) // d + 1
    return magic - 2 ** 32 if magic >= 2 ** 31 else magic, shift


# --- pooling ----------------------------------------------------------------------------

def _pool_geometry(shape, p) -> tuple:
    """The int32 geometry arguments of every pooling kernel (kernels/pool.cu's
    POOL_GEOMETRY_PARAMS) and the output shape, global pooling and rounding resolved as
    the layer resolves them."""
    n, c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = pool_window(p, h, w)
    geometry = tuple(np.int32(v) for v in (h, w, oh, ow, kh, kw, sh, sw, ph, pw))
    dividers = tuple(np.int32(v) for d in (h, w, oh, ow, sh, sw) for v in divider(d))
    return geometry + dividers, (n, c, oh, ow)


def max_pool_forward(x, p, launcher=None, out=None, mask=None):
    """(top, mask): MAX pooling and the int32 flat index of each window's first maximum."""
    run = _launcher(launcher)
    x = run.xp.ascontiguousarray(x)
    geometry, out_shape = _pool_geometry(x.shape, p)
    top = _output(run, out, out_shape, x.dtype, "max_pool_forward")
    mask = _output(run, mask, out_shape, np.int32, "max_pool_forward (mask)")
    if top.size:
        run("pool", f"max_pool_forward_{_suffix(x.dtype)}", top.size,
            (np.int64(top.size), x, *geometry, top, mask))
    return top, mask


def _pool_top(kernel: str, x, p, launcher, out):
    """A pooling forward whose only result is the top: kernels/pool.cu's `kernel`."""
    run = _launcher(launcher)
    x = run.xp.ascontiguousarray(x)
    geometry, out_shape = _pool_geometry(x.shape, p)
    top = _output(run, out, out_shape, x.dtype, kernel)
    if top.size:
        run("pool", f"{kernel}_{_suffix(x.dtype)}", top.size, (np.int64(top.size), x, *geometry, top))
    return top


def max_pool_infer(x, p, launcher=None, out=None):
    """MAX pooling's top alone: the forward without the arg-max a backward needs."""
    return _pool_top("max_pool_infer", x, p, launcher, out)


def max_pool_backward(dy, mask, bottom_shape, p, launcher=None, out=None):
    """∂loss/∂x of MAX pooling: each input element gathers the diffs whose mask names it."""
    run = _launcher(launcher)
    dy, mask = run.xp.ascontiguousarray(dy), run.xp.ascontiguousarray(mask, dtype=np.int32)
    geometry, _ = _pool_geometry(bottom_shape, p)
    dx = _output(run, out, bottom_shape, dy.dtype, "max_pool_backward")
    if dx.size:
        run("pool", f"max_pool_backward_{_suffix(dy.dtype)}", dx.size,
            (np.int64(dx.size), dy, mask, *geometry, dx))
    return dx


def ave_pool_forward(x, p, launcher=None, out=None):
    """AVE pooling with Caffe's divisor (padded cells count, the ceil overhang does not)."""
    return _pool_top("ave_pool_forward", x, p, launcher, out)


def ave_pool_backward(dy, bottom_shape, p, launcher=None, out=None):
    """∂loss/∂x of AVE pooling: each input element gathers dy / divisor of its windows."""
    run = _launcher(launcher)
    dy = run.xp.ascontiguousarray(dy)
    geometry, _ = _pool_geometry(bottom_shape, p)
    dx = _output(run, out, bottom_shape, dy.dtype, "ave_pool_backward")
    if dx.size:
        run("pool", f"ave_pool_backward_{_suffix(dy.dtype)}", dx.size, (np.int64(dx.size), dy, *geometry, dx))
    return dx


# --- LRN --------------------------------------------------------------------------------

def _lrn_constants(p):
    """(local_size, α/m, β, k, 2αβ/m) exactly as netc.layers.lrn computes them."""
    n, m, alpha, beta, k = LRN._constants(p)
    return n, alpha / m, beta, k, 2 * alpha * beta / m


def _lrn_kernel(p) -> str:
    return "lrn_across" if p["norm_region"] == "ACROSS_CHANNELS" else "lrn_within"


def _lrn_extent(shape, p) -> tuple[int, tuple]:
    """The work items (columns across channels, elements within) and the shape arguments."""
    n, c, h, w = shape
    if p["norm_region"] == "ACROSS_CHANNELS":
        return n * h * w, (np.int32(c), np.int32(h * w))
    return n * c * h * w, (np.int32(h), np.int32(w))


def lrn_forward(x, p, launcher=None, out=None, scale=None):
    """(y, scale): y = x·scale^(−β); scale is what lrn_backward needs."""
    run = _launcher(launcher)
    x = run.xp.ascontiguousarray(x)
    size, alpha_over_m, beta, k, _ = _lrn_constants(p)
    count, extent = _lrn_extent(x.shape, p)
    y = _output(run, out, x.shape, x.dtype, "lrn_forward")
    scale = _output(run, scale, x.shape, x.dtype, "lrn_forward (scale)")
    if count:
        run("lrn", f"{_lrn_kernel(p)}_forward_{_suffix(x.dtype)}", count,
            (np.int64(count), x, *extent, np.int32(size), np.float64(alpha_over_m), np.float64(beta),
             np.float64(k), scale, y))
    return y, scale


def lrn_infer(x, p, launcher=None, out=None):
    """LRN's y alone: the forward without the scale a backward needs."""
    run = _launcher(launcher)
    x = run.xp.ascontiguousarray(x)
    size, alpha_over_m, beta, k, _ = _lrn_constants(p)
    count, extent = _lrn_extent(x.shape, p)
    y = _output(run, out, x.shape, x.dtype, "lrn_infer")
    if count:
        run("lrn", f"{_lrn_kernel(p)}_infer_{_suffix(x.dtype)}", count,
            (np.int64(count), x, *extent, np.int32(size), np.float64(alpha_over_m), np.float64(beta),
             np.float64(k), y))
    return y


def lrn_backward(x, y, scale, dy, p, launcher=None, out=None):
    """∂loss/∂x = dy·scale^(−β) − (2αβ/m)·x·Σ_window(dy·y/scale)."""
    run = _launcher(launcher)
    x, y, scale, dy = (run.xp.ascontiguousarray(a) for a in (x, y, scale, dy))
    if len({x.dtype, y.dtype, scale.dtype, dy.dtype}) > 1:
        raise TypeError("lrn_backward needs x, y, scale and dy of one dtype")
    size, _, beta, _, coefficient = _lrn_constants(p)
    count, extent = _lrn_extent(x.shape, p)
    dx = _output(run, out, x.shape, x.dtype, "lrn_backward")
    if count:
        run("lrn", f"{_lrn_kernel(p)}_backward_{_suffix(x.dtype)}", count,
            (np.int64(count), x, y, scale, dy, *extent, np.int32(size), np.float64(beta),
             np.float64(coefficient), dx))
    return dx


# --- shared by the functions below ------------------------------------------------------

def _output(run, out, shape, dtype, what: str):
    """`out` when given (checked: shape, dtype, C-contiguous), else a new array."""
    shape = tuple(int(v) for v in shape)
    if out is None:
        return run.empty(shape, dtype)
    if tuple(out.shape) != shape or out.dtype != np.dtype(dtype) or not out.flags.c_contiguous:
        raise ValueError(f"{what}: out must be a C-contiguous {np.dtype(dtype)} array of shape {list(shape)}, "
                         f"got {out.dtype} {list(out.shape)}{'' if out.flags.c_contiguous else ' (not contiguous)'}")
    return out


def _check_shape(what: str, array, shape) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{what} has shape {list(array.shape)}, the layer's is {list(shape)}")


def _common_suffix(what: str, *arrays) -> str:
    """The kernels' dtype suffix of arrays that must share one dtype."""
    if len({np.dtype(a.dtype) for a in arrays}) > 1:
        raise TypeError(f"{what} needs arrays of one dtype, got {', '.join(str(a.dtype) for a in arrays)}")
    return _suffix(arrays[0].dtype)


# --- convolution ------------------------------------------------------------------------

_CONVOLUTION = Convolution()    # the layer's shape rule and parameter shapes


def _conv_geometry(x_shape, p) -> tuple:
    """The int32 geometry arguments of every convolution kernel (kernels/conv.cu's
    CONV_GEOMETRY_PARAMS), the layer's Geometry and the output shape, all as the layer
    computes them (its shape rule raises the layer's ShapeError for an input it cannot
    take)."""
    x_shape = tuple(int(v) for v in x_shape)
    (out_shape,) = _CONVOLUTION.infer(p, [x_shape], 1)
    n, c, h, w = x_shape
    geo = conv_geometry(p, c, h, w, out_shape[2], out_shape[3])
    values = (n, c, h, w, out_shape[1], geo.oh, geo.ow, geo.kh, geo.kw, geo.sh, geo.sw, geo.ph, geo.pw,
              geo.dh, geo.dw, p["group"])
    return tuple(np.int32(v) for v in values), geo, tuple(out_shape)


def _weight_shape(x_shape, p) -> tuple:
    return tuple(_CONVOLUTION.param_shapes(p, [tuple(x_shape)])[0])


def _tiles(rows: int, columns: int) -> int:
    """Output tiles of a rows × columns GEMM (kernels/conv.cu's TILE × TILE)."""
    return -(-rows // CONV_TILE) * -(-columns // CONV_TILE)


def _weight_splits(tiles: int, depth: int) -> tuple[int, int]:
    """(splits, split_depth) of backward weights' reduction over depth = N·OH·OW values:
    one split where the weight tiles fill the device or the reduction is short, else
    enough for about SPLIT_TARGET_BLOCKS blocks, each at least SPLIT_MIN_DEPTH long.
    split_depth is a multiple of the reduction step; decided from the shapes alone, so
    the sum's order, and so its bits, are the same on every run."""
    steps = -(-depth // CONV_TILE_K)
    splits = max(1, min(-(-SPLIT_TARGET_BLOCKS // tiles), depth // SPLIT_MIN_DEPTH))
    split_depth = max(1, -(-steps // splits)) * CONV_TILE_K
    return max(1, -(-depth // split_depth)), split_depth


def _weight_gradient_launch(geo, n: int, co: int, groups: int) -> tuple[int, int, int]:
    """(tiles, splits, split_depth) of backward weights: its output tiles over all groups
    and the split of its reduction (_weight_splits)."""
    tiles = groups * _tiles(co // groups, (geo.c // groups) * geo.kh * geo.kw)
    return (tiles,) + _weight_splits(tiles, n * geo.oh * geo.ow)


def conv_weight_partials_shape(x_shape, p) -> tuple | None:
    """The shape of backward weights' partial sums, one weight gradient per split of its
    reduction (the scratch conv_backward_weights takes), or None where it does not split."""
    _, geo, out_shape = _conv_geometry(x_shape, p)
    _, splits, _ = _weight_gradient_launch(geo, int(x_shape[0]), out_shape[1], p["group"])
    return None if splits == 1 else (splits,) + _weight_shape(x_shape, p)


def conv_forward(x, w, bias, p, relu=False, launcher=None, out=None):
    """y = conv(x, w) + bias, then max(y, 0) when relu: one implicit-GEMM launch, the bias
    and the ReLU in its epilogue. bias: None exactly when p["bias_term"] is false."""
    run = _launcher(launcher)
    x, w = run.xp.ascontiguousarray(x), run.xp.ascontiguousarray(w)
    geometry, geo, out_shape = _conv_geometry(x.shape, p)
    _check_shape("the weight", w, _weight_shape(x.shape, p))
    n, co = out_shape[:2]
    if (bias is not None) != bool(p["bias_term"]):
        raise ValueError(f"bias_term is {p['bias_term']} but the bias is {'missing' if bias is None else 'given'}")
    if bias is not None:
        bias = run.xp.ascontiguousarray(bias)
        _check_shape("the bias", bias, (co,))
    suffix = _common_suffix("conv_forward", x, w, *([bias] if bias is not None else []))
    y = _output(run, out, out_shape, x.dtype, "conv_forward")
    groups = p["group"]
    tiles = groups * _tiles(co // groups, n * geo.oh * geo.ow)
    if y.size:
        run("conv", f"conv_forward_{suffix}", tiles * CONV_THREADS,
            (x, w, w if bias is None else bias, np.int32(bias is not None), np.int32(bool(relu)), *geometry, y),
            threads=CONV_THREADS)
    return y


def conv_backward_data(dy, w, x_shape, p, launcher=None, out=None):
    """∂loss/∂x: each input element gathers w · dy over the filters and taps whose
    windows cover it (an implicit GEMM with Wᵀ; no col2im, no atomics)."""
    run = _launcher(launcher)
    dy, w = run.xp.ascontiguousarray(dy), run.xp.ascontiguousarray(w)
    geometry, geo, out_shape = _conv_geometry(x_shape, p)
    _check_shape("dy", dy, out_shape)
    _check_shape("the weight", w, _weight_shape(x_shape, p))
    suffix = _common_suffix("conv_backward_data", dy, w)
    dx = _output(run, out, x_shape, dy.dtype, "conv_backward_data")
    n, c, h, width = (int(v) for v in x_shape)
    groups = p["group"]
    tiles = groups * _tiles(c // groups, n * h * width)
    # stride 1 × 1 has an entry point of its own, free of the divisions by the stride
    kernel = "conv_backward_data_unit" if (geo.sh, geo.sw) == (1, 1) else "conv_backward_data"
    if dx.size:
        run("conv", f"{kernel}_{suffix}", tiles * CONV_THREADS, (dy, w, *geometry, dx), threads=CONV_THREADS)
    return dx


def conv_backward_weights(x, dy, w_shape, p, launcher=None, out=None):
    """(dw, db): dw = Σ over N·OH·OW of dy · col(x)ᵀ, an implicit GEMM (split over the
    pixels, and the splits summed in order by a second launch, where its tiles alone
    would leave the device idle); db = Σ dy per channel, None without a bias. out: dw's
    array, or a (dw, db) pair (db None without a bias)."""
    run = _launcher(launcher)
    x, dy = run.xp.ascontiguousarray(x), run.xp.ascontiguousarray(dy)
    geometry, geo, out_shape = _conv_geometry(x.shape, p)
    _check_shape("dy", dy, out_shape)
    w_shape = tuple(int(v) for v in w_shape)
    if w_shape != _weight_shape(x.shape, p):
        raise ValueError(f"the weight shape {list(w_shape)} is not the layer's {list(_weight_shape(x.shape, p))}")
    suffix = _common_suffix("conv_backward_weights", x, dy)
    dw_out, db_out = out if isinstance(out, (tuple, list)) else (out, None)
    n, co = out_shape[:2]
    dw = _output(run, dw_out, w_shape, x.dtype, "conv_backward_weights (dw)")
    db = _output(run, db_out, (co,), x.dtype, "conv_backward_weights (db)") if p["bias_term"] else None
    tiles, splits, split_depth = _weight_gradient_launch(geo, n, co, p["group"])
    if dw.size:
        partial = dw if splits == 1 else run.scratch((splits,) + w_shape, x.dtype, "conv_weight_partials")
        run("conv", f"conv_backward_weights_{suffix}", splits * tiles * CONV_THREADS,
            (x, dy, *geometry, np.int32(splits), np.int64(split_depth), partial), threads=CONV_THREADS)
        if splits > 1:
            run("conv", f"conv_reduce_splits_{suffix}", dw.size, (np.int64(dw.size), partial, np.int32(splits), dw))
    if db is not None and db.size:
        run("conv", f"conv_backward_bias_{suffix}", co * CONV_THREADS,
            (dy, np.int32(n), np.int32(co), np.int64(geo.oh * geo.ow), db), threads=CONV_THREADS)
    return dw, db


# --- Softmax and SoftmaxWithLoss --------------------------------------------------------

def _softmax_extent(shape, p) -> tuple[int, int, int]:
    """(outer, C, inner) around the softmax axis, as the layers resolve it."""
    axis = canonical_axis(p["axis"], tuple(shape))
    return _count(shape[:axis]), int(shape[axis]), _count(shape[axis + 1:])


def _ignore_args(p) -> tuple:
    ignore = p["ignore_label"]
    return np.int32(ignore is not None), np.int32(0 if ignore is None else ignore)


def _valid(xp, labels, p):
    """labels ≠ ignore_label (the labels truncated as the layer truncates them), or None
    without an ignore_label."""
    if p["ignore_label"] is None:
        return None
    return labels.astype(xp.int64) != p["ignore_label"]


def _softmax_loss_normalizer(xp, dtype, p, outer: int, inner: int, valid):
    """netc.layers.loss's normalizer of the layer's normalization mode."""
    mode = normalization_mode(p)
    return normalizer(xp, np.dtype(dtype), mode, outer, inner,
                      valid.sum() if valid is not None and mode == "VALID" else None)


def _softmax_labels(xp, labels, dtype, outer: int, inner: int):
    """The labels as a flat contiguous array of the data's dtype (what the kernels read)."""
    labels = xp.ascontiguousarray(labels, dtype=dtype).reshape(-1)
    if labels.size != outer * inner:
        raise ValueError(f"SoftmaxWithLoss has {labels.size} labels for {outer * inner} predictions")
    return labels


def softmax_forward(x, p, launcher=None, out=None):
    """Softmax over p["axis"]: prob = e^(x − max) / Σ e^(x − max), one thread per position."""
    run = _launcher(launcher)
    x = run.xp.ascontiguousarray(x)
    outer, classes, inner = _softmax_extent(x.shape, p)
    prob = _output(run, out, x.shape, x.dtype, "softmax_forward")
    if prob.size:
        run("softmax_loss", f"softmax_loss_forward_{_suffix(x.dtype)}", outer * inner,
            (np.int64(outer * inner), x, x, np.int32(classes), np.int32(inner), np.int32(0), np.int32(0),
             np.int32(0), prob, prob))
    return prob


def softmax_loss_forward(x, labels, p, launcher=None, prob=None):
    """(loss, prob) of SoftmaxWithLoss: one launch computes prob and each position's
    −log(max(prob[label], FLT_MIN)) (0 where ignored); their sum over the normalizer of
    loss_param (netc.layers.loss) is taken here, as a 0-d array. A label outside the
    classes is refused with the layer's NetcError (which waits for the device)."""
    run = _launcher(launcher)
    xp = run.xp
    x = xp.ascontiguousarray(x)
    outer, classes, inner = _softmax_extent(x.shape, p)
    labels = _softmax_labels(xp, labels, x.dtype, outer, inner)
    valid = _valid(xp, labels, p)
    truncated = labels.astype(xp.int64)
    refuse_labels_outside(xp, truncated if valid is None else xp.where(valid, truncated, 0), classes)
    prob = _output(run, prob, x.shape, x.dtype, "softmax_loss_forward (prob)")
    terms = run.scratch((outer * inner,), x.dtype, "softmax_loss_terms")
    if terms.size:
        run("softmax_loss", f"softmax_loss_forward_{_suffix(x.dtype)}", outer * inner,
            (np.int64(outer * inner), x, labels, np.int32(classes), np.int32(inner), np.int32(1), *_ignore_args(p),
             prob, terms))
    norm = _softmax_loss_normalizer(xp, x.dtype, p, outer, inner, valid)
    return xp.asarray(terms.sum() / norm, dtype=x.dtype), prob


def softmax_loss_backward(prob, labels, p, top_diff, launcher=None, out=None):
    """∂loss/∂x of SoftmaxWithLoss = (prob − onehot(label)) · top_diff / normalizer, zero
    at ignored positions: one thread per element. top_diff: the loss's gradient (a 0-d
    array or a number)."""
    run = _launcher(launcher)
    xp = run.xp
    prob = xp.ascontiguousarray(prob)
    outer, classes, inner = _softmax_extent(prob.shape, p)
    labels = _softmax_labels(xp, labels, prob.dtype, outer, inner)
    norm = _softmax_loss_normalizer(xp, prob.dtype, p, outer, inner, _valid(xp, labels, p))
    scale = xp.asarray(xp.asarray(top_diff, dtype=prob.dtype) / norm, dtype=prob.dtype).reshape(1)
    dx = _output(run, out, prob.shape, prob.dtype, "softmax_loss_backward")
    if dx.size:
        run("softmax_loss", f"softmax_loss_backward_{_suffix(prob.dtype)}", dx.size,
            (np.int64(dx.size), prob, labels, np.int32(classes), np.int32(inner), *_ignore_args(p), scale, dx))
    return dx
