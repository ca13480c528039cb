"""The data contract: map a user's event log onto churnwatch's canonical columns and validate it.

Everything downstream (snapshots, encoding, aggregates, scoring) reads only the canonical frame this
module returns, so a new event log needs a config change, never a code change.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnwatch.data.expressions import Expression, check_expression
from churnwatch.errors import ConfigError, DataValidationError

log = logging.getLogger(__name__)

CUSTOMER_ID = "customer_id"
TIMESTAMP = "timestamp"
MISSING = "__missing__"
"""Explicit category for a null categorical value (nulls are information, never silently dropped)."""
PAD_TOKEN, OOV_TOKEN, OTHER_TOKEN = "<pad>", "<oov>", "<other>"
INTERNAL_TOKENS = frozenset({MISSING, PAD_TOKEN, OOV_TOKEN, OTHER_TOKEN})
"""Tokens the encoders give a meaning of their own: input text never equals one (`escape_text`)."""
ESCAPE = "\\"

Policy = Literal["drop", "fail"]
VISIT_REDUCTIONS = ("sum", "mean", "max", "last")
_OFFSET_RE = r"(?:[zZ]|\d:\d{2}(?::\d{2}(?:\.\d+)?)?\s*[+-]\d{2}(?::?\d{2})?|\s(?:UTC|GMT|utc|gmt))$"
"""A time with a zone: Z, an offset after the time (+02:00, +0200, +02) or the names UTC/GMT."""
_NUMERIC_DATE = r"^(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{2,4}(?:\D|$)"
"""A date written d/m/y or m/d/y (any of / . -): which one a column uses is decided once per column."""
RESERVED_PREFIX = "__churnwatch"
"""Columns churnwatch adds while reading (e.g. each row's number in the file): an input may not have them."""


@dataclass(frozen=True)
class NumericField:
    """A numeric column and what counts as a valid value for it."""

    name: str
    min: float | None = None
    max: float | None = None
    fill: float | None = None
    """Value used for nulls. None: a null is invalid (handled by the policy)."""
    transform: Literal["log1p", "none"] = "log1p"
    """`log1p` is signed: sign(x) * log1p(|x|), so heavy-tailed amounts and negative deltas both work."""
    visit: Literal["sum", "mean", "max", "last"] = "sum"
    """How a visit's lines combine into the visit's value when events are grouped into visits
    (`data.visits`): an order's amount is the sum of its lines, a unit price their mean."""

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any]) -> NumericField:
        if isinstance(spec, str):
            return cls(name=spec)
        unknown = set(spec) - {"name", "min", "max", "fill", "transform", "visit"}
        if unknown or "name" not in spec:
            raise ConfigError(
                f"numeric field spec {dict(spec)!r}: needs 'name'; unknown keys: {sorted(unknown)}"
            )
        if spec.get("transform", "log1p") not in ("log1p", "none"):
            raise ConfigError(f"numeric field {spec['name']!r}: transform must be log1p or none")
        if spec.get("visit", "sum") not in VISIT_REDUCTIONS:
            raise ConfigError(
                f"numeric field {spec['name']!r}: visit must be one of {', '.join(VISIT_REDUCTIONS)}"
            )
        return cls(**{k: spec[k] for k in spec})


@dataclass(frozen=True)
class EventSchema:
    """Which columns of the raw events table mean what."""

    customer_id: str
    timestamp: str
    categorical: tuple[str, ...] = ()
    numeric: tuple[NumericField, ...] = ()
    timezone: str = "UTC"
    timestamp_format: str | None = None
    visit_key: str | None = None
    """Column whose value changes from one visit (order, basket, session) to the next (`data.visits.key`):
    kept beside the event fields so the encoder can group lines into visits."""

    @property
    def numeric_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.numeric)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EventSchema:
        """The schema of a data config, whose expressions are parsed here too: every reader of a data
        config (training, the cache, scoring a model file) starts here, so a bad or forged expression
        fails before any data is read."""
        _check_expressions(cfg)
        schema = cls(
            customer_id=str(cfg["customer_id"]),
            timestamp=str(cfg["timestamp"]),
            categorical=tuple(str(c) for c in (cfg.get("categorical") or ())),
            numeric=tuple(
                NumericField.parse(dict(s) if isinstance(s, Mapping) else s)
                for s in (cfg.get("numeric") or ())
            ),
            timezone=str(cfg.get("timezone") or "UTC"),
            timestamp_format=cfg.get("timestamp_format"),
            visit_key=(cfg.get("visits") or {}).get("key"),
        )
        names = [*schema.categorical, *schema.numeric_names]
        dupes = sorted({n for n in names if names.count(n) > 1})
        clash = sorted(set(names) & {CUSTOMER_ID, TIMESTAMP, schema.customer_id, schema.timestamp})
        if dupes or clash:
            raise ConfigError(
                f"event fields must be distinct and not the id/timestamp: repeated {dupes}, clash {clash}"
            )
        return schema


def _check_expressions(cfg: Mapping[str, Any]) -> None:
    check_expression(cfg.get("filter"), "data.filter")
    derived = cfg.get("derived") or {}
    if not isinstance(derived, Mapping):
        raise ConfigError(f"data.derived must map new column names to expressions, got {derived!r}")
    for name, text in derived.items():
        check_expression(text, f"data.derived.{name}")
    check_expression(cfg.get("label_events"), "data.label_events")


