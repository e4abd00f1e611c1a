"""netc.runtime.verify: a device run against the float64 reference, layer by layer.

There is no GPU in CI, so the device here is the CPU in float32: the same code path,
and float32 against float64 is a real comparison (errors are small but not zero).
A layer broken on one side only (float32) must be flagged as the first failure.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from netc.errors import NetcError
from netc.layers import REGISTRY
from netc.runtime.verify import (GRADIENT_TOLERANCE, OUTPUT_TOLERANCE, Comparison, relative_error, render,
                                 verify)

ROOT = Path(__file__).resolve().parents[2]
LENET = str(ROOT / "nets" / "lenet.net")
LENET_LAYERS = ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "accuracy", "loss"]


def lenet_batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"data": rng.uniform(0, 1, size=(n, 1, 28, 28)).astype(np.float32),
            "label": rng.integers(0, 10, size=n).astype(np.float32)}


def broken_on_float32(monkeypatch, type_name, verb):
    """Wrap a layer type's forward or backward so that it errs by 1e-2 in float32 only."""
    spec = REGISTRY[type_name]
    original = getattr(spec, verb)

    def forward(p, bottoms, weights, ctx, state):
        tops = original(p, bottoms, weights, ctx, state)
        return [t + 1e-2 if ctx.dtype == np.float32 else t for t in tops]

    def backward(p, bottoms, tops, top_diffs, weights, ctx, state, need):
        diffs, wdiffs = original(p, bottoms, tops, top_diffs, weights, ctx, state, need)
        return [d + 1e-2 if d is not None and ctx.dtype == np.float32 else d for d in diffs], wdiffs

    monkeypatch.setattr(spec, verb, forward if verb == "forward" else backward)


def test_relative_error():
    want = np.array([[1.0, -4.0], [2.0, 0.0]])
    assert relative_error(want, want) == 0.0
    assert relative_error(want + [[0, 0], [0, 1e-3]], want) == pytest.approx(1e-3 / 4)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros(2), np.zeros(3)) == math.inf
    assert math.isnan(relative_error(np.array([np.nan, 1.0]), np.ones(2)))
    assert relative_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    row = Comparison("l", "T", "output", "x", (2,), math.nan, 1e-4)
    assert not row.ok          # a NaN is never within tolerance


def test_lenet_forward_passes_in_float32():
    report = verify(LENET, "cpu", inputs=lenet_batch(), batch=8)
    assert report.ok and report.exit_status == 0 and report.phase == "test" and report.batch == 8
    assert [r.layer for r in report.rows] == ["mnist", "mnist"] + LENET_LAYERS[1:]
    assert all(r.kind == "output" and r.tolerance == OUTPUT_TOLERANCE for r in report.rows)
    by_layer = {r.layer: r for r in report.rows}
    assert by_layer["conv2"].shape == (8, 50, 8, 8)
    # a real comparison: float32 differs from float64, by little
    assert 1e-9 < by_layer["conv2"].error < 1e-5 and 1e-9 < by_layer["ip1"].error < 1e-5
    text = render(report)
    assert text.splitlines()[-1].startswith("OK: 11 outputs within tolerance (0.0001)")
    assert "conv2" in text and "8x50x8x8" in text and "FAIL" not in text


def test_a_layer_broken_in_float32_is_the_first_failure(monkeypatch):
    broken_on_float32(monkeypatch, "Pooling", "forward")
    report = verify(LENET, "cpu", inputs=lenet_batch(), batch=8)
    assert not report.ok and report.exit_status == 1
    first = report.first_failure
    assert (first.layer, first.type, first.kind, first.name) == ("pool1", "Pooling", "output", "pool1")
    assert first.error > 1e-3
    # each layer is given the reference's inputs: conv2 is right although pool1 was not
    failing = [r.layer for r in report.rows if not r.ok]
    assert failing == ["pool1", "pool2"]
    lines = render(report).splitlines()
    assert any(line.startswith("pool1") and line.endswith("FAIL  <- first failure") for line in lines)
    assert lines[-1].startswith("FAIL: 2 of 11 past tolerance; the first is output pool1 of layer 'pool1' "
                                "(Pooling): rel err ")


def test_chained_runs_carry_the_error_on(monkeypatch):
    broken_on_float32(monkeypatch, "Pooling", "forward")
    report = verify(LENET, "cpu", inputs=lenet_batch(), batch=8, chained=True)
    assert report.first_failure.layer == "pool1"
    assert not next(r for r in report.rows if r.layer == "conv2").ok      # pool1's error, passed on


def test_train_reports_every_gradient():
    report = verify(LENET, "cpu", inputs=lenet_batch(), train=True, batch=8)
    assert report.ok and report.phase == "train"
    gradients = [(r.layer, r.name) for r in report.rows if r.kind == "gradient"]
    assert gradients == [
        ("loss", "d(ip2)"),
        ("ip2", "d(ip1)"), ("ip2", "d(weight)"), ("ip2", "d(bias)"),
        ("relu1", "d(ip1)"),
        ("ip1", "d(pool2)"), ("ip1", "d(weight)"), ("ip1", "d(bias)"),
        ("pool2", "d(conv2)"),
        ("conv2", "d(pool1)"), ("conv2", "d(weight)"), ("conv2", "d(bias)"),
        ("pool1", "d(conv1)"),
        ("conv1", "d(weight)"), ("conv1", "d(bias)"),   # nothing needs the data's gradient
    ]
    assert all(r.tolerance == GRADIENT_TOLERANCE for r in report.rows if r.kind == "gradient")
    assert max(r.error for r in report.rows if r.kind == "gradient") > 1e-9
    assert "15 gradients within tolerance (0.0001 for outputs, 0.001 for gradients)" in render(report)


