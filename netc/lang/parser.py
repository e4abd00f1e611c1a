"""Text → AST: Lark (LALR) with the grammar in grammars/netc.lark, and a Transformer.

Syntax errors become located NetcErrors that say what was expected in words.
"""
from __future__ import annotations

import functools
import re
import os

import lark

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from netc.errors import NetcError, Span
from netc.lang import ast
from netc.resources import read_resource


class _BracketNewlines:
    """Post-lexer: inside (...) and [...] a newline is just whitespace, so long
    argument lists can wrap; inside {...} (module bodies) newlines end statements."""
    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth > 0:
                continue
            yield tok


def _cache_path() -> str | bool:
    """Where Lark keeps the built LALR tables: building them costs ~0.2 s, a third of
    `netc check`'s budget, loading them ~10 ms. Lark keys the file by the grammar's
    hash, so an edited grammar is rebuilt; an unwritable cache only costs speed."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "netc")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return True   # Lark's default: the system temp folder
    return os.path.join(folder, f"grammar-lark{lark.__version__}.cache")


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(read_resource("grammars", "netc.lark"), parser="lalr", postlex=_BracketNewlines(),
                propagate_positions=True, maybe_placeholders=True, cache=_cache_path())


_TERMINAL_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "ARROW": "'->'", "BANG": "'!'", "AT": "'@'",
    "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "PERCENT": "'%'",
    "__ANON_0": "'//'", "$END": "end of file",
}


def _words(terminals) -> str:
    names = sorted({_TERMINAL_WORDS.get(t, t.lower()) for t in terminals
                    if not t.startswith("__ANON") or t in _TERMINAL_WORDS})
    if len(names) > 6:
        names = names[:6] + ["..."]
    return ", ".join(names)


def _token_words(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "$END":
        return "end of file"
    return f"'{tok.value}'"


def _unclosed_bracket(text: str) -> tuple[str, int, int, int] | None:
    """The innermost '(' or '[' that is still open at the end of the text, as
    (bracket, offset, line, column); strings and comments are skipped."""
    stack: list[tuple[str, int, int, int]] = []
    line, line_start, i = 1, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "\n":
            line, line_start = line + 1, i + 1
        elif ch == "#":
            while i + 1 < len(text) and text[i + 1] != "\n":
                i += 1
        elif ch == '"':
            i += 1
            while i < len(text) and text[i] not in '"\n':
                i += 2 if text[i] == "\\" else 1
            if i < len(text) and text[i] == "\n":
                continue   # an unterminated string is the lexer's error, not ours
        elif ch in "([":
            stack.append((ch, i, line, i - line_start + 1))
        elif ch in ")]" and stack:
            stack.pop()
        i += 1
    return stack[-1] if stack else None


@functools.lru_cache(maxsize=1)
def _bare_name_rule() -> tuple[re.Pattern, re.Pattern, frozenset[str]]:
    lark = _lark()
    name = re.compile(lark.get_terminal("NAME").pattern.to_regexp())
    number = re.compile(lark.get_terminal("NUMBER").pattern.to_regexp())
    keywords = frozenset(t.pattern.value for t in lark.terminals
                         if t.pattern.type == "str" and name.fullmatch(t.pattern.value))
    return name, number, frozenset(keywords)


def is_plain_name(text: str) -> bool:
    """Whether `text` can be written without quotes wherever the grammar takes a name.
    Read from the grammar itself, so a writer of .net text (netc import) follows it:
    a NAME that is no keyword (`net`, `input`, ...) and does not also read as a
    number (`1e5` is a number where numbers are allowed)."""
    name, number, keywords = _bare_name_rule()
    return bool(name.fullmatch(text)) and text not in keywords and not number.fullmatch(text)


def _syntax_error(err: UnexpectedInput, path: str, text: str) -> NetcError:
    line, col = getattr(err, "line", 1) or 1, getattr(err, "column", 1) or 1
    hint = None
    if isinstance(err, UnexpectedCharacters):
        ch = text[err.pos_in_stream] if err.pos_in_stream < len(text) else "?"
        msg = f"unexpected character '{ch}'"
        if ch == "'":
            hint = 'strings use double quotes: "like this"'
        elif ch == '"':
            msg = "unterminated string"
            hint = 'a string ends with " on the same line'
    elif isinstance(err, UnexpectedToken):
        tok = err.token
        # Inside (...) newlines are whitespace, so a missing ')' makes the parser read the
        # following lines as arguments and fail far away: point at the bracket instead.
        open_bracket = _unclosed_bracket(text)
        tok_pos = len(text) if tok.type == "$END" else (tok.start_pos or 0)
        if open_bracket is not None and open_bracket[1] < tok_pos and \
                (tok.type == "$END" or (tok.line or 0) > open_bracket[2]):
            bracket, _, b_line, b_col = open_bracket
            close = ")" if bracket == "(" else "]"
            return NetcError(f"'{bracket}' is never closed", Span(path, b_line, b_col, b_line, b_col + 1),
                             f"add the missing '{close}': until it closes, the lines after it are read "
                             "as part of this statement")
        if tok.type == "$END":
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
        expected = set(err.expected) - {"$END"} if tok.type != "$END" else set(err.expected)
        msg = f"unexpected {_token_words(tok)}; expected {_words(expected)}"
        if tok.type == "_NL" and "RPAR" in err.expected:
            msg = f"unclosed '(': expected {_words(expected)} before the end of the line"
        if tok.type == "$END" and "RBRACE" in err.expected:
            hint = "a module body ends with '}' on a line of its own"
        elif tok.type == "EQUAL" and "COLON" in err.expected:
            hint = "a layer's label is followed by ':', e.g. conv1: Convolution(20, kernel=5)"
        elif tok.type == "EQUAL":
            hint = "a keyword argument is written name=value, e.g. kernel=5"
        elif tok.type == "NAME" and "COMMA" in err.expected:
            hint = "separate arguments with commas"
        elif tok.type == "COLON" and tok.line is not None:
            hint = "each statement goes on its own line"
    elif isinstance(err, UnexpectedEOF):
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
        msg = f"unexpected end of file; expected {_words(err.expected)}"
    else:  # pragma: no cover - lark has no other kinds today
        msg = str(err).splitlines()[0]
    return NetcError(msg, Span(path, line, col), hint)


def _span(path: str, meta_or_token) -> Span:
    m = meta_or_token
    return Span(path, m.line, m.column, getattr(m, "end_line", None), getattr(m, "end_column", None))


class _ToAst(Transformer):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _s(self, meta):
        return _span(self.path, meta)

    # expressions
    def number(self, children):
        tok = children[0]
        text = tok.value
        value = float(text) if any(c in text for c in ".eE") else int(text)
        return ast.Number(self._s(tok), value)

    def string(self, children):
        tok = children[0]
        return ast.String(self._s(tok), _unquote(tok.value))

    def ident(self, children):
        tok = children[0]
        return ast.Ident(self._s(tok), tok.value)

    @v_args(meta=True)
    def func(self, meta, children):
        name, args = children
        return ast.Call(self._s(meta), name.value, tuple(args or ()))

    @v_args(meta=True)
    def list(self, meta, children):
        return ast.ListExpr(self._s(meta), tuple(c for c in children if c is not None))

    def _binop(op):  # noqa: N805 - a small factory used at class creation
        @v_args(meta=True)
        def build(self, meta, children):
            return ast.BinOp(self._s(meta), op, children[0], children[1])
        return build

    add = _binop("+")
    sub = _binop("-")
    mul = _binop("*")
    div = _binop("/")
    floordiv = _binop("//")
    mod = _binop("%")

    @v_args(meta=True)
    def neg(self, meta, children):
        return ast.Neg(self._s(meta), children[0])

    # arguments
    def args(self, children):
        return tuple(c for c in children if c is not None)

    @v_args(meta=True)
    def keyword_arg(self, meta, children):
        return ast.Arg(children[0].value, children[1], self._s(meta))

    @v_args(meta=True)
    def positional_arg(self, meta, children):
        return ast.Arg(None, children[0], self._s(meta))

    # statements
    def name(self, children):
        tok = children[0]
        text = _unquote(tok.value) if tok.type == "STRING" else tok.value
        return ast.Name(text, self._s(tok))

    def phase(self, children):
        tok = children[0]
        return _Phase(ast.Name(tok.value, self._s(tok)))

    @v_args(meta=True)
    def link(self, meta, children):
        label, type_tok, args, bang = children
        return ast.Link(label, ast.Name(type_tok.value, self._s(type_tok)), tuple(args or ()),
                        bang is not None, self._s(meta))

    @v_args(meta=True)
    def layer_stmt(self, meta, children):
        links = tuple(c for c in children if isinstance(c, ast.Link))
        tops = tuple(c for c in children if isinstance(c, ast.Name))
        phases = tuple(c.name for c in children if isinstance(c, _Phase))
        return ("layer", ast.LayerStatement(links, tops, phases, self._s(meta)))

    @v_args(meta=True)
    def net_decl(self, meta, children):
        return ("net", children[0])

    @v_args(meta=True)
    def input_decl(self, meta, children):
        name, shape, *phases = children
        return ("input", ast.InputDecl(name, shape, tuple(p.name for p in phases), self._s(meta)))

    @v_args(meta=True)
    def solver_decl(self, meta, children):
        tok, args = children
        return ("solver", ast.SolverDecl(ast.Name(tok.value, self._s(tok)), tuple(args or ()), self._s(meta)))

    def module_params(self, children):
        return tuple(c for c in children if c is not None)

    def module_param(self, children):
        tok, default = children
        return ast.ModuleParam(ast.Name(tok.value, self._s(tok)), default)

    @v_args(meta=True)
    def module_def(self, meta, children):
        tok, params, in_shape, _arrow, out_shape, *body = children
        stmts = tuple(b[1] for b in body)
        return ("module", ast.ModuleDef(ast.Name(tok.value, self._s(tok)), tuple(params or ()),
                                        in_shape, out_shape, stmts, self._s(meta)))


class _Phase:
    """A phase tag (`@train`) while the Transformer sorts a statement's parts."""
    def __init__(self, name: ast.Name):
        self.name = name


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def _unquote(text: str) -> str:
    # escapes are undone one by one: unicode_escape on the whole body would mangle
    # non-ASCII text ("café" became "cafÃ©")
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), text[1:-1])


