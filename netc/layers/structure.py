"""Layers that move data without arithmetic on it (and Eltwise, which combines equal shapes):
Concat, Slice, Split, Flatten, Reshape, Eltwise.

Running. What a layer makes goes straight into the executor's places (ctx.output,
ctx.input_diff); what it passes on unchanged is returned as a view of its input, which
the executor places with a plain copy where it must. Partial results (Eltwise's
scaled terms and products, its masks) live in workspace() scratch.
"""
from __future__ import annotations

from netc.layers.base import canonical_axis, count, LayerType, Param, ParamError, register, ShapeError
from netc.layers.memory_order import (as_blob, batch_last, elementwise_order, input_diff_like, is_batch_last,
                                      kept_like, output_like, to_batch_last, workspace_like)
from netc.runtime.scratch import aligned


@register
class Concat(LayerType):
    type_name = "Concat"
    summary = "joins its bottoms along axis (default 1, the channels)"
    params = (Param("axis", "int", 1), Param("concat_dim", "int", None))
    message = "concat_param"
    max_bottoms = None

    def backward_keeps(self, p):
        return (), ()       # the backward needs only the shapes

    def normalize(self, p):
        if p["concat_dim"] is not None:   # Caffe's legacy spelling of axis
            p["axis"] = p["concat_dim"]
        return p

    def infer(self, p, bottoms, ntops):
        first = bottoms[0]
        axis = canonical_axis(p["axis"], first)
        total = first[axis]
        for i, shape in enumerate(bottoms[1:], start=1):
            if len(shape) != len(first):
                raise ShapeError(f"Concat input {i + 1} has {len(shape)} axes, input 1 has {len(first)} "
                                 f"({list(shape)} vs {list(first)})", bottom=i)
            for d, (a, b) in enumerate(zip(first, shape)):
                if d != axis and a != b:
                    what = {0: "batch", 1: "channel", 2: "height", 3: "width"}.get(d, f"axis-{d}")
                    raise ShapeError(
                        f"Concat along axis {axis}: input {i + 1} has {what} {b} but input 1 has {a} "
                        f"({list(shape)} vs {list(first)})",
                        "all inputs must agree on every axis except the one joined", bottom=i)
            total += shape[axis]
        return [first[:axis] + (total,) + first[axis + 1:]]

    def forward(self, p, bottoms, weights, ctx, state):
        xp = ctx.xp
        axis = canonical_axis(p["axis"], bottoms[0].shape)
        if axis == 1 and any(is_batch_last(b) for b in bottoms):
            # channels are the outer axis of batch-last memory: each input is one block
            # (netc.layers.memory_order); an input in the other order is transposed into its block
            out = ctx.output(0, True)
            if out is None:
                return [as_blob(xp.concatenate([to_batch_last(xp, b) for b in bottoms], axis=0))]
            target, start = batch_last(out), 0
            for b in bottoms:
                ordered = batch_last(b)
                block = target[start:start + b.shape[1]]
                xp.copyto(block, ordered if ordered is not None else b.transpose(1, 2, 3, 0))
                start += b.shape[1]
            return [out]
        return [xp.concatenate(bottoms, axis=axis, out=ctx.output(0, False))]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        axis = canonical_axis(p["axis"], bottoms[0].shape)
        dy, out, start = top_diffs[0], [], 0
        for b, wanted in zip(bottoms, need):
            size = b.shape[axis]
            if wanted:
                index = (slice(None),) * axis + (slice(start, start + size),)
                out.append(dy[index])
            else:
                out.append(None)
            start += size
        return out, []


