"""Reading Caffe files: net and solver prototxts (text) and .caffemodel (binary).

Parsing itself is protobuf's (text_format / ParseFromString against our own
caffe.proto). What this module adds is *location*: protobuf's parse tree keeps
no positions, so a small scanner walks the same text to find where each layer
block and each field starts. Those spans let later passes report a mistake at
the line the user wrote, and let parse errors name the block they happened in
(`unknown field 'kernel_sise' in convolution_param`) instead of a protobuf
message type.

Every mistake becomes a NetcError with a Span; nothing here prints or exits.

Loading also normalises old formats the way Caffe does when it reads them:
V1 `layers { type: CONVOLUTION blobs_lr: 1 }` blocks become current `layer`
entries, and a solver's deprecated `solver_type` enum becomes its `type`
string. Legacy net inputs (`input:` / `input_dim:` / `input_shape`) are left
in place on purpose: turning them into Input layers is the caller's job, and
it needs `input_spans` to report problems with them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from google.protobuf import descriptor_pool, message, text_format

from netc.caffe import caffe_pb2
from netc.errors import NetcError, Span, did_you_mean
from netc.fileio import open_input

__all__ = [
    "PrototxtSource",
    "load_prototxt",
    "load_solver_prototxt",
    "load_caffemodel",
    "is_solver_prototxt",
    "upgrade_v1_net",
    "V1_TYPE_NAMES",
]


# ---------------------------------------------------------------------------
# Scanning prototxt text for positions
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tok:
    kind: str   # "ident", "string", "number" or "punct"
    text: str
    line: int   # 1-based
    col: int    # 1-based, in characters (tabs count as one, like protobuf)


_IDENT_START = re.compile(r"[A-Za-z_]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[-+]?(?:\d|\.\d)[A-Za-z0-9_.+-]*")


def _tokenize(text: str) -> list[_Tok]:
    """Split prototxt text into tokens, skipping whitespace and # comments.

    Deliberately lenient: it must work on broken files too, because the
    error messages for them are built from its output.
    """
    toks: list[_Tok] = []
    # Lines are split on "\n" only, as protobuf counts them.
    for lineno, line in enumerate(text.split("\n"), start=1):
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if c.isspace():
                i += 1
            elif c == "#":
                break
            elif c in "\"'":
                # Strings never span lines in the text format; an unterminated
                # one simply runs to the end of the line.
                j = i + 1
                while j < n and line[j] != c:
                    j += 2 if line[j] == "\\" else 1
                j = min(j + 1, n)
                toks.append(_Tok("string", line[i:j], lineno, i + 1))
                i = j
            elif _IDENT_START.match(c):
                m = _IDENT.match(line, i)
                toks.append(_Tok("ident", m.group(), lineno, i + 1))
                i = m.end()
            elif (m := _NUMBER.match(line, i)) is not None:
                toks.append(_Tok("number", m.group(), lineno, i + 1))
                i = m.end()
            else:
                toks.append(_Tok("punct", c, lineno, i + 1))
                i += 1
    return toks


_OPEN = "{<"
_CLOSE = "}>"


def _unquote(s: str) -> str:
    """The value of a scanned string token (good enough for names)."""
    body = s[1:-1] if len(s) >= 2 and s[-1] == s[0] else s[1:]
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return body


@dataclass
class _Block:
    """A `name { ... }` block found by the scanner."""
    name: str
    tok: _Tok                      # the name token (or the `{` in list syntax)
    depth: int                     # 0 for top-level blocks
    # Every field written inside the block, in text order: (name, line, column, depth),
    # depth 1 for the block's own fields, more inside nested blocks.
    fields: list[tuple[str, int, int, int]] = field(default_factory=list)
    layer_name: str | None = None  # the block's own `name: "..."`, if any


@dataclass
class _Scan:
    toks: list[_Tok]
    open_before: list[tuple[_Block, ...]]        # enclosing blocks at each token
    top_blocks: list[_Block]                     # blocks at depth 0, in order
    top_fields: list[tuple[str, _Tok]]           # every depth-0 field name
    inputs: list[tuple[str, _Tok]]               # legacy `input: "name"`
    unclosed: list[_Block]                       # still open at end of file


def _is_field_name(toks: list[_Tok], i: int) -> bool:
    """An identifier names a field when `:`, `{`, `<` or `[` follows it."""
    if toks[i].kind != "ident" or i + 1 >= len(toks):
        return False
    nxt = toks[i + 1]
    return nxt.kind == "punct" and nxt.text in ":{<["


def _after_colon(toks: list[_Tok], i: int) -> int:
    """Index of the token after field name toks[i] and its optional `:`."""
    j = i + 1
    if j < len(toks) and toks[j].kind == "punct" and toks[j].text == ":":
        j += 1
    return j


def _is_punct(toks: list[_Tok], i: int, chars: str) -> bool:
    return 0 <= i < len(toks) and toks[i].kind == "punct" and toks[i].text in chars


def _scan(text: str) -> _Scan:
    toks = _tokenize(text)
    stack: list[_Block] = []
    open_before: list[tuple[_Block, ...]] = []
    top_blocks: list[_Block] = []
    top_fields: list[tuple[str, _Tok]] = []
    inputs: list[tuple[str, _Tok]] = []
    # Blocks announced by `name {` / `name: {`, keyed by the brace's index.
    pending: dict[int, _Block] = {}
    # Repeated-message list syntax `layer: [ {..}, {..} ]`: each brace directly
    # inside the brackets opens one element named after the field.
    pending_lists: dict[int, str] = {}
    lists: list[tuple[str, int]] = []            # (field name, stack depth)

    for i, t in enumerate(toks):
        open_before.append(tuple(stack))
        if t.kind == "punct":
            if t.text in _CLOSE:
                if stack:
                    stack.pop()
            elif t.text in _OPEN:
                blk = pending.pop(i, None)
                if blk is None:
                    in_list = lists and lists[-1][1] == len(stack)
                    blk = _Block(lists[-1][0] if in_list else "?", t, len(stack))
                if not stack:
                    top_blocks.append(blk)
                stack.append(blk)
            elif t.text == "[" and i in pending_lists:
                lists.append((pending_lists.pop(i), len(stack)))
            elif t.text == "]" and lists and lists[-1][1] == len(stack):
                lists.pop()
            continue
        if not _is_field_name(toks, i):
            continue
        j = _after_colon(toks, i)
        has_string_value = j < len(toks) and toks[j].kind == "string"
        if not stack:
            top_fields.append((t.text, t))
            if t.text == "input" and has_string_value:
                inputs.append((_unquote(toks[j].text), t))
        else:
            stack[0].fields.append((t.text, t.line, t.col, len(stack)))
            if len(stack) == 1 and t.text == "name" and has_string_value \
                    and stack[0].layer_name is None:
                stack[0].layer_name = _unquote(toks[j].text)
        if _is_punct(toks, j, _OPEN):
            pending[j] = _Block(t.text, t, len(stack))
        elif _is_punct(toks, j, "["):
            pending_lists[j] = t.text
    return _Scan(toks, open_before, top_blocks, top_fields, inputs, list(stack))


def _tok_index_at(scan: _Scan, line: int, col: int) -> int | None:
    """The token starting at, or else the first one after, a position."""
    for i, t in enumerate(scan.toks):
        if (t.line, t.col) >= (line, col):
            return i
    return None


def _open_blocks_at(scan: _Scan, line: int, col: int) -> list[_Block]:
    """The blocks enclosing a position, outermost first."""
    i = _tok_index_at(scan, line, col)
    return list(scan.open_before[i]) if i is not None else list(scan.unclosed)


def _field_before(scan: _Scan, i: int | None) -> str | None:
    """The field whose value token i is (`name: <i>`, `dim: [1, <i>]`)."""
    if i is None:
        return None
    for j in range(i - 1, -1, -1):
        if _is_field_name(scan.toks, j):
            return scan.toks[j].text
        if _is_punct(scan.toks, j, "{}<>"):
            return None
    return None


def _tok_span(path: str, t: _Tok) -> Span:
    return Span(path, t.line, t.col, t.line, t.col + len(t.text))


# ---------------------------------------------------------------------------
# The located net
# ---------------------------------------------------------------------------

@dataclass
class PrototxtSource:
    """A parsed net prototxt together with where things are in its text."""
    path: str
    text: str
    # Normalised: V1 `layers` upgraded to `layer`; legacy input fields kept.
    net: caffe_pb2.NetParameter
    # One per net.layer entry: the `layer` (or `layers`) word opening it.
    layer_spans: list[Span]
    # Each legacy `input: "name"` line, keyed by the input's name.
    input_spans: dict[str, Span] = field(default_factory=dict)
    # Per layer, every field written inside it: (name, line, column).
    _layer_fields: list[list[tuple[str, int, int, int]]] = field(
        default_factory=list, repr=False, compare=False)

    def field_span(self, layer_index: int, field: str) -> Span:
        """Where `field` is written inside a layer: the shallowest occurrence, so
        the layer's own `type:` wins over a filler's `type:` written before it;
        nested blocks count (kernel_size lives in convolution_param). The layer's
        own span when the layer does not write it (a default is reported there)."""
        written = self._layer_fields[layer_index] if self._layer_fields else []
        matches = [(depth, line, col) for name, line, col, depth in written if name == field]
        if not matches:
            return self.layer_spans[layer_index]
        _, line, col = min(matches)
        return Span(self.path, line, col, line, col + len(field))


# ---------------------------------------------------------------------------
# V1 -> current layer upgrade
# ---------------------------------------------------------------------------

# Caffe's V2 type string for each V1 enum value.
V1_TYPE_NAMES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}
# The reverse, for hints when a V2 type string is written in a V1 block.
_V2_TO_V1 = {v2: v1 for v1, v2 in V1_TYPE_NAMES.items() if v2}

_LAYER_FIELDS = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
# Preprocessing fields that V1 data layers kept in their own *_param and
# current Caffe keeps in transform_param.
_LEGACY_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _upgrade_v1_layer(old: caffe_pb2.V1LayerParameter, new: caffe_pb2.LayerParameter):
    new.name = old.name
    new.bottom.extend(old.bottom)
    new.top.extend(old.top)
    new.type = V1_TYPE_NAMES[caffe_pb2.V1LayerParameter.LayerType.Name(old.type)]
    new.include.extend(old.include)
    new.exclude.extend(old.exclude)
    new.blobs.extend(old.blobs)
    new.loss_weight.extend(old.loss_weight)

    # V1 spread per-blob settings over four parallel lists; V2 has one
    # ParamSpec per blob. Only the values that were written are set, so the
    # ParamSpec defaults (lr_mult 1, decay_mult 1) still apply to the rest.
    n = max(len(old.param), len(old.blob_share_mode), len(old.blobs_lr), len(old.weight_decay))
    for i in range(n):
        spec = new.param.add()
        if i < len(old.param):
            spec.name = old.param[i]
        if i < len(old.blob_share_mode):
            spec.share_mode = old.blob_share_mode[i]
        if i < len(old.blobs_lr):
            spec.lr_mult = old.blobs_lr[i]
        if i < len(old.weight_decay):
            spec.decay_mult = old.weight_decay[i]

    # The *_param sub-messages are the same message types in both formats.
    for fd, value in old.ListFields():
        if fd.message_type is not None and fd.name.endswith("_param") and fd.name in _LAYER_FIELDS:
            getattr(new, fd.name).CopyFrom(value)

    # V1 data layers could carry their preprocessing in data_param /
    # image_data_param; it now lives in transform_param.
    for holder_name in ("data_param", "image_data_param"):
        if not new.HasField(holder_name):
            continue
        holder = getattr(new, holder_name)
        for fname in _LEGACY_TRANSFORM_FIELDS:
            if holder.HasField(fname):
                if not new.transform_param.HasField(fname):
                    setattr(new.transform_param, fname, getattr(holder, fname))
                holder.ClearField(fname)


def upgrade_v1_net(net: caffe_pb2.NetParameter) -> bool:
    """Rewrite V1 `layers` entries as `layer` entries, in place.

    Returns whether anything was upgraded. A net that uses both forms is
    ambiguous (Caffe refuses it too); the caller reports it with a location.
    """
    if not net.layers:
        return False
    if net.layer:
        raise ValueError("both 'layer' and 'layers'")
    for old in net.layers:
        _upgrade_v1_layer(old, net.layer.add())
    net.ClearField("layers")
    return True


# ---------------------------------------------------------------------------
# Turning protobuf's parse errors into located, readable ones
# ---------------------------------------------------------------------------

_POOL = descriptor_pool.Default()

_RE_POSITION = re.compile(r"^\d+:\d+ : ")
_RE_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]*)"')
_RE_DUPLICATE = re.compile(r'Message type "([\w.]+)" should not have multiple "([^"]*)" fields')
_RE_BAD_ENUM = re.compile(r'Enum type "([\w.]+)" has no value (named|with number) "?([^".]*)"?')


def _clean_parse_message(err: text_format.ParseError, text: str) -> str:
    """protobuf's message without its `L:C : 'source line': ` prefix."""
    msg = _RE_POSITION.sub("", str(err), count=1)
    line_no = err.GetLine() or 0
    lines = text.split("\n")
    if 1 <= line_no <= len(lines):
        quoted = f"'{lines[line_no - 1]}': "
        if msg.startswith(quoted):
            msg = msg[len(quoted):]
    return msg[:-1] if msg.endswith(".") else msg