def parse_text(text: str, path: str = "<string>") -> ast.Program:
    if not text.endswith("\n"):
        text += "\n"
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, path, text) from None
    try:
        items = _ToAst(path).transform(tree).children
    except VisitError as err:
        if isinstance(err.orig_exc, NetcError):
            raise err.orig_exc from None
        raise
    net_name, solver = None, None
    statements, modules = [], {}
    for item in items:
        kind = item[0]
        if kind == "net":
            if net_name is not None:
                raise NetcError("the net is named twice", item[1].span,
                                f"it was already named '{net_name.text}' at {net_name.span}")
            net_name = item[1]
        elif kind == "input":
            statements.append(item[1])
        elif kind == "layer":
            statements.append(item[1])
        elif kind == "module":
            mod = item[1]
            if mod.name.text in modules:
                raise NetcError(f"module '{mod.name.text}' is defined twice", mod.name.span,
                                f"first defined at {modules[mod.name.text].name.span}")
            modules[mod.name.text] = mod
        elif kind == "solver":
            if solver is not None:
                raise NetcError("a net has one solver block", item[1].span,
                                f"the first is at {solver.span}")
            solver = item[1]
    return ast.Program(path, net_name, tuple(statements), modules, solver)


def parse_file(path: str) -> ast.Program:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise NetcError(f"no such file: {path}", None, "check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise NetcError(f"cannot read {path}: {err}") from None
    return parse_text(text, path)
