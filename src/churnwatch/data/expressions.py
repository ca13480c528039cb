"""The one evaluator for expressions that come from a config or a model file (data.filter, data.derived,
data.label_events, data.aggregates.purchase_when, the indicators' events, values and text conditions).

A model file is untrusted input: its metadata carries these expressions, and pandas `eval`/`query` would
resolve `@name` to Python objects of the calling module (`@pd.read_pickle(...)` unpickles a payload). So
the text is parsed with `ast` and walked here, over an allow-list: column names, literals, arithmetic on
numbers, comparisons, boolean logic, `in [...]` and a few methods with literal arguments. The grammar,
the allow-list and the limits are in docs/EXPRESSIONS.md and `churnwatch.data.expression_grammar` (which
parses the text); this module compiles the checked tree into a function of the frame and runs it.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from churnwatch.data.expression_grammar import (
    DT_PROPERTIES,
    REFUSED_NODES,
    SERIES_METHODS,
    STR_METHODS,
    Refused,
    is_number,
    literal,
    method_arguments,
    one_line,
    parse_expression,
)
from churnwatch.errors import ConfigError

Value = Any
"""What a sub-expression gives: a Series aligned to the frame, or a scalar."""
Compiled = Callable[[pd.DataFrame], Value]

_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class Expression:
    """A parsed, checked expression: `evaluate` it on a frame (a Series aligned to its index) or take its
    `mask` (a condition). Parsing at construction means a bad config fails before any data is read."""

    def __init__(self, text: str, what: str):
        self.text = text
        self.what = what
        self.columns: tuple[str, ...] = ()
        """The column names the expression uses, in order of first use."""
        try:
            self._run = _Compiler(self).compile(parse_expression(text))
        except Refused as exc:
            raise self._error(str(exc)) from None

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickled as its text, compiled again when loaded: the compiled closures do not pickle, and the
        objects that keep an expression (a featurizer in a datamodule) travel to spawned processes."""
        return Expression, (self.text, self.what)

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        """The value for every row of `frame` (a scalar result is broadcast)."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise self._error(f"unknown column {missing[0]!r} (columns: {_some(frame.columns)})")
        with self._reasons():
            value = self._run(frame)
            return value if isinstance(value, pd.Series) else pd.Series(value, index=frame.index)

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of `frame` the condition selects (missing values select nothing)."""
        value = self.evaluate(frame)
        with self._reasons():
            if not pd.api.types.is_bool_dtype(value.dtype) and not (
                value.dtype == object
                and value.map(lambda v: isinstance(v, bool | np.bool_) or pd.isna(v)).all()
            ):
                raise Refused(f"is not a condition: it gives {value.dtype} values, not true/false")
            return value.to_numpy(dtype=bool, na_value=False)

    @contextmanager
    def _reasons(self) -> Iterator[None]:
        """Any failure inside as one ConfigError line: a refusal with its reason, an exception of pandas or
        numpy (operands that do not fit, e.g. text compared with a number) with its message."""
        try:
            with np.errstate(all="ignore"):
                yield
        except Refused as exc:
            raise self._error(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - pandas and numpy raise many types
            raise self._error(f"{type(exc).__name__}: {one_line(str(exc))}") from exc

    def _error(self, reason: str) -> ConfigError:
        long = isinstance(self.text, str) and len(self.text) > 200
        shown = f"{self.text[:200]!r}... ({len(self.text):,} characters)" if long else repr(self.text)
        return ConfigError(f"{self.what} = {shown}: {reason}")


def check_expression(text: str | None, what: str) -> None:
    """Parse an optional expression from a config now, so a bad one fails before any data is read."""
    if text is not None and text != "":
        Expression(text, what)


@functools.lru_cache(maxsize=1024)
def parsed(text: str, what: str) -> Expression:
    """`Expression(text, what)`, parsed once per process: a config has few expressions and scoring applies
    them on every call, where parsing costs more than evaluating on a request's rows (a bad text raises
    every time: errors are not cached)."""
    return Expression(text, what)


def query_mask(frame: pd.DataFrame, query: str | None, what: str) -> np.ndarray:
    """Rows selected by a condition from the config (all rows when `query` is None; docs/EXPRESSIONS.md)."""
    if not query:
        return np.ones(len(frame), dtype=bool)
    return parsed(query, what).mask(frame)


class _Compiler:
    """AST → a closure over the frame, checking every node against the allow-list on the way."""

    def __init__(self, expression: Expression):
        self.expression = expression

    def compile(self, node: ast.expr) -> Compiled:
        if type(node) in REFUSED_NODES:
            raise Refused(REFUSED_NODES[type(node)])
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise Refused(f"{type(node).__name__} is not allowed")
        return method(node)

    def _Name(self, node: ast.Name) -> Compiled:
        name = node.id
        if name not in self.expression.columns:
            self.expression.columns = (*self.expression.columns, name)
        return lambda frame: _column(frame, name)

    def _Constant(self, node: ast.Constant) -> Compiled:
        value = literal(node)
        return lambda frame: value

    def _List(self, node: ast.List | ast.Tuple) -> Compiled:
        raise Refused("a list is only allowed after `in` / `not in` or in isin(...)")

    _Tuple = _List

    def _UnaryOp(self, node: ast.UnaryOp) -> Compiled:
        operand = self.compile(node.operand)
        if isinstance(node.op, ast.Not | ast.Invert):
            return lambda frame: _negate(operand(frame))
        sign, symbol = (operator.neg, "-") if isinstance(node.op, ast.USub) else (operator.pos, "+")
        return lambda frame: sign(_number(operand(frame), symbol))

    def _BinOp(self, node: ast.BinOp) -> Compiled:
        symbol = _SYMBOLS.get(type(node.op))
        if symbol is None:
            raise Refused(f"the operator {type(node.op).__name__} is not allowed")
        for side in (node.left, node.right):
            if isinstance(side, ast.Constant) and not is_number(side.value):
                raise Refused(f"{symbol} needs numbers, got {side.value!r}")
        left, right = self.compile(node.left), self.compile(node.right)
        if isinstance(node.op, ast.Pow):
            return lambda frame: _power(left(frame), right(frame))
        op = _ARITHMETIC[type(node.op)]
        return lambda frame: op(_number(left(frame), symbol), _number(right(frame), symbol))

    def _BoolOp(self, node: ast.BoolOp) -> Compiled:
        parts = [self.compile(v) for v in node.values]
        op, symbol = (operator.and_, "and") if isinstance(node.op, ast.And) else (operator.or_, "or")

        def run(frame: pd.DataFrame) -> Value:
            result = _boolean(parts[0](frame), symbol)
            for part in parts[1:]:
                result = op(result, _boolean(part(frame), symbol))
            return result

        return run

    def _Compare(self, node: ast.Compare) -> Compiled:
        operands = [node.left, *node.comparators]
        steps: list[Compiled] = []
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(right, ast.List | ast.Tuple):
                    raise Refused(
                        "`in` / `not in` need a list of literals on the right, e.g. x in ['a', 'b']"
                    )
                steps.append(_membership(isinstance(op, ast.NotIn), self.compile(left), literal(right)))
            elif type(op) in _COMPARE:
                steps.append(_comparison(_COMPARE[type(op)], self.compile(left), self.compile(right)))
            else:
                raise Refused("`is` / `is not` are not allowed (use isna() / notna())")
        return _all_of(steps)

    def _Attribute(self, node: ast.Attribute) -> Compiled:
        if isinstance(node.value, ast.Attribute) and node.value.attr == "dt" and node.attr in DT_PROPERTIES:
            series = self.compile(node.value.value)
            label, attr = f".dt.{node.attr}", DT_PROPERTIES[node.attr]
            return lambda frame: getattr(_series(series(frame), label).dt, attr)
        if node.attr in ("str", "dt"):
            allowed = (
                ", ".join(f"{m}()" for m in STR_METHODS) if node.attr == "str" else ", ".join(DT_PROPERTIES)
            )
            raise Refused(f".{node.attr} must be followed by one of {allowed}")
        raise Refused(f"the attribute .{node.attr} is not allowed")

    def _Call(self, node: ast.Call) -> Compiled:
        func = node.func
        if isinstance(func, ast.Name):
            raise Refused(f"calling {func.id}(...) is not allowed; only methods of columns are")
        if not isinstance(func, ast.Attribute):
            self.compile(func)  # the reason what is called is refused, if there is one
            raise Refused("only methods of columns can be called")
        on_str = isinstance(func.value, ast.Attribute) and func.value.attr == "str"
        methods = STR_METHODS if on_str else SERIES_METHODS
        label = f".str.{func.attr}()" if on_str else f".{func.attr}()"
        method = methods.get(func.attr)
        if method is None:
            allowed = ", ".join(f".str.{m}()" for m in STR_METHODS) if on_str else ", ".join(SERIES_METHODS)
            raise Refused(f"the method {label} is not allowed (allowed: {allowed})")
        kwargs = method_arguments(node, method, label)
        series = self.compile(func.value.value if on_str else func.value)
        return lambda frame: method.call(_series(series(frame), label), **kwargs)


_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    value = frame[name]
    if isinstance(value, pd.DataFrame):
        raise Refused(f"the column name {name!r} appears {value.shape[1]} times")
    return value


def _series(value: Value, label: str) -> pd.Series:
    if not isinstance(value, pd.Series):
        raise Refused(f"{label} applies to columns, not to the single value {value!r}")
    return value


def _number(value: Value, symbol: str) -> Value:
    """`value` if arithmetic may use it: numbers, true/false, dates and durations; never text or objects
    (text arithmetic such as 'a' * 10**10 could allocate without bound)."""
    kind = getattr(value.dtype, "kind", "O") if isinstance(value, pd.Series) else None
    if kind in ("b", "i", "u", "f", "m", "M") or (kind is None and is_number(value)):
        return value
    got = f"a column of {value.dtype}" if kind is not None else repr(value)
    raise Refused(f"{symbol} needs numbers (or dates), got {got}; convert text with .astype('float')")


def _power(base: Value, exponent: Value) -> Value:
    """`base ** exponent` in float64: an overflow is inf, never an unbounded integer (9**9**9**9)."""
    base, exponent = (
        _number(v, "**").astype("float64") if isinstance(v, pd.Series) else np.float64(_number(v, "**"))
        for v in (base, exponent)
    )
    if isinstance(base, pd.Series) or isinstance(exponent, pd.Series):
        return base**exponent
    return float(np.power(base, exponent))


def _boolean(value: Value, symbol: str) -> Value:
    """`value` if boolean logic may use it: true/false (object columns are left to pandas)."""
    if isinstance(value, pd.Series):
        if pd.api.types.is_bool_dtype(value.dtype) or value.dtype == object:
            return value
        got = f"a column of {value.dtype}"
    elif isinstance(value, bool | np.bool_):
        return value
    else:
        got = repr(value)
    raise Refused(f"{symbol} needs true/false operands (a comparison), got {got}")


def _negate(value: Value) -> Value:
    value = _boolean(value, "~ / not")
    return not value if isinstance(value, bool) else ~value


def _membership(negate: bool, left: Compiled, options: list[Any]) -> Compiled:
    def run(frame: pd.DataFrame) -> Value:
        item = left(frame)
        if isinstance(item, pd.Series):
            found = item.isin(options)
            return ~found if negate else found
        return (item in options) != negate

    return run


def _comparison(op: Callable[[Any, Any], Any], left: Compiled, right: Compiled) -> Compiled:
    return lambda frame: op(left(frame), right(frame))


def _all_of(steps: Sequence[Compiled]) -> Compiled:
    """A chained comparison `a < b < c`: every link holds (`(a < b) & (b < c)`, as pandas)."""
    if len(steps) == 1:
        return steps[0]

    def run(frame: pd.DataFrame) -> Value:
        result = steps[0](frame)
        for step in steps[1:]:
            result = result & step(frame)
        return result

    return run


def _some(columns: pd.Index, limit: int = 8) -> str:
    names = [str(c) for c in columns]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"
