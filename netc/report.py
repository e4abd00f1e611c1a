"""What `netc check` shows: the per-layer table and the JSON contract."""
from __future__ import annotations

from netc.ir import Net

BYTES_PER_VALUE = 4   # float32


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def activation_bytes(net: Net, layer) -> int:
    """Bytes of the blobs a layer creates; an in-place top adds nothing."""
    info = net.layer_info[layer.name]
    return sum(_count(s) * BYTES_PER_VALUE for top, s in zip(layer.tops, info.top_shapes)
               if top not in layer.bottoms)


def to_json(net: Net) -> dict:
    """The `netc check --json` contract (see the README)."""
    layers = []
    for layer in net.layers:
        info = net.layer_info[layer.name]
        layers.append({"name": layer.name, "type": layer.type, "bottoms": list(layer.bottoms),
                       "tops": list(layer.tops), "params": info.num_params, "macs": info.macs})
    return {
        "net": net.name,
        "phase": net.phase,
        "inputs": {name: list(shape) for name, shape in net.inputs.items()},
        "blobs": {name: list(shape) for name, shape in net.blob_shapes.items()},
        "layers": layers,
        "total_params": total_params(net),
        "total_macs": sum(l["macs"] for l in layers),
    }


def total_params(net: Net) -> int:
    """Learnable values, counting a parameter shared by name once."""
    seen: set[str] = set()
    total = 0
    for layer in net.layers:
        info = net.layer_info[layer.name]
        for i, shape in enumerate(info.param_shapes):
            name = layer.param_specs[i].name if i < len(layer.param_specs) else None
            if name is not None:
                if name in seen:
                    continue
                seen.add(name)
            total += _count(shape)
    return total


def _human(n: int, unit: str = "") -> str:
    for div, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n}{unit}"


def _human_bytes(n: int) -> str:
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {suffix}"
    return f"{n} B"


def _shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]" if shape else "[] (scalar)"


def table(net: Net) -> str:
    """A readable table: layer, type, output shape(s), parameters, MACs, activation bytes,
    grouped under their module instance where modules were used."""
    head = ("layer", "type", "output", "params", "MACs", "activations")
    rows: list[tuple[str, ...] | str] = []
    current_module: tuple[str, ...] = ()
    for layer in net.layers:
        if layer.module != current_module:
            current_module = layer.module
            if current_module:
                rows.append("/".join(current_module))
        info = net.layer_info[layer.name]
        name = layer.name
        if layer.module:
            name = "  " + name[len("/".join(layer.module)) + 1:]
        outputs = " ".join(_shape(s) for s in info.top_shapes) or "-"
        if layer.in_place:
            outputs += " (in place)"
        rows.append((name, layer.type, outputs, f"{info.num_params:,}" if info.num_params else "-",
                     _human(info.macs) if info.macs else "-",
                     _human_bytes(activation_bytes(net, layer)) if activation_bytes(net, layer) else "-"))
    widths = [max(len(head[i]), *(len(r[i]) for r in rows if isinstance(r, tuple))) for i in range(len(head))]
    lines = []
    fmt = lambda r: "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines.append(fmt(head).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(f"[{r}]" if isinstance(r, str) else fmt(r).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    params = total_params(net)
    macs = sum(i.macs for i in net.layer_info.values())
    acts = sum(activation_bytes(net, l) for l in net.layers)
    lines.append(f"{net.name} ({net.phase}): {len(net.layers)} layers, {params:,} parameters "
                 f"({_human_bytes(params * BYTES_PER_VALUE)}), {_human(macs)} MACs, "
                 f"{_human_bytes(acts)} of activations")
    return "\n".join(lines)
