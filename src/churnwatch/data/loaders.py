"""Loading a user's tables into churnwatch's canonical frames: read, filter, derive, map to the canonical
columns, validate under the policy, and put the events in a canonical order.

Everything downstream (snapshots, encoding, aggregates, scoring) reads only the frames returned here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnwatch.data.expressions import parsed, query_mask
from churnwatch.data.parsing import canonical_categorical, coerce_numeric, normalise_ids, parse_timestamps
from churnwatch.data.readers import check_columns, read_table
from churnwatch.data.schema import CUSTOMER_ID, TIMESTAMP, CustomerSchema, EventSchema
from churnwatch.data.validation import (
    DEFAULT_POLICY,
    Policy,
    RowChecker,
    ValidationReport,
    describe_row,
    no_event_rows,
    no_valid_events,
    require_columns,
    validate_numeric,
)
from churnwatch.errors import DataValidationError

log = logging.getLogger(__name__)


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
    *,
    policy: Policy = DEFAULT_POLICY,
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
    require_columns(raw, [schema.customer_id], path, "data.customer_id")
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
        require_columns(raw, [col], path, f"data.{option}")
    # the item columns ride along: they neither make a row distinct nor order a time's events, so naming
    # them leaves the churn model's events exactly as they were. They are optional here: churn needs none
    # (a run that fits a recommender refuses a log without them, runs/offers.py)
    attached = [(c, k) for c, k in schema.item_columns if c not in needed]
    for col, option in [a for a in attached if a[0] not in raw.columns]:
        log.warning("%s: no column %r (%s): no purchase history for offers", path, col, option)
    attached = [(c, k) for c, k in attached if c in raw.columns]
    file_rows = raw.index.to_numpy()
    raw = raw[needed + [c for c, _ in attached]].reset_index(drop=True)
    if len(raw) == 0 and not part:
        raise no_event_rows(path)

    # the columns are gathered in a dict and framed once: each insert into a frame costs more than
    # validating a request's few rows
    check = RowChecker(pd.DataFrame(index=raw.index), raw, report, policy, file_rows)
    ids = normalise_ids(raw[schema.customer_id])
    check.flag("null_id", schema.customer_id, ids.isna().to_numpy(), "have a null or empty customer id")
    ts = parse_timestamps(
        raw[schema.timestamp],
        schema.timezone,
        schema.timestamp_format,
        f"{path}: column {schema.timestamp!r}",
    )
    ts_values = ts.to_numpy()
    check.flag("bad_timestamp", schema.timestamp, np.isnat(ts_values), "have a null or unparseable timestamp")
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
    columns = {CUSTOMER_ID: ids.array, TIMESTAMP: np.where(check.bad, np.datetime64("NaT"), ts_values)}
    for name in [*key, *schema.categorical]:
        columns[name] = canonical_categorical(raw[name]).array
    for spec in schema.numeric:
        columns[spec.name] = validate_numeric(check, raw[spec.name], spec, spec.name).to_numpy()
    codes = np.asarray(ids.array.codes)
    ts_key = columns[TIMESTAMP].view(np.int64)  # NaT sorts first; those rows are dropped anyway
    order = _sort_order(codes, ts_key)
    sorted_rows, in_run = _same_time_runs(codes, ts_key, order)
    if in_run.any():  # only then is a frame of the fields needed
        fields = pd.DataFrame(columns, index=raw.index, copy=False)
        check.flag(
            "duplicate",
            ",".join(needed),
            _duplicated(fields, sorted_rows, in_run),
            "are exact duplicates of an earlier row",
        )
        order = _by_content_within_time(fields, codes, ts_key, sorted_rows, in_run)
        del fields
    keep = order[~check.bad[order]] if order is not None else np.flatnonzero(~check.bad)
    report.rows_kept = len(keep)
    if len(keep) == 0 and not part:
        raise no_valid_events(report)
    for col, _ in attached:
        columns[col] = canonical_categorical(raw[col]).array
    del raw, check  # the raw columns are no longer needed: free them before the final copy
    columns[TIMESTAMP] = pd.Series(columns[TIMESTAMP], copy=False).astype("datetime64[ns]").array
    out = pd.DataFrame(columns, copy=False)
    kept = out.take(keep) if (order is not None or len(keep) < len(out)) else out  # one copy at most
    input_ids = unfiltered_ids if unfiltered_ids is not None else _present_ids(ids)
    del out, columns, ids
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
        raw = raw.assign(**{name: parsed(expr, f"{path}: data.derived.{name}").evaluate(raw)})
    return raw


def load_customers(
    path: str | Path,
    schema: CustomerSchema,
    *,
    id_column: str,
    timezone: str = "UTC",
    policy: Policy = DEFAULT_POLICY,
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
    require_columns(raw, [id_column], path, "customer id")
    for col in needed[1:]:
        require_columns(raw, [col], path, "data.customers field")
    file_rows = raw.index.to_numpy()
    raw = raw[needed].reset_index(drop=True)
    out = pd.DataFrame(index=raw.index)
    check = RowChecker(out, raw, report, policy, file_rows)
    out[CUSTOMER_ID] = normalise_ids(raw[id_column])
    check.flag("null_id", id_column, out[CUSTOMER_ID].isna(), "have a null or empty customer id")
    check.flag(
        "duplicate_id",
        id_column,
        out[CUSTOMER_ID].duplicated(keep="first").to_numpy() & out[CUSTOMER_ID].notna().to_numpy(),
        "repeat a customer id",
    )
    for name in schema.categorical:
        out[name] = canonical_categorical(raw[name])
    for spec in schema.numeric:
        out[spec.name] = validate_numeric(check, raw[spec.name], spec, spec.name)
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
        require_columns(raw, [col], path, what)
    ids = normalise_ids(raw[id_column])
    cutoffs = parse_timestamps(raw[cutoff_column], "UTC", where=f"{path}: column {cutoff_column!r}")
    labels, non_numeric = coerce_numeric(
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
                f"e.g. row {pos}: {describe_row(raw, pos)}"
            )
    out = pd.DataFrame(
        {CUSTOMER_ID: ids.astype(str), "cutoff": cutoffs.dt.normalize(), "label": labels.astype("float32")}
    )
    dup = out.duplicated([CUSTOMER_ID, "cutoff"], keep=False)
    if dup.any():
        pos = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataValidationError(
            f"{path}: column {cutoff_column!r}: (customer, cutoff) pairs repeat, "
            f"e.g. row {pos}: {describe_row(raw, pos)}"
        )
    return out