@dataclass(frozen=True)
class CustomerSchema:
    """Static per-customer attributes, joined to events by the customer id."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[NumericField, ...] = ()
    dates: tuple[str, ...] = ()
    """Date columns (e.g. signup) become 'days before the cutoff' features, computed per snapshot."""

    @property
    def columns(self) -> tuple[str, ...]:
        """Every attribute column, in table order: categorical, numeric, dates."""
        return (*self.categorical, *(f.name for f in self.numeric), *self.dates)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> CustomerSchema:
        cfg = cfg or {}
        return cls(
            categorical=tuple(str(c) for c in (cfg.get("categorical") or ())),
            numeric=tuple(
                NumericField.parse(dict(s) if isinstance(s, Mapping) else s)
                for s in (cfg.get("numeric") or ())
            ),
            dates=tuple(str(c) for c in (cfg.get("dates") or ())),
        )


@dataclass
class ValidationReport:
    """What validation did to one table: rows read, kept, and dropped per reason with an example."""

    path: str
    rows_read: int = 0
    rows_filtered: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "rows_filtered": self.rows_filtered,
            "rows_kept": self.rows_kept,
            "dropped": dict(self.dropped),
            "examples": dict(self.examples),
        }

    def add(self, other: ValidationReport) -> None:
        """Count another part of the same file in (streamed scoring validates it part by part)."""
        self.rows_read += other.rows_read
        self.rows_filtered += other.rows_filtered
        self.rows_kept += other.rows_kept
        for reason, n in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        for reason, text in other.examples.items():
            self.examples.setdefault(reason, text)

    def summary(self) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in self.dropped.items()) or "none"
        return (
            f"{Path(self.path).name}: read {self.rows_read:,} rows, filtered {self.rows_filtered:,}, "
            f"kept {self.rows_kept:,}; dropped: {dropped}"
        )


JOIN_WARN = 0.5
"""Below this share of event customers with attributes, the customers file probably uses other ids."""


@dataclass
class JoinReport:
    """How a customers file joins the event customers: said in the log and in the scoring sidecar, so a
    file that joins nobody (ids written differently) or holds customers without events is never silent."""

    event_customers: int = 0
    with_attributes: int = 0
    customers_only: int = 0
    """Ids of the customers file with no row in the events: not scored (there is nothing to score)."""
    examples: dict[str, str] = field(default_factory=dict)
    """An event customer without attributes ('events') and a customers-only id ('customers')."""

    @classmethod
    def of(cls, event_ids: np.ndarray, customer_ids: pd.Index) -> JoinReport:
        events = pd.Index(np.asarray(event_ids, dtype=object).astype(str))
        customers = pd.Index(np.asarray(customer_ids, dtype=object).astype(str))
        joined = events.isin(customers)
        only = ~customers.isin(events)
        examples = {}
        if (~joined).any():
            examples["events"] = str(events[~joined][0])
        if only.any():
            examples["customers"] = str(customers[only][0])
        return cls(len(events), int(joined.sum()), int(only.sum()), examples)

    def add(self, other: JoinReport) -> None:
        """Count another customer-disjoint part in."""
        self.event_customers += other.event_customers
        self.with_attributes += other.with_attributes
        self.customers_only += other.customers_only
        for side, example in other.examples.items():
            self.examples.setdefault(side, example)

    @property
    def rate(self) -> float:
        return self.with_attributes / self.event_customers if self.event_customers else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_customers": self.event_customers,
            "with_attributes": self.with_attributes,
            "join_rate": round(self.rate, 6),
            "customers_only": self.customers_only,
            "examples": dict(self.examples),
        }

    def check(self, path: str | Path) -> None:
        """Log the join; fail when the file joins no event customer at all (ids written differently, e.g.
        '1001' against '01001'), warn under JOIN_WARN, and count the customers-only ids."""
        name = Path(str(path)).name
        text = (
            f"{name}: {self.with_attributes:,} of {self.event_customers:,} event customers "
            f"have attributes ({self.rate:.1%})"
        )
        if self.event_customers and not self.with_attributes and self.customers_only:
            raise DataValidationError(
                f"{path}: no customer id joins the events (e.g. {self.examples['customers']!r} here, "
                f"{self.examples['events']!r} in the events): are the ids written the same way?"
            )
        if self.rate < JOIN_WARN:
            log.warning("%s; the others are scored with unknown attributes", text)
        else:
            log.info("%s", text)
        if self.customers_only:  # common (a CRM lists customers who never bought): said, not alarmed
            log.info(
                "%s: %s id(s) have no events and are not scored, e.g. %r",
                name,
                f"{self.customers_only:,}",
                self.examples["customers"],
            )


# ----------------------------------------------------------------------------------------------- reading


def missing_file(path: Path) -> str:
    """Why an input path that does not exist does not: a symlink loop or a dangling link says so."""
    if not path.is_symlink():
        return "file not found"
    try:
        path.resolve(strict=True)
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError for a loop, later ones OSError
        if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
            return "symlink loop (the link points back to itself)"
        return f"dangling symlink to {os.readlink(path)!r}"
    return "file not found"


def _suffixes(path: Path) -> str:
    return "".join(path.suffixes).lower()


def _is_parquet(path: Path) -> bool:
    return _suffixes(path).endswith((".parquet", ".pq"))


def _csv_options(path: Path, columns: Sequence[str] | None) -> dict[str, Any]:
    """Every CSV is read the same way: text as-is (ids keep leading zeros), BOM stripped, "" is null."""
    return {
        "sep": "\t" if ".tsv" in _suffixes(path) else ",",
        "dtype": str,
        "keep_default_na": False,
        "na_values": [""],
        "encoding": "utf-8-sig",
        # no usecols for all columns: with one, pandas silently cuts a row with too many fields
        "usecols": None if columns is None else (lambda c: c in columns),
        # never take surplus leading fields for an index: a row longer than the header is an error
        "index_col": False,
    }


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Any read failure of `path` as one line naming it."""
    if not path.exists():
        raise DataValidationError(f"{path}: {missing_file(path)}")
    suffixes = _suffixes(path)
    if not (_is_parquet(path) or suffixes.endswith((".csv", ".csv.gz", ".tsv", ".txt"))):
        raise DataValidationError(
            f"{path}: unsupported file type {suffixes or '(none)'}; use .parquet or .csv"
        )
    try:
        with warnings.catch_warnings():
            # pandas only warns (and drops the surplus) when a first row is longer than the header
            warnings.simplefilter("error", pd.errors.ParserWarning)
            yield
    except pd.errors.ParserWarning as exc:
        raise DataValidationError(
            f"{path}: cannot read file (a row has more fields than the header)"
        ) from exc
    except (pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataValidationError(f"{path}: cannot read file ({first})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{path}: file is empty (no header, no rows)") from exc


def _header(path: Path) -> list[str]:
    """The column names as the file states them (pandas renames a repeated CSV name to 'name.1')."""
    if _is_parquet(path):
        return list(pq.read_schema(path).names)
    options = {k: v for k, v in _csv_options(path, None).items() if k != "usecols"}
    first = pd.read_csv(path, header=None, nrows=1, **options)
    return ["" if pd.isna(v) else str(v) for v in first.iloc[0]] if len(first) else []


def check_columns(names: Sequence[Any], path: str | Path) -> None:
    """A name twice (which copy would be read?) or one of churnwatch's own columns is a one-line error."""
    seen: dict[str, int] = {}
    for i, name in enumerate(map(str, names)):
        if name in seen:
            raise DataValidationError(
                f"{path}: column {name!r} appears twice in the header (columns {seen[name] + 1} and "
                f"{i + 1}); rename or drop one"
            )
        seen[name] = i
        if name.startswith(RESERVED_PREFIX):
            raise DataValidationError(
                f"{path}: column {name!r}: names starting with {RESERVED_PREFIX!r} are churnwatch's own; "
                "rename it"
            )


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read parquet or CSV by extension; a missing or unreadable file, or a header naming a column twice,
    is a one-line error."""
    path = Path(path)
    with _reading(path):
        header = _header(path)
        check_columns(header, path)
        if _is_parquet(path):
            wanted = [c for c in columns if c in header] if columns is not None else None
            # self_destruct frees Arrow buffers as columns convert, so the peak is ~one copy, not two
            return pq.read_table(path, columns=wanted).to_pandas(self_destruct=True, split_blocks=True)
        return pd.read_csv(path, **_csv_options(path, columns))


def count_rows(path: str | Path) -> int | None:
    """Rows of a parquet file from its footer (None for CSV: counting would mean reading it)."""
    path = Path(path)
    with _reading(path):
        return pq.ParquetFile(path).metadata.num_rows if _is_parquet(path) else None


def iter_batches(path: str | Path, batch_rows: int = 1_000_000) -> Iterator[pa.Table]:
    """The file in consecutive row batches, in bounded memory, as Arrow tables with one schema for all
    batches: parquet as stored (dictionary columns stay dictionaries, with int32 indices, each batch its
    own dictionary: cheap to move and to factorize), CSV as text like `read_table` reads it."""
    path = Path(path)
    with _reading(path):
        check_columns(_header(path), path)
        if _is_parquet(path):
            # row group by row group: the reader's own iter_batches reads ahead, and its memory grew
            # with the file (1.8 GB for 145M rows against 0.3 GB this way)
            source = pq.ParquetFile(path)
            schema = _int32_dictionaries(source.schema_arrow)
            for g in range(source.metadata.num_row_groups):
                if source.metadata.row_group(g).num_rows <= 2 * batch_rows:
                    batches = source.read_row_group(g).to_batches()
                else:  # a huge row group: stream it in batches
                    batches = source.iter_batches(batch_size=batch_rows, row_groups=[g])
                for batch in batches:
                    yield pa.Table.from_batches([batch]).combine_chunks().cast(schema)
            return
        with pd.read_csv(path, chunksize=batch_rows, **_csv_options(path, None)) as chunks:
            for chunk in chunks:
                schema = pa.schema([(str(c), pa.string()) for c in chunk.columns])
                yield pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)


def _int32_dictionaries(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [
            f.with_type(pa.dictionary(pa.int32(), f.type.value_type)) if pa.types.is_dictionary(f.type) else f
            for f in schema
        ]
    )


def some_of(values: Iterable[Any], limit: int = 5) -> str:
    """Distinct values in order, the first `limit` of them, then how many more: what an error names."""
    names = list(dict.fromkeys(map(str, values)))
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{', '.join(names[:limit])}{more}"


def no_event_rows(path: str | Path) -> DataValidationError:
    return DataValidationError(f"{path}: no event rows (header only, or every row filtered out)")


def no_valid_events(report: ValidationReport) -> DataValidationError:
    """Every row invalid: the counts per reason, and the first reason's column and example row."""
    example = next(iter(report.examples.values()), "no example")
    return DataValidationError(
        f"{report.path}: no valid events left after validation ({report.summary()}); e.g. {example}"
    )


def _require_columns(frame: pd.DataFrame, needed: Sequence[str], path: str, what: str) -> None:
    """A missing column is one line: which, what it is for, the columns there are and (so a wrong delimiter
    or a shifted header shows) the first row as read."""
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        names = (str(c).replace("\r", "\\r").replace("\n", "\\n") for c in frame.columns[:12])
        have = ", ".join(names) + (" ..." if len(frame.columns) > 12 else "")
        first = f"; row {frame.index[0]}: {_describe_row(frame, 0)}" if len(frame) else ""
        raise DataValidationError(
            f"{path}: column {missing[0]!r} ({what}) not found; columns are: {have}{first}"
        )


# ------------------------------------------------------------------------------------------- coercions


INTEGRAL_TEXT = r"^(-?\d+)\.0+$"
"""An integer written as a float ("17850.0", what a spreadsheet or a float column exported as text gives):
the same id as 17850."""


def _label(value: Any) -> str | None:
    """One category's canonical text: 17850.0 and "17850.0" → "17850", " a " → "a", "" or null → None."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = re.sub(INTEGRAL_TEXT, r"\1", str(value).strip().strip("\x00").strip())
    return text or None


def _labels(categories: pd.Index) -> np.ndarray:
    """`_label` for every category, vectorised for the common string and float cases (1M ids)."""
    if pd.api.types.is_string_dtype(categories.dtype) and not pd.api.types.is_object_dtype(categories.dtype):
        text = categories.astype(str).str.strip().str.strip("\x00").str.strip()
        text = text.str.replace(INTEGRAL_TEXT, r"\1", regex=True)
        return np.where(text == "", None, np.asarray(text, dtype=object))
    if pd.api.types.is_float_dtype(categories.dtype):
        values = categories.to_numpy(dtype=np.float64)
        integral = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**62)
        if integral.all():
            return values.astype(np.int64).astype(str).astype(object)
    return np.array([_label(c) for c in categories], dtype=object)


def escape_text(labels: np.ndarray) -> np.ndarray:
    """Category text as data: a value equal to an internal token, or starting with the escape character,
    gets one more escape character in front, so no input value can become `<pad>`, `<oov>`, `<other>` or
    the null category (and two different values never become one)."""
    hit = np.fromiter(
        (lab is not None and (lab in INTERNAL_TOKENS or lab.startswith(ESCAPE)) for lab in labels),
        dtype=bool,
        count=len(labels),
    )
    if hit.any():
        labels = labels.copy()
        labels[hit] = [ESCAPE + lab for lab in labels[hit]]
    return labels


def _recode(values: pd.Series, missing: str | None) -> pd.Series:
    """Canonical categorical: labels normalised per *category* (cheap), categories sorted.

    Null/empty values become `missing` when given, else stay null. Works on the category table, never
    per row in Python, so 10M-row columns cost one factorize.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):  # as text in UTC: no zone rules beyond year 9999
        values = _aware_to_zone(values, "UTC")
    cat = values.array if isinstance(values.dtype, pd.CategoricalDtype) else pd.Categorical(values)
    labels = _labels(cat.categories)
    if missing is not None:  # category text, not ids: internal tokens are out of its reach
        labels = escape_text(labels)
    valid = np.array([lab is not None for lab in labels], dtype=bool)
    uniq = np.array(sorted(set(labels[valid])), dtype=object)
    position = np.full(len(labels) + 1, -1, dtype=np.int64)  # the last slot serves code -1 (null)
    position[:-1][valid] = np.searchsorted(uniq, labels[valid].astype(str)) if valid.any() else []
    codes = position[np.asarray(cat.codes)]
    if missing is not None and (codes < 0).any():
        uniq = np.append(uniq, missing)
        codes = np.where(codes < 0, len(uniq) - 1, codes)
    categories = pd.Index(uniq.astype(str), dtype=object) if len(uniq) else pd.Index([], dtype=object)
    return pd.Series(pd.Categorical.from_codes(codes, categories=categories), index=values.index)


