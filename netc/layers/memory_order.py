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


def in_order_of(xp, a, like):
    """a (a blob of like's shape) in the memory order of `like`: a itself when it
    already is, else a copy. For a backward whose gradient came in another order than
    the input it reads alongside it."""
    if is_batch_last(like):
        return a if is_batch_last(a) else as_blob(to_batch_last(xp, a))
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)
