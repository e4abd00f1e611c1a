"""Tests for netc.caffe.load: parsing real Caffe files and locating their parts.

Expected values are worked out here from the file text with plain regular
expressions, independently of the loader's own scanner.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netc.caffe import caffe_pb2
from netc.caffe.load import (
    PrototxtSource,
    is_solver_prototxt,
    load_caffemodel,
    load_prototxt,
    load_solver_prototxt,
)
from netc.errors import NetcError, Span

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
MODELS = SHARED / "caffe_models"
CAFFEMODEL = SHARED / "pretrained" / "lenet_iter_10000.caffemodel"

needs_shared = pytest.mark.skipif(not MODELS.is_dir(), reason="shared/ reference files missing")


def _all_prototxts() -> list[Path]:
    return sorted(MODELS.rglob("*.prototxt")) if MODELS.is_dir() else []


def _is_solver_file(path: Path) -> bool:
    return "solver" in path.name


NET_FILES = [p for p in _all_prototxts() if not _is_solver_file(p)]
SOLVER_FILES = [p for p in _all_prototxts() if _is_solver_file(p)]


def _ids(paths):
    return [str(p.relative_to(MODELS)) for p in paths]


def _expected_layers(text: str) -> list[tuple[int, str]]:
    """(line, name) of each top-level `layer {` block, found by regex.

    The shared files start each layer at column 1 with its name on one of the
    following lines.
    """
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if re.match(r"^layers?\s*\{", line):
            for follow in lines[i + 1:]:
                m = re.match(r'^\s*name:\s*"([^"]*)"', follow)
                if m:
                    out.append((i + 1, m.group(1)))
                    break
    return out


def _first_field_line(lines: list[str], start: int, end: int, field: str):
    """1-based (line, column) of the first `field:` / `field {` in a range."""
    pat = re.compile(rf"(?<![\w]){re.escape(field)}\s*[:{{]")
    for no in range(start, end + 1):
        code = lines[no - 1].split("#", 1)[0]
        m = pat.search(code)
        if m:
            return no, m.start() + 1
    return None


# ---------------------------------------------------------------------------
# The shared reference models
# ---------------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("path", NET_FILES, ids=_ids(NET_FILES))
def test_every_shared_net_parses_with_its_layers(path):
    src = load_prototxt(str(path))
    assert isinstance(src, PrototxtSource)
    expected = _expected_layers(path.read_text())
    assert expected, "the regex found no layers; the test itself is broken"
    assert [l.name for l in src.net.layer] == [name for _, name in expected]
    assert len(src.layer_spans) == len(src.net.layer)
    assert not src.net.layers  # nothing left in V1 form
    assert src.text == path.read_text()
    assert src.path == str(path)


@needs_shared
def test_known_layer_counts_and_names():
    lenet = load_prototxt(str(MODELS / "examples/mnist/lenet.prototxt"))
    assert [l.name for l in lenet.net.layer] == [
        "data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob"]
    assert [l.type for l in lenet.net.layer] == [
        "Input", "Convolution", "Pooling", "Convolution", "Pooling",
        "InnerProduct", "ReLU", "InnerProduct", "Softmax"]
    assert list(lenet.net.layer[0].input_param.shape[0].dim) == [64, 1, 28, 28]
    googlenet = load_prototxt(str(MODELS / "models/bvlc_googlenet/deploy.prototxt"))
    assert len(googlenet.net.layer) == 143
    alexnet = load_prototxt(str(MODELS / "models/bvlc_alexnet/deploy.prototxt"))
    norm1 = next(l for l in alexnet.net.layer if l.name == "norm1")
    assert norm1.lrn_param.local_size == 5
    # Caffe keeps LRN alpha as float32.
    assert norm1.lrn_param.alpha == pytest.approx(9.99999974737875e-05, rel=0, abs=1e-18)


@needs_shared
@pytest.mark.parametrize("path", SOLVER_FILES, ids=_ids(SOLVER_FILES))
def test_every_shared_solver_parses(path):
    assert is_solver_prototxt(path.read_text())
    solver, spans = load_solver_prototxt(str(path))
    assert isinstance(solver, caffe_pb2.SolverParameter)
    lines = path.read_text().splitlines()
    line = next(i for i, l in enumerate(lines, 1) if l.startswith("base_lr:"))
    assert (spans["base_lr"].line, spans["base_lr"].column) == (line, 1)
    assert solver.net.endswith(".prototxt")
    assert solver.base_lr > 0 and solver.max_iter > 0


@needs_shared
def test_lenet_solver_values():
    solver, _ = load_solver_prototxt(str(MODELS / "examples/mnist/lenet_solver.prototxt"))
    assert solver.net == "examples/mnist/lenet_train_test.prototxt"
    assert list(solver.test_iter) == [100]
    assert solver.test_interval == 500
    assert solver.base_lr == pytest.approx(0.01)
    assert solver.momentum == pytest.approx(0.9)
    assert solver.weight_decay == pytest.approx(0.0005)
    assert solver.lr_policy == "inv"
    assert solver.gamma == pytest.approx(1e-4)
    assert solver.power == pytest.approx(0.75)
    assert solver.max_iter == 10000
    assert solver.snapshot == 5000
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU
    assert solver.type == "SGD"


@needs_shared
@pytest.mark.parametrize("path", NET_FILES, ids=_ids(NET_FILES))
def test_net_files_are_not_solvers(path):
    assert not is_solver_prototxt(path.read_text())


@needs_shared
@pytest.mark.parametrize("path", NET_FILES, ids=_ids(NET_FILES))
def test_layer_spans_point_at_layer_blocks(path):
    src = load_prototxt(str(path))
    lines = src.text.splitlines()
    starts = [s.line for s in src.layer_spans] + [len(lines) + 1]
    for i, (layer, span) in enumerate(zip(src.net.layer, src.layer_spans)):
        assert span.file == str(path)
        line = lines[span.line - 1]
        assert "layer" in line
        assert line[span.column - 1:].startswith("layer")
        block = "\n".join(lines[span.line:starts[i + 1] - 1])
        assert f'"{layer.name}"' in block


@needs_shared
@pytest.mark.parametrize("path", NET_FILES, ids=_ids(NET_FILES))
def test_field_span_lands_on_the_fields_line(path):
    src = load_prototxt(str(path))
    lines = src.text.splitlines()
    starts = [s.line for s in src.layer_spans] + [len(lines) + 1]
    for i, layer in enumerate(src.net.layer):
        fields = ["name", "type", "top", "bottom"]
        if layer.HasField("convolution_param"):
            fields += ["num_output", "kernel_size", "weight_filler"]
        if layer.HasField("pooling_param"):
            fields += ["pool", "kernel_size", "stride"]
        for f in fields:
            expected = _first_field_line(lines, starts[i], starts[i + 1] - 1, f)
            span = src.field_span(i, f)
            if expected is None:
                assert span == src.layer_spans[i], (layer.name, f)
            else:
                assert (span.line, span.column) == expected, (layer.name, f)
                assert span.file == str(path)


@needs_shared
def test_field_span_specific_lines_in_lenet():
    path = MODELS / "examples/mnist/lenet.prototxt"
    src = load_prototxt(str(path))
    lines = src.text.splitlines()
    conv1 = [l.name for l in src.net.layer].index("conv1")
    span = src.field_span(conv1, "kernel_size")
    assert lines[span.line - 1].strip() == "kernel_size: 5"
    assert span.column == lines[span.line - 1].index("kernel_size") + 1
    span = src.field_span(conv1, "num_output")
    assert lines[span.line - 1].strip() == "num_output: 20"
    # A field the layer never writes falls back to the layer itself.
    assert src.field_span(conv1, "dilation") == src.layer_spans[conv1]


# ---------------------------------------------------------------------------
# Binary weights
# ---------------------------------------------------------------------------

def _blob_shape(blob: caffe_pb2.BlobProto) -> list[int]:
    """A blob's shape whether stored as `shape` or legacy 4-d dims."""
    if blob.HasField("shape"):
        return list(blob.shape.dim)
    dims = [blob.num, blob.channels, blob.height, blob.width]
    # Legacy blobs pad on the left with 1s (a 10x500 matrix is 1x1x10x500).
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return dims


