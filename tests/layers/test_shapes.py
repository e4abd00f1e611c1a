"""Every layer type's shape rule, parameter shapes and MACs.

Expected numbers are worked out by hand from Caffe's formulas (see shared/caffe_semantics.md)
and written in the test as literals or as the formula itself, never read back from netc.
"""
import gzip
import math
import struct

import numpy as np
import pytest

from netc.compile import compile_net
from netc.errors import NetcError
from netc.layers import REGISTRY
from netc.layers.base import coerce
from netc.layers.pool import pooled_size


@pytest.fixture
def net(tmp_path):
    """Compile .net text written to tmp_path; returns the checked Net."""
    def build(text, phase="test", overrides=None, name="t.net"):
        path = tmp_path / name
        path.write_text(text)
        return compile_net(str(path), phase, overrides)
    return build


@pytest.fixture
def fails(net):
    def check(text, match, **kw):
        with pytest.raises(NetcError, match=match) as info:
            net(text, **kw)
        return info.value
    return check


def spec_params(type_name, **given):
    """A layer's parameters as expand builds them: defaults, coerced values, normalize."""
    spec = REGISTRY[type_name]
    values = {}
    for p in spec.params:
        if p.name in given:
            values[p.name] = coerce(p, given.pop(p.name))
        else:
            values[p.name] = None if p.required else p.default
    assert not given, f"unknown parameters {given}"
    return spec.normalize(values)


def info(n, layer):
    return n.layer_info[layer]


def nparams(n, layer):
    return sum(math.prod(s) for s in n.layer_info[layer].param_shapes)


# --- Convolution ---------------------------------------------------------------------------
def conv_out(size, k, s=1, p=0, d=1):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


@pytest.mark.parametrize("args, hw", [
    ("kernel=5", (28, 28)),
    ("kernel=5, stride=2, pad=2", (16, 16)),          # (32+4-5)//2+1
    ("kernel=3, stride=3", (10, 10)),                 # (32-3)//3+1 = 9+1
    ("kernel=3, dilation=2", (28, 28)),               # extent 5
    ("kernel=3, dilation=4, pad=4", (32, 32)),        # extent 9, 32+8-9+1
    ("kernel=[3, 5]", (30, 28)),
    ("kernel_h=3, kernel_w=5", (30, 28)),
    ("kernel=3, stride=[2, 1]", (15, 30)),
    ("kernel=3, stride_h=2, stride_w=1", (15, 30)),
    ("kernel=3, pad=[1, 0]", (32, 30)),
    ("kernel=3, pad_h=0, pad_w=1", (30, 32)),
    ("kernel=1", (32, 32)),
])
def test_convolution_output(net, args, hw):
    n = net(f"input data [2, 3, 32, 32]\nc: Convolution(16, {args})\n")
    assert n.blob_shapes["c"] == (2, 16) + hw


@pytest.mark.parametrize("size, k, s, p, d", [(227, 11, 4, 0, 1), (224, 7, 2, 3, 1), (13, 3, 1, 1, 1),
                                              (17, 3, 2, 2, 3)])
def test_convolution_formula(net, size, k, s, p, d):
    n = net(f"input data [1, 1, {size}, {size}]\n"
            f"c: Convolution(1, kernel={k}, stride={s}, pad={p}, dilation={d})\n")
    assert n.blob_shapes["c"][2:] == (conv_out(size, k, s, p, d),) * 2


def test_convolution_params_and_macs(net):
    n = net("input data [2, 3, 32, 32]\nc: Convolution(16, kernel=5)\n")
    assert info(n, "c").param_shapes == ((16, 3, 5, 5), (16,))
    assert nparams(n, "c") == 16 * 3 * 25 + 16
    assert info(n, "c").macs == 2 * 16 * 28 * 28 * 3 * 5 * 5


def test_convolution_without_bias(net):
    n = net("input data [1, 3, 8, 8]\nc: Convolution(4, kernel=[3, 1], bias_term=false)\n")
    assert info(n, "c").param_shapes == ((4, 3, 3, 1),)


def test_alexnet_group_convolution_counts_params_per_group(net):
    # AlexNet conv2: 96 -> 256 channels, 5x5, pad 2, group 2: each filter sees 48 channels
    n = net("input data [1, 96, 27, 27]\nconv2: Convolution(256, kernel=5, pad=2, group=2)\n")
    assert n.blob_shapes["conv2"] == (1, 256, 27, 27)
    assert info(n, "conv2").param_shapes == ((256, 48, 5, 5), (256,))
    assert nparams(n, "conv2") == 307_456
    assert info(n, "conv2").macs == 256 * 27 * 27 * 48 * 25


