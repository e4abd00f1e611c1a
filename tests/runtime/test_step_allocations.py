"""A step runs inside the arena: after a warm-up, no layer call of a forward or a
backward allocates memory of an activation's size (tracemalloc, which NumPy reports
its arrays to), and every piece of scratch and of kept state fits the room the memory
plan gave its layer (the layer types' workspace_bytes and kept_bytes are right).

What may still be allocated: arrays of a channel's or a row's size (a bias gradient, a
softmax's row maxima), NumPy's own buffers for a ufunc over non-contiguous arrays
(8192 values per operand, whatever the arrays' sizes) and Python objects; the limit
below is under every large blob of these nets, so an activation-sized temporary fails."""
from __future__ import annotations

import os

import numpy as np
import pytest

from netc.compile import build_ir
from netc.passes.shapes import batch_overrides, infer_shapes
from netc.runtime.alloc_trace import trace_step
from netc.runtime.executor import Executor
from netc.runtime.verify import random_input
from netc.runtime.weights import init_weights

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "caffe_models")

LIMIT = 160 << 10      # bytes one layer call may allocate

# Every layer type that runs in a step, at sizes where each blob is well over LIMIT.
EVERY_LAYER = """
input data [16, 16, 32, 32]
input label [16]
conv: Convolution(data, 16, kernel=3, pad=1, weight=xavier) ReLU!
bn: BatchNorm()
sc: Scale(bias_term=true)
added: Eltwise(sc, data, SUM, coeff=[1, 0.5])
product: Eltwise(added, data, PROD)
larger: Eltwise(product, added, MAX)
lrn: LRN(larger, local_size=5, alpha=0.1, beta=0.75)
within: LRN(local_size=3, alpha=0.1, beta=0.75, norm_region=WITHIN_CHANNEL)
leaky: ReLU(0.1)
pool: Pooling(MAX, kernel=3, stride=2)
ave: Pooling(AVE, kernel=3, stride=1, pad=1)
grouped: Convolution(16, kernel=3, pad=1, group=4, weight=xavier)
up: Deconvolution(8, kernel=4, stride=2, pad=1, weight=xavier)
halves: Slice(axis=1) -> first, second
s: Sigmoid(first)
t: TanH(second)
cat: Concat(s, t)
drop: Dropout(0.3)!
flat: Flatten()
fc: InnerProduct(64, weight=xavier) ReLU!
out: InnerProduct(10, weight=xavier)
loss: SoftmaxWithLoss(out, label)
prob: Softmax(out)
other: InnerProduct(fc, 10, weight=xavier)
e: EuclideanLoss(prob, other)
shaped: Reshape(other, shape=[16, 2, 5])
flat2: Flatten(shaped)
x: SigmoidCrossEntropyLoss(flat2, prob)
top1: Accuracy(out, label)
"""


def _net_from_text(text: str, phase: str, tmp_path):
    path = tmp_path / "net.net"
    path.write_text(text)
    return infer_shapes(build_ir(str(path), phase))


def _at_batch(path: str, phase: str, batch: int):
    ir = build_ir(path, phase)
    return infer_shapes(ir, batch_overrides(infer_shapes(ir), batch))


def _check_step(net, train: bool):
    ex = Executor(net, init_weights(net, 0, np.float32))
    rng = np.random.default_rng(0)
    feeds = {t: random_input(net, t, rng) for t in ex.feeds_needed()}

    def step():
        ex.forward(feeds)
        if train:
            ex.backward()

    step()                    # the warm-up makes the thread pool and the per-thread slots
    ex.unplanned.clear()
    trace = trace_step(ex, step)
    assert ex.unplanned == {}, "scratch outside the room the plan gave it"
    over = [c for c in trace.calls if c[0] > LIMIT]
    assert not over, f"layer calls allocating beyond the arena: {trace.describe(8)}"
    return trace


NETS = [
    ("lenet.net", "train", 64),
    ("lenet.net", "test", 100),
    ("alexnet.net", "train", 2),
    ("alexnet.net", "test", 1),
    ("googlenet.net", "train", 2),
    ("nin.net", "train", 2),
    ("cifar10_quick.net", "train", 16),
]


@pytest.mark.parametrize("name,phase,batch", NETS)
def test_a_step_of_a_real_net_allocates_nothing_of_an_activations_size(name, phase, batch):
    _check_step(_at_batch(os.path.join(ROOT, "nets", name), phase, batch), phase == "train")


@pytest.mark.parametrize("phase", ["train", "test"])
def test_every_layer_type_runs_in_its_planned_room(phase, tmp_path):
    _check_step(_net_from_text(EVERY_LAYER, phase, tmp_path), phase == "train")


def test_the_check_catches_a_temporary(tmp_path, monkeypatch):
    """A layer that makes an activation-sized temporary fails the check."""
    from netc.layers import REGISTRY
    cls = type(REGISTRY["TanH"])
    original = cls.forward

    def wasteful(self, p, bottoms, weights, ctx, state):
        waste = bottoms[0] * 2          # a temporary of the input's size
        del waste
        return original(self, p, bottoms, weights, ctx, state)

    monkeypatch.setattr(cls, "forward", wasteful)
    with pytest.raises(AssertionError, match="allocating beyond the arena"):
        _check_step(_net_from_text(EVERY_LAYER, "test", tmp_path), False)
