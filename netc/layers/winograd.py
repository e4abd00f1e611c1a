"""Winograd's minimal filtering for stride-1 convolutions (Lavin & Gray, 2015).

A convolution computes, for every output pixel, a dot product of an r-tap kernel with
r input values; neighbouring pixels share most of those values. Winograd's F(m, r)
makes m outputs of an r-tap correlation from α = m + r − 1 inputs with α
multiplications instead of m·r:

    y = Aᵀ [(G g) ⊙ (Bᵀ d)]        d: α inputs, g: r taps, y: m outputs

and nested over both axes, an m×m tile of output from an α×α tile of input:

    Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A

Summed over input channels, the elementwise product becomes, for each of the α·α
"frequencies", one matrix product: M[f] = U[f] · V[f], U[f] (Co × C) the transformed
weights, V[f] (C × tiles·N) the transformed input. LeNet's conv2 (5×5, 8×8 output)
with F(4×4, 5×5) spends 64 multiplications per 16 outputs instead of 400: the GEMMs
shrink 6x; the transforms (small GEMMs with 8-wide inner dimensions) and the tile
copies are what is left.

The matrices come from Toom-Cook interpolation at the points 0, ±1, ±2, ±1/2 and ∞
(the first α − 1 finite ones), computed exactly in rationals: A and G evaluate the
output and kernel polynomials at the points, B is the inverse of the evaluation of
their product (the transposition principle turns the convolution into the
correlation a network computes). Each row of Bᵀ is scaled to integers and the
factor moved into G, so the input transform adds small integers. The transforms'
rounding grows with the points: with 8 of them, float32 results differ from exact
by up to ~4e-6 of the largest value, about 8x what the direct GEMM's sums do (tests
hold both below 1e-5 against float64).

Everything here works on arrays ordered batch-last (netc.layers.memory_order): the
input (C, Hb, Wb, N) zero-padded so that every tile's window lies inside it, the
output and gradients (Co, OH, OW, N). Tiles are gathered as (α, α, C, tiles_h,
tiles_w, N) so that each transform is a GEMM over the two leading axes, and the
frequencies' products one batched GEMM.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy

from netc.layers.im2col import as_strided, workspace

# Interpolation points in the order they are taken; ∞ is always the last point.
_POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2), Fraction(-1, 2))
# Larger tiles save more multiplications but lose accuracy fast beyond 8 points.
MAX_ALPHA = 8
# Winograd is chosen when it needs at most this fraction of the direct convolution's
# multiplications (the GEMMs): below that, the transforms and the copies eat the gain.
_MAX_MAC_FRACTION = 0.5
# ... and when the products per frequency have at least this many columns (tiles ×
# batch): the transformed weights are α²/k² times the kernel's size, and fewer columns
# leave those GEMMs streaming weights rather than computing (measured on 2 cores:
# batch-1 AlexNet and GoogLeNet ran 1.5-4x slower by Winograd, batch 16 and 8
# 1.1-1.7x faster from ~150 columns up, and about even at 128).
MIN_COLUMNS = 144
# ... and when each group has this many input channels: the transforms cost per
# channel what the GEMMs cost per channel pair, so a few channels do not pay.
_MIN_GROUP_CHANNELS = 8


@lru_cache(maxsize=None)
def toom_cook(m: int, r: int) -> tuple[tuple, tuple, tuple]:
    """F(m, r)'s Aᵀ (m × α), G (α × r) and Bᵀ (α × α), exact, as tuples of rows of
    Fractions: y = Aᵀ[(G g) ⊙ (Bᵀ d)] is the correlation y_i = Σ_k d_(i+k) g_k."""
    alpha = m + r - 1
    if not 2 <= alpha <= len(_POINTS) + 1:
        raise ValueError(f"F({m}, {r}) needs {alpha} points; at most {len(_POINTS) + 1} are defined")
    points = _POINTS[:alpha - 1]

    def evaluation(degree: int) -> list[list[Fraction]]:
        """Values at the points, and the leading coefficient (the value at ∞), of a
        polynomial with `degree` coefficients: an (α × degree) matrix."""
        rows = [[p ** i for i in range(degree)] for p in points]
        rows.append([Fraction(int(i == degree - 1)) for i in range(degree)])
        return rows

    a, g = evaluation(m), evaluation(r)
    b = _inverse(evaluation(alpha))
    bt = [[b[j][i] for j in range(alpha)] for i in range(alpha)]
    for i in range(alpha):
        # integers in Bᵀ, the factor in G's row: the product (G g) ⊙ (Bᵀ d) is the same
        scale = math.lcm(*(v.denominator for v in bt[i]))
        bt[i] = [v * scale for v in bt[i]]
        g[i] = [v / scale for v in g[i]]
    at = [[a[j][i] for j in range(alpha)] for i in range(m)]
    return tuple(map(tuple, at)), tuple(map(tuple, g)), tuple(map(tuple, bt))


def _inverse(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact Gauss-Jordan inverse of a square matrix of Fractions."""
    n = len(matrix)
    rows = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(i for i in range(col, n) if rows[i][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        lead = rows[col][col]
        rows[col] = [v / lead for v in rows[col]]
        for i in range(n):
            if i != col and rows[i][col] != 0:
                factor = rows[i][col]
                rows[i] = [v - factor * w for v, w in zip(rows[i], rows[col])]
    return [row[n:] for row in rows]


def _tile_size(r: int, out: int) -> tuple[int, int]:
    """The output tile m for an r-tap axis of `out` outputs that needs the fewest
    transformed values, α·ceil(out/m) (a smaller α on ties, for accuracy), and that count."""
    best = None
    for m in range(2, MAX_ALPHA - r + 2):
        cost = (m + r - 1) * -(-out // m)
        if best is None or cost < best[1]:
            best = (m, cost)
    return best


@dataclass(frozen=True)
class Plan:
    """F(mh×mw, kh×kw) over an oh×ow output: tiles_h × tiles_w tiles."""
    kh: int
    kw: int
    mh: int
    mw: int
    oh: int
    ow: int

    @property
    def alpha_h(self) -> int:
        return self.mh + self.kh - 1

    @property
    def alpha_w(self) -> int:
        return self.mw + self.kw - 1

    @property
    def tiles_h(self) -> int:
        return -(-self.oh // self.mh)

    @property
    def tiles_w(self) -> int:
        return -(-self.ow // self.mw)

    def input_extent(self) -> tuple[int, int]:
        """Rows and columns of the padded input (from −pad) the tiles read."""
        return ((self.tiles_h - 1) * self.mh + self.alpha_h, (self.tiles_w - 1) * self.mw + self.alpha_w)


def plan(geo, groups: int, n: int) -> Plan | None:
    """The Winograd plan for a convolution of geometry `geo` (netc.layers.im2col) over
    a batch of n, or None where the direct convolution is the better (or the only)
    way: strides or dilations other than 1, kernels narrower than 2 or wider than
    MAX_ALPHA − 1, few channels per group, too few tiles, or too small a saving of
    multiplications."""
    if (geo.sh, geo.sw, geo.dh, geo.dw) != (1, 1, 1, 1) or min(geo.kh, geo.kw) < 2:
        return None
    if max(geo.kh, geo.kw) > MAX_ALPHA - 1 or geo.c // groups < _MIN_GROUP_CHANNELS:
        return None
    mh, cost_h = _tile_size(geo.kh, geo.oh)
    mw, cost_w = _tile_size(geo.kw, geo.ow)
    if cost_h * cost_w > _MAX_MAC_FRACTION * geo.kh * geo.kw * geo.oh * geo.ow:
        return None
    p = Plan(geo.kh, geo.kw, mh, mw, geo.oh, geo.ow)
    return p if p.tiles_h * p.tiles_w * n >= MIN_COLUMNS else None


@lru_cache(maxsize=None)
def _matrices(m: int, r: int, dtype: str):
    """Aᵀ, G, Bᵀ of F(m, r) as NumPy arrays of `dtype`."""
    return tuple(numpy.array([[float(v) for v in row] for row in mat], dtype=dtype) for mat in toom_cook(m, r))


def _transforms(xp, p: Plan, dtype):
    """(Aᵀ, G, Bᵀ) per axis, as xp arrays: ((at_h, g_h, bt_h), (at_w, g_w, bt_w))."""
    name = numpy.dtype(dtype).name
    return tuple(tuple(xp.asarray(a) for a in _matrices(m, r, name)) for m, r in ((p.mh, p.kh), (p.mw, p.kw)))


def _sandwich(xp, left, right, a):
    """Σ_ij left[p, i] · right[q, j] · a[i, j, ...]: a (I, J, ...) → (P, Q, ...), a new
    array, as a GEMM over the first axis and a batched one over the second."""
    i, j = a.shape[:2]
    rest = a.shape[2:]
    half = workspace(xp, (left.shape[0], j * a[0, 0].size), a.dtype, "winograd_half")
    t = xp.matmul(left, a.reshape(i, -1), out=half).reshape(left.shape[0], j, -1)
    return xp.matmul(right, t).reshape((left.shape[0], right.shape[0]) + rest)


def _weights(xp, wts, p: Plan, groups: int, tr):
    """U = G g Gᵀ for every kernel: (αh, αw, G, Co/g, C/g)."""
    (_, g_h, _), (_, g_w, _) = tr
    co, cg = wts.shape[:2]
    u = _sandwich(xp, g_h, g_w, xp.ascontiguousarray(wts.transpose(2, 3, 0, 1)))
    return u.reshape(p.alpha_h, p.alpha_w, groups, co // groups, cg)


def _transformed_input(xp, xb, p: Plan, groups: int, tr):
    """V = Bᵀ d B for every tile: (αh, αw, G, C/g, tiles·N)."""
    c, n = xb.shape[0], xb.shape[3]
    (_, _, bt_h), (_, _, bt_w) = tr
    ah, aw, th, tw = p.alpha_h, p.alpha_w, p.tiles_h, p.tiles_w
    s_c, s_h, s_w, s_n = xb.strides
    windows = as_strided(xp, xb, (ah, aw, c, th, tw, n), (s_h, s_w, s_c, p.mh * s_h, p.mw * s_w, s_n))
    d = workspace(xp, windows.shape, xb.dtype, "winograd_tiles")
    d[...] = windows
    return _sandwich(xp, bt_h, bt_w, d).reshape(ah, aw, groups, c // groups, th * tw * n)


def forward(xp, xb, wts, bias, p: Plan, groups: int):
    """y (Co, OH, OW, N), contiguous, of the input xb (C, Hb, Wb, N) zero-padded as the
    convolution pads it, up to at least p.input_extent()."""
    n = xb.shape[3]
    co = wts.shape[0]
    tr = _transforms(xp, p, xb.dtype)
    (at_h, _, _), (at_w, _, _) = tr
    ah, aw, th, tw = p.alpha_h, p.alpha_w, p.tiles_h, p.tiles_w
    v = _transformed_input(xp, xb, p, groups, tr)
    u = _weights(xp, wts, p, groups, tr)
    m = xp.matmul(u, v, out=workspace(xp, (ah, aw, groups, co // groups, v.shape[-1]), xb.dtype, "winograd_m"))
    y_tiles = _sandwich(xp, at_h, at_w, m.reshape(ah, aw, -1)).reshape(p.mh, p.mw, co, th, tw, n)
    exact = (th * p.mh, tw * p.mw) == (p.oh, p.ow)
    shape = (co, th * p.mh, tw * p.mw, n)
    y = xp.empty(shape, dtype=xb.dtype) if exact else workspace(xp, shape, xb.dtype, "winograd_y")
    source = y_tiles.transpose(2, 3, 0, 4, 1, 5)
    target = y.reshape(co, th, p.mh, tw, p.mw, n)
    if bias is None:
        target[...] = source
    else:
        xp.add(source, bias.reshape(co, 1, 1, 1, 1, 1), out=target)
    return y if exact else xp.ascontiguousarray(y[:, :p.oh, :p.ow])


def backward(xp, dy, wts, p: Plan, groups: int, xb, input_hw=None, pad=(0, 0)):
    """Gradients of `forward` for dy (Co, OH, OW, N): (dx, dW, db), transforming the
    padded input xb (as `forward` takes it) again. dx (C, H, W, N), contiguous,
    is made when input_hw = (H, W) is given (the input's size, `pad` its padding);
    db is Σ dy per output channel."""
    co, n = wts.shape[0], dy.shape[3]
    db = dy.reshape(co, -1).sum(axis=1)
    tr = _transforms(xp, p, dy.dtype)
    (at_h, g_h, bt_h), (at_w, g_w, bt_w) = tr
    ah, aw, th, tw = p.alpha_h, p.alpha_w, p.tiles_h, p.tiles_w
    v, u = _transformed_input(xp, xb, p, groups, tr), _weights(xp, wts, p, groups, tr)
    # dY: dy cut into tiles (zero beyond the output where the tiles overhang it)
    if (th * p.mh, tw * p.mw) != (p.oh, p.ow):
        padded = workspace(xp, (co, th * p.mh, tw * p.mw, n), dy.dtype, "winograd_y")
        padded[...] = 0
        padded[:, :p.oh, :p.ow] = dy
        dy = padded
    d_tiles = workspace(xp, (p.mh, p.mw, co, th, tw, n), dy.dtype, "winograd_dy")
    d_tiles.transpose(2, 3, 0, 4, 1, 5)[...] = dy.reshape(co, th, p.mh, tw, p.mw, n)
    dm = _sandwich(xp, at_h.T, at_w.T, d_tiles).reshape(ah, aw, groups, co // groups, -1)
    du = xp.matmul(dm, v.swapaxes(-1, -2))                              # (αh, αw, G, Co/g, C/g)
    cg = du.shape[-1]
    dw = _sandwich(xp, g_h.T, g_w.T, du.reshape(ah, aw, -1)).reshape(p.kh, p.kw, co, cg)
    dw = xp.ascontiguousarray(dw.transpose(2, 3, 0, 1))
    if input_hw is None:
        return None, dw, db
    dv = xp.matmul(u.swapaxes(-1, -2), dm).reshape(ah, aw, -1)          # (αh, αw, C·tiles·N)
    dd = _sandwich(xp, bt_h.T, bt_w.T, dv).reshape(ah, aw, groups * cg, th, tw, n)
    return _scatter_tiles(xp, dd, p, input_hw, pad), dw, db


def _scatter_tiles(xp, dd, p: Plan, input_hw, pad):
    """The adjoint of cutting the padded input into overlapping α×α tiles: each
    tile's values added back where they came from; (C, H, W, N) without the padding.
    Tile offset a = s·m + r (r < m), b = t·m + q: for one (s, t), the tiles' pieces do not
    overlap and fill an (m × m)-blocked view of the image, one add each."""
    ah, aw, c, th, tw, n = dd.shape
    bh, bw = -(-ah // p.mh), -(-aw // p.mw)
    rows, cols = (th + bh - 1) * p.mh, (tw + bw - 1) * p.mw
    acc = xp.empty((c, rows, cols, n), dtype=dd.dtype)
    # the first block covers every tile's top-left m×m: copied, the rest zeroed, then added to
    acc[:, th * p.mh:] = 0
    acc[:, :th * p.mh, tw * p.mw:] = 0
    blocks = acc.reshape(c, th + bh - 1, p.mh, tw + bw - 1, p.mw, n)
    for s in range(bh):
        rh = min(p.mh, ah - s * p.mh)
        for t in range(bw):
            rw = min(p.mw, aw - t * p.mw)
            piece = dd[s * p.mh:s * p.mh + rh, t * p.mw:t * p.mw + rw].transpose(2, 3, 0, 4, 1, 5)
            target = blocks[:, s:s + th, :rh, t:t + tw, :rw]
            if s == t == 0:
                target[...] = piece
            else:
                xp.add(target, piece, out=target)
    (h, w), (ph, pw) = input_hw, pad
    if (ph, pw, h, w) == (0, 0, rows, cols):
        return acc
    return xp.ascontiguousarray(acc[:, ph:ph + h, pw:pw + w])