needs_model = pytest.mark.skipif(not CAFFEMODEL.is_file(), reason="shared caffemodel missing")


@needs_model
def test_pretrained_lenet_caffemodel():
    net = load_caffemodel(str(CAFFEMODEL))
    by_name = {l.name: l for l in net.layer}
    expected = {
        "conv1": ([20, 1, 5, 5], [20]),
        "conv2": ([50, 20, 5, 5], [50]),
        "ip1": ([500, 800], [500]),
        "ip2": ([10, 500], [10]),
    }
    for name, (w_shape, b_shape) in expected.items():
        layer = by_name[name]
        assert len(layer.blobs) == 2, name
        weight, bias = layer.blobs
        assert _blob_shape(weight) == w_shape, name
        assert _blob_shape(bias) == b_shape, name
        n = 1
        for d in w_shape:
            n *= d
        assert len(weight.data) == n
        assert len(bias.data) == b_shape[0]
    total = sum(len(b.data) for l in net.layer for b in l.blobs)
    assert total == 431080  # Caffe's LeNet parameter count


@needs_model
def test_caffemodel_round_trips_byte_for_byte():
    # Re-encoding reproduces the file exactly only if every field in it is
    # known to our schema with the right number and type.
    data = CAFFEMODEL.read_bytes()
    net = caffe_pb2.NetParameter()
    net.ParseFromString(data)
    assert net.SerializeToString() == data


