"""The kernels of kernels/*.cu against the NumPy layers, shared by two runs of one check:

    tests/gpu/test_kernels.py   on a CUDA device through CuPy (netc.runtime.cuda_kernels'
                                default launcher), outputs poisoned with NaN first
    tests/test_kernels_host.py  the same C entry points compiled for the host by g++ with
                                a shim that runs a small grid's threads one after another
                                (as coroutines, so that shared memory and barriers work),
                                outputs poisoned and guarded by margins

Every kernel's outputs are compared with the layer's own forward/backward
(netc.layers.REGISTRY, NumPy, float64) on random inputs over a grid of shapes and
parameters: odd sizes, stride > kernel, padding, ceil-mode edges, global pooling,
batch 1, 1/3/17 channels; for the convolution also dilation, groups up to depthwise,
channel counts that are not multiples of its 64-wide tiles (3/5/17/70), 1×1 and 11×11
kernels, the fused ReLU and the split reduction of its weight gradient; for the
softmax loss every normalization, ignore_label, other axes and probabilities below
FLT_MIN. float32 must agree to a relative 1e-5 (the convolution's float GEMMs 1e-4),
float64 to 1e-12 (the convolution 1e-10); MAX's top and mask exactly.
"""
from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import numpy as np

from netc.layers import REGISTRY
from netc.runtime import cuda_kernels
from netc.runtime.backend import NUMPY, RunContext
from netc.runtime.scratch import workspace

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

# x shape, num_output, kernel (h, w), stride, pad, dilation, group, bias_term.
# The tiles are 64 × 64 (kernels/conv.cu): 70 channels take two tiles, 17 part of one.
CONV_CASES = [
    ((2, 3, 7, 9), 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),       # odd sizes, padding
    ((1, 5, 8, 8), 7, (3, 3), (2, 2), (0, 0), (1, 1), 1, True),       # batch 1, stride 2
    ((2, 3, 9, 10), 4, (2, 2), (3, 3), (0, 0), (1, 1), 1, True),      # stride > kernel: pixels no window sees
    ((2, 4, 9, 10), 6, (3, 3), (1, 1), (2, 2), (2, 2), 1, False),     # dilation 2, no bias
    ((2, 4, 6, 7), 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, True),       # group 2
    ((1, 6, 7, 7), 6, (3, 3), (2, 2), (1, 1), (1, 1), 6, True),       # depthwise
    ((2, 8, 5, 6), 4, (3, 3), (2, 1), (1, 2), (2, 1), 4, True),       # group 4, mixed stride and dilation
    ((2, 17, 5, 5), 70, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),     # 1×1, 70 filters: two M tiles
    ((1, 70, 4, 5), 17, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),     # 70 channels: K = 630, two dx tiles
    ((2, 3, 27, 27), 8, (11, 11), (4, 4), (0, 0), (1, 1), 1, True),   # AlexNet's conv1, small: K = 363
    ((1, 3, 5, 4), 2, (3, 2), (2, 1), (1, 0), (1, 1), 1, True),       # rectangular kernel and stride
    ((1, 2, 3, 3), 3, (2, 2), (1, 1), (2, 2), (1, 1), 1, True),       # pad ≥ kernel: windows in the padding only
    ((2, 4, 26, 26), 3, (3, 3), (1, 1), (0, 0), (1, 1), 1, True),     # 1152 pixels: split weight gradient, 18 tiles
    ((1, 1, 1, 1), 1, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),
]

