"""InnerProduct (fully connected): flattens from `axis` and multiplies by a [num_output, K] matrix."""
from __future__ import annotations

from netc.layers.base import LEARNABLE_PARAMS, REQUIRED, canonical_axis, count, LayerType, Param, register
from netc.layers.memory_order import as_blob, batch_last, is_batch_last


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
        x = bottoms[0]
        axis = canonical_axis(p["axis"], x.shape)
        x2 = self._matrix(x, axis)
        w = weights[0]
        y = x2 @ w if p["transpose"] else (w @ x2.T).T
        if p["bias_term"]:
            y = y + weights[1]
        return [ctx.xp.ascontiguousarray(y).reshape(x.shape[:axis] + (p["num_output"],))]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        x = bottoms[0]
        axis = canonical_axis(p["axis"], x.shape)
        x2 = self._matrix(x, axis)
        dy = top_diffs[0].reshape(x2.shape[0], p["num_output"])
        w = weights[0]
        dw = x2.T @ dy if p["transpose"] else dy.T @ x2
        grads = [dw]
        if p["bias_term"]:
            grads.append(dy.sum(axis=0))
        dx = None
        if need[0] and is_batch_last(x) and axis == 1:
            dxt = w @ dy.T if p["transpose"] else w.T @ dy.T
            dx = as_blob(dxt.reshape(x.shape[1:] + x.shape[:1]))
        elif need[0]:
            dx = (dy @ w.T if p["transpose"] else dy @ w).reshape(x.shape)
        return [dx], grads