@register
class Slice(LayerType):
    type_name = "Slice"
    summary = "cuts its bottom along axis at slice_point into several tops"
    params = (Param("axis", "int", 1), Param("slice_point", "ints", ()), Param("slice_dim", "int", None))
    message = "slice_param"
    num_tops = (1, None)

    def normalize(self, p):
        if p["slice_dim"] is not None:
            p["axis"] = p["slice_dim"]
        return p

    def backward_keeps(self, p):
        return (), ()       # the backward needs only the shapes

    def infer(self, p, bottoms, ntops):
        shape = bottoms[0]
        axis = canonical_axis(p["axis"], shape)
        size, points = shape[axis], p["slice_point"]
        if points:
            if len(points) != ntops - 1:
                raise ShapeError(f"{len(points)} slice points make {len(points) + 1} pieces, "
                                 f"but the layer has {ntops} tops", param="slice_point")
            edges = (0,) + tuple(points) + (size,)
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise ShapeError(f"slice points {list(points)} must increase strictly within 1..{size - 1}",
                                 param="slice_point")
            sizes = [b - a for a, b in zip(edges, edges[1:])]
        else:
            if size % ntops:
                raise ShapeError(f"axis {axis} has size {size}, which does not split evenly into {ntops} tops",
                                 "give slice_point=[...]", param="slice_point")
            sizes = [size // ntops] * ntops
        return [shape[:axis] + (s,) + shape[axis + 1:] for s in sizes]

    def forward(self, p, bottoms, weights, ctx, state):
        x = bottoms[0]
        axis = canonical_axis(p["axis"], x.shape)
        points = p["slice_point"]
        if not points:   # an even split into as many pieces as the layer has tops
            n = state["ntops"]
            step = x.shape[axis] // n
            points = tuple(step * i for i in range(1, n))
        edges = (0,) + tuple(points) + (x.shape[axis],)
        return [x[(slice(None),) * axis + (slice(a, b),)] for a, b in zip(edges, edges[1:])]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        if not need[0]:
            return [None], []
        axis = canonical_axis(p["axis"], bottoms[0].shape)
        return [ctx.xp.concatenate(top_diffs, axis=axis, out=ctx.input_diff(0, False))], []


@register
class Split(LayerType):
    type_name = "Split"
    summary = "copies its bottom to several tops (their gradients are summed)"
    num_tops = (1, None)

    def infer(self, p, bottoms, ntops):
        return [bottoms[0]] * ntops

    def backward_keeps(self, p):
        return (), ()       # the backward needs only the shapes

    def output_is_view(self, p):
        return True

    # every top is the bottom itself (no layer modifies its inputs); gradients add up
    def forward(self, p, bottoms, weights, ctx, state):
        return [bottoms[0]] * state["ntops"]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        if not need[0]:
            return [None], []
        if len(top_diffs) == 1:
            return [top_diffs[0]], []
        total = ctx.xp.add(top_diffs[0], top_diffs[1],
                           out=input_diff_like(ctx, top_diffs[0], elementwise_order(*top_diffs)))
        for d in top_diffs[2:]:
            total += d
        return [total], []


def _reshaped(a, shape):
    """a with `shape`: a view of a's memory wherever the batch axis stays first. A blob
    ordered batch-last (netc.layers.memory_order) is memory (..., N), C-contiguous: any
    new shape of the axes after the batch is a view of it, kept batch-last (for the
    usual Flatten before InnerProduct, the (N, C·H·W) matrix whose transpose is
    contiguous). Another reshape of such a blob is a copy."""
    if a.flags.c_contiguous or a.ndim < 2 or shape[0] != a.shape[0]:
        return a.reshape(shape)
    moved = a.transpose(tuple(range(1, a.ndim)) + (0,))
    if not moved.flags.c_contiguous:
        return a.reshape(shape)
    view = moved.reshape(tuple(shape[1:]) + (shape[0],))
    return view.transpose((view.ndim - 1,) + tuple(range(view.ndim - 1)))


class _ViewOfInput(LayerType):
    """A layer whose output is its input with another shape (its own shape rule):
    the same values, so the gradient is the output's gradient reshaped back. The
    output shares the input's memory where the batch axis stays first (see _reshaped):
    a copy into that memory would overwrite an input whose memory order differs."""

    def backward_keeps(self, p):
        return (), ()       # the backward needs only the shapes

    def forward(self, p, bottoms, weights, ctx, state):
        x = bottoms[0]
        return [_reshaped(x, self.infer(p, [tuple(x.shape)], 1)[0])]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        if not need[0]:
            return [None], []
        return [_reshaped(top_diffs[0], bottoms[0].shape)], []


@register
class Flatten(_ViewOfInput):
    type_name = "Flatten"
    summary = "folds axes axis..end_axis into one"
    params = (Param("axis", "int", 1), Param("end_axis", "int", -1))
    message = "flatten_param"

    def output_is_view(self, p):
        return p["axis"] >= 1          # the batch axis stays first (a negative axis may fold it)

    def infer(self, p, bottoms, ntops):
        shape = bottoms[0]
        start = canonical_axis(p["axis"], shape)
        end = canonical_axis(p["end_axis"], shape, "end_axis")
        if end < start:
            raise ShapeError(f"end_axis ({p['end_axis']}) comes before axis ({p['axis']})", param="end_axis")
        return [shape[:start] + (count(shape[start:end + 1]),) + shape[end + 1:]]


@register
class Reshape(_ViewOfInput):
    type_name = "Reshape"
    summary = "new shape; 0 copies the input's dimension, -1 is inferred"
    params = (Param("shape", "shape", ()), Param("axis", "int", 0), Param("num_axes", "int", -1))
    positional = ("shape",)
    message = "reshape_param"

    def normalize(self, p):
        if sum(1 for d in p["shape"] if d == -1) > 1:
            raise ParamError("at most one dimension of a Reshape may be -1", param="shape")
        if any(d < -1 for d in p["shape"]):
            raise ParamError("Reshape dimensions are positive, 0 (copy) or -1 (infer)", param="shape")
        if p["num_axes"] < -1:
            raise ParamError("num_axes must be -1 or more", param="num_axes")
        return p

    def output_is_view(self, p):
        # the batch axis stays first: the replaced axes begin after it, or the first
        # given dimension copies it (0); elsewhere the shapes alone would tell
        return p["axis"] >= 1 or (p["axis"] == 0 and p["shape"][:1] == (0,))

    def infer(self, p, bottoms, ntops):
        shape = bottoms[0]
        # Caffe replaces the input axes [start, end) by the given dims
        start = p["axis"] + len(shape) + 1 if p["axis"] < 0 else p["axis"]
        if not 0 <= start <= len(shape):
            raise ShapeError(f"axis {p['axis']} is out of range for shape {list(shape)}", param="axis")
        end = len(shape) if p["num_axes"] == -1 else start + p["num_axes"]
        if end > len(shape):
            raise ShapeError(f"axis + num_axes ({end}) is beyond the input's {len(shape)} axes", param="num_axes")
        dims = []
        for i, d in enumerate(p["shape"]):
            if d == 0:
                if start + i >= len(shape):
                    raise ShapeError(f"dimension {i} is 0 (copy) but the input has no axis {start + i}",
                                     param="shape")
                d = shape[start + i]
            dims.append(d)
        new = list(shape[:start]) + dims + list(shape[end:])
        known = count([d for d in new if d != -1])
        if -1 in new:
            if known == 0 or count(shape) % known:
                raise ShapeError(f"cannot reshape {list(shape)} ({count(shape)} values) to {list(p['shape'])}",
                                 param="shape")
            new[new.index(-1)] = count(shape) // known
        if count(new) != count(shape):
            raise ShapeError(f"cannot reshape {list(shape)} ({count(shape)} values) into {new} "
                             f"({count(new)} values)", param="shape")
        return [tuple(new)]


@register
class Eltwise(LayerType):
    type_name = "Eltwise"
    summary = "elementwise SUM (with coefficients), PROD or MAX of equal-shaped bottoms"
    params = (
        Param("operation", "enum", "SUM", choices=("PROD", "SUM", "MAX")),
        Param("coeff", "floats", ()),
        Param("stable_prod_grad", "bool", True),
    )
    positional = ("operation",)
    message = "eltwise_param"
    min_bottoms, max_bottoms = 2, None

    def backward_keeps(self, p):
        # SUM needs nothing, MAX its winners (kept), PROD every input and the output
        return ((), ()) if p["operation"] != "PROD" else (None, (0,))

    def kept_bytes(self, p, bottoms, tops, dtype_bytes, train):
        return aligned(4 * count(tops[0])) if p["operation"] == "MAX" else 0    # the winners (int32)

    def workspace_bytes(self, p, bottoms, tops, dtype_bytes, backward=False):
        values, flags = aligned(count(tops[0]) * dtype_bytes), aligned(count(tops[0]))
        op = p["operation"]
        if op == "MAX":
            return flags                # where an input wins (forward), where it won (backward)
        if op == "SUM":                 # a scaled term (the first is scaled in the output)
            return values if not backward and any(c != 1.0 for c in p["coeff"][1:]) else 0
        if not backward:
            return 0
        # PROD: the product of the other inputs (one other: that input), or y/xᵢ
        return values if len(bottoms) > 2 or not p["stable_prod_grad"] else 0

    def infer(self, p, bottoms, ntops):
        if p["coeff"]:
            if p["operation"] != "SUM":
                raise ShapeError("coeff applies to SUM only", param="coeff")
            if len(p["coeff"]) != len(bottoms):
                raise ShapeError(f"{len(p['coeff'])} coefficients for {len(bottoms)} inputs", param="coeff")
        for i, shape in enumerate(bottoms[1:], start=1):
            if shape != bottoms[0]:
                raise ShapeError(f"Eltwise {p['operation']} needs equal shapes: input {i + 1} is "
                                 f"{list(shape)} but input 1 is {list(bottoms[0])}", bottom=i)
        return [bottoms[0]]

    # SUM: y = Σ cᵢxᵢ (cᵢ = 1 unless coeff), ∂xᵢ = cᵢ∂y.
    # PROD: y = Πxᵢ; ∂xᵢ = ∂y·Π_{j≠i} xⱼ (stable_prod_grad, Caffe's default) or ∂y·y/xᵢ.
    # MAX as Caffe's CPU code: bottom 1 wins a tie with bottom 0 (`a > b ? 0 : 1`), a later
    # bottom must be strictly greater to win; the gradient goes to the winner only.
    def forward(self, p, bottoms, weights, ctx, state):
        xp, op = ctx.xp, p["operation"]
        a, b = bottoms[0], bottoms[1]
        y = output_like(ctx, a, elementwise_order(*bottoms))
        if op == "SUM":
            coeff = p["coeff"] or (1.0,) * len(bottoms)

            def term(i, room=None):
                """cᵢxᵢ, made in `room` (default: scratch), or xᵢ itself where cᵢ = 1"""
                x, c = bottoms[i], coeff[i]
                if c == 1.0:
                    return x
                return xp.multiply(x, x.dtype.type(c), out=workspace_like(xp, x, "eltwise_term")
                                   if room is None else room)
            # y = t₀ + t₁ + ..., added in that order
            xp.add(term(0, y), term(1), out=y)
            for i in range(2, len(bottoms)):
                y += term(i)
            return [y]
        if op == "PROD":
            xp.multiply(a, b, out=y)
            for x in bottoms[2:]:
                y *= x
            return [y]
        # y = where(a > b, a, b), then where(x > y, x, y) for each further input x
        wins = xp.greater(a, b, out=workspace_like(xp, a, "eltwise_wins", bool))
        xp.copyto(y, b)
        xp.copyto(y, a, where=wins)
        winner = xp.logical_not(wins, out=kept_like(ctx, y, "winner", xp.int32))   # 0 where a won, else 1
        for i, x in enumerate(bottoms[2:], start=2):
            wins = xp.greater(x, y, out=wins)
            xp.copyto(y, x, where=wins)
            xp.copyto(winner, xp.int32(i), where=wins)
        state["winner"] = winner
        return [y]

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        xp, op, dy = ctx.xp, p["operation"], top_diffs[0]
        out = []
        for i, x in enumerate(bottoms):
            if not need[i]:
                out.append(None)
                continue
            if op == "SUM":
                c = p["coeff"][i] if p["coeff"] else 1.0
                out.append(dy if c == 1.0 else
                           xp.multiply(dy, dy.dtype.type(c), out=input_diff_like(ctx, dy, i=i)))
            elif op == "PROD":
                if p["stable_prod_grad"]:
                    factors = [z for j, z in enumerate(bottoms) if j != i]
                    product = factors[0]
                    if len(factors) > 1:     # Π_{j≠i} xⱼ, multiplied in order
                        product = xp.multiply(factors[0], factors[1],
                                              out=workspace_like(xp, x, "eltwise_others"))
                        for z in factors[2:]:
                            product *= z
                else:
                    factors = [tops[0], x]
                    product = xp.divide(tops[0], x, out=workspace_like(xp, x, "eltwise_others"))
                dx = input_diff_like(ctx, dy, elementwise_order(dy, *factors), i)
                out.append(xp.multiply(dy, product, out=dx))
            else:       # where(winner == i, dy, 0)
                winner = state["winner"]
                won = xp.equal(winner, i, out=workspace_like(xp, dy, "eltwise_wins", bool))
                dx = input_diff_like(ctx, dy, elementwise_order(dy, winner), i)
                dx.fill(0)
                xp.copyto(dx, dy, where=won)
                out.append(dx)
        return out, []


@register
class Silence(LayerType):
    type_name = "Silence"
    summary = "consumes blobs that nothing else reads, so they are not net outputs"
    max_bottoms = None
    num_tops = (0, 0)

    def default_tops(self, name):
        return ()

    def backward_keeps(self, p):
        return (), ()       # the backward needs only the shapes

    def infer(self, p, bottoms, ntops):
        return []

    def forward(self, p, bottoms, weights, ctx, state):
        return []

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        # Caffe's Silence sends zero gradients
        out = []
        for i, (b, wanted) in enumerate(zip(bottoms, need)):
            dx = ctx.input_diff(i, is_batch_last(b)) if wanted else None
            if dx is not None:
                dx.fill(0)
            elif wanted:
                dx = ctx.xp.zeros_like(b)
            out.append(dx)
        return out, []
