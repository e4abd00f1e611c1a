"""Convolution and Deconvolution (2-d, NCHW), with Caffe's shape rules.

  extent = dilation·(kernel − 1) + 1
  Convolution:   out = (in + 2·pad − extent) // stride + 1
  Deconvolution: out = stride·(in − 1) + extent − 2·pad
Weights: Convolution [num_output, C/group, kh, kw]; Deconvolution [C, num_output/group, kh, kw].
"""
from __future__ import annotations

from netc.layers.base import (LEARNABLE_PARAMS, REQUIRED, LayerType, Param, ParamError, ShapeError,
                              register, spatial_pair)

_CONV_PARAMS = (
    Param("num_output", "int", REQUIRED, minimum=1, doc="output channels"),
    Param("bias_term", "bool", True),
    Param("pad", "ints", (), aliases=("padding",)),
    Param("kernel_size", "ints", (), aliases=("kernel",)),
    Param("stride", "ints", ()),
    Param("dilation", "ints", ()),
    Param("kernel_h", "int", None, minimum=1),
    Param("kernel_w", "int", None, minimum=1),
    Param("pad_h", "int", None, minimum=0),
    Param("pad_w", "int", None, minimum=0),
    Param("stride_h", "int", None, minimum=1),
    Param("stride_w", "int", None, minimum=1),
    Param("group", "int", 1, minimum=1),
    Param("axis", "int", 1),
) + LEARNABLE_PARAMS


class _ConvolutionBase(LayerType):
    params = _CONV_PARAMS
    positional = ("num_output",)
    message = "convolution_param"
    learnable = True

    def normalize(self, p: dict) -> dict:
        if p["axis"] != 1:
            raise ParamError("netc supports convolution over axis 1 (NCHW) only", param="axis")
        for name in ("pad", "stride", "dilation"):
            if any(v < (1 if name != "pad" else 0) for v in p[name]):
                raise ParamError(f"{name} must be {'at least 1' if name != 'pad' else 'non-negative'}",
                                 param=name)
        if any(v < 1 for v in p["kernel_size"]):
            raise ParamError("kernel_size must be at least 1", param="kernel_size")
        if not p["kernel_size"] and p["kernel_h"] is None:
            raise ParamError(f"{self.type_name} needs a kernel size", "write kernel=5 (or kernel=[5, 3])",
                             param="kernel_size")
        p["kernel"] = spatial_pair(p["kernel_size"], p["kernel_h"], p["kernel_w"], 0, "kernel", "kernel_size")
        p["stride_hw"] = spatial_pair(p["stride"], p["stride_h"], p["stride_w"], 1, "stride")
        p["pad_hw"] = spatial_pair(p["pad"], p["pad_h"], p["pad_w"], 0, "pad")
        p["dilation_hw"] = spatial_pair(p["dilation"], None, None, 1, "dilation")
        if p["num_output"] % p["group"]:
            raise ParamError(f"group ({p['group']}) must divide num_output ({p['num_output']})",
                             param="group")
        return p

    @staticmethod
    def _check_input(p: dict, bottoms) -> tuple[int, int, int, int]:
        shape = bottoms[0]
        if len(shape) != 4:
            raise ShapeError(f"convolution needs a 4-d input (N, C, H, W), got {list(shape)}", bottom=0)
        n, c, h, w = shape
        if c % p["group"]:
            raise ShapeError(f"group ({p['group']}) does not divide the input's {c} channels",
                             "with group g, both the input channels and num_output must be multiples of g",
                             param="group", bottom=0)
        return n, c, h, w

    @staticmethod
    def extent(p: dict) -> tuple[int, int]:
        (kh, kw), (dh, dw) = p["kernel"], p["dilation_hw"]
        return dh * (kh - 1) + 1, dw * (kw - 1) + 1


@register
class Convolution(_ConvolutionBase):
    type_name = "Convolution"
    summary = "2-d convolution: num_output, kernel, stride, pad, dilation, group, bias_term"

    def infer(self, p, bottoms, ntops):
        n, c, h, w = self._check_input(p, bottoms)
        (eh, ew), (sh, sw), (ph, pw) = self.extent(p), p["stride_hw"], p["pad_hw"]
        if h + 2 * ph < eh or w + 2 * pw < ew:
            raise ShapeError(
                f"kernel {eh}x{ew} is larger than the padded input {h + 2 * ph}x{w + 2 * pw}",
                "use a smaller kernel or more padding, or check the layers before it",
                param="kernel_size", bottom=0)
        out_h = (h + 2 * ph - eh) // sh + 1
        out_w = (w + 2 * pw - ew) // sw + 1
        return [(n, p["num_output"], out_h, out_w)] * ntops

    def param_shapes(self, p, bottoms):
        kh, kw = p["kernel"]
        shapes = [(p["num_output"], bottoms[0][1] // p["group"], kh, kw)]
        if p["bias_term"]:
            shapes.append((p["num_output"],))
        return shapes

    def macs(self, p, bottoms, tops):
        kh, kw = p["kernel"]
        n, co, oh, ow = tops[0]
        return n * co * oh * ow * (bottoms[0][1] // p["group"]) * kh * kw


@register
class Deconvolution(_ConvolutionBase):
    type_name = "Deconvolution"
    summary = "transposed convolution (upsampling): the same parameters as Convolution"

    def infer(self, p, bottoms, ntops):
        n, c, h, w = self._check_input(p, bottoms)
        (eh, ew), (sh, sw), (ph, pw) = self.extent(p), p["stride_hw"], p["pad_hw"]
        out_h = sh * (h - 1) + eh - 2 * ph
        out_w = sw * (w - 1) + ew - 2 * pw
        if out_h < 1 or out_w < 1:
            raise ShapeError(f"padding {ph}x{pw} leaves no output ({out_h}x{out_w})",
                             "deconvolution removes 2·pad from its output: use less padding", param="pad")
        return [(n, p["num_output"], out_h, out_w)] * ntops

    def param_shapes(self, p, bottoms):
        kh, kw = p["kernel"]
        shapes = [(bottoms[0][1], p["num_output"] // p["group"], kh, kw)]
        if p["bias_term"]:
            shapes.append((p["num_output"],))
        return shapes

    def macs(self, p, bottoms, tops):
        kh, kw = p["kernel"]
        n, c, h, w = bottoms[0]
        return n * c * h * w * (p["num_output"] // p["group"]) * kh * kw
