"""The restricted expression evaluator (churnwatch.data.expressions): the known escapes through pandas eval
fail in one line and run nothing, also from a forged model file; every expression in conf/ gives what pandas
eval gave; any text either evaluates or fails with one ConfigError line; well-formed expressions agree with
pandas eval."""

from __future__ import annotations

import pickle
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from churnwatch.data.expressions import Expression
from churnwatch.data.schema import EventSchema
from churnwatch.errors import ArtifactError, ConfigError
from churnwatch.explain.drivers import IndicatorCatalogue
from churnwatch.features.aggregates import AggregateSpec
from churnwatch.jobs.score import ScoreJob, score_file
from tests.helpers import (
    BAD_INPUT_CASES,
    BAD_INPUTS,
    FUZZ_BUDGETS,
    REPO,
    SCORE_OPTIONS,
    rewrite_model,
    run_fuzz,
)

FRAME = pd.DataFrame(
    {
        "a": [0, 1, 2, -3, 5, 1],
        "b": [0.5, np.nan, -1.25, 2.0, 0.0, 1e3],
        "c": [1.0, 2.0, np.nan, -0.5, 3.0, 0.0],
        "s": ["apple", "Banana", None, "cherry", "", "apple pie"],
        "k": pd.Categorical(["x", "y", "x", "z", "y", "x"]),
        "a b": [1, 2, 3, 4, 5, 6],
    }
)


