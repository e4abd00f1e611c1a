"""AST → IR: data flow, layer names, modules, phases, common keywords, the solver block."""
import os

import pytest

from netc.errors import NetcError
from netc.ir import Filler, ParamSpec
from netc.lang.parser import parse_text
from netc.passes.expand import expand


def ir(text, phase="test", path="/work/x/t.net"):
    return expand(parse_text(text, path), phase)


def wiring(net):
    return [(l.name, l.type, l.bottoms, l.tops) for l in net.layers]


DATA = "input data [1, 3, 8, 8]\n"


def test_implicit_flow_and_chain_names():
    net = ir(DATA + "input label [1]\nconv1: Convolution(4, kernel=3) ReLU!\nip: InnerProduct(10) Dropout\n"
                    'loss: SoftmaxWithLoss("ip/dropout", label)\n')
    assert wiring(net) == [
        ("data", "Input", (), ("data",)),
        ("label", "Input", (), ("label",)),   # a second input does not redirect the flow
        ("conv1", "Convolution", ("data",), ("conv1",)),
        ("conv1/relu", "ReLU", ("conv1",), ("conv1",)),
        ("ip", "InnerProduct", ("conv1",), ("ip",)),
        ("ip/dropout", "Dropout", ("ip",), ("ip/dropout",)),
        ("loss", "SoftmaxWithLoss", ("ip/dropout", "label"), ("loss",)),
    ]


def test_unlabelled_layers_are_numbered():
    net = ir(DATA + "ReLU\nReLU\nSigmoid\n")
    assert [l.name for l in net.layers[1:]] == ["relu", "relu_2", "sigmoid"]
    assert net.layers[2].bottoms == ("relu",)


def test_explicit_outputs_and_in_place_by_name():
    net = ir(DATA + "s: Slice(slice_point=[1]) -> a, b\nr: ReLU(b) -> b\nc: Concat(a, b)\n")
    assert wiring(net)[1:] == [
        ("s", "Slice", ("data",), ("a", "b")),
        ("r", "ReLU", ("b",), ("b",)),
        ("c", "Concat", ("a", "b"), ("c",)),
    ]


def test_phases():
    text = DATA + "t: ReLU @train\ne: Sigmoid(data) @test\nboth: TanH(data) @train @test\n"
    assert [l.name for l in ir(text, "train").layers] == ["data", "t", "both"]
    assert [l.name for l in ir(text, "test").layers] == ["data", "e", "both"]


def test_phase_specific_inputs():
    text = "input data [1, 2] @train\ninput data [5, 2] @test\nr: ReLU\n"
    assert ir(text, "train").layers[0].params["shape"] == ((1, 2),)
    assert ir(text, "test").layers[0].params["shape"] == ((5, 2),)


def test_net_name_defaults_to_file_name():
    assert ir(DATA, path="/a/b/my_net.net").name == "my_net"
    assert ir("net Foo\n" + DATA).name == "Foo"


def test_enum_positional_and_blob_names():
    net = ir(DATA + "p: Pooling(ave, kernel=2)\nq: Pooling(data, MAX, kernel=2)\n")
    assert net.layer("p").params["pool"] == "AVE" and net.layer("p").bottoms == ("data",)
    assert net.layer("q").params["pool"] == "MAX" and net.layer("q").bottoms == ("data",)


def test_blob_named_like_nothing_enum_is_still_a_blob():
    with pytest.raises(NetcError, match="unknown blob 'dat'"):
        ir(DATA + "p: Pooling(dat, kernel=2)\n")


def test_fillers_and_aliases():
    net = ir(DATA + "c: Convolution(4, kernel=3, weight=gaussian(std=0.01), bias=constant(0.2))\n"
                    "d: Convolution(data, 4, kernel_size=3, weight_filler=uniform(-1, 1), bias_filler=0.5)\n")
    c, d = net.layer("c").params, net.layer("d").params
    assert c["weight_filler"] == Filler("gaussian", std=0.01)
    assert c["bias_filler"] == Filler("constant", value=0.2)
    assert d["weight_filler"] == Filler("uniform", min=-1.0, max=1.0)
    assert d["bias_filler"] == Filler("constant", value=0.5)
    assert c["kernel"] == (3, 3) and c["stride_hw"] == (1, 1) and c["pad_hw"] == (0, 0)


def test_common_keywords():
    net = ir(DATA + "input label [1]\n"
                    "c: Convolution(4, kernel=3, lr_mult=[1, 2], decay_mult=[1, 0], share=[w, b])\n"
                    "l: SoftmaxWithLoss(c, label, loss_weight=0.5)\n")
    assert net.layer("c").param_specs == (ParamSpec("w", 1.0, 1.0), ParamSpec("b", 2.0, 0.0))
    assert net.layer("l").loss_weight == (0.5,)


