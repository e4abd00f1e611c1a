"""InnerProduct (fully connected): flattens from `axis` and multiplies by a [num_output, K] matrix."""
from __future__ import annotations

from netc.layers.base import LEARNABLE_PARAMS, REQUIRED, canonical_axis, count, LayerType, Param, register
from netc.layers.memory_order import batch_last, is_batch_last
from netc.runtime.scratch import aligned, workspace


@register
class InnerProduct(LayerType):
    type_name = "InnerProduct"
    summary = "fully connected layer: num_output, bias_term, axis, transpose"
    params = (
        Param("num_output", "int", REQUIRED, minimum=1),
        Param("bias_term", "bool", True),
        Param("axis", "int", 1),
        Param("transpose", "bool", False),
    ) + LEARNABLE_PARAMS
    positional = ("num_output",)
    message = "inner_product_param"
    learnable = True

    def infer(self, p, bottoms, ntops):
        axis = canonical_axis(p["axis"], bottoms[0])
        return [bottoms[0][:axis] + (p["num_output"],)]

    def backward_keeps(self, p):
        return (0,), ()     # the input, for the weight gradient

    def param_shapes(self, p, bottoms):
        k = count(bottoms[0][canonical_axis(p["axis"], bottoms[0]):])
        weight = (k, p["num_output"]) if p["transpose"] else (p["num_output"], k)
        return [weight, (p["num_output"],)] if p["bias_term"] else [weight]

    def macs(self, p, bottoms, tops):
        axis = canonical_axis(p["axis"], bottoms[0])
        return count(bottoms[0][:axis]) * count(bottoms[0][axis:]) * p["num_output"]

    def workspace_bytes(self, p, bottoms, tops, dtype_bytes, backward=False):
        # the forward's W·xᵀ, before it is laid out (transposed) as y
        return 0 if backward or p["transpose"] else aligned(count(tops[0]) * dtype_bytes)

    # --- running ------------------------------------------------------------------
    # x: the bottom as [M, K] (M = the axes before `axis`); W: [N, K] ([K, N] with transpose).
    # y = x·Wᵀ + b, computed as (W·xᵀ)ᵀ: for small batches the weight streams once, row-major.
    # ∂x = ∂y·W, ∂W = ∂yᵀ·x (transpose: xᵀ·∂y), ∂b = Σ_rows ∂y.
    # A 4-d input ordered batch-last (netc.layers.memory_order), flattened from axis 1,
    # is xᵀ as it lies in memory; its gradient is then made as ∂xᵀ = Wᵀ·∂yᵀ, in that order.

    @staticmethod
    def _matrix(x, axis: int):
        """x as the [M, K] matrix, a view where x's memory allows."""
        xt = batch_last(x) if axis == 1 else None
        if xt is not None:
            return xt.reshape(-1, x.shape[0]).T
        return x.reshape(count(x.shape[:axis]), -1)

    def forward(self, p, bottoms, weights, ctx, state):
        xp, x = ctx.xp, bottoms[0]
        axis = canonical_axis(p["axis"], x.shape)
        x2 = self._matrix(x, axis)
        w = weights[0]
        shape = x.shape[:axis] + (p["num_output"],)
        y = ctx.output(0, False)
        if y is None:
            y = xp.empty(shape, dtype=x.dtype)
        y2 = y.reshape(x2.shape[0], p["num_output"])
        if p["transpose"]:
            xp.matmul(x2, w, out=y2)
            if p["bias_term"]:
                y2 += weights[1]
        else:
            wx = xp.matmul(w, x2.T, out=workspace(xp, (w.shape[0], x2.shape[0]), x.dtype, "ip_wx"))
            xp.copyto(y2, wx.T)     # a plain copy: NumPy buffers a ufunc's strided pass
            if p["bias_term"]:
                y2 += weights[1]
        return [y]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        xp, x = ctx.xp, bottoms[0]
        axis = canonical_axis(p["axis"], x.shape)
        x2 = self._matrix(x, axis)
        dy = top_diffs[0].reshape(x2.shape[0], p["num_output"])
        w = weights[0]
        dw = xp.matmul(x2.T, dy, out=ctx.weight_diff(0)) if p["transpose"] else \
            xp.matmul(dy.T, x2, out=ctx.weight_diff(0))
        grads = [dw]
        if p["bias_term"]:
            grads.append(xp.sum(dy, axis=0, out=ctx.weight_diff(1)))
        dx = None
        if need[0] and is_batch_last(x) and axis == 1:
            place = ctx.input_diff(0, True)
            dx = xp.empty_like(x) if place is None else place       # batch-last, as x
            dxt = batch_last(dx).reshape(x2.shape[1], x2.shape[0])
            if p["transpose"]:
                xp.matmul(w, dy.T, out=dxt)
            else:
                xp.matmul(w.T, dy.T, out=dxt)
        elif need[0]:
            place = ctx.input_diff(0, False)
            dx = xp.empty(x.shape, dtype=x.dtype) if place is None else place
            dx2 = dx.reshape(x2.shape)
            if p["transpose"]:
                xp.matmul(dy, w.T, out=dx2)
            else:
                xp.matmul(dy, w, out=dx2)
        return [dx], grads
