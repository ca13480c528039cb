"""The one evaluator for expressions that come from a config or a model file (data.filter, data.derived,
data.label_events, data.aggregates.purchase_when, the indicators' events, values and text conditions).

A model file is untrusted input: its metadata carries these expressions, and pandas `eval`/`query` would
resolve `@name` to Python objects of the calling module (`@pd.read_pickle(...)` unpickles a payload). So
the text is parsed with `ast` and walked here, over an allow-list: column names, literals, arithmetic on
numbers, comparisons, boolean logic, `in [...]` and a few methods with literal arguments. The grammar,
the allow-list and the limits are in docs/EXPRESSIONS.md.
"""

from __future__ import annotations

import ast
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from churnwatch.errors import ConfigError

MAX_CHARS = 2_000
MAX_NODES = 500
MAX_DEPTH = 50

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
_REFUSED: dict[type[ast.AST], str] = {
    ast.Lambda: "lambdas are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.Subscript: "subscripts ([...]) are not allowed",
    ast.Slice: "subscripts ([...]) are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "assignments (:=) are not allowed",
    ast.Starred: "starred arguments (*) are not allowed",
    ast.IfExp: "conditional expressions (x if c else y) are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
}

ASTYPE = ("str", "float", "int", "bool", "float64", "int64")
DT_PROPERTIES = {
    "year": "year",
    "month": "month",
    "day": "day",
    "hour": "hour",
    "dayofweek": "day_of_week",  # pandas' older names, as pandas eval configs spell them
    "dayofyear": "day_of_year",
    "day_of_week": "day_of_week",
    "day_of_year": "day_of_year",
}
"""The .dt properties allowed, and the pandas property each reads."""


class _Refused(Exception):
    """Why an expression cannot be used; Expression turns it into one ConfigError line."""


@dataclass(frozen=True)
class _Method:
    """An allowed method: its parameters (positional, in order), how many are required, which may be
    given by keyword, the kind of literal each takes, and the call itself (on a Series or its .str)."""

    params: tuple[str, ...]
    required: int
    call: Callable[..., Any]
    kinds: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


