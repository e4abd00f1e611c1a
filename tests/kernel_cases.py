"""The kernels of kernels/*.cu against the NumPy layers, shared by two runs of one check:

    tests/gpu/test_kernels.py   on a CUDA device through CuPy (netc.runtime.cuda_kernels'
                                default launcher), outputs poisoned with NaN first
    tests/test_kernels_host.py  the same C entry points compiled for the host by g++ with
                                a shim that runs a small grid's threads one after another

Every kernel's outputs are compared with the layer's own forward/backward
(netc.layers.REGISTRY, NumPy, float64) on random inputs over a grid of shapes and
parameters: odd sizes, stride > kernel, padding, ceil-mode edges, global pooling,
batch 1, 1/3/17 channels. float32 must agree to a relative 1e-5, float64 to 1e-12;
MAX's top and mask exactly.
"""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

from netc.layers import REGISTRY
from netc.runtime import cuda_kernels
from netc.runtime.backend import NUMPY, RunContext

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
POISON_INDEX = -12345          # an int32 mask value no window can produce

# shape, kernel, stride, pad, round_mode; kernel None: global pooling
POOL_CASES = [
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), "CEIL"),     # odd sizes, padding, ceil edge
    ((1, 17, 6, 6), (2, 2), (2, 2), (0, 0), "CEIL"),    # batch 1, 17 channels, tiled windows
    ((2, 1, 5, 7), (2, 2), (3, 3), (0, 0), "CEIL"),     # stride > kernel: pixels in no window
    ((1, 3, 8, 11), (3, 2), (1, 2), (1, 0), "CEIL"),    # rectangular kernel and stride
    ((2, 3, 10, 10), (3, 3), (2, 2), (0, 0), "CEIL"),   # the last window overhangs the image
    ((1, 3, 6, 7), (4, 4), (3, 3), (2, 2), "CEIL"),     # Caffe's "starts in the padding" rule
    ((2, 3, 10, 10), (3, 3), (2, 2), (1, 1), "FLOOR"),
    ((1, 3, 9, 9), (5, 5), (1, 1), (2, 2), "CEIL"),     # GoogLeNet-like stride 1, wide pad
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0), "CEIL"),
    ((2, 17, 5, 7), None, None, None, "CEIL"),          # global pooling
    ((1, 3, 13, 13), None, None, None, "CEIL"),         # AlexNet-sized global pool: 169 terms
]

# shape, local_size, alpha, beta, k, region
LRN_CASES = [
    ((2, 7, 3, 4), 5, 1.0, 0.75, 1.0, "ACROSS_CHANNELS"),
    ((1, 17, 5, 3), 5, 1e-4, 0.75, 1.0, "ACROSS_CHANNELS"),   # AlexNet's constants
    ((2, 3, 2, 5), 7, 1.5, 0.6, 2.0, "ACROSS_CHANNELS"),      # window wider than the channels
    ((1, 1, 3, 3), 3, 2.0, 1.3, 0.5, "ACROSS_CHANNELS"),
    ((2, 16, 3, 3), 1, 0.5, 0.75, 1.0, "ACROSS_CHANNELS"),
    ((2, 3, 5, 6), 3, 1.0, 0.75, 1.0, "WITHIN_CHANNEL"),
    ((1, 2, 4, 7), 5, 2.0, 0.6, 5.0, "WITHIN_CHANNEL"),       # k is ignored within
    ((1, 1, 2, 3), 5, 3.0, 0.75, 1.0, "WITHIN_CHANNEL"),      # window wider than the image
    ((2, 17, 7, 5), 3, 1e-4, 0.75, 1.0, "WITHIN_CHANNEL"),
    ((1, 3, 3, 3), 1, 1.0, 0.5, 1.0, "WITHIN_CHANNEL"),
]

DTYPES = (np.float32, np.float64)


def case_id(case) -> str:
    return "-".join(str(v).replace(" ", "") for v in case)


def layer_params(type_name: str, **given) -> dict:
    """The normalized param dict the layer gets, defaults filled in."""
    spec = REGISTRY[type_name]
    p = {param.name: param.default for param in spec.params}
    p.update(given)
    return spec.normalize(p)


