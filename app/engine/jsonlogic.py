"""JsonLogic targeting compiled once into Python closures.

``compile_rule`` walks a targeting rule a single time and returns a ``Rule``: a function
of the data (the evaluation context, or an array item inside ``map``/``filter``/...)
that never raises on JSON input. Everything that can be decided at compile time is:
``$ref`` is resolved, constant operands are parsed (semver), constant arrays become
sets, and the commonest shapes (``var`` of a plain key, a comparison with a constant)
get closures of their own so evaluating them is one call.

Semantics are those of the JsonLogic that flagd's Python evaluator runs (see
``app.engine.coerce``); flagd's own operations are in ``app.engine.operators``.
Rules that cannot be run (unknown operation, missing ``$ref``) raise ``InvalidRuleError``
here, at compile time, and the flag then resolves with PARSE_ERROR; rules beyond the
size bounds raise ``RuleTooLargeError`` and the flag is rejected.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from app.engine import coerce, operators
from app.engine.budget import (
    MAX_ARRAY_ITEMS,
    MAX_LOOP_ITEMS,
    MAX_STRING_CHARS,
    STEP_COST,
    charge,
    too_long,
)
from app.engine.coerce import NAN, to_number, to_string, truthy
from app.engine.model import FractionalVersion
from app.engine.refs import MAX_DEPTH, MAX_NODES, RefError, referenced
from app.engine.rules import Rule, constant, get_var, is_constant, plain_var_key, var_rule

__all__ = [
    "MAX_DEPTH",
    "MAX_LOOP_ITEMS",
    "MAX_NODES",
    "MAX_STEPS",
    "InvalidRuleError",
    "RuleTooLargeError",
    "Scope",
    "compile_rule",
    "reduction_problems",
    "targeting_problems",
]

#: Most node executions one evaluation may need: a node inside ``n`` nested array
#: operations runs up to ``MAX_LOOP_ITEMS ** n`` times, and the sum over all nodes must
#: stay below this (about half a second of CPU), so one flag cannot stall a worker.
MAX_STEPS: Final = 5_000_000


class InvalidRuleError(Exception):
    """The rule names an operation or evaluator that does not exist."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class RuleTooLargeError(InvalidRuleError):
    """The rule exceeds MAX_DEPTH, MAX_NODES or MAX_STEPS."""


@dataclass(slots=True)
class Scope:
    """What compilation of one flag's targeting needs to know and records."""

    flag_key: str
    fractional: FractionalVersion
    evaluators: Mapping[str, Any]
    #: Set when a rule may read ``$flagd`` (or the whole data), so evaluation must enrich.
    needs_enrichment: bool = False
    nodes: int = 0
    #: Worst-case node executions per evaluation so far (see MAX_STEPS).
    steps: int = 0
    loops: int = 0
    refs: list[str] = field(default_factory=list)


