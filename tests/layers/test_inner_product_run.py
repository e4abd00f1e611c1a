"""InnerProduct running: forward against naive loops (axis, transpose, bias), backward by
gradcheck over the parameter combinations, and PyTorch's linear where it is installed."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gradcheck import build_executor as build, gradcheck  # noqa: E402





def naive_ip(x, w, b, axis, transpose):
    """y[m, n] = Σ_k x[m, k]·W[n, k] (+ b[n]) with explicit loops over the flattened rows."""
    lead = x.shape[:axis]
    rows = x.reshape(int(np.prod(lead, dtype=int)), -1)
    n_out = w.shape[1] if transpose else w.shape[0]
    out = np.zeros((rows.shape[0], n_out))
    for m in range(rows.shape[0]):
        for n in range(n_out):
            total = 0.0
            for k in range(rows.shape[1]):
                total += rows[m, k] * (w[k, n] if transpose else w[n, k])
            out[m, n] = total + (b[n] if b is not None else 0.0)
    return out.reshape(lead + (n_out,))


CASES = [
    # shape, axis, transpose, bias
    ((3, 4), 1, False, True),
    ((3, 4), 1, True, True),
    ((2, 3, 2, 2), 1, False, False),
    ((2, 3, 4), 2, False, True),
    ((2, 3, 4), -1, True, True),
    ((2, 3, 4), 0, False, True),
]


@pytest.mark.parametrize("shape, axis, transpose, bias", CASES)
def test_forward_matches_naive_loops(tmp_path, shape, axis, transpose, bias):
    text = (f"input data {list(shape)}\n"
            f"ip: InnerProduct(5, axis={axis}, transpose={str(transpose).lower()}, bias_term={str(bias).lower()}, "
            f"weight=gaussian(std=1), bias=gaussian(std=1))\n")
    ex = build(text, tmp_path)
    x = np.random.default_rng(1).normal(size=shape)
    y = np.array(ex.forward({"data": x})["ip"])
    w = ex.weights["ip"][0]
    b = ex.weights["ip"][1] if bias else None
    real_axis = axis % len(shape)
    assert y.shape == shape[:real_axis] + (5,)
    np.testing.assert_allclose(y, naive_ip(x, w, b, real_axis, transpose), rtol=1e-12, atol=1e-12)


def test_backward_closed_form_small_case(tmp_path):
    # y = x·Wᵀ + b with x [1, 2], W [2, 2]: ∂x = ∂y·W, ∂W = ∂yᵀ·x, ∂b = ∂y, worked out by hand
    ex = build("input data [1, 2]\nip: InnerProduct(2)\n", tmp_path)
    ex.weights["ip"][0][...] = [[1.0, 2.0], [3.0, 4.0]]
    ex.weights["ip"][1][...] = [0.5, -0.5]
    y = ex.forward({"data": np.array([[1.0, -1.0]])})["ip"]
    np.testing.assert_array_equal(y, [[1 - 2 + 0.5, 3 - 4 - 0.5]])
    grads = ex.backward(seeds={"ip": np.array([[1.0, 2.0]])})
    np.testing.assert_array_equal(ex.diffs["data"], [[1 * 1 + 2 * 3, 1 * 2 + 2 * 4]])
    np.testing.assert_array_equal(grads["ip"][0], [[1.0, -1.0], [2.0, -2.0]])
    np.testing.assert_array_equal(grads["ip"][1], [1.0, 2.0])


def test_float32_stays_float32(tmp_path):
    ex = build("input data [2, 3]\nip: InnerProduct(4, weight=xavier)\n", tmp_path, dtype=np.float32)
    y = ex.forward({"data": np.ones((2, 3), np.float32)})["ip"]
    assert y.dtype == np.float32
    grads = ex.backward(seeds={"ip": np.ones((2, 4), np.float32)})
    assert grads["ip"][0].dtype == np.float32 and ex.diffs["data"].dtype == np.float32


@pytest.mark.parametrize("shape, axis, transpose, bias", CASES)
def test_gradcheck(tmp_path, shape, axis, transpose, bias):
    gradcheck(f"input data {list(shape)}\n"
              f"ip: InnerProduct(4, axis={axis}, transpose={str(transpose).lower()}, "
              f"bias_term={str(bias).lower()})\n", tmp_path)


def test_gradcheck_two_layers_with_a_loss(tmp_path):
    gradcheck("input data [4, 3]\ninput label [4]\nip1: InnerProduct(5) ip2: InnerProduct(3)\n"
              "loss: SoftmaxWithLoss(ip2, label)\n", tmp_path,
              feeds={"label": np.array([0.0, 2.0, 1.0, 2.0])})


@pytest.mark.optional
@pytest.mark.parametrize("transpose", [False, True])
def test_matches_torch_linear(tmp_path, transpose):
    torch = pytest.importorskip("torch")
    ex = build(f"input data [3, 2, 2, 2]\nip: InnerProduct(5, transpose={str(transpose).lower()}, "
               f"weight=gaussian(std=1), bias=gaussian(std=1))\n", tmp_path)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 2, 2, 2))
    dy = rng.normal(size=(3, 5))
    y = np.array(ex.forward({"data": x})["ip"])
    grads = ex.backward(seeds={"ip": dy})
    w, b = ex.weights["ip"]
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w.T.copy() if transpose else w.copy(), requires_grad=True)
    tb = torch.tensor(b.copy(), requires_grad=True)
    ty = torch.nn.functional.linear(tx.reshape(3, -1), tw, tb)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ex.diffs["data"], tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    tw_grad = tw.grad.numpy()
    np.testing.assert_allclose(grads["ip"][0], tw_grad.T if transpose else tw_grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["ip"][1], tb.grad.numpy(), rtol=1e-12, atol=1e-12)
