"""Warnings: what is legal but almost always a mistake. Located like errors; exit status stays 0."""
from __future__ import annotations

from dataclasses import replace

from netc.errors import Diagnostic, warning
from netc.ir import Net
from netc.layers import REGISTRY

_METRICS = ("Accuracy", "Softmax", "Silence")


def lint(net: Net) -> Net:
    found: list[Diagnostic] = []
    found += _unused_outputs(net)
    found += _in_place_on_shared_blob(net)
    found += _default_weight_filler(net)
    found += _ceil_rounding(net)
    return replace(net, warnings=net.warnings + tuple(found))


def _unused_outputs(net: Net) -> list[Diagnostic]:
    """A layer output that no later layer reads and that is not a loss or a metric."""
    read = {b for layer in net.layers for b in layer.bottoms}
    has_loss = any(REGISTRY[l.type].is_loss for l in net.layers)
    last = next((l for l in reversed(net.layers) if l.tops), None)   # Silence has no output
    out = []
    for layer in net.layers:
        spec = REGISTRY[layer.type]
        if spec.is_loss or layer.type in _METRICS or not layer.bottoms:
            continue
        unused = [t for t in layer.tops if t not in read]
        # without a loss, the net's last layer is its output (a deploy net)
        if unused and (has_loss or layer is not last) and layer.tops[0] in unused:
            what = "reaches no loss" if has_loss else "is not the net's output"
            out.append(warning(f"the output of layer '{layer.name}' is never used: it {what}", layer.span,
                               "remove the layer, or read its output in a later layer"))
    return out


def _in_place_on_shared_blob(net: Net) -> list[Diagnostic]:
    """An in-place layer changes a blob that a sibling branch has already read as it was."""
    out = []
    for i, layer in enumerate(net.layers):
        if not layer.in_place:
            continue
        blob = layer.bottoms[0]
        read_before = any(blob in l.bottoms and not l.in_place for l in net.layers[:i])
        reader_after = next((l for l in net.layers[i + 1:] if blob in l.bottoms), None)
        if read_before and reader_after is not None:
            out.append(warning(
                f"'{layer.name}' changes '{blob}' in place, but another branch already read '{blob}' and "
                f"'{reader_after.name}' will read the changed values", layer.span,
                "give the layer its own output (drop '!'), so every branch sees the same input"))
    return out


def _default_weight_filler(net: Net) -> list[Diagnostic]:
    """A trainable layer whose weights would start at Caffe's default constant 0."""
    if not any(REGISTRY[l.type].is_loss for l in net.layers):
        return []   # a deploy net's weights come from a file
    out = []
    for layer in net.layers:
        # Scale declares its weights as `filler` (weight_filler is an alias): look up the real name
        param = REGISTRY[layer.type].param("weight_filler")
        if param is None or param.name in layer.param_spans:
            continue
        filler = layer.params[param.name]
        if filler.type == "constant" and filler.value == 0:
            if layer.param_specs and all(s.lr_mult == 0 for s in layer.param_specs):
                continue
            out.append(warning(f"the weights of '{layer.name}' start at 0 (Caffe's default filler), "
                               "so its units all learn the same thing", layer.span,
                               "give a filler, e.g. weight=xavier or weight=gaussian(std=0.01)"))
    return out


def _ceil_rounding(net: Net) -> list[Diagnostic]:
    """Caffe pools with ceil rounding; a model carried from Caffe to a floor-rounding framework changes shape."""
    if net.origin != "prototxt":
        return []
    out = []
    for layer in net.layers:
        if layer.type != "Pooling" or layer.params["round_mode"] != "CEIL":
            continue
        bottom = net.blob_shapes[layer.bottoms[0]]
        if REGISTRY["Pooling"].rounding_matters(dict(layer.params), bottom):
            top = net.blob_shapes[layer.tops[0]]
            out.append(warning(
                f"'{layer.name}' relies on Caffe's ceil rounding: its output {list(top[2:])} would be smaller "
                "with floor rounding (PyTorch, TensorFlow)", layer.span,
                "keep this in mind when porting the model; netc follows Caffe"))
    return out
