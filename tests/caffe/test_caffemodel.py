"""Tests for netc.caffe.caffemodel: reading blobs from .caffemodel files, writing them.

Files are built and checked here with caffe_pb2 directly, independently of the
module's own encoding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netc.caffe import caffe_pb2
from netc.caffe.caffemodel import caffemodel_bytes, read_caffemodel_blobs, read_caffemodel_entries
from netc.compile import compile_net
from netc.errors import NetcError
from netc.runtime.weights import init_weights

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
LENET_CAFFEMODEL = SHARED / "pretrained" / "lenet_iter_10000.caffemodel"

needs_lenet = pytest.mark.skipif(not LENET_CAFFEMODEL.is_file(), reason="shared/pretrained missing")

SMALL = """\
net Small
input data [2, 3, 8, 8]
conv: Convolution(data, 4, kernel=3, weight=xavier, bias=constant(0.5))
relu: ReLU!
fc: InnerProduct(conv, 5, weight=xavier, bias_term=false)
"""


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.net"
    path.write_text(SMALL)
    net = compile_net(str(path))
    rng = np.random.default_rng(7)
    weights = {
        "conv": [rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                 rng.standard_normal(4).astype(np.float32)],
        "fc": [rng.standard_normal((5, 144)).astype(np.float32)],
    }
    return net, weights


def test_written_bytes_parse_as_caffe_netparameter(small):
    net, weights = small
    proto = caffe_pb2.NetParameter()
    proto.ParseFromString(caffemodel_bytes(net, weights))
    assert proto.name == "Small"
    assert not proto.layers                      # current format, not V1
    assert [l.name for l in proto.layer] == ["conv", "fc"]   # only layers with weights
    conv, fc = proto.layer
    assert conv.type == "Convolution" and list(conv.bottom) == ["data"] and list(conv.top) == ["conv"]
    assert fc.type == "InnerProduct" and list(fc.bottom) == ["conv"] and list(fc.top) == ["fc"]
    assert len(conv.blobs) == 2 and len(fc.blobs) == 1
    for blob, array in zip(list(conv.blobs) + list(fc.blobs), weights["conv"] + weights["fc"]):
        assert blob.HasField("shape")
        assert list(blob.shape.dim) == list(array.shape)
        assert not any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
        assert len(blob.double_data) == 0
        np.testing.assert_array_equal(np.array(blob.data, dtype=np.float32), array.ravel())


def test_written_bytes_match_protobufs_own_encoding(small):
    net, weights = small
    ours = caffemodel_bytes(net, weights)
    proto = caffe_pb2.NetParameter(name="Small")
    for name, layer_type, bottom, top in [("conv", "Convolution", "data", "conv"),
                                          ("fc", "InnerProduct", "conv", "fc")]:
        lp = proto.layer.add(name=name, type=layer_type, bottom=[bottom], top=[top])
        for array in weights[name]:
            blob = lp.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    assert ours == proto.SerializeToString()


def test_round_trip_through_a_file(small, tmp_path):
    net, weights = small
    path = tmp_path / "small.caffemodel"
    path.write_bytes(caffemodel_bytes(net, weights))
    blobs = read_caffemodel_blobs(path)
    assert list(blobs) == ["conv", "fc"]
    for name in weights:
        assert len(blobs[name]) == len(weights[name])
        for got, want in zip(blobs[name], weights[name]):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def test_float64_weights_are_written_as_float(small):
    net, weights = small
    doubled = {k: [a.astype(np.float64) for a in v] for k, v in weights.items()}
    proto = caffe_pb2.NetParameter()
    proto.ParseFromString(caffemodel_bytes(net, doubled))
    np.testing.assert_array_equal(np.array(proto.layer[0].blobs[0].data, np.float32),
                                  weights["conv"][0].ravel())


def _write(path, proto):
    path.write_bytes(proto.SerializeToString())
    return path


def test_legacy_dims_and_double_data(tmp_path):
    proto = caffe_pb2.NetParameter(name="old")
    lp = proto.layer.add(name="ip", type="InnerProduct")
    w = lp.blobs.add(num=1, channels=1, height=2, width=3)
    w.data.extend([1, 2, 3, 4, 5, 6])
    b = lp.blobs.add()
    b.shape.dim.append(2)
    b.double_data.extend([0.1, 0.2])
    path = _write(tmp_path / "old.caffemodel", proto)

    entries = read_caffemodel_entries(path)
    (wa, wlegacy), (ba, blegacy) = entries["ip"]
    assert wa.shape == (1, 1, 2, 3) and wlegacy
    np.testing.assert_array_equal(wa.ravel(), [1, 2, 3, 4, 5, 6])
    assert ba.dtype == np.float64 and not blegacy
    np.testing.assert_array_equal(ba, [0.1, 0.2])


def test_v1_layers_are_read(tmp_path):
    proto = caffe_pb2.NetParameter(name="v1")
    old = proto.layers.add(name="conv", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    blob = old.blobs.add(num=2, channels=1, height=1, width=1)
    blob.data.extend([3.0, 4.0])
    proto.layers.add(name="data", type=caffe_pb2.V1LayerParameter.DATA)
    blobs = read_caffemodel_blobs(_write(tmp_path / "v1.caffemodel", proto))
    assert set(blobs) == {"conv", "data"}
    assert blobs["data"] == []
    np.testing.assert_array_equal(blobs["conv"][0], np.array([3, 4], np.float32).reshape(2, 1, 1, 1))


def test_value_count_disagreeing_with_shape(tmp_path):
    proto = caffe_pb2.NetParameter(name="bad")
    blob = proto.layer.add(name="conv", type="Convolution").blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    path = _write(tmp_path / "bad.caffemodel", proto)
    with pytest.raises(NetcError) as info:
        read_caffemodel_blobs(path)
    msg = info.value.message
    assert str(path) in msg and "conv" in msg and "5" in msg and "(2, 3)" in msg


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_file(small, tmp_path, cut):
    net, weights = small
    data = caffemodel_bytes(net, weights)
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(NetcError, match="cut.caffemodel"):
        read_caffemodel_blobs(path)


@needs_lenet
def test_reads_caffes_lenet_snapshot():
    blobs = read_caffemodel_blobs(LENET_CAFFEMODEL)
    # The training net's layers, data and loss included, in file order.
    assert list(blobs) == ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]
    assert blobs["mnist"] == [] and blobs["loss"] == []
    assert [b.shape for b in blobs["conv1"]] == [(20, 1, 5, 5), (20,)]
    assert [b.shape for b in blobs["ip1"]] == [(500, 800), (500,)]
    # Independently: the same values as protobuf's own parse.
    proto = caffe_pb2.NetParameter()
    proto.ParseFromString(LENET_CAFFEMODEL.read_bytes())
    ip2 = next(l for l in proto.layer if l.name == "ip2")
    np.testing.assert_array_equal(blobs["ip2"][0].ravel(), np.array(ip2.blobs[0].data, np.float32))


@needs_lenet
def test_rewriting_lenet_keeps_every_value(tmp_path):
    net = compile_net(str(SHARED / "caffe_models" / "examples" / "mnist" / "lenet.prototxt"))
    blobs = read_caffemodel_blobs(LENET_CAFFEMODEL)
    weights = {name: blobs[name] for name in ("conv1", "conv2", "ip1", "ip2")}
    path = tmp_path / "again.caffemodel"
    path.write_bytes(caffemodel_bytes(net, weights))
    again = read_caffemodel_blobs(path)
    assert list(again) == ["conv1", "conv2", "ip1", "ip2"]
    for name in weights:
        for a, b in zip(weights[name], again[name]):
            np.testing.assert_array_equal(a, b)


def test_init_weights_of_a_net_round_trip(small, tmp_path):
    net, _ = small
    weights = init_weights(net, seed=3)
    path = tmp_path / "init.caffemodel"
    path.write_bytes(caffemodel_bytes(net, weights))
    again = read_caffemodel_blobs(path)
    for name in weights:
        for a, b in zip(weights[name], again[name]):
            np.testing.assert_array_equal(a, b)
