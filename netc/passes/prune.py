"""Keep only what can run on the blobs given: inference on a train/test net.

A train_val net's loss and accuracy layers read `label`; asked for predictions
with only `data`, they are dropped, and so are data sources nobody feeds.
"""
from __future__ import annotations

from dataclasses import replace

from netc.ir import Net, frozen


def prune_to_available(net: Net, given: set[str]) -> Net:
    """Drop source layers whose tops are not given, then every layer that reads a
    blob no remaining layer produces. Shapes and infos of what remains are kept."""
    available: set[str] = set()
    kept = []
    for layer in net.layers:
        if not layer.bottoms and layer.type != "DummyData":
            if not any(t in given for t in layer.tops):
                continue
            # a source fed in part (data without label) keeps the tops that are fed
            layer = replace(layer, tops=tuple(t for t in layer.tops if t in given))
        elif not all(b in available for b in layer.bottoms):
            continue
        kept.append(layer)
        available.update(layer.tops)
    return _keep(net, kept)


def _keep(net: Net, kept: list) -> Net:
    """The net of just these layers, with the shapes and infos that remain."""
    names = {l.name for l in kept}
    produced = {t for l in kept for t in l.tops}
    return replace(net, layers=tuple(kept),
                   blob_shapes=frozen({b: s for b, s in net.blob_shapes.items() if b in produced}),
                   layer_info=frozen({n: i for n, i in net.layer_info.items() if n in names}))


def output_blobs(net: Net) -> list[str]:
    """The net's outputs: blobs whose final value no later layer reads."""
    out = []
    for i, layer in enumerate(net.layers):
        for top in layer.tops:
            later = net.layers[i + 1:]
            if not any(top in l.bottoms or top in l.tops for l in later) and top not in out:
                out.append(top)
    return out


def prune_to_outputs(net: Net, wanted: list[str]) -> Net:
    """Keep only the layers the wanted blobs depend on (GoogLeNet's auxiliary heads
    are not computed when only its main classifier is asked for). An in-place layer
    keeps its input's name, so every earlier writer of a needed name is kept too."""
    needed = set(wanted)
    kept = []
    for layer in reversed(net.layers):
        if any(top in needed for top in layer.tops):
            kept.append(layer)
            needed.update(layer.bottoms)
    kept.reverse()
    return _keep(net, kept)
