"""The grammar and the AST it builds: tokens, statements, expressions, spans.

Expected values are what the language summary says the text means, written out by hand.
"""
import pytest

from netc.errors import NetcError
from netc.lang import ast
from netc.lang.parser import parse_text
from netc.lang.values import CallValue, Symbol, evaluate


def layers(program):
    return [s for s in program.statements if isinstance(s, ast.LayerStatement)]


def only_link(text):
    (stmt,) = layers(parse_text(text))
    (link,) = stmt.links
    return link


def arg_values(link, env=None):
    return [(a.keyword, evaluate(a.value, env or {})) for a in link.args]


# --- comments, lines, brackets ---------------------------------------------------------
def test_comments_and_blank_lines_are_ignored():
    prog = parse_text("# a net\n\nnet N   # its name\n\n# nothing\ninput data [1, 2]  # shape\n")
    assert prog.net_name.text == "N"
    (decl,) = prog.statements
    assert isinstance(decl, ast.InputDecl)
    assert decl.name.text == "data"
    assert [i.value for i in decl.shape.items] == [1, 2]


def test_file_without_final_newline():
    prog = parse_text("input data [1, 2]")
    assert prog.statements[0].name.text == "data"


def test_arguments_may_span_lines_inside_parentheses():
    link = only_link("c: Convolution(20,\n    kernel=5,   # comment inside\n\n    stride=2)\n")
    assert arg_values(link) == [(None, 20), ("kernel", 5), ("stride", 2)]


def test_lists_may_span_lines_inside_brackets():
    prog = parse_text("input data [64,\n  1,\n  28, 28]\n")
    assert [i.value for i in prog.statements[0].shape.items] == [64, 1, 28, 28]


def test_trailing_comma_in_args_and_lists():
    link = only_link("r: Reshape([1, 2,], axis=0,)\n")
    assert arg_values(link) == [(None, [1, 2]), ("axis", 0)]


def test_newline_ends_a_statement_outside_brackets():
    prog = parse_text("a: ReLU\nb: ReLU\n")
    assert len(layers(prog)) == 2


# --- names and numbers -----------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("5", 5), ("1e-4", 1e-4), ("5e-4", 5e-4), ("0.75", 0.75),
                                         (".5", 0.5), ("2.", 2.0), ("1E3", 1000.0)])
def test_numbers(text, value):
    (_, got), = arg_values(only_link(f"x: ReLU(v={text})\n"))
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize("text", ["1x1", "3x3_reduce", "5x5", "conv1", "_x", "inception_3a"])
def test_names_that_start_with_digits_are_names(text):
    link = only_link(f"{text}: ReLU\n")
    assert link.label.text == text
    (_, got), = arg_values(only_link(f"x: Concat({text})\n"))
    assert got == Symbol(text, got.span)


def test_string_labels_keep_slashes():
    link = only_link('"conv1/7x7_s2": Convolution(64, kernel=7, stride=2)\n')
    assert link.label.text == "conv1/7x7_s2"


def test_string_arguments_and_escapes():
    (_, got), = arg_values(only_link('d: IDXData(source="a \\"b\\" c")\n'))
    assert got == 'a "b" c'


@pytest.mark.parametrize("source, value", [
    ('"café"', "café"),
    ('"café \\"x\\""', 'café "x"'),      # escapes next to non-ASCII text
    ('"a\\\\b"', "a\\b"),
    ('"C:\\data"', "C:\\data"),          # an unknown escape stays as written
    ('"tab\\there"', "tab\there"),
])
def test_string_escapes_and_non_ascii(source, value):
    (_, got), = arg_values(only_link(f"d: IDXData(source={source})\n"))
    assert got == value


def test_true_false_are_constants():
    assert arg_values(only_link("p: Pooling(global=true, x=false)\n")) == [("global", True), ("x", False)]


