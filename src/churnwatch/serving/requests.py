"""One scoring request: its body (JSON rows, Arrow IPC or parquet) → an events table, customer attributes,
`as_of` and options, within the service's limits. Anything wrong is a `RequestError`: an HTTP status and one
line naming what to fix.

The JSON body, in the model's data contract (its raw column names, as in the training files):

    {"events": [{"customer_id": "C1", "timestamp": "2024-10-01T10:00:00", "event_type": "purchase", ...}],
     "customers": [{"customer_id": "C1", "region": "north"}],      # optional: the attributes
     "as_of": "2024-11-01",                                        # optional: default the end of today
     "drivers": false}                                             # optional: leave the driver columns out

`events` (and `customers`) may also be columns: {"customer_id": ["C1", "C1"], "timestamp": [...], ...}.
A bulk body is the events table as Arrow IPC (stream or file) or parquet, with `as_of` and `drivers` in the
query string.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnwatch.config.schema import LimitsConfig
from churnwatch.data.parsing import canonical_ids, normalise_ids, parse_day
from churnwatch.errors import ConfigError

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"
PARQUET = "application/vnd.apache.parquet"
BODY_TYPES = (JSON, ARROW, ARROW_FILE, PARQUET, "application/x-parquet")
JSON_KEYS = ("events", "customers", "as_of", "drivers")
EVENTS, CUSTOMERS = "<request events>", "<request customers>"
"""How validation messages name the request's tables (rows are numbered from 0, as sent)."""


Table = pa.Table | pd.DataFrame
"""A request's table: an Arrow table (a bulk body, or JSON whose columns each hold one plain type), made
into one DataFrame per micro-batch, not one per request (the cost of a small frame is mostly fixed); or a
DataFrame, for JSON columns that mix types (pandas keeps them as objects, as it always did)."""
PLAIN_TYPES = (
    pa.types.is_string,
    pa.types.is_int64,
    pa.types.is_float64,
    pa.types.is_boolean,
    pa.types.is_null,
)
"""What JSON values Arrow may hold for a request: the types pandas gives the same Python lists (nested
values, and numbers out of int64's range, stay with pandas)."""


def as_frame(table: Table) -> pd.DataFrame:
    return table if isinstance(table, pd.DataFrame) else table.to_pandas()


def n_rows(table: Table) -> int:
    return len(table) if isinstance(table, pd.DataFrame) else table.num_rows


def columns_of(table: Table) -> tuple[str, ...]:
    return tuple(table.columns if isinstance(table, pd.DataFrame) else table.column_names)


class RequestError(Exception):
    """A request the service refuses: `status` (4xx) and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ScoreRequest:
    """What one request asks to score."""

    events: Table
    customers: Table | None
    as_of: pd.Timestamp
    drivers: bool | None
    """False: no driver columns for this request (faster); None: as the service is configured."""
    ids: frozenset[str]
    """The distinct customer ids of `events`, canonical (as validation writes them)."""

    @property
    def key(self) -> tuple[Any, ...]:
        """Requests with equal keys can be validated and scored as one table (columns in any order)."""
        customers = tuple(sorted(columns_of(self.customers))) if self.customers is not None else None
        return self.as_of, self.drivers, tuple(sorted(columns_of(self.events))), customers


def end_of_today(timezone: str) -> pd.Timestamp:
    """The default as_of: the day after today in the contract's time zone, so today's events count."""
    return pd.Timestamp.now(tz=timezone).tz_localize(None).normalize() + pd.Timedelta(days=1)


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, without parameters (JSON when absent)."""
    kind = (content_type or JSON).split(";")[0].strip().lower()
    if kind not in BODY_TYPES:
        raise RequestError(415, f"Content-Type {kind!r} is not one of {', '.join(BODY_TYPES)}")
    return kind


