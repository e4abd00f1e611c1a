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

from dataclasses import dataclass

from netc.layers.memory_order import as_blob, batch_last
from netc.runtime.scratch import workspace
from netc.runtime.threads import split

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


# The slot of a convolution's padded input copy (padded, padded_batch_last) and of
# col2im's padded accumulator: both are the input's shape with its padding, and never
# alive at once, so a backward that makes both takes that room once.
PADDED_SLOT = "padded"


def _zero_padding(t, g: Geometry, h: int, w: int, axis: int = 1):
    """Zero the padding of t, whose rows and columns are axes `axis` and `axis` + 1, its
    (h, w) interior starting at (ph, pw): the interior is overwritten afterwards (a
    workspace holds old data)."""
    lead = (slice(None),) * axis
    hb, wb = t.shape[axis], t.shape[axis + 1]
    if g.ph:
        t[lead + (slice(0, g.ph),)] = 0
    if hb > g.ph + h:
        t[lead + (slice(g.ph + h, hb),)] = 0
    if g.pw:
        t[lead + (slice(None), slice(0, g.pw))] = 0
    if wb > g.pw + w:
        t[lead + (slice(None), slice(g.pw + w, wb))] = 0


def padded(xp, x, g: Geometry):
    """x with g.ph/g.pw zero rows/columns before it and enough after it for every window
    (a workspace); x itself (no copy) when the windows stay inside it."""
    n, c, h, w = x.shape
    hb, wb = g.span_h(), g.span_w()
    if g.ph == 0 and g.pw == 0 and hb <= h and wb <= w:
        return x
    hb, wb = max(hb, g.ph + h), max(wb, g.pw + w)
    buf = workspace(xp, (n, c, hb, wb), x.dtype, PADDED_SLOT)
    _zero_padding(buf, g, h, w, axis=2)
    buf[:, :, g.ph:g.ph + h, g.pw:g.pw + w] = x
    return buf


def padded_batch_last(xp, x, g: Geometry, extent: tuple[int, int] = (0, 0), buffer=None):
    """x (N, C, H, W) as (C, Hb, Wb, N), zero-padded as `padded` does (and to at least
    `extent` rows and columns from −pad): x's own memory when it is ordered batch-last
    and needs no padding, else a workspace (or the start of `buffer`, a flat array of
    the caller's scratch)."""
    n, c, h, w = x.shape
    hb, wb = max(g.span_h(), g.ph + h, extent[0]), max(g.span_w(), g.pw + w, extent[1])
    source = batch_last(x)
    if source is not None and (hb, wb) == (h, w):
        return source
    if buffer is None:
        xt = workspace(xp, (c, hb, wb, n), x.dtype, PADDED_SLOT)
    else:
        xt = buffer[:c * hb * wb * n].reshape(c, hb, wb, n)
    _zero_padding(xt, g, h, w)
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


def col2im(xp, col, g: Geometry, n: int, layout: str = "N", out=None):
    """The adjoint of im2col: each column entry added back to the input pixel it came
    from (padding dropped), into `out` (an (N, C, H, W) array ordered batch-last for
    layout "T", netc.layers.memory_order, else contiguous), or a new array in col's
    dtype. The padded sum, where there is padding, is a workspace. The adds run in the
    same order for every pixel whatever the threading (split over channels)."""
    hb, wb = max(g.span_h(), g.ph + g.h), max(g.span_w(), g.pw + g.w)
    eh, ew = (g.oh - 1) * g.sh + 1, (g.ow - 1) * g.sw + 1
    crop = (hb, wb) != (g.h, g.w)
    if layout == "T":
        col = col.reshape(g.c, g.kh, g.kw, g.oh, g.ow, n)
        # out's (C, H, W, N) memory (a batch of one: either order is)
        image = (xp.empty((g.c, g.h, g.w, n), dtype=col.dtype) if out is None
                 else out.reshape(out.shape[1:] + (1,)) if n == 1 else batch_last(out))
        acc_all = workspace(xp, (g.c, hb, wb, n), col.dtype, PADDED_SLOT) if crop else image

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
                image[a:b] = acc[:, g.ph:g.ph + g.h, g.pw:g.pw + g.w]

        split(xp, g.c, col.size, run_t)
        return as_blob(image)
    if layout == "N":
        col = col.reshape(n, g.c, g.kh, g.kw, g.oh, g.ow)
    else:
        col = col.reshape(g.c, g.kh, g.kw, n, g.oh, g.ow)
    if out is None:
        out = xp.empty((n, g.c, g.h, g.w), dtype=col.dtype)
    buf = workspace(xp, (n, g.c, hb, wb), col.dtype, PADDED_SLOT) if crop else out

    def run(a, b):
        buf[:, a:b] = 0
        for i in range(g.kh):
            for j in range(g.kw):
                r0, c0 = i * g.dh, j * g.dw
                part = col[:, a:b, i, j] if layout == "N" else col[a:b, i, j].transpose(1, 0, 2, 3)
                buf[:, a:b, r0:r0 + eh:g.sh, c0:c0 + ew:g.sw] += part

    split(xp, g.c, col.size, run)
    if crop:
        out[...] = buf[:, :, g.ph:g.ph + g.h, g.pw:g.pw + g.w]
    return out
