"""Backends: where arrays live and which array module computes on them.

A layer's forward and backward are written once, against `ctx.xp` (NumPy's API);
a backend supplies that module. The NumPy backend is the reference; the CuPy
backend (later) supplies cupy and may bind hand-written kernels per layer type.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Backend:
    name: str
    xp: object   # the array module: numpy or cupy

    def asarray(self, array, dtype):
        return self.xp.asarray(array, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array)


NUMPY = Backend("cpu", np)


@dataclass
class RunContext:
    """What a layer's forward/backward may use besides its inputs: the array module,
    the phase (Dropout and BatchNorm differ), the dtype and the one seeded generator."""
    backend: Backend
    phase: str
    dtype: type
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    @property
    def xp(self):
        return self.backend.xp

    @property
    def train(self) -> bool:
        return self.phase == "train"