def normalise_ids(values: pd.Series) -> pd.Series:
    """Ids as strings, so 17850, 17850.0 and "17850" are the same customer in every table.

    Returns a categorical series with sorted categories (so results never depend on row order);
    null/empty ids stay null for the caller to report.
    """
    return _recode(values, missing=None)


def parse_day(value: Any, what: str) -> pd.Timestamp:
    """A date option (e.g. as_of) as a day, or a one-line ConfigError: not a date, or outside the
    times pandas represents (1677-09-22 to 2262-04-11)."""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what}={value!r}: not a date ({first}); write it as YYYY-MM-DD") from exc
    if pd.isna(stamp):
        raise ConfigError(f"{what}={value!r}: not a date; write it as YYYY-MM-DD")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_localize(None)
    first, last = pd.Timestamp("1677-09-22"), pd.Timestamp("2262-01-01")  # room for a horizon
    if not first <= stamp <= last:
        raise ConfigError(f"{what}={value!r}: outside the supported dates {first.date()} to {last.date()}")
    return stamp.as_unit("ns").normalize()


def parse_timestamps(values: pd.Series, timezone: str, fmt: str | None = None, where: str = "") -> pd.Series:
    """Parse to naive datetime64[us] wall-clock time in `timezone` (us: far-future values stay readable).

    The rule: tz-aware values (and strings with an offset, 'Z', 'UTC' or 'GMT') are converted to
    `timezone`; naive values are taken to be in `timezone` already. Unparseable values become NaT. Without
    `fmt`, numeric dates (05/06/2024) are read day-first or month-first for the whole column, as the
    column's own values show; a column that mixes both, or does not tell, fails (`where` names it).
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return _aware_to_zone(values, timezone)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.astype("datetime64[us]")
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    if not (
        pd.api.types.is_object_dtype(values.dtype)
        or pd.api.types.is_string_dtype(values.dtype)
        or isinstance(values.dtype, pd.CategoricalDtype)
    ):
        return out  # numbers are not timestamps: every row is reported as unparseable
    text = values.astype("string").str.strip()
    has_offset = text.str.contains(_OFFSET_RE, regex=True, na=False)
    for aware, subset in ((False, text[~has_offset & text.notna()]), (True, text[has_offset])):
        if not subset.empty:
            out.loc[subset.index] = _parse_subset(subset, fmt, aware, timezone, where)
    return out


def _aware_to_zone(values: pd.Series, timezone: str) -> pd.Series:
    """Zone-aware times as naive wall-clock time in `timezone`. Times beyond years 1-9999 (which zone rules,
    written for Python's datetime, cannot convert) stay in UTC: they fail the range checks anyway."""
    utc = values.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    inside = ((utc > pd.Timestamp("0001-01-02")) & (utc < pd.Timestamp("9999-12-30"))).to_numpy()
    if inside.any():
        local = values[inside].dt.tz_convert(timezone).dt.tz_localize(None).astype("datetime64[us]")
        utc = utc.mask(inside, local.reindex(utc.index))
    return utc


def _parse_subset(text: pd.Series, fmt: str | None, aware: bool, timezone: str, where: str) -> pd.Series:
    """One subset (all with a zone, or all without) as naive datetime64[us] in `timezone`. A value pandas
    reads with a zone the pattern missed is converted like the others; anything pandas cannot take as a
    column (mixed zones, out-of-range values) is parsed value by value, so it never stops the load."""
    try:
        parsed = _to_datetime(text, fmt, utc=aware, where=where)
        return _aware_to_zone(parsed, timezone) if isinstance(parsed.dtype, pd.DatetimeTZDtype) else (
            parsed.astype("datetime64[us]")
        )
    except DataValidationError:
        raise
    except (ValueError, TypeError, OverflowError):
        pass
    distinct = pd.Series(text.unique())
    mapped = {value: _parse_one(value, fmt, timezone) for value in distinct}
    return pd.Series([mapped[v] for v in text], index=text.index, dtype="datetime64[us]")


def _parse_one(value: str, fmt: str | None, timezone: str) -> pd.Timestamp:
    try:
        stamp = pd.to_datetime(value, format=fmt) if fmt else pd.Timestamp(value)
        return stamp.tz_convert(timezone).tz_localize(None) if stamp.tzinfo is not None else stamp
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def _to_datetime(text: pd.Series, fmt: str | None, utc: bool, where: str = "") -> pd.Series:
    if fmt:
        return pd.to_datetime(text, format=fmt, errors="coerce", utc=utc)
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=utc)
    retry = parsed.isna()
    if retry.any():  # slow path only for rows ISO 8601 could not read (e.g. "12/1/2010 8:26")
        day_first = _day_first(text[retry], where)
        parsed[retry] = pd.to_datetime(
            text[retry], format="mixed", dayfirst=day_first, errors="coerce", utc=utc
        )
    return parsed