def test_a_backward_broken_in_float32_is_flagged(monkeypatch):
    broken_on_float32(monkeypatch, "Pooling", "backward")
    report = verify(LENET, "cpu", inputs=lenet_batch(), train=True, batch=8)
    assert all(r.ok for r in report.rows if r.kind == "output")
    first = report.first_failure
    assert (first.layer, first.kind, first.name) == ("pool2", "gradient", "d(conv2)")   # backward runs in reverse


def test_dropout_and_dummy_data_draw_alike_on_both_sides(tmp_path):
    # the same seed gives both runs the same mask and the same fill, or the rows would fail
    path = tmp_path / "drop.net"
    path.write_text("labels: DummyData(shape=[[6]]) -> label\n"        # all class 0
                    "src: DummyData(shape=[[6, 12]], data_filler=gaussian(std=1)) -> data\n"
                    "ip1: InnerProduct(data, 20, weight=xavier)\n"
                    "drop: Dropout(ip1, 0.5)\n"
                    "ip2: InnerProduct(drop, 4, weight=xavier)\n"
                    "loss: SoftmaxWithLoss(ip2, label)\n")
    report = verify(str(path), "cpu", train=True, seed=3)
    assert report.ok, render(report)
    drop = next(r for r in report.rows if r.layer == "drop" and r.kind == "output")
    assert drop.error < 1e-5
    assert report.data == []          # nothing fed: DummyData makes its own


def test_random_inputs_where_there_is_no_data(tmp_path):
    path = tmp_path / "in.net"
    path.write_text("input data [5, 3, 6, 6]\ninput label [5]\n"
                    "conv: Convolution(data, 4, kernel=3, weight=xavier)\n"
                    "ip: InnerProduct(conv, 7, weight=xavier)\n"
                    "loss: SoftmaxWithLoss(ip, label)\n")
    report = verify(str(path), "cpu", train=True)
    assert report.ok
    assert report.data == ["data: random (it is fed by the caller)", "label: random (it is fed by the caller)"]
    # --batch resizes the inputs
    assert verify(str(path), "cpu", batch=2).rows[0].shape == (2, 3, 6, 6)


def test_an_unreadable_source_falls_back_to_random_data(tmp_path):
    path = tmp_path / "src.net"
    path.write_text(f'src: NpyData(source="{tmp_path / "missing.npz"}", batch_size=4, shape=[2, 5, 5]) '
                    "-> data, label\n"
                    "ip: InnerProduct(data, 3, weight=xavier)\nloss: SoftmaxWithLoss(ip, label)\n")
    report = verify(str(path), "cpu", train=True)
    assert report.ok and report.data[0].startswith("data, label: random (")


def test_train_needs_a_loss(tmp_path):
    path = tmp_path / "noloss.net"
    path.write_text("input data [2, 3]\nip: InnerProduct(4)\n")
    with pytest.raises(NetcError) as err:
        verify(str(path), "cpu", train=True)
    assert "computes no loss" in err.value.message
    assert verify(str(path), "cpu").ok


def test_tolerance_can_be_given():
    report = verify(LENET, "cpu", inputs=lenet_batch(4), batch=4, tolerance=1e-12)
    assert not report.ok                     # float32 is not that close
    report = verify(LENET, "cpu", inputs=lenet_batch(4), train=True, batch=4, tolerance=(1e-3, 1e-2))
    assert {r.tolerance for r in report.rows} == {1e-3, 1e-2}


# --- the command line ----------------------------------------------------------------

def netc(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "netc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_cli_verify_prints_the_table_and_exits_0(tmp_path):
    batch = lenet_batch(4)
    np.save(tmp_path / "x.npy", batch["data"])
    np.save(tmp_path / "y.npy", batch["label"])
    res = netc("run", LENET, "--verify", "--device", "cpu", "--input", f"data={tmp_path / 'x.npy'}",
               "--input", f"label={tmp_path / 'y.npy'}")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"verify {LENET} (test phase, batch 4): outputs of cpu")
    header = next(line for line in lines if line.startswith("layer"))
    assert header.split()[:5] == ["layer", "type", "output/gradient", "shape", "rel"]
    assert any(line.split()[:2] == ["conv1", "Convolution"] and line.endswith("ok") for line in lines)
    assert lines[-1].startswith("OK: 11 outputs")
    res = netc("run", LENET, "--verify", "--train", "--batch", "4", "--seed", "1")
    assert res.returncode == 0, res.stderr
    assert "d(weight)" in res.stdout and "15 gradients" in res.stdout.splitlines()[-1]


def test_cli_verify_exits_1_when_a_layer_fails(monkeypatch):
    from netc.cli import cli

    broken_on_float32(monkeypatch, "Pooling", "forward")
    result = CliRunner().invoke(cli, ["run", LENET, "--verify", "--batch", "4"])
    assert result.exit_code == 1
    assert "<- first failure" in result.output and result.output.splitlines()[-1].startswith("FAIL: ")


def test_cli_verify_refuses_options_it_does_not_use():
    res = netc("run", LENET, "--verify", "--output", "out.npz", "--iters", "3")
    assert res.returncode == 1
    assert "--output, --iters have no meaning with --verify" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.gpu
def test_lenet_on_the_gpu_matches_the_reference():
    report = verify(LENET, "cuda", inputs=lenet_batch(16), train=True, batch=16)
    assert report.ok, render(report)
    assert report.device.startswith("cuda:0")
