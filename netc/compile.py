"""The front half of the pipeline, in one visible place:

    .net  ──parse──▶ AST ──expand(phase)──▶ IR ─┐
    .prototxt ──load──▶ NetParameter ──to IR────┴─▶ infer_shapes ──▶ lint ──▶ checked Net
"""
from __future__ import annotations

from typing import Mapping

from netc.ir import Net, Shape
from netc.lang.parser import parse_file
from netc.passes.expand import expand
from netc.passes.lint import lint
from netc.passes.shapes import infer_shapes


def is_prototxt(path: str) -> bool:
    return path.endswith((".prototxt", ".pbtxt", ".pt"))


def build_ir(path: str, phase: str = "test") -> Net:
    """The unshaped IR of one phase of a .net or Caffe .prototxt file."""
    if is_prototxt(path):
        from netc.caffe.prototxt import net_from_prototxt
        return net_from_prototxt(path, phase)
    return expand(parse_file(path), phase)


def check_ir(ir: Net, overrides: Mapping[str, Shape] | None = None) -> Net:
    """Shapes inferred, warnings collected, for IR already built."""
    return lint(infer_shapes(ir, overrides))


def compile_net(path: str, phase: str = "test", overrides: Mapping[str, Shape] | None = None) -> Net:
    """A checked net: shapes inferred, warnings collected. Raises NetcError on a mistake."""
    return check_ir(build_ir(path, phase), overrides)