def _day_first(text: pd.Series, where: str) -> bool:
    """Whether a column's numeric dates are day-first (23/05/2024) or month-first (05/23/2024), decided
    once for the column: a parser that decides per value reads 05/06 one way and 23/05 the other."""
    fields = text.str.extract(_NUMERIC_DATE).apply(pd.to_numeric, errors="coerce")
    first, second = fields[0], fields[1]
    day_first, month_first = first > 12, second > 12
    where = f"{where}: " if where else ""
    fix = "set data.timestamp_format (e.g. '%d/%m/%Y %H:%M' or '%m/%d/%Y %H:%M')"
    if day_first.any() and month_first.any():
        a, b = text[day_first.to_numpy()].iloc[0], text[month_first.to_numpy()].iloc[0]
        raise DataValidationError(
            f"{where}dates are day-first in some rows ({a!r}) and month-first in others ({b!r}); {fix}"
        )
    if day_first.any() or month_first.any():
        return bool(day_first.any())
    unclear = (first != second) & first.notna()
    if unclear.any():
        example = text[unclear.to_numpy()].iloc[0]
        raise DataValidationError(
            f"{where}dates like {example!r} read as day-first or month-first and no value tells which; {fix}"
        )
    return False


# ------------------------------------------------------------------------------------------ validation


