"""Caffe prototxt → .net text (the `netc import` command).

Both phases of the prototxt go into one .net file: a layer that Caffe keeps in
one phase only gets `@train` or `@test`. Every layer keeps its prototxt name as
its label and every blob its prototxt name, so `netc check` on the result shows
the same layers, blobs, shapes, parameter counts and MACs in each phase.

Only parameters that differ from the registry's defaults (which are Caffe's)
are written. A layer's input blobs are written unless the layer reads the blob
the previous statement produced in every phase it belongs to; its outputs are
written unless they are the ones the language would give it (`!` for in place).
A solver prototxt beside the net that names this file becomes a `solver` line.

The text is returned, never written here: the CLI writes it atomically.
"""
from __future__ import annotations

import json
import os
import re
import struct
from typing import Any

from netc.caffe.load import load_prototxt
from netc.caffe.prototxt import (check_layer_type, param_specs, layer_in_phase, legacy_inputs,
                                 net_from_prototxt, read_layer_params, solver_from_prototxt)
from netc.errors import NetcError
from netc.lang.parser import is_plain_name
from netc.lang.values import CONSTANTS
from netc.passes.expand import MODULE_INPUT
from netc.ir import Filler, ParamSpec, SolverSpec
from netc.layers import REGISTRY, LayerType
from netc.layers.base import Param
from netc.train.solver_config import LR_POLICY_FIELDS, SOLVER_FIELDS, solver_field

__all__ = ["prototxt_to_net_text", "find_solver_for"]

PHASES = ("train", "test")
# Positional parameters written without `name=` (the design's `Convolution(96, ...)`, `Pooling(AVE, ...)`).
_WRITE_POSITIONAL = ("num_output", "pool", "operation")
# ints parameters whose one-value form equals the default `()`: Caffe's pad 0, stride 1, dilation 1.
_NEUTRAL = {"pad": 0, "stride": 1, "dilation": 1}
_LINE_WIDTH = 100


# ---------------------------------------------------------------------------
# Values as .net text
# ---------------------------------------------------------------------------

def _bare(text: str) -> bool:
    """Whether text may be written unquoted: the grammar's rule, and not a name the
    evaluator (`true`, `false`) or module expansion (`in`) gives a meaning of its own."""
    return is_plain_name(text) and text not in CONSTANTS and text != MODULE_INPUT


def _name(text: str, avoid: tuple[str, ...] = ()) -> str:
    """A NAME when the text is one (and means nothing else there), else a quoted string."""
    if _bare(text) and text.upper() not in avoid:
        return text
    return _string(text)


def _string(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False)
    if "\\" in quoted:       # the parser decodes escapes as unicode_escape: keep it to ASCII then
        quoted = json.dumps(text, ensure_ascii=True)
    return quoted


