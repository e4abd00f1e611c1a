"""`netc plot`: training curves from a JSON-lines log."""
import builtins
import json
import os
import subprocess
import sys

import pytest

from netc.errors import NetcError
from netc.viz import curves


def netc(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "netc", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def write_log(path, extra_lines=()):
    lines = []
    for it in range(0, 1001, 50):
        lines.append(json.dumps({"iter": it, "loss": 2.3 / (1 + it / 20), "lr": 0.01, "seconds": it / 10}))
        if it % 250 == 0:
            lines.append(json.dumps({"iter": it, "test": {"accuracy": it / 1100, "accuracy_top5": it / 1050,
                                                          "loss": 2.0 / (1 + it / 30)}}))
    path.write_text("\n".join(list(lines) + list(extra_lines)) + "\n")
    return path


def test_read_log_sorts_records_into_curves(tmp_path):
    read = curves.read_log(str(write_log(tmp_path / "run.jsonl")))
    assert read.train_iters == list(range(0, 1001, 50))
    assert read.train_loss[0] == pytest.approx(2.3)
    assert set(read.test) == {"accuracy", "accuracy_top5", "loss"}
    assert read.test["accuracy_top5"][0] == [0, 250, 500, 750, 1000]


def test_loss_axis_is_logarithmic_only_over_a_factor_of_ten():
    assert curves._log_scale([2.3, 0.1])
    assert not curves._log_scale([2.3, 0.5])
    assert not curves._log_scale([1.0, 0.0, 20.0])      # zero has no logarithm


@pytest.mark.parametrize("size", ["640x480", "1000x700"])
def test_png_has_the_requested_size(tmp_path, size):
    pytest.importorskip("matplotlib")
    from PIL import Image
    log = write_log(tmp_path / "run.jsonl")
    out = tmp_path / "curves.png"
    res = netc("plot", log, "-o", out, "--size", size)
    assert res.returncode == 0, res.stderr
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == tuple(int(d) for d in size.split("x"))
    assert "21 training and 5 test points" in res.stderr


@pytest.mark.parametrize("bad_line, message", [
    ('{"iter": 1050, "loss": 0.1', "not JSON"),
    ("", "empty line"),
    ('{"loss": 0.1}', 'integer "iter"'),
    ('[1, 2]', "JSON object"),
    ('{"iter": 1050, "test": {"accuracy": "high"}}', '"test" is not an object of numbers'),
])
def test_a_bad_line_is_an_error_at_its_line(tmp_path, bad_line, message):
    log = write_log(tmp_path / "run.jsonl", [bad_line, json.dumps({"iter": 1100, "loss": 0.1})])
    n_good = len(log.read_text().splitlines()) - 2
    res = netc("plot", log, "-o", tmp_path / "curves.png")
    assert res.returncode == 1
    assert f"{log}:{n_good + 1}:1: error:" in res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "curves.png").exists()


def test_missing_and_empty_logs(tmp_path):
    res = netc("plot", tmp_path / "none.jsonl", "-o", tmp_path / "c.png")
    assert res.returncode == 1 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(NetcError, match="holds no records"):
        curves.read_log(str(tmp_path / "empty.jsonl"))


def test_bad_output_name_and_size(tmp_path):
    log = write_log(tmp_path / "run.jsonl")
    res = netc("plot", log, "-o", tmp_path / "c.gif")
    assert res.returncode == 1 and "plots are written as" in res.stderr
    res = netc("plot", log, "-o", tmp_path / "c.png", "--size", "big")
    assert res.returncode == 1 and "WIDTHxHEIGHT" in res.stderr


def test_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    log = write_log(tmp_path / "run.jsonl")
    with pytest.raises(NetcError) as err:
        curves.plot_log(str(log), str(tmp_path / "c.png"))
    assert err.value.message == "netc plot needs matplotlib"
    assert err.value.hint == "pip install 'netc[plot]'"
    assert not (tmp_path / "c.png").exists()