# --- chains, in place, outputs, phases -----------------------------------------------------
def test_chain_of_links():
    (stmt,) = layers(parse_text("ip1: InnerProduct(500) ReLU! Dropout(0.5)!\n"))
    assert [l.type.text for l in stmt.links] == ["InnerProduct", "ReLU", "Dropout"]
    assert [l.in_place for l in stmt.links] == [False, True, True]
    assert stmt.links[0].label.text == "ip1"
    assert stmt.links[1].label is None and stmt.links[1].args == ()


def test_labels_inside_a_chain():
    (stmt,) = layers(parse_text("a: ReLU b: Sigmoid c: TanH\n"))
    assert [l.label.text for l in stmt.links] == ["a", "b", "c"]


def test_arrow_with_several_outputs_and_phases():
    (stmt,) = layers(parse_text('src: IDXData(source="m", batch=64) -> data, label @train\n'))
    assert [t.text for t in stmt.tops] == ["data", "label"]
    assert [p.text for p in stmt.phases] == ["train"]


def test_several_phases_and_string_top():
    (stmt,) = layers(parse_text('a: Slice(x) -> "p/1", q @train @test\n'))
    assert [t.text for t in stmt.tops] == ["p/1", "q"]
    assert [p.text for p in stmt.phases] == ["train", "test"]


def test_input_with_phase():
    (decl,) = parse_text("input label [64] @test\n").statements
    assert [p.text for p in decl.phases] == ["test"]


def test_positional_blob_names_are_symbols():
    assert [v.name for _, v in arg_values(only_link("loss: SoftmaxWithLoss(ip2, label)\n"))] == ["ip2", "label"]


# --- expressions --------------------------------------------------------------------------
@pytest.mark.parametrize("expr, value", [
    ("2 + 3 * 4", 14),
    ("(2 + 3) * 4", 20),
    ("2 - 3 - 1", -2),          # left associative
    ("7 // 2", 3),
    ("-7 // 2", -4),            # unary minus binds tighter: (-7) // 2
    ("7 % 3", 1),
    ("2 + 7 % 3 * 2", 4),
    ("10 / 4", 2.5),
    ("256 / 2", 128),           # exact division of integers stays an integer
    ("-3", -3),
    ("- -3", 3),
    ("+3", 3),
    ("2 * -3", -6),
    ("12 // 2 // 3", 2),
    ("c * 2 + k", 19),
    ("c // k", 2),
    ("-(c - k)", -5),
])
def test_arithmetic(expr, value):
    (_, got), = arg_values(only_link(f"x: ReLU(v={expr})\n"), {"c": 8, "k": 3})
    assert got == value
    assert type(got) is type(value)


def test_division_result_type():
    (_, got), = arg_values(only_link("x: ReLU(v=256 / 2)\n"))
    assert isinstance(got, int)


def test_division_by_zero_is_located():
    link = only_link("x: ReLU(v=3 // 0)\n")
    with pytest.raises(NetcError, match="division by zero") as info:
        evaluate(link.args[0].value, {})
    assert (info.value.span.line, info.value.span.column) == (1, 11)


def test_call_values():
    (_, got), = arg_values(only_link("c: Convolution(weight=gaussian(std=0.01), b=constant(0.2))\n"))[:1]
    assert isinstance(got, CallValue)
    assert got.name == "gaussian" and got.kwargs == (("std", 0.01),)


# --- modules ----------------------------------------------------------------------------
MODULE = """\
module block(c, k=3, s=k - 1) [C, H, W] -> [c, H // s, W // s] {
  conv: Convolution(in, c, kernel=k)
  relu: ReLU!
}
"""


def test_module_definition():
    prog = parse_text(MODULE)
    mod = prog.modules["block"]
    assert [p.name.text for p in mod.params] == ["c", "k", "s"]
    assert mod.params[0].default is None
    assert evaluate(mod.params[1].default, {}) == 3
    assert evaluate(mod.params[2].default, {"k": 5}) == 4
    assert [i.name for i in mod.input_shape.items] == ["C", "H", "W"]
    assert len(mod.output_shape.items) == 3
    assert evaluate(mod.output_shape.items[1], {"H": 9, "s": 2}) == 4
    assert [s.links[0].label.text for s in mod.body] == ["conv", "relu"]
    assert prog.statements == ()


