"""Local response normalisation (AlexNet), Caffe's two regions.

ACROSS_CHANNELS: y = x · (k + α/n · Σ x²)^(−β), the sum over the n channels centred on c (zero outside).
WITHIN_CHANNEL:  y = x · (1 + α/n² · Σ x²)^(−β), the sum over the n×n spatial window (zero-padded).
"""
from __future__ import annotations

from netc.layers.base import LayerType, Param, ParamError, ShapeError, register


@register
class LRN(LayerType):
    type_name = "LRN"
    summary = "local response normalisation: local_size, alpha, beta, k, norm_region"
    params = (
        Param("local_size", "int", 5, minimum=1, aliases=("size",)),
        Param("alpha", "float", 1.0, minimum=0),
        Param("beta", "float", 0.75),
        Param("norm_region", "enum", "ACROSS_CHANNELS", choices=("ACROSS_CHANNELS", "WITHIN_CHANNEL"),
              aliases=("region",)),
        Param("k", "float", 1.0),
    )
    message = "lrn_param"

    def normalize(self, p):
        if p["local_size"] % 2 == 0:
            raise ParamError(f"local_size must be odd (Caffe centres the window), not {p['local_size']}",
                             param="local_size")
        return p

    def infer(self, p, bottoms, ntops):
        if len(bottoms[0]) != 4:
            raise ShapeError(f"LRN needs a 4-d input (N, C, H, W), got {list(bottoms[0])}", bottom=0)
        return [bottoms[0]]
