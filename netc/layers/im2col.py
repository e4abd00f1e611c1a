"""im2col / col2im for 2-d convolution and deconvolution (NCHW), written against xp.

A convolution's geometry: input C×H×W, kernel kh×kw, stride, pad, dilation and the
output OH×OW. The column matrix holds, for every output pixel, the input values its
kernel window sees (zero where the window lies in the padding):

    col[.., c, i, j, .., oh, ow] = x[.., c, oh·sh − ph + i·dh, ow·sw − pw + j·dw]

in one of three layouts:

    "N" (batch first):    (N, C, kh, kw, OH, OW)  — one GEMM per image writes NCHW directly
    "C" (channels first): (C, kh, kw, N, OH, OW)  — one GEMM for the whole batch
    "T" (batch last):     (C, kh, kw, OH, OW, N)  — one GEMM for the whole batch, for
                          small maps: read from the input's (C, H, W, N) memory (a copy
                          unless the blob is ordered so, netc.layers.memory_order), every
                          window row is OW·N contiguous values instead of OW, which is
                          what NumPy's copy loops need to run fast (and col2im's adds);
                          the GEMM's result is the output ordered batch-last

im2col is one strided copy (as_strided over a zero-padded copy of the input, no Python
loop); col2im, its adjoint (overlapping windows add up), loops over the kh·kw kernel
offsets only.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy

from netc.layers.memory_order import as_blob, batch_last
from netc.runtime.threads import split

# NumPy: the column matrix is written into one reused buffer per thread (Caffe keeps a
# col_buffer too): a fresh one costs the kernel's page zeroing, as much as the copy
# itself. Callers use the columns at once and never keep them (im2col(out=) writes into
# an array of a caller that does). Above this size a
# fresh array is made (and given back) instead. CuPy pools its memory itself.
# Other scratch arrays of a convolution (the batch-last input copy, GEMM results about
# to be rearranged) have slots of their own, so that they can be alive at once.
_WORKSPACE_MAX_BYTES = 512 << 20
_local = threading.local()


@contextmanager
def workspace_region(region):
    """Within it, workspace() on this thread hands out consecutive pieces of `region`
    (bytes: the scratch the memory plan gave the layer being run, in its arena) while
    they fit, each valid until the block ends; then, or without a region, the slots."""
    previous = getattr(_local, "region", None)
    _local.region = None if region is None else [region, 0]
    try:
        yield
    finally:
        _local.region = previous


def workspace(xp, shape, dtype, slot: str = "col"):
    """An uninitialised scratch array, valid until the next call for the same slot
    on this thread: never return it, or keep it past the layer call that asked."""
    dtype = numpy.dtype(dtype)
    nbytes = dtype.itemsize * int(numpy.prod(shape, dtype=numpy.int64))
    region = getattr(_local, "region", None)
    if region is not None:
        memory, used = region
        start = -(-used // 64) * 64
        if start + nbytes <= memory.size:
            region[1] = start + nbytes
            return memory[start:start + nbytes].view(dtype).reshape(shape)
    if xp is not numpy or nbytes > _WORKSPACE_MAX_BYTES:
        return xp.empty(shape, dtype=dtype)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = buffers[slot] = numpy.empty(nbytes, dtype=numpy.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


_workspace = workspace


@dataclass(frozen=True)
class Geometry:
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int

    @property
    def one_by_one(self) -> bool:
        """A 1×1 kernel, stride 1, no padding: the column matrix is the input itself."""
        return (self.kh == self.kw == 1 and self.sh == self.sw == 1 and self.ph == self.pw == 0
                and self.oh == self.h and self.ow == self.w)

    @property
    def rows(self) -> int:
        return self.c * self.kh * self.kw

    def span_h(self) -> int:
        """Rows of the padded input the windows reach (from −ph)."""
        return (self.oh - 1) * self.sh + (self.kh - 1) * self.dh + 1

    def span_w(self) -> int:
        return (self.ow - 1) * self.sw + (self.kw - 1) * self.dw + 1


def conv_geometry(p: dict, c: int, h: int, w: int, oh: int, ow: int) -> Geometry:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p["kernel"], p["stride_hw"], p["pad_hw"], p["dilation_hw"]
    return Geometry(c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)


def as_strided(xp, a, shape, strides):
    """numpy.lib.stride_tricks.as_strided, or CuPy's (the same signature)."""
    return xp.lib.stride_tricks.as_strided(a, shape=tuple(shape), strides=tuple(strides))


def padded(xp, x, g: Geometry):
    """x with g.ph/g.pw zero rows/columns before it and enough after it for every window;
    x itself (no copy) when the windows stay inside it."""
    n, c, h, w = x.shape
    hb, wb = g.span_h(), g.span_w()
    if g.ph == 0 and g.pw == 0 and hb <= h and wb <= w:
        return x
    hb, wb = max(hb, g.ph + h), max(wb, g.pw + w)
    buf = xp.zeros((n, c, hb, wb), dtype=x.dtype)
    buf[:, :, g.ph:g.ph + h, g.pw:g.pw + w] = x
    return buf


