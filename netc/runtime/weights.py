"""The learnable blobs of a net: one list of arrays per layer, in Caffe's order
(weights, then bias; BatchNorm's mean, variance, factor). Layers whose ParamSpec
names agree share the very same array object.
"""
from __future__ import annotations

import numpy as np

from netc.ir import Filler, Net
from netc.runtime.fillers import fill

Weights = dict[str, list[np.ndarray]]


def init_weights(net: Net, seed: int = 0, dtype=np.float32) -> Weights:
    """Fill every learnable blob from its filler, in net order, from one generator."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    shared: dict[str, np.ndarray] = {}
    for layer in net.layers:
        shapes = net.layer_info[layer.name].param_shapes
        if not shapes:
            continue
        blobs = []
        for i, (shape, filler) in enumerate(zip(shapes, _fillers(layer, len(shapes)))):
            name = layer.param_specs[i].name if i < len(layer.param_specs) else None
            if name is not None and name in shared:
                blobs.append(shared[name])
                continue
            array = fill(filler, shape, rng, dtype)
            if name is not None:
                shared[name] = array
            blobs.append(array)
        weights[layer.name] = blobs
    return weights


def _fillers(layer, count: int) -> list[Filler]:
    p = layer.params
    if layer.type == "BatchNorm":
        return [Filler()] * count           # statistics start at zero, as Caffe's
    if layer.type == "Scale":
        # one bottom: [γ] (+ [β]); with the scale as a second bottom only [β]
        fillers = [p["filler"], p["bias_filler"]] if count == 2 or not p["bias_term"] else [p["bias_filler"]]
        return fillers[:count]
    return [p.get("weight_filler", Filler()), p.get("bias_filler", Filler())][:count]
