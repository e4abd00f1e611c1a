"""`netc draw`: a checked net as a Graphviz graph.

Layers are nodes, labelled with their name, type, key parameters and output shape;
an edge runs from the layer that last wrote a blob to each layer that reads it, so an
in-place layer (ReLU!) sits in the chain rather than beside it. Module instances
(an inception block, an auxiliary classifier) are drawn as one box each, labelled
with what comes out of them, so GoogLeNet reads as its stem and nine inception boxes;
with expand, each module is a cluster showing its layers instead (nested modules
nest). The DOT text needs nothing; SVG and PNG are rendered by Graphviz's `dot`.
"""
from __future__ import annotations

import shutil
import subprocess

from netc.errors import NetcError
from netc.fileio import write_bytes_atomic, write_text_atomic
from netc.ir import Layer, Net
from netc.passes.prune import output_blobs

FORMATS = ("dot", "svg", "png")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "×".join(str(d) for d in shape) if shape else "scalar"


def _pair(values) -> str:
    h, w = values
    return f"{h}" if h == w else f"{h}×{w}"


def key_parameters(layer: Layer) -> str:
    """The parameters a reader looks for first, in a few characters."""
    p = layer.params
    if layer.type in ("Convolution", "Deconvolution"):
        text = f"{p['num_output']}, {_pair(p['kernel'])}"
        if p["stride_hw"] != (1, 1):
            text += f" /{_pair(p['stride_hw'])}"
        if p["pad_hw"] != (0, 0):
            text += f" pad {_pair(p['pad_hw'])}"
        if p["group"] != 1:
            text += f" group {p['group']}"
        return text
    if layer.type == "Pooling":
        if p["global_pooling"]:
            return f"{p['pool']} global"
        text = f"{p['pool']} {_pair(p['kernel'])} /{_pair(p['stride_hw'])}"
        return text + (f" pad {_pair(p['pad_hw'])}" if p["pad_hw"] != (0, 0) else "")
    if layer.type == "InnerProduct":
        return str(p["num_output"])
    if layer.type == "LRN":
        return f"{p['local_size']}, {p['norm_region']}"
    if layer.type == "Dropout":
        return f"{p['dropout_ratio']:g}"
    return ""


def _layer_label(net: Net, layer: Layer) -> str:
    head = layer.type if layer.name == layer.type else f"{layer.name}\n{layer.type}"
    params = key_parameters(layer)
    shapes = ", ".join(_shape(net.blob_shapes.get(t)) for t in layer.tops)
    return head + (f" {params}" if params else "") + (f"\n{shapes}" if shapes else "")


def to_dot(net: Net, expand: bool = False, rankdir: str = "TB") -> str:
    """The net as DOT text: one node per layer, or per top-level module instance
    unless `expand` (then modules are clusters)."""
    node_of = {}          # layer name → node id
    members: dict[str, list[Layer]] = {}    # top-level module → its layers (collapsed drawing)
    for layer in net.layers:
        if layer.module and not expand:
            node_of[layer.name] = "module:" + layer.module[0]
            members.setdefault(layer.module[0], []).append(layer)
        else:
            node_of[layer.name] = "layer:" + layer.name

    edges: dict[tuple[str, str], list[str]] = {}
    writer: dict[str, str] = {}          # blob → the node that wrote it last
    read_outside: set[str] = set()       # blobs a node other than their writer reads
    for layer in net.layers:
        here = node_of[layer.name]
        for blob in layer.bottoms:
            source = writer.get(blob)
            if source is not None and source != here:
                edges.setdefault((source, here), [])
                if blob not in edges[(source, here)]:
                    edges[(source, here)].append(blob)
                read_outside.add(blob)
        for blob in layer.tops:
            writer[blob] = here

    lines = [f"digraph {_quote(net.name or 'net')} {{",
             f"  rankdir={rankdir};",
             '  node [shape=box, style="rounded,filled", fillcolor="#f4f4f4", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#555555"];']
    if expand:
        _clusters(net, lines, node_of)
    else:
        for layer in net.layers:
            if not layer.module:
                lines.append(f"  {_quote(node_of[layer.name])} [label={_quote(_layer_label(net, layer))}];")
        net_outputs = set(output_blobs(net))
        for module, layers in members.items():
            # what comes out: blobs read outside the box, and the net's outputs made in it
            outputs = dict.fromkeys(t for l in layers for t in l.tops if t in read_outside or t in net_outputs)
            shapes = ", ".join(_shape(net.blob_shapes.get(t)) for t in outputs)
            label = f"{module}\n{len(layers)} layers" + (f"\n{shapes}" if shapes else "")
            lines.append(f'  {_quote("module:" + module)} [label={_quote(label)}, fillcolor="#dde8f6"];')
    for (source, target), blobs in edges.items():
        shapes = ", ".join(_shape(net.blob_shapes.get(b)) for b in blobs)
        lines.append(f"  {_quote(source)} -> {_quote(target)} [label={_quote(shapes)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _clusters(net: Net, lines: list[str], node_of: dict) -> None:
    """Layers inside nested `subgraph cluster_…` blocks, one per module instance path."""
    open_path: tuple[str, ...] = ()
    for layer in net.layers:
        path = layer.module
        common = 0
        while common < min(len(open_path), len(path)) and open_path[common] == path[common]:
            common += 1
        for depth in range(len(open_path), common, -1):
            lines.append("  " * depth + "}")
        for depth in range(common, len(path)):
            name = "/".join(path[:depth + 1])
            lines.append("  " * (depth + 1) + f"subgraph {_quote('cluster_' + name)} {{")
            lines.append("  " * (depth + 2) + f'label={_quote(path[depth])}; style="rounded"; color="#7a9cc6";')
        open_path = path
        indent = "  " * (len(path) + 1)
        lines.append(f"{indent}{_quote(node_of[layer.name])} [label={_quote(_layer_label(net, layer))}];")
    for depth in range(len(open_path), 0, -1):
        lines.append("  " * depth + "}")


def write(net: Net, path: str, expand: bool = False, rankdir: str = "TB") -> None:
    """Write the drawing to `path`: .dot as text, .svg or .png through Graphviz's dot."""
    fmt = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if fmt not in FORMATS:
        raise NetcError(f"cannot tell the drawing's format from '{path}'",
                        hint="name the output .dot, .svg or .png")
    text = to_dot(net, expand, rankdir)
    if fmt == "dot":
        write_text_atomic(path, text, "drawing")
        return
    dot = shutil.which("dot")
    if dot is None:
        raise NetcError(f"drawing {path} needs Graphviz's 'dot', which is not installed",
                        hint="install Graphviz (apt-get install graphviz, brew install graphviz), "
                             "or write a .dot file")
    done = subprocess.run([dot, f"-T{fmt}"], input=text.encode(), capture_output=True)
    if done.returncode != 0:
        raise NetcError(f"Graphviz's dot failed to draw {path}: {done.stderr.decode(errors='replace').strip()}")
    write_bytes_atomic(path, done.stdout, "drawing")