def _message_fields(full_name: str) -> list[str]:
    try:
        return [f.name for f in _POOL.FindMessageTypeByName(full_name).fields]
    except KeyError:
        return []


def _where(blocks: list[_Block], top: str) -> str:
    """A readable name for the innermost enclosing block."""
    if not blocks:
        return top
    inner = blocks[-1]
    if inner.depth == 0 and inner.name in ("layer", "layers") and inner.layer_name:
        return f"{inner.name} '{inner.layer_name}'"
    return inner.name


def _field_descriptor(root, blocks: list[_Block], name: str | None):
    """Follow the enclosing block names from the root message to `name`."""
    desc = root
    for blk in blocks:
        fd = desc.fields_by_name.get(blk.name)
        if fd is None or fd.message_type is None:
            return None
        desc = fd.message_type
    return desc.fields_by_name.get(name) if name else None


# What each protobuf scalar type accepts, in the user's terms.
_EXPECTED = {
    "TYPE_UINT32": "a non-negative integer", "TYPE_UINT64": "a non-negative integer",
    "TYPE_INT32": "an integer", "TYPE_INT64": "an integer",
    "TYPE_FLOAT": "a number", "TYPE_DOUBLE": "a number",
    "TYPE_BOOL": "true or false", "TYPE_STRING": "a quoted string",
    "TYPE_BYTES": "a quoted string",
}


