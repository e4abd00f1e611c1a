"""Convolution and Deconvolution running: forward against direct float64 loops written
from the definitions, backward by gradcheck over a grid (odd sizes, stride > kernel,
padding, groups, dilation, rectangular kernels, batch 1, no bias; im2col + GEMM and
Winograd's algorithm), and PyTorch's conv2d / conv_transpose2d where it is installed."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gradcheck import build_executor as build, gradcheck  # noqa: E402

from netc.layers import conv  # noqa: E402
from netc.layers.im2col import Geometry, col2im, im2col  # noqa: E402
from netc.runtime.executor import Executor  # noqa: E402




def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def naive_conv(x, w, b, stride, pad, dilation, group):
    """y[n, o, i, j] = Σ_{c in o's group, u, v} x[n, c, i·sh − ph + u·dh, j·sw − pw + v·dw]·w[o, c, u, v] + b[o],
    zero outside the image; one output pixel at a time."""
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    y = np.zeros((n, co, oh, ow))
    per = co // group
    for o in range(co):
        g = o // per
        for i in range(oh):
            for j in range(ow):
                total = np.zeros(n)
                for ci in range(cg):
                    for u in range(kh):
                        for v in range(kw):
                            r, s = i * sh - ph + u * dh, j * sw - pw + v * dw
                            if 0 <= r < h and 0 <= s < wd:
                                total += x[:, g * cg + ci, r, s] * w[o, ci, u, v]
                y[:, o, i, j] = total + (b[o] if b is not None else 0.0)
    return y


def naive_deconv(x, w, b, stride, pad, dilation, group):
    """The transposed convolution by scattering: every input pixel adds x·w[c, o, u, v] to
    output pixel (i·sh − ph + u·dh, j·sw − pw + v·dw) of each output channel of its group."""
    n, cin, h, wd = x.shape
    _, og, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph
    ow = sw * (wd - 1) + dw * (kw - 1) + 1 - 2 * pw
    co = og * group
    y = np.zeros((n, co, oh, ow))
    cg = cin // group
    for c in range(cin):
        g = c // cg
        for i in range(h):
            for j in range(wd):
                for o in range(og):
                    for u in range(kh):
                        for v in range(kw):
                            r, s = i * sh - ph + u * dh, j * sw - pw + v * dw
                            if 0 <= r < oh and 0 <= s < ow:
                                y[:, g * og + o, r, s] += x[:, c, i, j] * w[c, o, u, v]
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def layer_text(kind, num, kernel, stride=1, pad=0, dilation=1, group=1, bias=True):
    def lst(v):
        return str(list(v)) if isinstance(v, (tuple, list)) else str(v)
    return (f"{kind}({num}, kernel={lst(kernel)}, stride={lst(stride)}, pad={lst(pad)}, dilation={dilation}, "
            f"group={group}, bias_term={str(bias).lower()}, weight=gaussian(std=1), bias=gaussian(std=1))")


# shape, num_output, kernel, stride, pad, dilation, group, bias
CASES = [
    ((2, 4, 7, 7), 6, 3, 2, 1, 2, 2, True),
    ((1, 3, 6, 5), 4, (3, 2), (2, 1), (0, 1), 1, 1, True),
    ((2, 2, 9, 8), 3, 2, 3, 0, 1, 1, True),          # stride > kernel
    ((2, 6, 4, 5), 4, 1, 1, 0, 1, 2, False),         # 1×1 (no im2col), groups, no bias
    ((3, 3, 5, 7), 3, (1, 3), (2, 2), (1, 2), (2), 3, True),  # depthwise-like, rectangular
    ((2, 1, 34, 33), 2, 3, 1, 0, 1, 1, True),        # a large map: one GEMM per image
    ((1, 2, 4, 4), 2, 4, 1, 2, 1, 1, True),          # kernel = image, pad
]

# Cases the layer runs by Winograd's algorithm (netc.layers.winograd: stride 1, at least
# 8 input channels per group, enough tiles × batch); test_winograd_cases_take_that_path
# makes sure they still do.
WINOGRAD_CASES = [
    ((36, 8, 12, 12), 5, 5, 1, 0, 1, 1, True),       # LeNet's conv2 in small: F(4×4, 5×5)
    ((24, 16, 11, 13), 6, 3, 1, 1, 1, 2, True),      # odd sizes: tiles overhang, groups
    ((24, 8, 9, 10), 4, (3, 5), 1, (1, 2), 1, 1, False),  # rectangular kernel, no bias
    ((36, 8, 9, 9), 4, 2, 1, 0, 1, 1, True),         # an even kernel
    ((1, 8, 72, 72), 3, 3, 1, 1, 1, 1, True),        # batch 1, many tiles
    ((16, 8, 10, 10), 4, 7, 1, 3, 1, 1, True),       # 7×7: F(2×2, 7×7), 8 points
]

DECONV_CASES = [
    ((2, 4, 3, 4), 6, 3, 2, 1, 1, 2, True),
    ((1, 3, 4, 3), 4, (3, 2), (2, 3), (1, 0), 1, 1, True),
    ((2, 2, 3, 3), 2, 2, 3, 0, 2, 2, False),         # stride > kernel, dilation
    ((2, 6, 3, 5), 4, 1, 1, 0, 1, 2, True),          # 1×1
    ((1, 2, 2, 2), 3, 4, 2, 1, 1, 1, True),          # FCN-style upsampling ×2
]


def weights_of(ex, name):
    return [np.array(w) for w in ex.weights[name]]


def check_forward(tmp_path, kind, case, seed, naive):
    """One `kind` layer's forward against naive(x, w, b, stride, pad, dilation, group):
    float64 to rounding, float32 within 1e-4 of the largest value."""
    shape, num, kernel, stride, pad, dil, group, bias = case
    ex = build(f"input data {list(shape)}\nl: {layer_text(kind, num, kernel, stride, pad, dil, group, bias)}\n",
               tmp_path)
    x = np.random.default_rng(seed).normal(size=shape)
    w, *b = weights_of(ex, "l")
    want = naive(x, w, b[0] if b else None, pair(stride), pair(pad), pair(dil), group)
    got = np.array(ex.forward({"data": x})["l"])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
    ex32 = Executor(ex.net, {"l": [w] + b}, dtype=np.float32)
    got32 = np.array(ex32.forward({"data": x})["l"])
    assert got32.dtype == np.float32
    assert np.abs(got32 - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("case", CASES + WINOGRAD_CASES)
def test_convolution_forward_matches_direct_loops(tmp_path, case):
    check_forward(tmp_path, "Convolution", case, 1, naive_conv)


@pytest.mark.parametrize("case", DECONV_CASES)
def test_deconvolution_forward_matches_scatter_loops(tmp_path, case):
    check_forward(tmp_path, "Deconvolution", case, 2, naive_deconv)


@pytest.mark.parametrize("case", CASES + WINOGRAD_CASES)
def test_convolution_gradcheck(tmp_path, case):
    shape, num, kernel, stride, pad, dil, group, bias = case
    gradcheck(f"input data {list(shape)}\nc: {layer_text('Convolution', num, kernel, stride, pad, dil, group, bias)}\n",
              tmp_path)


@pytest.mark.parametrize("case", DECONV_CASES)
def test_deconvolution_gradcheck(tmp_path, case):
    shape, num, kernel, stride, pad, dil, group, bias = case
    gradcheck(f"input data {list(shape)}\nd: {layer_text('Deconvolution', num, kernel, stride, pad, dil, group, bias)}\n",
              tmp_path)


@pytest.mark.parametrize("case", CASES + WINOGRAD_CASES)
def test_winograd_cases_take_that_path(case):
    shape, num, kernel, stride, pad, dil, group, bias = case
    n, c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pair(kernel), pair(stride), pair(pad), pair(dil)
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    geo = Geometry(c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    assert (conv._layout(geo, n, num, groups=group) == "W") == (case in WINOGRAD_CASES)


def test_gradcheck_conv_then_deconv(tmp_path):
    gradcheck("input data [2, 3, 6, 6]\n"
              "c: Convolution(4, kernel=3, stride=2, pad=1, weight=gaussian(std=1))\n"
              "d: Deconvolution(3, kernel=2, stride=2, weight=gaussian(std=1))\n", tmp_path)


def test_weight_gradient_accumulates_over_the_batch(tmp_path):
    """∂/∂w of Σ y over a batch of two equals the sum of the single-image gradients."""
    text = "input data [{n}, 2, 5, 5]\nc: Convolution(3, kernel=3, stride=2, pad=1, weight=gaussian(std=1))\n"
    x = np.random.default_rng(3).normal(size=(2, 2, 5, 5))
    both = build(text.format(n=2), tmp_path)
    both.forward({"data": x})
    g2 = both.backward(seeds={"c": np.ones((2, 3, 3, 3))})["c"]
    singles = []
    for k in range(2):
        one = build(text.format(n=1), tmp_path)
        one.weights = {"c": [np.array(w) for w in both.weights["c"]]}
        one.forward({"data": x[k:k + 1]})
        singles.append(one.backward(seeds={"c": np.ones((1, 3, 3, 3))})["c"])
    for i in range(2):
        np.testing.assert_allclose(g2[i], singles[0][i] + singles[1][i], rtol=1e-12, atol=1e-12)
    # by hand: ∂Σy/∂b[o] is the number of output pixels over the batch
    np.testing.assert_allclose(g2[1], np.full(3, 2 * 9.0))


def test_inputs_are_not_modified(tmp_path):
    built = build("input data [2, 2, 5, 5]\nc: Convolution(2, kernel=3, pad=1, weight=gaussian(std=1))\n"
                  "d: Deconvolution(2, kernel=3, stride=2, weight=gaussian(std=1))\n", tmp_path)
    # every blob its own array: in the arena the backward rightly reuses the blobs' memory
    ex = Executor(built.net, built.weights, dtype=np.float64, memory="separate")
    ex.force_backward = True
    x = np.random.default_rng(4).normal(size=(2, 2, 5, 5))
    ex.forward({"data": x})
    before = {k: np.array(v).copy() for k, v in ex.blobs.items()}
    wbefore = {k: [np.array(w).copy() for w in ws] for k, ws in ex.weights.items()}
    ex.backward(seeds={"d": np.ones(ex.net.blob_shapes["d"])})
    for k, v in before.items():
        np.testing.assert_array_equal(np.array(ex.blobs[k]), v)
    for k, ws in wbefore.items():
        for a, b in zip(ex.weights[k], ws):
            np.testing.assert_array_equal(np.array(a), b)


def test_im2col_col2im_are_adjoint():
    """<im2col(x), c> = <x, col2im(c)> in both layouts, with padding, stride and dilation."""
    rng = np.random.default_rng(5)
    g = Geometry(c=3, h=7, w=6, kh=3, kw=2, sh=2, sw=1, ph=1, pw=2, dh=2, dw=3, oh=3, ow=4)
    x = rng.normal(size=(2, 3, 7, 6))
    for layout in ("N", "C"):
        col = im2col(np, x, g, layout)
        c = rng.normal(size=col.shape)
        assert np.isclose(np.sum(col * c), np.sum(x * col2im(np, c, g, 2, layout)))
    # and one entry by hand: window (oh=1, ow=2), offset (i=1, j=1) reads x[., ., 1·2−1+1·2, 2·1−2+1·3] = x[., ., 3, 3]
    col = im2col(np, x, g, "N")
    np.testing.assert_array_equal(col[:, :, 1, 1, 1, 2], x[:, :, 3, 3])
    assert np.all(col[:, :, 0, 0, 0, 0] == 0)   # row −1, column −2: padding


def compare_with_torch(torch, tmp_path, kind, case, seed, torch_op):
    """Forward and every gradient of one `kind` layer against torch_op(x, w, b), in
    float64 and float32."""
    shape, num, kernel, stride, pad, dil, group, bias = case
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        ex = build(f"input data {list(shape)}\nl: {layer_text(kind, num, kernel, stride, pad, dil, group, bias)}\n",
                   tmp_path, dtype=dtype)
        rng = np.random.default_rng(seed)
        x = rng.normal(size=shape).astype(dtype)
        y = np.array(ex.forward({"data": x})["l"])
        dy = rng.normal(size=y.shape).astype(dtype)
        grads = ex.backward(seeds={"l": dy})["l"]
        w, *b = weights_of(ex, "l")
        tx = torch.tensor(x, requires_grad=True)
        tw = torch.tensor(w, requires_grad=True)
        tb = torch.tensor(b[0], requires_grad=True) if b else None
        ty = torch_op(tx, tw, tb)
        ty.backward(torch.tensor(dy))
        pairs = [(y, ty), (ex.diffs["data"], tx.grad), (grads[0], tw.grad)] + ([(grads[1], tb.grad)] if b else [])
        for ours, theirs in pairs:
            theirs = theirs.detach().numpy()
            assert np.array(ours).dtype == dtype
            assert np.abs(np.array(ours) - theirs).max() <= tol * max(np.abs(theirs).max(), 1.0)


@pytest.mark.optional
@pytest.mark.parametrize("case", CASES + WINOGRAD_CASES)
def test_convolution_matches_torch(tmp_path, case):
    torch = pytest.importorskip("torch")
    _, _, _, stride, pad, dil, group, _ = case
    compare_with_torch(torch, tmp_path, "Convolution", case, 6, lambda x, w, b: torch.nn.functional.conv2d(
        x, w, b, pair(stride), pair(pad), pair(dil), group))


@pytest.mark.optional
@pytest.mark.parametrize("case", DECONV_CASES)
def test_deconvolution_matches_torch(tmp_path, case):
    torch = pytest.importorskip("torch")
    _, _, _, stride, pad, dil, group, _ = case
    compare_with_torch(torch, tmp_path, "Deconvolution", case, 7, lambda x, w, b: torch.nn.functional.conv_transpose2d(
        x, w, b, pair(stride), pair(pad), 0, group, pair(dil)))
