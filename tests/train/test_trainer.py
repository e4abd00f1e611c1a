"""The training loop: Caffe's schedule, iter_size, tests with top-5, snapshots that
resume bit for bit, a diverging loss, and the command line around it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from netc.compile import compile_net
from netc.errors import NetcError
from netc.runtime.executor import Executor
from netc.runtime.weight_files import load_weights
from netc.train.trainer import Reporter, Trainer, TrainOptions

CLASSES = 8


def _write_data(folder, n, seed):
    """Separable data: each class is a bright 3x3 patch at its own place on an 8x8 image."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    data = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 4)
        data[i, 0, r * 4:r * 4 + 3, col * 2:col * 2 + 3] += 2.0
    path = os.path.join(folder, f"set{seed}.npz")
    np.savez(path, data=data, label=labels.astype(np.float32))
    return path


def _net(folder, solver="SGD(base_lr=0.05, momentum=0.9, weight_decay=1e-4, lr_policy=inv(gamma=1e-3, power=0.75), "
                        "max_iter=30, test_interval=10, test_iter=2, display=5, snapshot=10)",
         extra="", batch=16, shuffle="true", train_examples=96, iter_size=None):
    train = _write_data(folder, train_examples, 1)
    test = _write_data(folder, 40, 2)
    if iter_size:
        solver = solver.replace("max_iter", f"iter_size={iter_size}, max_iter")
    text = f"""net Tiny
src: NpyData(source="{train}", batch_size={batch}, shuffle={shuffle}) -> data, label @train
src: NpyData(source="{test}", batch_size=20) -> data, label @test
conv: Convolution(data, 6, kernel=3, weight=gaussian(std=0.1), bias=constant)
relu: ReLU!
{extra}ip: InnerProduct({CLASSES}, weight=xavier)
accuracy: Accuracy(ip, label) @test
loss: SoftmaxWithLoss(ip, label)
solver {solver}
"""
    path = os.path.join(folder, "tiny.net")
    with open(path, "w") as f:
        f.write(text)
    return path


class Recorder(Reporter):
    def __init__(self):
        self.displays, self.tests, self.messages = [], [], []

    def display(self, it, loss, lr, images_per_s):
        self.displays.append((it, loss, lr))

    def test(self, it, results):
        self.tests.append((it, dict(results)))

    def message(self, text):
        self.messages.append(text)


def _train(path, tmp_path, reporter=None, **options):
    options.setdefault("snapshot_dir", str(tmp_path / "snap"))
    trainer = Trainer(path, TrainOptions(**options), reporter or Recorder())
    return trainer, trainer.run()


def test_loss_falls_and_caffes_schedule_is_kept(tmp_path):
    path = _net(str(tmp_path))
    recorder = Recorder()
    trainer, result = _train(path, tmp_path, recorder, log=str(tmp_path / "run.jsonl"))
    assert result.iteration == 30 and not result.interrupted
    # Caffe tests before iterations 0, 10, 20 and after the last (30); displays every 5
    assert [it for it, _ in recorder.tests] == [0, 10, 20, 30]
    assert [it for it, _, _ in recorder.displays] == [0, 5, 10, 15, 20, 25]
    # inv policy: base·(1 + γ·iter)^(−power)
    for it, _, lr in recorder.displays:
        assert lr == pytest.approx(0.05 * (1 + 1e-3 * it) ** -0.75, rel=1e-12)
    first, last = recorder.displays[0][1], recorder.displays[-1][1]
    assert last < 0.5 * first
    assert recorder.tests[-1][1]["accuracy"] > recorder.tests[0][1]["accuracy"]
    records = [json.loads(line) for line in open(tmp_path / "run.jsonl")]
    assert [r["iter"] for r in records if "loss" in r] == [0, 5, 10, 15, 20, 25]
    assert all(set(r) == {"iter", "loss", "lr", "seconds"} for r in records if "loss" in r)
    tests = [r for r in records if "test" in r]
    assert [r["iter"] for r in tests] == [0, 10, 20, 30]
    assert set(tests[-1]["test"]) == {"accuracy", "accuracy_top5", "loss"}
    # snapshots every 10 iterations; the last one is the end
    names = sorted(os.listdir(tmp_path / "snap"))
    assert names == sorted(f"tiny_iter_{i}{ext}" for i in (10, 20, 30) for ext in (".npz", ".solverstate.npz"))


