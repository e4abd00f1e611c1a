"""BatchNorm (Caffe's: statistics only; γ and β live in a following Scale) and Scale.

BatchNorm keeps three blobs: mean sum [C], variance sum [C], factor s [1]; test uses blob/s.
Scale: y = x·γ (+ β) with γ broadcast over axes axis..axis+num_axes, or γ from a second bottom.
"""
from __future__ import annotations

from netc.ir import Filler
from netc.layers.base import LayerType, Param, ParamError, ShapeError, register


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

    def infer(self, p, bottoms, ntops):
        if len(bottoms[0]) < 2:
            raise ShapeError(f"BatchNorm needs a channel axis, got shape {list(bottoms[0])}", bottom=0)
        return [bottoms[0]]

    def param_shapes(self, p, bottoms):
        c = bottoms[0][1]
        return [(c,), (c,), (1,)]


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
