"""LRN running: ACROSS_CHANNELS and WITHIN_CHANNEL forward against the definitions
written as loops here, backward by gradcheck over a grid, and PyTorch's
local_response_norm (Caffe's across-channel LRN) where it is installed."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gradcheck import build_executor as build, gradcheck  # noqa: E402





def f32(v):
    """Caffe keeps alpha, beta and k in float32 fields."""
    return float(np.float32(v))


def lrn_across(x, n, alpha, beta, k):
    """y[c] = x[c]·(k + α/n·Σ_{c' = c−(n−1)/2 … c+(n−1)/2, in range} x[c']²)^(−β)."""
    alpha, beta, k = f32(alpha), f32(beta), f32(k)
    y = np.zeros_like(x)
    half = (n - 1) // 2
    for c in range(x.shape[1]):
        total = np.zeros_like(x[:, 0])
        for d in range(c - half, c + half + 1):
            if 0 <= d < x.shape[1]:
                total += x[:, d] ** 2
        y[:, c] = x[:, c] * (k + alpha / n * total) ** -beta
    return y


def lrn_within(x, n, alpha, beta):
    """y = x·(1 + α/n²·Σ_{n×n window centred on the pixel, zero outside} x²)^(−β)."""
    alpha, beta = f32(alpha), f32(beta)
    _, _, h, w = x.shape
    half = (n - 1) // 2
    y = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            window = x[:, :, max(i - half, 0):i + half + 1, max(j - half, 0):j + half + 1]
            total = (window ** 2).sum(axis=(2, 3))
            y[:, :, i, j] = x[:, :, i, j] * (1 + alpha / n ** 2 * total) ** -beta
    return y


# shape, local_size, alpha, beta, k
ACROSS = [
    ((2, 7, 3, 4), 5, 1.0, 0.75, 1.0),
    ((1, 4, 3, 3), 3, 2.0, 0.6, 2.0),
    ((2, 2, 3, 2), 5, 1.5, 0.75, 1.0),      # window wider than the channels
    ((1, 5, 2, 3), 1, 0.5, 1.3, 0.5),
    ((2, 9, 2, 2), 7, 1e-4, 0.75, 1.0),     # AlexNet's α
]
WITHIN = [
    ((2, 3, 5, 6), 3, 1.0, 0.75),
    ((1, 2, 4, 7), 5, 2.0, 0.6),
    ((1, 1, 2, 3), 5, 3.0, 0.75),           # window wider than the image
    ((2, 2, 3, 3), 1, 1.0, 0.5),
]


def across_text(shape, n, a, b, k):
    return f"input data {list(shape)}\nn: LRN(local_size={n}, alpha={a}, beta={b}, k={k})\n"


def within_text(shape, n, a, b):
    return f"input data {list(shape)}\nn: LRN(local_size={n}, alpha={a}, beta={b}, norm_region=WITHIN_CHANNEL)\n"


def scaled_input(shape, seed):
    return np.random.default_rng(seed).normal(size=shape) * 2


@pytest.mark.parametrize("case", ACROSS)
def test_across_channels_forward(tmp_path, case):
    shape, n, a, b, k = case
    x = scaled_input(shape, 1)
    want = lrn_across(x, n, a, b, k)
    ex = build(across_text(*case), tmp_path)
    np.testing.assert_allclose(np.array(ex.forward({"data": x})["n"]), want, rtol=1e-12)
    got32 = np.array(build(across_text(*case), tmp_path, dtype=np.float32).forward({"data": x})["n"])
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("case", WITHIN)
def test_within_channel_forward(tmp_path, case):
    shape, n, a, b = case
    x = scaled_input(shape, 2)
    want = lrn_within(x, n, a, b)
    ex = build(within_text(*case), tmp_path)
    np.testing.assert_allclose(np.array(ex.forward({"data": x})["n"]), want, rtol=1e-12)
    got32 = np.array(build(within_text(*case), tmp_path, dtype=np.float32).forward({"data": x})["n"])
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_within_channel_ignores_k(tmp_path):
    x = scaled_input((1, 2, 3, 3), 3)
    a = np.array(build(within_text((1, 2, 3, 3), 3, 1.0, 0.75), tmp_path).forward({"data": x})["n"])
    b = np.array(build(within_text((1, 2, 3, 3), 3, 1.0, 0.75).rstrip()[:-1] + ", k=5)\n", tmp_path)
                 .forward({"data": x})["n"])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ACROSS)
def test_across_channels_gradcheck(tmp_path, case):
    gradcheck(across_text(*case), tmp_path, feeds={"data": scaled_input(case[0], 4)})


@pytest.mark.parametrize("case", WITHIN)
def test_within_channel_gradcheck(tmp_path, case):
    gradcheck(within_text(*case), tmp_path, feeds={"data": scaled_input(case[0], 5)})


def test_across_backward_by_caffe_formula(tmp_path):
    """Caffe's LRNLayer::CrossChannelBackward_cpu written out:
    dx = dy·scale^(−β) − (2αβ/n)·x·Σ_window(dy·y/scale)."""
    shape, n, a, b, k = (2, 6, 2, 3), 3, 0.8, 0.75, 1.5
    x = scaled_input(shape, 6)
    dy = np.random.default_rng(7).normal(size=shape)
    a_, b_, k_ = f32(a), f32(b), f32(k)
    half = (n - 1) // 2
    scale = np.zeros_like(x)
    for c in range(shape[1]):
        lo, hi = max(c - half, 0), min(c + half + 1, shape[1])
        scale[:, c] = k_ + a_ / n * (x[:, lo:hi] ** 2).sum(axis=1)
    y = x * scale ** -b_
    ratio = dy * y / scale
    want = np.zeros_like(x)
    for c in range(shape[1]):
        lo, hi = max(c - half, 0), min(c + half + 1, shape[1])
        want[:, c] = dy[:, c] * scale[:, c] ** -b_ - 2 * a_ * b_ / n * x[:, c] * ratio[:, lo:hi].sum(axis=1)
    ex = build(across_text(shape, n, a, b, k), tmp_path)
    ex.forward({"data": x})
    ex.backward(seeds={"n": dy})
    np.testing.assert_allclose(ex.diffs["data"], want, rtol=1e-12, atol=1e-14)


def test_inputs_are_not_modified(tmp_path):
    ex = build(across_text((1, 4, 3, 3), 3, 1.0, 0.75, 1.0).rstrip() +
               "\nw: LRN(n, local_size=3, norm_region=WITHIN_CHANNEL)\n", tmp_path)
    x = scaled_input((1, 4, 3, 3), 8)
    x0 = x.copy()
    ex.forward({"data": x})
    n0 = np.array(ex.blobs["n"]).copy()
    ex.backward(seeds={"w": np.ones((1, 4, 3, 3))})
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(np.array(ex.blobs["n"]), n0)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (2, 3, 70, 130)])
def test_window_sums_whatever_the_memory_order_and_run_length(region, shape):
    """The window sums shift runs of memory: short runs as one (the planes' edges put
    back), long ones per plane, batch-last memory in its own order. Each gives the
    loops' values, and both memory orders the same numbers, forward and backward."""
    from netc.layers import REGISTRY
    from netc.layers.memory_order import as_blob
    from netc.runtime.backend import NUMPY, RunContext

    spec = REGISTRY["LRN"]
    p = spec.normalize(dict(local_size=5, alpha=2.0, beta=0.75, k=1.5, norm_region=region))
    x = scaled_input(shape, 11)
    dy = np.random.default_rng(12).normal(size=shape)
    results = []
    for memory in (x, as_blob(np.ascontiguousarray(x.transpose(1, 2, 3, 0)))):
        ctx, state = RunContext(NUMPY, "train", np.float64), {}
        y = spec.forward(p, [memory], [], ctx, state)[0]
        (dx,), _ = spec.backward(p, [memory], [y], [dy], [], ctx, state, [True])
        results.append((np.array(y), np.array(dx)))
    want = lrn_across(x, 5, 2.0, 0.75, 1.5) if region == "ACROSS_CHANNELS" else lrn_within(x, 5, 2.0, 0.75)
    np.testing.assert_allclose(results[0][0], want, rtol=1e-12)
    for got, other in zip(results[0], results[1]):
        np.testing.assert_array_equal(got, other)


@pytest.mark.optional
@pytest.mark.parametrize("case", ACROSS)
def test_across_matches_torch(tmp_path, case):
    torch = pytest.importorskip("torch")
    shape, n, a, b, k = case
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        ex = build(across_text(*case), tmp_path, dtype=dtype)
        rng = np.random.default_rng(9)
        x = (rng.normal(size=shape) * 2).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        y = np.array(ex.forward({"data": x})["n"])
        ex.backward(seeds={"n": dy})
        tx = torch.tensor(x, requires_grad=True)
        ty = torch.nn.functional.local_response_norm(tx, n, f32(a), f32(b), f32(k))
        ty.backward(torch.tensor(dy))
        for ours, theirs in ((y, ty.detach().numpy()), (ex.diffs["data"], tx.grad.numpy())):
            assert ours.dtype == dtype
            assert np.abs(ours - theirs).max() <= tol * max(np.abs(theirs).max(), 1.0)
