"""Elementwise activations and Dropout: the output has the input's shape.

ReLU y = max(x, 0) + negative_slope·min(x, 0); Sigmoid y = 1/(1+e^−x); TanH y = tanh x;
Dropout (inverted, as Caffe): train y = x·mask/(1 − ratio), test y = x.
"""
from __future__ import annotations

from netc.layers.base import LayerType, Param, ParamError, count, register
from netc.layers.memory_order import is_batch_last


class _Elementwise(LayerType):
    can_be_in_place = True

    def infer(self, p, bottoms, ntops):
        return [bottoms[0]]

    # Sigmoid's and TanH's derivatives are functions of the output (y(1 − y), 1 − y²):
    # the input may be overwritten.
    def may_run_in_place(self, p):
        return True

    def backward_keeps(self, p):
        return (), (0,)


@register
class ReLU(_Elementwise):
    type_name = "ReLU"
    summary = "rectifier; negative_slope gives a leaky ReLU"
    params = (Param("negative_slope", "float", 0.0),)
    positional = ("negative_slope",)
    message = "relu_param"

    # With slope ≥ 0, x > 0 exactly where y > 0: the backward can read the output,
    # so the input's buffer is free to take it. A negative slope flips the sign.
    def may_run_in_place(self, p):
        return p["negative_slope"] >= 0

    def backward_keeps(self, p):
        return ((), (0,)) if p["negative_slope"] >= 0 else ((0,), ())

    def preserves_sign(self, p):
        return p["negative_slope"] >= 0

    # y = x if x > 0 else slope·x;  ∂y/∂x = 1 if x > 0 else slope (Caffe: dy·[x > 0] + slope·dy·[x ≤ 0])
    def forward(self, p, bottoms, weights, ctx, state):
        x = bottoms[0]
        slope = p["negative_slope"]
        if slope == 0:
            return [ctx.xp.maximum(x, 0, out=ctx.output(0, is_batch_last(x)))]
        return [ctx.xp.where(x > 0, x, x * x.dtype.type(slope))]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        if not need[0]:
            return [None], []
        dy, slope = top_diffs[0], p["negative_slope"]
        # with slope ≥ 0 the output, as backward_keeps says: y > 0 exactly where x > 0
        z = tops[0] if slope >= 0 else bottoms[0]
        if slope == 0:
            return [ctx.xp.multiply(dy, z > 0, out=ctx.input_diff(0, is_batch_last(z)))], []
        return [ctx.xp.where(z > 0, dy, dy * dy.dtype.type(slope))], []


@register
class Sigmoid(_Elementwise):
    type_name = "Sigmoid"
    summary = "logistic function"

    # Caffe: y = 0.5·tanh(0.5·x) + 0.5 (the logistic function, without overflow);  ∂y/∂x = y(1 − y)
    def forward(self, p, bottoms, weights, ctx, state):
        x = bottoms[0]
        half = x.dtype.type(0.5)
        return [ctx.xp.tanh(x * half) * half + half]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        if not need[0]:
            return [None], []
        y, dy = tops[0], top_diffs[0]
        return [dy * y * (y.dtype.type(1) - y)], []


@register
class TanH(_Elementwise):
    type_name = "TanH"
    summary = "hyperbolic tangent"

    # y = tanh x;  ∂y/∂x = 1 − y²
    def forward(self, p, bottoms, weights, ctx, state):
        return [ctx.xp.tanh(bottoms[0])]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        if not need[0]:
            return [None], []
        y, dy = tops[0], top_diffs[0]
        return [dy * (y.dtype.type(1) - y * y)], []


@register
class Dropout(_Elementwise):
    type_name = "Dropout"
    summary = "inverted dropout: dropout_ratio of units zeroed in training"
    params = (Param("dropout_ratio", "float", 0.5, aliases=("ratio",)),)
    positional = ("dropout_ratio",)
    message = "dropout_param"

    def normalize(self, p):
        if not 0.0 < p["dropout_ratio"] < 1.0:
            raise ParamError(f"dropout_ratio must be between 0 and 1 (exclusive), not {p['dropout_ratio']:g}",
                             param="dropout_ratio")
        return p

    def backward_keeps(self, p):
        return (), ()

    def preserves_sign(self, p):
        return True

    def kept_bytes(self, p, bottoms, tops, dtype_bytes, train):
        return count(bottoms[0]) * dtype_bytes if train else 0     # the scaled mask; testing is the identity

    # train: keep each unit with probability 1 − ratio and scale it by 1/(1 − ratio);
    # test: the identity. state["mask"] holds mask/(1 − ratio) (0 or the scale) for backward.
    def forward(self, p, bottoms, weights, ctx, state):
        x = bottoms[0]
        if not ctx.train:
            state["mask"] = None
            return [x]
        xp, ratio = ctx.xp, p["dropout_ratio"]
        keep = xp.asarray(ctx.rng.random(x.shape) >= ratio)       # Bernoulli(1 − ratio)
        mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - ratio))
        state["mask"] = mask
        return [xp.multiply(x, mask, out=ctx.output(0, is_batch_last(x)))]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        if not need[0]:
            return [None], []
        mask, dy = state.get("mask"), top_diffs[0]
        if mask is None:
            return [dy], []
        return [ctx.xp.multiply(dy, mask, out=ctx.input_diff(0, is_batch_last(dy)))], []
