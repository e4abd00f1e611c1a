"""Runs a checked net: forward in order, backward in reverse. Knows no layer in
particular: each layer type's forward and backward come from the registry.

Loss: every top with a non-zero loss weight adds weight·Σtop (Caffe's rule; a loss
layer's weight defaults to 1). Backward seeds each such top's gradient with its
weight and sums the gradients of a blob read by several layers (Caffe's Split).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from netc.errors import NetcError
from netc.ir import Net
from netc.layers import REGISTRY
from netc.runtime.backend import NUMPY, Backend, RunContext
from netc.runtime.threads import keep_freed_memory
from netc.runtime.weights import Weights


def _located(err: NetcError, layer) -> NetcError:
    """A layer cannot see its source span; a run-time error it raises is placed here."""
    if err.span is not None:
        return err
    return NetcError(f"{layer.type} '{layer.name}': {err.message}", layer.span, err.hint, layer.trace)


def _sum_shared(grads: dict[str, list], weights: dict[str, list]) -> dict[str, list]:
    """A blob shared by name gets the sum of its users' gradients, given to each of them."""
    users: dict[int, list[tuple[str, int]]] = {}
    for name, diffs in grads.items():
        for i, d in enumerate(diffs):
            if d is not None:
                users.setdefault(id(weights[name][i]), []).append((name, i))
    for places in users.values():
        if len(places) > 1:
            first, rest = places[0], places[1:]
            total = grads[first[0]][first[1]]
            for n, i in rest:
                total = total + grads[n][i]
            for n, i in places:
                grads[n][i] = total
    return grads


def loss_weights(net: Net) -> dict[tuple[str, int], float]:
    """(layer, top index) → its weight in the total loss, for the non-zero ones."""
    out = {}
    for layer in net.layers:
        spec = REGISTRY[layer.type]
        for i, _ in enumerate(layer.tops):
            if i < len(layer.loss_weight):
                w = layer.loss_weight[i]
            else:
                w = spec.default_loss_weight() if i == 0 else 0.0
            if w:
                out[(layer.name, i)] = w
    return out


@dataclass
class _Record:
    """What one layer's forward saw and kept, for its backward."""
    bottoms: list
    tops: list
    state: dict = field(default_factory=dict)


