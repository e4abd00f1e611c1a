"""Values of the language after evaluation, and the evaluator of expressions.

An identifier that is not bound (a module parameter) stays a Symbol: depending on
where it is used it names a blob (`ip2`), an enum value (`MAX`) or a filler (`xavier`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from netc.errors import NetcError, Span, did_you_mean
from netc.lang import ast


@dataclass(frozen=True)
class Symbol:
    name: str
    span: Span


@dataclass(frozen=True)
class CallValue:
    """`gaussian(std=0.01)` evaluated: a name with positional and keyword values."""
    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    span: Span
    kwarg_spans: tuple[tuple[str, Span], ...] = ()


CONSTANTS = {"true": True, "false": False}


def _number(value, span: Span):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = f"'{value.name}'" if isinstance(value, Symbol) else repr(value)
        raise NetcError(f"{what} is not a number", span)
    return value


def evaluate(expr: ast.Expr, env: Mapping[str, Any]) -> Any:
    """Evaluate an expression; env maps module parameter names to their values."""
    if isinstance(expr, ast.Number):
        return expr.value
    if isinstance(expr, ast.String):
        return expr.value
    if isinstance(expr, ast.Ident):
        if expr.name in env:
            return env[expr.name]
        if expr.name in CONSTANTS:
            return CONSTANTS[expr.name]
        return Symbol(expr.name, expr.span)
    if isinstance(expr, ast.ListExpr):
        return [evaluate(item, env) for item in expr.items]
    if isinstance(expr, ast.Neg):
        return -_number(evaluate(expr.operand, env), expr.operand.span)
    if isinstance(expr, ast.Call):
        args, kwargs, spans = [], [], []
        for arg in expr.args:
            value = evaluate(arg.value, env)
            if arg.keyword is None:
                args.append(value)
            else:
                kwargs.append((arg.keyword, value))
                spans.append((arg.keyword, arg.span))
        return CallValue(expr.name, tuple(args), tuple(kwargs), expr.span, tuple(spans))
    if isinstance(expr, ast.BinOp):
        left = evaluate(expr.left, env)
        right = evaluate(expr.right, env)
        for side, node in ((left, expr.left), (right, expr.right)):
            if isinstance(side, Symbol):
                hint = did_you_mean(side.name, env) or (
                    f"the names in scope are: {', '.join(sorted(env))}" if env else
                    "arithmetic works on numbers and module parameters")
                raise NetcError(f"unknown name '{side.name}' in arithmetic", node.span, hint)
            _number(side, node.span)
        op = expr.op
        if op in ("/", "//", "%") and right == 0:
            raise NetcError("division by zero", expr.span)
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if op == "/":
            result = left / right
            # keep channel arithmetic integral when it divides exactly: 256 / 2 is 128
            return int(result) if isinstance(left, int) and isinstance(right, int) and left % right == 0 else result
        if op == "//":
            return left // right
        return left % right
    raise TypeError(f"unknown expression {expr!r}")  # pragma: no cover
