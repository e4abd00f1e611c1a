"""Blobs ordered batch-last (netc.layers.memory_order): every layer gives the same
values, forward and backward, for an input ordered (N, C, H, W) or (C, H, W, N), in
either order of its gradient; the layers that keep the order do keep it; and a
LeNet-like chain stays batch-last from its first convolution to its InnerProduct, with
the results of the independent reference forward."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402
from gradcheck import build_executor, gradcheck  # noqa: E402
from test_conv_run import naive_conv  # noqa: E402

from netc.layers import REGISTRY  # noqa: E402
from netc.layers.memory_order import as_blob, batch_last, to_batch_last  # noqa: E402
from netc.runtime.backend import NUMPY, RunContext  # noqa: E402


def ordered_batch_last(x):
    """x's values, its memory ordered (C, H, W, N)."""
    return as_blob(np.ascontiguousarray(x.transpose(1, 2, 3, 0)))


def test_batch_last_is_told_by_the_memory_order():
    x = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    assert batch_last(x) is None
    xb = ordered_batch_last(x)
    np.testing.assert_array_equal(xb, x)
    t = batch_last(xb)
    assert t is not None and t.shape == (3, 4, 5, 2) and t.flags.c_contiguous
    assert np.shares_memory(t, xb)
    assert batch_last(x[:1]) is None                       # a batch of one: always (N, C, H, W)
    assert batch_last(xb[::2]) is None                     # every other image: not contiguous
    assert batch_last(x.reshape(2, 60)) is None            # not 4-d
    # conversions: a copy only where the order differs
    assert np.shares_memory(to_batch_last(np, xb), xb)
    np.testing.assert_array_equal(to_batch_last(np, x), t)


def run_layer(type_name, params, bottoms, weights, dys, dtype=np.float64, ntops=1):
    spec = REGISTRY[type_name]
    p = spec.normalize(dict(params))
    ctx, state = RunContext(NUMPY, "train", dtype), {"ntops": ntops}
    tops = spec.forward(p, bottoms, weights, ctx, state)
    dxs, grads = spec.backward(p, bottoms, tops, dys, weights, ctx, state, [True] * len(bottoms))
    return tops, dxs, grads


def full_params(type_name, **given):
    spec = REGISTRY[type_name]
    params = {q.name: q.default for q in spec.params}
    params.update(given)
    return params


POOLS = [  # kernel, stride, pad, method, shape
    (2, 2, 0, "MAX", (4, 3, 8, 8)),        # tiled: the fast backward
    (2, 2, 0, "AVE", (4, 3, 8, 8)),
    (3, 2, 1, "MAX", (3, 2, 7, 9)),        # overlapping, padded, the last window clipped
    (3, 2, 0, "AVE", (3, 2, 13, 13)),
    (2, 2, 0, "MAX", (2, 2, 7, 7)),        # odd: not tiled
]


@pytest.mark.parametrize("case", POOLS)
@pytest.mark.parametrize("ties", [False, True])
def test_pooling_is_the_same_bit_for_bit_in_either_order(case, ties):
    kernel, stride, pad, method, shape = case
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 3, size=shape) if ties else rng.normal(size=shape)).astype(np.float64)
    if ties and method == "MAX":
        x[1, 1, :2, :2] = np.nan                            # a window whose maximum is NaN
    params = full_params("Pooling", pool=method, kernel_size=kernel, stride=stride, pad=pad)
    spec = REGISTRY["Pooling"]
    p = spec.normalize(dict(params))
    ctx = RunContext(NUMPY, "train", np.float64)
    want_y = spec.forward(p, [x], [], ctx, {"ntops": 1})[0]
    dy = rng.normal(size=want_y.shape)
    (want_dx,), _ = spec.backward(p, [x], [want_y], [dy], [], ctx, {"ntops": 1}, [True])
    xb = ordered_batch_last(x)
    got_y = spec.forward(p, [xb], [], ctx, {"ntops": 1})[0]
    assert batch_last(got_y) is not None                    # the order is kept
    np.testing.assert_array_equal(got_y, want_y)
    for dy_given in (dy, ordered_batch_last(dy)):
        (got_dx,), _ = spec.backward(p, [xb], [got_y], [dy_given], [], ctx, {"ntops": 1}, [True])
        assert batch_last(got_dx) is not None
        np.testing.assert_array_equal(got_dx.view(np.uint64), np.ascontiguousarray(want_dx).view(np.uint64))


def test_max_pooling_mask_top_in_either_order():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2, 7, 9))
    params = full_params("Pooling", pool="MAX", kernel_size=3, stride=2, pad=1)
    dy = None
    want, got = [], []
    for given, out in ((x, want), (ordered_batch_last(x), got)):
        spec = REGISTRY["Pooling"]
        p = spec.normalize(dict(params))
        ctx, state = RunContext(NUMPY, "train", np.float64), {"ntops": 2}
        y, mask = spec.forward(p, [given], [], ctx, state)
        dy = rng.normal(size=y.shape) if dy is None else dy
        (dx,), _ = spec.backward(p, [given], [y, mask], [dy, None], [], ctx, state, [True])
        out += [y, mask, dx]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


CONVS = [  # shape, num_output, kernel, stride, pad, dilation, group, bias
    ((3, 4, 9, 9), 6, 3, 1, 1, 1, 1, True),
    ((2, 4, 7, 8), 6, 3, 2, 0, 2, 2, True),
    ((2, 3, 6, 6), 5, 1, 1, 0, 1, 1, True),                # 1x1: the input is its own column matrix
    ((2, 3, 6, 6), 4, 2, 2, 0, 1, 1, False),
]


