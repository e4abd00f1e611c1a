"""Caffe's fillers, checked against their formulas; one seed, the same weights bit for bit."""
from __future__ import annotations

import math

import numpy as np
import pytest

from netc.compile import compile_net
from netc.ir import Filler
from netc.runtime.fillers import fill
from netc.runtime.weights import init_weights


def rng(seed=0):
    return np.random.default_rng(seed)


def test_constant_uniform_gaussian():
    assert np.all(fill(Filler("constant", value=0.2), (3, 4), rng()) == np.float32(0.2))
    u = fill(Filler("uniform", min=-2, max=3), (200, 500), rng())
    assert u.dtype == np.float32 and u.min() >= -2 and u.max() <= 3
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.var() - 25 / 12) < 0.05
    g = fill(Filler("gaussian", mean=1.0, std=0.5), (200, 500), rng())
    assert abs(g.mean() - 1.0) < 0.01 and abs(g.std() - 0.5) < 0.01


@pytest.mark.parametrize("norm, n", [("FAN_IN", 3 * 5 * 5), ("FAN_OUT", 64 * 5 * 5), ("AVERAGE", (75 + 1600) / 2)])
def test_xavier_is_uniform_with_caffes_fan(norm, n):
    # Caffe: fan_in = count / shape[0], fan_out = count / shape[1]; U[-sqrt(3/n), sqrt(3/n)]
    w = fill(Filler("xavier", variance_norm=norm), (64, 3, 5, 5), rng())
    limit = math.sqrt(3.0 / n)
    assert w.max() <= limit and w.min() >= -limit
    assert w.max() > 0.95 * limit            # it spans the interval, it is not narrower
    assert abs(w.var() - limit ** 2 / 3) < 0.1 * limit ** 2 / 3


def test_msra_is_gaussian_with_variance_two_over_fan_in():
    w = fill(Filler("msra"), (256, 128, 3, 3), rng())
    assert abs(w.mean()) < 1e-3
    assert w.var() == pytest.approx(2.0 / (128 * 9), rel=0.02)


def test_bilinear_kernel_is_caffes():
    # kernel 4 (upsampling by 2): f = 2, c = 0.75, ramp 1 - |x/2 - 0.75| = .25 .75 .75 .25
    w = fill(Filler("bilinear"), (2, 1, 4, 4), rng())
    ramp = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(w[1, 0], np.outer(ramp, ramp))
    # kernel 3: f = 2, c = 0.75: 1 - |0 - .75|, 1 - |.5 - .75|, 1 - |1 - .75| = .25 .75 .75
    w3 = fill(Filler("bilinear"), (1, 1, 3, 3), rng())
    np.testing.assert_allclose(w3[0, 0, 0], 0.25 * np.array([0.25, 0.75, 0.75]))


def test_sparse_gaussian_and_positive_unitball():
    w = fill(Filler("gaussian", std=1.0, sparse=10), (100, 400), rng())
    # each weight kept with probability sparse / shape[0] = 0.1
    assert abs(np.mean(w != 0) - 0.1) < 0.01
    b = fill(Filler("positive_unitball"), (5, 7), rng())
    assert np.all(b >= 0)
    np.testing.assert_allclose(b.sum(axis=1), 1.0, rtol=1e-6)


NET = """
input data [2, 3, 8, 8]
conv: Convolution(4, kernel=3, weight=xavier, bias=gaussian(std=0.1))
twin: Convolution(data, 4, kernel=3, weight=msra, share=[shared_w])
also: Convolution(data, 4, kernel=3, share=[shared_w])
ip: InnerProduct(conv, 5, weight=gaussian(std=0.01), bias=0.5)
"""


def test_one_seed_gives_the_same_weights_bit_for_bit(tmp_path):
    path = tmp_path / "w.net"
    path.write_text(NET)
    net = compile_net(str(path))
    a, b, c = init_weights(net, seed=7), init_weights(net, seed=7), init_weights(net, seed=8)
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert x.tobytes() == y.tobytes()
    assert a["conv"][0].tobytes() != c["conv"][0].tobytes()
    # shared by name: one array, filled once (by its first user, msra)
    assert a["twin"][0] is a["also"][0]
    assert np.all(a["ip"][1] == np.float32(0.5))
    assert a["conv"][0].shape == (4, 3, 3, 3) and a["ip"][0].shape == (5, 4 * 6 * 6)
