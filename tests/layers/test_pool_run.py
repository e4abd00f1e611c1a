"""Pooling running: MAX and AVE forward against Caffe's window loop written out here
(clipping, ceil rounding, the AVE divisor), the MAX mask top, the first maximum winning
ties, backward by gradcheck over a grid, and PyTorch's max_pool2d / avg_pool2d
(ceil_mode=True, count_include_pad=True) where it is installed."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gradcheck import build_executor as build, gradcheck  # noqa: E402

from netc.errors import NetcError  # noqa: E402
from netc.runtime.executor import Executor  # noqa: E402




def caffe_out(size, k, s, p, ceil=True):
    """Caffe's pooled size, from its formula (not netc's)."""
    out = (math.ceil if ceil else math.floor)((size + 2 * p - k) / s) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def caffe_pool(x, method, kernel, stride, pad, ceil=True):
    """Caffe's PoolingLayer::Forward_cpu, window by window: (top, mask)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh, ow = caffe_out(h, kh, sh, ph, ceil), caffe_out(w, kw, sw, pw, ceil)
    top = np.zeros((n, c, oh, ow))
    mask = np.full((n, c, oh, ow), -1.0)
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * sh - ph, j * sw - pw
                    he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                    size = (he - hs) * (we - ws)
                    hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                    if method == "MAX":
                        best = -np.inf
                        for r in range(hs, he):
                            for q in range(ws, we):
                                if x[a, b, r, q] > best:      # strict: the first maximum stays
                                    best, mask[a, b, i, j] = x[a, b, r, q], r * w + q
                        top[a, b, i, j] = best
                    else:
                        top[a, b, i, j] = x[a, b, hs:he, ws:we].sum() / size
    return top, mask


def caffe_pool_backward(x, mask, dy, method, kernel, stride, pad):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    dx = np.zeros_like(x)
    for a in range(n):
        for b in range(c):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    if method == "MAX":
                        r, q = divmod(int(mask[a, b, i, j]), w)
                        dx[a, b, r, q] += dy[a, b, i, j]
                    else:
                        hs, ws = i * sh - ph, j * sw - pw
                        he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                        size = (he - hs) * (we - ws)
                        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                        dx[a, b, hs:he, ws:we] += dy[a, b, i, j] / size
    return dx


def text_of(method, shape, kernel, stride, pad, extra=""):
    kh, kw = kernel
    sh, sw = stride
    ph, pw = pad
    return (f"input data {list(shape)}\n"
            f"p: Pooling({method}, kernel_h={kh}, kernel_w={kw}, stride_h={sh}, stride_w={sw}, "
            f"pad_h={ph}, pad_w={pw}{extra})\n")


# shape, kernel, stride, pad
CASES = [
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1)),   # ceil: the last window is clipped
    ((1, 2, 6, 6), (2, 2), (2, 2), (0, 0)),
    ((2, 2, 7, 7), (2, 2), (3, 3), (1, 1)),   # stride > kernel
    ((1, 1, 6, 5), (4, 4), (3, 3), (2, 2)),   # ceil's extra window dropped (starts in the padding)
    ((2, 2, 5, 8), (3, 2), (1, 2), (0, 1)),   # rectangular
    ((1, 3, 13, 13), (3, 3), (2, 2), (0, 0)), # AlexNet's
    ((3, 1, 4, 4), (4, 4), (1, 1), (0, 0)),   # kernel = image
]