def _expected_value(fd) -> str | None:
    if fd is None:
        return None
    if fd.enum_type is not None:
        return "one of " + ", ".join(v.name for v in fd.enum_type.values)
    for type_name, words in _EXPECTED.items():
        if fd.type == getattr(fd, type_name):
            return words
    return None


def _param_blocks_with(field_name: str) -> list[str]:
    """The *_param blocks of a layer that have a field of this name."""
    layer = caffe_pb2.LayerParameter.DESCRIPTOR
    return [f.name for f in layer.fields
            if f.message_type is not None and f.name.endswith("_param")
            and field_name in f.message_type.fields_by_name]


def _translate_parse_error(err: text_format.ParseError, path: str, text: str,
                           scan: _Scan, root) -> NetcError:
    """A NetcError saying what protobuf's ParseError means, and where."""
    top = "the solver" if root is caffe_pb2.SolverParameter.DESCRIPTOR else "the net"
    line, col = err.GetLine() or 1, err.GetColumn() or 1
    raw = _clean_parse_message(err, text)
    blocks = _open_blocks_at(scan, line, col)
    where = _where(blocks, top)
    tok_i = _tok_index_at(scan, line, col)
    tok = scan.toks[tok_i] if tok_i is not None else None
    if tok is not None and (tok.line, tok.col) != (line, col):
        tok = None
    span = _tok_span(path, tok) if tok else Span(path, line, col)

    # A block left open at the end of the file: protobuf reports the last
    # token, but the useful place is the block that was never closed.
    last = scan.toks[-1] if scan.toks else None
    if scan.unclosed and (last is None or (line, col) >= (last.line, last.col)):
        blk = scan.unclosed[-1]
        return NetcError(
            f"'{blk.name}' block is never closed: missing '}}'",
            _tok_span(path, blk.tok),
            f"add a '}}' to close the '{blk.name}' block opened at line {blk.tok.line}")

    if (m := _RE_NO_FIELD.search(raw)) is not None:
        msg_type, name = m.groups()
        if name in ("layer", "layers") and msg_type == "caffe.LayerParameter":
            # `layer` is only valid at top level, so the block around it was
            # left open.
            opener = blocks[0] if blocks else None
            return NetcError(
                f"'{name}' inside {_where(blocks[:1], top)}: a '}}' is missing above", span,
                f"the '{opener.name}' block opened at line {opener.tok.line} "
                f"is not closed before line {line}" if opener else None)
        if name == "layer" and msg_type == "caffe.V1LayerParameter":
            return NetcError(
                "the V0 layer format (`layers { layer { ... } }`) is not supported",
                span, "upgrade the file with Caffe's upgrade_net_proto_text tool")
        hint = None
        if msg_type == "caffe.LayerParameter":
            owners = _param_blocks_with(name)
            if owners:
                shown = " or ".join(f"{o} {{ ... }}" for o in owners[:3])
                hint = f"'{name}' belongs inside a parameter block: {shown}"
        if hint is None:
            hint = did_you_mean(name, _message_fields(msg_type))
        return NetcError(f"unknown field '{name}' in {where}", span, hint)

    if (m := _RE_DUPLICATE.search(raw)) is not None:
        name = m.group(2)
        return NetcError(f"'{name}' is given more than once in {where}", span,
                         f"'{name}' takes a single value; remove the extra one")

    fname = _field_before(scan, tok_i) if tok is not None else None
    fd = _field_descriptor(root, blocks, fname)

    if (m := _RE_BAD_ENUM.search(raw)) is not None:
        enum_name, _, value = m.groups()
        try:
            values = [v.name for v in _POOL.FindEnumTypeByName(enum_name).values]
        except KeyError:
            values = []
        hint = None
        if enum_name == "caffe.V1LayerParameter.LayerType" and value in _V2_TO_V1:
            hint = (f"legacy `layers` blocks take an unquoted enum type: "
                    f"type: {_V2_TO_V1[value]} (or write this as a `layer` block)")
        if hint is None:
            hint = did_you_mean(value, values)
        if hint is None and values:
            hint = "expected one of " + ", ".join(values)
        return NetcError(f"invalid value {value} for '{fname or 'this field'}' in {where}",
                         span, hint)

    if raw.startswith("Expected identifier") and tok is not None and tok.text in _CLOSE:
        return NetcError(f"unexpected '{tok.text}': no block is open here", span,
                         "remove it, or look for a missing '{' above")
    if raw == 'Expected ":"' and tok_i:
        prev = scan.toks[tok_i - 1]
        if tok is not None and tok.text in _OPEN:
            expected = _expected_value(_field_descriptor(root, blocks, prev.text))
            return NetcError(f"'{prev.text}' is not a block in {where}", span,
                             f"write {prev.text}: <value>"
                             + (f"; it takes {expected}" if expected else ""))
        return NetcError(f"missing ':' after '{prev.text}' in {where}", span,
                         f"write {prev.text}: {tok.text if tok else '...'}")
    if raw.startswith("String missing ending quote"):
        return NetcError(f"unterminated string in {where}", span,
                         "close it with a matching quote on the same line")
    if raw == 'Expected "{"' and fname:
        return NetcError(f"'{fname}' is a block in {where}, not a single value", span,
                         f"write {fname} {{ ... }}")
    if raw.startswith("Expected string") and fname == "type" and tok is not None \
            and tok.text in V1_TYPE_NAMES:
        return NetcError(
            f"layer type must be a quoted string in {where}", span,
            f"write type: \"{V1_TYPE_NAMES[tok.text]}\"; unquoted {tok.text} is the "
            "legacy `layers { ... }` form")
    if fname is not None and tok is not None and tok.kind != "punct":
        expected = _expected_value(fd)
        hint = f"'{fname}' takes {expected}" if expected else raw
        if expected and "range" in raw:
            hint += f" ({raw[0].lower()}{raw[1:]})"
        return NetcError(f"invalid value {tok.text} for '{fname}' in {where}", span, hint)
    return NetcError(f"syntax error in {where}: {raw}", span)