def test_alexnet_conv1_shape(net):
    n = net("input data [10, 3, 227, 227]\nconv1: Convolution(96, kernel=11, stride=4)\n")
    assert n.blob_shapes["conv1"] == (10, 96, 55, 55)
    assert nparams(n, "conv1") == 96 * 3 * 11 * 11 + 96 == 34_944


def test_convolution_errors(fails):
    fails("input data [1, 3, 8, 8]\nc: Convolution(4, kernel=3, group=2)\n", r"does not divide the input's 3")
    fails("input data [1, 4, 8, 8]\nc: Convolution(6, kernel=3, group=4)\n", r"group \(4\) must divide num_output \(6\)")
    fails("input data [1, 3, 8, 8]\nc: Convolution(4)\n", "needs a kernel size")
    fails("input data [1, 3, 8, 8]\nc: Convolution(4, kernel=9)\n", "kernel 9x9 is larger than the padded input 8x8")
    fails("input data [1, 3, 8, 8]\nc: Convolution(4, kernel=3, dilation=4)\n", "kernel 9x9 is larger")
    fails("input data [1, 8]\nc: Convolution(4, kernel=3)\n", "4-d input")
    fails("input data [1, 3, 8, 8]\nc: Convolution(4, kernel=3, axis=2)\n", "axis 1")


# --- Deconvolution -----------------------------------------------------------------------------
def test_deconvolution_output_params_macs(net):
    n = net("input data [1, 16, 8, 8]\nd: Deconvolution(8, kernel=4, stride=2, pad=1)\n")
    assert n.blob_shapes["d"] == (1, 8, 2 * (8 - 1) + 4 - 2, 16)
    assert info(n, "d").param_shapes == ((16, 8, 4, 4), (8,))
    assert info(n, "d").macs == 16 * 8 * 8 * 8 * 4 * 4


def test_deconvolution_group_and_dilation(net):
    n = net("input data [2, 16, 5, 7]\nd: Deconvolution(8, kernel=3, dilation=2, group=4, bias_term=false)\n")
    # extent 5: out = 1·(in−1) + 5
    assert n.blob_shapes["d"] == (2, 8, 9, 11)
    assert info(n, "d").param_shapes == ((16, 2, 3, 3),)


def test_deconvolution_too_much_padding(fails):
    fails("input data [1, 2, 1, 1]\nd: Deconvolution(2, kernel=2, pad=1)\n", "leaves no output")


# --- Pooling -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, k, s, p, want", [
    (6, 3, 2, 1, 4),      # ceil(5/2)+1 = 4; (4-1)·2 = 6 < 6+1: the last window starts at row 5, inside
    (5, 2, 2, 1, 3),      # ceil(5/2)+1 = 4; 3·2 = 6 ≥ 5+1: the 4th window would start in the padding
    (7, 2, 2, 1, 4),      # ceil(7/2)+1 = 5; 4·2 = 8 ≥ 7+1: one less
    (3, 2, 2, 1, 2),      # ceil(3/2)+1 = 3; 2·2 = 4 ≥ 4: one less
    (112, 3, 2, 0, 56),   # ceil(109/2)+1 (floor would give 55)
    (13, 3, 2, 0, 6),     # ceil(10/2)+1
    (14, 3, 2, 0, 7),     # ceil(11/2)+1 (floor: 6)
    (28, 2, 2, 0, 14),
    (7, 7, 1, 0, 1),
    (1, 3, 2, 1, 1),
    (4, 3, 3, 1, 2),
    (2, 2, 2, 1, 2),
])
def test_pooling_ceil_rounding(net, size, k, s, p, want):
    assert pooled_size(size, k, s, p, "CEIL") == want
    n = net(f"input data [1, 2, {size}, {size}]\np: Pooling(MAX, kernel={k}, stride={s}, pad={p})\n")
    assert n.blob_shapes["p"] == (1, 2, want, want)


@pytest.mark.parametrize("size, k, s, p, want", [
    (6, 3, 2, 1, 3), (112, 3, 2, 0, 55), (14, 3, 2, 0, 6), (7, 2, 2, 1, 4), (13, 3, 2, 0, 6)])