def test_test_outputs_match_an_independent_evaluation(tmp_path):
    """The last test's accuracy, top-5 and loss, recomputed from the saved weights
    with NumPy over the same 40 test examples (2 batches of 20)."""
    path = _net(str(tmp_path))
    trainer, result = _train(path, tmp_path)
    net = trainer.test_net
    weights = load_weights(result.snapshot, trainer.train_net)
    test = np.load(tmp_path / "set2.npz")
    x, labels = test["data"], test["label"].astype(int)
    w, b = weights["conv"]
    # the convolution written out as loops over the 3x3 window
    out = np.zeros((len(x), 6, 6, 6))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + 6, j:j + 6], w[:, :, i, j])
    hidden = np.maximum(out + b[None, :, None, None], 0).reshape(len(x), -1)
    wi, bi = weights["ip"]
    scores = hidden @ wi.T.astype(np.float64) + bi
    true = scores[np.arange(len(x)), labels]
    rank = (scores > true[:, None]).sum(axis=1)   # ties do not occur in float data
    logp = scores - scores.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    final = result.tests[-1][1]
    assert final["accuracy"] == pytest.approx(np.mean(rank < 1), abs=1e-6)
    assert final["accuracy_top5"] == pytest.approx(np.mean(rank < 5), abs=1e-6)
    assert final["loss"] == pytest.approx(-logp[np.arange(len(x)), labels].mean(), rel=1e-4)
    assert net.name == "Tiny"


@pytest.mark.parametrize("solver", ["SGD", "Adam"])
def test_resumed_run_reaches_the_same_weights_bit_for_bit(tmp_path, solver):
    spec = (f"{solver}(base_lr=0.02, momentum=0.9, weight_decay=1e-4, lr_policy=step(gamma=0.5, stepsize=7), "
            "max_iter=23, test_interval=6, test_iter=3, display=4, snapshot=9)")
    path = _net(str(tmp_path), spec, extra="drop: Dropout(0.3)\n", batch=12)
    whole_dir, part_dir = tmp_path / "whole", tmp_path / "part"
    _, whole = _train(path, tmp_path, snapshot_dir=str(whole_dir), log=str(tmp_path / "whole.jsonl"))
    # the same run interrupted after iteration 9, then resumed
    _, stopped = _train(path, tmp_path, snapshot_dir=str(part_dir), iters=9)
    assert stopped.iteration == 9
    _, resumed = _train(path, tmp_path, snapshot_dir=str(part_dir), log=str(tmp_path / "part.jsonl"),
                        resume=str(part_dir / "tiny_iter_9.solverstate.npz"))
    a = np.load(whole.snapshot)
    b = np.load(resumed.snapshot)
    assert whole.snapshot.endswith("tiny_iter_23.npz") and resumed.snapshot.endswith("tiny_iter_23.npz")
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    # and the tests after the resumption saw what the uninterrupted run saw
    assert [t for t in whole.tests if t[0] > 9] == resumed.tests


def test_iter_size_sums_gradients_as_one_larger_batch(tmp_path):
    """Two passes of 8 with iter_size 2 step as one pass of 16 (same examples, no shuffling)."""
    spec = "SGD(base_lr=0.1, momentum=0.9, weight_decay=1e-3, max_iter=6, display=0)"
    os.makedirs(tmp_path / "big")
    os.makedirs(tmp_path / "small")
    big = _net(str(tmp_path / "big"), spec, batch=16, shuffle="false")
    small = _net(str(tmp_path / "small"), spec, batch=8, shuffle="false", iter_size=2)
    _, a = _train(big, tmp_path, snapshot_dir=str(tmp_path / "a"))
    _, b = _train(small, tmp_path, snapshot_dir=str(tmp_path / "b"))
    wa, wb = np.load(a.snapshot), np.load(b.snapshot)
    for key in wa.files:
        if wa[key].dtype == np.float32:
            np.testing.assert_allclose(wa[key], wb[key], rtol=2e-5, atol=2e-6)


def test_a_diverging_loss_stops_with_the_iteration_and_the_last_snapshot(tmp_path):
    spec = "SGD(base_lr=1e4, momentum=0.9, max_iter=200, display=0, snapshot=1)"
    path = _net(str(tmp_path), spec)
    with pytest.raises(NetcError) as err:
        _train(path, tmp_path)
    message = err.value.message
    assert "the loss became" in message and "at iteration" in message
    it = int(message.split("at iteration ")[1].split(";")[0])
    assert it >= 1
    assert f"tiny_iter_{it}.npz" in err.value.diagnostic.hint


