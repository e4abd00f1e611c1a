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
