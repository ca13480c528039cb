"""Validation of loaded rows under the data policy (drop the invalid rows, or fail on the first reason),
and the reports that say what it did: per table (ValidationReport) and for the customers join
(JoinReport). Every error is one line naming the file, the column and an example row."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from churnwatch.config.schema import DataConfig
from churnwatch.data.parsing import aware_to_zone, coerce_numeric
from churnwatch.data.schema import NumericField
from churnwatch.errors import ConfigError, DataValidationError

log = logging.getLogger(__name__)

Policy = Literal["drop", "fail"]
"""What validation does with an invalid row: drop it (counted in the report), or fail in one line."""
DEFAULT_POLICY: Policy = DataConfig.policy  # type: ignore[assignment]
"""`data.policy` when a config does not set it."""


@dataclass
class ValidationReport:
    """What validation did to one table: rows read, kept, and dropped per reason with an example."""

    path: str
    rows_read: int = 0
    rows_filtered: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    example_rows: dict[str, int] = field(default_factory=dict)
    """Each example's row in the file: parts added in any order keep the file's first example."""

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
            row = other.example_rows.get(reason, -1)
            if reason not in self.examples or row < self.example_rows.get(reason, -1):
                self.examples[reason] = text
                self.example_rows[reason] = row

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
        # Arrow's hash join of the id sets: pandas' isin on Arrow-backed strings loops in Python (2.8 s of
        # a 37 s scoring run of 200k customers)
        events = pa.array(np.asarray(event_ids, dtype=object).astype(str), pa.string())
        customers = pa.array(np.asarray(customer_ids, dtype=object).astype(str), pa.string())
        joined = pc.is_in(events, value_set=customers).to_numpy(zero_copy_only=False)
        only = ~pc.is_in(customers, value_set=events).to_numpy(zero_copy_only=False)
        examples = {}
        if (~joined).any():
            examples["events"] = str(events[int(np.flatnonzero(~joined)[0])])
        if only.any():
            examples["customers"] = str(customers[int(np.flatnonzero(only)[0])])
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


def require_columns(frame: pd.DataFrame, needed: Sequence[str], path: str, what: str) -> None:
    """A missing column is one line: which, what it is for, the columns there are and (so a wrong delimiter
    or a shifted header shows) the first row as read."""
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        names = (str(c).replace("\r", "\\r").replace("\n", "\\n") for c in frame.columns[:12])
        have = ", ".join(names) + (" ..." if len(frame.columns) > 12 else "")
        first = f"; row {frame.index[0]}: {describe_row(frame, 0)}" if len(frame) else ""
        raise DataValidationError(
            f"{path}: column {missing[0]!r} ({what}) not found; columns are: {have}{first}"
        )


class RowChecker:
    """Collects invalid-row masks per reason, then drops them or fails, per the policy."""

    def __init__(
        self,
        frame: pd.DataFrame,
        raw: pd.DataFrame,
        report: ValidationReport,
        policy: Policy,
        file_rows: np.ndarray | None = None,
    ):
        if policy not in get_args(Policy):
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
        example = describe_row(self.raw, pos)
        row = int(self.file_rows[pos]) if self.file_rows is not None else pos
        if self.policy == "fail":
            raise DataValidationError(
                f"{self.report.path}: column {column!r}: {n:,} row(s) {what}, e.g. row {row}: {example} "
                f"(set data.policy=drop to drop them)"
            )
        self.bad |= mask
        self.report.dropped[reason] = self.report.dropped.get(reason, 0) + n
        if reason not in self.report.examples:
            self.report.examples[reason] = f"column {column!r}, row {row}: {example}"
            self.report.example_rows[reason] = row

    def result(self) -> pd.DataFrame:
        kept = self.frame.loc[~self.bad] if self.bad.any() else self.frame
        self.report.rows_kept = len(kept)
        return kept


def describe_row(raw: pd.DataFrame, pos: int, limit: int = 240) -> str:
    """Row `pos` as an error message shows it: every column's value, on one line, cut at `limit`."""
    text = "{" + ", ".join(f"{k}: {_cell(raw.iloc[:, j], pos)}" for j, k in enumerate(raw.columns)) + "}"
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(column: pd.Series, pos: int) -> str:
    """One value as an error shows it; a zone-aware time beyond what zone rules convert, in UTC."""
    try:
        return repr(column.iloc[pos])
    except (ValueError, OverflowError, NotImplementedError):
        return f"'{aware_to_zone(column.iloc[pos : pos + 1], 'UTC').iloc[0]} UTC'"


def validate_numeric(check: RowChecker, raw: pd.Series, spec: NumericField, source: str) -> pd.Series:
    """`raw` as float64, with every value the field does not allow (text, inf, a null without a `fill`,
    outside min/max) flagged to `check`."""
    values, non_numeric = coerce_numeric(raw)
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
