"""Caffe prototxt → IR: one phase of a net prototxt, and a solver prototxt.

The loader (netc.caffe.load) parses the text with protobuf and remembers where
each layer and field was written. This module turns that NetParameter into the
same IR the .net front end builds (netc.passes.expand), with Caffe's rules:

- phase filtering by NetStateRule: a layer with `include` rules is kept when one
  of them matches, a layer with `exclude` rules is dropped when one matches; the
  net state is the phase asked for, level 0 and no stages;
- legacy `input:` fields become one Input layer per input blob;
- parameters come from the LayerParameter sub-message the registry names
  (Param.message, else the type's message); a field not written keeps the
  registry's default, which is Caffe's;
- blob names and layer names are the prototxt's, unchanged.

Every mistake is a NetcError located at the layer or the field that causes it.
"""
from __future__ import annotations

import os
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from netc.caffe import caffe_pb2
from netc.caffe.load import PrototxtSource, load_prototxt, load_solver_prototxt
from netc.errors import NetcError, Span, did_you_mean
from netc.ir import Layer, Net, ParamSpec, SolverSpec, frozen
from netc.lang.values import CallValue
from netc.layers import REGISTRY, LayerType
from netc.layers.base import Param, ParamError, coerce, resolve_paths
from netc.train.solver_config import LR_POLICIES, LR_POLICY_FIELDS, SOLVER_FIELDS, SOLVER_TYPES

__all__ = ["net_from_prototxt", "solver_from_prototxt", "layer_in_phase", "read_layer_params",
           "legacy_inputs", "check_layer_type", "param_specs", "PHASE_NAMES"]

PHASE_NAMES = {"train": caffe_pb2.TRAIN, "test": caffe_pb2.TEST}
_LAYER_FIELDS = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name


# ---------------------------------------------------------------------------
# Phase rules
# ---------------------------------------------------------------------------

def _rule_matches(rule: caffe_pb2.NetStateRule, phase: int) -> bool:
    """Caffe's Net::StateMeetsRule for a state of this phase, level 0 and no stages."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and 0 < rule.min_level:
        return False
    if rule.HasField("max_level") and 0 > rule.max_level:
        return False
    if len(rule.stage):          # every listed stage must be in the state: there are none
        return False
    return True                  # not_stage: the state has no stages to exclude


def layer_in_phase(layer: caffe_pb2.LayerParameter, phase: str) -> bool:
    """Whether Caffe keeps this layer in a net of the given phase ("train" or "test")."""
    value = PHASE_NAMES[phase]
    if layer.include:
        return any(_rule_matches(r, value) for r in layer.include)
    return not any(_rule_matches(r, value) for r in layer.exclude)


# ---------------------------------------------------------------------------
# Parameter values
# ---------------------------------------------------------------------------

def _filler_value(filler: caffe_pb2.FillerParameter, span: Span) -> CallValue:
    """A FillerParameter as the language's `gaussian(std=0.01)`, so coerce() checks it."""
    kwargs = []
    for name in ("value", "min", "max", "mean", "std", "sparse"):
        if filler.HasField(name):
            kwargs.append((name, getattr(filler, name)))
    if filler.HasField("variance_norm"):
        kwargs.append(("variance_norm",
                       caffe_pb2.FillerParameter.VarianceNorm.Name(filler.variance_norm)))
    return CallValue(filler.type, (), tuple(kwargs), span)


def _field_value(fd: FieldDescriptor, value, span: Span) -> Any:
    """One protobuf value in the form coerce() takes."""
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return fd.enum_type.values_by_number[value].name
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        if fd.message_type.name == "FillerParameter":
            return _filler_value(value, span)
        if fd.message_type.name == "BlobShape":
            return tuple(int(d) for d in value.dim)
        raise TypeError(f"no conversion for {fd.message_type.name}")  # pragma: no cover
    return value


def _present(msg, fd: FieldDescriptor) -> bool:
    if fd.is_repeated:
        return len(getattr(msg, fd.name)) > 0
    return msg.HasField(fd.name)


def _caffe_field(layer: caffe_pb2.LayerParameter, spec: LayerType, p: Param):
    """(sub-message or None, field descriptor or None) holding p in Caffe's LayerParameter."""
    message_name = p.message or spec.message
    if message_name is None or message_name not in _LAYER_FIELDS:
        return None, None
    descriptor = _LAYER_FIELDS[message_name].message_type
    fd = descriptor.fields_by_name.get(p.name) if descriptor is not None else None
    if fd is None:
        return None, None
    sub = getattr(layer, message_name) if layer.HasField(message_name) else None
    return sub, fd


