"""Tests for netc.caffe.prototxt: Caffe net prototxts as IR, checked like .net files.

The reference figures (parameter counts, blob shapes) are Caffe's own, quoted in
shared/README.md; located errors are checked against prototxts written here.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netc.caffe import caffe_pb2
from netc.caffe.load import load_prototxt
from netc.caffe.prototxt import layer_in_phase, net_from_prototxt, solver_from_prototxt
from netc.compile import compile_net
from netc.errors import NetcError
from netc.ir import Filler, ParamSpec
from netc.report import to_json, total_params

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
MODELS = SHARED / "caffe_models"

needs_shared = pytest.mark.skipif(not MODELS.is_dir(), reason="shared/ reference files missing")

# [C, H, W] of what each family's Caffe Data layer reads (after crop_size).
_EXAMPLE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "bvlc_googlenet": (3, 224, 224),
                   "bvlc_alexnet": (3, 227, 227), "bvlc_reference_caffenet": (3, 227, 227)}


def net_files() -> list[Path]:
    if not MODELS.is_dir():
        return []
    return sorted(p for p in MODELS.rglob("*.prototxt") if "solver" not in p.name)


def ids(paths) -> list[str]:
    return [str(p.relative_to(MODELS)) for p in paths]


def data_overrides(path: Path, phase: str) -> dict[str, tuple[int, ...]]:
    """--input shapes for the Data layers of one phase (database sources cannot tell their shape)."""
    example = _EXAMPLE_SHAPES[path.parent.name]
    return {layer.tops[0]: (layer.params["batch_size"],) + example
            for layer in net_from_prototxt(str(path), phase).layers if layer.type == "Data"}


def write(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def line_of(path: Path, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing needle, found independently of the loader."""
    hits = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line]
    return hits[nth - 1]


def position_of(path: Path, needle: str) -> tuple[int, int]:
    """1-based (line, column) where needle first starts."""
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return i, line.index(needle) + 1
    raise AssertionError(f"{needle!r} not in {path}")


# ---------------------------------------------------------------------------
# The shared Caffe models
# ---------------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("phase", ["train", "test"])
@pytest.mark.parametrize("path", net_files(), ids=ids(net_files()))
def test_every_shared_net_checks(path, phase):
    net = compile_net(str(path), phase, data_overrides(path, phase))
    assert net.origin == "prototxt"
    assert net.layers and all(name in net.layer_info for name in (l.name for l in net.layers))
    # the JSON contract: layer and blob names are the prototxt's
    summary = to_json(net)
    src = load_prototxt(str(path))
    expected_layers = [name for name in src.net.input] + \
        [l.name for l in src.net.layer if layer_in_phase(l, phase)]
    assert [l["name"] for l in summary["layers"]] == expected_layers
    expected_blobs = set(src.net.input) | {t for l in src.net.layer if layer_in_phase(l, phase) for t in l.top}
    assert set(summary["blobs"]) == expected_blobs


@needs_shared
@pytest.mark.parametrize("name", ["train_val.prototxt", "deploy.prototxt"])
def test_alexnet(name):
    path = MODELS / "models" / "bvlc_alexnet" / name
    for phase in ("train", "test"):
        net = compile_net(str(path), phase, data_overrides(path, phase))
        assert total_params(net) == 60_965_224
        assert net.blob_shapes["pool5"][1:] == (256, 6, 6)
    deploy = compile_net(str(path.parent / "deploy.prototxt"))
    assert deploy.blob_shapes["pool5"] == (10, 256, 6, 6)
    assert deploy.blob_shapes["prob"] == (10, 1000)