@needs_model
def test_truncated_caffemodel_names_the_file(tmp_path):
    data = CAFFEMODEL.read_bytes()
    broken = tmp_path / "broken.caffemodel"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetcError) as info:
        load_caffemodel(str(broken))
    assert str(broken) in info.value.message


def test_missing_caffemodel(tmp_path):
    missing = tmp_path / "nope.caffemodel"
    with pytest.raises(NetcError) as info:
        load_caffemodel(str(missing))
    assert str(missing) in info.value.message
    assert info.value.span is None


def test_text_file_passed_as_caffemodel(tmp_path):
    p = tmp_path / "net.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n}\n')
    with pytest.raises(NetcError) as info:
        load_caffemodel(str(p))
    assert str(p) in info.value.message
    assert "prototxt" in info.value.hint


def test_v1_binary_caffemodel_is_upgraded(tmp_path):
    old = caffe_pb2.NetParameter(name="old")
    layer = old.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.bottom.append("data")
    layer.top.append("ip")
    layer.blobs_lr.extend([1, 2])
    layer.weight_decay.extend([1, 0])
    w = layer.blobs.add(num=1, channels=1, height=3, width=4)
    w.data.extend([0.5] * 12)
    b = layer.blobs.add(num=1, channels=1, height=1, width=3)
    b.data.extend([0.0] * 3)
    p = tmp_path / "old.caffemodel"
    p.write_bytes(old.SerializeToString())

    net = load_caffemodel(str(p))
    assert not net.layers
    (ip,) = net.layer
    assert ip.type == "InnerProduct"
    assert [(s.lr_mult, s.decay_mult) for s in ip.param] == [(1, 1), (2, 0)]
    # Legacy dims are kept as stored; the caller interprets them.
    assert (ip.blobs[0].num, ip.blobs[0].channels, ip.blobs[0].height, ip.blobs[0].width) \
        == (1, 1, 3, 4)
    assert not ip.blobs[0].HasField("shape")
    assert _blob_shape(ip.blobs[0]) == [3, 4]


# ---------------------------------------------------------------------------
# Legacy formats
# ---------------------------------------------------------------------------

V1_LENET = """\
name: "LeNetV1"
layers {
  name: "mnist"
  type: DATA
  top: "data"
  top: "label"
  data_param {
    source: "mnist_train_lmdb"
    backend: LMDB
    batch_size: 64
    scale: 0.00390625
  }
  include: { phase: TRAIN }
}
layers {
  name: "conv1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler { type: "xavier" }
  }
}
layers {
  name: "pool1"
  type: POOLING
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1"
  type: INNER_PRODUCT
  bottom: "pool1"
  top: "ip1"
  blobs_lr: 1
  blobs_lr: 2
  inner_product_param { num_output: 10 }
}
layers {
  name: "loss"
  type: SOFTMAX_LOSS
  bottom: "ip1"
  bottom: "label"
  top: "loss"
}
"""


