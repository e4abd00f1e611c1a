"""`netc draw`: the DOT output read back and checked against the nets' structure
(nodes, edges, clusters), the command's formats and errors, and Graphviz rendering
where `dot` is installed."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netc import draw
from netc.compile import compile_net

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO.parent / "shared" / "caffe_models"



def netc(*args, path=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "netc", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


NODE = re.compile(r'^\s*"([^"]+)" \[label="((?:[^"\\]|\\.)*)"')
EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)"')
CLUSTER = re.compile(r'^\s*subgraph "cluster_([^"]+)" \{')


def parse(text):
    """(nodes {id: label}, edges [(a, b)], clusters [name], the node ids inside each cluster)."""
    nodes, edges, clusters, inside, stack = {}, [], [], {}, []
    for line in text.splitlines():
        if m := CLUSTER.match(line):
            clusters.append(m.group(1))
            stack.append(m.group(1))
            inside[m.group(1)] = []
        elif m := EDGE.match(line):
            edges.append((m.group(1), m.group(2)))
        elif m := NODE.match(line):
            nodes[m.group(1)] = m.group(2)
            for name in stack:
                inside[name].append(m.group(1))
        elif line.strip() == "}" and stack:
            stack.pop()
    assert not stack
    return nodes, edges, clusters, inside


def test_lenet_is_a_chain_with_the_label_feeding_the_loss():
    nodes, edges, clusters, _ = parse(draw.to_dot(compile_net(str(REPO / "nets" / "lenet.net"), "train")))
    assert set(nodes) == {f"layer:{n}" for n in ("mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1",
                                                 "ip2", "loss")}
    chain = ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]
    want = {(f"layer:{a}", f"layer:{b}") for a, b in zip(chain, chain[1:])} | {("layer:mnist", "layer:loss")}
    assert set(edges) == want and len(edges) == len(want)
    assert clusters == []
    assert "Convolution 20, 5" in nodes["layer:conv1"] and "64×20×24×24" in nodes["layer:conv1"]
    assert "Pooling MAX 2 /2" in nodes["layer:pool2"]


def test_in_place_layers_sit_in_the_chain():
    # relu1 reads and writes ip1's blob: ip2 must hang off relu1, not off ip1
    _, edges, _, _ = parse(draw.to_dot(compile_net(str(REPO / "nets" / "lenet.net"), "train")))
    assert ("layer:relu1", "layer:ip2") in edges and ("layer:ip1", "layer:ip2") not in edges


@pytest.fixture(scope="module")
def googlenet():
    return compile_net(str(REPO / "nets" / "googlenet.net"), "test")


def test_googlenet_collapsed_reads_as_stem_plus_module_boxes(googlenet):
    nodes, edges, clusters, _ = parse(draw.to_dot(googlenet))
    modules = sorted({layer.module[0] for layer in googlenet.layers if layer.module})
    inceptions = [m for m in modules if m.startswith("inception_")]
    assert len(inceptions) == 9
    stem = [layer.name for layer in googlenet.layers if not layer.module]
    assert set(nodes) == {f"layer:{n}" for n in stem} | {f"module:{m}" for m in modules}
    assert clusters == []
    # every inception box is fed by one node and feeds the next stage: a chain of boxes
    for name in inceptions:
        assert sum(1 for a, b in edges if b == f"module:{name}") == 1
    assert ("module:inception_3a", "module:inception_3b") in edges
    assert "28×28" in nodes["module:inception_3b"].split("\\n")[-1]
    # no edge inside a box, no self-loop
    assert all(a != b for a, b in edges)


def test_googlenet_expanded_has_one_cluster_per_module_holding_its_layers(googlenet):
    nodes, edges, clusters, inside = parse(draw.to_dot(googlenet, expand=True))
    assert len(nodes) == len(googlenet.layers)
    modules = {layer.module[0] for layer in googlenet.layers if layer.module}
    assert sorted(clusters) == sorted(modules)
    for name in clusters:
        want = {f"layer:{l.name}" for l in googlenet.layers if l.module[:1] == (name,)}
        assert set(inside[name]) == want
    # every layer that reads a blob has an edge from the blob's last writer
    writer, want_edges = {}, set()
    for layer in googlenet.layers:
        for b in layer.bottoms:
            if b in writer and writer[b] != layer.name:
                want_edges.add((f"layer:{writer[b]}", f"layer:{layer.name}"))
        for t in layer.tops:
            writer[t] = layer.name
    assert set(edges) == want_edges


def test_command_writes_dot_and_refuses_unknown_formats(tmp_path):
    out = tmp_path / "lenet.dot"
    done = netc("draw", REPO / "nets" / "lenet.net", "-o", out, "--rankdir", "LR")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.startswith('digraph "LeNet"') and "rankdir=LR;" in text
    done = netc("draw", REPO / "nets" / "lenet.net", "-o", tmp_path / "lenet.jpg")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "name the output .dot, .svg or .png" in done.stderr
    assert not (tmp_path / "lenet.jpg").exists()


def test_svg_without_graphviz_is_a_clear_error(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = netc("draw", REPO / "nets" / "lenet.net", "-o", tmp_path / "lenet.svg", path=str(empty))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Graphviz" in done.stderr and "apt-get install graphviz" in done.stderr
    assert not (tmp_path / "lenet.svg").exists()


def test_an_unwritable_output_is_a_clear_error(tmp_path):
    done = netc("draw", REPO / "nets" / "lenet.net", "-o", tmp_path / "missing" / "lenet.dot")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot write drawing" in done.stderr and "folder exists" in done.stderr


@pytest.mark.skipif(not MODELS.is_dir(), reason="shared/caffe_models missing")
def test_a_caffe_prototxt_draws_too(tmp_path):
    out = tmp_path / "googlenet.dot"
    done = netc("draw", MODELS / "models" / "bvlc_googlenet" / "deploy.prototxt", "-o", out)
    assert done.returncode == 0, done.stderr
    nodes, edges, _, _ = parse(out.read_text())
    assert len(nodes) > 100 and len(edges) >= len(nodes) - 1


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("fmt,magic", [("svg", b"<svg"), ("png", b"\x89PNG")])
def test_graphviz_renders(tmp_path, fmt, magic):
    out = tmp_path / f"googlenet.{fmt}"
    assert netc("draw", REPO / "nets" / "googlenet.net", "-o", out).returncode == 0
    assert magic in out.read_bytes()[:1000]   # graphviz writes a comment header before <svg