@needs_shared
def test_alexnet_train_val_details():
    path = MODELS / "models" / "bvlc_alexnet" / "train_val.prototxt"
    train = net_from_prototxt(str(path), "train")
    data = train.layer("data")
    assert data.tops == ("data", "label")
    assert data.params["batch_size"] == 256 and data.params["crop_size"] == 227
    assert data.params["mirror"] is True and data.params["backend"] == "LMDB"
    assert data.params["source"] == "examples/imagenet/ilsvrc12_train_lmdb"
    assert Path(data.params["source_path"]).is_absolute()
    conv1 = train.layer("conv1")
    assert conv1.params["num_output"] == 96 and conv1.params["kernel"] == (11, 11)
    assert conv1.params["stride_hw"] == (4, 4)
    assert conv1.params["weight_filler"].type == "gaussian"
    assert conv1.params["weight_filler"].std == pytest.approx(0.01)
    assert conv1.params["bias_filler"] == Filler("constant", value=0.0)
    assert conv1.param_specs == (ParamSpec(None, 1.0, 1.0), ParamSpec(None, 2.0, 0.0))
    assert "kernel_size" in conv1.param_spans and "group" not in conv1.param_spans
    assert train.layer("pool1").params["pool"] == "MAX"
    assert train.layer("norm1").params["alpha"] == pytest.approx(1e-4)
    assert train.layer("drop6").params["dropout_ratio"] == 0.5
    assert train.layer("relu1").in_place
    test = net_from_prototxt(str(path), "test")
    assert "accuracy" in [l.name for l in test.layers]
    assert "accuracy" not in [l.name for l in train.layers]
    assert test.layer("data").params["batch_size"] == 50


@needs_shared
def test_caffenet():
    path = MODELS / "models" / "bvlc_reference_caffenet" / "deploy.prototxt"
    net = compile_net(str(path))
    assert net.name == "CaffeNet"
    assert total_params(net) == 60_965_224
    assert net.blob_shapes["pool5"] == (10, 256, 6, 6)
    # CaffeNet pools before normalising, AlexNet after
    names = [l.name for l in net.layers]
    assert names.index("pool1") < names.index("norm1")


@needs_shared
def test_googlenet_deploy():
    path = MODELS / "models" / "bvlc_googlenet" / "deploy.prototxt"
    net = compile_net(str(path))
    assert total_params(net) == 6_998_552
    assert net.blob_shapes["inception_5b/output"] == (10, 1024, 7, 7)
    assert net.blob_shapes["pool5/7x7_s1"] == (10, 1024, 1, 1)
    assert net.layer("inception_3a/output").bottoms == (
        "inception_3a/1x1", "inception_3a/3x3", "inception_3a/5x5", "inception_3a/pool_proj")


@needs_shared
def test_googlenet_train_val_losses():
    path = MODELS / "models" / "bvlc_googlenet" / "train_val.prototxt"
    net = compile_net(str(path), "train", data_overrides(path, "train"))
    losses = [l for l in net.layers if l.type == "SoftmaxWithLoss"]
    assert [l.name for l in losses] == ["loss1/loss", "loss2/loss", "loss3/loss3"]
    assert all(len(l.loss_weight) == 1 for l in losses)
    assert [l.loss_weight[0] for l in losses] == [pytest.approx(0.3), pytest.approx(0.3), 1.0]
    assert net.blob_shapes["loss1/ave_pool"] == (32, 512, 4, 4)
    test = compile_net(str(path), "test", data_overrides(path, "test"))
    assert sum(1 for l in test.layers if l.type == "Accuracy") == 6


@needs_shared
def test_lenet():
    for name, phase in (("lenet.prototxt", "test"), ("lenet_train_test.prototxt", "train"),
                        ("lenet_train_test.prototxt", "test")):
        path = MODELS / "examples" / "mnist" / name
        net = compile_net(str(path), phase, data_overrides(path, phase))
        assert total_params(net) == 431_080
        assert net.blob_shapes["pool2"][1:] == (50, 4, 4)
        assert net.blob_shapes["ip2"][1:] == (10,)
    train = net_from_prototxt(str(MODELS / "examples" / "mnist" / "lenet_train_test.prototxt"), "train")
    assert train.layer("mnist").params["scale"] == pytest.approx(0.00390625)
    assert train.layer("conv1").params["weight_filler"] == Filler("xavier")


@needs_shared
def test_cifar10_quick():
    path = MODELS / "examples" / "cifar10" / "cifar10_quick.prototxt"
    net = compile_net(str(path))
    assert net.blob_shapes["data"] == (1, 3, 32, 32)
    assert net.blob_shapes["pool3"] == (1, 64, 4, 4)
    assert net.blob_shapes["prob"] == (1, 10)
    assert total_params(net) == 145_578
    assert net.layer("pool2").params["pool"] == "AVE"
    # the train_test version reads its data from an LMDB: same net, same count
    path = MODELS / "examples" / "cifar10" / "cifar10_quick_train_test.prototxt"
    train = compile_net(str(path), "train", data_overrides(path, "train"))
    assert total_params(train) == 145_578
    assert train.blob_shapes["ip2"] == (100, 10)