def test_v1_prototxt_is_upgraded(tmp_path):
    p = tmp_path / "lenet_v1.prototxt"
    p.write_text(V1_LENET)
    src = load_prototxt(str(p))
    net = src.net
    assert not net.layers
    assert [l.name for l in net.layer] == ["mnist", "conv1", "pool1", "ip1", "loss"]
    assert [l.type for l in net.layer] == [
        "Data", "Convolution", "Pooling", "InnerProduct", "SoftmaxWithLoss"]
    conv1 = net.layer[1]
    assert [s.lr_mult for s in conv1.param] == [1, 2]
    assert [s.decay_mult for s in conv1.param] == [1, 0]
    assert conv1.convolution_param.num_output == 20
    assert list(conv1.convolution_param.kernel_size) == [5]
    assert conv1.convolution_param.weight_filler.type == "xavier"
    assert list(conv1.bottom) == ["data"] and list(conv1.top) == ["conv1"]
    ip1 = net.layer[3]
    assert [s.lr_mult for s in ip1.param] == [1, 2]
    assert not ip1.param[0].HasField("decay_mult")  # default 1 still applies
    assert net.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    data = net.layer[0]
    assert data.include[0].phase == caffe_pb2.TRAIN
    # V1 data layers kept preprocessing in data_param; it moves to transform_param.
    assert data.transform_param.scale == pytest.approx(0.00390625)
    assert not data.data_param.HasField("scale")
    # Spans point at the `layers` words.
    lines = V1_LENET.splitlines()
    assert [s.line for s in src.layer_spans] == [
        i + 1 for i, l in enumerate(lines) if l.startswith("layers {")]
    assert all(s.column == 1 for s in src.layer_spans)
    span = src.field_span(1, "blobs_lr")
    assert lines[span.line - 1].strip() == "blobs_lr: 1"


def test_every_v1_type_has_a_v2_name():
    from netc.caffe.load import V1_TYPE_NAMES
    enum = caffe_pb2.V1LayerParameter.LayerType
    assert set(V1_TYPE_NAMES) == set(enum.keys())


def test_other_block_syntaxes_are_located(tmp_path):
    # `layer: {`, `layer <...>` and list syntax are all valid text format.
    p = tmp_path / "syntax.prototxt"
    p.write_text('layer: {\n  name: "a"\n}\n'
                 'layer <\n  name: "b"\n  type: "ReLU"\n>\n'
                 'layer [\n  { name: "c" },\n  { name: "d" }\n]\n')
    src = load_prototxt(str(p))
    assert [l.name for l in src.net.layer] == ["a", "b", "c", "d"]
    assert [(s.line, s.column) for s in src.layer_spans] == [(1, 1), (4, 1), (9, 3), (10, 3)]
    assert src.field_span(1, "type").line == 6
    assert src.field_span(3, "name") == Span(str(p), 10, 5, 10, 9)


def test_mixed_layer_and_layers_is_rejected(tmp_path):
    p = tmp_path / "mixed.prototxt"
    p.write_text('layer {\n  name: "a"\n  type: "ReLU"\n}\nlayers {\n  name: "b"\n  type: RELU\n}\n')
    with pytest.raises(NetcError) as info:
        load_prototxt(str(p))
    assert (info.value.span.line, info.value.span.column) == (5, 1)


def test_legacy_inputs_are_kept_and_located(tmp_path):
    text = ('name: "deploy"\n'
            'input: "data"\n'
            'input_dim: 10\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n'
            '  input: "extra"\n'
            'input_shape { dim: 10 dim: 1 }\n'
            'layer {\n  name: "relu"\n  type: "ReLU"\n  bottom: "data"\n  top: "data"\n}\n')
    p = tmp_path / "deploy.prototxt"
    p.write_text(text)
    src = load_prototxt(str(p))
    assert list(src.net.input) == ["data", "extra"]
    assert list(src.net.input_dim) == [10, 3, 227, 227]
    assert list(src.net.input_shape[0].dim) == [10, 1]
    assert len(src.net.layer) == 1  # not turned into Input layers here
    assert src.input_spans["data"] == Span(str(p), 2, 1, 2, 6)
    assert (src.input_spans["extra"].line, src.input_spans["extra"].column) == (7, 3)
    assert src.layer_spans[0].line == 9


def test_solver_type_enum_becomes_type(tmp_path):
    p = tmp_path / "solver.prototxt"
    p.write_text('net: "net.prototxt"\nbase_lr: 0.1\nmax_iter: 10\nsolver_type: NESTEROV\n')
    solver, _ = load_solver_prototxt(str(p))
    assert solver.type == "Nesterov"
    assert not solver.HasField("solver_type")


def test_solver_with_inline_v1_net(tmp_path):
    p = tmp_path / "solver.prototxt"
    p.write_text('base_lr: 0.1\nmax_iter: 10\nnet_param {\n'
                 '  layers { name: "r" type: RELU bottom: "x" top: "x" }\n}\n')
    solver, _ = load_solver_prototxt(str(p))
    assert [l.type for l in solver.net_param.layer] == ["ReLU"]


