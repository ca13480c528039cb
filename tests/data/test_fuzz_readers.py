"""Fuzzing the readers: whatever bytes or table a file holds, loading it either gives a validated frame
that accounts for every row, or fails with one line naming the file; never a traceback, never silent loss.
Bounded in `make test`, long under `make test-slow` (FUZZ_BUDGETS in tests/helpers.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from churnwatch.data.loaders import LoadedEvents, load_events
from churnwatch.data.schema import CUSTOMER_ID, TIMESTAMP, EventSchema
from churnwatch.errors import ConfigError, DataValidationError
from tests.helpers import FUZZ_BUDGETS, run_fuzz

SCHEMA = EventSchema.from_config(
    {
        "customer_id": "id",
        "timestamp": "ts",
        "categorical": ["kind"],
        "numeric": [{"name": "amount", "min": 0, "fill": 0.0}],
    }
)
COLUMNS = ["id", "ts", "kind", "amount"]
CELLS = st.one_of(
    st.sampled_from(
        [
            "", " ", "C001", "C001\x00", "1001", "1001.0", "01001", "2024-06-01", "2024-06-01 10:00:00+02",
            "2024-06-01 10:00 UTC", "23/05/2024", "05/23/2024", "05/06/2024", "9999-12-31", "1600-01-01",
            "nan", "NaN", "inf", "-inf", "1e308", "1e309", "-5", "1,5", "<pad>", "<oov>", "__missing__",
            "\\x", "a\nb", 'q"uote', "é", "e\u0301", "\ufeff", "NULL", "None", "True",
        ]
    ),
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
HEADERS = st.lists(
    st.sampled_from([*COLUMNS, "extra", "__churnwatch_file_row__", "ID", ""]), min_size=1, max_size=6
)


def _values(values: st.SearchStrategy, kind: pa.DataType, n: int = 5) -> st.SearchStrategy:
    """An Arrow column of `n` values (or nulls) of one type."""
    return st.lists(st.one_of(st.none(), values), min_size=n, max_size=n).map(lambda v: pa.array(v, kind))


def _check(loaded: LoadedEvents) -> None:
    """A loaded table accounts for every row and holds only valid events."""
    report = loaded.report
    assert report.rows_kept + sum(report.dropped.values()) == report.rows_read - report.rows_filtered
    assert len(loaded.frame) == report.rows_kept > 0
    assert loaded.frame[TIMESTAMP].notna().all() and loaded.frame[CUSTOMER_ID].notna().all()
    assert set(loaded.frame[CUSTOMER_ID].astype(str)) <= set(map(str, loaded.input_ids))
    amount = loaded.frame["amount"].to_numpy()
    assert not (np.abs(amount) > 1e300).any()  # NaN only, where the field declares a fill
    assert (amount[~np.isnan(amount)] >= 0).all()
    assert set(report.examples) == set(report.dropped)


def _load(path: Path) -> None:
    """Load under both policies; a failure must be one line that names the file."""
    for policy in ("drop", "fail"):
        try:
            loaded = load_events(path, SCHEMA, policy=policy, end_date="2030-01-01")
        except (DataValidationError, ConfigError) as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, message
            continue
        _check(loaded)


@pytest.mark.parametrize("budget", FUZZ_BUDGETS)
def test_any_csv_rows_load_or_fail_in_one_line(budget: int, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"

    @st.composite
    def tables(draw: st.DrawFn) -> pd.DataFrame:
        header = draw(st.one_of(st.just(COLUMNS), HEADERS))
        rows = draw(st.lists(st.lists(CELLS, min_size=len(header), max_size=len(header)), max_size=8))
        return pd.DataFrame(rows, columns=range(len(header))).set_axis(header, axis=1)

    def prop(frame: pd.DataFrame) -> None:
        path.write_text(frame.to_csv(index=False), encoding="utf-8")
        _load(path)

    run_fuzz(given(tables())(prop), budget)


@pytest.mark.parametrize("budget", FUZZ_BUDGETS)
def test_any_bytes_as_a_csv_load_or_fail_in_one_line(budget: int, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    header = b"id,ts,kind,amount\n"
    pieces = [b",", b"\n", b"\r\n", b'"', b"\x00", b"\xff", b"C001", b"2024-06-01", b"5", b" "]
    chunks = st.sampled_from(pieces)
    body = st.one_of(st.binary(max_size=64), st.lists(chunks, max_size=40).map(b"".join))

    def prop(data: bytes, with_header: bool) -> None:
        path.write_bytes((header if with_header else b"") + data)
        _load(path)

    run_fuzz(given(body, st.booleans())(prop), budget)


@pytest.mark.parametrize("budget", FUZZ_BUDGETS)
def test_any_parquet_columns_load_or_fail_in_one_line(budget: int, tmp_path: Path) -> None:
    """Columns of any Arrow type (text, integers, floats, timestamps with and without zone, booleans,
    nulls, dictionaries), including the wrong type for their role."""
    path = tmp_path / "events.parquet"
    n = 5
    texts = st.lists(st.one_of(st.none(), CELLS), min_size=n, max_size=n)
    columns = st.one_of(
        texts.map(lambda v: pa.array(v, pa.string())),
        texts.map(lambda v: pa.array(v, pa.string()).dictionary_encode()),
        _values(st.integers(-(2**63), 2**63 - 1), pa.int64()),
        _values(st.floats(), pa.float64()),
        _values(st.booleans(), pa.bool_()),
        _values(st.integers(-(2**62), 2**62), pa.timestamp("us")),
        _values(st.integers(0, 2**40), pa.timestamp("s", tz="Europe/Berlin")),
        st.just(pa.nulls(n)),
    )

    def prop(arrays: list[pa.Array], names: list[str]) -> None:
        table = pa.table(dict(zip(names, arrays, strict=False)))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        path.write_bytes(buf.getvalue())
        _load(path)

    run_fuzz(given(st.lists(columns, min_size=4, max_size=4), st.permutations(COLUMNS))(prop), budget)

