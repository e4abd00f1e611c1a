"""Whole nets against an independent float64 computation, and Caffe's own trained LeNet."""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reference  # noqa: E402

from netc.runtime import infer  # noqa: E402
from netc.runtime.weights import init_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared/ is not beside the checkout")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data[4:4 + 4 * ndim], dtype=">i4")
    return np.frombuffer(data[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def test_alexnet_random_weights_match_the_reference(tmp_path):
    net, _, _ = infer.prepare(str(ROOT / "nets" / "alexnet.net"), {"data": np.zeros((2, 3, 227, 227))}, None)
    weights = init_weights(net, seed=3)
    x = np.random.default_rng(4).uniform(-100, 100, size=(2, 3, 227, 227)).astype(np.float32)
    got = infer.run_inference(str(ROOT / "nets" / "alexnet.net"), {"data": x}, weights, blobs=["fc8"])
    want = reference.forward(net, weights, {"data": x})
    assert reference.max_relative_error(got["fc8"], want["fc8"]) < 1e-4
    # the check has teeth: the outputs are not all alike
    assert np.std(want["fc8"]) > 1e-3 * np.max(np.abs(want["fc8"]))


@needs_shared
def test_caffe_trained_lenet_classifies_mnist_at_caffes_accuracy():
    images = read_idx(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").astype(np.float32)
    labels = read_idx(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28)
    x = images[:, None] * np.float32(0.00390625)       # lenet_train_test.prototxt's scale
    prototxt = str(SHARED / "caffe_models" / "examples" / "mnist" / "lenet.prototxt")
    weights = str(SHARED / "pretrained" / "lenet_iter_10000.caffemodel")
    out = infer.run_inference(prototxt, {"data": x}, weights, blobs=["prob"])
    accuracy = float(np.mean(out["prob"].argmax(axis=1) == labels))
    assert accuracy >= 0.990, accuracy
    # and to float32 precision against the independent reference, on a slice
    net, _, _ = infer.prepare(prototxt, {"data": x[:64]}, None)
    from netc.runtime.weight_files import load_weights
    loaded = load_weights(weights, net)
    want = reference.forward(net, loaded, {"data": x[:64]})
    assert reference.max_relative_error(out["prob"][:64], want["prob"]) < 1e-4


def netc_cli(*args):
    import subprocess
    return subprocess.run([sys.executable, "-m", "netc", *args], capture_output=True, text=True, timeout=300)


@needs_shared
def test_cli_runs_a_caffe_prototxt_with_a_caffemodel(tmp_path):
    images = read_idx(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz")[:100].astype(np.float32)
    x = images[:, None] * np.float32(0.00390625)
    np.save(tmp_path / "x.npy", x)
    prototxt = str(SHARED / "caffe_models" / "examples" / "mnist" / "lenet.prototxt")
    caffemodel = str(SHARED / "pretrained" / "lenet_iter_10000.caffemodel")
    result = netc_cli("run", prototxt, "--infer", "--weights", caffemodel, "--input", f"data={tmp_path / 'x.npy'}",
                      "--output", str(tmp_path / "out.npz"), "--blobs", "ip2,prob", "--batch", "32")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "out.npz", allow_pickle=False) as z:
        got = {k: z[k] for k in z.files}
    assert sorted(got) == ["ip2", "prob"] and got["prob"].shape == (100, 10)
    net, _, _ = infer.prepare(prototxt, {"data": x}, len(x))
    from netc.runtime.weight_files import load_weights
    want = reference.forward(net, load_weights(caffemodel, net), {"data": x})
    assert reference.max_relative_error(got["ip2"], want["ip2"]) < 1e-4
    assert reference.max_relative_error(got["prob"], want["prob"]) < 1e-4


def test_cli_classifies_an_image_and_names_the_classes(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    from netc.runtime.weight_files import save_weights
    from netc.compile import compile_net
    net_path = tmp_path / "tiny.net"
    net_path.write_text("input data [1, 3, 4, 4]\nfc: InnerProduct(3, weight=xavier)\nprob: Softmax()\n")
    net = compile_net(str(net_path))
    # weights that pick class 2 for a blue image: BGR channel 0 carries blue
    w = np.zeros((3, 48), np.float32)
    w[2, :16] = 0.01
    save_weights(str(tmp_path / "w.npz"), net, {"fc": [w, np.zeros(3, np.float32)]})
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "blue.png")
    (tmp_path / "labels.txt").write_text("red thing\ngreen thing\nblue thing\n")
    result = netc_cli("run", str(net_path), "--infer", "--weights", str(tmp_path / "w.npz"),
                      "--input", f"data={tmp_path / 'blue.png'}", "--labels", str(tmp_path / "labels.txt"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    e = np.exp([0.0, 0.0, 255 * 16 * 0.01])
    assert lines[1] == f"1. {e[2] / e.sum():7.2%}  blue thing"
    assert lines[2].endswith("red thing") and lines[3].endswith("green thing")