def _read_bytes(path: str, what: str) -> bytes:
    with open_input(path, what) as f:
        return f.read()


def _read_text(path: str, what: str) -> str:
    data = _read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise NetcError(
            f"{what} '{path}' is not a text file",
            hint="binary .caffemodel files hold weights; pass the .prototxt "
                 "that defines the net here") from None


def _parse_text(text: str, msg: message.Message, path: str, scan: _Scan) -> None:
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as err:
        raise _translate_parse_error(err, path, text, scan, msg.DESCRIPTOR) from None


# ---------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------

# Top-level fields that only a solver has; their presence marks a solver file.
_SOLVER_MARKERS = frozenset({
    "net", "train_net", "test_net", "net_param", "train_net_param",
    "test_net_param", "base_lr", "max_iter", "lr_policy",
})


def is_solver_prototxt(text: str) -> bool:
    """Whether text looks like a solver definition rather than a net.

    A heuristic on top-level field names, so it works on files that do not
    parse: some solver-only field (base_lr, net, max_iter, ...) and no layer
    blocks.
    """
    scan = _scan(text)
    names = {name for name, _ in scan.top_fields}
    return bool(names & _SOLVER_MARKERS) and not (names & {"layer", "layers"})


def _first_top_field(scan: _Scan, names) -> _Tok | None:
    for name, tok in scan.top_fields:
        if name in names:
            return tok
    return None