# ---------------------------------------------------------------------------
# Located errors
# ---------------------------------------------------------------------------

def _error(tmp_path, text: str, loader=load_prototxt, name="net.prototxt") -> NetcError:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(NetcError) as info:
        loader(str(p))
    return info.value


def test_misspelt_field_in_param_block(tmp_path):
    err = _error(tmp_path,
                 'name: "x"\n'
                 'layer {\n'
                 '  name: "conv1"\n'
                 '  type: "Convolution"\n'
                 '  convolution_param {\n'
                 '    num_output: 20\n'
                 '    kernel_sise: 5\n'
                 '  }\n'
                 '}\n')
    assert err.message == "unknown field 'kernel_sise' in convolution_param"
    assert err.hint == "did you mean 'kernel_size'?"
    assert (err.span.file, err.span.line, err.span.column) == (str(tmp_path / "net.prototxt"), 7, 5)
    assert err.span.end_column == 5 + len("kernel_sise")


def test_misspelt_field_in_layer(tmp_path):
    err = _error(tmp_path, 'layer {\n  name: "c"\n  tpye: "ReLU"\n}\n')
    assert err.message == "unknown field 'tpye' in layer 'c'"
    assert err.hint == "did you mean 'type'?"
    assert (err.span.line, err.span.column) == (3, 3)


def test_param_field_written_at_layer_level(tmp_path):
    err = _error(tmp_path, 'layer {\n  name: "c"\n  type: "Convolution"\n  kernel_size: 3\n}\n')
    assert err.message == "unknown field 'kernel_size' in layer 'c'"
    assert "convolution_param" in err.hint
    assert (err.span.line, err.span.column) == (4, 3)


def test_missing_closing_brace_at_end(tmp_path):
    err = _error(tmp_path,
                 'layer {\n'
                 '  name: "a"\n'
                 '  type: "ReLU"\n'
                 '}\n'
                 'layer {\n'
                 '  name: "b"\n'
                 '  convolution_param {\n'
                 '    num_output: 2\n'
                 '  }\n')
    assert err.message == "'layer' block is never closed: missing '}'"
    assert (err.span.line, err.span.column) == (5, 1)
    assert "line 5" in err.hint


def test_missing_closing_brace_before_next_layer(tmp_path):
    err = _error(tmp_path,
                 'layer {\n'
                 '  name: "a"\n'
                 '  convolution_param {\n'
                 '    num_output: 2\n'
                 '}\n'
                 '  layer {\n'
                 '  name: "b"\n'
                 '}\n')
    assert "'}' is missing" in err.message
    assert (err.span.line, err.span.column) == (6, 3)
    assert "line 1" in err.hint


def test_stray_closing_brace(tmp_path):
    err = _error(tmp_path, 'layer {\n  name: "a"\n}\n}\n')
    assert (err.span.line, err.span.column) == (4, 1)
    assert "'}'" in err.message


def test_bad_enum_value(tmp_path):
    err = _error(tmp_path, 'layer {\n  name: "p"\n  pooling_param { pool: MAXX }\n}\n')
    assert err.message == "invalid value MAXX for 'pool' in pooling_param"
    assert err.hint == "did you mean 'MAX'?"
    assert (err.span.line, err.span.column) == (3, 25)


def test_bad_scalar_value(tmp_path):
    err = _error(tmp_path, 'layer {\n  convolution_param {\n    num_output: -3\n  }\n}\n')
    assert err.message == "invalid value -3 for 'num_output' in convolution_param"
    assert "non-negative integer" in err.hint
    assert (err.span.line, err.span.column) == (3, 17)


def test_v1_enum_type_in_current_layer(tmp_path):
    err = _error(tmp_path, 'layer {\n  name: "c"\n  type: CONVOLUTION\n}\n')
    assert '"Convolution"' in err.hint
    assert (err.span.line, err.span.column) == (3, 9)


def test_comments_and_strings_do_not_confuse_spans(tmp_path):
    text = ('# layer { this is a comment }\n'
            'layer {  # another { comment\n'
            '  name: "odd { name"\n'
            '  type: "ReLU"\n'
            '}\n'
            'layer {\n'
            '  name: "b"\n'
            '  tpe: "ReLU"\n'
            '}\n')
    err = _error(tmp_path, text)
    assert err.message == "unknown field 'tpe' in layer 'b'"
    assert (err.span.line, err.span.column) == (8, 3)
    (tmp_path / "ok.prototxt").write_text(text.replace("tpe", "type"))
    src = load_prototxt(str(tmp_path / "ok.prototxt"))
    assert [s.line for s in src.layer_spans] == [2, 6]
    assert src.field_span(1, "type").line == 8


