"""Whole small nets through the float64 gradient checker: layers in combination,
gradients summed over branches, in-place chains, loss weights, shared parameters."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gradcheck import gradcheck  # noqa: E402

LABELS = {"label": np.array([0, 2, 1], dtype=np.float64)}

NETS = {
    "lenet_like": """
input data [3, 1, 10, 10]
input label [3]
conv1: Convolution(4, kernel=3, weight=xavier, bias=0.1)
pool1: Pooling(MAX, kernel=2, stride=2)
conv2: Convolution(5, kernel=3, pad=1, weight=xavier)
pool2: Pooling(AVE, kernel=3, stride=2)
ip1: InnerProduct(6, weight=xavier) ReLU!
ip2: InnerProduct(3, weight=xavier)
loss: SoftmaxWithLoss(ip2, label)
""",
    "alexnet_like": """
input data [3, 4, 13, 13]
input label [3]
conv1: Convolution(6, kernel=3, stride=2, weight=gaussian(std=0.3)) ReLU!
norm1: LRN(local_size=3, alpha=0.5, beta=0.75)
pool1: Pooling(MAX, kernel=3, stride=2)
conv2: Convolution(4, kernel=3, pad=1, group=2, weight=gaussian(std=0.3)) ReLU!
fc: InnerProduct(5, weight=xavier) ReLU! Dropout(0.3)!
out: InnerProduct(3, weight=xavier)
loss: SoftmaxWithLoss(out, label)
""",
    "inception_like": """
module block(a, b) -> [a + b + 2, H, W] {
  one: Convolution(in, a, kernel=1, weight=xavier) ReLU!
  three: Convolution(in, b, kernel=3, pad=1, weight=xavier) ReLU!
  pool: Pooling(in, MAX, kernel=3, stride=1, pad=1)
  proj: Convolution(2, kernel=1, weight=xavier)
  out: Concat(one, three, proj)
}
input data [2, 3, 6, 6]
input label [2]
b1: block(2, 3)
b2: block(1, 2)
gap: Pooling(AVE, global_pooling=true)
ip: InnerProduct(3, weight=xavier)
loss: SoftmaxWithLoss(ip, label)
aux: InnerProduct(b1, 3, weight=xavier)
aux_loss: SoftmaxWithLoss(aux, label, loss_weight=0.3)
""",
    "residual_batchnorm": """
input data [4, 3, 5, 5]
conv: Convolution(3, kernel=3, pad=1, weight=xavier)
bn: BatchNorm()!
sc: Scale(bias_term=true)!
relu: ReLU!
sum: Eltwise(relu, data, SUM, coeff=[1, 0.5])
e: EuclideanLoss(sum, data)
""",
    "shared_and_deconv": """
input data [2, 2, 5, 5]
left: Convolution(data, 3, kernel=3, weight=xavier, share=[w, b])
right: Convolution(data, 3, kernel=3, weight=xavier, share=[w, b])
both: Eltwise(left, right, PROD)
up: Deconvolution(2, kernel=4, stride=2, pad=1, weight=xavier)
flat: Flatten()
halves: Slice(axis=1) -> first, second
s: Sigmoid(first)
t: TanH(second)
""",
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_whole_net_gradients(name, tmp_path):
    feeds = dict(LABELS) if "label" in NETS[name] else {}
    if name == "inception_like":
        feeds = {"label": np.array([1, 2], dtype=np.float64)}
    report = gradcheck(NETS[name], tmp_path, feeds=feeds, samples=12)
    # every learnable blob and the data input were checked
    assert any(key.startswith("input data") for key in report)
    assert len(report) >= 3


def test_the_checker_catches_a_wrong_backward(tmp_path, monkeypatch):
    from netc.layers import REGISTRY
    cls = type(REGISTRY["Pooling"])
    original = cls.backward

    def halved(self, *args, **kwargs):
        bottom, weights = original(self, *args, **kwargs)
        return [None if d is None else d * 0.5 for d in bottom], weights
    monkeypatch.setattr(cls, "backward", halved)
    with pytest.raises(AssertionError, match="analytic"):
        gradcheck(NETS["lenet_like"], tmp_path, feeds=dict(LABELS), samples=12)