class Executor:
    def __init__(self, net: Net, weights: Weights, backend: Backend = NUMPY, dtype=np.float32, seed: int = 0):
        self.net = net
        self.backend = backend
        if backend.xp is np:   # every pass frees and re-makes its arrays: keep the pages (no faults)
            keep_freed_memory()
        self.dtype = dtype
        self.ctx = RunContext(backend, net.phase, dtype, np.random.default_rng(seed))
        self.weights = {name: [backend.asarray(w, dtype) for w in blobs] for name, blobs in weights.items()}
        self.loss_weights = loss_weights(net)
        self.blobs: dict = {}
        self.records: dict[str, _Record] = {}
        self.loss = 0.0
        self.diffs: dict = {}
        # also compute gradients of blobs nothing learnable depends on (the inputs): for gradient checks
        self.force_backward = False
        self._learning_layers, self._learned_blobs = self._depends_on_weights()
        # layer name → seconds spent in its forward and backward, when profiling (bench/)
        self.profile: dict[str, float] | None = None

    def feeds_needed(self) -> list[str]:
        """The blobs a forward pass must be given: Input tops and data-source tops."""
        return [t for l in self.net.layers if not l.bottoms and l.type != "DummyData" for t in l.tops]

    def forward(self, feeds: dict) -> dict:
        """Run every layer; returns the final value of every blob."""
        xp, ctx = self.backend.xp, self.ctx
        self.blobs, self.records, self.loss = {}, {}, 0.0
        for layer in self.net.layers:
            spec = REGISTRY[layer.type]
            if not layer.bottoms and layer.type != "DummyData":
                tops = [self._feed(feeds, top, layer) for top in layer.tops]
                state: dict = {}
            else:
                bottoms = [self.blobs[b] for b in layer.bottoms]
                state = {"ntops": len(layer.tops)}
                tops = self._call(layer, spec.forward, dict(layer.params), bottoms,
                                  self.weights.get(layer.name, []), ctx, state)
                self.records[layer.name] = _Record(bottoms, tops, state)
            for i, (name, value) in enumerate(zip(layer.tops, tops)):
                self.blobs[name] = value
                w = self.loss_weights.get((layer.name, i))
                if w:
                    self.loss += w * float(xp.sum(value))
        return self.blobs

    def _feed(self, feeds: dict, top: str, layer):
        if top not in feeds:
            raise NetcError(f"no data for input '{top}'", layer.span,
                            f"the net needs: {', '.join(self.feeds_needed())}")
        value = self.backend.asarray(feeds[top], self.dtype)
        want = self.net.blob_shapes[top]
        if tuple(value.shape) != tuple(want):
            raise NetcError(f"input '{top}' has shape {list(value.shape)}, the net expects {list(want)}",
                            layer.span, "give data of the checked shape, or check with --input to match it")
        return value

    def backward(self, seeds: dict | None = None) -> dict[str, list]:
        """Gradients of the loss: returns ∂loss/∂w per layer (None for blobs without one).
        `seeds` adds ∂objective/∂blob for blobs' final values (an objective beyond the
        net's own losses). Blobs' gradients are left in self.diffs."""
        xp = self.backend.xp
        diffs: dict = {name: self.backend.asarray(d, self.dtype) for name, d in (seeds or {}).items()}
        for (layer_name, i), w in self.loss_weights.items():
            layer = self.net.layer(layer_name)
            top = layer.tops[i]
            seed = xp.full(self.net.blob_shapes[top], w, dtype=self.dtype)
            diffs[top] = diffs[top] + seed if top in diffs else seed
        grads: dict[str, list] = {}
        for layer in reversed(self.net.layers):
            if layer.name not in self.records:
                continue
            if not (self.force_backward or layer.name in self._learning_layers):
                continue
            record = self.records[layer.name]
            top_diffs = [diffs.pop(t, None) for t in layer.tops]
            if all(d is None for d in top_diffs):
                continue
            top_diffs = [d if d is not None else xp.zeros_like(v) for d, v in zip(top_diffs, record.tops)]
            spec = REGISTRY[layer.type]
            need = [self._blob_needs_gradient(b) for b in layer.bottoms]
            bottom_diffs, weight_diffs = self._call(layer, spec.backward, dict(layer.params), record.bottoms,
                                                    record.tops, top_diffs, self.weights.get(layer.name, []),
                                                    self.ctx, record.state, need)
            for name, diff in zip(layer.bottoms, bottom_diffs):
                if diff is not None:
                    diffs[name] = diffs[name] + diff if name in diffs else diff
            if self.weights.get(layer.name):
                grads[layer.name] = list(weight_diffs)
        self.diffs = diffs
        return _sum_shared(grads, self.weights)

    def _call(self, layer, method, *args):
        """A layer's forward or backward: a run-time NetcError it raises is located at
        the layer, and its time is added to the profile when profiling."""
        started = time.perf_counter() if self.profile is not None else 0.0
        try:
            return method(*args)
        except NetcError as err:
            raise _located(err, layer) from None
        finally:
            if self.profile is not None:
                self.profile[layer.name] = self.profile.get(layer.name, 0.0) + time.perf_counter() - started

    def _depends_on_weights(self) -> tuple[set[str], set[str]]:
        """The layers that have weights or read something computed from them, and the
        blobs those write: only they need backward (Caffe's need_backward), so an
        inference-only prefix, such as the data layers, is skipped."""
        layers: set[str] = set()
        blobs: set[str] = set()
        for layer in self.net.layers:
            if self.weights.get(layer.name) or any(b in blobs for b in layer.bottoms):
                layers.add(layer.name)
                blobs.update(layer.tops)
        return layers, blobs

    def _blob_needs_gradient(self, blob: str) -> bool:
        return self.force_backward or blob in self._learned_blobs