def test_pooling_floor_rounding(net, size, k, s, p, want):
    n = net(f"input data [1, 2, {size}, {size}]\n"
            f"p: Pooling(AVE, kernel={k}, stride={s}, pad={p}, round_mode=FLOOR)\n")
    assert n.blob_shapes["p"] == (1, 2, want, want)


def test_pooling_rectangular(net):
    n = net("input data [1, 1, 9, 6]\np: Pooling(kernel_h=3, kernel_w=2, stride_h=2, stride_w=1, pad_w=1, pad_h=0)\n")
    # h: ceil((9-3)/2)+1 = 4; w: ceil((6+2-2)/1)+1 = 7, (7-1)·1 = 6 ≥ 6+1? no
    assert n.blob_shapes["p"] == (1, 1, 4, 7)


def test_global_pooling(net):
    n = net("input data [2, 8, 7, 5]\np: Pooling(AVE, global_pooling=true)\nq: Pooling(data, global=true)\n")
    assert n.blob_shapes["p"] == (2, 8, 1, 1)
    assert n.blob_shapes["q"] == (2, 8, 1, 1)
    assert info(n, "p").param_shapes == () and info(n, "p").macs == 0


def test_max_pooling_mask_top(net):
    n = net("input data [1, 2, 6, 6]\np: Pooling(MAX, kernel=2, stride=2) -> out, mask\n")
    assert n.blob_shapes["out"] == n.blob_shapes["mask"] == (1, 2, 3, 3)


def test_rounding_matters():
    pool = REGISTRY["Pooling"]
    assert pool.rounding_matters(spec_params("Pooling", kernel_size=3, stride=2), (1, 1, 112, 112))
    assert not pool.rounding_matters(spec_params("Pooling", kernel_size=2, stride=2), (1, 1, 28, 28))


@pytest.mark.parametrize("args, match", [
    ("MAX", "needs a kernel size"),
    ("kernel=3, pad=3", r"pad \(3\) must be smaller than the kernel \(3\)"),
    ("global=true, kernel=2", "drop kernel_size"),
    ("global=true, stride=2", "pad 0 and stride 1"),
    ("kernel=9", "kernel 9x9 is larger than the padded input 8x8"),
    ("AVE, kernel=2) -> a, b", "only MAX pooling has a second"),
])
def test_pooling_errors(fails, args, match):
    text = f"p: Pooling({args}" + ("" if args.endswith("b") else ")")
    fails(f"input data [1, 2, 8, 8]\n{text}\n", match)


# --- LRN -------------------------------------------------------------------------------------
def test_lrn(net, fails):
    n = net("input data [2, 16, 5, 5]\nn: LRN(local_size=3, alpha=1e-4, beta=0.75)\n"
            "m: LRN(data, size=5, region=WITHIN_CHANNEL)\n")
    assert n.blob_shapes["n"] == n.blob_shapes["m"] == (2, 16, 5, 5)
    assert n.layer("m").params["norm_region"] == "WITHIN_CHANNEL"
    assert n.layer("n").params["k"] == 1.0
    fails("input data [2, 16, 5, 5]\nn: LRN(local_size=4)\n", "local_size must be odd")
    fails("input data [2, 16]\nn: LRN\n", "4-d input")


# --- InnerProduct ---------------------------------------------------------------------------------
def test_inner_product(net):
    n = net("input data [2, 50, 4, 4]\nip: InnerProduct(500)\n")
    assert n.blob_shapes["ip"] == (2, 500)
    assert info(n, "ip").param_shapes == ((500, 800), (500,))
    assert nparams(n, "ip") == 400_500
    assert info(n, "ip").macs == 2 * 800 * 500


@pytest.mark.parametrize("args, top, weight, macs", [
    ("10, axis=2", (2, 3, 10), (10, 20), 6 * 20 * 10),
    ("10, axis=-1", (2, 3, 4, 10), (10, 5), 24 * 5 * 10),
    ("10, axis=0", (10,), (10, 120), 120 * 10),
    ("10, transpose=true", (2, 10), (60, 10), 2 * 60 * 10),
])
def test_inner_product_axis_and_transpose(net, args, top, weight, macs):
    n = net(f"input data [2, 3, 4, 5]\nip: InnerProduct({args}, bias_term=false)\n")
    assert n.blob_shapes["ip"] == top
    assert info(n, "ip").param_shapes == (weight,)
    assert info(n, "ip").macs == macs


