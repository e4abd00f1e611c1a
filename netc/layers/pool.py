"""Pooling with Caffe's rounding.

CEIL (Caffe's default): out = ceil((in + 2·pad − k) / stride) + 1, then one less
when pad > 0 and the last window would start in the padding, (out − 1)·stride ≥ in + pad.
FLOOR: out = floor((in + 2·pad − k) / stride) + 1.
global_pooling: the kernel is the whole input, pad 0, stride 1.

Running, as Caffe (window of output (oh, ow): rows hstart = oh·sh − ph up to hstart + kh):
  MAX  the window clipped to the image (padding acts as −∞); backward sends each
       gradient to the window's arg-max, the FIRST maximum in Caffe's row-major scan on
       ties. The optional second top is Caffe's mask: the arg-max's flat index h·W + w
       in its input plane, as a float.
  AVE  Σ window / ((hend − hstart)·(wend − wstart)) with hend = min(hstart + kh, H + ph)
       taken BEFORE clipping to the image: padded zeros count, the ceil-mode overhang
       beyond H + ph does not (PyTorch's ceil_mode=True, count_include_pad=True).
  STOCHASTIC does not run (a NetcError says so).
Windows are separable: the forward reduces along W, then along H (kh + kw array
operations, no Python loop over pixels); MAX's arg-max scans the kh·kw offsets.
An input ordered batch-last (netc.layers.memory_order) is pooled as the (C, H, W, N)
array it is, whose rows are W·N contiguous values, and its output and gradient are
ordered batch-last too: the routines below take the two spatial axes of the array
they work on, (2, 3) for (N, C, H, W) or (1, 2) for (C, H, W, N).
"""
from __future__ import annotations

from netc.errors import NetcError
from netc.layers.base import LayerType, Param, ParamError, ShapeError, register, spatial_pair
from netc.layers.base import count as _count
from netc.layers.im2col import workspace
from netc.layers.memory_order import as_blob, batch_last, in_order_of
from netc.runtime.threads import split


