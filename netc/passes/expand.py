"""AST → IR for one phase: expand modules, resolve blob names, check parameters.

Data flow: a link reads the previous link's output (the "current" blob) unless its
leading positional arguments name input blobs. Inside a module, `in` is the
instance's input, and every layer and blob is named under the instance
(`inception_3a/1x1`); naming the instance elsewhere means its output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from netc.errors import NetcError, Span, did_you_mean, nearest
from netc.ir import Layer, Net, ParamSpec, ShapeContract, SolverSpec, frozen
from netc.lang import ast
from netc.lang.values import CallValue, Symbol, evaluate
from netc.layers import REGISTRY, LayerType
from netc.layers.base import Param, ParamError, coerce, resolve_paths
from netc.train.solver_config import LR_POLICIES, LR_POLICY_FIELDS, SOLVER_FIELDS, SOLVER_TYPES, solver_field

PHASES = ("train", "test")
# Keywords every layer accepts: Caffe's ParamSpec fields and loss_weight.
COMMON_KEYWORDS = ("lr_mult", "decay_mult", "share", "loss_weight")
MODULE_INPUT = "in"
MAX_MODULE_DEPTH = 32


@dataclass
class _Scope:
    prefix: str = ""                      # "inception_3a/" inside an instance
    env: dict[str, Any] = field(default_factory=dict)   # module parameter values
    input: str | None = None              # the blob `in` stands for
    trace: tuple[tuple[str, Span], ...] = ()
    depth: int = 0
    current: str | None = None            # the blob an implicit link reads


class _Expander:
    def __init__(self, program: ast.Program, phase: str):
        self.program = program
        self.phase = phase
        self.base_dir = os.path.dirname(os.path.abspath(program.file))
        self.layers: list[Layer] = []
        self.blobs: dict[str, Span | None] = {}     # blob → where it was first produced
        self.aliases: dict[str, str] = {}           # instance name → its output blob
        self.layer_names: dict[str, Span | None] = {}
        self.contracts: list[ShapeContract] = []
        self.auto_counts: dict[str, int] = {}
        self.later_names = _names_defined(program)

    # --- errors ---------------------------------------------------------------------
    @staticmethod
    def error(message: str, span: Span | None, scope: _Scope, hint: str | None = None) -> NetcError:
        return NetcError(message, span, hint, scope.trace)

    # --- statements -----------------------------------------------------------------
    def in_phase(self, phases: tuple[ast.Name, ...], scope: _Scope) -> bool:
        for tag in phases:
            if tag.text not in PHASES:
                raise self.error(f"unknown phase '{tag.text}'", tag.span, scope,
                                 "phases are @train and @test")
        return not phases or any(tag.text == self.phase for tag in phases)

    def run(self) -> Net:
        scope = _Scope()
        for stmt in self.program.statements:
            if isinstance(stmt, ast.InputDecl):
                self.input_decl(stmt, scope)
            else:
                self.statement(stmt, scope)
        name = self.program.net_name.text if self.program.net_name else \
            os.path.splitext(os.path.basename(self.program.file))[0]
        return Net(name=name, phase=self.phase, layers=tuple(self.layers), source=self.program.file,
                   origin="net", solver=self.solver(), contracts=tuple(self.contracts))

    def input_decl(self, decl: ast.InputDecl, scope: _Scope) -> None:
        if not self.in_phase(decl.phases, scope):
            return
        dims = evaluate(decl.shape, scope.env)
        for dim, expr in zip(dims, decl.shape.items):
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise self.error(f"input dimensions must be positive integers, not {_show(dim)}",
                                 expr.span, scope)
        if not dims:
            raise self.error("an input needs a shape, e.g. [64, 1, 28, 28]", decl.shape.span, scope)
        name = decl.name.text
        self.add_layer(Layer(name=name, type="Input", bottoms=(), tops=(name,),
                             params=frozen({"shape": (tuple(dims),)}),
                             param_spans=frozen({"shape": decl.shape.span}), span=decl.name.span),
                       scope, decl.name.span)
        # the flow starts at the first input; `input label [64]` after `input data` must not redirect it
        if scope.current is None:
            scope.current = name

    def statement(self, stmt: ast.LayerStatement, scope: _Scope) -> None:
        if not self.in_phase(stmt.phases, scope):
            return
        chain_label: str | None = None
        for i, link in enumerate(stmt.links):
            tops = stmt.tops if i == len(stmt.links) - 1 else ()
            if link.label is not None:
                chain_label = link.label.text
            if link.type.text in self.program.modules:
                self.instantiate(link, tops, scope)
            else:
                self.layer(link, tops, chain_label, scope)

    # --- names ----------------------------------------------------------------------
    def lookup_blob(self, name: str, scope: _Scope) -> str | None:
        """The blob a name stands for here, or None."""
        for candidate in ((scope.prefix + name, name) if scope.prefix else (name,)):
            candidate = self.aliases.get(candidate, candidate)
            if candidate in self.blobs:
                return candidate
        return None

    def resolve_blob(self, name: str, span: Span, scope: _Scope) -> str:
        if name == MODULE_INPUT and scope.depth > 0:
            if scope.input is None:
                raise self.error("this module instance has no input for 'in'", span, scope)
            return scope.input
        found = self.lookup_blob(name, scope)
        if found is not None:
            return found
        visible = list(self.blobs) + list(self.aliases)
        if name in self.later_names and self.later_names[name].line < span.line:
            raise self.error(f"blob '{name}' does not exist in the {self.phase} phase", span, scope,
                             f"it is produced at line {self.later_names[name].line} by a statement "
                             "for another phase")
        if name in self.later_names:
            where = self.later_names[name].line
            raise self.error(f"blob '{name}' is used before it is produced", span, scope,
                             f"'{name}' is this statement's own output; a layer cannot read what it writes"
                             if where == span.line else
                             f"'{name}' is produced later, at line {where}; a layer reads "
                             "only blobs produced above it, so a net cannot loop back")
        hint = did_you_mean(name, [v[len(scope.prefix):] if v.startswith(scope.prefix) and scope.prefix else v
                                   for v in visible])
        if not hint and visible:
            here = sorted({v[len(scope.prefix):] if scope.prefix and v.startswith(scope.prefix) else v
                           for v in visible})
            # with few blobs around, naming them is the quickest help
            hint = f"the blobs here are: {', '.join(here)}" if len(here) <= 8 else None
        raise self.error(f"unknown blob '{name}'", span, scope,
                         hint or ("no blob exists yet: declare an input first, e.g. input data [64, 1, 28, 28]"
                                  if not visible else None))

    def layer_name(self, label: ast.Name | None, chain_label: str | None, type_name: str,
                   scope: _Scope) -> str:
        if label is not None:
            name = scope.prefix + label.text
            if name in self.layer_names:
                first = self.layer_names[name]
                raise self.error(f"layer name '{label.text}' is used twice", label.span, scope,
                                 f"first used at {first}" if first else None)
            return name
        base = scope.prefix + (f"{chain_label}/{type_name.lower()}" if chain_label else type_name.lower())
        n = self.auto_counts.get(base, 0) + 1
        self.auto_counts[base] = n
        name = base if n == 1 and base not in self.layer_names else f"{base}_{n}"
        while name in self.layer_names:
            n += 1
            self.auto_counts[base] = n
            name = f"{base}_{n}"
        return name

    def add_layer(self, layer: Layer, scope: _Scope, span: Span | None) -> None:
        self.layer_names[layer.name] = span
        for top in layer.tops:
            self.blobs.setdefault(top, span)
        self.layers.append(layer)

    # --- arguments ------------------------------------------------------------------
    def split_args(self, link: ast.Link, positional_params: tuple[Param, ...], scope: _Scope,
                   what: str, keyword_example: str | None = None):
        """Leading names are input blobs; the positional values after them fill positional_params."""
        bottoms: list[tuple[str, Span]] = []
        values: list[tuple[Param, Any, Span]] = []
        keywords: list[tuple[str, Any, Span]] = []
        seen_value = False
        for arg in link.args:
            value = evaluate(arg.value, scope.env)
            if arg.keyword is not None:
                if any(k == arg.keyword for k, _, _ in keywords):
                    raise self.error(f"'{arg.keyword}' is given twice", arg.span, scope)
                keywords.append((arg.keyword, value, arg.span))
                continue
            next_param = positional_params[len(values)] if len(values) < len(positional_params) else None
            # a misspelt enum value (Pooling(MAXX)) is no blob either: let the enum check explain it
            is_enum_value = (isinstance(value, Symbol) and next_param is not None and next_param.kind == "enum"
                             and (value.name.upper() in next_param.choices
                                  or (self.lookup_blob(value.name, scope) is None
                                      and not (value.name == MODULE_INPUT and scope.depth > 0)
                                      and (value.name.isupper() or nearest(value.name, next_param.choices)))))
            if isinstance(value, (Symbol, str)) and not is_enum_value and not isinstance(arg.value, ast.BinOp):
                name = value.name if isinstance(value, Symbol) else value
                if seen_value:
                    raise self.error(f"input blob '{name}' must come before the other arguments", arg.span, scope,
                                     f"write the input blobs first, e.g. {link.type.text}({name}, ...)")
                bottoms.append((name, arg.span))
                continue
            seen_value = True
            if next_param is None:
                names = ", ".join(p.name for p in positional_params)
                others = f"; name the others, e.g. {keyword_example}" if keyword_example else ""
                raise self.error(f"too many positional arguments for {what}", arg.span, scope,
                                 f"{what} takes {len(positional_params)} ({names}){others}"
                                 if positional_params else
                                 f"{what} takes only keyword arguments, e.g. {keyword_example or 'name=value'}")
            values.append((next_param, value, arg.span))
        return bottoms, values, keywords

    # --- layers ---------------------------------------------------------------------
    def layer(self, link: ast.Link, explicit_tops: tuple[ast.Name, ...], chain_label: str | None,
              scope: _Scope) -> None:
        type_name = link.type.text
        spec = REGISTRY.get(type_name)
        if spec is None:
            candidates = list(REGISTRY) + list(self.program.modules)
            what = "layer type or module" if self.program.modules else "layer type"
            raise self.error(f"unknown {what} '{type_name}'", link.type.span, scope,
                             did_you_mean(type_name, candidates) or "see `netc layers` for the layer types")
        positional = tuple(spec.param(n) for n in spec.positional)
        example = next((f"{p.name}=..." for p in spec.params if p.name not in spec.positional), None)
        bottom_refs, values, keywords = self.split_args(link, positional, scope, type_name, example)

        given: dict[str, tuple[Any, Span]] = {}
        for param, value, span in values:
            given[param.name] = (value, span)
        common: dict[str, tuple[Any, Span]] = {}
        for key, value, span in keywords:
            if key in COMMON_KEYWORDS:
                common[key] = (value, span)
                continue
            param = spec.param(key)
            if param is None:
                names = [p.name for p in spec.params] + [a for p in spec.params for a in p.aliases]
                hint = did_you_mean(key, names + list(COMMON_KEYWORDS))
                if not hint:
                    hint = (f"{type_name} takes: {', '.join(p.name for p in spec.params)}" if spec.params
                            else f"{type_name} takes no parameters")
                raise self.error(f"unknown parameter '{key}' for {type_name}", span, scope, hint)
            if param.name in given:
                raise self.error(f"'{param.name}' is given twice", span, scope)
            given[param.name] = (value, span)

        params: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        for param in spec.params:
            if param.name in given:
                value, span = given[param.name]
                spans[param.name] = span
                try:
                    params[param.name] = coerce(param, value)
                except ParamError as err:
                    raise self.error(err.message, span, scope, err.hint) from None
            elif param.required:
                example = f"{type_name}({param.name}=...)"
                if param.name in spec.positional:
                    example = f"{type_name}(64, ...)" if param.kind == "int" else example
                raise self.error(f"{type_name} needs {param.name}", link.type.span, scope, f"e.g. {example}")
            else:
                params[param.name] = param.default
        resolve_paths(spec, params, self.base_dir)
        try:
            params = spec.normalize(params)
        except ParamError as err:
            raise self.error(err.message, spans.get(err.param, link.span), scope, err.hint) from None

        bottoms = self.bottoms(link, spec, bottom_refs, scope)
        name = self.layer_name(link.label, chain_label, type_name, scope)
        tops = self.tops(link, spec, name, bottoms, explicit_tops, scope)
        param_specs, loss_weight = self.common(common, spec, link, scope)
        self.add_layer(Layer(name=name, type=type_name, bottoms=bottoms, tops=tops, params=frozen(params),
                             param_spans=frozen(spans), param_specs=param_specs, loss_weight=loss_weight,
                             span=link.span, trace=scope.trace,
                             module=tuple(p for p in scope.prefix.split("/") if p)),
                       scope, link.span)
        if link.label is not None and layer_in_place(tops, bottoms) and name not in self.blobs:
            # `relu1: ReLU!` writes conv1; naming relu1 afterwards means that blob
            self.aliases[name] = tops[0]
        scope.current = tops[0] if tops else scope.current

    def bottoms(self, link: ast.Link, spec: LayerType, refs, scope: _Scope) -> tuple[str, ...]:
        type_name = link.type.text
        if refs:
            names = tuple(self.resolve_blob(n, span, scope) for n, span in refs)
        elif spec.min_bottoms == 0:
            names = ()
        else:
            if scope.current is None:
                raise self.error(f"{type_name} has no input: nothing comes before it", link.span, scope,
                                 "declare an input first, e.g. input data [64, 1, 28, 28]")
            names = (scope.current,)
        if len(names) < spec.min_bottoms:
            which = "inputs (scores, labels)" if spec.is_loss or type_name == "Accuracy" else "inputs"
            raise self.error(f"{type_name} needs {spec.min_bottoms} {which}, got {len(names)}", link.span, scope,
                             f"name them: {type_name}({', '.join(['a', 'b', 'c'][:spec.min_bottoms])})"
                             if spec.min_bottoms > 1 else None)
        if spec.max_bottoms is not None and len(names) > spec.max_bottoms:
            raise self.error(f"{type_name} takes {spec.max_bottoms} input{'s' if spec.max_bottoms != 1 else ''}, "
                             f"got {len(names)}", refs[spec.max_bottoms][1] if refs else link.span, scope)
        return names

    def tops(self, link: ast.Link, spec: LayerType, name: str, bottoms: tuple[str, ...],
             explicit: tuple[ast.Name, ...], scope: _Scope) -> tuple[str, ...]:
        type_name = link.type.text
        if link.in_place:
            if explicit:
                raise self.error("an in-place layer ('!') writes its input: it cannot also name outputs",
                                 explicit[0].span, scope)
            if not spec.can_be_in_place:
                raise self.error(f"{type_name} cannot run in place", link.span, scope,
                                 "in place ('!') works for ReLU, Sigmoid, TanH, Dropout, BatchNorm and Scale")
            if not bottoms:
                raise self.error(f"{type_name} has no input to work on in place", link.span, scope)
            return (bottoms[0],)
        if explicit:
            tops = []
            for top in explicit:
                text = scope.prefix + top.text if scope.prefix else top.text
                if top.text in bottoms or text in bottoms:
                    if not spec.can_be_in_place:
                        raise self.error(f"{type_name} cannot write its input '{top.text}' in place",
                                         top.span, scope, "give its output another name")
                    text = top.text if top.text in bottoms else text
                tops.append(text)
            tops = tuple(tops)
        else:
            tops = spec.default_tops(name)
            if scope.prefix and tops != (name,):
                tops = tuple(scope.prefix + t for t in tops)
        low, high = spec.num_tops
        if len(tops) < low or (high is not None and len(tops) > high):
            span = explicit[0].span if explicit else link.span
            want = f"{low}" if low == high else (f"{low} to {high}" if high else f"at least {low}")
            raise self.error(f"{type_name} has {want} output{'s' if high != 1 else ''}, got {len(tops)}",
                             span, scope)
        return tops

    def common(self, given: dict[str, tuple[Any, Span]], spec: LayerType, link: ast.Link, scope: _Scope):
        """lr_mult, decay_mult and share become Caffe ParamSpecs, one per learnable blob."""
        lists: dict[str, list] = {}
        for key in ("lr_mult", "decay_mult", "share"):
            if key not in given:
                continue
            value, span = given[key]
            if not spec.learnable:
                raise self.error(f"{link.type.text} has no learnable parameters for {key}", span, scope)
            items = value if isinstance(value, list) else [value]
            checked = []
            for item in items:
                if key == "share":
                    name = item.name if isinstance(item, Symbol) else item
                    if not isinstance(name, str):
                        raise self.error("share takes parameter names, e.g. share=[conv_w, conv_b]", span, scope)
                    checked.append(name)
                else:
                    if isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0:
                        raise self.error(f"{key} must be a non-negative number or a list of them", span, scope)
                    checked.append(float(item))
            lists[key] = checked
        count = max((len(v) for v in lists.values()), default=0)
        specs = tuple(ParamSpec(name=_at(lists.get("share"), i, None), lr_mult=_at(lists.get("lr_mult"), i, 1.0),
                                decay_mult=_at(lists.get("decay_mult"), i, 1.0)) for i in range(count))
        loss_weight: tuple[float, ...] = ()
        if "loss_weight" in given:
            value, span = given["loss_weight"]
            items = value if isinstance(value, list) else [value]
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
                raise self.error("loss_weight must be a number or a list of numbers", span, scope)
            loss_weight = tuple(float(v) for v in items)
        return specs, loss_weight

    # --- modules --------------------------------------------------------------------
    def instantiate(self, link: ast.Link, explicit_tops: tuple[ast.Name, ...], scope: _Scope) -> None:
        mod = self.program.modules[link.type.text]
        if scope.depth >= MAX_MODULE_DEPTH:
            raise self.error(f"module '{mod.name.text}' instantiates itself without end", link.span, scope)
        if link.in_place:
            raise self.error("a module instance cannot run in place", link.span, scope)
        params = tuple(Param(mp.name.text, "any") for mp in mod.params)
        bottom_refs, values, keywords = self.split_args(link, params, scope, f"module '{mod.name.text}'")
        env: dict[str, Any] = {}
        for param, value, _ in values:
            env[param.name] = value
        names = [mp.name.text for mp in mod.params]
        for key, value, span in keywords:
            if key not in names:
                raise self.error(f"module '{mod.name.text}' has no parameter '{key}'", span, scope,
                                 did_you_mean(key, names) or f"its parameters are: {', '.join(names)}")
            if key in env:
                raise self.error(f"'{key}' is given twice", span, scope)
            env[key] = value
        missing = [n for n in names if n not in env]
        for ref, span in bottom_refs:
            # a bare name is an input blob; one that is no blob was most likely meant as a value
            if missing and self.lookup_blob(ref, scope) is None and not (ref == MODULE_INPUT and scope.depth > 0):
                raise self.error(f"unknown blob '{ref}'", span, scope,
                                 f"a bare name in a module's arguments is its input blob; to pass '{ref}' as a "
                                 f"value, name the parameter: {mod.name.text}({missing[0]}={ref})")
        for mp in mod.params:
            if mp.name.text not in env:
                if mp.default is None:
                    given = len(values) + len(keywords)
                    raise self.error(
                        f"module '{mod.name.text}' takes {len(names)} parameters ({', '.join(names)}), got {given}",
                        link.span, scope, f"missing: {mp.name.text}; the module is defined at {mod.name.span}")
                env[mp.name.text] = evaluate(mp.default, env)
        if len(bottom_refs) > 1:
            raise self.error(f"module '{mod.name.text}' takes one input blob, got {len(bottom_refs)}",
                             bottom_refs[1][1], scope)
        source = self.resolve_blob(*bottom_refs[0], scope) if bottom_refs else scope.current

        label = link.label.text if link.label else None
        if label is None:
            n = self.auto_counts.get(mod.name.text, 0) + 1
            self.auto_counts[mod.name.text] = n
            label = f"{mod.name.text}_{n}"
        instance = scope.prefix + label
        if instance in self.layer_names or instance in self.aliases:
            raise self.error(f"name '{label}' is used twice", (link.label or link.type).span, scope)
        self.layer_names[instance] = link.span
        note = f"in instance '{instance}' of module '{mod.name.text}'"
        inner = _Scope(prefix=instance + "/", env=env, input=source, trace=((note, link.span),) + scope.trace,
                       depth=scope.depth + 1, current=source)
        for stmt in mod.body:
            self.statement(stmt, inner)
        output = inner.current
        if output is None or output == source:
            raise self.error(f"module '{mod.name.text}' produces nothing", mod.name.span, scope,
                             "a module's output is its last statement's output")
        self.aliases[instance] = output
        for top in explicit_tops:
            self.aliases[scope.prefix + top.text] = output
        if mod.output_shape is not None:
            self.contracts.append(ShapeContract(
                module=mod.name.text, instance=instance, input_blob=source, output_blob=output,
                input_pattern=mod.input_shape, output_pattern=mod.output_shape, env=frozen(env),
                span=mod.output_shape.span, trace=inner.trace))
        scope.current = output

    # --- solver ---------------------------------------------------------------------
    def solver(self) -> SolverSpec | None:
        decl = self.program.solver
        if decl is None:
            return None
        scope = _Scope()
        if decl.type.text not in SOLVER_TYPES:
            raise self.error(f"unknown solver type '{decl.type.text}'", decl.type.span, scope,
                             did_you_mean(decl.type.text, SOLVER_TYPES) or f"solvers are: {', '.join(SOLVER_TYPES)}")
        fields: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        for arg in decl.args:
            if arg.keyword is None:
                raise self.error("solver fields are written name=value", arg.span, scope, "e.g. base_lr=0.01")
            value = evaluate(arg.value, {})
            if arg.keyword == "lr_policy":
                self.lr_policy(value, arg, fields, spans, scope)
                continue
            param = solver_field(arg.keyword)
            if param is None:
                raise self.error(f"unknown solver field '{arg.keyword}'", arg.span, scope,
                                 did_you_mean(arg.keyword, [p.name for p in SOLVER_FIELDS]))
            if isinstance(value, Symbol) and param.kind == "str":
                value = value.name
            try:
                fields[param.name] = coerce(param, value)
            except ParamError as err:
                raise self.error(err.message, arg.span, scope, err.hint) from None
            spans[param.name] = arg.span
        if fields.get("regularization_type", "L2") not in ("L1", "L2"):
            raise self.error("regularization is L1 or L2", spans["regularization_type"], scope)
        policy = fields.get("lr_policy", "fixed")
        for needed in LR_POLICY_FIELDS[policy]:
            if needed not in fields or fields[needed] in (None, ()):
                raise self.error(f"lr_policy {policy} needs {needed}", spans.get("lr_policy", decl.span), scope,
                                 f"e.g. lr_policy={policy}({', '.join(f + '=...' for f in LR_POLICY_FIELDS[policy])})")
        return SolverSpec(decl.type.text, frozen(fields), decl.span, frozen(spans))

    def lr_policy(self, value, arg: ast.Arg, fields: dict, spans: dict, scope: _Scope) -> None:
        """`lr_policy=inv(gamma=1e-4, power=0.75)`: the policy and its fields in one place."""
        name = value.name if isinstance(value, (Symbol, CallValue)) else value
        if name not in LR_POLICIES:
            shown = name if isinstance(name, str) else _show(name)   # a name, not its repr
            raise self.error(f"unknown lr_policy '{shown}'", arg.span, scope,
                             did_you_mean(str(name), LR_POLICIES) or f"policies are: {', '.join(LR_POLICIES)}")
        fields["lr_policy"] = name
        spans["lr_policy"] = arg.span
        if isinstance(value, CallValue):
            if value.args:
                raise self.error(f"{name}(...) takes named fields, e.g. {name}(gamma=0.1)", arg.span, scope)
            for key, item in value.kwargs:
                if key not in LR_POLICY_FIELDS[name]:
                    raise self.error(f"lr_policy {name} has no field '{key}'", arg.span, scope,
                                     f"it takes: {', '.join(LR_POLICY_FIELDS[name]) or 'nothing'}")
                try:
                    fields[key] = coerce(solver_field(key), item)
                except ParamError as err:
                    raise self.error(err.message, arg.span, scope, err.hint) from None
                spans[key] = arg.span


def layer_in_place(tops, bottoms) -> bool:
    return bool(set(tops) & set(bottoms))


def _at(items, i, default):
    return items[i] if items is not None and i < len(items) else default


def _show(value) -> str:
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, CallValue):
        return value.name + "(...)"
    return repr(value)


def _names_defined(program: ast.Program) -> dict[str, Span]:
    """Every top-level label and output name, to tell 'produced later' from 'unknown'."""
    names: dict[str, Span] = {}
    for stmt in program.statements:
        if isinstance(stmt, ast.InputDecl):
            names.setdefault(stmt.name.text, stmt.name.span)
            continue
        for link in stmt.links:
            if link.label is not None:
                names.setdefault(link.label.text, link.label.span)
        for top in stmt.tops:
            names.setdefault(top.text, top.span)
    return names


def expand(program: ast.Program, phase: str = "test") -> Net:
    """The IR of one phase of a parsed program."""
    return _Expander(program, phase).run()
