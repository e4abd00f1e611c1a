"""Winograd's minimal filtering (netc.layers.winograd): the Toom-Cook matrices compute
the correlation exactly, the tile gather and scatter are adjoint, the float32 rounding
stays within 1e-5 of the largest value, and the plan picks Winograd only where
it was measured to pay. The layer's results (forward against direct loops, gradcheck,
PyTorch) are checked with the other convolutions in test_conv_run.py."""
import random
from fractions import Fraction

import numpy as np
import pytest

from netc.layers import winograd
from netc.layers.im2col import Geometry
from netc.layers.memory_order import as_blob

PAIRS = [(m, r) for r in range(2, 8) for m in range(2, 8) if m + r - 1 <= winograd.MAX_ALPHA]


@pytest.mark.parametrize("m,r", PAIRS)
def test_toom_cook_computes_the_correlation_exactly(m, r):
    at, g, bt = winograd.toom_cook(m, r)
    alpha = m + r - 1
    assert (len(at), len(at[0]), len(g), len(g[0]), len(bt)) == (m, alpha, alpha, r, alpha)
    rnd = random.Random(m * 10 + r)
    for _ in range(5):
        d = [Fraction(rnd.randint(-9, 9)) for _ in range(alpha)]
        taps = [Fraction(rnd.randint(-9, 9)) for _ in range(r)]
        gg = [sum(g[i][k] * taps[k] for k in range(r)) for i in range(alpha)]
        bd = [sum(bt[i][k] * d[k] for k in range(alpha)) for i in range(alpha)]
        y = [sum(at[j][i] * gg[i] * bd[i] for i in range(alpha)) for j in range(m)]
        assert y == [sum(d[j + k] * taps[k] for k in range(r)) for j in range(m)]


@pytest.mark.parametrize("m,r", PAIRS)
def test_input_transform_has_integer_entries(m, r):
    _, _, bt = winograd.toom_cook(m, r)
    assert all(v.denominator == 1 for row in bt for v in row)


def test_toom_cook_refuses_more_points_than_defined():
    with pytest.raises(ValueError):
        winograd.toom_cook(6, 4)


