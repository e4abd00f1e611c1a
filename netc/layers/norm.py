"""BatchNorm (Caffe's: statistics only; γ and β live in a following Scale) and Scale.

BatchNorm keeps three blobs: mean sum [C], variance sum [C], factor s [1]; test uses blob/s.
Scale: y = x·γ (+ β) with γ broadcast over axes axis..axis+num_axes, or γ from a second bottom.

Running. Results go straight into the executor's places (ctx.output, ctx.input_diff),
which both layers may share with their input (in place): a pass reads an element
before writing it, and a sum over the input (or its gradient) is taken before the
pass that overwrites it. Products summed go to workspace() scratch ordered as NumPy
orders the product, so that the sums add in the same order.
"""
from __future__ import annotations

from netc.ir import Filler
from netc.layers.base import LayerType, Param, ParamError, ShapeError, count, register
from netc.layers.memory_order import (elementwise_order, in_place_diff, input_diff_like, kept_like,
                                      output_like, workspace_like)
from netc.runtime.scratch import aligned


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
        # with the batch's statistics, the normalised output y as its own copy (as Caffe's
        # x_norm_ in place), so that a Scale that runs in place after it does not change
        # what the backward reads; during the forward it holds (x − μ)². For the backward
        # also √(σ² + eps), one per channel.
        y = aligned(count(bottoms[0]) * dtype_bytes) if self._batch_statistics(p, train) else 0
        return y + (aligned(bottoms[0][1] * dtype_bytes) if train else 0)

    def workspace_bytes(self, p, bottoms, tops, dtype_bytes, backward=False):
        # the backward's ∂y·y, with the batch's statistics (training's)
        batch = backward and p["use_global_stats"] is not True
        return aligned(count(bottoms[0]) * dtype_bytes) if batch else 0

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

    @staticmethod
    def _batch_statistics(p, train: bool) -> bool:
        """Whether the forward normalises by the batch's statistics (not _use_global) in a
        net whose backward runs where `train`, as a training net's does."""
        return p["use_global_stats"] is False or (p["use_global_stats"] is None and train)

    def forward(self, p, bottoms, weights, ctx, state):
        xp = ctx.xp
        x = bottoms[0]
        dt = x.dtype.type
        c = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, c) + (1,) * (x.ndim - 2)
        mean_blob, var_blob, factor = weights
        use_global = self._use_global(p, ctx)
        y = output_like(ctx, x)         # may be x's memory: x is read only up to its centring
        if use_global:
            s = factor.reshape(())
            scale = xp.where(s == 0, dt(0), dt(1) / xp.where(s == 0, dt(1), s)).astype(x.dtype)
            mean = (mean_blob * scale).astype(x.dtype)
            var = (var_blob * scale).astype(x.dtype)
            centred = xp.subtract(x, mean.reshape(bshape), out=y)
        else:
            m = x.size // c
            mean = x.mean(axis=axes)
            centred = xp.subtract(x, mean.reshape(bshape), out=y)
            # (x − μ)² in the room of the copy of y kept for the backward, ordered as x
            squares = xp.multiply(centred, centred, out=kept_like(ctx, x, "y"))
            var = squares.mean(axis=axes)
            lam = dt(p["moving_average_fraction"])
            correction = dt(m / (m - 1)) if m > 1 else dt(1)
            factor[...] = factor * lam + dt(1)
            mean_blob[...] = mean + lam * mean_blob
            var_blob[...] = correction * var + lam * var_blob
        std = xp.sqrt(var + dt(p["eps"])).reshape(bshape)
        centred /= std
        kept_y = None
        if not use_global:
            kept_y = squares
            xp.copyto(kept_y, y)
        state.update(use_global=use_global, std=std, y=kept_y, axes=axes)
        return [y]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        none = [None] * len(weights)
        if not need[0]:
            return [None], none
        xp, dy, std = ctx.xp, top_diffs[0], state["std"]
        if state["use_global"]:
            return [xp.divide(dy, std, out=input_diff_like(ctx, dy))], none
        y, axes = state["y"], state["axes"]
        order = elementwise_order(dy, y)
        dx = in_place_diff(ctx, dy, order)      # may be dy's memory: what reads dy comes first
        mean_dy = dy.mean(axis=axes, keepdims=True)
        dy_y = xp.multiply(dy, y, out=workspace_like(xp, dy, "batchnorm_dy_y", batch_last=order))
        along_y = xp.multiply(dy_y.mean(axis=axes, keepdims=True), y, out=dy_y)
        xp.subtract(dy, mean_dy, out=dx)
        dx -= along_y       # ∂y − mean(∂y) − mean(∂y·y)·y
        dx /= std
        return [dx], none


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

    def workspace_bytes(self, p, bottoms, tops, dtype_bytes, backward=False):
        return aligned(count(bottoms[0]) * dtype_bytes) if backward else 0     # ∂y·x, for ∂γ

    def forward(self, p, bottoms, weights, ctx, state):
        xp, x = ctx.xp, bottoms[0]
        gamma = bottoms[1] if len(bottoms) == 2 else weights[0]
        bshape, _ = self._layout(p, x, gamma)
        y = xp.multiply(x, gamma.reshape(bshape), out=output_like(ctx, x))
        if p["bias_term"]:
            y += weights[-1].reshape(bshape)
        return [y]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        xp, x, dy = ctx.xp, bottoms[0], top_diffs[0]
        two = len(bottoms) == 2
        gamma = bottoms[1] if two else weights[0]
        bshape, others = self._layout(p, x, gamma)
        # the sums over dy first: ∂x may be written over dy (in place)
        dgamma = None
        if not two or need[1]:
            order = elementwise_order(dy, x)
            dy_x = xp.multiply(dy, x, out=workspace_like(xp, dy, "scale_dy_x", batch_last=order))
            dgamma = dy_x.sum(axis=others).reshape(gamma.shape)
        dbeta = dy.sum(axis=others).reshape(gamma.shape) if p["bias_term"] else None
        dx = xp.multiply(dy, gamma.reshape(bshape), out=input_diff_like(ctx, dy)) if need[0] else None
        if two:
            return [dx, dgamma], ([dbeta] if p["bias_term"] else [])
        return [dx], [dgamma] + ([dbeta] if p["bias_term"] else [])
