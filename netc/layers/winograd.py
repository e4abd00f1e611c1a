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
input copied to (C, Hb, Wb, N), zero-padded so that every tile's window lies inside
it, the output and gradients (Co, OH, OW, N). Tiles are gathered as (α, α, C,
tiles_h, tiles_w, N) so that each transform is a GEMM over the two leading axes, and
the frequencies' products one batched GEMM. The intermediate arrays (tiles, their
transforms, the products) live in a few workspace buffers, each step writing into
a buffer other than the one it reads (scratch_sizes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy

from netc.layers.im2col import as_strided, padded_batch_last
from netc.layers.memory_order import to_batch_last
from netc.runtime.scratch import workspace

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


def _take(buffer, shape):
    """The start of a flat scratch buffer as an array of `shape`."""
    return buffer[:math.prod(shape)].reshape(shape)


def _sandwich(xp, left, right, a, half, out):
    """Σ_ij left[p, i] · right[q, j] · a[i, j, ...]: a (I, J, ...) → (P, Q, ...), as a
    GEMM over the first axis (its result in the flat buffer `half`) and a batched one
    over the second (in `out`). `a` may lie in `out`: it is read only by the first GEMM."""
    i, j = a.shape[:2]
    rest = a.shape[2:]
    t = xp.matmul(left, a.reshape(i, -1), out=_take(half, (left.shape[0], j * a[0, 0].size)))
    t = t.reshape(left.shape[0], j, -1)
    y = xp.matmul(right, t, out=_take(out, (left.shape[0], right.shape[0], t.shape[2])))
    return y.reshape((left.shape[0], right.shape[0]) + rest)


def _weights(xp, wts, p: Plan, groups: int, tr, u, half):
    """U = G g Gᵀ for every kernel: (αh, αw, G, Co/g, C/g), in the flat buffer u (the
    transform's half in `half`)."""
    (_, g_h, _), (_, g_w, _) = tr
    co, cg = wts.shape[:2]
    taps = _take(u, (p.kh, p.kw, co, cg))
    taps[...] = wts.transpose(2, 3, 0, 1)
    return _sandwich(xp, g_h, g_w, taps, half, u).reshape(p.alpha_h, p.alpha_w, groups, co // groups, cg)


def _transformed_input(xp, x, geo, p: Plan, groups: int, tr, first, second):
    """V = Bᵀ d B for every tile of the blob x (N, C, H, W), padded as the convolution
    `geo` pads it: (αh, αw, G, C/g, tiles·N), in the flat buffer `second`. The padded
    input and the transform's half go into `first`, the tiles d into `second`."""
    c, n = x.shape[1], x.shape[0]
    (_, _, bt_h), (_, _, bt_w) = tr
    ah, aw, th, tw = p.alpha_h, p.alpha_w, p.tiles_h, p.tiles_w
    xb = padded_batch_last(xp, x, geo, extent=p.input_extent(), buffer=first)
    s_c, s_h, s_w, s_n = xb.strides
    windows = as_strided(xp, xb, (ah, aw, c, th, tw, n), (s_h, s_w, s_c, p.mh * s_h, p.mw * s_w, s_n))
    d = _take(second, windows.shape)
    d[...] = windows
    return _sandwich(xp, bt_h, bt_w, d, first, second).reshape(ah, aw, groups, c // groups, th * tw * n)


def scratch_sizes(p: Plan, geo, co: int, groups: int, n: int, backward: bool) -> dict[str, int]:
    """Values of each scratch buffer `forward` (or `backward`) takes, by workspace slot.
    Their schedules reuse each buffer for arrays never alive at once: each step reads
    one buffer and writes another (see forward and backward)."""
    c = geo.c
    ah, aw, mh, mw = p.alpha_h, p.alpha_w, p.mh, p.mw
    columns = p.tiles_h * p.tiles_w * n
    eh, ew = p.input_extent()
    padded = c * max(geo.span_h(), geo.ph + geo.h, eh) * max(geo.span_w(), geo.pw + geo.w, ew) * n
    tiles = ah * aw * c * columns                        # d, V, their transform's half; dV, dD
    products = ah * aw * co * columns                    # M, dM
    taps = p.kh * p.kw * co * (c // groups)
    u = max(ah * aw * co * (c // groups), taps)          # U (after the taps), dU, dW
    if not backward:
        return {"winograd_a": max(padded, tiles, products, mh * mw * co * columns),
                "winograd_b": max(tiles, mh * aw * co * columns),
                "winograd_u": u, "winograd_u_half": ah * p.kw * co * (c // groups)}
    bh, bw = -(-ah // mh), -(-aw // mw)
    scattered = c * (p.tiles_h + bh - 1) * mh * (p.tiles_w + bw - 1) * mw * n
    return {"winograd_a": max(mh * mw * co * columns, products, scattered),
            "winograd_b": max(co * p.oh * p.ow * n, ah * mw * co * columns, tiles),
            "winograd_c": max(padded, tiles),
            "winograd_u": u,
            "winograd_u_half": max(ah * p.kw, p.kh * aw) * co * (c // groups)}


def _scratch(xp, p: Plan, geo, co: int, groups: int, n: int, dtype, backward: bool) -> dict:
    """The flat workspace buffers of scratch_sizes, by slot."""
    return {slot: workspace(xp, (values,), dtype, slot)
            for slot, values in scratch_sizes(p, geo, co, groups, n, backward).items()}


def _output_parts(p: Plan):
    """Per axis, the output cut along the tiles: (first tile, tiles, outputs of each),
    the full tiles, then the last one where it overhangs the output."""
    parts = []
    for m, out in ((p.mh, p.oh), (p.mw, p.ow)):
        full, rest = divmod(out, m)
        parts.append([(0, full, m)] * (full > 0) + [(full, 1, rest)] * (rest > 0))
    return parts


def _pieces(y, p: Plan):
    """(tile selection, y's view of those tiles (Co, tiles_h, m, tiles_w, m, N)) for each
    piece of the output y (Co, OH, OW, N) cut along the tiles (see _output_parts)."""
    co, n = y.shape[0], y.shape[3]
    rows, cols = _output_parts(p)
    for t0, nt, r in rows:
        for s0, ns, q in cols:
            tiles = (slice(0, r), slice(0, q), slice(None), slice(t0, t0 + nt), slice(s0, s0 + ns))
            view = y[:, t0 * p.mh:t0 * p.mh + nt * r, s0 * p.mw:s0 * p.mw + ns * q]
            yield tiles, view.reshape(co, nt, r, ns, q, n)      # splitting axes: a view, never a copy


def forward(xp, x, wts, bias, p: Plan, geo, groups: int, out=None):
    """y (Co, OH, OW, N) of the blob x (N, C, H, W) (either memory order, padded as
    the convolution `geo` pads it), written into `out` (contiguous) or a new array."""
    n = x.shape[0]
    co = wts.shape[0]
    tr = _transforms(xp, p, x.dtype)
    (at_h, _, _), (at_w, _, _) = tr
    ah, aw, th, tw = p.alpha_h, p.alpha_w, p.tiles_h, p.tiles_w
    # buffer a: the padded input, V's half, M, the output's tiles; b: d, V, the tiles' half
    s = _scratch(xp, p, geo, co, groups, n, x.dtype, backward=False)
    a, b = s["winograd_a"], s["winograd_b"]
    v = _transformed_input(xp, x, geo, p, groups, tr, a, b)
    u = _weights(xp, wts, p, groups, tr, s["winograd_u"], s["winograd_u_half"])
    m = xp.matmul(u, v, out=_take(a, (ah, aw, groups, co // groups, v.shape[-1])))
    y_tiles = _sandwich(xp, at_h, at_w, m.reshape(ah, aw, -1), b, a).reshape(p.mh, p.mw, co, th, tw, n)
    y = xp.empty((co, p.oh, p.ow, n), dtype=x.dtype) if out is None else out
    # the tiles where the output has them (the last ones may overhang it), the bias on the way
    for tiles, target in _pieces(y, p):
        source = y_tiles[tiles].transpose(2, 3, 0, 4, 1, 5)
        if bias is None:
            target[...] = source
        else:
            xp.add(source, bias.reshape(co, 1, 1, 1, 1, 1), out=target)
    return y


def backward(xp, x, dy, wts, p: Plan, geo, groups: int, need_dx: bool = True, dx_out=None, dw_out=None,
             db_out=None):
    """Gradients of `forward` for the blob dy (N, Co, OH, OW) (either memory order):
    (dx, dW, db), transforming the input x again. dx (C, H, W, N), contiguous, is made
    where need_dx; db is Σ dy per output channel. Each is written into its `_out` where
    given (dx_out contiguous (C, H, W, N)), else a new array."""
    co, n = wts.shape[0], x.shape[0]
    tr = _transforms(xp, p, dy.dtype)
    (at_h, g_h, bt_h), (at_w, g_w, bt_w) = tr
    ah, aw, th, tw = p.alpha_h, p.alpha_w, p.tiles_h, p.tiles_w
    # buffer a: dY, dM, the scattered dD; b: dy batch-last, dM's half, d, V, dV, dD;
    # c: the padded input, V's half, dD's half; u: dU, dW, then U
    s = _scratch(xp, p, geo, co, groups, n, dy.dtype, backward=True)
    a, b, c, u, u_half = (s[k] for k in ("winograd_a", "winograd_b", "winograd_c", "winograd_u",
                                         "winograd_u_half"))
    dy_t = to_batch_last(xp, dy, out=_take(b, (co, p.oh, p.ow, n)))
    db = dy_t.reshape(co, -1).sum(axis=1, out=db_out)
    # dY: dy cut into tiles, zero where the last ones overhang the output
    d_tiles = _take(a, (p.mh, p.mw, co, th, tw, n))
    if p.oh % p.mh:
        d_tiles[p.oh % p.mh:, :, :, th - 1] = 0
    if p.ow % p.mw:
        d_tiles[:, p.ow % p.mw:, :, :, tw - 1] = 0
    for tiles, source in _pieces(dy_t, p):
        d_tiles[tiles].transpose(2, 3, 0, 4, 1, 5)[...] = source
    dm = _sandwich(xp, at_h.T, at_w.T, d_tiles, b, a).reshape(ah, aw, groups, co // groups, -1)
    v = _transformed_input(xp, x, geo, p, groups, tr, c, b)
    cg = v.shape[3]
    du = xp.matmul(dm, v.swapaxes(-1, -2), out=_take(u, (ah, aw, groups, co // groups, cg)))
    dw = _sandwich(xp, g_h.T, g_w.T, du.reshape(ah, aw, -1), u_half, u).reshape(p.kh, p.kw, co, cg)
    if dw_out is None:
        dw_out = xp.empty((co, cg, p.kh, p.kw), dtype=dy.dtype)
    dw_out[...] = dw.transpose(2, 3, 0, 1)
    if not need_dx:
        return None, dw_out, db
    w_t = _weights(xp, wts, p, groups, tr, u, u_half)
    dv = xp.matmul(w_t.swapaxes(-1, -2), dm, out=_take(b, (ah, aw, groups, cg, dm.shape[-1])))
    dd = _sandwich(xp, bt_h.T, bt_w.T, dv.reshape(ah, aw, -1), c, b).reshape(ah, aw, groups * cg, th, tw, n)
    return _scatter_tiles(xp, dd, p, (x.shape[2], x.shape[3]), (geo.ph, geo.pw), out=dx_out, scratch=a), dw_out, db


def _scatter_tiles(xp, dd, p: Plan, input_hw, pad, out=None, scratch=None):
    """The adjoint of cutting the padded input into overlapping α×α tiles: each
    tile's values added back where they came from; (C, H, W, N) without the padding,
    in `out` or a new array. The padded sum is `out` itself where there is no padding,
    else the start of the flat buffer `scratch` (or a workspace).
    Tile offset a = s·m + r (r < m), b = t·m + q: for one (s, t), the tiles' pieces do not
    overlap and fill an (m × m)-blocked view of the image, one add each."""
    ah, aw, c, th, tw, n = dd.shape
    bh, bw = -(-ah // p.mh), -(-aw // p.mw)
    rows, cols = (th + bh - 1) * p.mh, (tw + bw - 1) * p.mw
    (h, w), (ph, pw) = input_hw, pad
    if out is None:
        out = xp.empty((c, h, w, n), dtype=dd.dtype)
    if (ph, pw, h, w) == (0, 0, rows, cols):
        acc = out
    elif scratch is None:
        acc = workspace(xp, (c, rows, cols, n), dd.dtype, "winograd_a")
    else:
        acc = _take(scratch, (c, rows, cols, n))
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
    if acc is not out:
        out[...] = acc[:, ph:ph + h, pw:pw + w]
    return out
