"""Local response normalisation (AlexNet), Caffe's two regions.

ACROSS_CHANNELS: y = x · (k + α/n · Σ x²)^(−β), the sum over the n channels centred on c (zero outside).
WITHIN_CHANNEL:  y = x · (1 + α/n² · Σ x²)^(−β), the sum over the n×n spatial window (zero-padded).

Running. Window sums are shifted adds (n − 1 array additions per axis; no cumulative
sums, whose cancellation loses accuracy). Backward, with s the scale and the window
symmetric (Caffe's formula for ACROSS_CHANNELS; the same derivation for WITHIN):
    dx = dy · s^(−β) − (2αβ/m) · x · Σ_window (dy · y / s),   m = n (ACROSS) or n² (WITHIN).
Caffe reads α, β and k into float32 fields (1e-4 becomes 9.99999974737875e-05); netc
rounds them the same way before computing, in float64 too.
"""
from __future__ import annotations

import numpy as np

from netc.layers.base import LayerType, Param, ParamError, ShapeError, count, register
from netc.layers.memory_order import is_batch_last


def _window_sum(xp, a, axis: int, n: int):
    """Σ over the n entries centred on each index along `axis`, zero outside. A new array."""
    out = a.copy(order="K")   # in a's memory order (netc.layers.memory_order)
    size = a.shape[axis]
    for d in range(1, min((n - 1) // 2, size - 1) + 1):
        hi = [slice(None)] * a.ndim
        lo = [slice(None)] * a.ndim
        hi[axis], lo[axis] = slice(d, None), slice(None, -d)
        out[tuple(hi)] += a[tuple(lo)]
        out[tuple(lo)] += a[tuple(hi)]
    return out


def _caffe_float(value: float) -> float:
    return float(np.float32(value))


def _power(xp, s, beta: float, scratch):
    """s^β, a new array; β = 0.75 (AlexNet's) as √s·√√s, much faster than pow.
    scratch: an array of s's shape that may be overwritten."""
    if beta == 0.75:
        t = xp.sqrt(s)
        t *= xp.sqrt(t, out=scratch)
        return t
    return xp.power(s, s.dtype.type(beta))


@register
class LRN(LayerType):
    type_name = "LRN"
    summary = "local response normalisation: local_size, alpha, beta, k, norm_region"
    params = (
        Param("local_size", "int", 5, minimum=1, aliases=("size",)),
        Param("alpha", "float", 1.0, minimum=0),
        Param("beta", "float", 0.75),
        Param("norm_region", "enum", "ACROSS_CHANNELS", choices=("ACROSS_CHANNELS", "WITHIN_CHANNEL"),
              aliases=("region",)),
        Param("k", "float", 1.0),
    )
    message = "lrn_param"

    def normalize(self, p):
        if p["local_size"] % 2 == 0:
            raise ParamError(f"local_size must be odd (Caffe centres the window), not {p['local_size']}",
                             param="local_size")
        return p

    def infer(self, p, bottoms, ntops):
        if len(bottoms[0]) != 4:
            raise ShapeError(f"LRN needs a 4-d input (N, C, H, W), got {list(bottoms[0])}", bottom=0)
        return [bottoms[0]]

    # --- memory -----------------------------------------------------------------------
    def kept_bytes(self, p, bottoms, tops, dtype_bytes, train):
        return 2 * count(bottoms[0]) * dtype_bytes      # scale and scale^β

    def workspace_bytes(self, p, bottoms, tops, dtype_bytes, backward=False):
        return count(bottoms[0]) * dtype_bytes * (2 if backward else 1)   # x² (dy·y/scale and its window sum)

    # --- running --------------------------------------------------------------------
    @staticmethod
    def _constants(p):
        n = p["local_size"]
        alpha, beta, k = (_caffe_float(p[name]) for name in ("alpha", "beta", "k"))
        if p["norm_region"] == "ACROSS_CHANNELS":
            return n, n, alpha, beta, k
        # Caffe builds WITHIN_CHANNEL from layers: x² → Pooling(AVE, kernel n, stride 1,
        # pad (n−1)/2) → Power(shift 1, scale α, power −β) → × x. With stride 1 and that
        # pad every window ends by H + pad, so its AVE divisor is always the full n², the
        # padded zeros counted: s = 1 + α/n² · Σ x² exactly, and k is not used.
        return n, n * n, alpha, beta, 1.0

    def _window(self, xp, a, p, n):
        if p["norm_region"] == "ACROSS_CHANNELS":
            return _window_sum(xp, a, 1, n)
        return _window_sum(xp, _window_sum(xp, a, 3, n), 2, n)

    def forward(self, p, bottoms, weights, ctx, state):
        xp, x = ctx.xp, bottoms[0]
        if ctx.backend.kernels is not None:       # kernels/lrn.cu (netc.runtime.cuda_kernels)
            from netc.runtime import cuda_kernels
            y, state["kernel_scale"] = cuda_kernels.lrn_forward(x, p, launcher=ctx.backend.kernels)
            return [y]
        n, m, alpha, beta, k = self._constants(p)
        one = x.dtype.type
        sq = x * x
        scale = self._window(xp, sq, p, n)
        scale *= one(alpha / m)
        scale += one(k)
        powered = _power(xp, scale, beta, sq)    # scale^β; y = x·scale^(−β)
        state["scale"], state["powered"] = scale, powered
        return [xp.divide(x, powered, out=ctx.output(0, is_batch_last(x)))]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        if not need[0]:
            return [None], []
        xp, x, y, dy = ctx.xp, bottoms[0], tops[0], top_diffs[0]
        if ctx.backend.kernels is not None:
            from netc.runtime import cuda_kernels
            scale = state.get("kernel_scale")
            if scale is None:
                y, scale = cuda_kernels.lrn_forward(x, p, launcher=ctx.backend.kernels)
            return [cuda_kernels.lrn_backward(x, y, scale, dy, p, launcher=ctx.backend.kernels)], []
        n, m, alpha, beta, k = self._constants(p)
        scale, powered = state.get("scale"), state.get("powered")
        if scale is None:
            self.forward(p, bottoms, weights, ctx, state)
            scale, powered = state["scale"], state["powered"]
        ratio = dy * y
        ratio /= scale
        acc = self._window(xp, ratio, p, n)
        acc *= x
        acc *= x.dtype.type(2 * alpha * beta / m)
        dx = xp.divide(dy, powered, out=ctx.input_diff(0, is_batch_last(x)))
        dx -= acc
        return [dx], []