class _Checker:
    """Collects invalid-row masks per reason, then drops them or fails, per the policy."""

    def __init__(
        self,
        frame: pd.DataFrame,
        raw: pd.DataFrame,
        report: ValidationReport,
        policy: Policy,
        file_rows: np.ndarray | None = None,
    ):
        if policy not in ("drop", "fail"):
            raise ConfigError(f"data.policy must be 'drop' or 'fail', got {policy!r}")
        self.frame, self.raw, self.report, self.policy = frame, raw, report, policy
        self.bad = np.zeros(len(frame), dtype=bool)
        self.file_rows = file_rows
        """Each row's number in the file, when rows were filtered or partitioned (else: its position)."""

    def flag(self, reason: str, column: str, mask: np.ndarray | pd.Series, what: str) -> None:
        mask = np.asarray(mask, dtype=bool) & ~self.bad
        n = int(mask.sum())
        if n == 0:
            return
        pos = int(np.flatnonzero(mask)[0])
        example = _describe_row(self.raw, pos)
        row = int(self.file_rows[pos]) if self.file_rows is not None else pos
        if self.policy == "fail":
            raise DataValidationError(
                f"{self.report.path}: column {column!r}: {n:,} row(s) {what}, e.g. row {row}: {example} "
                f"(set data.policy=drop to drop them)"
            )
        self.bad |= mask
        self.report.dropped[reason] = self.report.dropped.get(reason, 0) + n
        self.report.examples.setdefault(reason, f"column {column!r}, row {row}: {example}")

    def result(self) -> pd.DataFrame:
        kept = self.frame.loc[~self.bad] if self.bad.any() else self.frame
        self.report.rows_kept = len(kept)
        return kept