def test_source_is_relative_to_the_net_file():
    net = ir('d: IDXData(source="mnist", batch=2)\n', path="/data/nets/m.net")
    assert net.layer("d").params["source_path"] == os.path.join("/data/nets", "mnist")
    assert net.layer("d").tops == ("data", "label")


def test_module_expansion_names_and_flow():
    text = ("module incep(c1, c3) {\n"
            "  1x1: Convolution(in, c1, kernel=1)\n"
            "  3x3_reduce: Convolution(in, c3 // 2, kernel=1) ReLU!\n"
            "  3x3: Convolution(c3, kernel=3, pad=1)\n"
            "  out: Concat(1x1, 3x3)\n"
            "}\n" + DATA + "a: incep(4, 8)\nincep(2, c3=4)\np: Pooling(a, kernel=2)\n")
    net = ir(text)
    names = [l.name for l in net.layers]
    assert names == ["data", "a/1x1", "a/3x3_reduce", "a/3x3_reduce/relu", "a/3x3", "a/out",
                     "incep_1/1x1", "incep_1/3x3_reduce", "incep_1/3x3_reduce/relu", "incep_1/3x3", "incep_1/out",
                     "p"]
    assert net.layer("a/1x1").bottoms == ("data",)
    assert net.layer("a/3x3_reduce").params["num_output"] == 4
    assert net.layer("a/3x3").bottoms == ("a/3x3_reduce",)
    assert net.layer("a/out").bottoms == ("a/1x1", "a/3x3")
    assert net.layer("incep_1/1x1").bottoms == ("a/out",)      # the instance reads the previous output
    assert net.layer("incep_1/3x3_reduce").params["num_output"] == 2
    assert net.layer("p").bottoms == ("a/out",)                # naming an instance means its output
    assert net.layer("a/1x1").module == ("a",)
    assert net.layer("a/1x1").trace[0][0] == "in instance 'a' of module 'incep'"


def test_module_default_uses_earlier_parameter():
    net = ir("module m(c, d=c * 2) {\n  x: InnerProduct(d)\n}\n" + DATA + "m(3)\nm(3, 5)\n")
    assert net.layer("m_1/x").params["num_output"] == 6
    assert net.layer("m_2/x").params["num_output"] == 5


def test_module_parameter_as_enum_and_blob_name_output():
    mod = "module pool(kind) {\n  p: Pooling(kind, kernel=2)\n}\n" + DATA
    net = ir(mod + "x: pool(kind=AVE) -> y\nr: ReLU(y)\n")
    assert net.layer("x/p").params["pool"] == "AVE"
    assert net.layer("r").bottoms == ("x/p",)
    # positional, a bare name is the instance's input blob
    with pytest.raises(NetcError, match="unknown blob 'AVE'") as info:
        ir(mod + "x: pool(AVE)\n")
    assert info.value.hint == ("a bare name in a module's arguments is its input blob; to pass 'AVE' as a value, "
                               "name the parameter: pool(kind=AVE)")
    assert (info.value.span.line, info.value.span.column) == (5, 9)


def test_module_that_produces_nothing():
    with pytest.raises(NetcError, match="module 'm' produces nothing"):
        ir("module m() {\n  a: ReLU(data) @train\n}\n" + DATA + "x: m()\n")


def test_solver_spec():
    net = ir(DATA + "solver SGD(lr=0.01, momentum=0.9, lr_policy=step(gamma=0.1, stepsize=100), "
                    "test_iter=[10], regularization=L1)\n")
    s = net.solver
    assert s.type == "SGD"
    assert dict(s.fields) == {"base_lr": 0.01, "momentum": 0.9, "lr_policy": "step", "gamma": 0.1,
                              "stepsize": 100, "test_iter": (10,), "regularization_type": "L1"}


def test_solver_multistep_and_string_policy():
    net = ir(DATA + 'solver Adam(lr_policy="multistep", gamma=0.5, stepvalue=[10, 20])\n')
    assert net.solver.fields["lr_policy"] == "multistep"
    assert net.solver.fields["stepvalue"] == (10, 20)


def test_bad_regularization():
    with pytest.raises(NetcError, match="regularization is L1 or L2"):
        ir(DATA + "solver SGD(regularization=L3)\n")


def test_naming_an_in_place_layer_means_the_blob_it_wrote(tmp_path):
    from netc.compile import compile_net
    path = tmp_path / "alias.net"
    path.write_text("input data [1, 2, 4, 4]\nconv1: Convolution(3, kernel=3, weight=xavier)\n"
                    "relu1: ReLU!\nother: Convolution(data, 3, kernel=3, weight=xavier)\n"
                    "pool: Pooling(relu1, MAX, kernel=2)\n")
    net = compile_net(str(path))
    assert net.layer("relu1").tops == ("conv1",)
    assert net.layer("pool").bottoms == ("conv1",)