def parse_request(
    body: bytes,
    content_type: str | None,
    query: Mapping[str, str],
    limits: LimitsConfig,
    id_column: str,
    default_as_of: pd.Timestamp,
) -> ScoreRequest:
    """The request in `body` (and its query string), or a `RequestError`."""
    kind = media_type(content_type)
    options: dict[str, Any] = {k: query[k] for k in ("as_of", "drivers") if k in query}
    unknown = sorted(set(query) - {"as_of", "drivers"})
    if unknown:
        raise RequestError(400, f"unknown query parameter(s) {unknown}; known: as_of, drivers")
    customers = None
    if kind == JSON:
        doc = _json(body)
        for key in ("as_of", "drivers"):
            if key in doc and key in options and str(doc[key]).lower() != str(options[key]).lower():
                raise RequestError(400, f"{key} is given twice, differently: in the body and the query")
            options.setdefault(key, doc.get(key))
        events = _frame(doc["events"], "events")
        if doc.get("customers") is not None:
            customers = _frame(doc["customers"], "customers")
    else:
        events = _binary(body, kind)
    rows = n_rows(events) + (n_rows(customers) if customers is not None else 0)
    if rows > limits.max_rows:
        raise RequestError(
            413, f"{rows:,} rows in the request; the limit is {limits.max_rows:,} (limits.max_rows)"
        )
    if n_rows(events) == 0:
        raise RequestError(422, "events: no rows; send at least one event per customer to score")
    for name, table in (("events", events), ("customers", customers)):
        if table is not None and id_column not in columns_of(table):
            raise RequestError(
                422, f"{name}: no column {id_column!r} (data.customer_id); columns: {list(columns_of(table))}"
            )
    ids = _ids(events[id_column])
    if len(ids) > limits.max_customers:
        raise RequestError(
            413,
            f"{len(ids):,} customers in the request; the limit is {limits.max_customers:,} "
            "(limits.max_customers)",
        )
    as_of = options.get("as_of")
    try:
        day = parse_day(as_of, "as_of") if as_of is not None else default_as_of
    except ConfigError as exc:
        raise RequestError(422, str(exc)) from exc
    return ScoreRequest(events, customers, day, _flag(options.get("drivers"), "drivers"), ids)


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict):
        raise RequestError(400, f"the body must be a JSON object with 'events', got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(JSON_KEYS))
    if unknown:
        raise RequestError(400, f"unknown key(s) {unknown} in the body; known: {', '.join(JSON_KEYS)}")
    if "events" not in doc:
        raise RequestError(400, "the body has no 'events' (a list of rows, or columns)")
    return doc


def _frame(value: Any, name: str) -> Table:
    """Rows ([{column: value}]) or columns ({column: [values]}) as a table; a column a row leaves out is
    null there. Arrow reads them in C++ (three times faster than pandas' frame from Python lists, and the
    same frame once converted: `PLAIN_TYPES`); a column Arrow cannot hold in one of those types makes it
    a DataFrame, as pandas reads it."""
    if isinstance(value, list):
        bad = next((i for i, row in enumerate(value) if not isinstance(row, dict)), None)
        if bad is not None:
            raise RequestError(400, f"{name}[{bad}] is not an object of column: value")
        with contextlib.suppress(pa.ArrowException, TypeError, ValueError, OverflowError):
            if value:  # no rows: no columns (refused as empty)
                return _plain(pa.Table.from_struct_array(pa.array(value)))
        keys = dict.fromkeys(k for row in value for k in row)
        return pd.DataFrame({k: [row.get(k) for row in value] for k in keys})
    if isinstance(value, dict):
        lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in value.items()}
        if any(n < 0 for n in lengths.values()) or len(set(lengths.values())) > 1:
            raise RequestError(
                400, f"{name}: as columns, every value must be a list of one length: {lengths}"
            )
        with contextlib.suppress(pa.ArrowException, TypeError, ValueError, OverflowError):
            return _plain(pa.table({k: pa.array(v) for k, v in value.items()}))
        return pd.DataFrame(value)
    raise RequestError(
        400, f"{name} must be a list of rows or an object of columns, got {type(value).__name__}"
    )


def _plain(table: pa.Table) -> pa.Table:
    """`table` if every column has a `PLAIN_TYPES` type, else a TypeError (read by pandas instead)."""
    for field in table.schema:
        if not any(is_type(field.type) for is_type in PLAIN_TYPES):
            raise TypeError(f"column {field.name!r} holds {field.type}")
    return table


def _binary(body: bytes, kind: str) -> pa.Table:
    try:
        if kind in (PARQUET, "application/x-parquet"):
            table = pq.read_table(io.BytesIO(body))
        else:
            table = _arrow(body, kind)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise RequestError(400, f"the body is not {kind}: {str(exc).splitlines()[0]}") from exc
    return table


def _arrow(body: bytes, kind: str) -> pa.Table:
    """An Arrow IPC stream, or file (either is accepted under either type: they differ by a header)."""
    readers = (pa.ipc.open_stream, pa.ipc.open_file)
    for read in readers if kind == ARROW else readers[::-1]:
        try:
            return read(pa.BufferReader(body)).read_all()
        except pa.ArrowInvalid:
            continue
    raise ValueError("neither an Arrow IPC stream nor file")


def _ids(values: pd.Series | pa.ChunkedArray) -> frozenset[str]:
    """Canonical ids (17850, 17850.0 and "17850" are one customer), without nulls (validation drops them):
    the distinct values, then their canonical text."""
    kind = values.type if isinstance(values, pa.ChunkedArray) else None
    if kind is not None and (
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind)
    ):
        return canonical_ids(values.unique().to_pylist())
    distinct = values.unique() if isinstance(values, pd.Series) else values.to_pandas().unique()
    return frozenset(normalise_ids(pd.Series(distinct)).dropna().astype(str))


def _flag(value: Any, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise RequestError(400, f"{name}={value!r}: must be true or false")
