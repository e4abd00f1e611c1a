"""`netc check --summary`: its totals and top-5 lists, checked against numbers worked
out here from `netc check --json` (not from netc.report)."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NETS = ["nets/lenet.net", "nets/googlenet.net", "nets/alexnet.net"]


def netc(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "netc", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def summary_and_json(path):
    text = netc("check", path, "--summary")
    assert text.returncode == 0, text.stderr
    data = netc("check", path, "--json")
    assert data.returncode == 0, data.stderr
    return text.stdout, json.loads(data.stdout)


def exact(text, label):
    """The exact count on the line starting with `label`: the first number with thousands
    separators (parameters lead with it; MACs and bytes give it in parentheses)."""
    line = next(l for l in text.splitlines() if l.startswith(label))
    return int(re.search(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)(?![\d.kMG])", line[len(label):]).group(1)
               .replace(",", ""))


def section(text, title):
    """The (name, share %) rows under a 'largest by ...' heading."""
    lines = text.splitlines()
    start = lines.index(f"largest by {title}:")
    rows = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        fields = line.split()
        rows.append((fields[0], float(fields[-1].rstrip("%"))))
    return rows


def count(shape):
    return math.prod(shape)


def expected(data):
    """Per layer (params, MACs, bytes of the blobs it creates), in net order."""
    out = []
    for layer in data["layers"]:
        created = [t for t in layer["tops"] if t not in layer["bottoms"]]
        out.append((layer["name"], layer["params"], layer["macs"],
                    sum(count(data["blobs"][t]) * 4 for t in created)))
    return out


def top5(rows, column):
    ranked = sorted((r for r in rows if r[column] > 0), key=lambda r: -r[column])   # stable: ties in net order
    return ranked[:5]


@pytest.mark.parametrize("path", NETS)
def test_totals_equal_the_json_numbers(path):
    text, data = summary_and_json(path)
    assert exact(text, "parameters:") == data["total_params"]
    assert exact(text, "MACs:") == data["total_macs"] == sum(l["macs"] for l in data["layers"])
    # activation memory: every blob once, float32
    assert exact(text, "activations:") == sum(count(s) * 4 for s in data["blobs"].values())
    assert f"{data['net']} ({data['phase']})" in text.splitlines()[0]


@pytest.mark.parametrize("path", NETS)
def test_top_layers_in_order_with_their_shares(path):
    text, data = summary_and_json(path)
    rows = expected(data)
    totals = {1: data["total_params"], 2: data["total_macs"], 3: sum(r[3] for r in rows)}
    for title, column in (("parameters", 1), ("MACs", 2), ("output memory", 3)):
        got = section(text, title)
        want = top5(rows, column)
        assert [name for name, _ in got] == [r[0] for r in want], title
        for (_, share), r in zip(got, want):
            assert share == pytest.approx(100 * r[column] / totals[column], abs=0.051)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


def test_lenet_numbers():
    text, _ = summary_and_json("nets/lenet.net")
    assert section(text, "parameters")[0] == ("ip1", 92.9)     # 400,500 of 431,080
    assert [n for n, _ in section(text, "MACs")] == ["conv2", "ip1", "conv1", "ip2"]
    assert re.search(r"inputs: +data \[\d+,1,28,28\]", text)


def test_googlenet_fits_one_screen():
    text, _ = summary_and_json("nets/googlenet.net")
    assert len(text.splitlines()) <= 30
    assert max(len(l) for l in text.splitlines()) <= 100


def test_summary_and_json_together_is_an_error():
    res = netc("check", "nets/lenet.net", "--summary", "--json")
    assert res.returncode == 1
    assert "--json and --summary" in res.stderr and "Traceback" not in res.stderr