def test_module_without_shapes_and_blank_lines_in_body():
    prog = parse_text("module m() {\n\n  a: ReLU\n\n}\n")
    mod = prog.modules["m"]
    assert mod.params == () and mod.input_shape is None and mod.output_shape is None
    assert len(mod.body) == 1


def test_module_defined_twice():
    with pytest.raises(NetcError, match="module 'm' is defined twice") as info:
        parse_text("module m() {\n  a: ReLU\n}\nmodule m() {\n  a: ReLU\n}\n", "f.net")
    assert (info.value.span.line, info.value.span.column) == (4, 8)
    assert info.value.hint == "first defined at f.net:1:8"


def test_net_named_twice():
    with pytest.raises(NetcError, match="the net is named twice") as info:
        parse_text("net A\nnet B\n", "f.net")
    assert info.value.span.line == 2
    assert "'A'" in info.value.hint


# --- solver -------------------------------------------------------------------------------
def test_solver_with_lr_policy_call():
    prog = parse_text("solver SGD(base_lr=0.01, momentum=0.9,\n"
                      "           lr_policy=inv(gamma=1e-4, power=0.75), max_iter=10000)\n")
    assert prog.solver.type.text == "SGD"
    values = dict((a.keyword, evaluate(a.value, {})) for a in prog.solver.args)
    assert values["base_lr"] == 0.01 and values["max_iter"] == 10000
    policy = values["lr_policy"]
    assert policy.name == "inv" and dict(policy.kwargs) == {"gamma": 1e-4, "power": 0.75}


def test_solver_without_arguments():
    assert parse_text("solver Adam\n").solver.args == ()


def test_two_solvers():
    with pytest.raises(NetcError, match="one solver block") as info:
        parse_text("solver SGD\nsolver Adam\n")
    assert info.value.span.line == 2


# --- spans --------------------------------------------------------------------------------
def test_spans_of_nodes():
    text = ("net N\n"
            "input data [1, 3, 8, 8]\n"
            "\n"
            "conv1: Convolution(20, kernel=5) ReLU!\n"
            "  loss: SoftmaxWithLoss(conv1, label) -> l @train\n")
    prog = parse_text(text, "x.net")
    data, conv, loss = prog.statements
    assert (data.span.file, data.span.line, data.span.column) == ("x.net", 2, 1)
    assert (data.name.span.line, data.name.span.column) == (2, 7)
    assert (data.shape.span.line, data.shape.span.column, data.shape.span.end_column) == (2, 12, 24)
    link, relu = conv.links
    assert (link.span.line, link.span.column) == (4, 1)
    assert (link.type.span.column, link.type.span.end_column) == (8, 19)
    kernel = link.args[1]
    assert (kernel.span.column, kernel.span.end_column) == (24, 32)
    assert (kernel.value.span.column) == 31
    assert (relu.span.line, relu.span.column) == (4, 34)
    assert loss.links[0].label.span.column == 3
    assert (loss.tops[0].span.line, loss.tops[0].span.column) == (5, 42)
    assert loss.phases[0].span.column == 45


def test_spans_on_continuation_lines():
    prog = parse_text("c: Convolution(20,\n   kernel=5)\n")
    arg = prog.statements[0].links[0].args[1]
    assert (arg.span.line, arg.span.column) == (2, 4)


def test_binop_span_covers_the_expression():
    link = only_link("x: ReLU(v=2 + 3 * 4)\n")
    expr = link.args[0].value
    assert isinstance(expr, ast.BinOp) and expr.op == "+"
    assert (expr.span.column, expr.span.end_column) == (11, 20)
    assert expr.right.op == "*"
