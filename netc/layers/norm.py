"""BatchNorm (Caffe's: statistics only; γ and β live in a following Scale) and Scale.

BatchNorm keeps three blobs: mean sum [C], variance sum [C], factor s [1]; test uses blob/s.
Scale: y = x·γ (+ β) with γ broadcast over axes axis..axis+num_axes, or γ from a second bottom.
"""
from __future__ import annotations

from netc.ir import Filler
from netc.layers.base import LayerType, Param, ParamError, ShapeError, count, register


@register
class BatchNorm(LayerType):
    type_name = "BatchNorm"
    summary = "batch normalisation statistics (follow it with Scale(bias_term=true) for γ, β)"
    params = (
        Param("use_global_stats", "bool", None),
        Param("moving_average_fraction", "float", 0.999, minimum=0),
        Param("eps", "float", 1e-5, minimum=0),
    )
    message = "batch_norm_param"
    can_be_in_place = True
    learnable = True   # its blobs are state, updated by the layer itself (Caffe sets lr_mult 0)

    def may_run_in_place(self, p):
        return True

    def backward_keeps(self, p):
        return (), ()

    def kept_bytes(self, p, bottoms, tops, dtype_bytes, train):
        # the normalised output y as its own copy (as Caffe's x_norm_ in place), so that
        # a Scale that runs in place after it does not change what the backward reads
        return count(bottoms[0]) * dtype_bytes if train else 0

    def infer(self, p, bottoms, ntops):
        if len(bottoms[0]) < 2:
            raise ShapeError(f"BatchNorm needs a channel axis, got shape {list(bottoms[0])}", bottom=0)
        return [bottoms[0]]

    def param_shapes(self, p, bottoms):
        c = bottoms[0][1]
        return [(c,), (c,), (1,)]

    # Statistics per channel over N and the spatial axes (m values each).
    # train (use_global_stats false): y = (x − μ)/√(σ² + eps) with the batch's μ and biased σ²,
    #   and the blobs are updated IN PLACE (the one exception to "never modify inputs"):
    #   s ← λs + 1, mean ← λ·mean + μ, var ← λ·var + m/(m − 1)·σ².
    # global: μ = blob0/s, σ² = blob1/s (both 0 when s = 0).
    # backward: global ∂x = ∂y/√(σ² + eps); batch ∂x = (∂y − mean(∂y) − mean(∂y·y)·y)/√(σ² + eps).
    @staticmethod
    def _use_global(p, ctx) -> bool:
        return (not ctx.train) if p["use_global_stats"] is None else p["use_global_stats"]

    def forward(self, p, bottoms, weights, ctx, state):
        xp = ctx.xp
        x = bottoms[0]
        dt = x.dtype.type
        c = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, c) + (1,) * (x.ndim - 2)
        mean_blob, var_blob, factor = weights
        use_global = self._use_global(p, ctx)
        if use_global:
            s = factor.reshape(())
            scale = xp.where(s == 0, dt(0), dt(1) / xp.where(s == 0, dt(1), s)).astype(x.dtype)
            mean = (mean_blob * scale).astype(x.dtype)
            var = (var_blob * scale).astype(x.dtype)
            centred = x - mean.reshape(bshape)
        else:
            m = x.size // c
            mean = x.mean(axis=axes)
            centred = x - mean.reshape(bshape)
            var = (centred * centred).mean(axis=axes)
            lam = dt(p["moving_average_fraction"])
            correction = dt(m / (m - 1)) if m > 1 else dt(1)
            factor[...] = factor * lam + dt(1)
            mean_blob[...] = mean + lam * mean_blob
            var_blob[...] = correction * var + lam * var_blob
        std = xp.sqrt(var + dt(p["eps"])).reshape(bshape)
        y = centred / std
        state.update(use_global=use_global, std=std, y=y, axes=axes)
        return [y]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        none = [None] * len(weights)
        if not need[0]:
            return [None], none
        dy, std = top_diffs[0], state["std"]
        if state["use_global"]:
            return [dy / std], none
        y, axes = state["y"], state["axes"]
        dx = dy - dy.mean(axis=axes, keepdims=True) - (dy * y).mean(axis=axes, keepdims=True) * y
        return [dx / std], none


