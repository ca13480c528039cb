"""What an expression from a config or a model file may say, and its text parsed into a checked Python AST.

The grammar side of the restricted evaluator (`churnwatch.data.expressions` compiles and runs what this
module accepts): the size limits, the constructs refused with a reason, the allowed methods and the
literal arguments each takes. Nothing here touches data. docs/EXPRESSIONS.md lists the grammar.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_CHARS = 2_000
MAX_NODES = 500
MAX_DEPTH = 50

REFUSED_NODES: dict[type[ast.AST], str] = {
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


class Refused(Exception):
    """Why an expression cannot be used; Expression turns it into one ConfigError line."""


@dataclass(frozen=True)
class Method:
    """An allowed method: its parameters (positional, in order), how many are required, which may be
    given by keyword, the kind of literal each takes, and the call itself (on a Series or its .str)."""

    params: tuple[str, ...]
    required: int
    call: Callable[..., Any]
    kinds: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


SERIES_METHODS: dict[str, Method] = {
    "astype": Method(("dtype",), 1, lambda s, dtype: s.astype(dtype), ("dtype",)),
    "abs": Method((), 0, lambda s: s.abs()),
    "clip": Method(
        ("lower", "upper"),
        0,
        lambda s, lower=None, upper=None: s.clip(lower, upper),
        ("number_or_none", "number_or_none"),
        ("lower", "upper"),
    ),
    "fillna": Method(("value",), 1, lambda s, value: s.fillna(value), ("scalar",)),
    "isna": Method((), 0, lambda s: s.isna()),
    "notna": Method((), 0, lambda s: s.notna()),
    "isin": Method(("values",), 1, lambda s, values: s.isin(values), ("list",)),
    "round": Method(("decimals",), 0, lambda s, decimals=0: s.round(decimals), ("int",)),
    "between": Method(
        ("left", "right"), 2, lambda s, left, right: s.between(left, right), ("scalar", "scalar")
    ),
}
STR_METHODS: dict[str, Method] = {
    "startswith": Method(("pat",), 1, lambda s, pat: s.str.startswith(pat), ("texts",)),
    "endswith": Method(("pat",), 1, lambda s, pat: s.str.endswith(pat), ("texts",)),
    "contains": Method(("pat",), 1, lambda s, pat: s.str.contains(pat, regex=False), ("text",)),
    "lower": Method((), 0, lambda s: s.str.lower()),
    "upper": Method((), 0, lambda s: s.str.upper()),
    "strip": Method((), 0, lambda s: s.str.strip()),
    "len": Method((), 0, lambda s: s.str.len()),
}


def parse_expression(text: Any) -> ast.expr:
    """`text` as a Python expression tree, with backtick-quoted names as plain names: refused (with the
    reason) when it is not text, too long, not valid syntax, too large or too deep."""
    if not isinstance(text, str):
        raise Refused(f"an expression must be text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise Refused(f"longer than {MAX_CHARS:,} characters ({len(text):,})")
    source, names = _python_source(text)
    try:
        with warnings.catch_warnings():  # e.g. "invalid escape sequence": Python's advice, not the user's
            warnings.simplefilter("ignore")
            tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        message = one_line(exc.msg)
        raise Refused(
            message if message.startswith("invalid syntax") else f"invalid syntax: {message}"
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise Refused(f"cannot parse ({type(exc).__name__}: {one_line(str(exc))})") from None
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
                raise Refused("a backtick-quoted name is not closed")
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
            raise Refused("@ references are not allowed")
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
            raise Refused(f"more than {MAX_NODES} parts; split it or simplify it")
        if depth > MAX_DEPTH:
            raise Refused(f"nested more than {MAX_DEPTH} deep")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


class _Placeholders(ast.NodeTransformer):
    """Backtick placeholders back to the column names they stand for (as Name nodes with any text)."""

    def __init__(self, names: dict[str, str]):
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(id=self.names.get(node.id, node.id), ctx=node.ctx)


def method_arguments(node: ast.Call, method: Method, label: str) -> dict[str, Any]:
    """The call's literal arguments by parameter name, checked against the method's kinds."""
    if len(node.args) > len(method.params):
        raise Refused(f"{label} takes at most {len(method.params)} arguments")
    given = dict(zip(method.params, node.args, strict=False))
    for kw in node.keywords:
        if kw.arg not in method.keywords or kw.arg in given:
            raise Refused(f"{label} does not take the keyword {kw.arg or '**'}")
        given[kw.arg] = kw.value
    if len(given) < method.required:
        raise Refused(f"{label} needs {method.required} argument(s): {', '.join(method.params)}")
    kinds = dict(zip(method.params, method.kinds, strict=True))
    return {name: _argument(arg, kinds[name], label) for name, arg in given.items()}


def _argument(node: ast.expr, kind: str, label: str) -> Any:
    value = literal(node)
    accepts, want = _KINDS[kind]
    if not accepts(value):
        raise Refused(f"{label} takes {want}, got {value!r}")
    return tuple(value) if kind == "texts" and isinstance(value, list) else value


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "dtype": (lambda v: isinstance(v, str) and v in ASTYPE, f"one of {', '.join(map(repr, ASTYPE))}"),
    "number_or_none": (lambda v: v is None or is_number(v), "a number or None"),
    "scalar": (lambda v: v is not None and not isinstance(v, list), "a number, text or True/False"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "list": (lambda v: isinstance(v, list), "a list of literals"),
    "text": (lambda v: isinstance(v, str), "text"),
    "texts": (
        lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
        "text or a tuple of texts",
    ),
}


def literal(node: ast.expr) -> Any:
    """A literal: int, float, str, bool or None, a signed number, or a list/tuple of those (as a list)."""
    if isinstance(node, ast.List | ast.Tuple):
        return [_scalar_literal(e) for e in node.elts]
    return _scalar_literal(node)


def _scalar_literal(node: ast.expr) -> Any:
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and is_number(node.operand.value)
    ):  # a signed number
        value = _scalar_literal(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if not isinstance(node, ast.Constant):
        raise Refused(f"arguments and list items must be literals, not {type(node).__name__}")
    value = node.value
    if value is not None and not isinstance(value, bool | int | float | str):
        raise Refused(f"the literal {value!r} is not allowed (numbers, text, True/False, None)")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        try:
            return float(value)
        except OverflowError:
            raise Refused("a number is too large") from None
    return value


def is_number(value: Any) -> bool:
    """A number (true/false counts, as in numpy) rather than text or None."""
    return isinstance(value, int | float | np.number | np.bool_)


def one_line(text: str, limit: int = 300) -> str:
    """A message on one line, cut at `limit` characters (an error repeats what pandas or Python said)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