def read_layer_params(src: PrototxtSource, index: int, spec: LayerType,
                      type_name: str) -> tuple[dict[str, Any], dict[str, Span]]:
    """The parameters a prototxt layer writes, each checked by coerce().

    Returns (given, spans): only the parameters present in the text (a required
    one that Caffe gives a default, such as ImageData's batch_size, is filled
    with that default). Raises NetcError for a bad value or a missing one.
    """
    layer = src.net.layer[index]
    given: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    for p in spec.params:
        sub, fd = _caffe_field(layer, spec, p)
        span = src.field_span(index, p.name)
        if fd is not None and sub is not None and _present(sub, fd):
            raw = getattr(sub, fd.name)
            if fd.is_repeated:
                values = [_field_value(fd, v, span) for v in raw]
                if p.kind == "filler":      # DummyData: one filler per top in Caffe; netc takes one
                    value = values[0]
                else:
                    value = values
            else:
                value = _field_value(fd, raw, span)
            try:
                given[p.name] = coerce(p, value)
            except ParamError as err:
                raise NetcError(f"{type_name} '{layer.name}': {err.message}", span, err.hint) from None
            spans[p.name] = span
        elif p.required:
            if fd is not None and not fd.is_repeated and fd.has_default_value:
                given[p.name] = coerce(p, _field_value(fd, fd.default_value, span))
                continue
            where = p.message or spec.message
            hint = (f"write {where} {{ {p.name}: ... }}" if where and fd is not None else
                    f"{type_name} is a netc layer type whose {p.name} a Caffe prototxt cannot give; "
                    "write the net in the .net language")
            raise NetcError(f"{type_name} '{layer.name}' needs {p.name}", src.layer_spans[index], hint)
    return given, spans


def param_specs(layer: caffe_pb2.LayerParameter) -> tuple[ParamSpec, ...]:
    return tuple(ParamSpec(name=p.name if p.HasField("name") and p.name else None,
                           lr_mult=float(p.lr_mult), decay_mult=float(p.decay_mult))
                 for p in layer.param)


def check_layer_type(src: PrototxtSource, index: int) -> LayerType:
    layer = src.net.layer[index]
    spec = REGISTRY.get(layer.type)
    if spec is None:
        span = src.field_span(index, "type")
        if not layer.type:
            raise NetcError(f"layer '{layer.name}' has no type", span, 'write type: "Convolution" (for example)')
        hint = did_you_mean(layer.type, REGISTRY) or \
            f"netc supports: {', '.join(sorted(REGISTRY))}"
        raise NetcError(f"layer type '{layer.type}' is not supported by netc", span, hint)
    return spec


# ---------------------------------------------------------------------------
# Legacy inputs
# ---------------------------------------------------------------------------