def distinct(shape, seed=0):
    """No ties: a random permutation, so finite differences never cross an arg-max change."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape).astype(float)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_caffe_loop(tmp_path, method, case):
    shape, kernel, stride, pad = case
    ex = build(text_of(method, shape, kernel, stride, pad), tmp_path)
    x = np.random.default_rng(1).normal(size=shape)
    want, _ = caffe_pool(x, method, kernel, stride, pad)
    got = np.array(ex.forward({"data": x})["p"])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    got32 = np.array(Executor(ex.net, {}, dtype=np.float32).forward({"data": x})["p"])
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("case", CASES)
def test_floor_rounding_forward(tmp_path, case):
    shape, kernel, stride, pad = case
    x = np.random.default_rng(2).normal(size=shape)
    for method in ("MAX", "AVE"):
        ex = build(text_of(method, shape, kernel, stride, pad, ", round_mode=FLOOR"), tmp_path)
        want, _ = caffe_pool(x, method, kernel, stride, pad, ceil=False)
        np.testing.assert_allclose(np.array(ex.forward({"data": x})["p"]), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", CASES)
def test_mask_top_and_backward_match_caffe(tmp_path, case):
    shape, kernel, stride, pad = case
    ex = build(text_of("MAX", shape, kernel, stride, pad).rstrip() + " -> out, mask\n", tmp_path)
    x = np.random.default_rng(3).normal(size=shape)
    top, mask = caffe_pool(x, "MAX", kernel, stride, pad)
    blobs = ex.forward({"data": x})
    np.testing.assert_array_equal(np.array(blobs["out"]), top)
    np.testing.assert_array_equal(np.array(blobs["mask"]), mask)
    dy = np.random.default_rng(4).normal(size=top.shape)
    ex.backward(seeds={"out": dy})
    np.testing.assert_allclose(ex.diffs["data"], caffe_pool_backward(x, mask, dy, "MAX", kernel, stride, pad),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", CASES)
def test_ave_backward_matches_caffe(tmp_path, case):
    shape, kernel, stride, pad = case
    ex = build(text_of("AVE", shape, kernel, stride, pad), tmp_path)
    x = np.random.default_rng(5).normal(size=shape)
    top, _ = caffe_pool(x, "AVE", kernel, stride, pad)
    ex.forward({"data": x})
    dy = np.random.default_rng(6).normal(size=top.shape)
    ex.backward(seeds={"p": dy})
    np.testing.assert_allclose(ex.diffs["data"], caffe_pool_backward(x, None, dy, "AVE", kernel, stride, pad),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", CASES)
def test_gradcheck(tmp_path, method, case):
    shape, kernel, stride, pad = case
    gradcheck(text_of(method, shape, kernel, stride, pad), tmp_path, feeds={"data": distinct(shape)})


def test_gradcheck_with_mask_top(tmp_path):
    gradcheck(text_of("MAX", (2, 2, 7, 7), (3, 3), (2, 2), (1, 1)).rstrip() + " -> out, mask\n", tmp_path,
              feeds={"data": distinct((2, 2, 7, 7))})


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(tmp_path, method):
    shape = (2, 3, 5, 4)
    ex = build(f"input data {list(shape)}\np: Pooling({method}, global_pooling=true)\n", tmp_path)
    x = distinct(shape, 7)
    want = x.max(axis=(2, 3), keepdims=True) if method == "MAX" else x.sum(axis=(2, 3), keepdims=True) / 20
    np.testing.assert_allclose(np.array(ex.forward({"data": x})["p"]), want, rtol=1e-12)
    gradcheck(f"input data {list(shape)}\np: Pooling({method}, global_pooling=true)\n", tmp_path,
              feeds={"data": x})


def test_global_max_mask(tmp_path):
    ex = build("input data [1, 2, 3, 3]\np: Pooling(MAX, global=true) -> out, mask\n", tmp_path)
    x = np.zeros((1, 2, 3, 3))
    x[0, 0, 1, 2] = 5          # flat index 1·3 + 2 = 5
    x[0, 1, 2, 0] = x[0, 1, 0, 1] = 4   # tie: (0, 1), flat 1, comes first
    blobs = ex.forward({"data": x})
    np.testing.assert_array_equal(np.array(blobs["mask"]).reshape(-1), [5.0, 1.0])
    ex.backward(seeds={"out": np.ones((1, 2, 1, 1))})
    want = np.zeros_like(x)
    want[0, 0, 1, 2] = want[0, 1, 0, 1] = 1
    np.testing.assert_array_equal(ex.diffs["data"], want)


def test_ties_send_the_gradient_to_the_first_maximum(tmp_path):
    """Windows 3×3, stride 2, pad 1 over a constant image: every window's first real
    pixel in row-major order gets the whole gradient (Caffe's strict '>')."""
    shape = (1, 1, 5, 5)
    ex = build(text_of("MAX", shape, (3, 3), (2, 2), (1, 1)).rstrip() + " -> out, mask\n", tmp_path)
    x = np.ones(shape)
    blobs = ex.forward({"data": x})
    # window (i, j) starts at row 2i − 1, column 2j − 1, clipped to 0: first pixel (max(2i−1, 0), max(2j−1, 0))
    firsts = [max(2 * i - 1, 0) for i in range(3)]
    want_mask = np.array([[r * 5 + q for q in firsts] for r in firsts], dtype=float)
    np.testing.assert_array_equal(np.array(blobs["mask"])[0, 0], want_mask)
    ex.backward(seeds={"out": np.arange(1.0, 10.0).reshape(1, 1, 3, 3)})
    want = np.zeros(shape)
    for i, r in enumerate(firsts):
        for j, q in enumerate(firsts):
            want[0, 0, r, q] += 3 * i + j + 1
    np.testing.assert_array_equal(ex.diffs["data"], want)


def test_ties_inside_a_window(tmp_path):
    """Two maxima in a 2×2 window: (0, 1) precedes (1, 0) in the scan and wins; in the
    second window three equal maxima, (0, 2) first."""
    ex = build("input data [1, 1, 2, 4]\np: Pooling(MAX, kernel=2, stride=2)\n", tmp_path)
    x = np.array([[[[0.0, 7.0, 3.0, 3.0], [7.0, 1.0, 2.0, 3.0]]]])
    ex.forward({"data": x})
    ex.backward(seeds={"p": np.array([[[[1.0, 2.0]]]])})
    np.testing.assert_array_equal(ex.diffs["data"], [[[[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])


def test_inputs_are_not_modified(tmp_path):
    built = build(text_of("MAX", (1, 2, 7, 7), (3, 3), (2, 2), (1, 1)).rstrip() + "\nq: Pooling(p, AVE, kernel=2, pad=1)\n",
                  tmp_path)
    # every blob its own array: in the arena the backward rightly reuses p's memory
    ex = Executor(built.net, built.weights, dtype=np.float64, memory="separate")
    ex.force_backward = True
    x = np.random.default_rng(8).normal(size=(1, 2, 7, 7))
    x0 = x.copy()
    ex.forward({"data": x})
    p0 = np.array(ex.blobs["p"]).copy()
    ex.backward(seeds={"q": np.ones(ex.net.blob_shapes["q"])})
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(np.array(ex.blobs["p"]), p0)


def test_stochastic_pooling_says_it_cannot_run(tmp_path):
    ex = build("input data [1, 1, 4, 4]\np: Pooling(STOCHASTIC, kernel=2, stride=2)\n", tmp_path)
    with pytest.raises(NetcError, match="STOCHASTIC"):
        ex.forward({"data": np.ones((1, 1, 4, 4))})


@pytest.mark.optional
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", [c for c in CASES if all(p <= k // 2 for p, k in zip(c[3], c[1]))])
def test_matches_torch(tmp_path, method, case):
    torch = pytest.importorskip("torch")
    shape, kernel, stride, pad = case
    F = torch.nn.functional
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        ex = build(text_of(method, shape, kernel, stride, pad), tmp_path, dtype=dtype)
        x = distinct(shape, 9).astype(dtype)
        dy = np.random.default_rng(10).normal(size=ex.net.blob_shapes["p"]).astype(dtype)
        y = np.array(ex.forward({"data": x})["p"])
        ex.backward(seeds={"p": dy})
        tx = torch.tensor(x, requires_grad=True)
        if method == "MAX":
            ty = F.max_pool2d(tx, kernel, stride, pad, ceil_mode=True)
        else:
            ty = F.avg_pool2d(tx, kernel, stride, pad, ceil_mode=True, count_include_pad=True)
        ty.backward(torch.tensor(dy))
        for ours, theirs in ((y, ty.detach().numpy()), (ex.diffs["data"], tx.grad.numpy())):
            assert ours.dtype == dtype and ours.shape == theirs.shape
            assert np.abs(ours - theirs).max() <= tol * max(np.abs(theirs).max(), 1.0)


@pytest.mark.parametrize("case", CASES + [((2, 2, 3, 4), None, None, None)])
def test_single_top_recomputes_the_argmax_in_backward(tmp_path, case):
    """Told it has one top (state["ntops"] = 1), MAX pooling returns no mask and keeps
    no arg-max: backward finds the first maxima again."""
    from netc.layers import REGISTRY
    from netc.runtime.backend import NUMPY, RunContext
    shape, kernel, stride, pad = case
    glob = kernel is None
    text = (f"input data {list(shape)}\np: Pooling(MAX, global=true)\n" if glob
            else text_of("MAX", shape, kernel, stride, pad))
    net = build(text, tmp_path).net
    p = dict(net.layer("p").params)
    spec, ctx = REGISTRY["Pooling"], RunContext(NUMPY, "train", np.float64)
    x = np.random.default_rng(11).normal(size=shape)
    x[..., 0, :2] = x.max() + 1          # ties between the first two pixels of the first row
    if glob:
        kernel, stride, pad = shape[2:], (1, 1), (0, 0)
    want, mask = caffe_pool(x, "MAX", kernel, stride, pad)
    state = {"ntops": 1}
    tops = spec.forward(p, [x], [], ctx, state)
    assert len(tops) == 1 and "argmax" not in state
    np.testing.assert_array_equal(tops[0], want)
    dy = np.random.default_rng(12).normal(size=want.shape)
    (dx,), _ = spec.backward(p, [x], tops, [dy], [], ctx, state, [True])
    np.testing.assert_allclose(dx, caffe_pool_backward(x, mask, dy, "MAX", kernel, stride, pad), rtol=1e-12)


def _batch_last(a):
    """a's values, its memory ordered (C, H, W, N) (netc.layers.memory_order)."""
    from netc.layers.memory_order import as_blob
    return as_blob(np.ascontiguousarray(a.transpose(1, 2, 3, 0)))


def _params(method, kernel, stride, pad):
    from netc.layers import REGISTRY
    spec = REGISTRY["Pooling"]
    return spec.normalize({"pool": method, "pad": 0, "pad_h": pad[0], "pad_w": pad[1], "kernel_size": None,
                           "kernel_h": kernel[0], "kernel_w": kernel[1], "stride": 1, "stride_h": stride[0],
                           "stride_w": stride[1], "global_pooling": False, "round_mode": "CEIL"})


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0][0] > 1])
def test_dy_in_the_other_memory_order_gives_the_same_gradient(method, case):
    """A batch-last convolution after the pool of an (N, C, H, W) input hands dy
    batch-last (AlexNet's pool1), and the other way round: the same bits."""
    from netc.layers import REGISTRY
    from netc.runtime.backend import NUMPY, RunContext
    shape, kernel, stride, pad = case
    spec, p = REGISTRY["Pooling"], _params(method, kernel, stride, pad)
    ctx = RunContext(NUMPY, "train", np.float64)
    rng = np.random.default_rng(13)
    x = rng.integers(0, 3, size=shape).astype(float)              # ties
    for given in (x, _batch_last(x)):
        y = spec.forward(p, [given], [], ctx, {"ntops": 1})[0]
        dy = rng.normal(size=y.shape)
        (want,), _ = spec.backward(p, [given], [y], [dy], [], ctx, {"ntops": 1}, [True])
        (got,), _ = spec.backward(p, [given], [y], [_batch_last(dy) if given is x else dy.copy()], [], ctx,
                                  {"ntops": 1}, [True])
        np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint64),
                                      np.ascontiguousarray(want).view(np.uint64))


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("method,ntops", [("MAX", 1), ("MAX", 2), ("AVE", 1)])
def test_runs_in_the_declared_room_and_writes_into_the_given_places(method, ntops, workers, monkeypatch):
    """Every workspace piece fits workspace_bytes and the kept arg-max kept_bytes
    (split across threads or not, either memory order), and the outputs and the
    gradient are written into the places the executor gives (RunContext.output,
    input_diff), not returned as new arrays."""
    from netc.layers import REGISTRY
    from netc.layers.memory_order import is_batch_last
    from netc.runtime import threads
    from netc.runtime.backend import NUMPY, RunContext
    from netc.runtime.scratch import Region, using_region
    monkeypatch.setattr(threads, "MIN_ELEMENTS", 0)
    threads.set_workers(workers)
    spec = REGISTRY["Pooling"]
    try:
        for shape, kernel, stride, pad in CASES + [((4, 3, 8, 8), (2, 2), (2, 2), (0, 0))]:
            p = _params(method, kernel, stride, pad)
            x0 = np.random.default_rng(14).normal(size=shape).astype(np.float32)
            for x in (x0, _batch_last(x0)) if shape[0] > 1 else (x0,):
                order = is_batch_last(x)
                top = tuple(spec.infer(p, [shape], ntops)[0])
                places = [np.full(top, np.nan, np.float32) for _ in range(ntops)]
                places = [_batch_last(a) if order else a for a in places]
                ctx = RunContext(NUMPY, "train", np.float32)
                ctx.outputs = lambda i, batch_last: places[i]
                room = Region(np.empty(spec.workspace_bytes(p, [shape], [top] * ntops, 4), np.uint8))
                kept = ctx.kept_region = Region(np.empty(spec.kept_bytes(p, [shape], [top] * ntops, 4, True),
                                                         np.uint8))
                state = {"ntops": ntops}
                with using_region(room):
                    tops = spec.forward(p, [x], [], ctx, state)
                ctx.outputs = ctx.kept_region = None
                assert room.overflow_bytes == 0 and kept.overflow_bytes == 0, (shape, kernel, order)
                assert all(np.shares_memory(t, place) for t, place in zip(tops, places))
                dx_place = np.full(shape, np.nan, np.float32)
                dx_place = _batch_last(dx_place) if order else dx_place
                ctx.input_diffs = lambda i, batch_last: dx_place
                room = Region(np.empty(spec.workspace_bytes(p, [shape], [top] * ntops, 4, backward=True),
                                       np.uint8))
                dy = np.ones(top, np.float32)
                with using_region(room):
                    (dx,), _ = spec.backward(p, [x], tops, [dy] + [None] * (ntops - 1), [], ctx, state, [True])
                assert room.overflow_bytes == 0, (shape, kernel, order)
                assert np.shares_memory(dx, dx_place) and not np.isnan(dx).any()
    finally:
        threads.set_workers(threads.os.cpu_count() or 1)