SERIES_METHODS: dict[str, _Method] = {
    "astype": _Method(("dtype",), 1, lambda s, dtype: s.astype(dtype), ("dtype",)),
    "abs": _Method((), 0, lambda s: s.abs()),
    "clip": _Method(
        ("lower", "upper"),
        0,
        lambda s, lower=None, upper=None: s.clip(lower, upper),
        ("number_or_none", "number_or_none"),
        ("lower", "upper"),
    ),
    "fillna": _Method(("value",), 1, lambda s, value: s.fillna(value), ("scalar",)),
    "isna": _Method((), 0, lambda s: s.isna()),
    "notna": _Method((), 0, lambda s: s.notna()),
    "isin": _Method(("values",), 1, lambda s, values: s.isin(values), ("list",)),
    "round": _Method(("decimals",), 0, lambda s, decimals=0: s.round(decimals), ("int",)),
    "between": _Method(
        ("left", "right"), 2, lambda s, left, right: s.between(left, right), ("scalar", "scalar")
    ),
}
STR_METHODS: dict[str, _Method] = {
    "startswith": _Method(("pat",), 1, lambda s, pat: s.str.startswith(pat), ("texts",)),
    "endswith": _Method(("pat",), 1, lambda s, pat: s.str.endswith(pat), ("texts",)),
    "contains": _Method(("pat",), 1, lambda s, pat: s.str.contains(pat, regex=False), ("text",)),
    "lower": _Method((), 0, lambda s: s.str.lower()),
    "upper": _Method((), 0, lambda s: s.str.upper()),
    "strip": _Method((), 0, lambda s: s.str.strip()),
    "len": _Method((), 0, lambda s: s.str.len()),
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
            self._run = _Compiler(self).compile(_parse(text))
        except _Refused as exc:
            raise self._error(str(exc)) from None

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
                raise _Refused(f"is not a condition: it gives {value.dtype} values, not true/false")
            return value.to_numpy(dtype=bool, na_value=False)

    @contextmanager
    def _reasons(self) -> Iterator[None]:
        """Any failure inside as one ConfigError line: a refusal with its reason, an exception of pandas or
        numpy (operands that do not fit, e.g. text compared with a number) with its message."""
        try:
            with np.errstate(all="ignore"):
                yield
        except _Refused as exc:
            raise self._error(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - pandas and numpy raise many types
            raise self._error(f"{type(exc).__name__}: {_one_line(str(exc))}") from exc

    def _error(self, reason: str) -> ConfigError:
        long = isinstance(self.text, str) and len(self.text) > 200
        shown = f"{self.text[:200]!r}... ({len(self.text):,} characters)" if long else repr(self.text)
        return ConfigError(f"{self.what} = {shown}: {reason}")


def check_expression(text: str | None, what: str) -> None:
    """Parse an optional expression from a config now, so a bad one fails before any data is read."""
    if text is not None and text != "":
        Expression(text, what)


def _parse(text: Any) -> ast.expr:
    if not isinstance(text, str):
        raise _Refused(f"an expression must be text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise _Refused(f"longer than {MAX_CHARS:,} characters ({len(text):,})")
    source, names = _python_source(text)
    try:
        with warnings.catch_warnings():  # e.g. "invalid escape sequence": Python's advice, not the user's
            warnings.simplefilter("ignore")
            tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        message = _one_line(exc.msg)
        raise _Refused(
            message if message.startswith("invalid syntax") else f"invalid syntax: {message}"
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise _Refused(f"cannot parse ({type(exc).__name__}: {_one_line(str(exc))})") from None
    _check_size(tree)
    return _Placeholders(names).visit(tree.body)


def _python_source(text: str) -> tuple[str, dict[str, str]]:
    """`text` as Python: backtick-quoted names become placeholders (returned with their names), `&` and
    `|` become `and` / `or` (pandas gives them the precedence of boolean operators: `a > 1 & b < 2` is
    `(a > 1) and (b < 2)`), and an `@` outside string literals is refused."""
    prefix = "_bq"
    while prefix in text:
        prefix += "_"
    out: list[str] = []
    names: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ("'''", '"""') else c
            j = i + len(quote)
            while j < n and not text.startswith(quote, j):
                j += 2 if text[j] == "\\" else 1
            j = min(j + len(quote), n)
            out.append(text[i:j])
            i = j
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise _Refused("a backtick-quoted name is not closed")
            placeholder = f"{prefix}{len(names)}"
            names[placeholder] = text[i + 1 : j]
            out.append(placeholder)
            i = j + 1
        elif c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
        elif c == "@":
            raise _Refused("@ references are not allowed")
        else:
            out.append({"&": " and ", "|": " or "}.get(c, c))
            i += 1
    return "".join(out), names


def _check_size(tree: ast.AST) -> None:
    """At most MAX_NODES nodes nested at most MAX_DEPTH deep (no recursion: the tree may be deep)."""
    stack = [(tree, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.expr_context | ast.operator | ast.cmpop | ast.boolop | ast.unaryop):
            continue
        count += 1
        if count > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} parts; split it or simplify it")
        if depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} deep")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


class _Placeholders(ast.NodeTransformer):
    """Backtick placeholders back to the column names they stand for (as Name nodes with any text)."""

    def __init__(self, names: dict[str, str]):
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(id=self.names.get(node.id, node.id), ctx=node.ctx)


class _Compiler:
    """AST → a closure over the frame, checking every node against the allow-list on the way."""

    def __init__(self, expression: Expression):
        self.expression = expression

    def compile(self, node: ast.expr) -> Compiled:
        if type(node) in _REFUSED:
            raise _Refused(_REFUSED[type(node)])
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise _Refused(f"{type(node).__name__} is not allowed")
        return method(node)

    def _Name(self, node: ast.Name) -> Compiled:
        name = node.id
        if name not in self.expression.columns:
            self.expression.columns = (*self.expression.columns, name)
        return lambda frame: _column(frame, name)

    def _Constant(self, node: ast.Constant) -> Compiled:
        value = _literal(node)
        return lambda frame: value

    def _List(self, node: ast.List | ast.Tuple) -> Compiled:
        raise _Refused("a list is only allowed after `in` / `not in` or in isin(...)")

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
            raise _Refused(f"the operator {type(node.op).__name__} is not allowed")
        for side in (node.left, node.right):
            if isinstance(side, ast.Constant) and not _is_number(side.value):
                raise _Refused(f"{symbol} needs numbers, got {side.value!r}")
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
                    raise _Refused(
                        "`in` / `not in` need a list of literals on the right, e.g. x in ['a', 'b']"
                    )
                steps.append(_membership(isinstance(op, ast.NotIn), self.compile(left), _literal(right)))
            elif type(op) in _COMPARE:
                steps.append(_comparison(_COMPARE[type(op)], self.compile(left), self.compile(right)))
            else:
                raise _Refused("`is` / `is not` are not allowed (use isna() / notna())")
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
            raise _Refused(f".{node.attr} must be followed by one of {allowed}")
        raise _Refused(f"the attribute .{node.attr} is not allowed")

    def _Call(self, node: ast.Call) -> Compiled:
        func = node.func
        if isinstance(func, ast.Name):
            raise _Refused(f"calling {func.id}(...) is not allowed; only methods of columns are")
        if not isinstance(func, ast.Attribute):
            self.compile(func)  # the reason what is called is refused, if there is one
            raise _Refused("only methods of columns can be called")
        on_str = isinstance(func.value, ast.Attribute) and func.value.attr == "str"
        methods = STR_METHODS if on_str else SERIES_METHODS
        label = f".str.{func.attr}()" if on_str else f".{func.attr}()"
        method = methods.get(func.attr)
        if method is None:
            allowed = ", ".join(f".str.{m}()" for m in STR_METHODS) if on_str else ", ".join(SERIES_METHODS)
            raise _Refused(f"the method {label} is not allowed (allowed: {allowed})")
        kwargs = _arguments(node, method, label)
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


def _arguments(node: ast.Call, method: _Method, label: str) -> dict[str, Any]:
    """The call's literal arguments by parameter name, checked against the method's kinds."""
    if len(node.args) > len(method.params):
        raise _Refused(f"{label} takes at most {len(method.params)} arguments")
    given = dict(zip(method.params, node.args, strict=False))
    for kw in node.keywords:
        if kw.arg not in method.keywords or kw.arg in given:
            raise _Refused(f"{label} does not take the keyword {kw.arg or '**'}")
        given[kw.arg] = kw.value
    if len(given) < method.required:
        raise _Refused(f"{label} needs {method.required} argument(s): {', '.join(method.params)}")
    kinds = dict(zip(method.params, method.kinds, strict=True))
    return {name: _argument(arg, kinds[name], label) for name, arg in given.items()}


def _argument(node: ast.expr, kind: str, label: str) -> Any:
    value = _literal(node)
    accepts, want = _KINDS[kind]
    if not accepts(value):
        raise _Refused(f"{label} takes {want}, got {value!r}")
    return tuple(value) if kind == "texts" and isinstance(value, list) else value


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "dtype": (lambda v: isinstance(v, str) and v in ASTYPE, f"one of {', '.join(map(repr, ASTYPE))}"),
    "number_or_none": (lambda v: v is None or _is_number(v), "a number or None"),
    "scalar": (lambda v: v is not None and not isinstance(v, list), "a number, text or True/False"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "list": (lambda v: isinstance(v, list), "a list of literals"),
    "text": (lambda v: isinstance(v, str), "text"),
    "texts": (
        lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
        "text or a tuple of texts",
    ),
}


def _literal(node: ast.expr) -> Any:
    """A literal: int, float, str, bool or None, a signed number, or a list/tuple of those (as a list)."""
    if isinstance(node, ast.List | ast.Tuple):
        return [_scalar_literal(e) for e in node.elts]
    return _scalar_literal(node)


def _scalar_literal(node: ast.expr) -> Any:
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and _is_number(node.operand.value)
    ):  # a signed number
        value = _scalar_literal(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if not isinstance(node, ast.Constant):
        raise _Refused(f"arguments and list items must be literals, not {type(node).__name__}")
    value = node.value
    if value is not None and not isinstance(value, bool | int | float | str):
        raise _Refused(f"the literal {value!r} is not allowed (numbers, text, True/False, None)")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        try:
            return float(value)
        except OverflowError:
            raise _Refused("a number is too large") from None
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number | np.bool_)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    value = frame[name]
    if isinstance(value, pd.DataFrame):
        raise _Refused(f"the column name {name!r} appears {value.shape[1]} times")
    return value


def _series(value: Value, label: str) -> pd.Series:
    if not isinstance(value, pd.Series):
        raise _Refused(f"{label} applies to columns, not to the single value {value!r}")
    return value


def _number(value: Value, symbol: str) -> Value:
    """`value` if arithmetic may use it: numbers, true/false, dates and durations; never text or objects
    (text arithmetic such as 'a' * 10**10 could allocate without bound)."""
    kind = getattr(value.dtype, "kind", "O") if isinstance(value, pd.Series) else None
    if kind in ("b", "i", "u", "f", "m", "M") or (kind is None and _is_number(value)):
        return value
    got = f"a column of {value.dtype}" if kind is not None else repr(value)
    raise _Refused(f"{symbol} needs numbers (or dates), got {got}; convert text with .astype('float')")


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
    raise _Refused(f"{symbol} needs true/false operands (a comparison), got {got}")


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


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
