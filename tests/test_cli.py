"""The `netc` command as a user runs it: output, --json contract, options, exit codes.

MACs and parameter counts are computed here from Caffe's formulas for LeNet.
"""
import json
import os
import subprocess
import sys

import pytest

LENET = """\
net LeNet
input data [64, 1, 28, 28]
input label [64]
conv1: Convolution(20, kernel=5, weight=xavier)
pool1: Pooling(MAX, kernel=2, stride=2)
conv2: Convolution(50, kernel=5, weight=xavier)
pool2: Pooling(MAX, kernel=2, stride=2)
ip1:   InnerProduct(500, weight=xavier) ReLU!
ip2:   InnerProduct(10, weight=xavier)
loss:  SoftmaxWithLoss(ip2, label)
accuracy: Accuracy(ip2, label)   @test
solver SGD(base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy=inv(gamma=1e-4, power=0.75),
           max_iter=10000, test_interval=500, test_iter=100, display=100, snapshot=5000)
"""


def lenet_macs(n):
    conv1 = n * 20 * 24 * 24 * (1 * 5 * 5)
    conv2 = n * 50 * 8 * 8 * (20 * 5 * 5)
    ip1 = n * (50 * 4 * 4) * 500
    ip2 = n * 500 * 10
    return conv1 + conv2 + ip1 + ip2


LENET_PARAMS = (20 * 1 * 25 + 20) + (50 * 20 * 25 + 50) + (500 * 800 + 500) + (10 * 500 + 10)


def netc(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "netc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@pytest.fixture
def lenet(tmp_path):
    path = tmp_path / "lenet.net"
    path.write_text(LENET)
    return path


def check_json(*args):
    res = netc("check", "--json", *args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_check_prints_a_table_with_totals(lenet):
    res = netc("check", lenet)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["layer", "type"]
    assert any(line.split()[:2] == ["conv1", "Convolution"] and "[64,20,24,24]" in line for line in lines)
    total = lines[-1]
    assert total.startswith("LeNet (test): 11 layers")
    assert f"{LENET_PARAMS:,} parameters" in total
    assert f"{lenet_macs(64) / 1e6:.2f}M MACs" in total
    assert "Traceback" not in res.stderr


def test_json_contract(lenet):
    out = check_json(lenet)
    assert set(out) == {"net", "phase", "inputs", "blobs", "layers", "total_params", "total_macs", "memory"}
    assert out["net"] == "LeNet" and out["phase"] == "test"
    assert out["inputs"] == {"data": [64, 1, 28, 28], "label": [64]}
    assert out["blobs"]["pool2"] == [64, 50, 4, 4]
    assert out["blobs"]["loss"] == []
    assert out["total_params"] == LENET_PARAMS
    assert out["total_macs"] == lenet_macs(64)
    for layer in out["layers"]:
        assert set(layer) == {"name", "type", "bottoms", "tops", "params", "macs"}
    by_name = {l["name"]: l for l in out["layers"]}
    assert by_name["conv2"] == {"name": "conv2", "type": "Convolution", "bottoms": ["pool1"], "tops": ["conv2"],
                                "params": 50 * 20 * 25 + 50, "macs": 64 * 50 * 8 * 8 * 20 * 25}
    assert by_name["ip1/relu"]["tops"] == ["ip1"] and by_name["ip1/relu"]["bottoms"] == ["ip1"]
    assert by_name["loss"]["bottoms"] == ["ip2", "label"]


def test_input_override_scales_macs_linearly(lenet):
    big = check_json(lenet)
    small = check_json(lenet, "--input", "data=1,1,28,28", "--input", "label=1")
    assert small["inputs"]["data"] == [1, 1, 28, 28]
    assert small["total_macs"] == lenet_macs(1)
    assert big["total_macs"] == 64 * small["total_macs"]
    assert small["total_params"] == big["total_params"]


def test_phase_train_and_test_differ(lenet):
    test = check_json(lenet, "--phase", "test")
    train = check_json(lenet, "--phase", "train")
    assert train["phase"] == "train"
    assert "accuracy" in {l["name"] for l in test["layers"]}
    assert "accuracy" not in {l["name"] for l in train["layers"]}
    assert len(test["layers"]) == len(train["layers"]) + 1


def test_broken_file_exits_1_with_location(tmp_path):
    path = tmp_path / "bad.net"
    path.write_text("input data [1, 3, 8, 8]\nc: Convolution(4, kernal=3)\n")
    res = netc("check", path)
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.startswith(f"{path}:2:19: error: unknown parameter 'kernal' for Convolution\n")
    assert "    c: Convolution(4, kernal=3)\n" in res.stderr
    assert "hint: did you mean 'kernel'?" in res.stderr
    assert "Traceback" not in res.stderr


def test_syntax_error_exits_1(tmp_path):
    path = tmp_path / "bad.net"
    path.write_text("input data [1, 3, 8, 8]\nc: Convolution(4, kernel=3\n")
    res = netc("check", path)
    assert res.returncode == 1
    assert f"{path}:2:15: error: '(' is never closed" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_file(tmp_path):
    res = netc("check", tmp_path / "nope.net")
    assert res.returncode == 1
    assert "no such file" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("bad", ["data", "data=", "data=1,x", "=1,2", "data=1,0,3"])
def test_bad_input_syntax(lenet, bad):
    res = netc("check", lenet, "--input", bad)
    assert res.returncode == 1
    assert f"--input '{bad}' is not NAME=D0,D1,..." in res.stderr
    assert "Traceback" not in res.stderr


def test_input_names_an_unknown_blob(lenet):
    res = netc("check", lenet, "--input", "dat=1,1,28,28")
    assert res.returncode == 1
    assert "--input names 'dat', which is not a blob of this net" in res.stderr
    assert "did you mean 'data'?" in res.stderr


def test_warnings_go_to_stderr_and_exit_0(tmp_path):
    path = tmp_path / "w.net"
    path.write_text("input data [1, 3, 8, 8]\ninput label [1]\nb: InnerProduct(10)\nl: SoftmaxWithLoss(b, label)\n")
    res = netc("check", "--json", path)
    assert res.returncode == 0
    assert f"{path}:3:1: warning: the weights of 'b' start at 0" in res.stderr
    assert json.loads(res.stdout)["total_params"] == 10 * 192 + 10


def test_layers_command():
    res = netc("layers")
    assert res.returncode == 0
    names = [line.split()[0] for line in res.stdout.splitlines()]
    assert {"Convolution", "Pooling", "SoftmaxWithLoss", "IDXData"} <= set(names)
    res = netc("layers", "Pooling")
    assert res.returncode == 0 and "kernel_size" in res.stdout
    res = netc("layers", "Poolin")
    assert res.returncode == 1 and "did you mean 'Pooling'?" in res.stderr


def test_data_layer_needs_input_option(tmp_path):
    path = tmp_path / "d.net"
    path.write_text('src: Data(source="db", batch=32)\nc: Convolution(4, kernel=3)\n')
    res = netc("check", path)
    assert res.returncode == 1
    assert "hint: give it with --input data=N,C,H,W" in res.stderr
    out = check_json(path, "--input", "data=2,3,10,10")
    assert out["blobs"]["label"] == [2]
    assert out["blobs"]["c"] == [2, 4, 8, 8]