@pytest.mark.parametrize("case", CONVS)
def test_convolution_in_either_order(case):
    shape, num, k, s, pd, dil, group, bias = case
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape)
    w = rng.normal(size=(num, shape[1] // group, k, k))
    b = rng.normal(size=num)
    weights = [w, b] if bias else [w]
    params = full_params("Convolution", num_output=num, kernel_size=(k,), stride=(s,), pad=(pd,),
                         dilation=(dil,), group=group, bias_term=bias)
    want_y = naive_conv(x, w, b if bias else np.zeros(num), (s, s), (pd, pd), (dil, dil), group)
    dy = rng.normal(size=want_y.shape)
    (ref_y,), (ref_dx,), ref_grads = run_layer("Convolution", params, [x], weights, [dy])
    np.testing.assert_allclose(ref_y, want_y, rtol=1e-12, atol=1e-12)
    for dy_given in (dy, ordered_batch_last(dy)):
        (y,), (dx,), grads = run_layer("Convolution", params, [ordered_batch_last(x)], weights, [dy_given])
        assert batch_last(y) is not None and batch_last(dx) is not None
        for got, want in zip([y, dx] + grads, [ref_y, ref_dx] + ref_grads):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_reads_a_batch_last_input_as_its_transpose(transpose):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 3, 2, 4))
    w = rng.normal(size=(24, 7) if transpose else (7, 24))
    b = rng.normal(size=7)
    params = full_params("InnerProduct", num_output=7, transpose=transpose)
    dy = rng.normal(size=(5, 7))
    (want_y,), (want_dx,), want_grads = run_layer("InnerProduct", params, [x], [w, b], [dy])
    np.testing.assert_allclose(want_y, x.reshape(5, -1) @ (w if transpose else w.T) + b, rtol=1e-12)
    (y,), (dx,), grads = run_layer("InnerProduct", params, [ordered_batch_last(x)], [w, b], [dy])
    assert batch_last(dx) is not None                        # the gradient in the input's order
    for got, want in zip([y, dx] + grads, [want_y, want_dx] + want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_concat_lrn_relu_keep_the_order_and_the_values():
    rng = np.random.default_rng(5)
    a, c = rng.normal(size=(3, 2, 4, 5)), rng.normal(size=(3, 4, 4, 5))
    dy = rng.normal(size=(3, 6, 4, 5))
    (want,), want_dx, _ = run_layer("Concat", full_params("Concat"), [a, c], [], [dy])
    for bottoms in ([ordered_batch_last(a), ordered_batch_last(c)], [ordered_batch_last(a), c]):
        (got,), got_dx, _ = run_layer("Concat", full_params("Concat"), bottoms, [], [ordered_batch_last(dy)])
        assert batch_last(got) is not None
        np.testing.assert_array_equal(got, want)
        for g, w in zip(got_dx, want_dx):
            np.testing.assert_array_equal(g, w)
    x = rng.normal(size=(3, 7, 4, 5))
    dy = rng.normal(size=x.shape)
    for type_name, params in [("LRN", full_params("LRN", local_size=5, alpha=0.1, beta=0.75)),
                              ("LRN", full_params("LRN", local_size=3, alpha=0.1, beta=0.6,
                                                  norm_region="WITHIN_CHANNEL")),
                              ("ReLU", full_params("ReLU", negative_slope=0.1))]:
        (want,), (want_dx,), _ = run_layer(type_name, params, [x], [], [dy])
        (got,), (got_dx,), _ = run_layer(type_name, params, [ordered_batch_last(x)], [], [ordered_batch_last(dy)])
        assert batch_last(got) is not None, type_name
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
        np.testing.assert_allclose(got_dx, want_dx, rtol=1e-13, atol=1e-15)


LENET_LIKE = """
net Small
input data [4, 1, 12, 12]
conv1: Convolution(data, 5, kernel=3, weight=gaussian(std=0.3), bias=gaussian(std=0.1))
pool1: Pooling(MAX, kernel=2, stride=2)
conv2: Convolution(6, kernel=3, pad=1, weight=gaussian(std=0.3), bias=gaussian(std=0.1))
relu2: ReLU!
pool2: Pooling(AVE, kernel=2, stride=2)
ip1:   InnerProduct(7, weight=gaussian(std=0.3), bias=gaussian(std=0.1))
"""


def test_a_small_map_chain_stays_batch_last_and_matches_the_reference(tmp_path):
    ex = build_executor(LENET_LIKE, tmp_path, dtype=np.float64)
    x = np.random.default_rng(6).normal(size=(4, 1, 12, 12))
    blobs = ex.forward({"data": x})
    for name in ("conv1", "pool1", "conv2", "pool2"):
        assert batch_last(blobs[name]) is not None, name      # no transposing copy between them
    want = reference.forward(ex.net, {k: [np.asarray(w) for w in v] for k, v in ex.weights.items()}, {"data": x})
    for name in ("conv1", "pool1", "conv2", "pool2", "ip1"):
        assert reference.max_relative_error(blobs[name], want[name]) < 1e-12, name


def test_a_small_map_chain_backward_by_finite_differences(tmp_path):
    gradcheck(LENET_LIKE, tmp_path)