def load_prototxt(path: str) -> PrototxtSource:
    """Parse a net prototxt, upgrading V1 layers, and locate its layers."""
    path = str(path)
    text = _read_text(path, "net file")
    scan = _scan(text)

    if is_solver_prototxt(text):
        marker = _first_top_field(scan, _SOLVER_MARKERS)
        net_file = _solver_net_file(scan)
        hint = (f"pass the net it trains instead: {net_file}" if net_file
                else "pass the net definition (.prototxt with layer blocks) instead")
        raise NetcError(f"'{path}' is a solver definition, not a net",
                        _tok_span(path, marker) if marker else None, hint)

    net = caffe_pb2.NetParameter()
    _parse_text(text, net, path, scan)

    layer_blocks = [b for b in scan.top_blocks if b.name in ("layer", "layers")]
    if net.layer and net.layers:
        first_v1 = next((b for b in layer_blocks if b.name == "layers"), None)
        raise NetcError(
            "the net mixes current `layer` blocks with legacy `layers` blocks",
            _tok_span(path, first_v1.tok) if first_v1 else None,
            "write every layer in one form, preferably `layer { type: \"...\" }`")
    upgrade_v1_net(net)

    spans = [_tok_span(path, b.tok) for b in layer_blocks]
    fields = [b.fields for b in layer_blocks]
    # The scanner and protobuf should agree on the layer count; if some exotic
    # syntax makes them disagree, keep one span per layer rather than fail.
    fallback = spans[-1] if spans else Span(path, 1, 1)
    while len(spans) < len(net.layer):
        spans.append(fallback)
        fields.append([])
    del spans[len(net.layer):], fields[len(net.layer):]

    inputs = {}
    for name, tok in scan.inputs:
        inputs.setdefault(name, _tok_span(path, tok))
    return PrototxtSource(path, text, net, spans, inputs, fields)


