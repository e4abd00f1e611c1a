"""A catalog of broken .net files: each mistake must be reported at the right line and
column, with a message (and hint) that says what is wrong. Plus warnings and the formatter.

In the expected hints, {file} stands for the path of the file under test.
"""
import pytest

from netc.compile import compile_net
from netc.errors import Diagnostic, NetcError, Span, format_diagnostic

DATA = "input data [1, 3, 8, 8]\n"
MODULE = "module blk(c, k=3) {\n  a: Convolution(c, kernel=k)\n}\n"

# (id, text, line, column, message, hint or None)
CASES = [
    # --- syntax ---------------------------------------------------------------------------------
    ("missing-paren-eof", DATA + "c: Convolution(4, kernel=3\n", 2, 15,
     "'(' is never closed",
     "add the missing ')': until it closes, the lines after it are read as part of this statement"),
    ("missing-paren-then-more-lines", DATA + "c: Convolution(4, kernel=3\nr: ReLU\n", 2, 15,
     "'(' is never closed",
     "add the missing ')': until it closes, the lines after it are read as part of this statement"),
    ("missing-bracket", "input data [1, 3, 8, 8\nc: ReLU\n", 1, 12,
     "'[' is never closed",
     "add the missing ']': until it closes, the lines after it are read as part of this statement"),
    ("missing-comma", DATA + "c: Convolution(4 kernel=3)\n", 2, 18,
     "unexpected 'kernel'; expected '%', ')', '*', '+', ',', '-', ...", "separate arguments with commas"),
    ("missing-comma-multiline", DATA + "c: Convolution(4,\n    kernel=3 stride=2)\n", 3, 14,
     "unexpected 'stride'; expected '%', ')', '*', '+', ',', '-', ...", "separate arguments with commas"),
    ("stray-character", DATA + "c: Convolution(4, kernel=3) $\n", 2, 29,
     "unexpected character '$'", None),
    ("unterminated-string", DATA + 'c: Convolution(4, kernel=3, weight="abc)\n', 2, 36,
     "unterminated string", 'a string ends with " on the same line'),
    ("single-quotes", DATA + "d: IDXData(source='x')\n", 2, 19,
     "unexpected character '''", 'strings use double quotes: "like this"'),
    ("double-equals", DATA + "c: Convolution(4, kernel==3)\n", 2, 26,
     "unexpected '='; expected '(', '+', '-', '[', a name, a number, ...",
     "a keyword argument is written name=value, e.g. kernel=5"),
    ("equals-for-label", DATA + "c = Convolution(4, kernel=3)\n", 2, 3,
     "unexpected '='; expected '!', '(', '->', ':', '@', a name, ...",
     "a layer's label is followed by ':', e.g. conv1: Convolution(20, kernel=5)"),
    ("phase-without-name", DATA + "c: ReLU @\n", 2, 10,
     "unexpected end of line; expected a name", None),
    ("module-not-closed", "module m(c) {\n  a: Convolution(c, kernel=3)\n", 2, 30,
     "unexpected end of file; expected '}', a name, a string, end of line",
     "a module body ends with '}' on a line of its own"),

    # --- names ------------------------------------------------------------------------------------
    ("unknown-layer-type", DATA + "c: Convolutoin(4, kernel=3)\n", 2, 4,
     "unknown layer type 'Convolutoin'", "did you mean 'Convolution'?"),
    ("unknown-layer-type-lowercase", DATA + "r: relu\n", 2, 4,
     "unknown layer type 'relu'", "did you mean 'ReLU'?"),
    ("unknown-parameter", DATA + "c: Convolution(4, kernal=3)\n", 2, 19,
     "unknown parameter 'kernal' for Convolution", "did you mean 'kernel'?"),
    ("unknown-parameter-no-match", DATA + "r: ReLU(zzz=1)\n", 2, 9,
     "unknown parameter 'zzz' for ReLU", "ReLU takes: negative_slope"),
    ("unknown-blob", DATA + "c: Convolution(4, kernel=3)\nr: ReLU(cnv)\n", 3, 9,
     "unknown blob 'cnv'", "the blobs here are: c, data"),
    ("unknown-blob-nearest", DATA + "r: ReLU(dta)\n", 2, 9,
     "unknown blob 'dta'", "did you mean 'data'?"),
    ("no-input-at-all", "c: Convolution(4, kernel=3)\n", 1, 1,
     "Convolution has no input: nothing comes before it",
     "declare an input first, e.g. input data [64, 1, 28, 28]"),
    ("used-before-produced", DATA + "a: Convolution(x, 4, kernel=3)\nx: ReLU(data)\n", 2, 16,
     "blob 'x' is used before it is produced",
     "'x' is produced later, at line 3; a layer reads only blobs produced above it, so a net cannot loop back"),
    ("reads-own-output", DATA + "x: Convolution(x, 4, kernel=3)\n", 2, 16,
     "blob 'x' is used before it is produced",
     "'x' is this statement's own output; a layer cannot read what it writes"),
    ("blob-of-other-phase", DATA + "t: ReLU @train\nr: ReLU(t)\n", 3, 9,
     "blob 't' does not exist in the test phase",
     "it is produced at line 2 by a statement for another phase"),
    ("duplicate-layer-name", DATA + "a: ReLU\na: Sigmoid\n", 3, 1,
     "layer name 'a' is used twice", "first used at {file}:2:1"),
    ("unknown-phase", DATA + "a: ReLU @val\n", 2, 10,
     "unknown phase 'val'", "phases are @train and @test"),

    # --- modules ------------------------------------------------------------------------------------
    ("unknown-module", MODULE + DATA + "b: blck(4)\n", 5, 4,
     "unknown layer type or module 'blck'", "did you mean 'blk'?"),
    ("module-missing-argument", "module blk(c, k) {\n  a: Convolution(c, kernel=k)\n}\n" + DATA + "b: blk(4)\n",
     5, 1, "module 'blk' takes 2 parameters (c, k), got 1", "missing: k; the module is defined at {file}:1:8"),
    ("module-too-many-arguments", MODULE + DATA + "b: blk(4, 3, 2)\n", 5, 14,
     "too many positional arguments for module 'blk'", "module 'blk' takes 2 (c, k)"),
    ("module-unknown-keyword", MODULE + DATA + "b: blk(4, kk=3)\n", 5, 11,
     "module 'blk' has no parameter 'kk'", "did you mean 'k'?"),
    ("module-in-place", MODULE + DATA + "b: blk(4)!\n", 5, 1,
     "a module instance cannot run in place", None),

    # --- parameters ---------------------------------------------------------------------------------
    ("input-dim-zero", "input data [1, 0, 8, 8]\n", 1, 16,
     "input dimensions must be positive integers, not 0", None),
    ("input-dim-float", "input data [1, 2.5]\n", 1, 16,
     "input dimensions must be positive integers, not 2.5", None),
    ("num-output-zero", DATA + "a: Convolution(0, kernel=3)\n", 2, 16,
     "num_output must be at least 1, not 0", None),
    ("stride-zero", DATA + "a: Convolution(2, kernel=3, stride=0)\n", 2, 29,
     "stride must be at least 1", None),
    ("pool-stride-zero", DATA + "p: Pooling(MAX, kernel=2, stride=0)\n", 2, 27,
     "stride must be at least 1, not 0", None),
    ("kernel-h-and-kernel", DATA + "a: Convolution(2, kernel=3, kernel_h=3)\n", 2, 29,
     "give either kernel or kernel_h and kernel_w, not both", None),
    ("kernel-three-values", DATA + "a: Convolution(2, kernel=[3, 3, 3])\n", 2, 19,
     "kernel takes one value or two (height, width), not 3", None),
    ("dropout-ratio", DATA + "a: Dropout(1.5)\n", 2, 12,
     "dropout_ratio must be between 0 and 1 (exclusive), not 1.5", None),
    ("even-lrn", DATA + "a: LRN(local_size=4)\n", 2, 8,
     "local_size must be odd (Caffe centres the window), not 4", None),
    ("bad-enum", DATA + "a: Pooling(MAXX, kernel=2)\n", 2, 12,
     "pool must be one of MAX, AVE, STOCHASTIC, not 'MAXX'", "did you mean 'MAX'?"),
    ("bad-enum-keyword", DATA + "a: Pooling(pool=avg, kernel=2)\n", 2, 12,
     "pool must be one of MAX, AVE, STOCHASTIC, not 'avg'", "did you mean 'AVE'?"),
    ("bad-filler", DATA + "a: Convolution(2, kernel=3, weight=xavir)\n", 2, 29,
     "unknown filler 'xavir'", "did you mean 'xavier'?"),
    ("bad-filler-field", DATA + "a: Convolution(2, kernel=3, weight=gaussian(stdd=1))\n", 2, 29,
     "unknown filler field 'stdd'", "did you mean 'std'?"),
    ("bool-param", DATA + "a: Convolution(2, kernel=3, bias_term=2)\n", 2, 29,
     "bias_term must be true or false, not 2", None),
    ("missing-required", DATA + "a: Convolution(kernel=3)\n", 2, 4,
     "Convolution needs num_output", "e.g. Convolution(64, ...)"),
    ("missing-source", "d: IDXData(batch=4)\n", 1, 4,
     "IDXData needs source", "e.g. IDXData(source=...)"),
    ("given-twice", DATA + "a: Convolution(2, kernel=3, num_output=4)\n", 2, 29,
     "'num_output' is given twice", None),
    ("too-many-positional", DATA + "r: ReLU(0.1, 0.2)\n", 2, 14,
     "too many positional arguments for ReLU", "ReLU takes 1 (negative_slope)"),
    ("arithmetic-on-name", DATA + "a: Convolution(2, kernel=3 * k)\n", 2, 30,
     "unknown name 'k' in arithmetic", "arithmetic works on numbers and module parameters"),
    ("lr-mult-on-relu", DATA + "r: ReLU(lr_mult=2)\n", 2, 9,
     "ReLU has no learnable parameters for lr_mult", None),

    # --- in place, outputs, bottoms -----------------------------------------------------------------
    ("in-place-convolution", DATA + "a: Convolution(2, kernel=3)!\n", 2, 1,
     "Convolution cannot run in place",
     "in place ('!') works for ReLU, Sigmoid, TanH, Dropout, BatchNorm and Scale"),
    ("write-input-in-place", DATA + "b: Convolution(2, kernel=3) -> data\n", 2, 32,
     "Convolution cannot write its input 'data' in place", "give its output another name"),
    ("too-many-outputs", DATA + "a: Convolution(2, kernel=3) -> x, y\n", 2, 32,
     "Convolution has 1 output, got 2", None),
    ("softmax-loss-one-input", DATA + "a: InnerProduct(10)\nl: SoftmaxWithLoss(a)\n", 3, 1,
     "SoftmaxWithLoss needs 2 inputs (scores, labels), got 1", "name them: SoftmaxWithLoss(a, b)"),
    ("relu-two-inputs", "input a [1, 2]\ninput b [1, 2]\nr: ReLU(a, b)\n", 3, 12,
     "ReLU takes 1 input, got 2", None),
    ("blob-after-value", DATA + "a: Convolution(4, data, kernel=3)\n", 2, 19,
     "input blob 'data' must come before the other arguments",
     "write the input blobs first, e.g. Convolution(data, ...)"),

    # --- shapes ------------------------------------------------------------------------------------
    ("kernel-larger-than-input", DATA + "c1: Convolution(4, kernel=3, stride=2)\nc2: Convolution(4, kernel=5)\n",
     3, 20, "Convolution 'c2': kernel 5x5 is larger than the padded input 3x3",
     "'c1' is [1, 4, 3, 3], produced by layer 'c1' (Convolution) at {file}:2:1; "
     "use a smaller kernel or more padding, or check the layers before it"),
    ("pool-kernel-larger-than-input", DATA + "p: Pooling(MAX, kernel=9)\n", 2, 17,
     "Pooling 'p': kernel 9x9 is larger than the padded input 8x8",
     "'data' is [1, 3, 8, 8], produced by layer 'data' (Input) at {file}:1:7; "
     "use a smaller kernel, or global_pooling=true to pool the whole map"),
    ("concat-channels", DATA + "a: Convolution(4, kernel=3, pad=1)\nb: Convolution(data, 5, kernel=3, pad=1)\n"
     "c: Concat(a, b, axis=0)\n", 4, 1,
     "Concat 'c': Concat along axis 0: input 2 has channel 5 but input 1 has 4 ([1, 5, 8, 8] vs [1, 4, 8, 8])",
     "'b' is [1, 5, 8, 8], produced by layer 'b' (Convolution) at {file}:3:1; "
     "all inputs must agree on every axis except the one joined"),
    ("concat-spatial", DATA + "a: Convolution(4, kernel=3)\nb: Convolution(data, 4, kernel=3, pad=1)\n"
     "c: Concat(a, b)\n", 4, 1,
     "Concat 'c': Concat along axis 1: input 2 has height 8 but input 1 has 6 ([1, 4, 8, 8] vs [1, 4, 6, 6])",
     "'b' is [1, 4, 8, 8], produced by layer 'b' (Convolution) at {file}:3:1; "
     "all inputs must agree on every axis except the one joined"),
    ("eltwise-shapes", DATA + "a: Convolution(4, kernel=3)\nb: Convolution(data, 4, kernel=3, pad=1)\n"
     "c: Eltwise(a, b)\n", 4, 1,
     "Eltwise 'c': Eltwise SUM needs equal shapes: input 2 is [1, 4, 8, 8] but input 1 is [1, 4, 6, 6]",
     "'b' is [1, 4, 8, 8], produced by layer 'b' (Convolution) at {file}:3:1"),
    ("group-channels", DATA + "a: Convolution(4, kernel=3, group=2)\n", 2, 29,
     "Convolution 'a': group (2) does not divide the input's 3 channels",
     "'data' is [1, 3, 8, 8], produced by layer 'data' (Input) at {file}:1:7; "
     "with group g, both the input channels and num_output must be multiples of g"),
    ("group-num-output", "input data [1, 4, 8, 8]\na: Convolution(5, kernel=3, group=2)\n", 2, 29,
     "group (2) must divide num_output (5)", None),
    ("accuracy-top-k", "input data [1, 10]\ninput label [1]\nl: Accuracy(data, label, top_k=11)\n", 3, 26,
     "Accuracy 'l': top_k (11) is more than the 10 classes", None),
    ("label-count", "input data [4, 10]\ninput label [3]\nl: SoftmaxWithLoss(data, label)\n", 3, 1,
     "SoftmaxWithLoss 'l': SoftmaxWithLoss has 3 labels for 4 predictions (scores [4, 10], labels [3])",
     "'label' is [3], produced by layer 'label' (Input) at {file}:2:7; "
     "with scores of shape [4, 10] there must be one label per position outside axis 1"),
    ("reshape-impossible", "input data [4, 10]\nl: Reshape([3, -1])\n", 2, 12,
     "Reshape 'l': cannot reshape [4, 10] (40 values) to [3, -1]", None),
    ("slice-points-order", "input data [4, 10]\nl: Slice(slice_point=[6, 3]) -> a, b, c\n", 2, 10,
     "Slice 'l': slice points [6, 3] must increase strictly within 1..9", None),
    ("slice-points-count", "input data [4, 10]\nl: Slice(slice_point=[6]) -> a, b, c\n", 2, 10,
     "Slice 'l': 1 slice points make 2 pieces, but the layer has 3 tops", None),
    ("pool-pad-alone", DATA + "p: Pooling(kernel=3, pad_w=1)\n", 2, 22,
     "pad_h and pad_w go together", None),

    # --- modules: shapes and traces are tested below ------------------------------------------------
    # --- solver ----------------------------------------------------------------------------------------
    ("unknown-solver-field", DATA + "solver SGD(base_lr=0.1, momentun=0.9)\n", 2, 25,
     "unknown solver field 'momentun'", "did you mean 'momentum'?"),
    ("unknown-solver-type", DATA + "solver SDG(base_lr=0.1)\n", 2, 8,
     "unknown solver type 'SDG'", "did you mean 'SGD'?"),
    ("solver-positional", DATA + "solver SGD(0.1)\n", 2, 12,
     "solver fields are written name=value", "e.g. base_lr=0.01"),
    ("lr-policy-missing-field", DATA + "solver SGD(base_lr=0.1, lr_policy=step(gamma=0.1))\n", 2, 25,
     "lr_policy step needs stepsize", "e.g. lr_policy=step(gamma=..., stepsize=...)"),
    ("lr-policy-missing-all", DATA + "solver SGD(lr_policy=inv)\n", 2, 12,
     "lr_policy inv needs gamma", "e.g. lr_policy=inv(gamma=..., power=...)"),
    ("unknown-lr-policy", DATA + "solver SGD(base_lr=0.1, lr_policy=stepp)\n", 2, 25,
     "unknown lr_policy 'stepp'", "did you mean 'step'?"),
    ("lr-policy-unknown-field", DATA + "solver SGD(lr_policy=inv(gamma=0.1, power=1, foo=2))\n", 2, 12,
     "lr_policy inv has no field 'foo'", "it takes: gamma, power"),
    ("negative-base-lr", DATA + "solver SGD(base_lr=-0.1)\n", 2, 12,
     "base_lr must be at least 0, not -0.1", None),
]


