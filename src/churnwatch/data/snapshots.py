"""Snapshots: for a cutoff, who is in the population, which history they have, and whether they churned.

A snapshot row points at a customer's history as a half-open range of the sorted event log, so features
can only ever see events strictly before the cutoff: the leakage guarantee is structural.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import pandas as pd

from churnwatch.config.schema import DataConfig
from churnwatch.data.expressions import query_mask
from churnwatch.data.schema import CUSTOMER_ID, TIMESTAMP
from churnwatch.errors import ConfigError

DAY_NS = 86_400 * 10**9


class EventSource(Protocol):
    """Events held outside pandas (a cache entry's memory-mapped table), converted as asked."""

    @property
    def columns(self) -> list[str]:
        """The events' column names."""
        ...

    def frame(self, columns: Sequence[str] | None = None, rows: np.ndarray | None = None) -> pd.DataFrame:
        """The `columns` (default: all) of the events `rows` (default: all, in order), as `load_events`
        gives them (`rows` numbered from 0)."""
        ...


@dataclass(frozen=True)
class EventLog:
    """The validated events in flat arrays, sorted by customer then time, with per-customer offsets."""

    source: pd.DataFrame | EventSource
    """The events with all their columns: a frame, or where to convert one from (`frame`, `select`)."""
    customer_ids: np.ndarray
    """Canonical id strings; `customer` indexes into it."""
    customer: np.ndarray
    ts: np.ndarray
    """int64 nanoseconds (naive wall-clock time in the configured timezone)."""
    offsets: np.ndarray
    """Customer i's events are [offsets[i], offsets[i + 1])."""

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> EventLog:
        ids = frame[CUSTOMER_ID]
        if not isinstance(ids.dtype, pd.CategoricalDtype):
            ids = ids.astype("category")
        codes = ids.cat.codes.to_numpy().astype(np.int64)
        ts = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
        return cls.from_arrays(frame, np.asarray(ids.cat.categories.astype(str), dtype=object), codes, ts)

    @classmethod
    def from_arrays(
        cls, source: pd.DataFrame | EventSource, customer_ids: np.ndarray, codes: np.ndarray, ts: np.ndarray
    ) -> EventLog:
        """The log of events whose customer codes (into `customer_ids`) and int64 ns times are given; their
        other columns stay in `source` until asked for."""
        if len(codes) and (np.any(np.diff(codes) < 0) or np.any((np.diff(codes) == 0) & (np.diff(ts) < 0))):
            raise ValueError("EventLog needs events sorted by customer, then time (use load_events)")
        counts = np.bincount(codes, minlength=len(customer_ids))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(source=source, customer_ids=customer_ids, customer=codes, ts=ts, offsets=offsets)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """Every event with every column (a log from a cache entry converts them all on first use; `select`
        converts only some)."""
        return self.source if isinstance(self.source, pd.DataFrame) else self.source.frame()

    @property
    def columns(self) -> list[str]:
        """The events' column names (none converted)."""
        return list(map(str, self.source.columns))

    def select(self, columns: Sequence[str] | None = None, rows: np.ndarray | None = None) -> pd.DataFrame:
        """`frame`'s `columns` (default: all) of the events `rows` (default: all), converting only those
        from a cache entry's table. With a column the events lack, all of them: the caller's own check then
        names the missing one among every column."""
        if columns is not None and not set(columns) <= set(self.columns):
            columns = None
        if isinstance(self.source, pd.DataFrame) or "frame" in self.__dict__:
            out = self.frame if columns is None else self.frame[list(columns)]
            return out if rows is None else out.iloc[rows].reset_index(drop=True)
        return self.source.frame(columns, rows)

    @property
    def n_customers(self) -> int:
        return len(self.customer_ids)

    def __len__(self) -> int:
        return len(self.ts)

    def count_in(
        self, lo: np.datetime64 | None, hi: np.datetime64, mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Per-customer number of events with lo <= t < hi (optionally among `mask`ed events only)."""
        sel = self.ts < _ns(hi)
        if lo is not None:
            sel &= self.ts >= _ns(lo)
        if mask is not None:
            sel &= mask
        return np.bincount(self.customer[sel], minlength=self.n_customers)

    @cached_property
    def gap_days(self) -> np.ndarray:
        """Days since the customer's previous event; 0 for a customer's first event."""
        gaps = np.zeros(len(self.ts), dtype=np.float64)
        if len(self.ts) > 1:
            gaps[1:] = np.diff(self.ts) / DAY_NS
            gaps[self.offsets[:-1][np.diff(self.offsets) > 0]] = 0.0
        return gaps


def _ns(value: Any) -> np.int64:
    return np.int64(pd.Timestamp(value).value)


@dataclass(frozen=True)
class Snapshots:
    """Rows of (customer, cutoff, history range, label), possibly from several cutoffs."""

    customer: np.ndarray
    cutoff: np.ndarray
    """datetime64[ns] per row."""
    start: np.ndarray
    end: np.ndarray
    """History = events [start, end) of the EventLog: all of the customer's events strictly before cutoff."""
    label: np.ndarray
    """float32: 1 = churned, 0 = stayed, NaN = unknown (scoring)."""

    def __len__(self) -> int:
        return len(self.customer)

    def subset(self, index: np.ndarray) -> Snapshots:
        return Snapshots(
            self.customer[index], self.cutoff[index], self.start[index], self.end[index], self.label[index]
        )

    @staticmethod
    def concat(parts: Sequence[Snapshots]) -> Snapshots:
        return Snapshots(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("customer", "cutoff", "start", "end", "label")
            )
        )

    def customer_ids(self, log: EventLog) -> np.ndarray:
        return log.customer_ids[self.customer]

    def summary(self) -> pd.DataFrame:
        """Rows and churn rate per cutoff."""
        frame = pd.DataFrame({"cutoff": self.cutoff, "label": self.label})
        return frame.groupby("cutoff").agg(customers=("label", "size"), churn_rate=("label", "mean"))


@dataclass(frozen=True)
class SnapshotPlan:
    """Which cutoffs train and test use, and what 'churn' means at a cutoff."""

    train_cutoffs: tuple[pd.Timestamp, ...]
    test_cutoff: pd.Timestamp | None
    horizon_days: int
    lookback_days: int | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SnapshotPlan:
        horizon = int(cfg["horizon_days"])
        if horizon <= 0:
            raise ConfigError(f"data.horizon_days must be positive, got {horizon}")
        test = pd.Timestamp(cfg["test_cutoff"]).normalize() if cfg.get("test_cutoff") else None
        explicit = cfg.get("train_cutoffs")
        if explicit:
            train = tuple(sorted(pd.Timestamp(c).normalize() for c in explicit))
        else:
            every = int(cfg.get("snapshot_every_days") or DataConfig.snapshot_every_days)
            last = cfg.get("last_train_cutoff")
            if last is None:
                if test is None:
                    raise ConfigError("set data.train_cutoffs, data.last_train_cutoff or data.test_cutoff")
                last_ts = test - pd.Timedelta(days=horizon)
            else:
                last_ts = pd.Timestamp(last).normalize()
            first = cfg.get("first_train_cutoff")
            if first is not None:  # every `every` days back from the last, as far as the first
                first_ts = pd.Timestamp(first).normalize()
                if first_ts > last_ts:
                    raise ConfigError(
                        f"data.first_train_cutoff {first_ts.date()} is after the last training cutoff "
                        f"{last_ts.date()}"
                    )
                n = (last_ts - first_ts).days // every + 1
            else:
                n = int(cfg.get("n_snapshots") or DataConfig.n_snapshots)
            train = tuple(last_ts - pd.Timedelta(days=every * k) for k in reversed(range(n)))
        lookback = cfg.get("lookback_days")
        plan = cls(train, test, horizon, int(lookback) if lookback else None)
        plan.check()
        return plan

    def check(self) -> None:
        """Reject plans whose training labels would peek into the test period."""
        if len(set(self.train_cutoffs)) != len(self.train_cutoffs):
            raise ConfigError(
                f"data.train_cutoffs repeat a date: {[str(c.date()) for c in self.train_cutoffs]}"
            )
        if self.test_cutoff is None:
            return
        horizon = pd.Timedelta(days=self.horizon_days)
        for c in self.train_cutoffs:
            if c + horizon > self.test_cutoff:
                raise ConfigError(
                    f"training cutoff {c.date()} + horizon {self.horizon_days}d ends {(c + horizon).date()}, "
                    f"after data.test_cutoff {self.test_cutoff.date()}: its labels would leak test-period "
                    f"events (latest allowed cutoff: {(self.test_cutoff - horizon).date()})"
                )


def build_snapshot(
    log: EventLog,
    cutoff: str | pd.Timestamp,
    horizon_days: int | None,
    *,
    lookback_days: int | None = None,
    labels: pd.DataFrame | None = None,
    label_events: np.ndarray | None = None,
    data_end: pd.Timestamp | None = None,
) -> Snapshots:
    """One cutoff's population, history ranges and labels.

    Population: customers with at least one event before the cutoff (and, with `lookback_days`, at least
    one in the `lookback_days` before it). Label: from `labels` (explicit, per customer and cutoff) if
    given, else 1 when the customer has no event (among `label_events`, if given) in
    [cutoff, cutoff + horizon). `horizon_days=None` builds an unlabelled (scoring) snapshot.
    """
    c = pd.Timestamp(cutoff)
    n_before = log.count_in(None, c)
    in_pop = n_before > 0
    if lookback_days:
        in_pop &= log.count_in(c - pd.Timedelta(days=lookback_days), c) > 0
    customers = np.flatnonzero(in_pop)
    if horizon_days is None:
        label = np.full(len(customers), np.nan, dtype=np.float32)
    elif labels is not None:
        at_cutoff = labels.loc[labels["cutoff"] == c.normalize()]
        lookup = pd.Series(at_cutoff["label"].to_numpy(), index=at_cutoff[CUSTOMER_ID].to_numpy())
        label = lookup.reindex(log.customer_ids[customers]).to_numpy(dtype=np.float32)
        known = ~np.isnan(label)
        customers, label = customers[known], label[known]
    else:
        window_end = c + pd.Timedelta(days=horizon_days)
        if data_end is not None:
            check_label_window(c, horizon_days, data_end)
        active = log.count_in(c, window_end, mask=label_events)
        label = (active[customers] == 0).astype(np.float32)
    start = log.offsets[customers]
    return Snapshots(
        customer=customers.astype(np.int64),
        cutoff=np.full(len(customers), c.to_datetime64(), dtype="datetime64[ns]"),
        start=start,
        end=start + n_before[customers],
        label=label,
    )


def check_label_window(cutoff: pd.Timestamp, horizon_days: int, data_end: pd.Timestamp) -> None:
    """An implicit label needs its whole window [cutoff, cutoff + horizon) inside the data."""
    c = pd.Timestamp(cutoff)
    window_end = c + pd.Timedelta(days=horizon_days)
    if window_end > data_end + pd.Timedelta(days=1):
        raise ConfigError(
            f"cutoff {c.date()}: label window [{c.date()}, {window_end.date()}) runs past the data's end "
            f"{data_end.date()}, so every customer would look churned; use an earlier cutoff"
        )


def check_population(cutoff: pd.Timestamp, size: int, data_start: np.datetime64 | pd.Timestamp) -> None:
    """A training or test cutoff needs somebody in its population."""
    if size == 0:
        raise ConfigError(
            f"cutoff {pd.Timestamp(cutoff).date()} has an empty population: no customer has "
            f"events before it (data starts {pd.Timestamp(data_start).date()})"
        )


def label_event_mask(frame: pd.DataFrame, label_events: str | None) -> np.ndarray | None:
    """Which events count as activity for the implicit churn label, a condition (docs/EXPRESSIONS.md; None:
    every event)."""
    if not label_events:
        return None
    return query_mask(frame, label_events, "data.label_events")


def build_snapshots(
    log: EventLog,
    cutoffs: Sequence[pd.Timestamp],
    plan: SnapshotPlan,
    labels: pd.DataFrame | None = None,
    label_events: np.ndarray | None = None,
    data_end: pd.Timestamp | None = None,
    part: bool = False,
) -> Snapshots:
    """Several cutoffs stacked; a customer appears once per cutoff whose population includes them.

    `part=True`: `log` is one customer-disjoint part of the whole, where a cutoff may have nobody (the caller
    checks the whole's populations, `check_population`)."""
    parts = [
        build_snapshot(
            log,
            c,
            plan.horizon_days,
            lookback_days=plan.lookback_days,
            labels=labels,
            label_events=label_events,
            data_end=data_end,
        )
        for c in cutoffs
    ]
    if not part:
        for c, one in zip(cutoffs, parts, strict=True):
            check_population(c, len(one), log.ts.min())
    return Snapshots.concat(parts)


def customer_weights(snaps: Snapshots) -> np.ndarray:
    """float32 per row: 1 / (the customer's rows), scaled to mean 1, so that with many cutoffs a customer
    counts once however many snapshots their long life puts in the training set."""
    if not len(snaps):
        return np.ones(0, dtype=np.float32)
    _, inverse, counts = np.unique(snaps.customer, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return (w * len(w) / w.sum()).astype(np.float32)
