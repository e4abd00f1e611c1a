"""The language as written: statements, links, expressions, each with its span.

Modules are not expanded here; `netc.passes.expand` turns a Program into the IR.
"""
from __future__ import annotations

from dataclasses import dataclass

from netc.errors import Span


# --- expressions -----------------------------------------------------------------
@dataclass(frozen=True)
class Expr:
    span: Span


@dataclass(frozen=True)
class Number(Expr):
    value: int | float


@dataclass(frozen=True)
class String(Expr):
    value: str


@dataclass(frozen=True)
class Ident(Expr):
    name: str


@dataclass(frozen=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Call(Expr):
    """`gaussian(std=0.01)`, `inv(gamma=1e-4, power=0.75)`: a named value with arguments."""
    name: str
    args: tuple["Arg", ...]


@dataclass(frozen=True)
class BinOp(Expr):
    op: str  # one of + - * / // %
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg(Expr):
    operand: Expr


@dataclass(frozen=True)
class Arg:
    """A call argument: `name=value` when keyword is set, else positional."""
    keyword: str | None
    value: Expr
    span: Span


# --- statements ------------------------------------------------------------------
@dataclass(frozen=True)
class Name:
    text: str
    span: Span


@dataclass(frozen=True)
class Link:
    """One layer (or module instance) in a chain: `label: Type(args)!`."""
    label: Name | None
    type: Name
    args: tuple[Arg, ...]
    in_place: bool
    span: Span


@dataclass(frozen=True)
class LayerStatement:
    links: tuple[Link, ...]
    tops: tuple[Name, ...]
    phases: tuple[Name, ...]
    span: Span


@dataclass(frozen=True)
class InputDecl:
    name: Name
    shape: ListExpr
    phases: tuple[Name, ...]
    span: Span


@dataclass(frozen=True)
class ModuleParam:
    name: Name
    default: Expr | None


@dataclass(frozen=True)
class ModuleDef:
    name: Name
    params: tuple[ModuleParam, ...]
    input_shape: ListExpr | None    # optional pattern binding the input's dims (batch excluded)
    output_shape: ListExpr | None   # the promised output shape (batch excluded)
    body: tuple[LayerStatement, ...]
    span: Span


@dataclass(frozen=True)
class SolverDecl:
    type: Name
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True)
class Program:
    file: str
    net_name: Name | None
    statements: tuple[InputDecl | LayerStatement, ...]   # in source order
    modules: dict[str, ModuleDef]
    solver: SolverDecl | None