# shape, axis, ignore_label, share of labels ignored, normalization (None: the layer's
# default), legacy normalize, score scale
SOFTMAX_CASES = [
    ((4, 10), 1, None, 0, None, None, 1.0),            # LeNet's: VALID by default, nothing ignored
    ((3, 5, 2, 3), 1, None, 0, "FULL", None, 1.0),     # positions over a map: inner = 6
    ((2, 7, 4), 1, 255, 0.3, "VALID", None, 1.0),      # ignore_label outside the classes
    ((5, 3), 1, 1, 0.3, "BATCH_SIZE", None, 1.0),      # ignore_label that is a class
    ((2, 4, 3), 1, 0, 0.3, "NONE", None, 1.0),
    ((3, 4, 5), 2, 0, 0.3, "VALID", None, 1.0),        # axis 2: outer 12, inner 1
    ((2, 3, 4), -2, None, 0, "FULL", None, 1.0),       # a negative axis
    ((2, 6, 3), 1, 4, 1.0, "VALID", None, 1.0),        # every label ignored: normalizer 1
    ((3, 4), 1, None, 0, None, False, 1.0),            # legacy normalize: false is BATCH_SIZE
    ((2, 1000), 1, None, 0, None, None, 1.0),          # AlexNet's classes
    ((3, 6, 2), 1, None, 0, None, None, 60.0),         # probabilities below FLT_MIN: Caffe's clip
    ((1, 1, 1), 1, None, 0, None, None, 1.0),          # one class
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


def conv_params(num_output, kernel, stride, pad, dilation, group, bias) -> dict:
    return layer_params("Convolution", num_output=num_output, kernel_h=kernel[0], kernel_w=kernel[1],
                        stride_h=stride[0], stride_w=stride[1], pad_h=pad[0], pad_w=pad[1],
                        dilation=tuple(dilation), group=group, bias_term=bias)


def softmax_loss_params(axis, ignore_label, normalization, normalize) -> dict:
    return layer_params("SoftmaxWithLoss", axis=axis, ignore_label=ignore_label, normalization=normalization,
                        normalize=normalize)


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


def reference_conv(p, x, w, b, dy):
    """The layer in float64: (y, dx, dw, db or None)."""
    spec, ctx, state = REGISTRY["Convolution"], _ctx(), {"ntops": 1}
    weights = [w.astype(np.float64)] + ([b.astype(np.float64)] if b is not None else [])
    x64 = x.astype(np.float64)
    (y,) = spec.forward(p, [x64], weights, ctx, state)
    (dx,), grads = spec.backward(p, [x64], [y], [dy.astype(np.float64)], weights, ctx, state, [True])
    return np.ascontiguousarray(y), np.ascontiguousarray(dx), grads[0], (grads[1] if b is not None else None)


def reference_softmax_loss(p, x, labels, top_diff):
    """The layer in float64: (loss, prob, dx)."""
    spec, ctx, state = REGISTRY["SoftmaxWithLoss"], _ctx(), {"ntops": 2}
    x64, labels64 = x.astype(np.float64), labels.astype(np.float64)
    loss, prob = spec.forward(p, [x64, labels64], [], ctx, state)
    (dx, _), _ = spec.backward(p, [x64, labels64], [loss, prob], [np.asarray(top_diff, dtype=np.float64)], [],
                               ctx, state, [True, False])
    return loss, prob, dx


CONV_RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def assert_close(got, want, dtype, what: str, rtol: float | None = None):
    """Relative error below 1e-5 (float32) or 1e-12 (float64) unless rtol is given,
    element by element, with an absolute floor of the same size relative to the
    array's largest magnitude (for elements that are a difference of larger terms).
    NaN (a poisoned, unwritten element) always fails."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, wanted {np.dtype(dtype)}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, wanted {want.shape}"
    if rtol is None:
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
            inferred = cuda_kernels.max_pool_infer(to_device(x), p, launcher=launcher)
            np.testing.assert_array_equal(to_host(inferred), top.astype(dtype), err_msg="max top (inference)")
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
    # inference's kernel: the same y, bit for bit
    np.testing.assert_array_equal(to_host(cuda_kernels.lrn_infer(to_device(x), p, launcher=launcher)),
                                  to_host(got_y), err_msg="lrn y (inference)")
    # the backward from the reference's y and scale (in dtype), judged on its own
    got_dx = cuda_kernels.lrn_backward(to_device(x), to_device(y.astype(dtype)), to_device(scale.astype(dtype)),
                                       to_device(dy), p, launcher=launcher)
    assert_close(to_host(got_dx), dx, dtype, "lrn dx")


def conv_inputs(case, dtype):
    """x, w, bias (None without one) and a dy of the output's shape, in dtype."""
    shape, co, kernel, stride, pad, dilation, group, bias = case
    p = conv_params(co, kernel, stride, pad, dilation, group, bias)
    rng = np.random.default_rng(sum(shape) + co + kernel[0])
    (out_shape,) = REGISTRY["Convolution"].infer(p, [shape], 1)
    x = rng.normal(size=shape).astype(dtype)
    w = rng.normal(size=(co, shape[1] // group) + tuple(kernel)).astype(dtype)
    b = rng.normal(size=co).astype(dtype) if bias else None
    dy = rng.normal(size=out_shape).astype(dtype)
    return p, x, w, b, dy


def check_conv(case, dtype, launcher, to_device, to_host):
    """Forward (plain, and with the fused ReLU into a preallocated `out`), backward data
    and backward weights of one case against the layer. float32 writes the backward's
    results into preallocated (poisoned) arrays, float64 lets the wrapper allocate."""
    p, x, w, b, dy = conv_inputs(case, dtype)
    y, dx, dw, db = reference_conv(p, x, w, b, dy)
    rtol = CONV_RTOL[np.dtype(dtype)]
    device_b = None if b is None else to_device(b)
    got = cuda_kernels.conv_forward(to_device(x), to_device(w), device_b, p, launcher=launcher)
    assert_close(to_host(got), y, dtype, "conv y", rtol)
    out = to_device(poisoned(np, y.shape, dtype))
    got = cuda_kernels.conv_forward(to_device(x), to_device(w), device_b, p, relu=True, launcher=launcher, out=out)
    assert got is out, "conv_forward(out=) must return out"
    assert_close(to_host(got), np.maximum(y, 0), dtype, "conv relu(y)", rtol)
    preallocate = np.dtype(dtype) == np.float32
    out = to_device(poisoned(np, x.shape, dtype)) if preallocate else None
    got = cuda_kernels.conv_backward_data(to_device(dy), to_device(w), x.shape, p, launcher=launcher, out=out)
    assert out is None or got is out
    assert_close(to_host(got), dx, dtype, "conv dx", rtol)
    out = None
    if preallocate:
        out = (to_device(poisoned(np, w.shape, dtype)), None if b is None else to_device(poisoned(np, b.shape, dtype)))
    got_dw, got_db = cuda_kernels.conv_backward_weights(to_device(x), to_device(dy), w.shape, p, launcher=launcher,
                                                        out=out)
    assert out is None or (got_dw is out[0] and got_db is out[1])
    assert_close(to_host(got_dw), dw, dtype, "conv dw", rtol)
    if b is None:
        assert got_db is None
    else:
        assert_close(to_host(got_db), db, dtype, "conv db", rtol)


def softmax_inputs(case, dtype):
    """x (scores), labels (float, of the positions' shape; some equal to ignore_label)
    and the loss's gradient."""
    shape, axis, ignore, ignored, normalization, normalize, scale = case
    p = softmax_loss_params(axis, ignore, normalization, normalize)
    real = axis % len(shape)
    classes = shape[real]
    rng = np.random.default_rng(sum(shape) + real)
    x = (rng.normal(size=shape) * scale).astype(dtype)
    positions = shape[:real] + shape[real + 1:]
    labels = rng.integers(0, classes, size=positions)
    if ignore is not None:
        labels[rng.random(positions) < ignored] = ignore
    return p, x, labels.astype(dtype), np.asarray(1.7, dtype=dtype)


def check_softmax_loss(case, dtype, launcher, to_device, to_host):
    p, x, labels, top_diff = softmax_inputs(case, dtype)
    loss, prob, dx = reference_softmax_loss(p, x, labels, top_diff)
    got_loss, got_prob = cuda_kernels.softmax_loss_forward(to_device(x), to_device(labels), p, launcher=launcher)
    got_loss = to_host(got_loss)
    assert got_loss.shape == (), f"the loss is a 0-d array, got shape {got_loss.shape}"
    assert_close(got_loss, loss, dtype, "softmax loss")
    assert_close(to_host(got_prob), prob, dtype, "softmax prob")
    # the backward from the reference's probabilities, judged on its own
    got_dx = cuda_kernels.softmax_loss_backward(to_device(prob.astype(dtype)), to_device(labels), p,
                                                to_device(top_diff), launcher=launcher)
    assert_close(to_host(got_dx), dx, dtype, "softmax loss dx")
    # the plain Softmax through the same kernel, into a preallocated array
    (want,) = REGISTRY["Softmax"].forward(layer_params("Softmax", axis=case[1]), [x.astype(np.float64)], [], _ctx(),
                                          {"ntops": 1})
    out = to_device(poisoned(np, x.shape, dtype))
    got = cuda_kernels.softmax_forward(to_device(x), layer_params("Softmax", axis=case[1]), launcher=launcher,
                                       out=out)
    assert got is out
    assert_close(to_host(got), want, dtype, "softmax")


def poisoned(xp, shape, dtype):
    """An output buffer every element of which fails the comparison unless written."""
    if np.dtype(dtype).kind == "f":
        return xp.full(shape, np.nan, dtype=dtype)
    return xp.full(shape, POISON_INDEX, dtype=dtype)


# --- the host build: the .cu files as plain C++ ---------------------------------------------

HOST_SHIM = r"""// Compiles a kernels/*.cu file as host C++ and runs its grids on the CPU, one thread of
// the grid at a time, deterministically. The CUDA qualifiers vanish; __shared__ becomes
// static, one copy that the threads of a block share (blocks run one after another).
// Each thread of a block is a coroutine (ucontext) with a stack of its own: the block's
// threads run in turn, each until it finishes or reaches __syncthreads(), and a barrier
// releases them only once every thread of the block has reached it, so a thread runs
// as far ahead of the others as the barriers let it (a missing barrier shows as a
// wrong result), and a block where some threads finish while others wait at a barrier
// is reported (a divergent barrier: undefined on a device). A wrong grid-stride start
// or step leaves poisoned elements.
// host_launch_<kernel>(blocks, threads, args) runs a grid; args points at each argument's
// value (cuLaunchKernel's convention). host_signature_<kernel>() names the parameter
// types ("f*" float pointer, "i" int, "q" long long, "d" double, ...) for the launcher
// to check what it passes against what the kernel declares.
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <ucontext.h>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
struct HostDim { unsigned x, y, z; };
static HostDim blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0};
static HostDim blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
static inline unsigned __umulhi(unsigned a, unsigned b) {
    return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
using std::exp;
using std::log;
using std::pow;

namespace host {
enum State { RUNNABLE, AT_BARRIER, FINISHED };
constexpr std::size_t STACK_BYTES = 64 * 1024;
static ucontext_t scheduler;
static ucontext_t* contexts = nullptr;
static char* stacks = nullptr;
static State* states = nullptr;
static unsigned capacity = 0, current = 0;
static void (*body)(void**) = nullptr;
static void** body_args = nullptr;

static void thread_main() {
    body(body_args);
    states[current] = FINISHED;
}   // returns to uc_link: the scheduler

static bool reserve(unsigned threads) {
    if (threads <= capacity) {
        return true;
    }
    std::free(contexts);
    std::free(stacks);
    std::free(states);
    contexts = static_cast<ucontext_t*>(std::calloc(threads, sizeof(ucontext_t)));
    stacks = static_cast<char*>(std::malloc(threads * STACK_BYTES));
    states = static_cast<State*>(std::calloc(threads, sizeof(State)));
    capacity = contexts && stacks && states ? threads : 0;
    return capacity != 0;
}

// getcontext and swapcontext return twice: kept out of run_grid, whose loop variables
// live across them.
__attribute__((noinline)) static void start(unsigned t) {
    getcontext(&contexts[t]);
    contexts[t].uc_stack.ss_sp = stacks + t * STACK_BYTES;
    contexts[t].uc_stack.ss_size = STACK_BYTES;
    contexts[t].uc_link = &scheduler;
    makecontext(&contexts[t], thread_main, 0);
    states[t] = RUNNABLE;
}

__attribute__((noinline)) static void resume(unsigned t) {
    current = t;
    threadIdx = HostDim{t, 0, 0};
    states[t] = RUNNABLE;
    swapcontext(&scheduler, &contexts[t]);
}

// 0: done; 1: a divergent barrier; 2: no memory for the threads' stacks.
static int run_grid(void (*fn)(void**), unsigned blocks, unsigned threads, void** args) {
    if (!reserve(threads)) {
        return 2;
    }
    body = fn;
    body_args = args;
    gridDim = HostDim{blocks, 1, 1};
    blockDim = HostDim{threads, 1, 1};
    for (unsigned b = 0; b < blocks; ++b) {
        blockIdx = HostDim{b, 0, 0};
        for (unsigned t = 0; t < threads; ++t) {
            start(t);
        }
        for (;;) {                          // one round: every live thread up to its next barrier
            unsigned finished = 0;
            for (unsigned t = 0; t < threads; ++t) {
                if (states[t] != FINISHED) {
                    resume(t);
                }
                finished += states[t] == FINISHED;
            }
            if (finished == threads) {
                break;
            }
            if (finished > 0) {
                return 1;
            }
        }
    }
    return 0;
}
}  // namespace host

inline void __syncthreads() {
    const unsigned self = host::current;
    host::states[self] = host::AT_BARRIER;
    swapcontext(&host::contexts[self], &host::scheduler);
}

template <typename A> std::string host_type_code() {
    typedef std::remove_cv_t<std::remove_pointer_t<A>> E;
    std::string code = std::is_same_v<E, float> ? "f" : std::is_same_v<E, double> ? "d"
                       : std::is_same_v<E, int> ? "i" : std::is_same_v<E, long long> ? "q" : "?";
    return std::is_pointer_v<A> ? code + "*" : code;
}

template <typename F> struct HostEntry;
template <typename... A> struct HostEntry<void (*)(A...)> {
    template <std::size_t... I>
    static void call(void (*fn)(A...), void** args, std::index_sequence<I...>) {
        fn(*static_cast<A*>(args[I])...);
    }
    static void run(void (*fn)(A...), void** args) { call(fn, args, std::index_sequence_for<A...>{}); }
    static std::string signature() {
        std::string s;
        ((s += host_type_code<A>() + ","), ...);
        return s;
    }
};
template <auto Fn> void host_body(void** args) {
    HostEntry<decltype(Fn)>::run(Fn, args);
}
#define HOST_ENTRY(name)                                                                     \
    extern "C" int host_launch_##name(unsigned blocks, unsigned threads, void** args) {     \
        return host::run_grid(&host_body<&name>, blocks, threads, args);                   \
    }                                                                                        \
    extern "C" const char* host_signature_##name() {                                        \
        static const std::string s = HostEntry<decltype(&name)>::signature();               \
        return s.c_str();                                                                    \
    }
"""

ENTRY_POINT = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')


def entry_points(source: Path) -> list[str]:
    """The extern "C" kernels a .cu file defines, by name."""
    return ENTRY_POINT.findall(source.read_text(encoding="utf-8"))


def host_build_command(source: Path, folder: Path) -> tuple[list[str], Path]:
    """The g++ command (warnings as errors) that builds kernels/<name>.cu, the shim before
    it and a HOST_ENTRY for each entry point after it, into a shared library. The .cu
    goes in as NVRTC gets it, its headers pasted in by cuda_kernels.kernel_source, so
    that the host tests run that expansion too."""
    shim = folder / "host_shim.h"
    if not shim.exists():
        shim.write_text(HOST_SHIM)
    expanded = folder / source.name
    expanded.write_text(cuda_kernels.kernel_source(source.name, source.parent))
    unit = folder / f"{source.stem}_host.cpp"
    unit.write_text(f'#include "{shim}"\n#include "{expanded}"\n'
                    + "".join(f"HOST_ENTRY({name})\n" for name in entry_points(source)))
    library = folder / f"{source.stem}.so"
    return (["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
             "-Wno-unknown-pragmas", "-shared", "-fPIC", str(unit), "-o", str(library)], library)


def build_host_libraries(sources, folder: Path) -> dict[str, Path]:
    """Every source built at once (one g++ each, in parallel): {stem: library}."""
    jobs = []
    for source in sources:
        command, library = host_build_command(source, folder)
        jobs.append((source, library, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                       text=True)))
    for source, _, job in jobs:
        output, _ = job.communicate()
        if job.returncode:
            raise RuntimeError(f"g++ failed on {source.name}:\n{output}")
    return {source.stem: library for source, library, _ in jobs}


_CODES = {np.dtype(np.float32): "f*", np.dtype(np.float64): "d*", np.dtype(np.int32): "i*",
          np.dtype(np.int64): "q*"}
GUARD_VALUE = {"f": -1536.0, "i": -7777}     # what the margins around a host output hold (exact in float16)


class HostLauncher:
    """cuda_kernels' launcher interface over the host-compiled C entry points: NumPy
    arrays as pointers, numpy.int32/int64/float64 as the C types the kernels declare
    (checked against each kernel's signature, pointee types included), outputs
    poisoned before each launch and set in margins of their own size (at least 4096
    elements) on either side that must come back untouched, so that a write out of
    bounds fails the test instead of corrupting the heap. A grid-stride kernel (threads None) runs as a grid of
    `blocks` × `threads` (3 × 5 by default: fewer threads than most cases' work items,
    so each thread strides, more than the smallest's, so some threads find nothing to
    do); a cooperative one with the block size it asks for and at most `blocks`
    blocks, so that blocks loop over several tiles."""
    xp = np

    def __init__(self, libraries: dict[str, Path], blocks: int = 3, threads: int = 5):
        self.libraries = {name: ctypes.CDLL(str(path)) for name, path in libraries.items()}
        self.blocks, self.threads = blocks, threads
        self.launched: list[tuple[str, int, int]] = []     # (kernel, blocks, threads), for tests
        self.guarded: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}   # id(output): (output, buffer, margin)

    def empty(self, shape, dtype):
        size = int(np.prod(shape, dtype=np.int64))
        margin = max(4096, size)
        buffer = poisoned(np, (size + 2 * margin,), dtype)
        buffer[:margin] = buffer[margin + size:] = GUARD_VALUE[np.dtype(dtype).kind]
        out = buffer[margin:margin + size].reshape(shape)
        self.guarded[id(out)] = (out, buffer, margin)
        return out

    def scratch(self, shape, dtype, slot):
        """A kernel's temporary as the device's launcher hands it out (the executor's
        planned workspace, when a layer call runs), poisoned as outputs are: a kernel
        that reads what no launch wrote fails."""
        array = workspace(np, shape, dtype, slot)
        array[...] = poisoned(np, (), dtype)
        return array

    def _check_margins(self, kernel: str, args) -> None:
        """The margins of the outputs this launch took (each checked after its first launch)."""
        for a in args:
            entry = self.guarded.get(id(a))
            if entry is None or entry[0] is not a:
                continue
            del self.guarded[id(a)]
            _, buffer, margin = entry
            guard = GUARD_VALUE[buffer.dtype.kind]
            for side, values in (("before", buffer[:margin]), ("after", buffer[-margin:])):
                assert (values == guard).all(), f"{kernel} wrote {side} an output array"

    def _entry(self, source: str, kernel: str):
        library = self.libraries[source]
        launch = getattr(library, f"host_launch_{kernel}")
        launch.restype, launch.argtypes = ctypes.c_int, (ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p)
        signature = getattr(library, f"host_signature_{kernel}")
        signature.restype = ctypes.c_char_p
        return launch, signature().decode().rstrip(",").split(",")

    def __call__(self, source: str, kernel: str, count: int, args: tuple, threads: int | None = None) -> None:
        launch, codes = self._entry(source, kernel)
        assert len(args) == len(codes), f"{kernel} takes {len(codes)} arguments ({codes}), got {len(args)}"
        values = []
        for i, (a, code) in enumerate(zip(args, codes)):
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, f"{kernel}: argument {i} is not contiguous"
                given, value = _CODES.get(a.dtype, f"{a.dtype}*"), ctypes.c_void_p(a.ctypes.data)
            elif isinstance(a, np.int32):
                given, value = "i", ctypes.c_int32(int(a))
            elif isinstance(a, np.int64):
                given, value = "q", ctypes.c_int64(int(a))
            elif isinstance(a, np.float64):
                given, value = "d", ctypes.c_double(float(a))
            else:
                raise TypeError(f"{kernel}: argument {i} of type {type(a).__name__} would not reach CUDA as declared")
            assert given == code, f"{kernel}: argument {i} is {given}, the kernel declares {code}"
            values.append(value)
        pointers = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        if threads is None:
            blocks, threads = self.blocks, self.threads
        else:
            blocks = max(1, min(-(-count // threads), self.blocks))
        self.launched.append((kernel, blocks, threads))
        status = launch(blocks, threads, pointers)
        self._check_margins(kernel, args)
        assert status != 1, f"{kernel}: some threads of a block finished while others waited at __syncthreads"
        assert status == 0, f"{kernel}: no memory for {threads} thread stacks"