def _window(p: dict, h: int, w: int):
    """(kernel, stride, pad, output size) per axis, global pooling resolved."""
    if p["global_pooling"]:
        return (h, w), (1, 1), (0, 0), (1, 1)
    (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride_hw"], p["pad_hw"]
    return ((kh, kw), (sh, sw), (ph, pw),
            (pooled_size(h, kh, sh, ph, p["round_mode"]), pooled_size(w, kw, sw, pw, p["round_mode"])))


NCHW, CHWN = (2, 3), (1, 2)     # the spatial axes of an (N, C, H, W) or a (C, H, W, N) array


def _at(axes, rows, cols):
    """An index of a 4-d array: `rows` on the H axis and `cols` on the W axis."""
    index = [slice(None)] * 4
    index[axes[0]], index[axes[1]] = rows, cols
    return tuple(index)


def _spatial_shape(shape, axes, h: int, w: int) -> tuple:
    shape = list(shape)
    shape[axes[0]], shape[axes[1]] = h, w
    return tuple(shape)


def _buffer_size(kernel, stride, pad, out, h: int, w: int) -> tuple[int, int]:
    """Hb × Wb: the buffer from −pad that holds the image and every window."""
    hb, wb = ((o - 1) * s + k for o, s, k in zip(out, stride, kernel))
    return max(hb, pad[0] + h), max(wb, pad[1] + w)


def _padded(xp, x, fill, kernel, stride, pad, out, axes=NCHW):
    """x in a buffer starting at −pad and long enough for every window (Hb × Wb),
    filled with `fill` outside the image; x itself when no window leaves it."""
    h, w = x.shape[axes[0]], x.shape[axes[1]]
    hb, wb = ((o - 1) * s + k for o, s, k in zip(out, stride, kernel))
    ph, pw = pad
    if ph == 0 and pw == 0 and hb <= h and wb <= w:
        return x
    buf = xp.full(_spatial_shape(x.shape, axes, *_buffer_size(kernel, stride, pad, out, h, w)), fill,
                  dtype=x.dtype)
    hh, ww = min(h, hb - ph), min(w, wb - pw)
    buf[_at(axes, slice(ph, ph + hh), slice(pw, pw + ww))] = x[_at(axes, slice(0, hh), slice(0, ww))]
    return buf


def _offsets(k: int, s: int, o: int):
    """The strided slice of the buffer axis seen by kernel offset i, for i = 0 … k − 1."""
    return [slice(i, i + s * (o - 1) + 1, s) for i in range(k)]


def _reduce_axis(xp, a, axis: int, k: int, s: int, o: int, op, out=None):
    """op over the k strided slices of `axis` (see _offsets), left to right: a new
    array, or `out`."""
    parts = [a[(slice(None),) * axis + (sl,)] for sl in _offsets(k, s, o)]
    if k == 1:
        if out is None:
            return parts[0].copy()
        out[...] = parts[0]
        return out
    r = op(parts[0], parts[1], out=out)
    for part in parts[2:]:
        op(r, part, out=r)
    return r


def _reduce_windows(xp, buf, kernel, stride, out, op, rows_first: bool = False, axes=NCHW):
    """op (maximum or add) over every window: along W, then along H (rows_first: along
    H, then W). A new contiguous array, buf's shape with OH × OW on its spatial axes.
    The first axis (the batch, or channels) is split across threads (NumPy); every
    window's values are combined in the same order either way."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    ha, wa = axes
    y = xp.empty(_spatial_shape(buf.shape, axes, oh, ow), dtype=buf.dtype)

    def run(a, b):
        if rows_first:
            r = _reduce_axis(xp, buf[a:b], ha, kh, sh, oh, op)
            _reduce_axis(xp, r, wa, kw, sw, ow, op, out=y[a:b])
        else:
            r = _reduce_axis(xp, buf[a:b], wa, kw, sw, ow, op)
            _reduce_axis(xp, r, ha, kh, sh, oh, op, out=y[a:b])

    split(xp, buf.shape[0], buf.size, run)
    return y


def _spread_windows(xp, g, kernel, stride, out, shape, axes=NCHW):
    """The adjoint of _reduce_windows(add): each g value added to every buffer pixel of
    its window. shape: the buffer's."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    ha, wa = axes
    r = xp.zeros(_spatial_shape(shape, axes, shape[ha], ow), dtype=g.dtype)
    for sl in _offsets(kh, sh, oh):
        r[_at(axes, sl, slice(None))] += g
    buf = xp.zeros(shape, dtype=g.dtype)
    for sl in _offsets(kw, sw, ow):
        buf[_at(axes, slice(None), sl)] += r
    return buf


def _tiles_image(kernel, stride, pad, out, h: int, w: int) -> bool:
    """Whether the windows tile the image exactly: kernel == stride, no padding, and
    out·kernel == size on both axes (LeNet's and VGG's 2×2/2 pools on even sizes).
    Then every pixel lies in exactly one window, none clipped, and an (N, C, H, W)
    array viewed as (N, C, OH, kh, OW, kw) holds each window in axes 3 and 5."""
    return (tuple(kernel) == tuple(stride) and tuple(pad) == (0, 0)
            and out[0] * kernel[0] == h and out[1] * kernel[1] == w)


def _max_backward_tiled(xp, x, y, dy, kernel, out):
    """MAX pooling's backward when the windows tile the image (_tiles_image): each
    window's gradient goes to its first maximum in Caffe's row-major scan, found by
    comparing x with its window's maximum and clearing later hits. The same result,
    bit for bit, as the general path's arg-max scan (the first pixel equal to its
    window's maximum gets dy, every other pixel +0; no gradient where the maximum is NaN).

    Written for NumPy's speed: y and dy are spread over their windows at full size, so
    that the comparison and the selection run over whole contiguous arrays (a (.., kh, W)
    or (.., OW, kw) view of the image makes NumPy loop over W or kw values at a time,
    several times slower), and dy is selected by a bitwise AND with an all-ones/zero
    mask, as masked copies (copyto(where=), where) are much slower still."""
    (kh, kw), (oh, ow) = kernel, out
    n, c, h, w = x.shape
    dx = xp.empty(x.shape, dtype=dy.dtype)
    bits = xp.dtype(f"u{dy.dtype.itemsize}")

    def spread(a, m, slot):
        """a (m, C, OH, OW) repeated over each window: (m, C, H, W). Along W by kw strided
        writes (their rows coalesce into one long loop), along H by repeating whole rows."""
        if kw == 2 and a.dtype.itemsize == 4:
            # 2-wide windows of 4-byte values (LeNet's, VGG's 2x2 float32 pools): each
            # value's bits twice in one uint64, u·(2³² + 1), is its pair along W; one
            # contiguous multiply instead of two strided writes (~30% faster)
            pairs = a.view(f"u{a.dtype.itemsize}").astype(xp.uint64)
            pairs *= 0x100000001
            return xp.repeat(pairs, kh, axis=2).view(a.dtype)
        wide = workspace(xp, (m, c, oh, w), a.dtype, slot)
        for j in range(kw):
            wide[..., j::kw] = a
        return xp.repeat(wide, kh, axis=2)

    def run(a, b):
        m = b - a
        rows = (m, c, oh, kh, w)                               # window row i of output row r
        hit = xp.equal(x[a:b], spread(y[a:b], m, "pool_y"),
                       out=workspace(xp, (m, c, h, w), bool, "pool_hit")).reshape(rows)
        # Ties: keep only the first hit per window. A window without a hit (NaN max)
        # could hide another's tie in the count, hence the NaN test.
        windows = m * c * oh * ow
        if kh * kw > 1 and (int(xp.count_nonzero(hit)) != windows or bool(xp.isnan(y[a:b]).any())):
            tiles = hit.reshape(m, c, oh, kh, ow, kw)
            taken = tiles[:, :, :, 0, :, 0].copy()             # a maximum seen earlier in the scan
            for k in range(1, kh * kw):
                later = tiles[:, :, :, k // kw, :, k % kw]     # a view: cleared in place
                later &= ~taken
                if k < kh * kw - 1:
                    taken |= later
        mask = hit.astype(bits).reshape(m, c, h, w)
        xp.negative(mask, out=mask)                            # 1 → all bits set
        xp.bitwise_and(spread(dy[a:b], m, "pool_dy").view(bits), mask, out=dx[a:b].view(bits))

    split(xp, n, x.size, run)
    return dx


def _max_backward_tiled_batch_last(xp, xt, yt, dyt, kernel, out):
    """_max_backward_tiled for arrays ordered (C, H, W, N): the same result, bit for bit.
    Viewed as (C, OH, kh, OW, kw, N), each window's pixels lie in axes 2 and 4 and
    y and dy broadcast over them with no copy, every loop running over N contiguous
    values; the selection is the same bitwise AND with an all-ones/zero mask."""
    (kh, kw), (oh, ow) = kernel, out
    c, n = xt.shape[0], xt.shape[3]
    tiles = (c, oh, kh, ow, kw, n)
    x6 = xt.reshape(tiles)
    dx = xp.empty(xt.shape, dtype=dyt.dtype)
    bits = xp.dtype(f"i{dyt.dtype.itemsize}")

    def run(a, b):
        hit = xp.equal(x6[a:b], yt[a:b, :, None, :, None],
                       out=workspace(xp, (b - a,) + tiles[1:], bool, "pool_hit"))
        windows = (b - a) * oh * ow * n
        if kh * kw > 1 and (int(xp.count_nonzero(hit)) != windows or bool(xp.isnan(yt[a:b]).any())):
            taken = hit[:, :, 0, :, 0].copy()                 # a maximum seen earlier in the scan
            for k in range(1, kh * kw):
                later = hit[:, :, k // kw, :, k % kw]          # a view: cleared in place
                later &= ~taken
                if k < kh * kw - 1:
                    taken |= later
        mask = xp.negative(hit.view(xp.int8), out=workspace(xp, hit.shape, bits, "pool_mask"))
        dy6 = xp.broadcast_to(dyt[a:b, :, None, :, None].view(bits), hit.shape)
        xp.bitwise_and(dy6, mask, out=dx[a:b].reshape(hit.shape).view(bits))

    split(xp, c, xt.size, run)
    return dx


def _crop(xp, buf, pad, h, w, axes=NCHW):
    ph, pw = pad
    if (buf.shape[axes[0]], buf.shape[axes[1]]) == (h, w):
        return buf
    return xp.ascontiguousarray(buf[_at(axes, slice(ph, ph + h), slice(pw, pw + w))])


def _ave_divisor(xp, dtype, h, w, kernel, stride, pad, out, axes=NCHW):
    """Caffe's pool_size per output pixel: (hend − hstart)·(wend − wstart), shaped to
    broadcast against an output with spatial axes `axes`."""
    sizes = []
    for size, k, s, pd, o in zip((h, w), kernel, stride, pad, out):
        start = xp.arange(o) * s - pd
        sizes.append((xp.minimum(start + k, size + pd) - start).astype(dtype))
    divisor = sizes[0][:, None] * sizes[1][None, :]
    return divisor if axes == NCHW else divisor[:, :, None]


def pooled_size(size: int, kernel: int, stride: int, pad: int, round_mode: str) -> int:
    span = size + 2 * pad - kernel
    if round_mode == "CEIL":
        out = -(-span // stride) + 1
        if pad > 0 and (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = span // stride + 1
    return out


@register
class Pooling(LayerType):
    type_name = "Pooling"
    summary = "MAX or AVE pooling with Caffe's ceil rounding: pool, kernel, stride, pad, global_pooling"
    params = (
        Param("pool", "enum", "MAX", choices=("MAX", "AVE", "STOCHASTIC")),
        Param("pad", "int", 0, minimum=0),
        Param("pad_h", "int", None, minimum=0),
        Param("pad_w", "int", None, minimum=0),
        Param("kernel_size", "int", None, aliases=("kernel",), minimum=1),
        Param("kernel_h", "int", None, minimum=1),
        Param("kernel_w", "int", None, minimum=1),
        Param("stride", "int", 1, minimum=1),
        Param("stride_h", "int", None, minimum=1),
        Param("stride_w", "int", None, minimum=1),
        Param("global_pooling", "bool", False, aliases=("global",)),
        Param("round_mode", "enum", "CEIL", choices=("CEIL", "FLOOR")),
    )
    positional = ("pool",)
    message = "pooling_param"
    num_tops = (1, 2)   # MAX pooling may expose its arg-max mask as a second top

    def normalize(self, p):
        given_kernel = p["kernel_size"] is not None or p["kernel_h"] is not None
        if p["global_pooling"]:
            if given_kernel:
                raise ParamError("global pooling takes its kernel from the input: drop kernel_size",
                                 param="kernel_size")
            if p["pad"] or p["pad_h"] or p["pad_w"] or p["stride"] != 1 or p["stride_h"] or p["stride_w"]:
                raise ParamError("global pooling needs pad 0 and stride 1", param="global_pooling")
            return p
        if not given_kernel:
            raise ParamError("Pooling needs a kernel size", "write kernel=2, or global_pooling=true",
                             param="kernel_size")
        single = lambda v: (v,) if v is not None else ()  # noqa: E731
        p["kernel"] = spatial_pair(single(p["kernel_size"]), p["kernel_h"], p["kernel_w"], 0, "kernel",
                                   "kernel_size")
        # stride and pad have defaults (1, 0), so stride_h/stride_w (pad_h/pad_w) replace them
        # rather than clash with them; given alone, one of the pair is an error of its own
        per_axis = lambda h, w: h is not None or w is not None  # noqa: E731
        p["stride_hw"] = spatial_pair(() if per_axis(p["stride_h"], p["stride_w"]) else single(p["stride"]),
                                      p["stride_h"], p["stride_w"], 1, "stride")
        p["pad_hw"] = spatial_pair(() if per_axis(p["pad_h"], p["pad_w"]) else single(p["pad"]),
                                   p["pad_h"], p["pad_w"], 0, "pad")
        for pad, k in zip(p["pad_hw"], p["kernel"]):
            if pad >= k:
                raise ParamError(f"pad ({pad}) must be smaller than the kernel ({k})", param="pad")
        return p

    def infer(self, p, bottoms, ntops):
        shape = bottoms[0]
        if len(shape) != 4:
            raise ShapeError(f"pooling needs a 4-d input (N, C, H, W), got {list(shape)}", bottom=0)
        n, c, h, w = shape
        if ntops == 2 and p["pool"] != "MAX":
            raise ShapeError("only MAX pooling has a second (mask) output")
        if p["global_pooling"]:
            return [(n, c, 1, 1)] * ntops
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride_hw"], p["pad_hw"]
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ShapeError(f"kernel {kh}x{kw} is larger than the padded input {h + 2 * ph}x{w + 2 * pw}",
                             "use a smaller kernel, or global_pooling=true to pool the whole map",
                             param="kernel_size", bottom=0)
        out_h = pooled_size(h, kh, sh, ph, p["round_mode"])
        out_w = pooled_size(w, kw, sw, pw, p["round_mode"])
        return [(n, c, out_h, out_w)] * ntops

    # --- running --------------------------------------------------------------------
    def forward(self, p, bottoms, weights, ctx, state):
        xp, x = ctx.xp, bottoms[0]
        n, c, h, w = x.shape
        kernel, stride, pad, out = _window(p, h, w)
        if p["pool"] == "STOCHASTIC":
            raise NetcError("STOCHASTIC pooling cannot run in netc yet",
                            hint="use pool=MAX or pool=AVE")
        if ctx.backend.kernels is not None:       # kernels/pool.cu (netc.runtime.cuda_kernels)
            from netc.runtime import cuda_kernels
            if p["pool"] == "AVE":
                return [cuda_kernels.ave_pool_forward(x, p, launcher=ctx.backend.kernels)]
            y, mask = cuda_kernels.max_pool_forward(x, p, launcher=ctx.backend.kernels)
            if state.get("ntops", 2) < 2:
                return [y]
            state["kernel_mask"] = mask       # h·W + w of each window's maximum: Caffe's mask top
            return [y, mask.astype(x.dtype)]
        if p["global_pooling"]:
            if p["pool"] == "AVE":
                return [x.mean(axis=(2, 3), keepdims=True)]
            y = x.max(axis=(2, 3), keepdims=True)
            if state.get("ntops", 2) < 2:
                return [y]
            arg = self._argmax(xp, x, y, kernel, stride, pad, out)
            state["argmax"] = arg
            return [y, self._mask(xp, arg, x.dtype, w, kernel, stride, pad, out)]
        a, axes, blob = self._in_order(x)
        if p["pool"] == "AVE":
            buf = _padded(xp, a, 0, kernel, stride, pad, out, axes)
            y = _reduce_windows(xp, buf, kernel, stride, out, xp.add, axes=axes)
            y /= _ave_divisor(xp, x.dtype, h, w, kernel, stride, pad, out, axes)
            return [blob(y)]
        buf = _padded(xp, a, -xp.inf, kernel, stride, pad, out, axes)
        # The maximum, unlike a sum, is the same in any order (up to which of a +0/−0
        # tie, or which of several NaNs, comes out): the rows first, whose operations
        # run over whole contiguous rows (~1.8x faster than W first, whose strided
        # slices NumPy does not vectorise), leaving W for the smaller array.
        y = _reduce_windows(xp, buf, kernel, stride, out, xp.maximum, rows_first=True, axes=axes)
        # Caffe's mask top is wanted only with two tops; the executor says how many it
        # reads in state["ntops"] (without it, the mask is made anyway).
        if state.get("ntops", 2) < 2:
            return [blob(y)]
        arg = self._argmax(xp, a, y, kernel, stride, pad, out, axes)
        state["argmax"] = arg
        return [blob(y), blob(self._mask(xp, arg, x.dtype, w, kernel, stride, pad, out, axes))]

    @staticmethod
    def _in_order(x):
        """The array to pool for blob x, its spatial axes, and how to turn an array in
        that order back into a blob: x itself, or the (C, H, W, N) array behind it."""
        xt = batch_last(x)
        if xt is None:
            return x, NCHW, lambda r: r
        return xt, CHWN, as_blob

    @staticmethod
    def _argmax(xp, x, y, kernel, stride, pad, out, axes=NCHW):
        """Per output pixel, the window offset i·kw + j of the first maximum in Caffe's
        scan (rows, then columns within a row): int32, y's shape. x and y are arrays
        with spatial axes `axes`."""
        h, w = x.shape[axes[0]], x.shape[axes[1]]
        if kernel == (h, w) and out == (1, 1) and axes == NCHW:   # global: argmax scans row-major too
            n, c = x.shape[:2]
            return x.reshape(n, c, 1, h * w).argmax(axis=-1).reshape(n, c, 1, 1).astype(xp.int32)
        buf = _padded(xp, x, -xp.inf, kernel, stride, pad, out, axes)
        (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
        arg = xp.full(y.shape, -1, dtype=xp.int32)
        rows, cols = _offsets(kh, sh, oh), _offsets(kw, sw, ow)
        # scanned backwards, so that the last write, which wins, is the first maximum
        for k in reversed(range(kh * kw)):
            xp.copyto(arg, k, where=buf[_at(axes, rows[k // kw], cols[k % kw])] == y)
        return arg

    @staticmethod
    def _mask(xp, arg, dtype, w, kernel, stride, pad, out, axes=NCHW):
        """Caffe's mask: the arg-max's flat index h·W + w in the input plane, as float."""
        kw = kernel[1]
        trailing = (1,) * (3 - axes[1])
        hs = (xp.arange(out[0]) * stride[0] - pad[0]).reshape((-1, 1) + trailing)
        ws = (xp.arange(out[1]) * stride[1] - pad[1]).reshape((1, -1) + trailing)
        return ((hs + arg // kw) * w + ws + arg % kw).astype(dtype)

    def backward(self, p, bottoms, tops, top_diffs, weights, ctx, state, need):
        if not need[0]:
            return [None], []
        xp, x, dy = ctx.xp, bottoms[0], top_diffs[0]
        if ctx.backend.kernels is not None:
            from netc.runtime import cuda_kernels
            launcher = ctx.backend.kernels
            if p["pool"] == "AVE":
                return [cuda_kernels.ave_pool_backward(dy, x.shape, p, launcher=launcher)], []
            mask = state.get("kernel_mask")
            if mask is None:          # found again from x, as the array code does
                _, mask = cuda_kernels.max_pool_forward(x, p, launcher=launcher)
            return [cuda_kernels.max_pool_backward(dy, mask, x.shape, p, launcher=launcher)], []
        n, c, h, w = x.shape
        kernel, stride, pad, out = _window(p, h, w)
        (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
        if p["global_pooling"]:
            if p["pool"] == "AVE":
                g = dy / dy.dtype.type(h * w)
                return [xp.broadcast_to(g, x.shape).copy()], []
            arg = state.get("argmax")
            if arg is None:
                arg = self._argmax(xp, x, None, kernel, stride, pad, out)
            picks = xp.arange(h * w, dtype=xp.int32).reshape(1, 1, h, w) == arg
            return [xp.where(picks, dy, dy.dtype.type(0))], []
        # the gradient in the order of the input, pooled as the forward did
        a, axes, blob = self._in_order(x)
        g, y = in_order_of(xp, dy, x), None
        if p["pool"] == "MAX" and state.get("argmax") is None:
            # the maxima made again from x (a forward's work): the backward reads no
            # output, so the next layer may overwrite it in place (Caffe's NiN: Dropout)
            y = self.forward(p, [x], [], ctx, {"ntops": 1})[0]
        if axes == CHWN:
            y, g = (None if y is None else batch_last(y)), batch_last(g)
        buffer_shape = _spatial_shape(a.shape, axes, *_buffer_size(kernel, stride, pad, out, h, w))
        if p["pool"] == "AVE":
            g = g / _ave_divisor(xp, dy.dtype, h, w, kernel, stride, pad, out, axes)
            return [blob(_crop(xp, _spread_windows(xp, g, kernel, stride, out, buffer_shape, axes),
                               pad, h, w, axes))], []
        # MAX (the mask top, if any, carries no gradient)
        arg = state.get("argmax")
        if arg is None and _tiles_image(kernel, stride, pad, out, h, w):
            # the common non-overlapping pool: no arg-max array, no scatter loop
            if axes == CHWN:
                return [blob(_max_backward_tiled_batch_last(xp, a, y, g, kernel, out))], []
            return [_max_backward_tiled(xp, a, y, g, kernel, out)], []
        if arg is None:
            arg = self._argmax(xp, a, y, kernel, stride, pad, out, axes)
        buf = xp.zeros(buffer_shape, dtype=g.dtype)
        zero = g.dtype.type(0)
        for i, rows in enumerate(_offsets(kh, sh, oh)):
            for j, cols in enumerate(_offsets(kw, sw, ow)):
                buf[_at(axes, rows, cols)] += xp.where(arg == i * kw + j, g, zero)
        return [blob(_crop(xp, buf, pad, h, w, axes))], []

    # --- memory -----------------------------------------------------------------------
    def backward_keeps(self, p):
        # MAX finds each window's arg-max again from x; AVE needs only the shapes
        return ((0,), ()) if p["pool"] == "MAX" else ((), ())

    def kept_bytes(self, p, bottoms, tops, dtype_bytes, train):
        # with the mask top, the forward's arg-max (int32) is kept for the backward
        return 4 * _count(tops[0]) if train and p["pool"] == "MAX" and len(tops) == 2 else 0

    def workspace_bytes(self, p, bottoms, tops, dtype_bytes, backward=False):
        # the input in a buffer from −pad holding every window; backward adds an
        # arg-max per output (int32) for the scatter
        n, c, h, w = bottoms[0]
        kernel, stride, pad, out = _window(p, h, w)
        (hb, wb), (ph, pw) = _buffer_size(kernel, stride, pad, out, h, w), pad
        padded = 0 if (ph, pw) == (0, 0) and (hb, wb) == (h, w) else n * c * hb * wb * dtype_bytes
        if not backward:
            return padded + n * c * hb * out[1] * dtype_bytes     # the windows reduced along W first
        return padded + (4 * _count(tops[0]) if p["pool"] == "MAX" else 0)

    def rounding_matters(self, p, bottom) -> bool:
        """Whether floor rounding (PyTorch, TensorFlow) would give another shape."""
        if p["global_pooling"] or len(bottom) != 4:
            return False
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride_hw"], p["pad_hw"]
        return any(pooled_size(s, k, st, pd, "CEIL") != pooled_size(s, k, st, pd, "FLOOR")
                   for s, k, st, pd in ((bottom[2], kh, sh, ph), (bottom[3], kw, sw, pw)))