def legacy_inputs(src: PrototxtSource) -> list[tuple[str, tuple[int, ...], Span]]:
    """(blob, shape, span) for each legacy `input:` of the net, in order."""
    net = src.net
    names = list(net.input)
    fallback = Span(src.path, 1, 1)
    spans = [src.input_spans.get(n, fallback) for n in names]
    if not names:
        if net.input_shape or net.input_dim:
            raise NetcError("input_shape / input_dim given without an `input:` name", fallback,
                            'write input: "data" before them')
        return []
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise NetcError(f"{len(names)} inputs but {len(net.input_shape)} input_shape blocks",
                            spans[0], "give one input_shape per input")
        shapes = [tuple(int(d) for d in s.dim) for s in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(names):
            raise NetcError(f"{len(names)} inputs need {4 * len(names)} input_dim values, "
                            f"got {len(net.input_dim)}", spans[0],
                            "give four input_dim values (N, C, H, W) per input")
        dims = [int(d) for d in net.input_dim]
        shapes = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
    else:
        raise NetcError(f"input '{names[0]}' has no shape", spans[0],
                        "give input_shape { dim: N dim: C dim: H dim: W } (or four input_dim values)")
    out = []
    for name, shape, span in zip(names, shapes, spans):
        if not shape or any(d < 1 for d in shape):
            raise NetcError(f"input '{name}' needs positive dimensions, got {list(shape)}", span)
        out.append((name, shape, span))
    return out


# ---------------------------------------------------------------------------
# The net
# ---------------------------------------------------------------------------

def net_from_prototxt(path: str, phase: str = "test") -> Net:
    """The unshaped IR of one phase ("train" or "test") of a Caffe net prototxt."""
    if phase not in PHASE_NAMES:
        raise NetcError(f"unknown phase '{phase}'", None, "phases are train and test")
    src = load_prototxt(path)
    net = src.net
    layers: list[Layer] = []
    blobs: dict[str, Span] = {}               # blob → where it was first produced
    layer_names: dict[str, Span] = {}

    for blob, shape, span in legacy_inputs(src):
        if blob in blobs:
            raise NetcError(f"input '{blob}' is declared twice", span, f"first declared at {blobs[blob]}")
        layers.append(Layer(name=blob, type="Input", bottoms=(), tops=(blob,),
                            params=frozen({"shape": (shape,)}), param_spans=frozen({"shape": span}),
                            span=span))
        blobs[blob] = span
        layer_names[blob] = span

    in_phase = [layer_in_phase(l, phase) for l in net.layer]
    for i, lp in enumerate(net.layer):
        if not in_phase[i]:
            continue
        span = src.layer_spans[i]
        if lp.include and lp.exclude:
            raise NetcError(f"layer '{lp.name}' has both include and exclude rules", span,
                            "Caffe takes one or the other: keep only include (or only exclude)")
        spec = check_layer_type(src, i)
        name = lp.name or f"{lp.type.lower()}_{i + 1}"
        if name in layer_names:
            raise NetcError(f"layer name '{name}' is used twice in the {phase} phase",
                            src.field_span(i, "name"), f"first used at {layer_names[name]}")

        given, spans = read_layer_params(src, i, spec, lp.type)
        params = {p.name: given.get(p.name, p.default) for p in spec.params}
        resolve_paths(spec, params, os.getcwd())
        try:
            params = spec.normalize(params)
        except ParamError as err:
            target = spec.param(err.param) if err.param else None
            where = spans.get(target.name) if target else None
            raise NetcError(f"{lp.type} '{name}': {err.message}", where or span, err.hint) from None

        bottoms = tuple(lp.bottom)
        tops = tuple(lp.top)
        if not tops and spec.is_loss:
            tops = (name,)        # Caffe gives a loss layer without tops an automatic one
        _check_bottoms(src, i, lp, spec, bottoms, blobs, in_phase, phase)
        _check_tops(src, i, lp, spec, bottoms, tops, blobs)

        layer = Layer(name=name, type=lp.type, bottoms=bottoms, tops=tops, params=frozen(params),
                      param_spans=frozen(spans), param_specs=param_specs(lp),
                      loss_weight=tuple(float(w) for w in lp.loss_weight), span=span)
        if layer.param_specs and not spec.learnable:
            raise NetcError(f"{lp.type} '{name}' has no learnable parameters for `param` blocks",
                            src.field_span(i, "param"), "remove the param { ... } blocks")
        if len(layer.loss_weight) > len(tops):
            raise NetcError(f"{lp.type} '{name}' has {len(layer.loss_weight)} loss_weight values "
                            f"for {len(tops)} top{'s' if len(tops) != 1 else ''}",
                            src.field_span(i, "loss_weight"), "give one loss_weight per top")
        layers.append(layer)
        layer_names[name] = span
        for top in tops:
            blobs.setdefault(top, src.field_span(i, "top"))

    name = net.name or os.path.splitext(os.path.basename(path))[0]
    return Net(name=name, phase=phase, layers=tuple(layers), source=str(path), origin="prototxt")


def _check_bottoms(src, i, lp, spec: LayerType, bottoms, blobs, in_phase, phase) -> None:
    span = src.field_span(i, "bottom") if bottoms else src.layer_spans[i]
    for bottom in bottoms:
        if bottom in blobs:
            continue
        later = next((j for j in range(i + 1, len(src.net.layer))
                      if in_phase[j] and bottom in src.net.layer[j].top), None)
        if later is not None:
            raise NetcError(f"blob '{bottom}' is used before it is produced", span,
                            f"'{bottom}' is produced later, by layer '{src.net.layer[later].name}' at "
                            f"{src.layer_spans[later]}; a layer reads only blobs produced above it, "
                            "so a net cannot loop back")
        elsewhere = next((j for j, l in enumerate(src.net.layer) if bottom in l.top), None)
        if elsewhere is not None:
            raise NetcError(f"blob '{bottom}' does not exist in the {phase} phase", span,
                            f"it is produced by layer '{src.net.layer[elsewhere].name}' at "
                            f"{src.layer_spans[elsewhere]}, which is not in the {phase} phase")
        raise NetcError(f"unknown blob '{bottom}'", span,
                        did_you_mean(bottom, blobs) or
                        ("no blob exists yet: add an Input layer first" if not blobs else None))
    low, high = spec.min_bottoms, spec.max_bottoms
    if not _within(len(bottoms), low, high):
        raise NetcError(f"{lp.type} '{lp.name}' takes {_how_many(low, high, 'bottom')}, got {len(bottoms)}", span)


def _within(n: int, low: int, high: int | None) -> bool:
    return n >= low and (high is None or n <= high)


def _how_many(low: int, high: int | None, what: str) -> str:
    want = f"{low}" if low == high else (f"{low} to {high}" if high is not None else f"at least {low}")
    return f"{want} {what}{'s' if high != 1 else ''}"


def _check_tops(src, i, lp, spec: LayerType, bottoms, tops, blobs) -> None:
    span = src.field_span(i, "top") if tops else src.layer_spans[i]
    low, high = spec.num_tops
    if not _within(len(tops), low, high):
        raise NetcError(f"{lp.type} '{lp.name}' has {_how_many(low, high, 'top')}, got {len(tops)}", span)
    if len(set(tops)) != len(tops):
        raise NetcError(f"{lp.type} '{lp.name}' names the same top twice", span)
    for top in tops:
        if top in bottoms:
            if not spec.can_be_in_place:
                raise NetcError(f"{lp.type} '{lp.name}' cannot write its bottom '{top}' in place", span,
                                "give its top another name")
        elif top in blobs:
            raise NetcError(f"top blob '{top}' of layer '{lp.name}' is already produced by another layer",
                            span, f"first produced at {blobs[top]}; Caffe allows one producer per blob "
                                  "(except in-place layers): rename the top")


# ---------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------

def solver_from_prototxt(path: str) -> SolverSpec:
    """A Caffe solver prototxt as netc's SolverSpec (the fields netc understands)."""
    solver, spans = load_solver_prototxt(path)
    start = Span(str(path), 1, 1)
    fields: dict[str, Any] = {}
    field_spans: dict[str, Span] = {}
    descriptor = caffe_pb2.SolverParameter.DESCRIPTOR
    for p in SOLVER_FIELDS:
        fd = descriptor.fields_by_name.get(p.name)
        if fd is None or not _present(solver, fd):
            continue
        raw = getattr(solver, p.name)
        value = list(raw) if fd.is_repeated else raw
        if fd.type == FieldDescriptor.TYPE_ENUM:
            value = fd.enum_type.values_by_number[value].name
        span = spans.get(p.name, start)
        try:
            fields[p.name] = coerce(p, value)
        except ParamError as err:
            raise NetcError(err.message, span, err.hint) from None
        field_spans[p.name] = span
    solver_type = solver.type or "SGD"
    if solver_type not in SOLVER_TYPES:
        raise NetcError(f"unknown solver type '{solver_type}'", spans.get("type", spans.get("solver_type", start)),
                        did_you_mean(solver_type, SOLVER_TYPES) or f"solvers are: {', '.join(SOLVER_TYPES)}")
    policy = fields.get("lr_policy", "fixed")
    if policy not in LR_POLICIES:
        raise NetcError(f"unknown lr_policy '{policy}'", field_spans["lr_policy"],
                        did_you_mean(policy, LR_POLICIES) or f"policies are: {', '.join(LR_POLICIES)}")
    if fields.get("regularization_type", "L2") not in ("L1", "L2"):
        raise NetcError("regularization_type is L1 or L2", field_spans["regularization_type"])
    for needed in LR_POLICY_FIELDS[policy]:
        if fields.get(needed) in (None, ()):
            raise NetcError(f"lr_policy {policy} needs {needed}", field_spans.get("lr_policy", start),
                            f"add {needed}: ... to the solver")
    return SolverSpec(solver_type, frozen(fields), spans.get("type", start), frozen(field_spans))