def test_no_solver_is_a_clear_error(tmp_path):
    path = _net(str(tmp_path))
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[:text.index("\nsolver ")])
    with pytest.raises(NetcError, match="has no solver"):
        Trainer(path, TrainOptions())


def test_resume_refuses_a_weights_file_and_a_missing_file(tmp_path):
    path = _net(str(tmp_path), "SGD(base_lr=0.01, max_iter=2)")
    _, result = _train(path, tmp_path)
    with pytest.raises(NetcError, match="not a netc solver state"):
        Trainer(path, TrainOptions(resume=result.snapshot))
    with pytest.raises(NetcError, match="does not exist") as err:
        Trainer(path, TrainOptions(resume=str(tmp_path / "nothing_iter_3.npz")))
    assert "solverstate" in err.value.diagnostic.hint


def test_fine_tuning_starts_from_the_given_weights(tmp_path):
    path = _net(str(tmp_path), "SGD(base_lr=0.0, max_iter=1)")
    _, first = _train(path, tmp_path, seed=1, snapshot_dir=str(tmp_path / "one"))
    trainer = Trainer(path, TrainOptions(seed=2, weights=first.snapshot))
    saved = np.load(first.snapshot)
    assert np.array_equal(trainer.weights["conv"][0], saved["conv/0"])
    fresh = Trainer(path, TrainOptions(seed=2))
    assert not np.array_equal(fresh.weights["conv"][0], saved["conv/0"])


def _cli(args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "netc", *args], cwd=cwd, capture_output=True, text=True, **kw)


def test_cli_trains_writes_the_log_and_reports_the_final_test(tmp_path):
    path = _net(str(tmp_path))
    done = _cli(["run", path, "--iters", "20", "--snapshot-dir", "snaps", "--log", "run.jsonl"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "final test (iteration 20): accuracy" in done.stdout
    assert "iteration      15  loss" in done.stderr
    assert os.path.isfile(tmp_path / "snaps" / "tiny_iter_20.solverstate.npz")
    assert "Traceback" not in done.stderr
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["iter"] == 20


def test_cli_ctrl_c_writes_a_snapshot_that_resumes(tmp_path):
    spec = "SGD(base_lr=0.01, momentum=0.9, max_iter=100000, display=0)"
    path = _net(str(tmp_path), spec)
    process = subprocess.Popen([sys.executable, "-m", "netc", "run", path, "--snapshot-dir", "snaps"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)   # imports, compiling, some iterations
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    states = [n for n in os.listdir(tmp_path / "snaps") if n.endswith(".solverstate.npz")]
    assert len(states) == 1 and "--resume" in err
    stopped_at = int(states[0].split("_iter_")[1].split(".")[0])
    assert stopped_at > 0
    done = _cli(["run", path, "--snapshot-dir", "snaps", "--resume", f"snaps/{states[0]}",
                 "--iters", str(stopped_at + 3)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(tmp_path / "snaps" / f"tiny_iter_{stopped_at + 3}.npz")


def test_cli_errors_are_one_message(tmp_path):
    path = _net(str(tmp_path))
    done = _cli(["run", path, "--resume", "missing.solverstate.npz"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "snapshot 'missing.solverstate.npz' does not exist" in done.stderr
    done = _cli(["run", path, "--train", "--infer"], tmp_path)
    assert done.returncode == 1 and "not both" in done.stderr


def test_snapshot_weights_load_for_inference(tmp_path):
    path = _net(str(tmp_path), "SGD(base_lr=0.05, momentum=0.9, max_iter=5)")
    _, result = _train(path, tmp_path)
    test_net = compile_net(path, "test")
    weights = load_weights(result.snapshot, test_net)
    executor = Executor(test_net, weights)
    test = np.load(tmp_path / "set2.npz")
    out = executor.forward({"data": test["data"][:20], "label": test["label"][:20]})
    assert 0.0 <= float(out["accuracy"]) <= 1.0


def test_a_half_written_solver_state_is_refused(tmp_path):
    """What a killed writer could leave, were writes not atomic: netc must not load it."""
    path = _net(str(tmp_path), "SGD(base_lr=0.01, momentum=0.9, max_iter=3)")
    _, result = _train(path, tmp_path)
    state = result.snapshot[:-4] + ".solverstate.npz"
    data = open(state, "rb").read()
    half = tmp_path / "half.solverstate.npz"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetcError, match="not a netc solver state"):
        Trainer(path, TrainOptions(resume=str(half)))
    # and the snapshot folder holds only finished files: no temp file is left behind
    assert all(not name.startswith(".netc-") for name in os.listdir(os.path.dirname(state)))
