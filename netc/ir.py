"""The IR: a net as a typed graph of layers and blobs, after modules are expanded
and one phase is chosen. Immutable; passes return new Nets (dataclasses.replace).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from netc.errors import Diagnostic, Span

Shape = tuple[int, ...]


def frozen(mapping: Mapping | None = None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Filler:
    """Caffe's FillerParameter: how a learnable blob is initialised."""
    type: str = "constant"
    value: float = 0.0
    min: float = 0.0
    max: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    variance_norm: str = "FAN_IN"
    sparse: int = -1


@dataclass(frozen=True)
class ParamSpec:
    """Caffe's ParamSpec for one learnable blob of a layer."""
    name: str | None = None       # layers whose blobs have the same name share them
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass(frozen=True)
class Layer:
    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: Mapping[str, Any]                   # validated, every default filled in
    param_spans: Mapping[str, Span] = field(default_factory=frozen)
    param_specs: tuple[ParamSpec, ...] = ()
    loss_weight: tuple[float, ...] = ()         # one per top; empty means the type's default
    span: Span | None = None
    trace: tuple[tuple[str, Span], ...] = ()    # module instantiations that produced it, innermost first
    module: tuple[str, ...] = ()                # instance path, e.g. ("inception_3a",)

    def span_of(self, param: str) -> Span | None:
        return self.param_spans.get(param, self.span)

    @property
    def in_place(self) -> bool:
        return bool(self.tops) and bool(set(self.tops) & set(self.bottoms))


@dataclass(frozen=True)
class LayerInfo:
    """What shape inference learned about one layer."""
    bottom_shapes: tuple[Shape, ...]
    top_shapes: tuple[Shape, ...]
    param_shapes: tuple[Shape, ...]
    macs: int

    @property
    def num_params(self) -> int:
        total = 0
        for shape in self.param_shapes:
            count = 1
            for d in shape:
                count *= d
            total += count
        return total


@dataclass(frozen=True)
class ShapeContract:
    """A module's promise about the shape it produces, checked after inference."""
    module: str
    instance: str
    input_blob: str | None
    output_blob: str
    input_pattern: Any      # netc.lang.ast.ListExpr or None
    output_pattern: Any     # netc.lang.ast.ListExpr
    env: Mapping[str, Any]  # the instance's parameter values
    span: Span
    trace: tuple[tuple[str, Span], ...]


@dataclass(frozen=True)
class SolverSpec:
    type: str
    fields: Mapping[str, Any]
    span: Span | None = None
    field_spans: Mapping[str, Span] = field(default_factory=frozen)


@dataclass(frozen=True)
class Net:
    name: str
    phase: str                                   # "train" | "test"
    layers: tuple[Layer, ...]
    source: str                                  # the file it came from
    origin: str = "net"                          # "net" | "prototxt"
    solver: SolverSpec | None = None
    contracts: tuple[ShapeContract, ...] = ()
    blob_shapes: Mapping[str, Shape] = field(default_factory=frozen)   # filled by infer_shapes
    layer_info: Mapping[str, LayerInfo] = field(default_factory=frozen)
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def inputs(self) -> dict[str, Shape]:
        return {top: self.blob_shapes.get(top) for layer in self.layers if layer.type == "Input"
                for top in layer.tops}

    @property
    def num_params(self) -> int:
        """Learnable values, counting a parameter shared by name once."""
        seen: set[str] = set()
        total = 0
        for layer in self.layers:
            info = self.layer_info[layer.name]
            for i, shape in enumerate(info.param_shapes):
                name = layer.param_specs[i].name if i < len(layer.param_specs) else None
                if name is not None:
                    if name in seen:
                        continue
                    seen.add(name)
                total += math.prod(shape)
        return total

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def producers(self) -> dict[str, Layer]:
        """The first layer that writes each blob."""
        out: dict[str, Layer] = {}
        for layer in self.layers:
            for top in layer.tops:
                out.setdefault(top, layer)
        return out