def pool_params(method, kernel, stride, pad, round_mode) -> dict:
    if kernel is None:
        return layer_params("Pooling", pool=method, global_pooling=True, round_mode=round_mode)
    return layer_params("Pooling", pool=method, kernel_h=kernel[0], kernel_w=kernel[1], stride_h=stride[0],
                        stride_w=stride[1], pad_h=pad[0], pad_w=pad[1], round_mode=round_mode)


def lrn_params(size, alpha, beta, k, region) -> dict:
    return layer_params("LRN", local_size=size, alpha=alpha, beta=beta, k=k, norm_region=region)


def _ctx():
    return RunContext(NUMPY, "train", np.float64)


def pool_inputs(shape, dtype, seed, ties: bool):
    """x (dtype) and a top-shaped diff maker. ties: few distinct integer values, so that
    windows hold several equal maxima and the first-maximum rule is exercised."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape) if ties else rng.normal(size=shape)
    return x.astype(dtype), rng


def reference_pool(method, p, x, dy_seed):
    """The layer in float64: (top, mask or None, dy, dx)."""
    spec, ctx, state = REGISTRY["Pooling"], _ctx(), {"ntops": 2 if method == "MAX" else 1}
    x64 = x.astype(np.float64)
    tops = spec.forward(p, [x64], [], ctx, state)
    dy = np.random.default_rng(dy_seed).normal(size=tops[0].shape).astype(x.dtype)
    (dx,), _ = spec.backward(p, [x64], tops[:1], [dy.astype(np.float64)], [], ctx, state, [True])
    mask = tops[1].astype(np.int32) if method == "MAX" else None
    return tops[0], mask, dy, dx


def reference_lrn(p, x, dy_seed):
    """The layer in float64: (y, scale, dy, dx)."""
    spec, ctx, state = REGISTRY["LRN"], _ctx(), {"ntops": 1}
    x64 = x.astype(np.float64)
    (y,) = spec.forward(p, [x64], [], ctx, state)
    dy = np.random.default_rng(dy_seed).normal(size=y.shape).astype(x.dtype)
    (dx,), _ = spec.backward(p, [x64], [y], [dy.astype(np.float64)], [], ctx, state, [True])
    return y, state["scale"], dy, dx


def assert_close(got, want, dtype, what: str):
    """Relative error below 1e-5 (float32) or 1e-12 (float64), element by element, with
    an absolute floor of the same size relative to the array's largest magnitude (for
    elements that are a difference of larger terms). NaN (a poisoned, unwritten
    element) always fails."""
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, wanted {np.dtype(dtype)}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, wanted {want.shape}"
    rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    floor = rtol * max(float(np.abs(want).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=floor, equal_nan=False,
                               err_msg=what)


def check_pool(case, method, dtype, launcher, to_device, to_host):
    """Forward and backward of one pooling case against the layer, both input kinds."""
    shape, kernel, stride, pad, round_mode = case
    p = pool_params(method, kernel, stride, pad, round_mode)
    for ties in (False, True):
        x, _ = pool_inputs(shape, dtype, seed=len(shape) + shape[1] + ties, ties=ties)
        top, mask, dy, dx = reference_pool(method, p, x, dy_seed=7)
        if method == "MAX":
            got_top, got_mask = cuda_kernels.max_pool_forward(to_device(x), p, launcher=launcher)
            np.testing.assert_array_equal(to_host(got_top), top.astype(dtype), err_msg="max top")
            np.testing.assert_array_equal(to_host(got_mask), mask, err_msg="max mask")
            # the backward from the reference's mask, so that it is judged on its own
            got_dx = cuda_kernels.max_pool_backward(to_device(dy), to_device(mask), x.shape, p,
                                                    launcher=launcher)
        else:
            got_top = cuda_kernels.ave_pool_forward(to_device(x), p, launcher=launcher)
            assert_close(to_host(got_top), top, dtype, "ave top")
            got_dx = cuda_kernels.ave_pool_backward(to_device(dy), x.shape, p, launcher=launcher)
        assert_close(to_host(got_dx), dx, dtype, f"{method.lower()} dx")


def check_lrn(case, dtype, launcher, to_device, to_host):
    shape, size, alpha, beta, k, region = case
    p = lrn_params(size, alpha, beta, k, region)
    x = (np.random.default_rng(shape[1] + size).normal(size=shape) * 2).astype(dtype)
    y, scale, dy, dx = reference_lrn(p, x, dy_seed=9)
    got_y, got_scale = cuda_kernels.lrn_forward(to_device(x), p, launcher=launcher)
    assert_close(to_host(got_y), y, dtype, "lrn y")
    assert_close(to_host(got_scale), scale, dtype, "lrn scale")
    # the backward from the reference's y and scale (in dtype), judged on its own
    got_dx = cuda_kernels.lrn_backward(to_device(x), to_device(y.astype(dtype)), to_device(scale.astype(dtype)),
                                       to_device(dy), p, launcher=launcher)
    assert_close(to_host(got_dx), dx, dtype, "lrn dx")


def poisoned(xp, shape, dtype):
    """An output buffer every element of which fails the comparison unless written."""
    if np.dtype(dtype).kind == "f":
        return xp.full(shape, np.nan, dtype=dtype)
    return xp.full(shape, POISON_INDEX, dtype=dtype)


# --- the host build: the .cu files as plain C++ ---------------------------------------------

HOST_SHIM = """\
// Compiles a kernels/*.cu file as host C++: the qualifiers vanish and the built-in
// indices become globals that the launcher sets before calling an entry point once per
// (block, thread) of the grid. The kernels share nothing between threads (no shared
// memory, no atomics), so running the threads one after another computes what the
// device computes, and a wrong grid-stride start or step leaves poisoned elements.
#include <cmath>
#define __global__
#define __device__
#define __forceinline__ inline
struct HostDim { unsigned x, y, z; };
static HostDim blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0};
static HostDim blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
extern "C" void host_set_thread(unsigned block, unsigned thread, unsigned blocks, unsigned threads) {
    blockIdx.x = block;
    threadIdx.x = thread;
    gridDim.x = blocks;
    blockDim.x = threads;
}
using std::pow;
"""


def build_host_library(source: Path, folder: Path) -> Path:
    """kernels/<name>.cu compiled by g++ into a shared library, warnings as errors."""
    shim = folder / "host_shim.h"
    shim.write_text(HOST_SHIM)
    library = folder / f"{source.stem}.so"
    subprocess.run(["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
                    "-shared", "-fPIC", "-x", "c++", "-include", str(shim), str(source), "-o", str(library)],
                   check=True, capture_output=True, text=True)
    return library


class HostLauncher:
    """cuda_kernels' launcher interface over the host-compiled C entry points: NumPy
    arrays as pointers, numpy.int32/int64/float64 as the C types the kernels declare,
    outputs poisoned before each launch. Every launch is a grid of `blocks` × `threads`
    (3 × 5 by default: fewer threads than most cases' work items, so each thread strides,
    more than the smallest's, so some threads find nothing to do)."""
    xp = np

    def __init__(self, libraries: dict[str, Path], blocks: int = 3, threads: int = 5):
        self.libraries = {name: ctypes.CDLL(str(path)) for name, path in libraries.items()}
        self.blocks, self.threads = blocks, threads

    def empty(self, shape, dtype):
        return poisoned(np, shape, dtype)

    def __call__(self, source: str, kernel: str, count: int, args: tuple) -> None:
        converted = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous
                converted.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int32):
                converted.append(ctypes.c_int32(int(a)))
            elif isinstance(a, np.int64):
                converted.append(ctypes.c_int64(int(a)))
            elif isinstance(a, np.float64):
                converted.append(ctypes.c_double(float(a)))
            else:
                raise TypeError(f"{kernel}: argument of type {type(a).__name__} would not reach CUDA as declared")
        library = self.libraries[source]
        for block in range(self.blocks):
            for thread in range(self.threads):
                library.host_set_thread(block, thread, self.blocks, self.threads)
                getattr(library, kernel)(*converted)