def test_inner_product_bad_axis(fails):
    fails("input data [2, 3]\nip: InnerProduct(4, axis=2)\n", "axis 2 is out of range")


# --- Softmax, losses, Accuracy ---------------------------------------------------------------------
def test_softmax_and_losses(net):
    n = net("input data [4, 10]\ninput label [4]\ninput target [4, 2, 5]\n"
            "s: Softmax(data)\nl: SoftmaxWithLoss(data, label)\na: Accuracy(data, label, top_k=5) -> acc, per_class\n"
            "e: EuclideanLoss(data, target)\nx: SigmoidCrossEntropyLoss(data, target)\n")
    assert n.blob_shapes["s"] == (4, 10)
    assert n.blob_shapes["l"] == ()
    assert n.blob_shapes["acc"] == () and n.blob_shapes["per_class"] == (10,)
    assert n.blob_shapes["e"] == () and n.blob_shapes["x"] == ()


def test_softmax_with_loss_per_pixel(net):
    # scores [N, C, H, W]: one label per (n, h, w)
    n = net("input data [2, 5, 3, 3]\ninput label [2, 1, 3, 3]\nl: SoftmaxWithLoss(data, label) -> loss, prob\n")
    assert n.blob_shapes["loss"] == () and n.blob_shapes["prob"] == (2, 5, 3, 3)


@pytest.mark.parametrize("layer, label, match", [
    ("SoftmaxWithLoss", "[3]", "has 3 labels for 4 predictions"),
    ("Accuracy", "[4, 2]", "has 8 labels for 4 predictions"),
    ("SoftmaxWithLoss(data, label, axis=2)", "[4]", "axis 2 is out of range"),
])
def test_label_count(fails, layer, label, match):
    call = layer if "(" in layer else f"{layer}(data, label)"
    fails(f"input data [4, 10]\ninput label {label}\nl: {call}\n", match)


def test_accuracy_top_k(fails):
    fails("input data [4, 10]\ninput label [4]\na: Accuracy(data, label, top_k=11)\n",
          r"top_k \(11\) is more than the 10 classes")


def test_euclidean_and_sigmoid_sizes(net, fails):
    n = net("input a [4, 3]\ninput b [4, 1, 3]\ne: EuclideanLoss(a, b)\n")
    assert n.blob_shapes["e"] == ()
    fails("input a [4, 3]\ninput b [4, 2]\ne: EuclideanLoss(a, b)\n", "blobs of equal size")
    fails("input a [4, 3]\ninput b [4, 2]\ne: SigmoidCrossEntropyLoss(a, b)\n", "as many targets as scores")


# --- Concat, Slice, Split, Flatten, Reshape, Eltwise -------------------------------------------------
def test_concat(net):
    n = net("input a [2, 3, 8, 8]\ninput b [2, 5, 8, 8]\ninput c [1, 3, 8, 8]\n"
            "x: Concat(a, b)\ny: Concat(a, c, axis=0)\nz: Concat(a, a, a, axis=-1)\nw: Concat(a, concat_dim=2)\n")
    assert n.blob_shapes["x"] == (2, 8, 8, 8)
    assert n.blob_shapes["y"] == (3, 3, 8, 8)
    assert n.blob_shapes["z"] == (2, 3, 8, 24)
    assert n.blob_shapes["w"] == (2, 3, 8, 8)


def test_concat_mismatch(fails):
    fails("input a [2, 3, 8, 8]\ninput b [2, 5, 7, 8]\nx: Concat(a, b)\n", "input 2 has height 7 but input 1 has 8")
    fails("input a [2, 3, 8, 8]\ninput b [2, 3, 8]\nx: Concat(a, b)\n", "input 2 has 3 axes")


def test_slice(net):
    n = net("input a [2, 10]\ns: Slice(a, slice_point=[3, 7]) -> p, q, r\n"
            "t: Slice(a, axis=0) -> u, v\ninput b [2, 9, 4]\nw: Slice(b) -> x, y, z\n")
    assert [n.blob_shapes[t] for t in "pqr"] == [(2, 3), (2, 4), (2, 3)]
    assert n.blob_shapes["u"] == n.blob_shapes["v"] == (1, 10)
    assert [n.blob_shapes[t] for t in "xyz"] == [(2, 3, 4)] * 3