@register
class Scale(LayerType):
    type_name = "Scale"
    summary = "per-channel scale γ (and bias β with bias_term=true)"
    params = (
        Param("axis", "int", 1),
        Param("num_axes", "int", 1),
        Param("filler", "filler", Filler("constant", value=1.0), aliases=("weight_filler", "weight")),
        Param("bias_term", "bool", False),
        Param("bias_filler", "filler", Filler(), aliases=("bias",)),
    )
    message = "scale_param"
    min_bottoms, max_bottoms = 1, 2
    can_be_in_place = True
    learnable = True

    # elementwise, but ∂γ = Σ ∂y·x reads the input: in place only where no backward runs
    def may_run_in_place(self, p):
        return True

    def backward_keeps(self, p):
        return (0, 1), ()

    def normalize(self, p):
        if p["num_axes"] < -1:
            raise ParamError("num_axes must be -1 or more", param="num_axes")
        return p

    def _scale_shape(self, p, bottoms):
        shape = bottoms[0]
        axis = p["axis"] + len(shape) if p["axis"] < 0 else p["axis"]
        if len(bottoms) == 2:
            other = bottoms[1]
            if shape[axis:axis + len(other)] != other:
                raise ShapeError(f"the scale {list(other)} does not match {list(shape)} from axis {axis}",
                                 bottom=1)
            return other
        end = len(shape) if p["num_axes"] == -1 else axis + p["num_axes"]
        if not 0 <= axis <= len(shape) or end > len(shape):
            raise ShapeError(f"axis {p['axis']} with num_axes {p['num_axes']} does not fit {list(shape)}",
                             param="axis")
        return shape[axis:end]

    def infer(self, p, bottoms, ntops):
        self._scale_shape(p, bottoms)
        return [bottoms[0]]

    def param_shapes(self, p, bottoms):
        shape = self._scale_shape(p, bottoms)
        shapes = [] if len(bottoms) == 2 else [shape]
        if p["bias_term"]:
            shapes.append(shape)
        return shapes

    # y = x·γ (+ β), γ (and β) broadcast over the axes outside axis..axis+len(γ.shape).
    # ∂x = ∂y·γ, ∂γ = Σ ∂y·x and ∂β = Σ ∂y over those other axes. With two bottoms γ is
    # bottom 1 (and gets its gradient there) and β, if any, is the layer's only blob.
    @staticmethod
    def _layout(p, x, gamma):
        axis = p["axis"] + x.ndim if p["axis"] < 0 else p["axis"]
        k = gamma.ndim
        bshape = (1,) * axis + tuple(gamma.shape) + (1,) * (x.ndim - axis - k)
        others = tuple(range(axis)) + tuple(range(axis + k, x.ndim))
        return bshape, others

    def forward(self, p, bottoms, weights, ctx, state):
        x = bottoms[0]
        gamma = bottoms[1] if len(bottoms) == 2 else weights[0]
        bshape, _ = self._layout(p, x, gamma)
        y = x * gamma.reshape(bshape)
        if p["bias_term"]:
            y = y + weights[-1].reshape(bshape)
        return [y]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        x, dy = bottoms[0], top_diffs[0]
        two = len(bottoms) == 2
        gamma = bottoms[1] if two else weights[0]
        bshape, others = self._layout(p, x, gamma)
        dx = dy * gamma.reshape(bshape) if need[0] else None
        dgamma = None
        if not two or need[1]:
            dgamma = (dy * x).sum(axis=others).reshape(gamma.shape)
        dbeta = dy.sum(axis=others).reshape(gamma.shape) if p["bias_term"] else None
        if two:
            return [dx, dgamma], ([dbeta] if p["bias_term"] else [])
        return [dx], [dgamma] + ([dbeta] if p["bias_term"] else [])
