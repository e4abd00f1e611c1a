"""An independent float64 forward pass, for checking the runtime end to end.

Written from Caffe's definitions (shared/caffe_semantics.md), deliberately plain:
convolution as a sum over kernel offsets, pooling window by window with Caffe's
clipping, LRN by its definition. It shares no code with netc's layers; it only
reads their parameters from the IR.
"""
from __future__ import annotations

import numpy as np


def conv2d(x, w, b, stride, pad, dilation, group):
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    out = np.zeros((n, co, oh, ow))
    per_group = co // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * per_group:(g + 1) * per_group]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                out[:, g * per_group:(g + 1) * per_group] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def pool2d(x, method, kernel, stride, pad, out_hw):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh, ow = out_hw
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            size = (he - hs) * (we - ws)          # Caffe's AVE divisor: padding counts, overhang not
            hs0, ws0, he0, we0 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs0:he0, ws0:we0]
            if method == "MAX":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / size
    return out


def lrn_across(x, n, alpha, beta, k):
    c = x.shape[1]
    half = (n - 1) // 2
    sq = x * x
    scale = np.full_like(x, k)
    for ch in range(c):
        lo, hi = max(0, ch - half), min(c, ch + half + 1)
        scale[:, ch] += alpha / n * sq[:, lo:hi].sum(axis=1)
    return x * scale ** -beta


def forward(net, weights, feeds) -> dict:
    blobs = {name: np.asarray(v, np.float64) for name, v in feeds.items()}
    for layer in net.layers:
        p, t = layer.params, layer.type
        if not layer.bottoms:
            continue
        x = [blobs[b] for b in layer.bottoms]
        w = [np.asarray(a, np.float64) for a in weights.get(layer.name, [])]
        out_shape = net.blob_shapes[layer.tops[0]] if layer.tops else None
        if t == "Convolution":
            y = conv2d(x[0], w[0], w[1] if p["bias_term"] else None, p["stride_hw"], p["pad_hw"],
                       p["dilation_hw"], p["group"])
        elif t == "Pooling":
            if p["global_pooling"]:
                kernel, stride, pad = x[0].shape[2:], (1, 1), (0, 0)
            else:
                kernel, stride, pad = p["kernel"], p["stride_hw"], p["pad_hw"]
            y = pool2d(x[0], p["pool"], kernel, stride, pad, out_shape[2:])
        elif t == "LRN":
            assert p["norm_region"] == "ACROSS_CHANNELS"
            y = lrn_across(x[0], p["local_size"], p["alpha"], p["beta"], p["k"])
        elif t == "ReLU":
            y = np.where(x[0] > 0, x[0], p["negative_slope"] * x[0])
        elif t == "InnerProduct":
            flat = x[0].reshape(int(np.prod(x[0].shape[:p["axis"]])), -1)
            wm = w[0].T if p["transpose"] else w[0]
            y = (flat @ wm.T + (w[1] if p["bias_term"] else 0)).reshape(out_shape)
        elif t == "Dropout":
            assert net.phase == "test"
            y = x[0]
        elif t == "Softmax":
            e = np.exp(x[0] - x[0].max(axis=p["axis"], keepdims=True))
            y = e / e.sum(axis=p["axis"], keepdims=True)
        elif t == "Concat":
            y = np.concatenate(x, axis=p["axis"])
        elif t == "Flatten":
            y = x[0].reshape(out_shape)
        else:
            raise NotImplementedError(t)
        blobs[layer.tops[0]] = y
    return blobs


def max_relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
