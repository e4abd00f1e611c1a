"""The README's quick start: Caffe's LeNet recipe on Fashion-MNIST reaches 89 % top-1.
About two minutes of training: marked slow, run with `python3 -m pytest -m slow`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LENET = Path(__file__).resolve().parents[2] / "nets" / "lenet.net"
DATA = "/usr/share/datasets/fashion-mnist"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DATA) and not os.environ.get("NETC_DATA"),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_lenet_quick_start_reaches_89_percent(tmp_path):
    done = subprocess.run([sys.executable, "-m", "netc", "run", str(LENET), "--log", "run.jsonl"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    tests = [r for r in map(json.loads, (tmp_path / "run.jsonl").read_text().splitlines()) if "test" in r]
    assert tests[-1]["iter"] == 10000
    assert tests[-1]["test"]["accuracy"] >= 0.89
    assert (tmp_path / "snapshots" / "lenet_iter_10000.npz").is_file()
