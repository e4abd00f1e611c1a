"""Blobs whose memory is ordered batch-last.

To the executor and to every layer a 4-d blob is an (N, C, H, W) array, but its
memory may be ordered (C, H, W, N): the array is then a transposed view of a
contiguous (C, H, W, N) one. Values, shapes and indexing are the same either way, so
a layer that knows nothing of it computes the right numbers (NumPy and CuPy follow
the strides); the layers for which the order matters for speed look at it:

  - Convolution on small maps runs im2col, the GEMM and col2im batch-last (see
    netc.layers.im2col, layout "T") and hands its output on in that order, so that
    the next layer does not pay for a transposing copy (as slow as ten plain copies
    of the same array in NumPy: its inner loop runs over one value at a time);
  - Pooling, ReLU and the other elementwise layers keep their input's order (NumPy's
    ufuncs write in the order of their input), pooling's loops then running over
    OW·N contiguous values instead of OW;
  - InnerProduct reads a batch-last input as the transposed matrix its GEMM wants;
  - Concat along channels of batch-last inputs copies contiguous blocks.

A batch of one is always taken as (N, C, H, W): its two orders are the same memory.
"""
from __future__ import annotations

from netc.runtime.scratch import workspace


def batch_last(a):
    """The contiguous (C, H, W, N) array a blob `a` (N, C, H, W) is a view of, when its
    memory is ordered batch-last; else None."""
    if a is None or a.ndim != 4 or a.shape[0] == 1:
        return None
    t = a.transpose(1, 2, 3, 0)
    return t if t.flags.c_contiguous else None


def is_batch_last(a) -> bool:
    """Whether blob `a` is ordered batch-last (see batch_last)."""
    return batch_last(a) is not None


def as_blob(t):
    """A contiguous (C, H, W, N) array seen as the (N, C, H, W) blob it holds (a view)."""
    return t.transpose(3, 0, 1, 2)


def to_batch_last(xp, a, out=None):
    """Blob a as a contiguous (C, H, W, N) array: its own memory when ordered so,
    else a copy (into `out` when given)."""
    t = batch_last(a)
    if t is not None:
        return t
    if out is None:
        return xp.ascontiguousarray(a.transpose(1, 2, 3, 0))
    out[...] = a.transpose(1, 2, 3, 0)
    return out


# --- places in a memory order (the executor's places, scratch, new arrays) -----------

def elementwise_order(*blobs) -> bool:
    """Whether NumPy orders an elementwise result of these blobs (of one shape)
    batch-last: only where every one is; a broadcast operand,
    a keepdims sum, does not count. The layers make each result in the order the NumPy
    expression it replaces gave it: a sum over a blob adds in the order of its memory,
    so the order reaches the numbers downstream."""
    return all(is_batch_last(b) for b in blobs)


def _in_order(make, shape, dtype, batch_last: bool):
    """make(shape, dtype)'s array as a blob of `shape`, its memory batch-last if asked."""
    if batch_last:
        n, c, h, w = shape
        return as_blob(make((c, h, w, n), dtype))
    return make(tuple(shape), dtype)


def workspace_maker(xp, slot: str):
    """make(shape, dtype) → workspace() scratch of `slot`."""
    return lambda shape, dtype: workspace(xp, shape, dtype, slot)


def workspace_like(xp, like, slot: str, dtype=None, batch_last: bool | None = None):
    """Scratch (netc.runtime.scratch.workspace) of blob `like`'s shape, in like's memory
    order unless batch_last says."""
    order = is_batch_last(like) if batch_last is None else batch_last
    return _in_order(workspace_maker(xp, slot), like.shape, like.dtype if dtype is None else dtype, order)


def kept_like(ctx, like, slot: str, dtype=None, batch_last: bool | None = None):
    """Kept state (RunContext.kept) of blob `like`'s shape, ordered as workspace_like."""
    order = is_batch_last(like) if batch_last is None else batch_last
    return _in_order(lambda shape, dt: ctx.kept(shape, dt, slot), like.shape,
                     like.dtype if dtype is None else dtype, order)


def or_new(xp, place, like, batch_last: bool):
    """`place` (ctx.output's, ctx.input_diff's), or where there is none a new array of
    blob like's shape and dtype, its memory batch-last as asked."""
    if place is not None:
        return place
    return _in_order(lambda shape, dtype: xp.empty(shape, dtype=dtype), like.shape, like.dtype, batch_last)


def output_like(ctx, like, batch_last: bool | None = None, i: int = 0):
    """The place of forward output i (of like's shape), in like's memory order unless
    batch_last says, else a new array so ordered."""
    order = is_batch_last(like) if batch_last is None else batch_last
    return or_new(ctx.xp, ctx.output(i, order), like, order)


def input_diff_like(ctx, like, batch_last: bool | None = None, i: int = 0):
    """The place of the gradient of input i (of like's shape), ordered as output_like."""
    order = is_batch_last(like) if batch_last is None else batch_last
    return or_new(ctx.xp, ctx.input_diff(i, order), like, order)


def in_place_diff(ctx, dy, batch_last: bool, new_batch_last: bool | None = None):
    """The place of an elementwise layer's input gradient (of dy's shape), ordered
    batch-last as asked, else a new array ordered new_batch_last (default: the same).
    A place over dy's own memory (the layer in place) in the other order is taken in
    dy's order instead: a pass then reads each element of dy before writing it, where
    NumPy would first copy the whole of dy aside."""
    place = ctx.input_diff(0, batch_last)
    if place is not None and place.strides != dy.strides and ctx.xp.may_share_memory(place, dy):
        place = ctx.input_diff(0, is_batch_last(dy))
    return or_new(ctx.xp, place, dy, batch_last if new_batch_last is None else new_batch_last)