def _describe_row(raw: pd.DataFrame, pos: int, limit: int = 240) -> str:
    text = "{" + ", ".join(f"{k}: {_cell(raw.iloc[:, j], pos)}" for j, k in enumerate(raw.columns)) + "}"
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(column: pd.Series, pos: int) -> str:
    """One value as an error shows it; a zone-aware time beyond what zone rules convert, in UTC."""
    try:
        return repr(column.iloc[pos])
    except (ValueError, OverflowError, NotImplementedError):
        return f"'{_aware_to_zone(column.iloc[pos : pos + 1], 'UTC').iloc[0]} UTC'"


def _coerce_numeric(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return float64 values and a mask of values that are present but not numbers."""
    if pd.api.types.is_bool_dtype(raw.dtype) or pd.api.types.is_numeric_dtype(raw.dtype):
        values = raw.to_numpy(dtype="float64", na_value=np.nan)
        return values, np.zeros(len(raw), dtype=bool)
    if raw.dtype.kind in "mM" or isinstance(raw.dtype, pd.DatetimeTZDtype):  # times are not amounts
        return np.full(len(raw), np.nan), raw.notna().to_numpy()
    text = raw.astype("string").str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    non_numeric = np.isnan(values) & text.notna().to_numpy() & (text != "").fillna(False).to_numpy()
    return values, non_numeric


def _validate_numeric(check: _Checker, raw: pd.Series, spec: NumericField, source: str) -> pd.Series:
    values, non_numeric = _coerce_numeric(raw)
    check.flag("non_numeric", source, non_numeric, "are not numbers")
    check.flag("non_finite", source, np.isinf(values) | (np.abs(values) > 1e300), "are inf or overflow")
    missing = np.isnan(values) & ~non_numeric
    if spec.fill is None:
        check.flag("missing_value", source, missing, "are null/NaN and the field declares no 'fill'")
    with np.errstate(invalid="ignore"):
        if spec.min is not None:
            check.flag("below_min", source, values < spec.min, f"are below the declared min {spec.min}")
        if spec.max is not None:
            check.flag("above_max", source, values > spec.max, f"are above the declared max {spec.max}")
    return pd.Series(values, index=raw.index)


def _categorical(raw: pd.Series) -> pd.Series:
    """Strings as a categorical with nulls mapped to the explicit MISSING category."""
    return _recode(raw, missing=MISSING)


@dataclass(frozen=True)
class LoadedEvents:
    """The canonical, validated event frame plus what validation did."""

    frame: pd.DataFrame
    """Columns: customer_id (category), timestamp (datetime64[ns]), categorical fields (category, with
    MISSING for nulls), numeric fields (float64; NaN only where the field declares a `fill`). Sorted by
    customer id, then timestamp, then the other fields (never by row order: same-time events of a customer
    form the same sequence however the file orders them)."""
    schema: EventSchema
    report: ValidationReport
    data_end: pd.Timestamp
    input_ids: np.ndarray
    """Every non-null customer id in the input, sorted, including those all of whose rows were dropped:
    a scoring run must account for each of them."""


def load_events(
    path: str | Path,
    schema: EventSchema,
    policy: Policy = "drop",
    end_date: str | pd.Timestamp | None = None,
    row_filter: str | None = None,
    derived: Mapping[str, str] | None = None,
    frame: pd.DataFrame | None = None,
    part: bool = False,
) -> LoadedEvents:
    """Load (or take `frame`), filter, derive, rename to canonical columns, validate, sort.

    `end_date` is the data's end: events after it are 'in the future' (default: now). `row_filter` is a
    condition that selects the rows that are events at all (e.g. excluding cancellations); `derived` adds
    columns from expressions before validation (both: docs/EXPRESSIONS.md). A `frame`'s index holds each
    row's number in the file (what error messages cite). `part=True`: the frame is one customer-disjoint
    part of the file (streamed scoring), so no valid row left is not an error, and the caller logs the
    summary of all parts.
    """
    path = str(path)
    raw = read_table(path) if frame is None else frame
    check_columns(raw.columns, path)
    report = ValidationReport(path=path, rows_read=len(raw))
    if len(raw.columns) == 0:
        raise DataValidationError(f"{path}: file has no columns")
    _require_columns(raw, [schema.customer_id], path, "data.customer_id")
    # ids of every row, before the filter: a customer whose rows are all filtered out is still a customer
    unfiltered_ids = _present_ids(normalise_ids(raw[schema.customer_id])) if row_filter else None
    raw = _apply_filter_and_derived(raw, path, row_filter, derived, report)
    # the visit key comes right after the time: lines at one time sort by visit, so a visit stays a run
    key = [schema.visit_key] if schema.visit_key and schema.visit_key not in schema.categorical else []
    needed = [schema.customer_id, schema.timestamp, *key, *schema.categorical, *schema.numeric_names]
    options = (
        ["customer_id", "timestamp"]
        + ["visits.key"] * len(key)
        + ["categorical"] * len(schema.categorical)
        + ["numeric"] * len(schema.numeric)
    )
    for col, option in zip(needed, options, strict=True):
        _require_columns(raw, [col], path, f"data.{option}")
    file_rows = raw.index.to_numpy()
    raw = raw[needed].reset_index(drop=True)
    if len(raw) == 0 and not part:
        raise no_event_rows(path)

    out = pd.DataFrame(index=raw.index)
    check = _Checker(out, raw, report, policy, file_rows)
    out[CUSTOMER_ID] = normalise_ids(raw[schema.customer_id])
    check.flag("null_id", schema.customer_id, out[CUSTOMER_ID].isna(), "have a null or empty customer id")
    ts = parse_timestamps(
        raw[schema.timestamp],
        schema.timezone,
        schema.timestamp_format,
        f"{path}: column {schema.timestamp!r}",
    )
    check.flag("bad_timestamp", schema.timestamp, ts.isna(), "have a null or unparseable timestamp")
    end = _resolve_end(end_date, schema.timezone)
    check.flag(
        "future", schema.timestamp, (ts > end).to_numpy(), f"are after the data's end {end} (data.end_date)"
    )
    check.flag(
        "bad_timestamp",
        schema.timestamp,
        (ts < pd.Timestamp.min).to_numpy(),
        f"are before {pd.Timestamp.min.date()}, the earliest supported time",
    )
    out[TIMESTAMP] = ts.where(~check.bad)
    for name in [*key, *schema.categorical]:
        out[name] = _categorical(raw[name])
    for spec in schema.numeric:
        out[spec.name] = _validate_numeric(check, raw[spec.name], spec, spec.name)
    codes = out[CUSTOMER_ID].cat.codes.to_numpy()
    ts_key = out[TIMESTAMP].to_numpy().view(np.int64)  # NaT sorts first; those rows are dropped anyway
    order = _sort_order(codes, ts_key)
    sorted_rows, in_run = _same_time_runs(codes, ts_key, order)
    dup = _duplicated(out, sorted_rows, in_run)
    check.flag("duplicate", ",".join(needed), dup, "are exact duplicates of an earlier row")
    if in_run.any():
        order = _by_content_within_time(out, codes, ts_key, sorted_rows, in_run)
    keep = order[~check.bad[order]] if order is not None else np.flatnonzero(~check.bad)
    report.rows_kept = len(keep)
    if len(keep) == 0 and not part:
        raise no_valid_events(report)
    del raw, check  # the raw columns are no longer needed: free them before the final copy
    out[TIMESTAMP] = out[TIMESTAMP].astype("datetime64[ns]")
    kept = out.take(keep) if (order is not None or len(keep) < len(out)) else out  # one copy at most
    input_ids = unfiltered_ids if unfiltered_ids is not None else _present_ids(out[CUSTOMER_ID])
    del out
    kept = kept.reset_index(drop=True)
    if len(keep) < len(codes):
        kept[CUSTOMER_ID] = kept[CUSTOMER_ID].cat.remove_unused_categories()
    if not part:
        (log.warning if report.dropped else log.info)("%s", report.summary())
    return LoadedEvents(
        frame=kept, schema=schema, report=report, data_end=kept[TIMESTAMP].max(), input_ids=input_ids
    )


def _present_ids(ids: pd.Series) -> np.ndarray:
    """Sorted distinct non-null ids that occur in a canonical (categorical) id column."""
    codes = ids.cat.codes.to_numpy()
    present = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(ids.cat.categories)))
    return np.asarray(ids.cat.categories[present], dtype=object)


def _sort_order(codes: np.ndarray, ts: np.ndarray) -> np.ndarray | None:
    """Stable order by (customer, time), or None when the rows are already in that order (a common case)."""
    if len(codes) < 2:
        return None
    step = np.diff(codes)
    if (step >= 0).all() and ((step > 0) | (np.diff(ts) >= 0)).all():
        return None
    return np.lexsort((ts, codes))


def _duplicated(frame: pd.DataFrame, order: np.ndarray, in_run: np.ndarray) -> np.ndarray:
    """Exact duplicate rows (after the first in file order).

    Duplicates share customer and time, so only rows in runs of equal (customer, time) in sorted order are
    compared in full: cheap for 35M events, exact for every column.
    """
    out = np.zeros(len(order), dtype=bool)
    if in_run.any():
        rows = order[in_run]  # sorted order, file order within each run (the sort is stable)
        out[rows] = frame.iloc[rows].duplicated(keep="first").to_numpy()
    return out


def _same_time_runs(
    codes: np.ndarray, ts: np.ndarray, order: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The sorted order (`order`, or the rows as they are) and which of its positions share customer and
    time with a neighbour."""
    order = np.arange(len(codes)) if order is None else order
    c, t = codes[order], ts[order]
    same = (c[1:] == c[:-1]) & (t[1:] == t[:-1])
    return order, np.r_[False, same] | np.r_[same, False]


def _by_content_within_time(
    frame: pd.DataFrame, codes: np.ndarray, ts: np.ndarray, order: np.ndarray, in_run: np.ndarray
) -> np.ndarray:
    """`order` with the events of one customer at one time (`in_run`) sorted by their fields instead of
    their row in the file, so shuffled input rows score the same. Categories are sorted labels (MISSING
    last) in every file and part alike, so their codes order them canonically."""
    rows = order[in_run]
    fields = [frame[c] for c in frame.columns if c not in (CUSTOMER_ID, TIMESTAMP)]
    keys = [
        f.cat.codes.to_numpy() if isinstance(f.dtype, pd.CategoricalDtype) else f.to_numpy() for f in fields
    ]
    # np.lexsort: the last key is the primary one; (customer, time) keep the runs where they are
    within = np.lexsort([*(k[rows] for k in reversed(keys)), ts[rows], codes[rows]])
    order = order.copy()
    order[in_run] = rows[within]
    return order


def _resolve_end(end_date: str | pd.Timestamp | None, timezone: str) -> pd.Timestamp:
    if end_date is None:
        return pd.Timestamp.now(tz=timezone).tz_localize(None)
    end = pd.Timestamp(end_date)
    return end.tz_convert(timezone).tz_localize(None) if end.tzinfo is not None else end


def _apply_filter_and_derived(
    raw: pd.DataFrame,
    path: str,
    row_filter: str | None,
    derived: Mapping[str, str] | None,
    report: ValidationReport,
) -> pd.DataFrame:
    if row_filter:
        keep = query_mask(raw, row_filter, f"{path}: data.filter")
        report.rows_filtered = int((~keep).sum())
        raw = raw.loc[keep]
    for name, expr in (derived or {}).items():
        raw = raw.assign(**{name: Expression(expr, f"{path}: data.derived.{name}").evaluate(raw)})
    return raw


def query_mask(frame: pd.DataFrame, query: str | None, what: str) -> np.ndarray:
    """Rows selected by a condition from the config (all rows when `query` is None; docs/EXPRESSIONS.md)."""
    if not query:
        return np.ones(len(frame), dtype=bool)
    return Expression(query, what).mask(frame)


def load_customers(
    path: str | Path,
    id_column: str,
    schema: CustomerSchema,
    timezone: str = "UTC",
    policy: Policy = "drop",
    frame: pd.DataFrame | None = None,
    end_date: str | pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, ValidationReport]:
    """Static attributes, one row per customer, indexed by canonical customer id (from `frame`, one
    customer-disjoint part of the file, when given; the caller then logs the summary of all parts). Dates
    after `end_date` (default: now; a signup in 9999) are invalid, as event times are."""
    path = str(path)
    raw = read_table(path) if frame is None else frame
    check_columns(raw.columns, path)
    report = ValidationReport(path=path, rows_read=len(raw))
    needed = [id_column, *schema.columns]
    _require_columns(raw, [id_column], path, "customer id")
    for col in needed[1:]:
        _require_columns(raw, [col], path, "data.customers field")
    file_rows = raw.index.to_numpy()
    raw = raw[needed].reset_index(drop=True)
    out = pd.DataFrame(index=raw.index)
    check = _Checker(out, raw, report, policy, file_rows)
    out[CUSTOMER_ID] = normalise_ids(raw[id_column])
    check.flag("null_id", id_column, out[CUSTOMER_ID].isna(), "have a null or empty customer id")
    check.flag(
        "duplicate_id",
        id_column,
        out[CUSTOMER_ID].duplicated(keep="first").to_numpy() & out[CUSTOMER_ID].notna().to_numpy(),
        "repeat a customer id",
    )
    for name in schema.categorical:
        out[name] = _categorical(raw[name])
    for spec in schema.numeric:
        out[spec.name] = _validate_numeric(check, raw[spec.name], spec, spec.name)
    end = _resolve_end(end_date, timezone)
    for name in schema.dates:
        parsed = parse_timestamps(raw[name], timezone, where=f"{path}: column {name!r}")
        check.flag("bad_date", name, parsed.isna() & raw[name].notna().to_numpy(), "are unparseable dates")
        check.flag("future_date", name, (parsed > end).to_numpy(), f"are after the data's end {end}")
        out[name] = parsed
    kept = check.result()
    kept = kept.set_index(kept[CUSTOMER_ID].astype(str)).drop(columns=[CUSTOMER_ID])
    kept.index.name = CUSTOMER_ID
    if frame is None:
        (log.warning if report.dropped else log.info)("%s", report.summary())
    return kept, report


def load_labels(
    path: str | Path, id_column: str, cutoff_column: str = "cutoff", label_column: str = "churned"
) -> pd.DataFrame:
    """Explicit churn labels per (customer, cutoff); labels must be 0/1 or booleans."""
    path = str(path)
    raw = read_table(path)
    for col, what in (
        (id_column, "customer id"),
        (cutoff_column, "data.labels.cutoff"),
        (label_column, "data.labels.label"),
    ):
        _require_columns(raw, [col], path, what)
    ids = normalise_ids(raw[id_column])
    cutoffs = parse_timestamps(raw[cutoff_column], "UTC", where=f"{path}: column {cutoff_column!r}")
    labels, non_numeric = _coerce_numeric(
        raw[label_column].replace({"True": 1, "False": 0, "true": 1, "false": 0})
    )
    problems = [
        (id_column, ids.isna().to_numpy(), "have a null or empty customer id"),
        (cutoff_column, cutoffs.isna().to_numpy(), "have an unparseable cutoff"),
        (label_column, non_numeric | ~np.isin(labels, (0.0, 1.0)), "are not 0/1 labels"),
    ]
    for col, mask, what in problems:
        if mask.any():
            pos = int(np.flatnonzero(mask)[0])
            raise DataValidationError(
                f"{path}: column {col!r}: {int(mask.sum()):,} row(s) {what}, "
                f"e.g. row {pos}: {_describe_row(raw, pos)}"
            )
    out = pd.DataFrame(
        {CUSTOMER_ID: ids.astype(str), "cutoff": cutoffs.dt.normalize(), "label": labels.astype("float32")}
    )
    dup = out.duplicated([CUSTOMER_ID, "cutoff"], keep=False)
    if dup.any():
        pos = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataValidationError(
            f"{path}: column {cutoff_column!r}: (customer, cutoff) pairs repeat, "
            f"e.g. row {pos}: {_describe_row(raw, pos)}"
        )
    return out