def padded_batch_last(xp, x, g: Geometry, slot: str = "xt", extent: tuple[int, int] = (0, 0)):
    """x (N, C, H, W) as (C, Hb, Wb, N), zero-padded as `padded` does (and to at least
    `extent` rows and columns from −pad): x's own memory when it is ordered batch-last
    and needs no padding, else a workspace."""
    n, c, h, w = x.shape
    hb, wb = max(g.span_h(), g.ph + h, extent[0]), max(g.span_w(), g.pw + w, extent[1])
    source = batch_last(x)
    if source is not None and (hb, wb) == (h, w):
        return source
    xt = workspace(xp, (c, hb, wb, n), x.dtype, slot)
    # zero only the padding: the rest is overwritten (the workspace holds old data)
    if g.ph:
        xt[:, :g.ph] = 0
    if hb > g.ph + h:
        xt[:, g.ph + h:] = 0
    if g.pw:
        xt[:, :, :g.pw] = 0
    if wb > g.pw + w:
        xt[:, :, g.pw + w:] = 0
    if source is None:
        source = x.transpose(1, 2, 3, 0)

    def run(a, b):
        xt[a:b, g.ph:g.ph + h, g.pw:g.pw + w] = source[a:b]

    split(xp, c, x.size, run)
    return xt


def im2col(xp, x, g: Geometry, layout: str = "N", out=None):
    """The column matrix of x (N, C, H, W), contiguous, in layout "N", "C" or "T" (see
    above). With NumPy it lives in a shared workspace, valid until the next im2col call
    on this thread only, unless written into `out` (contiguous, of the columns' size:
    an array the caller may keep). The copy is split over channels across threads (NumPy)."""
    n = x.shape[0]
    if layout == "T":
        xb = padded_batch_last(xp, x, g)
        s_c, s_h, s_w, s_n = xb.strides
        shape = (g.c, g.kh, g.kw, g.oh, g.ow, n)
        strides = (s_c, g.dh * s_h, g.dw * s_w, g.sh * s_h, g.sw * s_w, s_n)
        c_axis = 0
    else:
        xb = padded(xp, x, g)
        s_n, s_c, s_h, s_w = xb.strides
        if layout == "N":
            shape = (n, g.c, g.kh, g.kw, g.oh, g.ow)
            strides = (s_n, s_c, g.dh * s_h, g.dw * s_w, g.sh * s_h, g.sw * s_w)
            c_axis = 1
        else:
            shape = (g.c, g.kh, g.kw, n, g.oh, g.ow)
            strides = (s_c, g.dh * s_h, g.dw * s_w, s_n, g.sh * s_h, g.sw * s_w)
            c_axis = 0
    col = workspace(xp, shape, x.dtype) if out is None else out.reshape(shape)
    windows = as_strided(xp, xb, shape, strides)

    def run(a, b):
        part = (slice(None),) * c_axis + (slice(a, b),)
        col[part] = windows[part]

    split(xp, g.c, col.size, run)
    return col


def col2im(xp, col, g: Geometry, n: int, layout: str = "N"):
    """The adjoint of im2col: each column entry added back to the input pixel it came
    from (padding dropped). Returns a new (N, C, H, W) array in col's dtype, ordered
    batch-last for layout "T" (netc.layers.memory_order). The adds
    run in the same order for every pixel whatever the threading (split over channels)."""
    hb, wb = max(g.span_h(), g.ph + g.h), max(g.span_w(), g.pw + g.w)
    eh, ew = (g.oh - 1) * g.sh + 1, (g.ow - 1) * g.sw + 1
    if layout == "T":
        col = col.reshape(g.c, g.kh, g.kw, g.oh, g.ow, n)
        crop = (hb, wb) != (g.h, g.w)
        acc_all = (workspace(xp, (g.c, hb, wb, n), col.dtype, "col2im") if crop
                   else xp.empty((g.c, g.h, g.w, n), dtype=col.dtype))
        out = xp.empty((g.c, g.h, g.w, n), dtype=col.dtype) if crop else acc_all

        # In two steps, so that most adds run over long contiguous rows: for each kernel
        # column j, the kh row offsets are summed into a buffer OW wide, whose rows are
        # OW·N contiguous values like the columns' (an add into a window of the image
        # itself would break every row into OW·N pieces: ~2x slower); the buffer is then
        # added into the image at column offset j.
        def run_t(a, b):
            acc = acc_all[a:b]
            acc[...] = 0
            rows = workspace(xp, (b - a, hb, g.ow, n), col.dtype, "col2im_rows")
            for j in range(g.kw):
                rows[...] = 0
                for i in range(g.kh):
                    target = rows[:, i * g.dh:i * g.dh + eh:g.sh]
                    xp.add(target, col[a:b, i, j], out=target)
                target = acc[:, :, j * g.dw:j * g.dw + ew:g.sw]
                xp.add(target, rows, out=target)
            if crop:
                out[a:b] = acc[:, g.ph:g.ph + g.h, g.pw:g.pw + g.w]

        split(xp, g.c, col.size, run_t)
        return as_blob(out)
    if layout == "N":
        col = col.reshape(n, g.c, g.kh, g.kw, g.oh, g.ow)
    else:
        col = col.reshape(g.c, g.kh, g.kw, n, g.oh, g.ow)
    buf = xp.zeros((n, g.c, hb, wb), dtype=col.dtype)

    def run(a, b):
        for i in range(g.kh):
            for j in range(g.kw):
                r0, c0 = i * g.dh, j * g.dw
                part = col[:, a:b, i, j] if layout == "N" else col[a:b, i, j].transpose(1, 0, 2, 3)
                buf[:, a:b, r0:r0 + eh:g.sh, c0:c0 + ew:g.sw] += part

    split(xp, g.c, col.size, run)
    if buf.shape[2:] == (g.h, g.w):
        return buf
    return xp.ascontiguousarray(buf[:, :, g.ph:g.ph + g.h, g.pw:g.pw + g.w])