def compile_rule(node: Any, scope: Scope, path: str = "$.targeting", depth: int = 0) -> Rule:
    """Compile one JsonLogic node (operation, array of nodes, or literal) into a Rule."""
    scope.nodes += 1
    if scope.nodes > MAX_NODES:
        raise RuleTooLargeError(path, f"targeting has more than {MAX_NODES} nodes")
    scope.steps += MAX_LOOP_ITEMS**scope.loops
    if scope.steps > MAX_STEPS:
        raise RuleTooLargeError(
            path, "array operations nested too deeply (too much work per evaluation)"
        )
    if depth > MAX_DEPTH:
        raise RuleTooLargeError(path, f"targeting is nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, list):
        if is_constant(node):
            return constant(node)
        items = [
            compile_rule(item, scope, f"{path}[{i}]", depth + 1) for i, item in enumerate(node)
        ]
        return lambda data: [item(data) for item in items]
    if not isinstance(node, Mapping) or len(node) != 1:
        return constant(node)
    ((op, raw_args),) = node.items()
    if op == "$ref":
        return _reference(raw_args, scope, path, depth)
    args = raw_args if isinstance(raw_args, list) else [raw_args]
    at = f"{path}.{op}"
    builder = _SPECIAL.get(op)
    if builder is not None:
        return builder(args, scope, at, depth + 1)
    compiled = [compile_rule(arg, scope, f"{at}[{i}]", depth + 2) for i, arg in enumerate(args)]
    custom = operators.BUILDERS.get(op)
    if custom is not None:
        return custom(args, compiled, _context(scope))
    simple = _SIMPLE.get(op)
    if simple is None:
        raise InvalidRuleError(at, f"unknown operation {op!r}")
    return simple(args, compiled)


def targeting_problems(
    targeting: Any, evaluators: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """(path, message) for targeting a flag service must refuse as too costly to run.

    The size bounds of ``compile_rule`` (depth, nodes, nested array operations) and
    ``reduce`` steps that grow their accumulator geometrically (``accumulator_copies``).
    Rules that cannot run at all (unknown operation, missing ``$ref``) are not reported
    here: flagd loads them and fails their evaluations, and so do we.
    """
    if not isinstance(targeting, Mapping) or not targeting:
        return []
    scope = Scope("", FractionalVersion.V3, evaluators or {})
    try:
        compile_rule(targeting, scope)
    except RuleTooLargeError as too_large:
        return [(too_large.path, too_large.message)]
    except InvalidRuleError:
        pass
    return _growing_reductions(targeting, scope.evaluators, "$.targeting", 0)


def reduction_problems(
    targeting: Any, evaluators: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """``targeting_problems`` for a caller that compiles the rule itself right after.

    ``compile_rule`` raises ``RuleTooLargeError`` for the size bounds, so such a caller
    (``compile_flag``) needs only the reductions checked here, and compiles the rule once.
    """
    if not isinstance(targeting, Mapping) or not targeting or not _has_reduce(targeting):
        return []
    return _growing_reductions(targeting, evaluators or {}, "$.targeting", 0)


def _has_reduce(targeting: Mapping[str, Any]) -> bool:
    """Whether any operation of a rule is ``reduce`` (or a ``$ref``, which may hide one):
    a walk without paths, so the usual rule costs a few µs, not a path string per node."""
    pending: list[Any] = [targeting]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "reduce" in node or "$ref" in node:
                return True
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def _growing_reductions(
    node: Any, evaluators: Mapping[str, Any], path: str, depth: int
) -> list[tuple[str, str]]:
    """Every ``reduce`` under ``node`` whose step holds two or more copies of its input."""
    if depth > MAX_DEPTH:
        return []
    found: list[tuple[str, str]] = []
    if isinstance(node, list):
        for i, item in enumerate(node):
            found += _growing_reductions(item, evaluators, f"{path}[{i}]", depth + 1)
        return found
    if not isinstance(node, Mapping) or len(node) != 1:
        return found
    ((op, args),) = node.items()
    if op == "$ref":
        return found  # the evaluator is checked where it is defined
    if op == "reduce" and isinstance(args, list) and len(args) > 1:
        copies = accumulator_copies(args[1], evaluators)
        if copies >= 2:
            found.append(
                (
                    f"{path}.reduce[1]",
                    f"reduce step uses its accumulator {copies} times in the value it "
                    "returns, so the accumulator multiplies at every item",
                )
            )
    found += _growing_reductions(args, evaluators, f"{path}.{op}", depth + 1)
    return found


#: Operations whose value is a boolean, a number or null: never a copy of an input.
_SCALAR_OPS: Final = frozenset(
    {"==", "!=", "===", "!==", "<", "<=", ">", ">=", "!", "!!", "in", "all", "some", "none"}
    | {"+", "-", "*", "/", "%", "max", "min", "starts_with", "ends_with", "sem_ver"}
)
#: Operations whose value holds what each argument holds (they concatenate or list them).
_SUMMING_OPS: Final = frozenset({"cat", "merge", "missing", "missing_some"})


def accumulator_copies(
    node: Any, evaluators: Mapping[str, Any], nested: bool = False, depth: int = 0
) -> int:
    """How many copies of a reduce step's input (``{current, accumulator}``) its value holds.

    One copy is a fold (sum, append, keep the best); two or more is geometric growth:
    ``cat`` of the accumulator with itself doubles a string at every item. Conservative:
    a ``var`` that may read the accumulator (its name, ``""``, a computed key) is a copy,
    ``if``/``and``/``or`` count their largest branch, ``cat``/``merge``/arrays add up, and
    inside a nested array operation every ``var`` reads the item, a part of the input.
    """
    if depth > MAX_DEPTH:
        return 0
    if isinstance(node, list):
        return sum(accumulator_copies(item, evaluators, nested, depth + 1) for item in node)
    if not isinstance(node, Mapping) or len(node) != 1:
        return 0
    ((op, raw),) = node.items()
    args = raw if isinstance(raw, list) else [raw]

    def copies(item: Any, inner: bool = nested) -> int:
        return accumulator_copies(item, evaluators, inner, depth + 1)

    if op == "var":
        return _var_copies(args, nested)
    if op == "$ref":
        target = evaluators.get(raw) if isinstance(raw, str) else None
        return copies(target) if target is not None else 0
    counter = _COPY_COUNTERS.get(op)
    return 0 if counter is None else counter(op, args, copies)


#: Counts the copies one argument holds (``inner``: it runs once per item of an array).
_Copies = Callable[..., int]


def _var_copies(args: list[Any], nested: bool) -> int:
    """A ``var`` is a copy unless it reads ``current`` of the reduce step itself."""
    key = args[0] if args else None
    if nested or not isinstance(key, str):
        return 1
    return 0 if key == "current" or key.startswith("current.") else 1


def _branch_copies(op: str, args: list[Any], copies: _Copies) -> int:
    """``if``/``?:``: the largest of the branches it may return."""
    if len(args) < 2:
        return copies(args)
    branches = [args[i] for i in range(1, len(args), 2)]
    if len(args) % 2:
        branches.append(args[-1])
    return max(copies(branch) for branch in branches)


def _largest_copies(op: str, args: list[Any], copies: _Copies) -> int:
    """``and``/``or``/``fractional`` return one of their arguments."""
    return max((copies(arg) for arg in args), default=0)


def _summed_copies(op: str, args: list[Any], copies: _Copies) -> int:
    """``cat``/``merge``/``missing``: the value holds every argument."""
    return sum(copies(arg) for arg in args)


def _substr_copies(op: str, args: list[Any], copies: _Copies) -> int:
    return copies(args[0]) if args else 0


def _loop_copies(op: str, args: list[Any], copies: _Copies) -> int:
    """``map`` multiplies per item, ``reduce`` adds its initial value, ``filter`` keeps items."""
    items = copies(args[0]) if args else 0
    if op == "filter" or len(args) < 2:
        return items
    per_item = copies(args[1], inner=True)
    if op == "map":
        return items * per_item
    return items + (copies(args[2]) if len(args) > 2 else 0)


_COPY_COUNTERS: Final[dict[str, Callable[[str, list[Any], _Copies], int]]] = {
    **dict.fromkeys(_SCALAR_OPS, lambda op, args, copies: 0),
    **dict.fromkeys(("if", "?:"), _branch_copies),
    **dict.fromkeys(("and", "or", "fractional"), _largest_copies),
    **dict.fromkeys(_SUMMING_OPS, _summed_copies),
    "substr": _substr_copies,
    **dict.fromkeys(("map", "filter", "reduce"), _loop_copies),
}


def _context(scope: Scope) -> operators.Context:
    return operators.Context(scope.flag_key, scope.fractional)


def _reference(name: Any, scope: Scope, path: str, depth: int) -> Rule:
    """``{"$ref": "name"}``: inline the shared evaluator (flagd substitutes it textually)."""
    try:
        name, evaluator = referenced(name, scope.evaluators, scope.refs, path)
    except RefError as error:
        raise InvalidRuleError(error.path, error.message) from None
    scope.refs.append(name)
    try:
        return compile_rule(evaluator, scope, f"$.$evaluators.{name}", depth + 1)
    finally:
        scope.refs.pop()


# --- var, missing -----------------------------------------------------------------------


def _plain_key(key: Any) -> bool:
    """A constant key that cannot reach ``$flagd`` nor the whole data."""
    return isinstance(key, str) and key != "" and not key.startswith("$flagd")


def _var(args: list[Any], scope: Scope, path: str, depth: int) -> Rule:
    key_node = args[0] if args else None
    if not is_constant(key_node) or not _plain_key(key_node):
        scope.needs_enrichment = True
    if len(args) <= 1 and isinstance(key_node, str) and key_node:
        return var_rule(key_node)
    compiled = [compile_rule(arg, scope, f"{path}[{i}]", depth + 1) for i, arg in enumerate(args)]
    if not compiled:
        return lambda data: data
    if len(compiled) == 1:
        only = compiled[0]
        return lambda data: get_var(data, only(data))
    key_rule, default_rule = compiled[0], compiled[1]
    return lambda data: get_var(data, key_rule(data), default_rule(data))


def _missing_keys(data: Any, keys: list[Any]) -> list[Any]:
    charge(len(keys) * STEP_COST, "missing looked up too many keys")
    missing = []
    for key in keys:
        value = get_var(data, key)
        if value is None or value == "":
            missing.append(key)
    return missing


def _missing(args: list[Any], compiled: list[Rule]) -> Rule:
    def missing(data: Any) -> list[Any]:
        values = [rule(data) for rule in compiled]
        keys = values[0] if values and isinstance(values[0], list) else values
        return _missing_keys(data, keys)

    return missing


def _missing_some(args: list[Any], compiled: list[Rule]) -> Rule:
    def missing_some(data: Any) -> list[Any]:
        need = compiled[0](data) if compiled else 0
        keys = compiled[1](data) if len(compiled) > 1 else None
        if not isinstance(keys, list):
            return []
        missing = _missing_keys(data, keys)
        if len(keys) - len(missing) >= to_number(need):
            return []
        return missing

    return missing_some


def _marks_enrichment(args: list[Any], scope: Scope) -> None:
    """``missing``/``missing_some`` read keys like ``var`` does."""
    for arg in args:
        keys = arg if isinstance(arg, list) else [arg]
        if not all(is_constant(key) and (_plain_key(key) or key is None) for key in keys):
            scope.needs_enrichment = True


def _missing_special(args: list[Any], scope: Scope, path: str, depth: int) -> Rule:
    _marks_enrichment(args, scope)
    compiled = [compile_rule(arg, scope, f"{path}[{i}]", depth + 1) for i, arg in enumerate(args)]
    return _missing(args, compiled)


def _missing_some_special(args: list[Any], scope: Scope, path: str, depth: int) -> Rule:
    _marks_enrichment(args[1:], scope)
    compiled = [compile_rule(arg, scope, f"{path}[{i}]", depth + 1) for i, arg in enumerate(args)]
    return _missing_some(args, compiled)


# --- control flow -----------------------------------------------------------------------

#: Operations whose result is always a bool (or None, which is falsy too), so their
#: Python truthiness is their JsonLogic truthiness and ``if`` can skip ``truthy``.
_BOOLEAN_OPS: Final = frozenset(
    {"==", "!=", "===", "!==", "<", "<=", ">", ">=", "!", "!!", "in", "all", "some", "none"}
    | {"starts_with", "ends_with", "sem_ver"}
)


def _condition(node: Any, scope: Scope, path: str, depth: int) -> Rule:
    """A rule whose result's Python truthiness is its JsonLogic truthiness."""
    rule = compile_rule(node, scope, path, depth)
    if isinstance(node, Mapping) and len(node) == 1 and next(iter(node)) in _BOOLEAN_OPS:
        return rule
    return lambda data: truthy(rule(data))


def _branch(node: Any, scope: Scope, path: str, depth: int) -> tuple[bool, Any]:
    """(True, value) for a literal branch, else (False, rule): literals need no call."""
    if is_constant(node) and not isinstance(node, list):
        scope.nodes += 1
        return True, node
    return False, compile_rule(node, scope, path, depth)


def _if(args: list[Any], scope: Scope, path: str, depth: int) -> Rule:
    count = len(args)
    if count == 0:
        return constant(None)
    if count == 1:
        return compile_rule(args[0], scope, f"{path}[0]", depth)
    if count <= 3:
        then: Any
        otherwise: Any
        test = _condition(args[0], scope, f"{path}[0]", depth)
        then_fixed, then = _branch(args[1], scope, f"{path}[1]", depth)
        if count == 2:
            else_fixed, otherwise = True, None
        else:
            else_fixed, otherwise = _branch(args[2], scope, f"{path}[2]", depth)
        if then_fixed and else_fixed:
            return lambda data: then if test(data) else otherwise
        if then_fixed:
            return lambda data: then if test(data) else otherwise(data)
        if else_fixed:
            return lambda data: then(data) if test(data) else otherwise
        return lambda data: then(data) if test(data) else otherwise(data)
    # if/elif chain: pairs of (test, then), then an optional else.
    pairs = [
        (
            _condition(args[i], scope, f"{path}[{i}]", depth),
            *_branch(args[i + 1], scope, f"{path}[{i + 1}]", depth),
        )
        for i in range(0, count - 1, 2)
    ]
    fallback: Any
    fallback_fixed, fallback = (
        _branch(args[-1], scope, f"{path}[{count - 1}]", depth) if count % 2 else (True, None)
    )
    if all(fixed for _, fixed, _ in pairs) and fallback_fixed:
        return _straight_chain([test for test, _, _ in pairs], [v for _, _, v in pairs], fallback)

    def chain(data: Any) -> Any:
        for test, fixed, then in pairs:
            if test(data):
                return then if fixed else then(data)
        return fallback if fallback_fixed else fallback(data)

    return chain


#: Chains longer than this use a loop (the generated function would only get longer).
_MAX_STRAIGHT_CHAIN: Final = 64


def _straight_chain(tests: list[Rule], values: list[Any], fallback: Any) -> Rule:
    """An if/elif chain with literal results as one straight-line function.

    Generated source holds only names (``t0``, ``v0``, ...) bound to the compiled tests
    and literal values, never text from the flag, so it is as safe as the closures it
    replaces and ~30% faster than looping over (test, value) pairs: this is the shape of
    most real targeting (ten rules, each naming a variant).
    """
    if len(tests) > _MAX_STRAIGHT_CHAIN:
        pairs = list(zip(tests, values, strict=True))

        def looped_chain(data: Any) -> Any:
            for test, value in pairs:
                if test(data):
                    return value
            return fallback

        return looped_chain
    lines = ["def chain(data):"]
    lines += [f"    if t{i}(data): return v{i}" for i in range(len(tests))]
    lines.append("    return fallback")
    namespace: dict[str, Any] = {"fallback": fallback}
    namespace.update({f"t{i}": test for i, test in enumerate(tests)})
    namespace.update({f"v{i}": value for i, value in enumerate(values)})
    # Safe to exec: the source holds only the names above, never text from the flag.
    exec(compile("\n".join(lines), "<targeting chain>", "exec"), namespace)  # noqa: S102, RUF100
    chain: Rule = namespace["chain"]
    return chain


def _and(args: list[Any], compiled: list[Rule]) -> Rule:
    if len(compiled) == 2:
        first, second = compiled

        def both(data: Any) -> Any:
            value = first(data)
            return value if not truthy(value) else second(data)

        return both

    def all_of(data: Any) -> Any:
        value = None
        for rule in compiled:
            value = rule(data)
            if not truthy(value):
                return value
        return value

    return all_of


def _or(args: list[Any], compiled: list[Rule]) -> Rule:
    def any_of(data: Any) -> Any:
        value = None
        for rule in compiled:
            value = rule(data)
            if truthy(value):
                return value
        return value

    return any_of


# --- array iteration --------------------------------------------------------------------


#: Builds the closure of one array operation from (items, sublogic, extra, units per item).
LoopMaker = Callable[[Rule, Rule | None, Rule | None, int], Rule]


def _loop(make: LoopMaker) -> Callable[[list[Any], Scope, str, int], Rule]:
    """Compile ``[items, sublogic, extra]``; sublogic runs with each item as its data.

    Each item costs the budget STEP_COST per node of the sublogic, so the work of nested
    operations is charged where it happens.
    """

    def build(args: list[Any], scope: Scope, path: str, depth: int) -> Rule:
        items = compile_rule(args[0], scope, f"{path}[0]", depth) if args else constant(None)
        scope.loops += 1
        before = scope.nodes
        try:
            sub = compile_rule(args[1], scope, f"{path}[1]", depth) if len(args) > 1 else None
        finally:
            scope.loops -= 1
        per_item = STEP_COST * max(1, scope.nodes - before)
        extra = compile_rule(args[2], scope, f"{path}[2]", depth) if len(args) > 2 else None
        return make(items, sub, extra, per_item)

    return build


def _items(value: Any, per_item: int) -> list[Any] | None:
    """The array an operation iterates (None if not an array), charged to the budget."""
    if not isinstance(value, list):
        return None
    count = len(value)
    if count > MAX_LOOP_ITEMS:
        raise too_long("an array operation over an array", count, MAX_LOOP_ITEMS, "items")
    charge(count * per_item, "array operations ran too many steps")
    return value


def _map(items: Rule, sub: Rule | None, extra: Rule | None, per_item: int) -> Rule:
    def map_(data: Any) -> list[Any]:
        values = _items(items(data), per_item)
        if values is None:
            return []
        if sub is None:
            return [None] * len(values)
        return [sub(item) for item in values]

    return map_


def _filter(items: Rule, sub: Rule | None, extra: Rule | None, per_item: int) -> Rule:
    def filter_(data: Any) -> list[Any]:
        values = _items(items(data), per_item)
        if values is None or sub is None:
            return []
        return [item for item in values if truthy(sub(item))]

    return filter_


def _reduce(items: Rule, sub: Rule | None, extra: Rule | None, per_item: int) -> Rule:
    def reduce_(data: Any) -> Any:
        initial = extra(data) if extra is not None else None
        values = _items(items(data), per_item)
        if values is None:
            return initial
        accumulator = initial
        for item in values:
            accumulator = sub({"current": item, "accumulator": accumulator}) if sub else None
        return accumulator

    return reduce_


def _all(items: Rule, sub: Rule | None, extra: Rule | None, per_item: int) -> Rule:
    def all_(data: Any) -> bool:
        values = _items(items(data), per_item)
        if not values or sub is None:
            return False
        return all(truthy(sub(item)) for item in values)

    return all_


def _some(items: Rule, sub: Rule | None, extra: Rule | None, per_item: int) -> Rule:
    def some_(data: Any) -> bool:
        values = _items(items(data), per_item)
        if values is None or sub is None:
            return False
        return any(truthy(sub(item)) for item in values)

    return some_


def _none(items: Rule, sub: Rule | None, extra: Rule | None, per_item: int) -> Rule:
    def none_(data: Any) -> bool:
        values = _items(items(data), per_item)
        if values is None or sub is None:
            return True
        return not any(truthy(sub(item)) for item in values)

    return none_


# --- comparison -------------------------------------------------------------------------


def _first(compiled: list[Rule]) -> Rule:
    return compiled[0] if compiled else constant(None)


def _second(compiled: list[Rule]) -> Rule:
    return compiled[1] if len(compiled) > 1 else constant(None)


def _constant_scalar(args: list[Any]) -> bool:
    """True when the second argument is a string or number literal (not a bool)."""
    return (
        len(args) > 1 and isinstance(args[1], str | int | float) and not isinstance(args[1], bool)
    )


def _equals(args: list[Any], compiled: list[Rule]) -> Rule:
    left, right = _first(compiled), _second(compiled)
    if _constant_scalar(args) or (len(args) > 1 and isinstance(args[1], bool)):
        expected = args[1]
        kind = expected.__class__
        key = plain_var_key(args[0])
        if key is not None:

            def key_equals_constant(data: Any) -> bool:
                value = data.get(key) if data.__class__ is dict else get_var(data, key)
                if value.__class__ is kind:
                    return bool(value == expected)
                return coerce.loose_equals(value, expected)

            return key_equals_constant

        def equals_constant(data: Any) -> bool:
            value = left(data)
            if value.__class__ is kind:
                return bool(value == expected)
            return coerce.loose_equals(value, expected)

        return equals_constant
    return lambda data: coerce.loose_equals(left(data), right(data))


def _not_equals(args: list[Any], compiled: list[Rule]) -> Rule:
    equals = _equals(args, compiled)
    return lambda data: not equals(data)


def _strict_equals(args: list[Any], compiled: list[Rule]) -> Rule:
    left, right = _first(compiled), _second(compiled)
    return lambda data: coerce.strict_equals(left(data), right(data))


def _strict_not_equals(args: list[Any], compiled: list[Rule]) -> Rule:
    left, right = _first(compiled), _second(compiled)
    return lambda data: not coerce.strict_equals(left(data), right(data))


def _ordering(
    compare: Callable[[Any, Any], bool], fast: Callable[[Any, Any], bool]
) -> Callable[[list[Any], list[Rule]], Rule]:
    """``<`` and friends; with a third argument they test ``a < b < c`` (between).

    ``fast`` is the plain Python operator, used when both sides are already numbers.
    """

    def build(args: list[Any], compiled: list[Rule]) -> Rule:
        left, middle = _first(compiled), _second(compiled)
        key = plain_var_key(args[0]) if args else None
        if len(compiled) == 2 and key is not None and _constant_scalar(args):
            bound = args[1]
            numeric = not isinstance(bound, str)

            def key_against_constant(data: Any) -> bool:
                value = data.get(key) if data.__class__ is dict else get_var(data, key)
                if numeric and (value.__class__ is int or value.__class__ is float):
                    return fast(value, bound)
                return compare(value, bound)

            return key_against_constant
        if len(compiled) < 3:
            return lambda data: compare(left(data), middle(data))
        right = compiled[2]

        def between(data: Any) -> bool:
            a, b, c = left(data), middle(data), right(data)
            if c is None:
                return compare(a, b)
            return compare(a, b) and compare(b, c)

        return between

    return build


def _not(args: list[Any], compiled: list[Rule]) -> Rule:
    operand = _first(compiled)
    return lambda data: not truthy(operand(data))


def _double_not(args: list[Any], compiled: list[Rule]) -> Rule:
    operand = _first(compiled)
    return lambda data: truthy(operand(data))


def _in(args: list[Any], compiled: list[Rule]) -> Rule:
    needle = _first(compiled)
    haystack_node = args[1] if len(args) > 1 else None
    if isinstance(haystack_node, list) and is_constant(haystack_node):
        options = haystack_node
        try:
            members = frozenset(options)
        except TypeError:
            members = None
        key = plain_var_key(args[0])
        if members is not None and key is not None:
            in_members = members

            def key_in_set(data: Any) -> bool:
                value = data.get(key) if data.__class__ is dict else get_var(data, key)
                try:
                    return value in in_members
                except TypeError:
                    return _contains(options, value)

            return key_in_set
        if members is not None:
            hashed = members

            def in_set(data: Any) -> bool:
                value = needle(data)
                try:
                    return value in hashed
                except TypeError:
                    return _contains(options, value)

            return in_set
    haystack = _second(compiled)

    def in_(data: Any) -> bool:
        value, within = needle(data), haystack(data)
        if isinstance(within, list):
            return _contains(within, value)
        if isinstance(within, str):
            charge(len(within) >> 4, "in scanned too much text")
            return to_string(value) in within
        return False

    return in_


def _contains(within: list[Any], value: Any) -> bool:
    """``value in within``, charged per item; arrays and objects compared by ``same_json``."""
    charge(len(within), "in scanned too many items")
    if isinstance(value, list | Mapping):
        return any(
            isinstance(item, list | Mapping) and coerce.same_json(value, item) for item in within
        )
    return value in within


# --- arithmetic and strings -------------------------------------------------------------


def _add(args: list[Any], compiled: list[Rule]) -> Rule:
    def add(data: Any) -> int | float:
        total: int | float = 0
        for rule in compiled:
            total += to_number(rule(data))
        return coerce.fit_number(total)

    return add


def _multiply(args: list[Any], compiled: list[Rule]) -> Rule:
    def multiply(data: Any) -> int | float:
        product: int | float = 1
        for rule in compiled:
            product = coerce.fit_number(product * to_number(rule(data)))
        return product

    return multiply


def _subtract(args: list[Any], compiled: list[Rule]) -> Rule:
    left, right = _first(compiled), _second(compiled)

    def subtract(data: Any) -> int | float:
        a, b = left(data), right(data)
        if b is None:
            return -to_number(a)
        return coerce.fit_number(to_number(a) - to_number(b))

    return subtract


def _divide(args: list[Any], compiled: list[Rule]) -> Rule:
    left, right = _first(compiled), _second(compiled)

    def divide(data: Any) -> float | None:
        a, b = to_number(left(data)), to_number(right(data))
        if b == 0:
            return None  # JavaScript gives Infinity/NaN; flagd's Python evaluator crashes
        try:
            return a / b
        except OverflowError:
            return NAN

    return divide


def _modulo(args: list[Any], compiled: list[Rule]) -> Rule:
    left, right = _first(compiled), _second(compiled)

    def modulo(data: Any) -> int | float | None:
        a, b = to_number(left(data)), to_number(right(data))
        if b == 0:
            return None
        try:
            return a % b
        except OverflowError:
            return NAN

    return modulo


def _extreme(pick: Callable[..., Any]) -> Callable[[list[Any], list[Rule]], Rule]:
    def build(args: list[Any], compiled: list[Rule]) -> Rule:
        def extreme(data: Any) -> int | float:
            if not compiled:
                return NAN
            return pick(to_number(rule(data)) for rule in compiled)  # type: ignore[no-any-return]

        return extreme

    return build


def _cat(args: list[Any], compiled: list[Rule]) -> Rule:
    def cat(data: Any) -> str:
        parts = [to_string(rule(data)) for rule in compiled]
        size = sum(map(len, parts))
        if size > MAX_STRING_CHARS:  # checked before the string exists
            raise too_long("cat of a string", size, MAX_STRING_CHARS, "characters")
        charge(size, "cat built too much text")
        return "".join(parts)

    return cat


def _substr(args: list[Any], compiled: list[Rule]) -> Rule:
    text, start = _first(compiled), _second(compiled)
    length = compiled[2] if len(compiled) > 2 else constant(None)

    def substr(data: Any) -> str:
        part = coerce.substr(text(data), start(data), length(data))
        charge(len(part), "substr built too much text")
        return part

    return substr


def _merge(args: list[Any], compiled: list[Rule]) -> Rule:
    def merge(data: Any) -> list[Any]:
        merged: list[Any] = []
        for rule in compiled:
            value = rule(data)
            if isinstance(value, list):
                if len(merged) + len(value) > MAX_ARRAY_ITEMS:  # checked before it is built
                    size = len(merged) + len(value)
                    raise too_long("merge of an array", size, MAX_ARRAY_ITEMS, "items")
                merged.extend(value)
            else:
                merged.append(value)
        charge(len(merged), "merge built too many items")
        return merged

    return merge


_SPECIAL: Final[dict[str, Callable[[list[Any], Scope, str, int], Rule]]] = {
    "var": _var,
    "missing": _missing_special,
    "missing_some": _missing_some_special,
    "if": _if,
    "?:": _if,
    "map": _loop(_map),
    "filter": _loop(_filter),
    "reduce": _loop(_reduce),
    "all": _loop(_all),
    "some": _loop(_some),
    "none": _loop(_none),
}

_SIMPLE: Final[dict[str, Callable[[list[Any], list[Rule]], Rule]]] = {
    "and": _and,
    "or": _or,
    "==": _equals,
    "!=": _not_equals,
    "===": _strict_equals,
    "!==": _strict_not_equals,
    "<": _ordering(coerce.less, operator.lt),
    "<=": _ordering(coerce.less_or_equal, operator.le),
    ">": _ordering(coerce.greater, operator.gt),
    ">=": _ordering(coerce.greater_or_equal, operator.ge),
    "!": _not,
    "!!": _double_not,
    "in": _in,
    "+": _add,
    "*": _multiply,
    "-": _subtract,
    "/": _divide,
    "%": _modulo,
    "max": _extreme(max),
    "min": _extreme(min),
    "cat": _cat,
    "substr": _substr,
    "merge": _merge,
}
