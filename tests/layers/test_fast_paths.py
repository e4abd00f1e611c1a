"""The NumPy runtime's fast paths against its general ones: MAX pooling's tiled backward
(kernel == stride, no padding) bit for bit against the arg-max scan, with ties and NaN;
sizes that must fall back; every convolution column layout against the direct loops;
the columns a training forward keeps against ones made again; and work split across
threads bit for bit against one thread."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_conv_run import naive_conv  # noqa: E402
from test_pool_run import caffe_pool, caffe_pool_backward  # noqa: E402

from netc.layers import REGISTRY, conv, pool  # noqa: E402
from netc.layers.im2col import Geometry  # noqa: E402
from netc.runtime import threads  # noqa: E402
from netc.runtime.backend import NUMPY, RunContext  # noqa: E402


def pool_params(kernel, stride, pad=(0, 0), round_mode="CEIL"):
    spec = REGISTRY["Pooling"]
    return spec.normalize({"pool": "MAX", "pad": 0, "pad_h": pad[0], "pad_w": pad[1], "kernel_size": None,
                           "kernel_h": kernel[0], "kernel_w": kernel[1], "stride": 1, "stride_h": stride[0],
                           "stride_w": stride[1], "global_pooling": False, "round_mode": round_mode})


def general_max_backward(x, y, dy, kernel, stride):
    """The general path: Caffe's arg-max scan, then the scatter over window offsets."""
    spec = REGISTRY["Pooling"]
    out = y.shape[2:]
    buf = pool._padded(np, x, -np.inf, kernel, stride, (0, 0), out, pool.NCHW)
    arg = pool._argmax_scan(np, buf, y, kernel, stride, out, pool.NCHW, np.empty(y.shape, dtype=np.int32))
    p = pool_params(kernel, stride)
    (dx,), _ = spec.backward(p, [x], [y], [dy], [], RunContext(NUMPY, "train", x.dtype), {"argmax": arg}, [True])
    return dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", [(2, 2), (3, 3), (2, 3), (1, 2)])
def test_tiled_max_backward_is_the_general_path_bit_for_bit(dtype, kernel):
    rng = np.random.default_rng(0)
    n, c, oh, ow = 3, 4, 5, 6
    # few distinct values: many ties inside windows, and whole windows of equal values
    x = rng.integers(0, 3, size=(n, c, oh * kernel[0], ow * kernel[1])).astype(dtype)
    x[0, 0, :kernel[0], :kernel[1]] = np.nan           # a window whose maximum is NaN
    x[1, 1, 0, 0] = np.nan
    spec, p = REGISTRY["Pooling"], pool_params(kernel, kernel)
    ctx = RunContext(NUMPY, "train", dtype)
    y = spec.forward(p, [x], [], ctx, {"ntops": 1})[0]
    dy = rng.normal(size=y.shape).astype(dtype)
    assert pool._tiles_image(kernel, kernel, (0, 0), y.shape[2:], *x.shape[2:])
    (fast,), _ = spec.backward(p, [x], [y], [dy], [], ctx, {}, [True])
    want = general_max_backward(x, y, dy, kernel, kernel)
    assert fast.dtype == dtype
    np.testing.assert_array_equal(fast.view(f"u{fast.itemsize}"), want.view(f"u{want.itemsize}"))
    # and against Caffe's loop where no NaN is involved
    x2 = np.nan_to_num(x, nan=5.0)
    y2 = spec.forward(p, [x2], [], ctx, {"ntops": 1})[0]
    top, mask = caffe_pool(x2.astype(float), "MAX", kernel, kernel, (0, 0))
    np.testing.assert_array_equal(y2, top)
    (dx2,), _ = spec.backward(p, [x2], [y2], [dy], [], ctx, {}, [True])
    np.testing.assert_array_equal(dx2, caffe_pool_backward(x2, mask, dy.astype(float), "MAX", kernel, kernel, (0, 0)))


@pytest.mark.parametrize("shape, round_mode", [((2, 3, 7, 7), "CEIL"), ((2, 3, 7, 8), "FLOOR"),
                                               ((1, 2, 5, 4), "CEIL")])
