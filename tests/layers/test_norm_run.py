"""BatchNorm and Scale running: BatchNorm's batch and global statistics against the formulas
(per-channel loops), its moving averages after two training passes, Scale's broadcasting,
backward by gradcheck, in place against not in place."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gradcheck import build_executor as build, gradcheck  # noqa: E402

from netc.compile import compile_net  # noqa: E402
from netc.runtime.weights import init_weights  # noqa: E402

EPS = 1e-5




def channel_stats(x):
    """Per-channel mean and biased variance with loops over channels; m values each."""
    c = x.shape[1]
    mean, var = np.zeros(c), np.zeros(c)
    for ch in range(c):
        values = x[:, ch].reshape(-1)
        mean[ch] = sum(values) / len(values)
        var[ch] = sum((v - mean[ch]) ** 2 for v in values) / len(values)
    return mean, var, x.size // c


def normalise(x, mean, var, eps=EPS):
    out = np.empty_like(x)
    for ch in range(x.shape[1]):
        out[:, ch] = (x[:, ch] - mean[ch]) / np.sqrt(var[ch] + eps)
    return out


# --- BatchNorm forward ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 2), (3, 2, 4)])
def test_batchnorm_train_uses_batch_statistics(tmp_path, shape):
    x = np.random.default_rng(0).normal(2.0, 3.0, size=shape)
    ex = build(f"input data {list(shape)}\nbn: BatchNorm(data)\n", tmp_path)
    y = np.array(ex.forward({"data": x})["bn"])
    mean, var, _ = channel_stats(x)
    np.testing.assert_allclose(y, normalise(x, mean, var), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fraction", [0.999, 0.9])
def test_batchnorm_moving_averages_after_two_passes(tmp_path, fraction):
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(1.0, 2.0, size=(3, 2, 2, 2)), rng.normal(-1.0, 0.5, size=(3, 2, 2, 2))
    ex = build(f"input data [3, 2, 2, 2]\nbn: BatchNorm(data, moving_average_fraction={fraction})\n", tmp_path)
    blobs = ex.weights["bn"]
    ex.forward({"data": x1})
    ex.forward({"data": x2})
    mu1, var1, m = channel_stats(x1)
    mu2, var2, _ = channel_stats(x2)
    correction = m / (m - 1)
    lam = fraction
    np.testing.assert_allclose(blobs[2], [lam * 1 + 1], rtol=1e-12)
    np.testing.assert_allclose(blobs[0], lam * mu1 + mu2, rtol=1e-12)
    np.testing.assert_allclose(blobs[1], lam * correction * var1 + correction * var2, rtol=1e-12)
    # and the arrays of the executor are the ones updated (in place): a test pass uses them
    ex_test = build("input data [3, 2, 2, 2]\nbn: BatchNorm(data)\n", tmp_path, phase="test", name="u.net")
    for dst, src in zip(ex_test.weights["bn"], blobs):
        dst[...] = src
    y = np.array(ex_test.forward({"data": x1})["bn"])
    s = lam + 1
    np.testing.assert_allclose(y, normalise(x1, (lam * mu1 + mu2) / s,
                                            (lam * correction * var1 + correction * var2) / s), rtol=1e-10)


def test_batchnorm_global_statistics_formula(tmp_path):
    x = np.random.default_rng(2).normal(size=(2, 2, 3))
    ex = build("input data [2, 2, 3]\nbn: BatchNorm(data)\n", tmp_path, phase="test")
    ex.weights["bn"][0][...] = [2.0, 4.0]
    ex.weights["bn"][1][...] = [8.0, 2.0]
    ex.weights["bn"][2][...] = [2.0]
    y = np.array(ex.forward({"data": x})["bn"])
    expected = np.stack([(x[:, 0] - 1.0) / np.sqrt(4.0 + EPS), (x[:, 1] - 2.0) / np.sqrt(1.0 + EPS)], axis=1)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    # global statistics leave the blobs alone
    np.testing.assert_array_equal(ex.weights["bn"][0], [2.0, 4.0])
    np.testing.assert_array_equal(ex.weights["bn"][2], [2.0])


def test_batchnorm_zero_factor_means_zero_statistics(tmp_path):
    x = np.random.default_rng(3).normal(size=(2, 3))
    ex = build("input data [2, 3]\nbn: BatchNorm(data, eps=0.01)\n", tmp_path, phase="test")
    ex.weights["bn"][0][...] = [5.0, 5.0, 5.0]        # ignored: s = 0
    y = np.array(ex.forward({"data": x})["bn"])
    np.testing.assert_allclose(y, x / np.sqrt(0.01), rtol=1e-12)


def test_batchnorm_use_global_stats_overrides_the_phase(tmp_path):
    x = np.random.default_rng(4).normal(size=(4, 2))
    ex = build("input data [4, 2]\nbn: BatchNorm(data, use_global_stats=true)\n", tmp_path, phase="train")
    ex.weights["bn"][0][...] = [1.0, -1.0]
    ex.weights["bn"][1][...] = [4.0, 9.0]
    ex.weights["bn"][2][...] = [1.0]
    y = np.array(ex.forward({"data": x})["bn"])
    np.testing.assert_allclose(y, normalise(x, [1.0, -1.0], [4.0, 9.0]), rtol=1e-12)
    assert ex.weights["bn"][2][0] == 1.0       # not updated
    ex = build("input data [4, 2]\nbn: BatchNorm(data, use_global_stats=false)\n", tmp_path, phase="test",
               name="b.net")
    y = np.array(ex.forward({"data": x})["bn"])
    mean, var, _ = channel_stats(x)
    np.testing.assert_allclose(y, normalise(x, mean, var), rtol=1e-10)
    assert ex.weights["bn"][2][0] == 1.0       # 0·λ + 1


def test_batchnorm_float32(tmp_path):
    ex = build("input data [4, 3]\nbn: BatchNorm(data)\n", tmp_path, dtype=np.float32)
    y = ex.forward({"data": np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)})["bn"]
    assert y.dtype == np.float32 and all(w.dtype == np.float32 for w in ex.weights["bn"])
    ex.backward(seeds={"bn": np.ones((4, 3), np.float32)})
    assert ex.diffs["data"].dtype == np.float32


def test_batchnorm_global_backward_closed_form(tmp_path):
    ex = build("input data [2, 2]\nbn: BatchNorm(data)\n", tmp_path, phase="test")
    ex.weights["bn"][1][...] = [3.0, 0.0]
    ex.weights["bn"][2][...] = [1.0]
    ex.forward({"data": np.ones((2, 2))})
    ex.backward(seeds={"bn": np.array([[1.0, 2.0], [3.0, 4.0]])})
    np.testing.assert_allclose(ex.diffs["data"], [[1 / np.sqrt(3 + EPS), 2 / np.sqrt(EPS)],
                                                  [3 / np.sqrt(3 + EPS), 4 / np.sqrt(EPS)]], rtol=1e-12)


# --- BatchNorm backward -----------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "input data [4, 3, 2, 2]\nbn: BatchNorm(data)\n",
    "input data [6, 2]\nbn: BatchNorm(data, eps=0.001)\n",
    "input data [3, 4]\nip: InnerProduct(3, weight=gaussian(std=1))\nBatchNorm!\n",
    "input data [3, 2, 2, 2]\nc: Scale(data, bias_term=true)\nbn: BatchNorm(c)! Scale(bias_term=true)!\n",
])
def test_gradcheck_batchnorm_train(tmp_path, text):
    gradcheck(text, tmp_path)


def _seed_with_positive_variance(text, tmp_path):
    """gradcheck fills BatchNorm's zero blobs with N(0, 1) from default_rng(seed), blob by blob
    in net order; global statistics need var = blob1/blob2 > 0. Find a seed that gives it."""
    path = tmp_path / "probe.net"
    path.write_text(text)
    net = compile_net(str(path), "test")
    for seed in range(200):
        rng = np.random.default_rng(seed)
        weights = init_weights(net, seed, np.float64)
        for blobs in weights.values():
            for w in blobs:
                if not np.any(w):
                    w[...] = rng.normal(0, 1, w.shape)
        mean, var, s = weights["bn"]
        if np.all(var / s > 0.1):
            return seed
    raise AssertionError("no seed gives a positive variance")


@pytest.mark.parametrize("text", ["input data [3, 2, 2]\nbn: BatchNorm(data)\n",
                                  "input data [3, 2]\nip: InnerProduct(2, weight=gaussian(std=1))\nbn: BatchNorm(ip)!\n"])
def test_gradcheck_batchnorm_global(tmp_path, text):
    seed = _seed_with_positive_variance(text, tmp_path)
    gradcheck(text, tmp_path, phase="test", seed=seed)


@pytest.mark.parametrize("phase", ["train", "test"])
def test_batchnorm_in_place_gives_the_same_numbers(tmp_path, phase):
    rng = np.random.default_rng(6)
    x, dy = rng.normal(size=(4, 5)), rng.normal(size=(4, 3))
    head = "input data [4, 5]\nip: InnerProduct(3, weight=gaussian(std=1))\n"
    results = []
    for name, text, out in [("a.net", head + "bn: BatchNorm(ip)\n", "bn"), ("b.net", head + "BatchNorm!\n", "ip")]:
        ex = build(text, tmp_path, phase=phase, name=name)
        bn = [k for k in ex.weights if k != "ip"][0]
        ex.weights[bn][0][...] = [0.5, 1.0, -1.0]
        ex.weights[bn][1][...] = [1.0, 2.0, 3.0]
        ex.weights[bn][2][...] = [1.5]
        y = np.array(ex.forward({"data": x})[out])
        ex.backward(seeds={out: dy})
        results.append((y, np.array(ex.diffs["data"]), [np.array(w) for w in ex.weights[bn]]))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    for u, v in zip(results[0][2], results[1][2]):
        np.testing.assert_array_equal(u, v)


# --- Scale ------------------------------------------------------------------------------------

def naive_scale(x, gamma, beta, axis):
    """y[i…] = x[i…]·γ[the indices axis..axis+γ.ndim] (+ β), with an explicit loop over elements."""
    y = np.empty_like(x)
    for index in np.ndindex(*x.shape):
        g = index[axis:axis + gamma.ndim]
        y[index] = x[index] * gamma[g] + (beta[g] if beta is not None else 0.0)
    return y


SCALE_CASES = [
    # shape, options, axis, gamma shape
    ((2, 3, 2), "", 1, (3,)),
    ((2, 3, 2), "num_axes=2", 1, (3, 2)),
    ((2, 3, 2), "num_axes=0", 1, ()),
    ((2, 3, 2), "axis=0, num_axes=-1", 0, (2, 3, 2)),
    ((2, 3, 4), "axis=-1", 2, (4,)),
]


@pytest.mark.parametrize("shape, options, axis, gshape", SCALE_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_scale_forward(tmp_path, shape, options, axis, gshape, bias):
    opts = ", ".join(o for o in (options, "bias_term=true" if bias else "", "filler=gaussian(std=1)",
                                 "bias_filler=gaussian(std=1)") if o)
    ex = build(f"input data {list(shape)}\nsc: Scale(data, {opts})\n", tmp_path)
    x = np.random.default_rng(7).normal(size=shape)
    y = np.array(ex.forward({"data": x})["sc"])
    gamma = ex.weights["sc"][0]
    assert gamma.shape == gshape
    beta = ex.weights["sc"][1] if bias else None
    np.testing.assert_allclose(y, naive_scale(x, gamma, beta, axis), rtol=1e-12)


def test_scale_default_filler_is_one(tmp_path):
    ex = build("input data [2, 3]\nsc: Scale(data)\n", tmp_path)
    x = np.random.default_rng(8).normal(size=(2, 3))
    np.testing.assert_array_equal(ex.forward({"data": x})["sc"], x)


@pytest.mark.parametrize("shape, options, axis, gshape", SCALE_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck_scale(tmp_path, shape, options, axis, gshape, bias):
    opts = ", ".join(o for o in (options, "bias_term=true" if bias else "") if o)
    gradcheck(f"input data {list(shape)}\nsc: Scale(data{', ' + opts if opts else ''})\n", tmp_path)


@pytest.mark.parametrize("gshape, axis", [((2, 3), 0), ((3,), 1), ((3, 4), 1), ((2,), 0), ((4,), 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_scale_two_bottoms(tmp_path, gshape, axis, bias):
    text = (f"input data [2, 3, 4]\ninput g {list(gshape)}\n"
            f"sc: Scale(data, g, axis={axis}{', bias_term=true, bias_filler=gaussian(std=1)' if bias else ''})\n")
    ex = build(text, tmp_path)
    rng = np.random.default_rng(9)
    x, g = rng.normal(size=(2, 3, 4)), rng.normal(size=gshape)
    y = np.array(ex.forward({"data": x, "g": g})["sc"])
    beta = ex.weights["sc"][0] if bias else None
    if bias:
        assert beta.shape == gshape
    else:
        assert not ex.weights.get("sc")
    np.testing.assert_allclose(y, naive_scale(x, g, beta, axis), rtol=1e-12)
    gradcheck(text, tmp_path)


@pytest.mark.parametrize("options", ["", "bias_term=true", "num_axes=2, bias_term=true"])
def test_scale_in_place_gives_the_same_numbers(tmp_path, options):
    rng = np.random.default_rng(10)
    x, dy = rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 2))
    head = "input data [3, 4]\nip: InnerProduct(4, weight=gaussian(std=1))\n"
    opts = f"({options})" if options else ""
    a_text = head + f"r: Reshape(ip, shape=[0, 2, 2])\nsc: Scale(r{', ' + options if options else ''})\n"
    b_text = head + f"r: Reshape(ip, shape=[0, 2, 2]) Scale{opts}!\n"
    a = build(a_text, tmp_path, name="a.net")
    b = build(b_text, tmp_path, name="b.net")
    b_scale = [k for k in b.weights if k.endswith("scale")][0]
    for src, dst in zip(a.weights["sc"], b.weights[b_scale]):
        src[...] = rng.normal(size=src.shape)
        dst[...] = src
    ya = np.array(a.forward({"data": x})["sc"])
    yb = np.array(b.forward({"data": x})["r"])
    np.testing.assert_array_equal(ya, yb)
    ga = a.backward(seeds={"sc": dy})
    gb = b.backward(seeds={"r": dy})
    np.testing.assert_array_equal(a.diffs["data"], b.diffs["data"])
    for u, v in zip(ga["sc"], gb[b_scale]):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("options", ["", "bias_term=true"])
def test_gradcheck_scale_in_place(tmp_path, options):
    gradcheck(f"input data [3, 4, 2]\nc: Scale(data, bias_term=true) Scale({options})!\n", tmp_path)