@pytest.mark.parametrize("args, tops, match", [
    ("slice_point=[3]", "p, q, r", "1 slice points make 2 pieces"),
    ("slice_point=[7, 3]", "p, q, r", "must increase strictly"),
    ("slice_point=[3, 10]", "p, q, r", "must increase strictly"),
    ("", "p, q, r", "does not split evenly into 3"),
])
def test_slice_errors(fails, args, tops, match):
    fails(f"input a [2, 10]\ns: Slice(a{', ' + args if args else ''}) -> {tops}\n", match)


def test_split(net):
    n = net("input a [2, 3]\ns: Split(a) -> x, y, z\n")
    assert [n.blob_shapes[t] for t in "xyz"] == [(2, 3)] * 3


@pytest.mark.parametrize("args, want", [("", (2, 60)), ("axis=2", (2, 3, 20)), ("axis=1, end_axis=2", (2, 12, 5)),
                                        ("axis=0, end_axis=-2", (24, 5))])
def test_flatten(net, args, want):
    n = net(f"input a [2, 3, 4, 5]\nf: Flatten({args})\n")
    assert n.blob_shapes["f"] == want


@pytest.mark.parametrize("args, want", [
    ("[0, -1]", (2, 60)),
    ("[0, 0, -1]", (2, 3, 20)),
    ("[-1, 5]", (24, 5)),
    ("[0, 0, -1, 1]", (2, 3, 20, 1)),
    ("shape=[-1], axis=1, num_axes=2", (2, 12, 5)),
    ("shape=[2, 2], axis=2, num_axes=1", (2, 3, 2, 2, 5)),
    ("shape=[1], axis=-1, num_axes=0", (2, 3, 4, 5, 1)),
    ("shape=[1, 1], axis=0, num_axes=0", (1, 1, 2, 3, 4, 5)),
])
def test_reshape(net, args, want):
    n = net(f"input a [2, 3, 4, 5]\nr: Reshape({args})\n")
    assert n.blob_shapes["r"] == want


@pytest.mark.parametrize("args, match", [
    ("[7, -1]", r"cannot reshape \[2, 3, 4, 5\] \(120 values\) to \[7, -1\]"),
    ("[2, 3]", r"into \[2, 3\] \(6 values\)"),
    # Caffe's 0 copies the input dimension at the same position: [6, 3, 4], not [6, 4, 5]
    ("[6, 0, 0]", r"into \[6, 3, 4\] \(72 values\)"),
    ("[-1, -1]", "at most one dimension"),
    ("[0, 0, 0, 0, 0]", "has no axis 4"),
    ("[-2]", "positive, 0 \\(copy\\) or -1"),
])
def test_reshape_errors(fails, args, match):
    fails(f"input a [2, 3, 4, 5]\nr: Reshape({args})\n", match)


def test_eltwise(net, fails):
    n = net("input a [2, 3]\ninput b [2, 3]\ns: Eltwise(a, b, coeff=[1, -1])\np: Eltwise(a, b, PROD)\n"
            "m: Eltwise(a, b, a, operation=MAX)\n")
    assert n.blob_shapes["s"] == n.blob_shapes["p"] == n.blob_shapes["m"] == (2, 3)
    assert n.layer("s").params["coeff"] == (1.0, -1.0)
    assert n.layer("p").params["operation"] == "PROD"
    fails("input a [2, 3]\ninput b [2, 3]\ns: Eltwise(a, b, coeff=[1, 2, 3])\n", "3 coefficients for 2 inputs")
    fails("input a [2, 3]\ninput b [2, 3]\ns: Eltwise(a, b, PROD, coeff=[1, 2])\n", "coeff applies to SUM only")
    fails("input a [2, 3]\ninput b [3, 2]\ns: Eltwise(a, b)\n", r"input 2 is \[3, 2\] but input 1 is \[2, 3\]")


# --- BatchNorm, Scale, activations, Dropout -----------------------------------------------------------
def test_batch_norm_params(net):
    n = net("input a [2, 16, 4, 4]\nbn: BatchNorm(a)\nb2: BatchNorm(a)!\n")
    assert n.blob_shapes["bn"] == (2, 16, 4, 4)
    assert info(n, "bn").param_shapes == ((16,), (16,), (1,))
    assert nparams(n, "bn") == 33
    assert n.layer("b2").tops == ("a",)