class _Payload:
    """Unpickling it creates `marker`: what a forged `@pd.read_pickle(...)` would have run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.marker), "w")


def _payload(tmp_path: Path) -> tuple[Path, Path]:
    """A pickle whose loading creates a marker file, and that marker."""
    marker = tmp_path / "pwned"
    path = tmp_path / "payload.pkl"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    return path, marker


ESCAPES = [
    "@pd.read_pickle('{payload}')",
    "__import__('os').system('touch {marker}')",
    "amount.__class__",
    "amount.to_pickle('{marker}')",
    "amount.pipe(print)",
    "amount.apply(print)",
    "(lambda: 1)()",
    "[x for x in amount]",
    "amount[0]",
    "open('{marker}', 'w')",
    "amount.str.__class__",
    "`a b`.__dict__",
    "'a' * 10**10",
    "'(' * 10000 + 'a' + ')' * 10000",
    "(" * 10000 + "amount" + ")" * 10000,
    "amount + " * 2500 + "amount",
    "-" * 1990 + "amount",
    "not " * 400 + "amount",
    "f'{{amount}}'",
    "(y := amount)",
    "amount.astype(str)",
    "amount.str.contains('a', regex=True)",
]


@pytest.mark.parametrize("text", ESCAPES, ids=lambda t: t[:40])
def test_known_escapes_fail_in_one_line_and_run_nothing(text: str, tmp_path: Path) -> None:
    payload, marker = _payload(tmp_path)
    text = text.format(payload=payload, marker=marker)
    what = "events.csv: data.filter"
    with pytest.raises(ConfigError) as err:
        Expression(text, what)  # refused when parsed, before any frame: nothing of it is evaluated
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{what} = "), message
    assert len(message) < 600, message
    assert not marker.exists()


def test_the_messages_say_why() -> None:
    reasons = {
        "@pd.read_pickle('x')": "@ references are not allowed",
        "amount.to_pickle('x')": "the method .to_pickle() is not allowed",
        "open('x')": "calling open(...) is not allowed",
        "'a' * 10**10": "* needs numbers",
        "amount ** 2 > 'x' * 3": "* needs numbers",
        "a + " * 600 + "a": "longer than 2,000 characters",
        "a in [" + "1, " * 600 + "]": "more than 500 parts",
        "-" * 60 + "a": "nested more than 50 deep",
        "a + " * 60 + "a": "nested more than 50 deep",  # a chain of operations nests too
        "amount[0]": "subscripts",
        "amount in 'abc'": "`in` / `not in` need a list",
        "amount == [1, 2]": "a list is only allowed after `in`",
        "amount.dt": ".dt must be followed by one of year",
    }
    for text, reason in reasons.items():
        with pytest.raises(ConfigError, match=re.escape(reason)):
            Expression(text, "data.filter")
    frame = pd.DataFrame({"amount": [1.0, 2.0], "name": ["x", "y"]})
    with pytest.raises(
        ConfigError, match=r"^data.filter = 'amont > 1': unknown column 'amont' \(columns: amount, name\)$"
    ):
        Expression("amont > 1", "data.filter").mask(frame)
    with pytest.raises(ConfigError, match=r"= 'name \* 2': \* needs numbers \(or dates\), got a column of"):
        Expression("name * 2", "w").evaluate(frame)
    with pytest.raises(ConfigError, match=r"= 'amount \* 2': is not a condition: it gives float64 values"):
        Expression("amount * 2", "w").mask(frame)
    with pytest.raises(ConfigError, match=r"= 'name > 1': TypeError: "):  # pandas' own error, in one line
        Expression("name > 1", "w").mask(frame)


def test_powers_are_float64_so_huge_ones_end_at_once() -> None:
    t0 = time.perf_counter()
    assert np.isinf(Expression("9**9**9**9", "w").evaluate(FRAME)).all()
    assert Expression("a ** -1", "w").evaluate(FRAME).tolist()[:3] == [np.inf, 1.0, 0.5]
    assert time.perf_counter() - t0 < 1


def test_the_allowed_grammar() -> None:
    frame = pd.DataFrame(
        {
            "x": [1, -2, 3, np.nan],
            "s": ["Ab", " cd ", None, "ab"],
            "t": pd.to_datetime(["2024-01-01 10:00", "2024-02-29 23:00", None, "2024-12-31 00:00"]),
            "Unit Price": [1.0, 2.0, 3.0, 4.0],
        }
    )
    cases = {
        "x.abs().fillna(0)": [1.0, 2.0, 3.0, 0.0],
        "x.clip(lower=0, upper=2)": [1.0, 0.0, 2.0, np.nan],
        "x.isna() | (x > 2)": [False, False, True, True],
        "x.notna() and not x < 0": [True, False, True, False],
        "~x.isin([1, 3])": [False, True, False, True],
        "x.between(-2, 1)": [True, True, False, False],
        "(x / 3).round(1)": [0.3, -0.7, 1.0, np.nan],
        "x.fillna(0).astype('int')": [1, -2, 3, 0],
        "s.str.strip().str.lower() == 'cd'": [False, True, False, False],
        "s.str.upper().str.startswith(('A', 'X'))": [True, False, False, True],
        "s.str.endswith('d ')": [False, True, False, False],
        "s.str.contains('(')": [False, False, False, False],
        "s.str.len()": [2.0, 4.0, np.nan, 2.0],
        "t.dt.month * 100 + t.dt.day": [101.0, 229.0, np.nan, 1231.0],
        "t.dt.year + t.dt.hour + t.dt.dayofweek + t.dt.dayofyear": [2035, 2024 + 23 + 3 + 60, np.nan, 2391],
        "t.dt.day_of_week": [0, 3, np.nan, 1],
        "t > '2024-06-01'": [False, False, False, True],
        "`Unit Price` * 2 // 3 % 2": [0.0, 1.0, 0.0, 0.0],
        "1 < `Unit Price` <= 3": [False, True, True, False],
        "s not in ['Ab', None]": [False, True, False, True],  # None matches a missing value
        "-x + +1": [0.0, 3.0, -2.0, np.nan],
    }
    for text, expected in cases.items():
        got = Expression(text, "w").evaluate(frame)
        np.testing.assert_array_equal(
            got.to_numpy(dtype=float), np.asarray(expected, dtype=float), err_msg=text
        )
    assert Expression("x > 0", "w").mask(frame).tolist() == [True, False, True, False]  # NaN selects nothing
    assert Expression("True", "w").mask(frame).all()
    assert Expression("`Unit Price` * x + x", "w").columns == ("Unit Price", "x")


FORGERIES: dict[str, Any] = {
    "data.filter": lambda meta, text: meta["data"].update(filter=text),
    "data.derived": lambda meta, text: meta["data"].update(derived={"amount": text}),
    "purchase_when": lambda meta, text: meta["featurizer"]["spec"].update(purchase_when=text),
    "indicator text": lambda meta, text: next(iter(meta["data"]["indicators"].values())).update(
        text=[{"when": text, "say": "x"}]
    ),
}


@pytest.mark.parametrize("where", sorted(FORGERIES))
def test_a_model_file_with_a_forged_expression_fails_in_one_line_and_unpickles_nothing(
    model: Path, where: str, tmp_path: Path
) -> None:
    """The metadata of a model file is rewritten (checksum recomputed) to carry `@pd.read_pickle(...)`,
    which pandas eval would have run at scoring time."""
    payload, marker = _payload(tmp_path)
    forged_text = f"@pd.read_pickle('{payload}')"
    forged = rewrite_model(model, tmp_path / "forged.pt", meta=lambda m: FORGERIES[where](m, forged_text))
    out = tmp_path / "scores.parquet"
    with pytest.raises((ConfigError, ArtifactError)) as err:  # the metadata checks name the file too
        events = BAD_INPUTS / BAD_INPUT_CASES["single_event_customers"]["events"]
        score_file(
            ScoreJob(model_path=forged, events_path=events, output_path=out, **SCORE_OPTIONS), progress=False
        )
    message = str(err.value)
    assert "\n" not in message and f"{forged_text!r}: @ references are not allowed" in message, message
    assert not marker.exists() and not out.exists()
    pd.read_pickle(payload)  # the payload is live: what pandas eval would have run
    assert marker.exists()


def _conf_expressions() -> list[tuple[str, str, bool]]:
    """(what, text, is a condition) of every expression in conf/data."""
    found: list[tuple[str, str, bool]] = []
    for path in sorted((REPO / "conf" / "data").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        for key in ("filter", "label_events"):
            if cfg.get(key):
                found.append((f"{path.name}: data.{key}", cfg[key], True))
        for name, text in (cfg.get("derived") or {}).items():
            found.append((f"{path.name}: data.derived.{name}", text, False))
        if (cfg.get("aggregates") or {}).get("purchase_when"):
            found.append((f"{path.name}: purchase_when", cfg["aggregates"]["purchase_when"], True))
    for path in sorted((REPO / "conf" / "data" / "indicators").glob("*.yaml")):
        for name, ind in yaml.safe_load(path.read_text()).items():
            what = f"{path.name}: {name}"
            if ind.get("events") not in (None, "*"):
                found.append((f"{what}.events", ind["events"], True))
            found += [(f"{what}.values.{k}", v, False) for k, v in (ind.get("values") or {}).items()]
            found += [(f"{what}.text", t["when"], True) for t in ind.get("text") or () if t.get("when")]
    return found


CONF_EXPRESSIONS = _conf_expressions()
TEXT_COLUMNS = {
    "event_type": pd.Categorical(["purchase", "visit", "complaint", "__missing__", "survey", "purchase"] * 2),
    "outcome": pd.Categorical(["resolved", "__missing__", "resolved", "open", "__missing__", "open"] * 2),
    "InvoiceNo": pd.Series(["536365", "C536379", 536366, None, "c1", "A563185"] * 2, dtype=object),
}


def test_every_expression_in_conf_gives_what_pandas_eval_gave() -> None:
    assert len(CONF_EXPRESSIONS) >= 25
    texts = {text for _, text, _ in CONF_EXPRESSIONS}
    assert "~InvoiceNo.astype('str').str.startswith('C') & (Quantity > 0) & (UnitPrice >= 0)" in texts
    assert "(n_event_type_complaint_90d - n_outcome_resolved_90d).clip(lower=0)" in texts
    rng = np.random.default_rng(0)
    numbers = [0.0, 0.5, 0.85, 0.9, 1.0, 1.5, 2.0, 3.0, -1.0, np.nan]
    columns = sorted({c for what, text, _ in CONF_EXPRESSIONS for c in Expression(text, what).columns})
    frame = pd.DataFrame(
        {c: TEXT_COLUMNS[c] if c in TEXT_COLUMNS else rng.choice(numbers, size=12) for c in columns}
    )
    frame["Quantity"] = rng.integers(-2, 5, size=12)  # integers, as in the file
    for what, text, condition in CONF_EXPRESSIONS:
        expression = Expression(text, what)
        pandas = pd.Series(frame.eval(text, engine="python"), index=frame.index)
        pd.testing.assert_series_equal(expression.evaluate(frame), pandas, check_names=False, obj=what)
        if condition:
            np.testing.assert_array_equal(
                expression.mask(frame), np.asarray(pandas.fillna(False), dtype=bool)
            )


def test_config_expressions_are_parsed_when_the_config_is_read() -> None:
    """A bad expression fails when the config is read, before any data."""
    schema = {"customer_id": "cid", "timestamp": "ts"}
    for key, value, what in [
        ("filter", "amount.to_pickle('x')", "data.filter"),
        ("derived", {"amount": "open('x')"}, "data.derived.amount"),
        ("label_events", "@x", "data.label_events"),
    ]:
        with pytest.raises(ConfigError, match=rf"^{re.escape(what)} = "):
            EventSchema.from_config({**schema, key: value})
    with pytest.raises(
        ConfigError, match=r"^data.aggregates.purchase_when = 'kind\.pipe\(print\)': the method"
    ):
        AggregateSpec.from_config({"purchase_when": "kind.pipe(print)"})
    for ind, what in [
        ({"events": "kind.apply(print)"}, "data.indicators.x.events"),
        ({"values": {"v": "a[0]"}}, "data.indicators.x.values.v"),
        ({"text": [{"when": "lambda: 1", "say": "x"}]}, "data.indicators.x.text"),
    ]:
        with pytest.raises(ConfigError, match=rf"^{re.escape(what)} = "):
            IndicatorCatalogue.from_config({"x": ind})


TOKENS = [
    "a", "b", "s", "k", "`a b`", "amount", " ", "+", "-", "*", "**", "/", "//", "%", "(", ")", "[", "]", ",",
    ".", "@", "__", "__class__", "'", '"', "'x'", '"y"', "1", "0", "1e308", "9", "-1", "==", "<", ">=", "&",
    "|", "~", " not ", " and ", " or ", " in ", " is ", "lambda", ":", "=", ":=", "str", "dt", "astype",
    "abs", "clip", "lower=", "fillna", "isin", "startswith", "contains", "len", "year", "to_pickle", "apply",
    "pipe", "open", "__import__", "#", "\\", "\n", "`", " if ", " else ", " for ", "x", "True", "None",
    "'float'", "f'", "{", "}", "*", "\x00", "é",
]  # fmt: skip


def _evaluates_or_fails_in_one_line(text: str) -> None:
    try:
        expression = Expression(text, "fuzz")
        assert isinstance(expression.evaluate(FRAME), pd.Series)
        expression.mask(FRAME)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("fuzz = "), message


@pytest.mark.parametrize("budget", FUZZ_BUDGETS)
def test_any_text_evaluates_or_fails_in_one_config_error_line(budget: int) -> None:
    @given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)))
    def prop(text: str) -> None:
        _evaluates_or_fails_in_one_line(text)

    run_fuzz(prop, budget)


NUM_LEAF = st.sampled_from(["a", "b", "c", "`a b`", "1", "2", "0", "-1", "0.5", "3.25"])
COMPARE = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])


def _numbers(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        inner,
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        inner.map(lambda x: f"-({x})"),
        inner.map(lambda x: f"({x}).abs()"),
        inner.map(lambda x: f"({x}).fillna(0)"),
        inner.map(lambda x: f"({x}).round(1)"),
        inner.map(lambda x: f"({x}).astype('float64')"),
        st.tuples(inner, st.sampled_from(["lower=0", "upper=1", "-1, 1", "lower=-0.5, upper=2"])).map(
            lambda t: f"({t[0]}).clip({t[1]})"
        ),
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["0", "1", "2", "3", "0.5"])).map(
            lambda t: f"{t[0]} ** {t[1]}"
        ),
        st.just("s.str.len()"),
    )


NUMBER = st.recursive(NUM_LEAF, _numbers, max_leaves=8)
ON_COLUMNS = NUMBER.filter(lambda x: re.search("[a-z]", x) is not None)  # a Series (or an error in both)
CONDITION_LEAF = st.one_of(
    st.tuples(ON_COLUMNS, COMPARE, NUMBER).map(" ".join),
    st.tuples(NUM_LEAF, COMPARE, ON_COLUMNS, COMPARE, NUM_LEAF).map(" ".join),  # chained
    st.sampled_from(
        [
            "k == 'x'",
            "k != 'y'",
            "k in ['x', 'z']",
            "k not in ['y']",
            "s.str.startswith('a')",
            "s.str.contains('an')",
            "s.str.lower() == 'banana'",
            "b.isna()",
            "c.notna()",
            "a.between(0, 2)",
            "a.isin([1, 5])",
            "0 < a < 3",
        ]
    ),  # fmt: skip
)


def _conditions(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        inner,
        st.tuples(inner, st.sampled_from(["&", "|", "and", "or"]), inner).map(
            lambda t: f"({t[0]}) {t[1]} ({t[2]})"
        ),
        inner.map(lambda x: f"~({x})"),
        inner.map(lambda x: f"not ({x})"),
        # unparenthesised: & and | bind like and / or, as in pandas
        st.tuples(
            ON_COLUMNS, COMPARE, NUM_LEAF, st.sampled_from(["&", "|"]), ON_COLUMNS, COMPARE, NUM_LEAF
        ).map(" ".join),
    )


CONDITION = st.recursive(CONDITION_LEAF, _conditions, max_leaves=6)


@pytest.mark.parametrize("budget", FUZZ_BUDGETS)
def test_well_formed_expressions_give_what_pandas_eval_gives(budget: int) -> None:
    @given(st.one_of(NUMBER, CONDITION))
    def prop(text: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pandas = FRAME.eval(text, engine="python")
            except Exception:  # noqa: BLE001 - only what pandas itself evaluates is compared
                return
        ours = Expression(text, "fuzz").evaluate(FRAME)
        pandas = pandas if isinstance(pandas, pd.Series) else pd.Series(pandas, index=FRAME.index)
        pd.testing.assert_series_equal(
            ours, pandas, check_dtype=False, check_names=False, rtol=1e-9, obj=text
        )

    run_fuzz(prop, budget)


def test_an_expression_pickles_as_its_text_and_works_after() -> None:
    """Objects that keep a parsed expression (a featurizer inside a datamodule) go to spawned processes."""
    import pickle

    expr = Expression("amount > 2 and event_type == 'purchase'", "data.filter")
    copy = pickle.loads(pickle.dumps(expr))
    frame = pd.DataFrame({"amount": [1.0, 3.0, 5.0], "event_type": ["purchase", "purchase", "visit"]})
    assert copy.text == expr.text and copy.columns == expr.columns
    assert copy.mask(frame).tolist() == expr.mask(frame).tolist() == [False, True, False]
