"""Caffe's fillers: how learnable blobs start. One seeded generator drives them all,
so the same seed gives the same weights bit for bit.

  constant   value
  uniform    U[min, max]
  gaussian   N(mean, std²)
  xavier     U[−√(3/n), √(3/n)]      n = fan_in (default), fan_out or their average
  msra       N(0, 2/n)
  bilinear   the bilinear-upsampling kernel, for Deconvolution
  positive_unitball  U[0, 1], each output's row scaled to sum to 1
Caffe's fan_in is count/shape[0] and fan_out count/shape[1]: for a Deconvolution
weight [C_in, C_out/g, kh, kw] that is (C_out/g)·kh·kw, as Caffe computes it.
"""
from __future__ import annotations

import math

import numpy as np

from netc.ir import Filler


def _fan(filler: Filler, shape: tuple[int, ...]) -> float:
    count = math.prod(shape)
    fan_in = count / shape[0]
    fan_out = count / shape[1] if len(shape) > 1 else count
    if filler.variance_norm == "FAN_OUT":
        return fan_out
    if filler.variance_norm == "AVERAGE":
        return (fan_in + fan_out) / 2
    return fan_in


def fill(filler: Filler, shape: tuple[int, ...], rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    kind = filler.type
    if kind == "constant":
        return np.full(shape, filler.value, dtype=dtype)
    if kind == "uniform":
        return rng.uniform(filler.min, filler.max, size=shape).astype(dtype)
    if kind == "gaussian":
        out = rng.normal(filler.mean, filler.std, size=shape).astype(dtype)
        if filler.sparse >= 0:
            # Caffe keeps each weight with probability sparse / shape[0]
            out *= rng.random(size=shape) < filler.sparse / shape[0]
        return out
    if kind == "xavier":
        limit = math.sqrt(3.0 / _fan(filler, shape))
        return rng.uniform(-limit, limit, size=shape).astype(dtype)
    if kind == "msra":
        return rng.normal(0.0, math.sqrt(2.0 / _fan(filler, shape)), size=shape).astype(dtype)
    if kind == "bilinear":
        return _bilinear(shape).astype(dtype)
    if kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, size=shape)
        rows = out.reshape(shape[0], -1)
        rows /= rows.sum(axis=1, keepdims=True)
        return out.astype(dtype)
    raise ValueError(f"unknown filler {kind}")


def _bilinear(shape: tuple[int, ...]) -> np.ndarray:
    """Caffe's BilinearFiller: f = ceil(k/2), c = (2f − 1 − f mod 2)/(2f),
    w(x, y) = (1 − |x/f − c|)(1 − |y/f − c|), the same for every channel pair."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError("the bilinear filler needs a square 4-d kernel")
    k = shape[3]
    f = math.ceil(k / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - np.abs(np.arange(k) / f - c)
    return np.broadcast_to(np.outer(ramp, ramp), shape).copy()