def test_scale(net):
    n = net("input a [2, 16, 4, 4]\ninput g [16]\n"
            "s: Scale(a, bias_term=true)\nt: Scale(a)\nu: Scale(a, axis=1, num_axes=-1)\nv: Scale(a, g, bias_term=true)\n"
            "w: Scale(a, g)\n")
    assert info(n, "s").param_shapes == ((16,), (16,))
    assert info(n, "t").param_shapes == ((16,),)
    assert info(n, "u").param_shapes == ((16, 4, 4),)
    assert info(n, "v").param_shapes == ((16,),)    # the scale comes from g; only the bias is learnt
    assert info(n, "w").param_shapes == ()
    assert all(n.blob_shapes[x] == (2, 16, 4, 4) for x in "stuvw")


def test_scale_shape_mismatch(fails):
    fails("input a [2, 16, 4, 4]\ninput g [8]\ns: Scale(a, g)\n", r"the scale \[8\] does not match")


@pytest.mark.parametrize("layer", ["ReLU", "ReLU(0.1)", "Sigmoid", "TanH", "Dropout(0.3)", "Dropout(ratio=0.5)"])
def test_elementwise_keep_shape(net, layer):
    n = net(f"input a [2, 3, 5]\nx: {layer}\ny: {layer}!\n")
    assert n.blob_shapes["x"] == (2, 3, 5)
    assert n.layer("y").tops == ("x",)
    assert info(n, "x").param_shapes == ()


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.1"])
def test_dropout_ratio(fails, ratio):
    fails(f"input a [2, 3]\nd: Dropout({ratio})\n", "dropout_ratio must be between 0 and 1")


# --- data sources ---------------------------------------------------------------------------------
def idx_header(dims, dtype=0x08):
    return bytes([0, 0, dtype, len(dims)]) + struct.pack(f">{len(dims)}i", *dims)


def test_idx_data_gzipped_directory(net, tmp_path):
    (tmp_path / "mnist").mkdir()
    with gzip.open(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_header([60000, 28, 28]))
    n = net('src: IDXData(source="mnist", batch_size=64) @train\n', phase="train")
    assert n.blob_shapes["data"] == (64, 1, 28, 28)
    assert n.blob_shapes["label"] == (64,)


def test_idx_data_raw_test_split(net, tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte").write_bytes(idx_header([10000, 20, 24]) + b"\0" * 64)
    n = net('src: IDXData(source="mnist", batch=100, split=TEST) -> x, y\n')
    assert n.blob_shapes["x"] == (100, 1, 20, 24)
    assert n.blob_shapes["y"] == (100,)


def test_idx_data_colour_file_and_crop(net, tmp_path):
    (tmp_path / "imgs.idx").write_bytes(idx_header([50, 32, 32, 3]))
    n = net('src: IDXData(source="imgs.idx", batch=8, crop_size=28)\n')
    assert n.blob_shapes["data"] == (8, 3, 28, 28)


def test_idx_data_bad_magic(fails, tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    fails('src: IDXData(source="bad.idx", batch=8)\n', "bad magic number")


def test_idx_data_missing_files(fails, tmp_path):
    (tmp_path / "empty").mkdir()
    err = fails('src: IDXData(source="empty", batch=8)\n', "no train-images-idx3-ubyte")
    assert "--input data=" in err.hint


def test_npy_data(net, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 3, 16, 12), np.float32))
    n = net('src: NpyData(source="x.npy", batch=4)\n')
    assert n.blob_shapes["data"] == (4, 3, 16, 12)
    assert n.blob_shapes["label"] == (4,)


def test_npz_data_with_key(net, fails, tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((7, 1, 5, 5), np.uint8), label=np.zeros(7))
    n = net('src: NpyData(source="d.npz", batch=2, data_key="images")\n')
    assert n.blob_shapes["data"] == (2, 1, 5, 5)
    fails('src: NpyData(source="d.npz", batch=2)\n', r"has no array 'data' \(it has: images, label\)")


def test_cifar10_is_3x32x32(net):
    n = net('src: CIFAR10Data(source="nowhere", batch=100)\n')
    assert n.blob_shapes["data"] == (100, 3, 32, 32)
    n = net('src: CIFAR10Data(source="nowhere", batch=10, crop_size=24, mean_value=[1, 2, 3])\n')
    assert n.blob_shapes["data"] == (10, 3, 24, 24)


