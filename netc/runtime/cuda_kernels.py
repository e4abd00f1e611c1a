"""The hand-written CUDA kernels of kernels/*.cu, called with the param dicts the layers get.

    top, mask = max_pool_forward(x, p)          dx = max_pool_backward(dy, mask, x.shape, p)
    top = ave_pool_forward(x, p)                dx = ave_pool_backward(dy, x.shape, p)
    y, scale = lrn_forward(x, p)                dx = lrn_backward(x, y, scale, dy, p)

Arrays are C-ordered NCHW CuPy arrays of float32 or float64; the results are new arrays
of the same dtype (MAX's mask: int32, the arg-max's flat index h·W + w in its plane).
The semantics are netc.layers.pool's and netc.layers.lrn's, which stay the reference:
the window geometry and the LRN constants are taken from those modules, so a kernel
never decides a default of its own.

Each .cu file is read through the package (netc.kernels, see netc.resources), compiled
once per process by CuPy's NVRTC with `-std=c++17`, and its `extern "C"` entry points
(`<kernel>_f32`, `<kernel>_f64`) are launched one thread per work item with grid-stride
loops. CuPy is imported only when a kernel is first launched, so this module imports
without it.

Every function takes an optional `launcher`: what allocates the outputs and launches a
kernel by name. The default runs on the current CUDA device; the tests pass one that
poisons the outputs first, and one that runs the same C entry points compiled for the
host (tests/kernel_cases.py), so the argument order is checked without a GPU too.
"""
from __future__ import annotations

import functools

import numpy as np

from netc.layers.lrn import LRN
from netc.layers.pool import _window as pool_window
from netc.resources import read_resource

BLOCK = 256           # threads per block: a multiple of the warp, enough to hide latency
MAX_BLOCKS = 65535    # grid-stride loops cover any size beyond this many blocks

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _suffix(dtype) -> str:
    try:
        return _SUFFIX[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"the CUDA kernels run on float32 or float64 arrays, not {np.dtype(dtype)}") from None


@functools.lru_cache(maxsize=None)
def _module(source: str):
    """kernels/<source>.cu compiled as a cupy.RawModule (once per process)."""
    import cupy
    code = f'#line 1 "kernels/{source}.cu"\n' + read_resource("kernels", f"{source}.cu")
    return cupy.RawModule(code=code, options=("-std=c++17",))


class CupyLauncher:
    """Allocates on, and launches on, the current CUDA device."""

    def __init__(self):
        import cupy
        self.xp = cupy

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def __call__(self, source: str, kernel: str, count: int, args: tuple) -> None:
        blocks = min(-(-count // BLOCK), MAX_BLOCKS)
        _module(source).get_function(kernel)((blocks,), (BLOCK,), args)


def _launcher(launcher):
    return launcher if launcher is not None else CupyLauncher()


# --- pooling ----------------------------------------------------------------------------

def _pool_geometry(shape, p) -> tuple:
    """The int32 geometry arguments of every pooling kernel (kernels/pool.cu's
    POOL_GEOMETRY_PARAMS) and the output shape, global pooling and rounding resolved as
    the layer resolves them."""
    n, c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = pool_window(p, h, w)
    geometry = tuple(np.int32(v) for v in (h, w, oh, ow, kh, kw, sh, sw, ph, pw))
    return geometry, (n, c, oh, ow)


def max_pool_forward(x, p, launcher=None):
    """(top, mask): MAX pooling and the int32 flat index of each window's first maximum."""
    run = _launcher(launcher)
    x = run.xp.ascontiguousarray(x)
    geometry, out_shape = _pool_geometry(x.shape, p)
    top, mask = run.empty(out_shape, x.dtype), run.empty(out_shape, np.int32)
    if top.size:
        run("pool", f"max_pool_forward_{_suffix(x.dtype)}", top.size,
            (np.int64(top.size), x, *geometry, top, mask))
    return top, mask


def max_pool_backward(dy, mask, bottom_shape, p, launcher=None):
    """∂loss/∂x of MAX pooling: each input element gathers the diffs whose mask names it."""
    run = _launcher(launcher)
    dy, mask = run.xp.ascontiguousarray(dy), run.xp.ascontiguousarray(mask, dtype=np.int32)
    geometry, _ = _pool_geometry(bottom_shape, p)
    dx = run.empty(tuple(bottom_shape), dy.dtype)
    if dx.size:
        run("pool", f"max_pool_backward_{_suffix(dy.dtype)}", dx.size,
            (np.int64(dx.size), dy, mask, *geometry, dx))
    return dx


def ave_pool_forward(x, p, launcher=None):
    """AVE pooling with Caffe's divisor (padded cells count, the ceil overhang does not)."""
    run = _launcher(launcher)
    x = run.xp.ascontiguousarray(x)
    geometry, out_shape = _pool_geometry(x.shape, p)
    top = run.empty(out_shape, x.dtype)
    if top.size:
        run("pool", f"ave_pool_forward_{_suffix(x.dtype)}", top.size, (np.int64(top.size), x, *geometry, top))
    return top


def ave_pool_backward(dy, bottom_shape, p, launcher=None):
    """∂loss/∂x of AVE pooling: each input element gathers dy / divisor of its windows."""
    run = _launcher(launcher)
    dy = run.xp.ascontiguousarray(dy)
    geometry, _ = _pool_geometry(bottom_shape, p)
    dx = run.empty(tuple(bottom_shape), dy.dtype)
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


def lrn_forward(x, p, launcher=None):
    """(y, scale): y = x·scale^(−β); scale is what lrn_backward needs."""
    run = _launcher(launcher)
    x = run.xp.ascontiguousarray(x)
    size, alpha_over_m, beta, k, _ = _lrn_constants(p)
    count, extent = _lrn_extent(x.shape, p)
    y, scale = run.empty(x.shape, x.dtype), run.empty(x.shape, x.dtype)
    if count:
        run("lrn", f"{_lrn_kernel(p)}_forward_{_suffix(x.dtype)}", count,
            (np.int64(count), x, *extent, np.int32(size), np.float64(alpha_over_m), np.float64(beta),
             np.float64(k), scale, y))
    return y, scale


def lrn_backward(x, y, scale, dy, p, launcher=None):
    """∂loss/∂x = dy·scale^(−β) − (2αβ/m)·x·Σ_window(dy·y/scale)."""
    run = _launcher(launcher)
    x, y, scale, dy = (run.xp.ascontiguousarray(a) for a in (x, y, scale, dy))
    if len({x.dtype, y.dtype, scale.dtype, dy.dtype}) > 1:
        raise TypeError("lrn_backward needs x, y, scale and dy of one dtype")
    size, _, beta, _, coefficient = _lrn_constants(p)
    count, extent = _lrn_extent(x.shape, p)
    dx = run.empty(x.shape, x.dtype)
    if count:
        run("lrn", f"{_lrn_kernel(p)}_backward_{_suffix(x.dtype)}", count,
            (np.int64(count), x, y, scale, dy, *extent, np.int32(size), np.float64(beta),
             np.float64(coefficient), dx))
    return dx