def test_odd_sizes_fall_back_to_the_general_path(shape, round_mode):
    """2×2 / 2 on odd sizes: a clipped last window (CEIL) or a dropped row (FLOOR)."""
    spec, p = REGISTRY["Pooling"], pool_params((2, 2), (2, 2), round_mode=round_mode)
    x = np.random.default_rng(1).integers(0, 4, size=shape).astype(float)
    ctx = RunContext(NUMPY, "train", np.float64)
    y = spec.forward(p, [x], [], ctx, {"ntops": 1})[0]
    assert not pool._tiles_image((2, 2), (2, 2), (0, 0), y.shape[2:], *shape[2:])
    top, mask = caffe_pool(x, "MAX", (2, 2), (2, 2), (0, 0), ceil=round_mode == "CEIL")
    np.testing.assert_array_equal(y, top)
    dy = np.random.default_rng(2).normal(size=y.shape)
    (dx,), _ = spec.backward(p, [x], [y], [dy], [], ctx, {}, [True])
    np.testing.assert_array_equal(dx, caffe_pool_backward(x, mask, dy, "MAX", (2, 2), (2, 2), (0, 0)))


def conv_params(num, kernel, stride, pad, dilation, group):
    spec = REGISTRY["Convolution"]
    return spec.normalize({"num_output": num, "bias_term": True, "pad": (pad,), "kernel_size": (kernel,),
                           "stride": (stride,), "dilation": (dilation,), "kernel_h": None, "kernel_w": None,
                           "pad_h": None, "pad_w": None, "stride_h": None, "stride_w": None, "group": group,
                           "axis": 1})


def run_conv(p, x, w, b, dy):
    """Forward and backward as the executor runs them: one state (the kept columns)."""
    spec, ctx, state = REGISTRY["Convolution"], RunContext(NUMPY, "train", x.dtype), {"ntops": 1}
    y = spec.forward(p, [x], [w, b], ctx, state)[0]
    (dx,), (dw, db) = spec.backward(p, [x], [y], [dy], [w, b], ctx, state, [True])
    return y, dx, dw, db


FORCED = {  # (_BATCH_LAST_BELOW_OW, _BATCHED_GEMM_BELOW, _PER_IMAGE_WEIGHT_GRADIENTS_MAX) → layouts
    "T": (10 ** 6, 0, 0),
    "C": (0, 10 ** 6, 0),
    "N": (0, 0, 10 ** 9),
    "N forward, C backward": (0, 0, 0),
}


@pytest.mark.parametrize("forced", list(FORCED))
@pytest.mark.parametrize("case", [((2, 4, 7, 7), 6, 3, 2, 1, 2, 2), ((3, 3, 9, 8), 4, 3, 1, 1, 1, 1),
                                  ((2, 2, 6, 6), 3, 2, 2, 0, 1, 1)])