def test_missing_net_file(tmp_path):
    missing = tmp_path / "absent.prototxt"
    with pytest.raises(NetcError) as info:
        load_prototxt(str(missing))
    assert str(missing) in info.value.message
    assert info.value.span is None


def test_solver_passed_as_net(tmp_path):
    err = _error(tmp_path, '# solver\nnet: "lenet_train_test.prototxt"\nbase_lr: 0.01\nmax_iter: 100\n',
                 name="solver.prototxt")
    assert "solver" in err.message
    assert "lenet_train_test.prototxt" in err.hint
    assert (err.span.line, err.span.column) == (2, 1)


def test_net_passed_as_solver(tmp_path):
    err = _error(tmp_path, 'name: "n"\nlayer {\n  name: "a"\n}\n', loader=load_solver_prototxt)
    assert "not a solver" in err.message
    assert (err.span.line, err.span.column) == (2, 1)


def test_solver_errors_are_located(tmp_path):
    err = _error(tmp_path, 'net: "n.prototxt"\nbase_lr: 0.01\nmax_iters: 100\n',
                 loader=load_solver_prototxt, name="solver.prototxt")
    assert err.message == "unknown field 'max_iters' in the solver"
    assert err.hint == "did you mean 'max_iter'?"
    assert (err.span.line, err.span.column) == (3, 1)


def test_binary_file_passed_as_net(tmp_path):
    p = tmp_path / "w.caffemodel"
    p.write_bytes(b"\x0a\x05LeNet\xff\xfe\x00")
    with pytest.raises(NetcError) as info:
        load_prototxt(str(p))
    assert str(p) in info.value.message


# ---------------------------------------------------------------------------
# The committed generated code
# ---------------------------------------------------------------------------

def test_caffe_pb2_is_generated_from_caffe_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    proto_dir = REPO / "netc" / "caffe"
    shutil.copy(proto_dir / "caffe.proto", tmp_path / "caffe.proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}",
         f"--python_out={tmp_path}", str(tmp_path / "caffe.proto")],
        check=True, capture_output=True)
    generated = (tmp_path / "caffe_pb2.py").read_text()
    committed = (proto_dir / "caffe_pb2.py").read_text()
    assert generated == committed, (
        "netc/caffe/caffe_pb2.py is stale; regenerate it with the command at "
        "the top of netc/caffe/caffe.proto")


def test_schema_field_numbers_match_caffe():
    # Spot checks of numbers real files depend on.
    def number(msg, name):
        return msg.DESCRIPTOR.fields_by_name[name].number
    assert number(caffe_pb2.NetParameter, "layer") == 100
    assert number(caffe_pb2.NetParameter, "layers") == 2
    assert number(caffe_pb2.LayerParameter, "convolution_param") == 106
    assert number(caffe_pb2.LayerParameter, "inner_product_param") == 117
    assert number(caffe_pb2.LayerParameter, "input_param") == 143
    assert number(caffe_pb2.LayerParameter, "batch_norm_param") == 139
    assert number(caffe_pb2.LayerParameter, "scale_param") == 142
    assert number(caffe_pb2.BlobProto, "shape") == 7
    assert number(caffe_pb2.SolverParameter, "type") == 40
    assert number(caffe_pb2.SolverParameter, "momentum2") == 39
    assert number(caffe_pb2.V1LayerParameter, "blobs_lr") == 7
    assert number(caffe_pb2.V1LayerParameter, "convolution_param") == 10
    assert caffe_pb2.V1LayerParameter.SOFTMAX_LOSS == 21


def test_field_span_prefers_the_layers_own_field_over_a_nested_one(tmp_path):
    # The filler's `type:` comes first in the text; the layer's own `type:` must win.
    path = tmp_path / "nested.prototxt"
    path.write_text(
        'input: "data"\n'
        'input_shape { dim: 1 dim: 1 dim: 8 dim: 8 }\n'
        'layer {\n'
        '  name: "conv"\n'
        '  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } }\n'
        '  type: "Convolution"\n'
        '  bottom: "data"\n'
        '  top: "conv"\n'
        '}\n')
    src = load_prototxt(str(path))
    span = src.field_span(0, "type")
    assert (span.line, span.column) == (6, 3)
