"""Tests for netc.caffe.to_net (`netc import`): a prototxt and the .net made from it
check to the same net in both phases: layers, blobs, shapes, parameters and MACs."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from netc.caffe.prototxt import solver_from_prototxt
from netc.caffe.to_net import find_solver_for, prototxt_to_net_text
from netc.compile import compile_net
from netc.errors import NetcError
from netc.report import to_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_prototxt import MODELS, data_overrides, ids, needs_shared, net_files  # noqa: E402

sys.path.pop(0)

PHASES = ("train", "test")


def _cli() -> list[str]:
    netc = shutil.which("netc")
    return [netc] if netc else [sys.executable, "-m", "netc"]


def import_to(tmp_path: Path, prototxt: Path, name: str = "imported.net") -> Path:
    out = tmp_path / name
    out.write_text(prototxt_to_net_text(str(prototxt)))
    return out


def same_value(a, b) -> bool:
    """Equal, with floats compared as Caffe's float32 values (0.01 in .net vs float32(0.01) in protobuf)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    if is_dataclass(a) and type(a) is type(b):
        return all(same_value(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_net(proto, net) -> None:
    assert [l.name for l in net.layers] == [l.name for l in proto.layers]
    for lp, ln in zip(proto.layers, net.layers):
        assert (ln.type, ln.bottoms, ln.tops) == (lp.type, lp.bottoms, lp.tops), lp.name
        keys = set(lp.params) | set(ln.params)
        # resolved paths differ by design: cwd-relative in Caffe, file-relative in .net
        keys -= {k for k in keys if k.endswith("_path")}
        # `stride: 1` may be left out: the normalised pad_hw / stride_hw / dilation_hw say the same
        keys -= {k for k in ("pad", "stride", "dilation") if f"{k}_hw" in lp.params}
        for key in keys:
            assert same_value(lp.params.get(key), ln.params.get(key)), (lp.name, key)
        assert same_value(lp.param_specs, ln.param_specs), lp.name
        assert same_value(lp.loss_weight, ln.loss_weight), lp.name
    assert dict(net.blob_shapes) == dict(proto.blob_shapes)
    jp, jn = to_json(proto), to_json(net)
    assert jn["total_params"] == jp["total_params"]
    assert jn["total_macs"] == jp["total_macs"]
    assert jn["layers"] == jp["layers"]
    assert jn["blobs"] == jp["blobs"]


@needs_shared
@pytest.mark.parametrize("path", net_files(), ids=ids(net_files()))
def test_import_round_trip(tmp_path, path):
    out = import_to(tmp_path, path)
    for phase in PHASES:
        overrides = data_overrides(path, phase)
        proto = compile_net(str(path), phase, overrides)
        net = compile_net(str(out), phase, overrides)
        assert net.origin == "net"
        assert_same_net(proto, net)
        assert net.name == proto.name


@needs_shared
@pytest.mark.parametrize("path", [p for p in net_files() if "googlenet" in str(p)],
                         ids=ids([p for p in net_files() if "googlenet" in str(p)]))
def test_import_without_modules(tmp_path, path):
    out = tmp_path / "flat.net"
    out.write_text(prototxt_to_net_text(str(path), modules=False))
    for phase in PHASES:
        overrides = data_overrides(path, phase)
        assert_same_net(compile_net(str(path), phase, overrides), compile_net(str(out), phase, overrides))


@needs_shared
def test_imported_text_reads_like_caffe(tmp_path):
    text = prototxt_to_net_text(str(MODELS / "examples" / "mnist" / "lenet_train_test.prototxt"))
    lines = text.splitlines()
    assert "net LeNet" in lines
    assert 'mnist: Data(source="examples/mnist/mnist_train_lmdb", batch_size=64, backend=LMDB, ' \
           'scale=0.00390625) @train' in lines
    assert "conv1: Convolution(20, kernel_size=5, weight_filler=xavier, lr_mult=[1, 2])" in lines
    assert "pool1: Pooling(kernel_size=2, stride=2)" in lines
    assert "relu1: ReLU!" in lines
    assert "accuracy: Accuracy(ip2, label) @test" in lines
    assert "loss: SoftmaxWithLoss(ip2, label)" in lines
    solver = [l for l in lines if l.startswith("solver ")]
    assert solver and solver[0].startswith("solver SGD(base_lr=0.01, momentum=0.9, weight_decay=0.0005, "
                                           "lr_policy=inv(gamma=0.0001, power=0.75)")
    # GoogLeNet: names with '/' are quoted, LRN's float32 alpha is written as Caffe's user wrote it
    text = prototxt_to_net_text(str(MODELS / "models" / "bvlc_googlenet" / "deploy.prototxt"))
    assert '"pool1/norm1": LRN(alpha=0.0001)' in text.splitlines()
    assert "input data [10, 3, 224, 224]" in text.splitlines()
    # the nine inception blocks become one module with six numbers each
    lines = text.splitlines()
    assert "module inception(n_1x1, n_3x3_reduce, n_3x3, n_5x5_reduce, n_5x5, n_pool_proj) {" in lines
    assert "  output: Concat(1x1, 3x3, 5x5, pool_proj)" in lines
    assert "inception_3a: inception(64, 96, 128, 16, 32, 32)" in lines
    assert "inception_5b: inception(384, 192, 384, 48, 128, 128)" in lines
    assert sum(1 for l in lines if ": inception(" in l) == 9
    flat = prototxt_to_net_text(str(MODELS / "models" / "bvlc_googlenet" / "deploy.prototxt"), modules=False)
    assert "module" not in flat
    assert '"inception_3a/output": Concat("inception_3a/1x1", "inception_3a/3x3", "inception_3a/5x5", ' \
           '"inception_3a/pool_proj")' in flat


@needs_shared
def test_imported_solver_matches(tmp_path):
    for net_path in (MODELS / "examples" / "mnist" / "lenet_train_test.prototxt",
                     MODELS / "models" / "bvlc_alexnet" / "train_val.prototxt",
                     MODELS / "models" / "bvlc_googlenet" / "train_val.prototxt"):
        solver_path = find_solver_for(str(net_path))
        assert solver_path is not None
        expected = solver_from_prototxt(solver_path)
        out = import_to(tmp_path, net_path, net_path.parent.name + ".net")
        got = compile_net(str(out), "train", data_overrides(net_path, "train")).solver
        assert got is not None and got.type == expected.type
        assert set(got.fields) == set(expected.fields)
        for key in expected.fields:
            assert same_value(got.fields[key], expected.fields[key]), key
    assert find_solver_for(str(MODELS / "models" / "bvlc_googlenet" / "deploy.prototxt")) is None
    assert Path(find_solver_for(str(MODELS / "models" / "bvlc_googlenet" / "train_val.prototxt"))).name \
        == "solver.prototxt"


@needs_shared
def test_cli_import_then_check(tmp_path):
    src = MODELS / "models" / "bvlc_alexnet" / "train_val.prototxt"
    out = tmp_path / "alexnet.net"
    result = subprocess.run(_cli() + ["import", str(src), "-o", str(out)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and out.read_text().startswith("#")
    for phase in PHASES:
        result = subprocess.run(_cli() + ["check", str(out), "--phase", phase, "--json",
                                          "--input", "data=10,3,227,227"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert '"total_params": 60965224' in result.stdout
    deploy = MODELS / "models" / "bvlc_googlenet" / "deploy.prototxt"
    result = subprocess.run(_cli() + ["import", str(deploy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "net GoogleNet" in result.stdout


# ---------------------------------------------------------------------------
# Written here: the corners of the language
# ---------------------------------------------------------------------------

def write(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def round_trip(tmp_path: Path, path: Path, overrides=None) -> str:
    out = import_to(tmp_path, path, path.stem + ".net")
    for phase in PHASES:
        assert_same_net(compile_net(str(path), phase, overrides), compile_net(str(out), phase, overrides))
    return out.read_text()


def test_phase_branches_and_implicit_inputs(tmp_path):
    # the blob a statement reads implicitly differs by phase: the importer must name it
    path = write(tmp_path, """
        name: "branches"
        input: "data"
        input_shape { dim: 2 dim: 3 dim: 9 dim: 9 }
        layer { name: "a" type: "Convolution" bottom: "data" top: "a"
                convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
        layer { name: "t" type: "ReLU" bottom: "a" top: "t" include { phase: TRAIN } }
        layer { name: "b" type: "Pooling" bottom: "a" top: "b" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
        layer { name: "e" type: "ReLU" bottom: "b" top: "e" exclude { phase: TRAIN } }
        layer { name: "c" type: "Eltwise" bottom: "b" bottom: "b" top: "c"
                eltwise_param { operation: MAX } }
        """)
    text = round_trip(tmp_path, path)
    assert "input data [2, 3, 9, 9]" in text
    assert "t: ReLU -> t @train" in text or "t: ReLU @train" in text
    assert "b: Pooling(a, AVE, kernel_size=3, stride=2)" in text
    assert "e: ReLU @test" in text
    assert "c: Eltwise(b, b, MAX)" in text


def test_names_that_need_quotes(tmp_path):
    path = write(tmp_path, """
        name: "odd names"
        layer { name: "in put" type: "Input" top: "input" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
        layer { name: "net" type: "Pooling" bottom: "input" top: "max" pooling_param { kernel_size: 2 } }
        layer { name: "true" type: "Pooling" bottom: "max" top: "ave"
                pooling_param { pool: AVE kernel_size: 1 } }
        layer { name: "p2" type: "Pooling" bottom: "max" top: "p2" pooling_param { pool: AVE kernel_size: 1 } }
        layer { name: "3x3/a" type: "Convolution" bottom: "max" top: "x\\"y"
                param { name: "shared_w" } param { name: "shared_b" lr_mult: 2 }
                convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 mean: 1 }
                                    bias_filler { type: "constant" value: -0.25 } } }
        layer { name: "é" type: "Convolution" bottom: "max" top: "y"
                param { name: "shared_w" } param { name: "shared_b" lr_mult: 2 }
                convolution_param { num_output: 2 kernel_size: 1 } }
        """)
    text = round_trip(tmp_path, path)
    assert 'net "odd names"' in text
    assert '"in put": Input(shape=[1, 2, 4, 4]) -> "input"' in text
    assert '"net": Pooling(kernel_size=2) -> max' in text
    assert '"true": Pooling(AVE, kernel_size=1) -> ave' in text
    assert 'p2: Pooling("max", AVE, kernel_size=1)' in text      # a bare max would read as pool=MAX
    assert '-> "x\\"y"' in text
    assert 'weight_filler=gaussian(mean=1, std=0.5), bias_filler=constant(value=-0.25)' in text
    assert 'share=[shared_w, shared_b]' in text


def test_in_place_multi_top_and_losses(tmp_path):
    path = write(tmp_path, """
        layer { name: "data" type: "Input" top: "data" top: "label"
                input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
        layer { name: "bn" type: "BatchNorm" bottom: "ip" top: "ip" }
        layer { name: "sc" type: "Scale" bottom: "ip" top: "ip" scale_param { bias_term: true } }
        layer { name: "split" type: "Slice" bottom: "ip" top: "s1" top: "s2" slice_param { slice_point: 1 } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" loss_weight: 0.5 }
        layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
        """)
    text = round_trip(tmp_path, path)
    assert "data: Input(shape=[[4, 6], [4]]) -> data, label" in text
    assert "bn: BatchNorm!" in text and "sc: Scale(bias_term=true)!" in text
    assert "split: Slice(slice_point=1) -> s1, s2" in text
    assert "loss: SoftmaxWithLoss(ip, label, loss_weight=0.5)" in text


def test_import_reports_prototxt_errors(tmp_path):
    path = write(tmp_path, """
        input: "data"
        input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }
        layer { name: "r" type: "ReLU" bottom: "dta" top: "r" }
        """)
    with pytest.raises(NetcError) as err:
        prototxt_to_net_text(str(path))
    assert err.value.message == "unknown blob 'dta'" and err.value.span.file == str(path)
    result = subprocess.run(_cli() + ["import", str(path), "-o", str(tmp_path / "x.net")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "unknown blob 'dta'" in result.stderr
    assert not (tmp_path / "x.net").exists()


def test_repeated_blocks_become_a_module(tmp_path):
    def block(name: str, source: str, n: int, pool: str, std: float) -> str:
        return f"""
        layer {{ name: "{name}/conv" type: "Convolution" bottom: "{source}" top: "{name}/conv"
                convolution_param {{ num_output: {n} kernel_size: 3 pad: 1
                                     weight_filler {{ type: "gaussian" std: {std} }} }} }}
        layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}/conv" top: "{name}/conv" }}
        layer {{ name: "{name}/pool" type: "Pooling" bottom: "{source}" top: "{name}/pool"
                pooling_param {{ pool: {pool} kernel_size: 3 stride: 1 pad: 1 }} }}
        layer {{ name: "{name}/out" type: "Concat" bottom: "{name}/conv" bottom: "{name}/pool" top: "{name}/out" }}
        """
    path = write(tmp_path, """
        input: "data"
        input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
        """ + block("b1", "data", 4, "MAX", 0.1) + block("b2", "b1/out", 5, "AVE", 0.1)
                 + block("b3", "b1/out", 6, "MAX", 0.2) + """
        layer { name: "sum" type: "Concat" bottom: "b2/out" bottom: "b3/out" top: "sum" }
        """)
    text = round_trip(tmp_path, path)
    lines = text.splitlines()
    # b2 leaves pool at its default (MAX): the module takes it as a parameter
    assert "module b(n_conv, conv_weight_filler, pool_pool) {" in lines
    assert "  pool: Pooling(in, pool_pool, pad=1, kernel_size=3)" in lines
    assert "b1: b(4, conv_weight_filler=gaussian(std=0.1), pool_pool=MAX)" in lines
    assert "b2: b(5, conv_weight_filler=gaussian(std=0.1), pool_pool=AVE)" in lines
    assert 'b3: b("b1/out", 6, conv_weight_filler=gaussian(std=0.2), pool_pool=MAX)' in lines
    assert 'sum: Concat("b2/out", "b3/out")' in lines


def test_shared_parameters(tmp_path):
    path = write(tmp_path, """
        input: "data"
        input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
        layer { name: "a" type: "Convolution" bottom: "data" top: "a" param { name: "w" } param { lr_mult: 2 }
                convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "b" type: "Convolution" bottom: "data" top: "b" param { name: "w" } param { lr_mult: 2 }
                convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }
        """)
    text = round_trip(tmp_path, path)
    assert "b: Convolution(data, 2, kernel_size=1, lr_mult=[1, 2], share=[w])" in text.splitlines()
    out = tmp_path / "net.net"
    assert to_json(compile_net(str(out)))["total_params"] == 2 * 2 + 2 + 2    # w once, two biases


def test_names_that_would_read_as_numbers_are_quoted(tmp_path):
    # `1e5` is a NAME at the start of a statement but a number inside arguments
    path = write(tmp_path, """
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
        layer { name: "1e5" type: "ReLU" bottom: "data" top: "1e5" }
        layer { name: "other" type: "ReLU" bottom: "data" top: "other" }
        layer { name: "sum" type: "Eltwise" bottom: "1e5" bottom: "other" top: "sum" }
        """)
    text = round_trip(tmp_path, path)
    assert 'sum: Eltwise("1e5", other)' in text


def test_plain_names_follow_the_grammar():
    from netc.lang.parser import is_plain_name
    assert is_plain_name("conv1") and is_plain_name("3x3_reduce")
    assert not is_plain_name("1e5") and not is_plain_name("12")        # numbers
    assert not is_plain_name("module") and not is_plain_name("net")    # keywords
    assert not is_plain_name("conv1/7x7") and not is_plain_name("a b")