@pytest.mark.parametrize("text, line, column, message, hint", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_catalog(tmp_path, text, line, column, message, hint):
    path = tmp_path / "t.net"
    path.write_text(text)
    with pytest.raises(NetcError) as info:
        compile_net(str(path))
    err = info.value
    assert (err.message, err.hint) == (message, hint.replace("{file}", str(path)) if hint else None)
    assert err.span.file == str(path)
    assert (err.span.line, err.span.column) == (line, column)


def test_catalog_size():
    assert len(CASES) >= 35
    assert len({c[0] for c in CASES}) == len(CASES)


def compile_text(tmp_path, text, phase="test"):
    path = tmp_path / "t.net"
    path.write_text(text)
    return path, compile_net(str(path), phase)


def raises(tmp_path, text):
    path = tmp_path / "t.net"
    path.write_text(text)
    with pytest.raises(NetcError) as info:
        compile_net(str(path))
    return path, info.value


# --- modules: promises and instantiation traces --------------------------------------------------
def test_module_shape_promise_broken(tmp_path):
    path, err = raises(tmp_path, "module blk(c) -> [c, H, W] {\n  a: Convolution(c, kernel=3)\n}\n"
                                 + DATA + "b: blk(4)\n")
    assert err.message == ("instance 'b' of module 'blk' produces [4, 6, 6], "
                           "but the module promises dimension 2 (after the batch) to be 8")
    assert (err.span.line, err.span.column) == (1, 22)
    assert err.hint == "the promise is evaluated with c=4"
    (note, span), = err.diagnostic.trace
    assert note == "in instance 'b' of module 'blk'"
    assert (span.line, span.column) == (5, 1)


def test_module_promise_rank(tmp_path):
    path, err = raises(tmp_path, "module flat(n) -> [n, 1, 1] {\n  ip: InnerProduct(n)\n}\n" + DATA + "f: flat(7)\n")
    assert err.message == "module 'flat' promises 3 dimensions (after the batch), but instance 'f' produces [7]"
    assert err.diagnostic.trace[0][0] == "in instance 'f' of module 'flat'"


def test_module_input_pattern(tmp_path):
    path, err = raises(tmp_path, "module m(c) [4, H, W] -> [c, H, W] {\n  a: Convolution(c, kernel=1)\n}\n"
                                 + DATA + "b: m(2)\n")
    assert err.message == "instance 'b' of module 'm' gets input [3, 8, 8], but the module expects 4 here"
    assert (err.span.line, err.span.column) == (1, 14)


def test_module_promise_kept(tmp_path):
    path, net = compile_text(tmp_path, "module blk(c, k=3) [C, H, W] -> [c, H - k + 1, W - k + 1] {\n"
                                       "  a: Convolution(in, c, kernel=k)\n  r: ReLU!\n}\n"
                                       + DATA + "b: blk(4)\nb2: blk(c=2, k=5)\n")
    assert net.blob_shapes["b/a"] == (1, 4, 6, 6)
    assert net.blob_shapes["b2/a"] == (1, 2, 2, 2)


def test_error_inside_module_instance_has_the_trace(tmp_path):
    text = ("module blk(c) {\n  a: Convolution(c, kernel=3, pad=1)\n  p: Pooling(kernel=9)\n}\n"
            + DATA + "first: blk(4)\n")
    path, err = raises(tmp_path, text)
    assert err.message == "Pooling 'first/p': kernel 9x9 is larger than the padded input 8x8"
    assert (err.span.line, err.span.column) == (3, 14)
    assert err.hint.startswith(f"'first/a' is [1, 4, 8, 8], produced by layer 'first/a' (Convolution) at {path}:2:3")
    assert [(n, s.line, s.column) for n, s in err.diagnostic.trace] == [("in instance 'first' of module 'blk'", 6, 1)]


def test_nested_module_trace_innermost_first(tmp_path):
    text = ("module inner(c) {\n  a: Convolution(c, kernel=3, group=2)\n}\n"
            "module outer(c) {\n  i: inner(c)\n}\n" + DATA + "o: outer(4)\n")
    path, err = raises(tmp_path, text)
    assert err.message == "Convolution 'o/i/a': group (2) does not divide the input's 3 channels"
    assert (err.span.line, err.span.column) == (2, 31)
    assert [(n, s.line) for n, s in err.diagnostic.trace] == [
        ("in instance 'o/i' of module 'inner'", 5), ("in instance 'o' of module 'outer'", 8)]
    text = format_diagnostic(err.diagnostic)
    assert f"{path}:5:3: note: in instance 'o/i' of module 'inner'" in text
    assert f"{path}:8:1: note: in instance 'o' of module 'outer'" in text


def test_expand_error_inside_module_has_the_trace(tmp_path):
    path, err = raises(tmp_path, "module m(c) {\n  a: Convolution(c, kernal=3)\n}\n" + DATA + "x: m(4)\n")
    assert err.message == "unknown parameter 'kernal' for Convolution"
    assert err.diagnostic.trace[0][0] == "in instance 'x' of module 'm'"


def test_recursive_module(tmp_path):
    path, err = raises(tmp_path, "module m() {\n  a: m()\n}\n" + DATA + "x: m()\n")
    assert err.message == "module 'm' instantiates itself without end"


# --- warnings --------------------------------------------------------------------------------------
def warnings_of(net):
    return [(w.severity, w.message, w.span.line, w.span.column) for w in net.warnings]


def test_warning_unused_output(tmp_path):
    path, net = compile_text(tmp_path, "input data [1, 3, 8, 8]\ninput label [1]\n"
                                       "a: Convolution(2, kernel=3, weight=xavier)\n"
                                       "b: InnerProduct(data, 10, weight=xavier)\nl: SoftmaxWithLoss(b, label)\n")
    assert warnings_of(net) == [("warning", "the output of layer 'a' is never used: it reaches no loss", 3, 1)]
    assert net.warnings[0].hint == "remove the layer, or read its output in a later layer"


def test_no_unused_warning_for_a_deploy_net_output(tmp_path):
    path, net = compile_text(tmp_path, DATA + "a: Convolution(2, kernel=3)\n")
    assert net.warnings == ()


def test_warning_in_place_on_a_blob_a_sibling_read(tmp_path):
    path, net = compile_text(tmp_path, "input data [1, 3, 8, 8]\ninput label [1]\n"
                                       "b: InnerProduct(data, 10, weight=xavier)\nr: ReLU(data)!\n"
                                       "c: InnerProduct(data, 10, weight=xavier)\ne: Eltwise(b, c)\n"
                                       "l: SoftmaxWithLoss(e, label)\n")
    assert warnings_of(net) == [("warning", "'r' changes 'data' in place, but another branch already read 'data' "
                                            "and 'c' will read the changed values", 4, 1)]


def test_warning_default_weight_filler(tmp_path):
    path, net = compile_text(tmp_path, DATA + "input label [1]\nb: InnerProduct(10)\nl: SoftmaxWithLoss(b, label)\n")
    assert warnings_of(net) == [("warning", "the weights of 'b' start at 0 (Caffe's default filler), "
                                            "so its units all learn the same thing", 3, 1)]
    assert net.warnings[0].hint == "give a filler, e.g. weight=xavier or weight=gaussian(std=0.01)"


def test_no_filler_warning_without_loss_or_with_frozen_weights(tmp_path):
    path, net = compile_text(tmp_path, DATA + "b: InnerProduct(10)\n")
    assert net.warnings == ()
    path, net = compile_text(tmp_path, DATA + "input label [1]\nb: InnerProduct(10, lr_mult=[0, 0])\n"
                                              "l: SoftmaxWithLoss(b, label)\n")
    assert net.warnings == ()


def test_scale_and_batchnorm_in_a_training_net(tmp_path):
    # Scale declares its weights as `filler` (alias weight_filler); its default is 1, not 0
    path, net = compile_text(tmp_path, DATA + "input label [1]\n"
                                              "a: Convolution(2, kernel=3, weight=xavier) BatchNorm! Scale(bias_term=true)!\n"
                                              "b: InnerProduct(10, weight=xavier)\nl: SoftmaxWithLoss(b, label)\n")
    assert net.warnings == ()


# --- the formatter ------------------------------------------------------------------------------------
def test_format_error_with_source_caret_and_hint(tmp_path):
    path, err = raises(tmp_path, DATA + "c: Convolution(4, kernal=3)\n")
    assert format_diagnostic(err.diagnostic) == (
        f"{path}:2:19: error: unknown parameter 'kernal' for Convolution\n"
        "    c: Convolution(4, kernal=3)\n"
        "                      ^~~~~~~~\n"
        "hint: did you mean 'kernel'?")
    assert str(err) == format_diagnostic(err.diagnostic)


def test_format_uses_given_sources_and_single_caret():
    d = Diagnostic("bad thing", Span("virtual.net", 2, 5), "fix it")
    assert format_diagnostic(d, {"virtual.net": "first\nabc defg\n"}) == (
        "virtual.net:2:5: error: bad thing\n    abc defg\n        ^\nhint: fix it")


def test_format_without_span_or_readable_file():
    assert format_diagnostic(Diagnostic("no such file: x.net", None, "check the path")) == \
        "netc: error: no such file: x.net\nhint: check the path"
    assert format_diagnostic(Diagnostic("oops", Span("/nonexistent/x.net", 3, 1))) == \
        "/nonexistent/x.net:3:1: error: oops"


def test_format_warning(tmp_path):
    path, net = compile_text(tmp_path, DATA + "input label [1]\nb: InnerProduct(10)\nl: SoftmaxWithLoss(b, label)\n")
    lines = format_diagnostic(net.warnings[0]).splitlines()
    assert lines[0] == f"{path}:3:1: warning: the weights of 'b' start at 0 (Caffe's default filler), " \
                       "so its units all learn the same thing"
    assert lines[1] == "    b: InnerProduct(10)"
    assert lines[2] == "    ^~~~~~~~~~~~~~~~~~~"


def test_caret_is_clipped_to_the_line():
    d = Diagnostic("m", Span("v.net", 1, 3, 2, 4))
    assert format_diagnostic(d, {"v.net": "abcdef\nxy\n"}).splitlines()[2] == "      ^"
