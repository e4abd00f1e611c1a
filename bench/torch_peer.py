"""PyTorch as the peer in the CPU benchmarks: it runs a netc IR with the same weights.

Each layer type maps to the torch.nn.functional call with Caffe's semantics
(ceil-mode pooling with padding counted in AVE, LocalResponseNorm across channels),
so the benchmark can also check that both give the same outputs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _pool(x, p, out_hw):
    if p["global_pooling"]:
        return F.max_pool2d(x, x.shape[2:]) if p["pool"] == "MAX" else F.avg_pool2d(x, x.shape[2:])
    kernel, stride, pad = p["kernel"], p["stride_hw"], p["pad_hw"]
    if p["pool"] == "MAX":
        y = F.max_pool2d(x, kernel, stride, pad, ceil_mode=p["round_mode"] == "CEIL")
    else:
        y = F.avg_pool2d(x, kernel, stride, pad, ceil_mode=p["round_mode"] == "CEIL", count_include_pad=True)
    assert tuple(y.shape[2:]) == tuple(out_hw), (y.shape, out_hw)   # Caffe's and torch's rounding agree here
    return y


class TorchNet:
    """Runs the layers of a netc Net in order with torch; `params` are leaf tensors."""

    def __init__(self, net, weights, requires_grad=False):
        self.net = net
        self.params = {name: [torch.tensor(np.asarray(w), requires_grad=requires_grad) for w in blobs]
                       for name, blobs in weights.items()}

    def forward(self, feeds: dict) -> dict:
        blobs = {k: torch.as_tensor(v) for k, v in feeds.items()}
        losses = []
        for layer in self.net.layers:
            if not layer.bottoms:
                continue
            p, t = layer.params, layer.type
            x = [blobs[b] for b in layer.bottoms]
            w = self.params.get(layer.name, [])
            out_shape = self.net.blob_shapes[layer.tops[0]] if layer.tops else None
            if t == "Convolution":
                y = F.conv2d(x[0], w[0], w[1] if p["bias_term"] else None, p["stride_hw"], p["pad_hw"],
                             p["dilation_hw"], p["group"])
            elif t == "Pooling":
                y = _pool(x[0], p, out_shape[2:])
            elif t == "LRN":
                y = F.local_response_norm(x[0], p["local_size"], p["alpha"], p["beta"], p["k"])
            elif t == "ReLU":
                y = F.leaky_relu(x[0], p["negative_slope"]) if p["negative_slope"] else F.relu(x[0])
            elif t == "InnerProduct":
                flat = x[0].reshape(x[0].shape[0], -1)
                y = F.linear(flat, w[0], w[1] if p["bias_term"] else None)
            elif t == "Dropout":
                y = x[0]      # inference, or a deterministic training comparison
            elif t == "Softmax":
                y = F.softmax(x[0], dim=p["axis"])
            elif t == "Concat":
                y = torch.cat(x, dim=p["axis"])
            elif t == "SoftmaxWithLoss":
                y = F.cross_entropy(x[0], x[1].long())
                losses.append(y)
            elif t == "Accuracy":
                continue
            else:
                raise NotImplementedError(t)
            blobs[layer.tops[0]] = y
        self.losses = losses
        return blobs