def test_crop_and_mean_errors(fails):
    fails('src: CIFAR10Data(source="x", batch=1, crop_size=33)\n', "crop_size 33 is larger than the 32x32")
    fails('src: CIFAR10Data(source="x", batch=1, mean_value=[1, 2])\n', "2 mean values for 3 channels")


def test_data_needs_input_override(net, fails):
    err = fails('src: Data(source="lmdb", batch=32, backend=LMDB)\n', "the shape of 'data' cannot be known")
    assert err.hint.startswith("give it with --input data=N,C,H,W")
    n = net('src: Data(source="lmdb", batch=32)\n', overrides={"data": (8, 3, 10, 10)})
    assert n.blob_shapes["data"] == (8, 3, 10, 10)
    assert n.blob_shapes["label"] == (8,)     # the label follows the data's batch


def test_data_with_shape_param(net):
    n = net('src: Data(source="lmdb", batch=32, shape=[3, 40, 40], crop_size=32)\n')
    assert n.blob_shapes["data"] == (32, 3, 32, 32)


def test_memory_and_dummy_data(net):
    n = net("m: MemoryData(batch=5, channels=2, height=3, width=4)\n"
            "d: DummyData(shape=[[2, 3], [2]]) -> x, y\n")
    assert n.blob_shapes["data"] == (5, 2, 3, 4) and n.blob_shapes["label"] == (5,)
    assert n.blob_shapes["x"] == (2, 3) and n.blob_shapes["y"] == (2,)


def test_input(net):
    n = net("input data [64, 1, 28, 28]\ni: Input(shape=[[2, 3], [4]]) -> a, b\n")
    assert n.blob_shapes["data"] == (64, 1, 28, 28)
    assert n.blob_shapes["a"] == (2, 3) and n.blob_shapes["b"] == (4,)
    assert n.inputs["data"] == (64, 1, 28, 28)


def test_input_override_scales_batch(net):
    n = net("input data [64, 1, 28, 28]\nc: Convolution(20, kernel=5)\n", overrides={"data": (1, 1, 28, 28)})
    assert n.blob_shapes["c"] == (1, 20, 24, 24)


def test_override_unknown_blob(fails):
    err = fails("input data [1, 2]\n", "--input names 'dta'", overrides={"dta": (1, 2)})
    assert err.hint == "did you mean 'data'?"


# --- a whole small net ---------------------------------------------------------------------------------
def test_lenet(net):
    n = net("net LeNet\ninput data [64, 1, 28, 28]\ninput label [64]\n"
            "conv1: Convolution(20, kernel=5, weight=xavier)\npool1: Pooling(MAX, kernel=2, stride=2)\n"
            "conv2: Convolution(50, kernel=5, weight=xavier)\npool2: Pooling(MAX, kernel=2, stride=2)\n"
            "ip1: InnerProduct(500, weight=xavier) ReLU!\nip2: InnerProduct(10, weight=xavier)\n"
            "loss: SoftmaxWithLoss(ip2, label)\n")
    assert n.blob_shapes["pool2"] == (64, 50, 4, 4)
    total = sum(nparams(n, layer.name) for layer in n.layers)
    assert total == (20 * 25 + 20) + (50 * 20 * 25 + 50) + (500 * 800 + 500) + (10 * 500 + 10) == 431_080
    assert n.warnings == ()


def test_silence_consumes_its_inputs_and_produces_nothing(tmp_path):
    from netc.compile import compile_net
    path = tmp_path / "silence.net"
    path.write_text("input data [2, 3, 8, 8]\ninput extra [2, 5]\n"
                    "conv: Convolution(4, kernel=3, weight=xavier)\nquiet: Silence(extra)\n")
    net = compile_net(str(path))
    layer = net.layer("quiet")
    assert layer.bottoms == ("extra",) and layer.tops == ()
    assert net.layer_info["quiet"].top_shapes == ()
    assert net.warnings == ()


def test_silence_may_not_name_outputs(tmp_path):
    from netc.compile import compile_net
    from netc.errors import NetcError
    path = tmp_path / "silence.net"
    path.write_text("input data [2, 3]\nquiet: Silence(data) -> out\n")
    with pytest.raises(NetcError) as err:
        compile_net(str(path))
    assert (err.value.span.line, err.value.span.column) == (2, 25)
    assert "Silence has 0 outputs, got 1" in err.value.message
