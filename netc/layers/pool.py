"""Pooling with Caffe's rounding.

CEIL (Caffe's default): out = ceil((in + 2·pad − k) / stride) + 1, then one less
when pad > 0 and the last window would start in the padding, (out − 1)·stride ≥ in + pad.
FLOOR: out = floor((in + 2·pad − k) / stride) + 1.
global_pooling: the kernel is the whole input, pad 0, stride 1.
"""
from __future__ import annotations

from netc.layers.base import LayerType, Param, ParamError, ShapeError, register, spatial_pair


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

    def rounding_matters(self, p, bottom) -> bool:
        """Whether floor rounding (PyTorch, TensorFlow) would give another shape."""
        if p["global_pooling"] or len(bottom) != 4:
            return False
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride_hw"], p["pad_hw"]
        return any(pooled_size(s, k, st, pd, "CEIL") != pooled_size(s, k, st, pd, "FLOOR")
                   for s, k, st, pd in ((bottom[2], kh, sh, ph), (bottom[3], kw, sw, pw)))
