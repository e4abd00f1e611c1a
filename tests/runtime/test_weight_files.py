"""Tests for netc.runtime.weight_files: saving and loading .npz and .caffemodel weights.

Expected structures are checked with numpy's zipfile view and caffe_pb2 directly,
and the pretrained LeNet values against protobuf's own parse of the file.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import netc.fileio
from netc.caffe import caffe_pb2
from netc.compile import compile_net
from netc.errors import NetcError
from netc.runtime import weight_files
from netc.runtime.weight_files import FORMAT_KEY, NPZ_LAYOUT, load_weights, save_weights
from netc.runtime.weights import init_weights

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
NETS = REPO / "nets"
LENET_CAFFEMODEL = SHARED / "pretrained" / "lenet_iter_10000.caffemodel"
LENET_DEPLOY = SHARED / "caffe_models" / "examples" / "mnist" / "lenet.prototxt"

needs_lenet = pytest.mark.skipif(not (LENET_CAFFEMODEL.is_file() and LENET_DEPLOY.is_file()),
                                 reason="shared/ reference files missing")

TWIN = """\
net Twin
input data [2, 1, 8, 8]
left: Convolution(data, 4, kernel=3, weight=xavier, bias=constant(0.1), share=[conv_w, conv_b])
right: Convolution(data, 4, kernel=3, weight=xavier, bias=constant(0.1), share=[conv_w, conv_b])
fc: InnerProduct(left, 3, weight=xavier, bias=constant(0.2))
"""

SLASH = """\
name: "Slash"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "inception/1x1" type: "Convolution" bottom: "data" top: "a"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "a" top: "a" }
"""


@pytest.fixture
def compile_text(tmp_path):
    def build(text, name="t.net"):
        path = tmp_path / name
        path.write_text(text)
        return compile_net(str(path))
    return build


@pytest.fixture
def twin(compile_text):
    net = compile_text(TWIN)
    weights = init_weights(net, seed=11)
    weights["left"][1][:] = np.arange(4, dtype=np.float32)      # shared with right
    return net, weights


def _protos(path):
    proto = caffe_pb2.NetParameter()
    proto.ParseFromString(Path(path).read_bytes())
    return proto


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".npz", ".caffemodel"])
def test_round_trip_is_bit_identical_and_keeps_sharing(twin, tmp_path, ext):
    net, weights = twin
    assert weights["left"][0] is weights["right"][0]
    path = tmp_path / ("w" + ext)
    save_weights(path, net, weights)
    loaded = load_weights(path, net)
    assert set(loaded) == {"left", "right", "fc"}
    for name, blobs in weights.items():
        assert len(loaded[name]) == len(blobs)
        for got, want in zip(loaded[name], blobs):
            assert got.dtype == np.float32 and got.shape == want.shape
            assert got.tobytes() == want.tobytes()
            assert got is not want
    assert loaded["left"][0] is loaded["right"][0]
    assert loaded["left"][1] is loaded["right"][1]
    assert loaded["fc"][0] is not loaded["left"][0]


def test_npz_layout(twin, tmp_path):
    net, weights = twin
    path = tmp_path / "w.npz"
    save_weights(path, net, weights)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
    assert names == {f"{FORMAT_KEY}.npy", "left/0.npy", "left/1.npy", "right/0.npy",
                     "right/1.npy", "fc/0.npy", "fc/1.npy"}
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz[FORMAT_KEY].tobytes().decode("utf-8"))
        assert npz[FORMAT_KEY].dtype == np.uint8
        assert npz["fc/0"].dtype == np.float32
        np.testing.assert_array_equal(npz["right/1"], np.arange(4))
    assert header == {"format": "netc-weights", "version": 1, "net": "Twin"}
    # The documented layout names the keys.
    assert "<layer name>/<blob index>" in NPZ_LAYOUT and FORMAT_KEY in NPZ_LAYOUT
    assert NPZ_LAYOUT in weight_files.__doc__ or "NPZ_LAYOUT" in weight_files.__doc__


def test_npz_keeps_the_saved_dtype_and_dtype_none(twin, tmp_path):
    net, weights = twin
    doubled = {k: [a.astype(np.float64) for a in v] for k, v in weights.items()}
    doubled["right"] = doubled["left"]
    path = tmp_path / "d.npz"
    save_weights(path, net, doubled)
    assert load_weights(path, net)["fc"][0].dtype == np.float32
    kept = load_weights(path, net, dtype=None)
    assert kept["fc"][0].dtype == np.float64
    np.testing.assert_array_equal(kept["fc"][0], doubled["fc"][0])


@pytest.mark.parametrize("ext", [".npz", ".caffemodel"])
def test_layer_names_with_slashes_and_three_blobs(compile_text, tmp_path, ext):
    net = compile_text(SLASH, "slash.prototxt")
    weights = init_weights(net, seed=1)
    weights["bn"] = [np.full(4, 2.0, np.float32), np.full(4, 3.0, np.float32),
                     np.array([0.5], np.float32)]
    path = tmp_path / ("s" + ext)
    save_weights(path, net, weights)
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            assert {"inception/1x1/0", "inception/1x1/1", "bn/0", "bn/1", "bn/2"} <= set(npz.files)
    loaded = load_weights(path, net)
    for name in ("inception/1x1", "bn"):
        for got, want in zip(loaded[name], weights[name]):
            np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# Caffe's pretrained LeNet
# ---------------------------------------------------------------------------

@needs_lenet
def test_pretrained_lenet_into_the_deploy_prototxt():
    net = compile_net(str(LENET_DEPLOY))
    weights = load_weights(LENET_CAFFEMODEL, net)
    assert set(weights) == {"conv1", "conv2", "ip1", "ip2"}     # mnist/loss ignored
    assert weights["conv1"][0].shape == (20, 1, 5, 5)
    assert weights["conv1"][1].shape == (20,)
    ip2 = weights["ip2"][0]
    assert ip2.shape == (10, 500) and ip2.dtype == np.float32
    assert np.all(np.isfinite(ip2))
    assert 1e-3 < np.abs(ip2).mean() < 1.0 and np.abs(ip2).max() < 10.0
    assert ip2.std() > 1e-3
    # Values as protobuf itself reads them.
    proto = _protos(LENET_CAFFEMODEL)
    conv1 = next(l for l in proto.layer if l.name == "conv1")
    np.testing.assert_array_equal(weights["conv1"][0].ravel(), np.array(conv1.blobs[0].data, np.float32))


@needs_lenet
def test_pretrained_lenet_into_nets_lenet_net():
    net = compile_net(str(NETS / "lenet.net"), "train")
    deploy = load_weights(LENET_CAFFEMODEL, compile_net(str(LENET_DEPLOY)))
    weights = load_weights(LENET_CAFFEMODEL, net)
    assert set(weights) == {"conv1", "conv2", "ip1", "ip2"}
    for name in weights:
        for a, b in zip(weights[name], deploy[name]):
            np.testing.assert_array_equal(a, b)


@needs_lenet
def test_shape_mismatch_names_layer_blob_and_both_shapes(tmp_path):
    text = LENET_DEPLOY.read_text().replace("num_output: 20", "num_output: 16", 1)
    assert "num_output: 16" in text
    path = tmp_path / "lenet16.prototxt"
    path.write_text(text)
    net = compile_net(str(path))
    with pytest.raises(NetcError) as info:
        load_weights(LENET_CAFFEMODEL, net)
    err = info.value
    assert "conv1" in err.message and "blob 0" in err.message
    assert "(20, 1, 5, 5)" in err.message and "(16, 1, 5, 5)" in err.message
    assert str(LENET_CAFFEMODEL) in err.message
    assert err.span is not None and err.span.file == str(path)
    assert err.span == net.layer("conv1").span


@needs_lenet
def test_wrong_number_of_blobs(tmp_path):
    text = LENET_DEPLOY.read_text().replace(
        "num_output: 500", "num_output: 500\n    bias_term: false", 1)
    path = tmp_path / "nobias.prototxt"
    path.write_text(text)
    net = compile_net(str(path))
    assert len(net.layer_info["ip1"].param_shapes) == 1
    with pytest.raises(NetcError) as info:
        load_weights(LENET_CAFFEMODEL, net)
    assert "ip1" in info.value.message and "2 blobs" in info.value.message
    assert "expects 1" in info.value.message
    assert "bias" in info.value.hint
    assert info.value.span == net.layer("ip1").span


# ---------------------------------------------------------------------------
# Matching by name: extra, missing
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".npz", ".caffemodel"])
def test_extra_layers_in_the_file_are_ignored(twin, compile_text, tmp_path, ext):
    net, weights = twin
    path = tmp_path / ("w" + ext)
    save_weights(path, net, weights)
    smaller = compile_text(TWIN.replace("fc: InnerProduct(left, 3, weight=xavier, bias=constant(0.2))\n", ""),
                           "smaller.net")
    loaded = load_weights(path, smaller)
    assert set(loaded) == {"left", "right"}
    np.testing.assert_array_equal(loaded["right"][1], np.arange(4))


@pytest.mark.parametrize("ext", [".npz", ".caffemodel"])
def test_missing_layer_is_an_error_unless_allowed(twin, compile_text, tmp_path, ext):
    net, weights = twin
    bigger = compile_text(TWIN + "fc2: InnerProduct(fc, 2, weight=xavier)\n", "bigger.net")
    path = tmp_path / ("w" + ext)
    save_weights(path, net, weights)
    with pytest.raises(NetcError) as info:
        load_weights(path, bigger)
    assert "fc2" in info.value.message and str(path) in info.value.message
    assert info.value.hint == "--allow-missing keeps its filler values"
    assert info.value.span == bigger.layer("fc2").span

    found = load_weights(path, bigger, allow_missing=True)
    assert set(found) == {"left", "right", "fc"}          # only what the file has

    initial = init_weights(bigger, seed=5)
    filled = load_weights(path, bigger, allow_missing=True, initial=initial)
    assert set(filled) == {"left", "right", "fc", "fc2"}
    assert filled["fc2"][0] is initial["fc2"][0]
    np.testing.assert_array_equal(filled["fc"][0], weights["fc"][0])
    assert filled["left"][0] is filled["right"][0]


def test_shared_blobs_come_from_whichever_sharing_layer_the_file_has(twin, compile_text, tmp_path):
    net, weights = twin
    path = tmp_path / "w.npz"
    save_weights(path, net, weights)
    # A net whose first sharing layer has another name: it is covered by `right`.
    renamed = compile_text(TWIN.replace("left", "lefty"), "renamed.net")
    loaded = load_weights(path, renamed)
    assert loaded["lefty"][0] is loaded["right"][0]
    np.testing.assert_array_equal(loaded["lefty"][1], np.arange(4))


# ---------------------------------------------------------------------------
# Legacy Caffe files
# ---------------------------------------------------------------------------

@needs_lenet
def test_legacy_4d_dims_caffemodel_loads(tmp_path):
    """Old Caffe wrote every blob as num/channels/height/width: ip weights 1x1xOUTxK."""
    source = _protos(LENET_CAFFEMODEL)
    proto = caffe_pb2.NetParameter(name="LeNet")
    for layer in source.layer:
        old = proto.layers.add(name=layer.name)      # V1 `layers`, enum types
        old.type = {"Convolution": caffe_pb2.V1LayerParameter.CONVOLUTION,
                    "InnerProduct": caffe_pb2.V1LayerParameter.INNER_PRODUCT,
                    "Pooling": caffe_pb2.V1LayerParameter.POOLING,
                    "ReLU": caffe_pb2.V1LayerParameter.RELU,
                    "Data": caffe_pb2.V1LayerParameter.DATA,
                    "SoftmaxWithLoss": caffe_pb2.V1LayerParameter.SOFTMAX_LOSS}[layer.type]
        for blob in layer.blobs:
            dims = [1] * (4 - len(blob.shape.dim)) + list(blob.shape.dim)
            new = old.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
            new.data.extend(blob.data)
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(proto.SerializeToString())
    raw = weight_files.read_caffemodel_entries(path)
    assert raw["ip1"][0][0].shape == (1, 1, 500, 800) and raw["ip1"][1][0].shape == (1, 1, 1, 500)

    net = compile_net(str(LENET_DEPLOY))
    weights = load_weights(path, net)
    modern = load_weights(LENET_CAFFEMODEL, net)
    for name in modern:
        for got, want in zip(weights[name], modern[name]):
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def test_legacy_dims_must_still_agree(compile_text, tmp_path):
    net = compile_text(TWIN)
    proto = caffe_pb2.NetParameter(name="Twin")
    lp = proto.layer.add(name="fc", type="InnerProduct")
    w = lp.blobs.add(num=1, channels=1, height=144, width=3)     # transposed: same count
    w.data.extend([0.0] * 432)
    b = lp.blobs.add(num=1, channels=1, height=1, width=3)
    b.data.extend([0.0] * 3)
    path = tmp_path / "t.caffemodel"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(NetcError, match=r"'fc' blob 0 has shape \(1, 1, 144, 3\).*\(3, 144\)"):
        load_weights(path, net, allow_missing=True)


def test_modern_shape_with_extra_leading_ones_is_a_mismatch(compile_text, tmp_path):
    """Caffe pads only legacy num/channels/height/width dims, not `shape`."""
    net = compile_text(TWIN)
    proto = caffe_pb2.NetParameter(name="Twin")
    lp = proto.layer.add(name="fc", type="InnerProduct")
    for dims in ([1, 1, 3, 144], [3]):
        blob = lp.blobs.add()
        blob.shape.dim.extend(dims)
        blob.data.extend([0.0] * int(np.prod(dims)))
    path = tmp_path / "t.caffemodel"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(NetcError, match=r"\(1, 1, 3, 144\)"):
        load_weights(path, net, allow_missing=True)


# ---------------------------------------------------------------------------
# Broken and hostile files
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".npz", ".caffemodel"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_files_name_the_file(twin, tmp_path, ext, damage):
    net, weights = twin
    path = tmp_path / ("w" + ext)
    save_weights(path, net, weights)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    elif damage == "garbage":
        rng = np.random.default_rng(0)
        data = rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(NetcError) as info:
        load_weights(path, net)
    assert str(path) in info.value.message


def test_corrupt_member_inside_a_valid_zip(twin, tmp_path):
    net, weights = twin
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("left/0.npy", b"\x93NUMPY not really")
    path = tmp_path / "bad.npz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(NetcError, match="bad.npz.*left/0"):
        load_weights(path, net)


def test_a_plain_npy_is_not_a_weights_file(twin, tmp_path):
    net, _ = twin
    path = tmp_path / "one.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(NetcError, match="one.npz"):
        load_weights(path, net)


def test_pickled_npz_is_refused_without_unpickling(twin, tmp_path, monkeypatch):
    net, weights = twin
    path = tmp_path / "evil.npz"
    arrays = {f"{n}/{i}": a for n, blobs in weights.items() for i, a in enumerate(blobs)}
    arrays["left/0"] = np.array([{"payload": 1}, None], dtype=object)
    np.savez(path, allow_pickle=True, **arrays)

    import pickle

    def no_unpickling(*args, **kwargs):
        raise AssertionError("unpickled")
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with pytest.raises(NetcError) as info:
        load_weights(path, net)
    assert "evil.npz" in info.value.message and "left/0" in info.value.message
    assert "pickle" in info.value.message


def test_a_raw_pickle_named_npz_is_refused(twin, tmp_path):
    import pickle
    net, _ = twin
    path = tmp_path / "p.npz"
    path.write_bytes(pickle.dumps({"left/0": [1, 2, 3]}))
    with pytest.raises(NetcError, match="p.npz"):
        load_weights(path, net)


def test_foreign_npz_keys_and_headers(twin, tmp_path):
    net, weights = twin
    path = tmp_path / "foreign.npz"
    np.savez(path, arr_0=np.zeros(3))
    with pytest.raises(NetcError, match="'arr_0'.*<layer name>/<blob index>"):
        load_weights(path, net)

    newer = json.dumps({"format": "netc-weights", "version": 99, "net": "Twin"}).encode()
    np.savez(path, **{FORMAT_KEY: np.frombuffer(newer, np.uint8)})
    with pytest.raises(NetcError, match="version 99"):
        load_weights(path, net)

    other = json.dumps({"format": "something", "version": 1}).encode()
    np.savez(path, **{FORMAT_KEY: np.frombuffer(other, np.uint8)})
    with pytest.raises(NetcError, match="foreign.npz"):
        load_weights(path, net)

    np.savez(path, **{"fc/0": weights["fc"][0], "fc/2": weights["fc"][1]})
    with pytest.raises(NetcError, match="'fc'.*numbered"):
        load_weights(path, net, allow_missing=True)


def test_npz_without_header_but_right_keys_loads(twin, tmp_path):
    net, weights = twin
    path = tmp_path / "bare.npz"
    np.savez(path, **{f"{n}/{i}": a for n, blobs in weights.items() for i, a in enumerate(blobs)})
    loaded = load_weights(path, net)
    np.testing.assert_array_equal(loaded["fc"][1], weights["fc"][1])


def test_missing_file(twin, tmp_path):
    net, _ = twin
    for name in ("nope.npz", "nope.caffemodel"):
        with pytest.raises(NetcError, match="nope.*does not exist"):
            load_weights(tmp_path / name, net)


# ---------------------------------------------------------------------------
# Extensions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["w.caffemodel.h5", "w.h5"])
def test_hdf5_is_not_supported(twin, tmp_path, name):
    net, weights = twin
    for call in (lambda p: load_weights(p, net), lambda p: save_weights(p, net, weights)):
        with pytest.raises(NetcError, match="not supported"):
            call(tmp_path / name)
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name", ["w.pt", "weights", "w.npy"])
def test_unknown_extension(twin, tmp_path, name):
    net, weights = twin
    with pytest.raises(NetcError) as info:
        save_weights(tmp_path / name, net, weights)
    assert ".npz" in info.value.hint and ".caffemodel" in info.value.hint
    with pytest.raises(NetcError):
        load_weights(tmp_path / name, net)
    assert list(tmp_path.iterdir()) == [tmp_path / "t.net"]


def test_extension_is_case_insensitive(twin, tmp_path):
    net, weights = twin
    save_weights(tmp_path / "W.NPZ", net, weights)
    save_weights(tmp_path / "W.CaffeModel", net, weights)
    assert load_weights(tmp_path / "W.NPZ", net).keys() == load_weights(tmp_path / "W.CaffeModel", net).keys()


# ---------------------------------------------------------------------------
# Saving: checks and atomicity
# ---------------------------------------------------------------------------

def test_save_checks_the_weights_against_the_net(twin, tmp_path):
    net, weights = twin
    path = tmp_path / "w.npz"
    with pytest.raises(NetcError, match="'fc' blob 0 has shape \\(2, 2\\).*\\(3, 144\\)"):
        save_weights(path, net, {**weights, "fc": [np.zeros((2, 2), np.float32), weights["fc"][1]]})
    with pytest.raises(NetcError, match="'fc'"):
        save_weights(path, net, {k: v for k, v in weights.items() if k != "fc"})
    with pytest.raises(NetcError, match="'ghost'"):
        save_weights(path, net, {**weights, "ghost": [np.zeros(1, np.float32)]})
    assert not path.exists()


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


@pytest.mark.parametrize("ext", [".npz", ".caffemodel"])
def test_saving_leaves_no_temporary_file(twin, tmp_path, ext):
    net, weights = twin
    out = tmp_path / "out"
    out.mkdir()
    save_weights(out / ("w" + ext), net, weights)
    save_weights(out / ("w" + ext), net, weights)      # overwriting too
    assert _leftovers(out, set()) == ["w" + ext]


@pytest.mark.parametrize("ext", [".npz", ".caffemodel"])
def test_a_failed_write_leaves_the_target_untouched(twin, tmp_path, monkeypatch, ext):
    net, weights = twin
    out = tmp_path / "out"
    out.mkdir()
    target = out / ("w" + ext)
    target.write_bytes(b"previous contents")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(netc.fileio.os, "replace", broken_replace)
    with pytest.raises(NetcError, match="cannot write weights file"):
        save_weights(target, net, weights)
    assert target.read_bytes() == b"previous contents"
    assert _leftovers(out, set()) == ["w" + ext]


def test_a_failed_encode_writes_nothing(twin, tmp_path, monkeypatch):
    net, weights = twin
    target = tmp_path / "w.caffemodel"
    target.write_bytes(b"previous contents")

    def boom(*args, **kwargs):
        raise RuntimeError("encoder crashed")
    monkeypatch.setattr(weight_files, "caffemodel_bytes", boom)
    with pytest.raises(RuntimeError):
        save_weights(target, net, weights)
    assert target.read_bytes() == b"previous contents"
    assert _leftovers(tmp_path, {"t.net"}) == ["w.caffemodel"]


def test_save_into_a_missing_directory(twin, tmp_path):
    net, weights = twin
    with pytest.raises(NetcError, match="cannot write weights file"):
        save_weights(tmp_path / "no" / "such" / "w.npz", net, weights)


def test_files_written_are_readable_by_numpy_and_protobuf_alone(twin, tmp_path):
    net, weights = twin
    save_weights(tmp_path / "w.npz", net, weights)
    save_weights(tmp_path / "w.caffemodel", net, weights)
    with np.load(tmp_path / "w.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["fc/0"], weights["fc"][0])
    proto = _protos(tmp_path / "w.caffemodel")
    assert proto.name == "Twin"
    assert [l.name for l in proto.layer] == ["left", "right", "fc"]
    assert [list(b.shape.dim) for b in proto.layer[2].blobs] == [[3, 144], [3]]
    assert os.path.getsize(tmp_path / "w.caffemodel") > 4 * (3 * 144)