def test_every_column_layout_gives_the_same_convolution(monkeypatch, forced, case):
    shape, num, k, s, pd, dil, group = case
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape)
    p = conv_params(num, k, s, pd, dil, group)
    w = rng.normal(size=(num, shape[1] // group, k, k))
    b = rng.normal(size=num)
    want_y = naive_conv(x, w, b, (s, s), (pd, pd), (dil, dil), group)
    dy = rng.normal(size=want_y.shape)
    ref = run_conv(p, x, w, b, dy)
    for name, value in zip(("_BATCH_LAST_BELOW_OW", "_BATCHED_GEMM_BELOW", "_PER_IMAGE_WEIGHT_GRADIENTS_MAX"),
                           FORCED[forced]):
        monkeypatch.setattr(conv, name, value)
    got = run_conv(p, x, w, b, dy)
    np.testing.assert_allclose(got[0], want_y, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(got, ref):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_im2col_col2im_are_adjoint_batch_last():
    from netc.layers.im2col import col2im, im2col
    rng = np.random.default_rng(5)
    g = Geometry(c=3, h=7, w=6, kh=3, kw=2, sh=2, sw=1, ph=1, pw=2, dh=2, dw=3, oh=3, ow=4)
    x = rng.normal(size=(2, 3, 7, 6))
    col = im2col(np, x, g, "T").copy()
    np.testing.assert_array_equal(col.transpose(5, 0, 1, 2, 3, 4), im2col(np, x, g, "N"))
    c = rng.normal(size=col.shape)
    assert np.isclose(np.sum(col * c), np.sum(x * col2im(np, c, g, 2, "T")))


@pytest.mark.parametrize("forced", list(FORCED))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_training_forward_keeps_nothing_but_its_input(monkeypatch, forced, dtype):
    """The memory plan counts no kept scratch for a convolution (kept_bytes 0: the
    backward makes its columns again, as Caffe does): a training forward leaves nothing
    in its state, and its backward gives, bit for bit in every layout, what a backward
    after an inference forward gives."""
    for name, value in zip(("_BATCH_LAST_BELOW_OW", "_BATCHED_GEMM_BELOW", "_PER_IMAGE_WEIGHT_GRADIENTS_MAX"),
                           FORCED[forced]):
        monkeypatch.setattr(conv, name, value)
    rng = np.random.default_rng(11)
    spec = REGISTRY["Convolution"]
    for shape, num, k, s, pd, dil, group in [((2, 4, 7, 7), 6, 3, 2, 1, 2, 2), ((3, 2, 24, 25), 4, 5, 1, 0, 1, 1)]:
        x = rng.normal(size=shape).astype(dtype)
        p = conv_params(num, k, s, pd, dil, group)
        w = rng.normal(size=(num, shape[1] // group, k, k)).astype(dtype)
        b = rng.normal(size=num).astype(dtype)
        assert spec.kept_bytes(p, [shape], [], 4, train=True) == 0
        train, test = RunContext(NUMPY, "train", dtype), RunContext(NUMPY, "test", dtype)
        state = {"ntops": 1}
        y = spec.forward(p, [x], [w, b], train, state)[0]
        assert state == {"ntops": 1}
        dy = rng.normal(size=y.shape).astype(dtype)
        trained = spec.backward(p, [x], [y], [dy], [w, b], train, state, [True])
        fresh_state = {"ntops": 1}
        y2 = spec.forward(p, [x], [w, b], test, fresh_state)[0]
        made = spec.backward(p, [x], [y2], [dy], [w, b], test, fresh_state, [True])
        np.testing.assert_array_equal(y, y2)
        for a, c in zip(trained[0] + trained[1], made[0] + made[1]):
            np.testing.assert_array_equal(a, c)


def _places(shape, dtype):
    """Arena-like places for a blob, NaN-filled, in either memory order."""
    def place(batch_last):
        if batch_last and shape[0] > 1:
            return np.full(shape[1:] + shape[:1], np.nan, dtype=dtype).transpose(3, 0, 1, 2)
        return np.full(shape, np.nan, dtype=dtype)
    return {order: place(order) for order in (False, True)}


@pytest.mark.parametrize("forced", list(FORCED) + ["Winograd"])
@pytest.mark.parametrize("ordered", ["NCHW", "batch-last"])
def test_convolution_runs_in_its_declared_workspace_and_places(monkeypatch, forced, ordered):
    """Forward and backward in every layout (and Deconvolution), for an input and a
    gradient in either memory order, take no more scratch than workspace_bytes declares
    and write the output, the input's and the weights' gradients into the places given
    (RunContext.output, input_diff, weight_diff), bit for bit what they give without."""
    from netc.runtime.scratch import Region, using_region
    if forced == "Winograd":
        monkeypatch.setattr(conv.winograd, "MIN_COLUMNS", 0)
    else:
        monkeypatch.setattr(conv.winograd, "MIN_COLUMNS", 1 << 62)
        for name, value in zip(("_BATCH_LAST_BELOW_OW", "_BATCHED_GEMM_BELOW", "_PER_IMAGE_WEIGHT_GRADIENTS_MAX"),
                               FORCED[forced]):
            monkeypatch.setattr(conv, name, value)
    rng = np.random.default_rng(13)
    cases = [("Convolution", (3, 8, 11, 13), conv_params(6, 3, 1, 1, 1, 2)),
             ("Convolution", (2, 8, 9, 9), conv_params(5, 3, 2, 0, 1, 1)),
             ("Convolution", (3, 8, 7, 7), conv_params(4, 1, 1, 0, 1, 1)),
             ("Convolution", (2, 8, 10, 11), conv_params(4, 3, 1, 1, 1, 1)),
             ("Convolution", (1, 8, 10, 11), conv_params(4, 3, 1, 1, 1, 1)),
             ("Deconvolution", (2, 4, 5, 5), dict(conv_params(6, 4, 2, 1, 1, 2)))]
    for kind, shape, p in cases:
        spec = REGISTRY[kind]
        x = rng.normal(size=shape)
        if ordered == "batch-last":
            x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
        wts = [rng.normal(size=s) for s in spec.param_shapes(p, [shape])]
        bare = RunContext(NUMPY, "train", np.float64)
        y = spec.forward(p, [x], wts, bare, {"ntops": 1})[0]
        dy = rng.normal(size=y.shape)
        if ordered == "batch-last":
            dy = np.ascontiguousarray(dy.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
        (dx,), dws = spec.backward(p, [x], [y], [dy], wts, bare, {"ntops": 1}, [True])
        outputs, input_diffs = _places(y.shape, np.float64), _places(shape, np.float64)
        weight_diffs = [np.full(w.shape, np.nan) for w in wts]
        ctx = RunContext(NUMPY, "train", np.float64, outputs=lambda i, order: outputs[order],
                         input_diffs=lambda i, order: input_diffs[order], weight_diffs=weight_diffs)
        tops, shapes = [tuple(y.shape)], [tuple(shape)]
        forward_room = Region(np.empty(spec.workspace_bytes(p, shapes, tops, 8), np.uint8))
        with using_region(forward_room):
            y2 = spec.forward(p, [x], wts, ctx, {"ntops": 1})[0]
        backward_room = Region(np.empty(spec.workspace_bytes(p, shapes, tops, 8, backward=True), np.uint8))
        with using_region(backward_room):
            (dx2,), dws2 = spec.backward(p, [x], [y2], [dy], wts, ctx, {"ntops": 1}, [True])
        assert forward_room.overflow_bytes == backward_room.overflow_bytes == 0, (kind, shape)
        # the place itself, as the executor compares: else it copies the result onto it
        assert any(np.shares_memory(y2, place) and y2.strides == place.strides for place in outputs.values())
        assert any(np.shares_memory(dx2, place) and dx2.strides == place.strides for place in input_diffs.values())
        assert all(a is b for a, b in zip(dws2, weight_diffs))
        for ours, theirs in zip([y2, dx2] + dws2, [y, dx] + dws):
            np.testing.assert_array_equal(ours, theirs)


@pytest.fixture
def split_everything(monkeypatch):
    """Every splittable operation split across 3 threads, however small (small GEMMs
    included, and batches of GEMMs OpenBLAS would thread itself)."""
    monkeypatch.setattr(threads, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(threads, "MIN_SPLIT_MACS", 0)
    monkeypatch.setattr(threads, "OPENBLAS_ONE_THREAD_MNK", 1 << 62)
    threads.set_workers(3)
    yield
    threads.set_workers(threads.os.cpu_count() or 1)


def _all_paths(dtype):
    rng = np.random.default_rng(7)
    out = []
    # "T"; "C"; "N" (one GEMM per image, slices of the batch on threads, splits nested in them run inline)
    for case in [((5, 4, 8, 8), 6, 3, 1, 1, 1, 2), ((3, 2, 20, 21), 3, 5, 1, 0, 1, 1),
                 ((5, 2, 24, 25), 4, 5, 1, 0, 1, 1)]:
        shape, num, k, s, pd, dil, group = case
        x = rng.normal(size=shape).astype(dtype)
        p = conv_params(num, k, s, pd, dil, group)
        w = rng.normal(size=(num, shape[1] // group, k, k)).astype(dtype)
        b = rng.normal(size=num).astype(dtype)
        spec, ctx = REGISTRY["Convolution"], RunContext(NUMPY, "train", dtype)
        y = spec.forward(p, [x], [w, b], ctx, {"ntops": 1})[0]
        dy = rng.normal(size=y.shape).astype(dtype)
        out += list(run_conv(p, x, w, b, dy))
    spec, ctx = REGISTRY["Pooling"], RunContext(NUMPY, "train", dtype)
    for kernel, stride, pad in [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1))]:
        x = rng.integers(0, 5, size=(5, 3, 12, 12)).astype(dtype)
        for method in ("MAX", "AVE"):
            p = dict(pool_params(kernel, stride, pad), pool=method)
            y = spec.forward(p, [x], [], ctx, {"ntops": 1})[0]
            dy = rng.normal(size=y.shape).astype(dtype)
            out += [y, spec.backward(p, [x], [y], [dy], [], ctx, {}, [True])[0][0]]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_split_is_bit_identical(dtype, split_everything):
    split = _all_paths(dtype)
    threads.set_workers(1)
    single = _all_paths(dtype)
    for a, b in zip(split, single):
        np.testing.assert_array_equal(a, b)