def _solver_net_file(scan: _Scan) -> str | None:
    """The `net:` / `train_net:` file a solver names, for hints."""
    toks = scan.toks
    for i, t in enumerate(toks[:-2]):
        if t.kind == "ident" and t.text in ("net", "train_net") \
                and toks[i + 1].text == ":" and toks[i + 2].kind == "string":
            return _unquote(toks[i + 2].text)
    return None


# Strings Caffe's solver upgrade gives each deprecated solver_type.
_SOLVER_TYPE_NAMES = {
    "SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam",
}


def load_solver_prototxt(path: str) -> tuple[caffe_pb2.SolverParameter, dict[str, Span]]:
    """Parse a solver prototxt; returns the solver and where each top-level field
    is first written (for located errors about its values).

    Inline nets (net_param, train_net_param, test_net_param) get the V1
    upgrade, and a deprecated `solver_type` enum is turned into `type`.
    """
    path = str(path)
    text = _read_text(path, "solver file")
    scan = _scan(text)
    top_names = {name for name, _ in scan.top_fields}
    if top_names & {"layer", "layers"} and not top_names & _SOLVER_MARKERS:
        first = _first_top_field(scan, {"layer", "layers"})
        raise NetcError(f"'{path}' is a net definition, not a solver",
                        _tok_span(path, first) if first else None,
                        "pass the solver prototxt (with base_lr, max_iter, net: ...) here")

    solver = caffe_pb2.SolverParameter()
    _parse_text(text, solver, path, scan)

    def at(names) -> Span | None:
        tok = _first_top_field(scan, names)
        return _tok_span(path, tok) if tok else None

    inline = []
    if solver.HasField("net_param"):
        inline.append(("net_param", solver.net_param))
    if solver.HasField("train_net_param"):
        inline.append(("train_net_param", solver.train_net_param))
    inline.extend(("test_net_param", n) for n in solver.test_net_param)
    for name, net in inline:
        try:
            upgrade_v1_net(net)
        except ValueError:
            raise NetcError(
                f"{name} mixes current `layer` blocks with legacy `layers` blocks",
                at({name}), "write every layer in one form") from None

    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise NetcError("solver_type and type are both given", at({"solver_type"}),
                            "solver_type is the deprecated spelling; keep only type")
        solver.type = _SOLVER_TYPE_NAMES[
            caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)]
        solver.ClearField("solver_type")
    spans: dict[str, Span] = {}
    for name, tok in scan.top_fields:
        spans.setdefault(name, _tok_span(path, tok))
    return solver, spans