def geometry(c, h, w, k, pad=0, stride=1, dilation=1):
    kh, kw = (k, k) if isinstance(k, int) else k
    oh = (h + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
    return Geometry(c, h, w, kh, kw, stride, stride, pad, pad, dilation, dilation, oh, ow)


def test_plan_for_lenet_conv2_is_f4x4_5x5():
    p = winograd.plan(geometry(20, 12, 12, 5), groups=1, n=64)
    assert (p.mh, p.mw, p.alpha_h, p.tiles_h, p.tiles_w) == (4, 4, 8, 2, 2)
    assert p.input_extent() == (12, 12)


def test_plan_tile_needs_fewest_transformed_values():
    # 3 taps over 13 outputs (AlexNet's conv3-5), values per row = α·tiles:
    # m=2: 4·7 = 28, m=3: 5·5 = 25, m=4: 6·4 = 24, m=5: 7·3 = 21, m=6: 8·3 = 24
    p = winograd.plan(geometry(256, 13, 13, 3, pad=1), groups=1, n=16)
    assert (p.mh, p.tiles_h) == (5, 3)
    assert p.input_extent() == (2 * 5 + 7, 2 * 5 + 7)


@pytest.mark.parametrize("geo,groups,n", [
    (geometry(64, 13, 13, 3, pad=1, stride=2), 1, 64),      # stride 2
    (geometry(64, 13, 13, 3, pad=2, dilation=2), 1, 64),    # dilation 2
    (geometry(64, 13, 13, 1), 1, 64),                       # 1x1: nothing to save
    (geometry(64, 20, 20, 9), 1, 64),                       # 9 taps need more than 8 points
    (geometry(4, 12, 12, 5), 1, 64),                        # too few channels
    (geometry(16, 12, 12, 5), 4, 64),                       # ... per group
    (geometry(256, 13, 13, 3, pad=1), 1, 1),                # batch 1 of a small map
    (geometry(20, 6, 6, 5), 1, 64),                         # 2x2 output: saves too little
])
def test_plan_declines(geo, groups, n):
    assert winograd.plan(geo, groups, n) is None


def test_plan_counts_tiles_times_batch():
    geo = geometry(256, 13, 13, 3, pad=1)                   # 9 tiles per image
    assert winograd.plan(geo, 1, winograd.MIN_COLUMNS // 9) is not None
    assert winograd.plan(geo, 1, winograd.MIN_COLUMNS // 9 - 1) is None


def test_tile_scatter_is_the_adjoint_of_the_gather():
    # α = 7, m = 5: the second block of tile offsets is partial (5, 6)
    geo = geometry(8, 11, 12, 3, pad=1)
    p = winograd.Plan(3, 3, 5, 5, geo.oh, geo.ow)
    rng = np.random.default_rng(0)
    n = 3
    hb, wb = p.input_extent()
    hb, wb = max(hb, geo.h + 1), max(wb, geo.w + 1)
    x = np.zeros((geo.c, hb, wb, n))
    x[:, 1:1 + geo.h, 1:1 + geo.w] = rng.normal(size=(geo.c, geo.h, geo.w, n))
    s = x.strides
    tiles = np.lib.stride_tricks.as_strided(
        x, (p.alpha_h, p.alpha_w, geo.c, p.tiles_h, p.tiles_w, n), (s[1], s[2], s[0], 5 * s[1], 5 * s[2], s[3]))
    t = rng.normal(size=tiles.shape)
    back = winograd._scatter_tiles(np, t, p, (geo.h, geo.w), (1, 1))
    assert back.shape == (geo.c, geo.h, geo.w, n)
    assert np.isclose(np.sum(tiles * t), np.sum(x[:, 1:1 + geo.h, 1:1 + geo.w] * back))


def direct(x, w):
    """Valid correlation of x (C, H, W, N) with w (Co, C, kh, kw), float64, as a sum over taps."""
    c, h, wd, n = x.shape
    co, _, kh, kw = w.shape
    y = np.zeros((co, h - kh + 1, wd - kw + 1, n))
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("chwn,oc->ohwn", x[:, i:i + h - kh + 1, j:j + wd - kw + 1], w[:, :, i, j])
    return y


@pytest.mark.parametrize("k", [3, 5])
def test_float32_error_stays_within_1e_5_of_the_largest_value(k):
    # 8 points (the largest tiles, the largest rounding: ~4e-6 measured, about 8x the
    # direct GEMM's) on data of mixed scale: forward, input and weight gradients
    rng = np.random.default_rng(k)
    c, co, n, size = 32, 16, 36, 12 + k - 1      # 12x12 outputs: tiles of 8 points for both k
    x = rng.normal(size=(c, size, size, n)) * rng.uniform(0.1, 10, size=(c, 1, 1, 1))
    w = rng.normal(size=(co, c, k, k))
    geo = geometry(c, size, size, k)
    p = winograd.plan(geo, 1, n)
    assert p is not None and p.alpha_h == 8
    x32, w32 = as_blob(x.astype(np.float32)), w.astype(np.float32)
    y = winograd.forward(np, x32, w32, None, p, geo, 1)
    want = direct(x, w)
    assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()
    dy = rng.normal(size=want.shape)
    dx, dw, db = winograd.backward(np, x32, as_blob(dy.astype(np.float32)), w32, p, geo, 1)
    dx64, dw64, _ = winograd.backward(np, as_blob(x), as_blob(dy), w, p, geo, 1)
    # float64 Winograd agrees with the direct definition: <dy, conv(x)> = <dx, x> = <dw, w>
    assert np.isclose(np.sum(dy * want), np.sum(dx64 * x), rtol=1e-10)
    assert np.isclose(np.sum(dy * want), np.sum(dw64 * w), rtol=1e-10)
    assert np.abs(dx - dx64).max() <= 1e-5 * np.abs(dx64).max()
    assert np.abs(dw - dw64).max() <= 1e-5 * np.abs(dw64).max()
    np.testing.assert_allclose(db, dy.sum(axis=(1, 2, 3)), rtol=1e-5)