def _float(value: float) -> str:
    """The shortest text for a number: Caffe's floats are float32, so `0.01`, not 0.009999999776."""
    value = float(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    try:
        single = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        single = None
    if single == value:
        for digits in range(1, 10):
            text = f"{value:.{digits}g}"
            if struct.unpack("f", struct.pack("f", float(text)))[0] == value:
                return text
    return repr(value)


def _number(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _float(value)


def _list(items) -> str:
    return "[" + ", ".join(_number(v) for v in items) + "]"


_FILLER_DEFAULTS = Filler()


def _filler(f: Filler) -> str:
    fields = []
    for key in ("value", "min", "max", "mean", "std", "sparse"):
        value = getattr(f, key)
        if value != getattr(_FILLER_DEFAULTS, key):
            fields.append(f"{key}={_number(value)}")
    if f.variance_norm != _FILLER_DEFAULTS.variance_norm:
        fields.append(f"variance_norm={f.variance_norm}")
    return f"{f.type}({', '.join(fields)})" if fields else f.type


def _value(p: Param, value) -> str:
    kind = p.kind
    if kind == "bool":
        return "true" if value else "false"
    if kind == "int":
        return str(value)
    if kind == "float":
        return _float(value)
    if kind == "enum":
        return value
    if kind == "str":
        return _string(value)
    if kind in ("ints", "floats"):
        return _number(value[0]) if len(value) == 1 else _list(value)
    if kind == "shape":
        return _list(value)
    if kind == "shapes":
        return _list(value[0]) if len(value) == 1 else "[" + ", ".join(_list(s) for s in value) + "]"
    if kind == "filler":
        return _filler(value)
    raise TypeError(f"no .net form for kind {kind}")  # pragma: no cover


def _differs(p: Param, value) -> bool:
    if value == p.default:
        return False
    if p.kind == "ints" and p.name in _NEUTRAL and p.default == () and value \
            and all(v == _NEUTRAL[p.name] for v in value):
        return False
    return True


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------

def _common(specs: tuple[ParamSpec, ...], loss_weight: tuple[float, ...], where) -> list[str]:
    """lr_mult / decay_mult / share / loss_weight, as far as they say anything."""
    out = []
    if specs and any(s != ParamSpec() for s in specs):
        def column(values):
            return _number(values[0]) if len(values) == 1 else _list(values)
        lrs = [s.lr_mult for s in specs]
        decays = [s.decay_mult for s in specs]
        names = [s.name for s in specs]
        # always write lr_mult, so the number of ParamSpecs stays the prototxt's
        out.append(f"lr_mult={column(lrs)}")
        if any(d != 1.0 for d in decays):
            out.append(f"decay_mult={column(decays)}")
        if any(names):
            given = [n for n in names if n]
            if names[:len(given)] != given:     # share=[...] names the first blobs, in order
                raise NetcError("a layer shares a later parameter blob by name but not an earlier one; "
                                "the .net language cannot say that", where,
                                "name the param blocks from the first one on")
            out.append("share=[" + ", ".join(_name(n) for n in given) + "]")
    if loss_weight:
        out.append("loss_weight=" + (_number(loss_weight[0]) if len(loss_weight) == 1 else _list(loss_weight)))
    return out


def _statement(label: str, type_name: str, args: list[str], bang: bool, tops: list[str] | None,
               phases: list[str]) -> str:
    text = f"{label}: {type_name}"
    if args:
        text += "(" + ", ".join(args) + ")"
    if bang:
        text += "!"
    if tops:
        text += " -> " + ", ".join(tops)
    if len(phases) == 1:
        text += f" @{phases[0]}"
    return text


class _Scope:
    """How names are written: at the top level as they are; inside a module body relative to the
    instance (`inception_3a/1x1` is `1x1`), its input as `in`, and some values as module parameters."""

    def __init__(self, prefix: str = "", source: str | None = None, inner: frozenset = frozenset(),
                 subst: dict | None = None):
        self.prefix, self.source, self.inner, self.subst = prefix, source, inner, subst or {}

    def blob(self, blob: str, avoid=()) -> str:
        if self.prefix:
            if blob == self.source:
                return "in"
            if blob in self.inner:
                return _name(blob[len(self.prefix):], avoid)
        return _name(blob, avoid)

    def label(self, name: str) -> str:
        return _name(name[len(self.prefix):] if self.prefix else name)


def _layer_parts(src, index: int, spec: LayerType):
    """(name, given params that differ from the defaults, bottoms, tops) of one prototxt layer."""
    lp = src.net.layer[index]
    name = lp.name or f"{lp.type.lower()}_{index + 1}"
    given, _ = read_layer_params(src, index, spec, lp.type)
    emitted = {p.name: given[p.name] for p in spec.params if p.name in given and _differs(p, given[p.name])}
    tops = list(lp.top)
    if not tops and spec.is_loss:
        tops = [name]
    return name, emitted, list(lp.bottom), tops


def _layer_text(src, index: int, spec: LayerType, phases: list[str], current: dict[str, str | None],
                scope: _Scope | None = None, emitted: dict | None = None) -> str:
    scope = scope or _Scope()
    lp = src.net.layer[index]
    name, own, bottoms, tops = _layer_parts(src, index, spec)
    emitted = own if emitted is None else emitted

    first_positional = spec.param(spec.positional[0]) if spec.positional else None
    avoid = first_positional.choices if first_positional is not None and first_positional.kind == "enum" else ()
    implicit = (len(bottoms) == 1 and spec.min_bottoms >= 1
                and all(current[ph] == bottoms[0] for ph in phases))
    args = [] if implicit else [scope.blob(b, avoid) for b in bottoms]

    keywords = []
    for p in spec.params:
        if p.name not in emitted:
            continue
        text = scope.subst.get((name, p.name)) or _value(p, emitted[p.name])
        if p.name in _WRITE_POSITIONAL and p.name == spec.positional[0] and not keywords:
            args.append(text)
        else:
            keywords.append(f"{p.name}={text}")
    args += keywords
    args += _common(param_specs(lp), tuple(float(w) for w in lp.loss_weight), src.layer_spans[index])

    bang = len(tops) == 1 and bool(bottoms) and tops[0] == bottoms[0]
    explicit_tops = None if bang or tuple(tops) == spec.default_tops(name) else \
        [scope.label(t) if t.startswith(scope.prefix) else _name(t) for t in tops]
    for ph in phases:
        if tops:
            current[ph] = tops[0]
    return _statement(scope.label(name), lp.type, args, bang, explicit_tops, phases)


# ---------------------------------------------------------------------------
# Modules: runs of layers named `block/...` that repeat with other numbers
# ---------------------------------------------------------------------------

class _Group:
    def __init__(self, prefix: str, indices: list[int], source: str, output: str, inner: frozenset):
        self.prefix, self.indices, self.source, self.output, self.inner = prefix, indices, source, output, inner
        self.signature: tuple = ()
        self.values: dict[tuple[str, str], tuple[Param, Any]] = {}
        self.specs: dict[str, LayerType] = {}


def _find_groups(src, specs: dict[int, LayerType], taken_names: set[str]) -> list[_Group]:
    """Maximal runs of consecutive layers in both phases whose names and tops all start with `P/`,
    reading exactly one blob from outside the run."""
    layers = src.net.layer
    groups, i = [], 0
    while i < len(layers):
        name = layers[i].name
        head = name.split("/")[0] if "/" in name else None
        j = i
        while head and j < len(layers) and layers[j].name.startswith(head + "/") and j in specs:
            j += 1
        if head and j - i >= 2:
            group = _make_group(src, head, list(range(i, j)), taken_names)
            if group is not None:
                groups.append(group)
                i = j
                continue
        i += 1
    return groups


def _make_group(src, head: str, indices: list[int], taken_names: set[str]) -> _Group | None:
    prefix = head + "/"
    if not _bare(head) or head in taken_names:
        return None
    produced: set[str] = set()
    outside: list[str] = []
    for i in indices:
        lp = src.net.layer[i]
        if lp.include or lp.exclude:
            return None
        for b in lp.bottom:
            if b not in produced and b not in outside:
                outside.append(b)
        for t in lp.top:
            if t not in lp.bottom and not t.startswith(prefix):
                return None
            if t in lp.bottom and t not in produced:
                return None            # writing the module's input in place
            produced.add(t)
    last = src.net.layer[indices[-1]]
    if len(outside) != 1 or not last.top or last.top[0] in last.bottom:
        return None
    return _Group(prefix, indices, outside[0], last.top[0], frozenset(produced))


def _signature(src, group: _Group, specs: dict[int, LayerType]) -> None:
    parts = []
    for i in group.indices:
        lp = src.net.layer[i]
        spec = specs[i]
        name, emitted, bottoms, tops = _layer_parts(src, i, spec)
        rel = name[len(group.prefix):]
        scope = _Scope(group.prefix, group.source, group.inner)
        # the parameters written are not part of the signature: a value left at its default in one
        # block and set in another becomes a module parameter
        parts.append((rel, lp.type, tuple(scope.blob(b) for b in bottoms), tuple(scope.blob(t) for t in tops),
                      tuple(_common(param_specs(lp), tuple(lp.loss_weight), None))))
        group.specs[rel] = spec
        for key, value in emitted.items():
            group.values[(rel, key)] = (spec.param(key), value)
    group.signature = tuple(parts)


def _module_name(prefixes: list[str], taken: set[str]) -> str:
    base = os.path.commonprefix(prefixes).rstrip("_0123456789") or "block"
    if not _bare(base):
        base = "block"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}{n}"
    return name


def _param_name(rel: str, key: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", rel)
    base = f"n_{stem}" if key == "num_output" else f"{stem}_{key}"
    if not re.match(r"[A-Za-z_]", base):
        base = "p_" + base
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def _plan_modules(src, specs: dict[int, LayerType], taken: set[str]):
    """The modules worth writing: (module text, {first index: (group, module name, params)})."""
    groups = _find_groups(src, specs, taken)
    by_signature: dict[tuple, list[_Group]] = {}
    for group in groups:
        _signature(src, group, specs)
        by_signature.setdefault(group.signature, []).append(group)
    texts, uses = [], {}
    for signature, members in by_signature.items():
        if len(members) < 2:
            continue
        name = _module_name([g.prefix[:-1] for g in members], taken | set(REGISTRY))
        taken.add(name)
        first = members[0]
        keys = list(dict.fromkeys(k for g in members for k in g.values))
        for g in members:       # a parameter some block leaves out has its default there
            for rel, key in keys:
                if (rel, key) not in g.values:
                    p = g.specs[rel].param(key)
                    g.values[(rel, key)] = (p, p.default)
        varying = [key for key in keys
                   if any(not _same(g.values[key][1], first.values[key][1]) for g in members[1:])]
        # numbers are passed positionally, so they come first
        varying.sort(key=lambda k: first.values[k][0].kind not in ("int", "float"))
        body_names = {part[0] for part in signature} | {"in"}
        used: set[str] = set(body_names)
        params = []
        for key in varying:
            pname = _param_name(key[0], key[1], used)
            used.add(pname)
            params.append((key, pname))
        subst = {(first.prefix + rel, key): pname for (rel, key), pname in params}
        scope = _Scope(first.prefix, first.source, first.inner, subst)
        current = {ph: first.source for ph in PHASES}
        lines = [f"module {name}({', '.join(p for _, p in params)}) {{"]
        for i in first.indices:
            rel = src.net.layer[i].name[len(first.prefix):]
            emitted = {key: value for (r, key), (_, value) in first.values.items() if r == rel}
            lines.append("  " + _layer_text(src, i, specs[i], list(PHASES), current, scope, emitted))
        lines.append("}")
        texts.append("\n".join(lines))
        for g in members:
            uses[g.indices[0]] = (g, name, params)
    return texts, uses


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def _instance_text(src, group: _Group, module: str, params, current: dict[str, str | None]) -> str:
    args = [] if all(current[ph] == group.source for ph in PHASES) else [_name(group.source)]
    for (rel, key), pname in params:
        p, value = group.values[(rel, key)]
        text = _value(p, value)
        args.append(text if p.kind in ("int", "float") else f"{pname}={text}")
    for ph in PHASES:
        current[ph] = group.output
    return f"{_name(group.prefix[:-1])}: {module}({', '.join(args)})"


def _input_text(name: str, shape, phases: list[str]) -> str:
    tag = f" @{phases[0]}" if len(phases) == 1 else ""
    return f"input {_name(name)} {_list(shape)}{tag}"


# ---------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------

def find_solver_for(path: str) -> str | None:
    """A solver prototxt beside the net whose `net:` (or `train_net:`) names this file."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    candidates = sorted(f for f in os.listdir(directory) if "solver" in f and f.endswith(".prototxt"))
    candidates.sort(key=lambda f: f != "solver.prototxt")     # the plain one first
    for file in candidates:
        try:
            with open(os.path.join(directory, file), encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError):
            continue
        m = re.search(r'^\s*(?:train_)?net\s*:\s*"([^"]*)"', text, re.MULTILINE)
        if m and (m.group(1) == base or m.group(1).endswith("/" + base)):
            return os.path.join(directory, file)
    return None


def _solver_text(solver: SolverSpec) -> str:
    fields = dict(solver.fields)
    policy = fields.pop("lr_policy", "fixed")
    inner = []
    for key in LR_POLICY_FIELDS[policy]:
        if key in fields:
            inner.append(f"{key}={_solver_value(key, fields.pop(key))}")
    args = []
    for p in SOLVER_FIELDS:
        if p.name in fields:
            args.append(f"{p.name}={_solver_value(p.name, fields[p.name])}")
    policy_text = f"lr_policy={policy}" + (f"({', '.join(inner)})" if inner else "")
    if policy != "fixed" or inner:
        # after base_lr and the momentum/decay fields, where a reader looks for it
        at = next((i + 1 for i, a in reversed(list(enumerate(args)))
                   if a.split("=")[0] in ("base_lr", "momentum", "momentum2", "weight_decay",
                                          "regularization_type")), 0)
        args.insert(at, policy_text)
    return _wrap(f"solver {solver.type}(", args, ")")


def _solver_value(key: str, value) -> str:
    return _value(solver_field(key), value)


def _wrap(head: str, args: list[str], tail: str) -> str:
    """head + args joined by ', ', wrapped (inside the parentheses) at _LINE_WIDTH."""
    lines, line = [], head
    indent = " " * len(head)
    for i, arg in enumerate(args):
        piece = arg + ("," if i < len(args) - 1 else "")
        if line not in (head, indent) and len(line) + 1 + len(piece) > _LINE_WIDTH:
            lines.append(line.rstrip())
            line = indent
        line += ("" if line in (head, indent) else " ") + piece
    lines.append(line + tail)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------

def prototxt_to_net_text(path: str, modules: bool = True) -> str:
    """The .net text of a Caffe net prototxt, both phases in one file.

    With modules, runs of layers named `block/...` that repeat with other values
    (GoogLeNet's inception blocks) become one `module` and an instance per run."""
    path = str(path)
    # Check both phases first: a mistake is reported in the prototxt, where it was made.
    for phase in PHASES:
        net_from_prototxt(path, phase)
    src = load_prototxt(path)
    net = src.net

    out = [f"# Imported from {os.path.basename(path)} by `netc import`.",
           "# Layer and blob names are the prototxt's; only values that differ from Caffe's defaults are written."]
    if any(l.type in ("Data", "ImageData") for l in net.layer):
        out.append("# Data sources are written as in the prototxt: Caffe reads them relative to its working"
                   " directory, netc relative to this file.")
    name = net.name or os.path.splitext(os.path.basename(path))[0]
    out += ["", f"net {_name(name)}", ""]

    specs = {i: check_layer_type(src, i) for i, lp in enumerate(net.layer)
             if any(layer_in_phase(lp, ph) for ph in PHASES)}
    taken = {n for n in net.input} | {l.name for l in net.layer} | {t for l in net.layer for t in l.top}
    module_texts, uses = _plan_modules(src, specs, taken) if modules else ([], {})
    for text in module_texts:
        out += [text, ""]

    current: dict[str, str | None] = {ph: None for ph in PHASES}
    for blob, shape, _ in legacy_inputs(src):
        out.append(_input_text(blob, shape, list(PHASES)))
        for ph in PHASES:
            current[ph] = current[ph] or blob

    skip_until = -1
    for i, lp in enumerate(net.layer):
        if i <= skip_until:
            continue
        if i in uses:
            group, module, params = uses[i]
            out.append(_instance_text(src, group, module, params, current))
            skip_until = group.indices[-1]
            continue
        phases = [ph for ph in PHASES if layer_in_phase(lp, ph)]
        if not phases:
            out.append(f"# layer '{lp.name}' ({lp.type}) belongs to neither phase (stage or level rules): left out")
            continue
        spec = specs[i]
        if lp.type == "Input" and len(lp.top) == 1 and lp.name == lp.top[0] and not lp.param \
                and not lp.loss_weight:
            given, _ = read_layer_params(src, i, spec, lp.type)
            shapes = given.get("shape", ())
            if len(shapes) == 1:
                out.append(_input_text(lp.top[0], shapes[0], phases))
                for ph in phases:
                    current[ph] = current[ph] or lp.top[0]
                continue
        out.append(_layer_text(src, i, spec, phases, current))

    solver_path = find_solver_for(path)
    if solver_path is not None:
        try:
            solver = solver_from_prototxt(solver_path)
        except NetcError:
            solver = None     # a broken solver beside the net does not stop the import
        if solver is not None:
            out += ["", f"# from {os.path.basename(solver_path)}", _solver_text(solver)]
    return "\n".join(out) + "\n"