@needs_shared
def test_cli_check_prototxt():
    netc = shutil.which("netc")
    cmd = [netc] if netc else [sys.executable, "-m", "netc"]
    path = MODELS / "models" / "bvlc_alexnet" / "train_val.prototxt"
    result = subprocess.run(cmd + ["check", str(path), "--phase", "train", "--input", "data=10,3,227,227"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pool5" in result.stdout
    result = subprocess.run(cmd + ["check", str(path), "--phase", "train", "--json",
                                   "--input", "data=10,3,227,227"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"total_params": 60965224' in result.stdout


@needs_shared
def test_cli_check_alexnet_train_val_without_input_assumes_colour_and_warns():
    netc = shutil.which("netc")
    cmd = [netc] if netc else [sys.executable, "-m", "netc"]
    path = MODELS / "models" / "bvlc_alexnet" / "train_val.prototxt"
    result = subprocess.run(cmd + ["check", str(path), "--phase", "train", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # batch_size 256 and crop_size 227 are in the file; the channels are the assumption
    assert json.loads(result.stdout)["blobs"]["data"] == [256, 3, 227, 227]
    assert f"{path}:2:1: warning: 'data' is [256, 3, 227, 227]: assumed 3-channel images" in result.stderr
    assert "--input data=N,C,H,W" in result.stderr
    assert "Traceback" not in result.stderr


@needs_shared
def test_data_layer_channels_from_mean_values_need_no_assumption():
    net = compile_net(str(MODELS / "models" / "bvlc_googlenet" / "train_val.prototxt"), "train")
    assert net.blob_shapes["data"] == (32, 3, 224, 224)      # three mean_value entries: three channels
    assert not [w for w in net.warnings if "assumed" in w.message]


def _data_prototxt(tmp_path, transform: str) -> str:
    path = tmp_path / "data.prototxt"
    path.write_text('layer {\n  name: "d"\n  type: "Data"\n  top: "data"\n  top: "label"\n'
                    f'  transform_param {{ {transform} }}\n'
                    '  data_param { source: "db" batch_size: 8 backend: LMDB }\n}\n')
    return str(path)


def test_data_layer_shape_from_the_mean_files_header(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)          # Caffe resolves mean_file against its working directory
    mean = caffe_pb2.BlobProto()
    mean.shape.dim.extend([1, 3, 40, 36])
    (tmp_path / "mean.binaryproto").write_bytes(mean.SerializeToString())
    net = compile_net(_data_prototxt(tmp_path, 'mean_file: "mean.binaryproto" crop_size: 32'))
    assert net.blob_shapes["data"] == (8, 3, 32, 32)
    assert net.blob_shapes["label"] == (8,)
    assert net.warnings == ()
    net = compile_net(_data_prototxt(tmp_path, 'mean_file: "mean.binaryproto"'))
    assert net.blob_shapes["data"] == (8, 3, 40, 36)


def test_corrupt_mean_file_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mean.binaryproto").write_bytes(b"\xff\xff\xff not a blob")
    with pytest.raises(NetcError) as err:
        compile_net(_data_prototxt(tmp_path, 'mean_file: "mean.binaryproto" crop_size: 32'))
    assert "mean.binaryproto' is not a Caffe BlobProto" in err.value.message
    assert (err.value.span.line, err.value.span.column) == (1, 1)


def test_data_layer_without_crop_or_mean_asks_for_input(tmp_path):
    with pytest.raises(NetcError) as err:
        compile_net(_data_prototxt(tmp_path, "scale: 0.5"))
    assert "reads its shape from the database" in err.value.message
    assert err.value.hint.startswith("give it with --input data=N,C,H,W")
    net = compile_net(_data_prototxt(tmp_path, "scale: 0.5"), overrides={"data": (8, 1, 28, 28)})
    assert net.blob_shapes["label"] == (8,)


@needs_shared
def test_solver_from_prototxt():
    solver = solver_from_prototxt(str(MODELS / "examples" / "mnist" / "lenet_solver.prototxt"))
    assert solver.type == "SGD"
    f = solver.fields
    assert f["base_lr"] == pytest.approx(0.01) and f["momentum"] == pytest.approx(0.9)
    assert f["weight_decay"] == pytest.approx(5e-4)
    assert f["lr_policy"] == "inv" and f["gamma"] == pytest.approx(1e-4) and f["power"] == pytest.approx(0.75)
    assert f["max_iter"] == 10000 and f["test_iter"] == (100,) and f["test_interval"] == 500
    assert f["snapshot_prefix"] == "examples/mnist/lenet"
    assert solver.field_spans["base_lr"].line == line_of(MODELS / "examples" / "mnist" / "lenet_solver.prototxt",
                                                          "base_lr:")
    quick = solver_from_prototxt(str(MODELS / "models" / "bvlc_googlenet" / "quick_solver.prototxt"))
    assert quick.fields["lr_policy"] == "poly" and quick.fields["power"] == pytest.approx(0.5)


def test_solver_legacy_type_and_errors(tmp_path):
    path = write(tmp_path, """
        net: "net.prototxt"
        base_lr: 0.1
        lr_policy: "step"
        gamma: 0.5
        stepsize: 10
        solver_type: NESTEROV
        """, "solver.prototxt")
    assert solver_from_prototxt(str(path)).type == "Nesterov"
    path = write(tmp_path, """
        net: "net.prototxt"
        base_lr: 0.1
        lr_policy: "step"
        """, "bad_solver.prototxt")
    with pytest.raises(NetcError) as err:
        solver_from_prototxt(str(path))
    assert "needs gamma" in err.value.message and err.value.span.line == 3


# ---------------------------------------------------------------------------
# Phases, legacy inputs, parameters
# ---------------------------------------------------------------------------

_SMALL = """
    name: "small"
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
    layer {
      name: "conv"
      type: "Convolution"
      bottom: "data"
      top: "conv"
      convolution_param { num_output: 4 kernel_size: 3 }
    }
    """


def test_phase_rules(tmp_path):
    path = write(tmp_path, _SMALL + """
        layer { name: "a" type: "ReLU" bottom: "conv" top: "a" include { phase: TRAIN } }
        layer { name: "b" type: "ReLU" bottom: "conv" top: "b" exclude { phase: TRAIN } }
        layer { name: "c" type: "ReLU" bottom: "conv" top: "c" include { phase: TRAIN } include { phase: TEST } }
        layer { name: "d" type: "ReLU" bottom: "conv" top: "d" include { phase: TEST stage: "deploy" } }
        layer { name: "e" type: "ReLU" bottom: "conv" top: "e" include { min_level: 1 } }
        layer { name: "f" type: "ReLU" bottom: "conv" top: "f" include { max_level: 0 not_stage: "x" } }
        """)
    train = [l.name for l in net_from_prototxt(str(path), "train").layers]
    test = [l.name for l in net_from_prototxt(str(path), "test").layers]
    assert train == ["in", "conv", "a", "c", "f"]
    assert test == ["in", "conv", "b", "c", "f"]


def test_legacy_inputs(tmp_path):
    path = write(tmp_path, """
        name: "legacy"
        input: "data"
        input_dim: 2
        input_dim: 3
        input_dim: 10
        input_dim: 10
        input: "extra"
        input_dim: 2
        input_dim: 1
        input_dim: 10
        input_dim: 10
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
                pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
        """)
    net = compile_net(str(path))
    assert [l.name for l in net.layers[:2]] == ["data", "extra"]
    assert net.inputs == {"data": (2, 3, 10, 10), "extra": (2, 1, 10, 10)}
    assert net.blob_shapes["pool"] == (2, 3, 5, 5)
    assert net.layers[0].span.line == 2
    path = write(tmp_path, """
        input: "data"
        input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }
        layer { name: "r" type: "ReLU" bottom: "data" top: "r" }
        """, "shape.prototxt")
    assert compile_net(str(path)).blob_shapes["r"] == (1, 3, 5, 5)
    path = write(tmp_path, """
        input: "data"
        input_dim: 1
        input_dim: 3
        layer { name: "r" type: "ReLU" bottom: "data" top: "r" }
        """, "short.prototxt")
    with pytest.raises(NetcError) as err:
        net_from_prototxt(str(path), "test")
    assert "input_dim" in err.value.message and err.value.span.line == 1


def test_v1_layers(tmp_path):
    path = write(tmp_path, """
        input: "data"
        input_dim: 1
        input_dim: 1
        input_dim: 12
        input_dim: 12
        layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
                 convolution_param { num_output: 5 kernel_size: 5 } }
        layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
        """)
    net = compile_net(str(path))
    assert net.blob_shapes["conv"] == (1, 5, 8, 8)
    assert net.layer("conv").param_specs[1].lr_mult == 2
    assert net.layer("relu").in_place


def test_params_defaults_and_enums(tmp_path):
    path = write(tmp_path, _SMALL + """
        layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
                pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride: 2 round_mode: FLOOR } }
        layer { name: "lrn" type: "LRN" bottom: "pool" top: "lrn" lrn_param { norm_region: WITHIN_CHANNEL } }
        layer { name: "ip" type: "InnerProduct" bottom: "lrn" top: "ip" param { name: "w" lr_mult: 0 }
                inner_product_param { num_output: 7 bias_term: false
                                      weight_filler { type: "msra" variance_norm: FAN_OUT } } }
        layer { name: "sm" type: "Softmax" bottom: "ip" top: "sm" softmax_param { axis: -1 } }
        """)
    net = compile_net(str(path))
    pool = net.layer("pool")
    assert pool.params["pool"] == "AVE" and pool.params["round_mode"] == "FLOOR"
    assert pool.params["kernel"] == (2, 3)
    assert net.blob_shapes["pool"] == (2, 4, 3, 2)
    assert net.layer("lrn").params["norm_region"] == "WITHIN_CHANNEL"
    assert net.layer("lrn").params["local_size"] == 5          # the default, Caffe's
    ip = net.layer("ip")
    assert ip.params["weight_filler"] == Filler("msra", variance_norm="FAN_OUT")
    assert ip.params["bias_term"] is False
    assert ip.param_specs == (ParamSpec("w", 0.0, 1.0),)
    assert net.layer_info["ip"].param_shapes == ((7, 24),)
    assert net.layer("sm").params["axis"] == -1
    assert net.layer("conv").params["weight_filler"] == Filler()


# ---------------------------------------------------------------------------
# Located errors
# ---------------------------------------------------------------------------

def test_kernel_larger_than_input(tmp_path):
    path = write(tmp_path, """
        name: "bad"
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
        layer {
          name: "conv1"
          type: "Convolution"
          bottom: "data"
          top: "conv1"
          convolution_param {
            num_output: 8
            kernel_size: 7
          }
        }
        """)
    with pytest.raises(NetcError) as err:
        compile_net(str(path))
    e = err.value
    assert "Convolution 'conv1'" in e.message
    assert "kernel 7x7 is larger than the padded input 4x4" in e.message
    assert e.span.file == str(path)
    assert (e.span.line, e.span.column) == position_of(path, "kernel_size: 7")
    assert "'data' is [1, 3, 4, 4]" in e.hint


def test_bad_param_value_is_located(tmp_path):
    path = write(tmp_path, _SMALL + """
        layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv"
                dropout_param { dropout_ratio: 1.5 } }
        """)
    with pytest.raises(NetcError) as err:
        net_from_prototxt(str(path), "test")
    assert "dropout_ratio must be between 0 and 1" in err.value.message
    assert err.value.span.line == line_of(path, "dropout_ratio")
    path = write(tmp_path, _SMALL.replace("num_output: 4 ", ""), "no_num.prototxt")
    with pytest.raises(NetcError) as err:
        net_from_prototxt(str(path), "test")
    assert "needs num_output" in err.value.message
    assert err.value.span.line == line_of(path, "layer {", 2)


def test_unknown_bottom(tmp_path):
    path = write(tmp_path, _SMALL + """
        layer {
          name: "relu"
          type: "ReLU"
          bottom: "cnov"
          top: "relu"
        }
        """)
    with pytest.raises(NetcError) as err:
        net_from_prototxt(str(path), "test")
    assert err.value.message == "unknown blob 'cnov'"
    assert (err.value.span.line, err.value.span.column) == position_of(path, 'bottom: "cnov"')
    assert err.value.hint == "did you mean 'conv'?"


def test_bottom_produced_later_is_a_cycle(tmp_path):
    path = write(tmp_path, _SMALL + """
        layer { name: "a" type: "Eltwise" bottom: "conv" bottom: "b" top: "a" }
        layer { name: "b" type: "ReLU" bottom: "a" top: "b" }
        """)
    with pytest.raises(NetcError) as err:
        net_from_prototxt(str(path), "test")
    assert err.value.message == "blob 'b' is used before it is produced"
    assert err.value.span.line == line_of(path, 'name: "a"')


def test_bottom_from_other_phase(tmp_path):
    path = write(tmp_path, _SMALL + """
        layer { name: "a" type: "ReLU" bottom: "conv" top: "a" include { phase: TRAIN } }
        layer { name: "b" type: "ReLU" bottom: "a" top: "b" }
        """)
    net_from_prototxt(str(path), "train")
    with pytest.raises(NetcError) as err:
        net_from_prototxt(str(path), "test")
    assert "does not exist in the test phase" in err.value.message


def test_unknown_type(tmp_path):
    path = write(tmp_path, _SMALL + """
        layer {
          name: "act"
          type: "Relu"
          bottom: "conv"
          top: "act"
        }
        layer { name: "py" type: "Python" bottom: "conv" top: "py" }
        """)
    with pytest.raises(NetcError) as err:
        net_from_prototxt(str(path), "test")
    assert err.value.message == "layer type 'Relu' is not supported by netc"
    assert (err.value.span.line, err.value.span.column) == position_of(path, 'type: "Relu"')
    assert err.value.hint == "did you mean 'ReLU'?"
    text = path.read_text().replace('"Relu"', '"ReLU"')
    path.write_text(text)
    with pytest.raises(NetcError) as err:
        net_from_prototxt(str(path), "test")
    assert err.value.message == "layer type 'Python' is not supported by netc"
    assert "Convolution" in err.value.hint


def test_structure_errors(tmp_path):
    cases = {
        "dup_name": ('layer { name: "conv" type: "ReLU" bottom: "conv" top: "r" }', "used twice"),
        "in_place": ('layer { name: "lrn" type: "LRN" bottom: "conv" top: "conv" }', "cannot write its bottom"),
        "two_producers": ('layer { name: "p" type: "Pooling" bottom: "conv" top: "data" '
                          'pooling_param { kernel_size: 2 } }', "already produced"),
        "too_many_bottoms": ('layer { name: "r" type: "ReLU" bottom: "conv" bottom: "data" top: "r" }',
                             "takes 1 bottom"),
        "no_tops": ('layer { name: "r" type: "ReLU" bottom: "conv" }', "has 1 top"),
        "both_rules": ('layer { name: "r" type: "ReLU" bottom: "conv" top: "r" include { phase: TEST } '
                       'exclude { phase: TRAIN } }', "both include and exclude"),
    }
    for name, (layer, message) in cases.items():
        path = write(tmp_path, _SMALL + layer + "\n", f"{name}.prototxt")
        with pytest.raises(NetcError) as err:
            net_from_prototxt(str(path), "test")
        assert message in err.value.message, name
        assert err.value.span is not None and err.value.span.line == 10, name


def test_loss_without_top_gets_one(tmp_path):
    path = write(tmp_path, _SMALL + """
        layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 6 dim: 6 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" }
        """)
    net = compile_net(str(path))
    assert net.layer("loss").tops == ("loss",)
    assert net.blob_shapes["loss"] == ()


def test_solver_file_is_refused(tmp_path):
    if not MODELS.is_dir():
        pytest.skip("shared/ reference files missing")
    with pytest.raises(NetcError) as err:
        net_from_prototxt(str(MODELS / "examples" / "mnist" / "lenet_solver.prototxt"), "test")
    assert "solver" in err.value.message
    assert re.search(r"lenet_train_test", err.value.hint or "")
