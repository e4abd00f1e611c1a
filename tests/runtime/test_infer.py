"""netc run --infer: batching, pruning, outputs, images, and its errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from netc.compile import compile_net
from netc.errors import NetcError
from netc.passes.prune import output_blobs, prune_to_available
from netc.runtime import infer


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


RELU_NET = "input data [4, 3, 2, 2]\nr: ReLU(0.5)\n"


def leaky(x):
    return np.where(x > 0, x, 0.5 * x)


def test_results_do_not_depend_on_the_chunk_size(tmp_path):
    path = write(tmp_path, "relu.net", RELU_NET)
    x = np.random.default_rng(1).normal(size=(10, 3, 2, 2)).astype(np.float32)
    expected = leaky(x)
    for batch in (None, 1, 3, 4, 10, 64):      # None: the declared batch, 4
        out = infer.run_inference(path, {"data": x}, batch=batch)
        assert list(out) == ["r"]
        np.testing.assert_array_equal(out["r"], expected)


def test_prune_drops_what_needs_blobs_not_given(tmp_path):
    path = write(tmp_path, "tv.net",
                 "src: DummyData(shape=[[2, 3], [2]]) -> data, label\n"
                 "input extra [2, 3]\n"
                 "r: ReLU(data)\n"
                 "uses_label: ReLU(label)\n"
                 "uses_extra: ReLU(extra)\n")
    net = compile_net(path)
    pruned = prune_to_available(net, {"extra"})
    assert [l.name for l in pruned.layers] == ["src", "extra", "r", "uses_label", "uses_extra"]
    # a partly fed source keeps just the fed tops
    path = write(tmp_path, "src.net",
                 "src: IDXData(source=\"x\", batch_size=2, shape=[1, 4, 4]) -> data, label\n"
                 "r: ReLU(data)\nl: ReLU(label)\n")
    pruned = prune_to_available(compile_net(path), {"data"})
    assert [(l.name, l.tops) for l in pruned.layers] == [("src", ("data",)), ("r", ("r",))]
    assert output_blobs(pruned) == ["r"]


def test_output_blobs_are_final_values_nothing_reads(tmp_path):
    path = write(tmp_path, "o.net", "input data [1, 2]\na: ReLU()\nb: ReLU(a)!\nc: ReLU(data)\n")
    assert output_blobs(compile_net(path)) == ["a", "c"]


def test_requested_blobs_and_unknown_names(tmp_path):
    path = write(tmp_path, "relu.net", RELU_NET)
    x = np.ones((2, 3, 2, 2), np.float32)
    out = infer.run_inference(path, {"data": x}, blobs=["data", "r"])
    np.testing.assert_array_equal(out["data"], x)
    with pytest.raises(NetcError) as err:
        infer.run_inference(path, {"data": x}, blobs=["rr"])
    assert err.value.message == "no blob 'rr' to output" and "did you mean 'r'" in err.value.hint


def test_inputs_must_agree_on_examples(tmp_path):
    path = write(tmp_path, "two.net", "input a [2, 3]\ninput b [2, 3]\nr: ReLU(a)\ns: ReLU(b)\n")
    with pytest.raises(NetcError) as err:
        infer.run_inference(path, {"a": np.ones((2, 3)), "b": np.ones((3, 3))})
    assert "disagree" in err.value.message


def test_arrays_are_never_unpickled(tmp_path):
    bad = tmp_path / "obj.npy"
    np.save(bad, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NetcError) as err:
        infer.load_array(str(bad))
    assert "cannot read" in err.value.message and str(bad) in err.value.message
    with pytest.raises(NetcError) as err:
        infer.load_array(str(tmp_path / "missing.npy"))
    assert "does not exist" in err.value.message


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "netc", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_writes_the_outputs_npz(tmp_path):
    path = write(tmp_path, "relu.net", RELU_NET)
    x = np.random.default_rng(2).normal(size=(5, 3, 2, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    result = run_cli("run", path, "--infer", "--input", f"data={tmp_path / 'x.npy'}", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "no --weights" in result.stderr
    with np.load(out, allow_pickle=False) as z:
        assert z.files == ["r"]
        np.testing.assert_array_equal(z["r"], leaky(x))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".netc-")]   # no temp file left


@pytest.mark.parametrize("args, message", [
    (["--input", "data"], "--input 'data' is not NAME=FILE"),
    (["--input", "data=nope.npy"], "input file 'nope.npy' does not exist"),
    (["--input", "data=x.npy", "--device", "cuda"], "device 'cuda' is not available"),
    (["--input", "data=x.npy", "--max-memory", "40"], "more than the 40 B of --max-memory"),
    (["--input", "data=x.npy", "--max-memory", "lots"], "'lots' is not a size"),
])
def test_cli_errors_exit_1_without_traceback(tmp_path, args, message):
    path = write(tmp_path, "relu.net", RELU_NET)
    np.save(tmp_path / "x.npy", np.ones((1, 3, 2, 2), np.float32))
    result = run_cli("run", path, "--infer", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def make_image(path, rgb, size=(6, 4)):
    from PIL import Image
    Image.new("RGB", size, rgb).save(path)


def test_image_input_is_bgr_resized_for_a_deploy_input(tmp_path):
    pytest.importorskip("PIL")
    net = write(tmp_path, "deploy.net", "input data [1, 3, 5, 7]\nr: ReLU()\n")
    make_image(tmp_path / "x.png", (10, 20, 30))
    x = infer.load_image(str(tmp_path / "x.png"), net, "data")
    assert x.shape == (1, 3, 5, 7)
    np.testing.assert_allclose(x[0, :, 2, 3], [30, 20, 10])     # Caffe's BGR order, 0-255


def test_image_input_follows_the_sources_transform(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    net = write(tmp_path, "src.net",
                'src: IDXData(source="x", batch_size=4, shape=[3, 8, 8], crop_size=4, '
                'mean_value=[1, 2, 3], scale=0.5) -> data, label\nr: ReLU(data)\n')
    # a gradient image, so the centre crop is visible in the values
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:, :, 0] = np.arange(8)[None, :] * 10     # red grows to the right
    Image.fromarray(pixels).save(tmp_path / "g.png")
    x = infer.load_image(str(tmp_path / "g.png"), net, "data")
    assert x.shape == (1, 3, 4, 4)
    # red is channel 2 in BGR; columns 2..5 of the 8-wide image survive the centre crop
    np.testing.assert_allclose(x[0, 2, 0], (np.arange(2, 6) * 10 - 3) * 0.5)
    np.testing.assert_allclose(x[0, 0], (0 - 1) * 0.5)


def test_unreadable_image_is_a_located_error(tmp_path):
    pytest.importorskip("PIL")
    net = write(tmp_path, "deploy.net", "input data [1, 3, 5, 7]\nr: ReLU()\n")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(NetcError) as err:
        infer.load_image(str(tmp_path / "bad.png"), net, "data")
    assert "cannot read image" in err.value.message and "bad.png" in err.value.message


def test_top_k_applies_softmax_to_scores_only():
    probs = np.array([0.1, 0.6, 0.3])
    assert [c for c, _ in infer.top_k(probs, 2)] == [1, 2]
    assert infer.top_k(probs, 1)[0][1] == pytest.approx(0.6)
    scores = np.array([1.0, 3.0, -2.0])
    e = np.exp(scores - 3.0)
    assert infer.top_k(scores, 1)[0] == (1, pytest.approx(e[1] / e.sum()))


def test_run_time_errors_are_located_at_the_layer(tmp_path):
    path = write(tmp_path, "loss.net", "input data [2, 3]\ninput label [2]\nloss: SoftmaxWithLoss(data, label)\n")
    from netc.runtime.executor import Executor
    net = compile_net(path)
    ex = Executor(net, {})
    with pytest.raises(NetcError) as err:
        ex.forward({"data": np.zeros((2, 3)), "label": np.array([0, 7])})
    assert err.value.message == "SoftmaxWithLoss 'loss': a label is 7, outside the 3 classes 0..2"
    assert (err.value.span.line, err.value.span.column) == (3, 1)


def test_only_what_the_requested_blobs_need_is_computed(tmp_path):
    from netc.passes.prune import prune_to_outputs
    path = write(tmp_path, "heads.net",
                 "input data [2, 3]\ntrunk: ReLU() ReLU!\nhead1: ReLU(trunk)\nhead2: ReLU(trunk)\n")
    net = compile_net(path)
    assert [l.name for l in prune_to_outputs(net, ["head2"]).layers] == ["data", "trunk", "trunk/relu", "head2"]
    assert [l.name for l in prune_to_outputs(net, ["trunk"]).layers] == ["data", "trunk", "trunk/relu"]
    out = infer.run_inference(path, {"data": -np.ones((2, 3))}, blobs=["head1"])
    assert list(out) == ["head1"]