def load_caffemodel(path: str) -> caffe_pb2.NetParameter:
    """Parse a binary .caffemodel (a NetParameter with blobs).

    V1 layers are upgraded; blobs keep whichever of `shape` or the legacy
    num/channels/height/width they were stored with.
    """
    path = str(path)
    data = _read_bytes(path, "weights file")

    looks_textual = _looks_like_prototxt(data)
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except message.DecodeError as e:
        hint = ("this looks like a text prototxt; weights must be the binary "
                ".caffemodel Caffe writes" if looks_textual
                else "the file is truncated or corrupt; copy or download it again")
        raise NetcError(f"weights file '{path}' is not a valid .caffemodel ({e})",
                        hint=hint) from None

    if not net.layer and not net.layers:
        hint = ("this looks like a text prototxt; weights must be the binary "
                ".caffemodel Caffe writes" if looks_textual else None)
        raise NetcError(f"weights file '{path}' contains no layers", hint=hint)
    if any(not l.name and l.type == 0 for l in net.layers):
        raise NetcError(f"weights file '{path}' uses Caffe's V0 layer format, "
                        "which netc does not read",
                        hint="upgrade it with Caffe's upgrade_net_proto_binary tool")
    try:
        upgrade_v1_net(net)
    except ValueError:
        raise NetcError(f"weights file '{path}' mixes current and legacy (V1) layers") from None
    return net


def _looks_like_prototxt(data: bytes) -> bool:
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(re.search(r"^\s*(name|layers?|input)\s*[:{]", text, re.MULTILINE))
