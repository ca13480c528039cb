"""Sequence encoding: raw event fields → integer ids and standardised numbers in flat arrays.

Fit on the training snapshots' histories only (vocabularies, numeric statistics), transform anywhere.
Training and scoring call the same `SequenceEncoder.transform`; its state is plain JSON so an exported
model can carry it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from churnwatch.data.contract import (
    OOV_TOKEN,
    PAD_TOKEN,
    ConfigError,
    CustomerSchema,
    EventSchema,
    NumericField,
)
from churnwatch.data.snapshots import DAY_NS, EventLog, Snapshots

log = logging.getLogger(__name__)
PAD, OOV = 0, 1
Z_LIMIT = 1e4
"""Standardised inputs are clipped to ±Z_LIMIT: far beyond any real measurement, far within float32 and
bf16, and small enough that weights times inputs cannot overflow a network."""


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class Vocabulary:
    """Category → id, with 0 = padding and 1 = out-of-vocabulary (unseen or too rare)."""

    tokens: list[str]

    @classmethod
    def fit(cls, values: pd.Series, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        cat = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
        counts = cat.value_counts(sort=False)  # per category: cheap even for 10M events
        counts = counts.groupby(counts.index.astype(str)).sum()
        counts = counts[counts >= min_count]
        # Most frequent first, ties broken by the token itself, so the vocabulary is deterministic.
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - 2)]
        return cls([PAD_TOKEN, OOV_TOKEN, *(k for k, _ in ranked)])

    def __len__(self) -> int:
        return len(self.tokens)

    def table(self, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(ids per category of `values`, category codes): ids = table[codes]; unseen and null → OOV."""
        index = {t: i for i, t in enumerate(self.tokens)}
        cat = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
        table = np.array([index.get(str(c), OOV) for c in cat.cat.categories] + [OOV], dtype=np.int32)
        codes = cat.cat.codes.to_numpy()
        return table, np.where(codes < 0, len(table) - 1, codes)

    def lookup(self, values: pd.Series) -> np.ndarray:
        """int32 ids; unseen values (and nulls) map to OOV."""
        table, codes = self.table(values)
        return table[codes]


@dataclass
class NumericStats:
    """Fill, optional signed log1p, then standardise with statistics fitted on training events."""

    fields: list[NumericField]
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std: np.ndarray = field(default_factory=lambda: np.ones(0))

    def _raw(self, columns: Sequence[np.ndarray], n_rows: int | None = None) -> np.ndarray:
        n_rows = len(columns[0]) if columns else (n_rows or 0)
        out = np.empty((n_rows, len(self.fields)), dtype=np.float64)
        for j, (spec, col) in enumerate(zip(self.fields, columns, strict=True)):
            x = np.asarray(col, dtype=np.float64)
            if spec.fill is not None:
                x = np.where(np.isnan(x), spec.fill, x)
            out[:, j] = signed_log1p(x) if spec.transform == "log1p" else x
        return out

    def fit(self, columns: Sequence[np.ndarray]) -> NumericStats:
        raw = self._raw(columns)
        if not len(raw):
            self.mean, self.std = np.zeros(len(self.fields)), np.ones(len(self.fields))
            return self
        # On values divided by their largest magnitude: squares of raw values up to 1e300 (what
        # validation lets through) would overflow float64 and leave no usable spread.
        with np.errstate(all="ignore"):
            scale = np.fmax.reduce(np.abs(raw), axis=0)  # ignores NaN
            scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
            self.mean = np.nan_to_num(np.nanmean(raw / scale, axis=0) * scale)
            std = np.nanstd(raw / scale, axis=0) * scale
        self.std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        return self

    def transform(self, columns: Sequence[np.ndarray], n_rows: int | None = None) -> np.ndarray:
        """float32 (n, n_fields); any value still missing becomes 0 (the training mean), never NaN, and
        values beyond ±Z_LIMIT standard deviations are clipped there (counted in a warning), so a raw
        value that passes validation never becomes an infinite network input.

        `n_rows` gives the row count when there are no fields (columns is empty)."""
        with np.errstate(over="ignore"):
            z = (self._raw(columns, n_rows) - self.mean) / self.std
        z = np.where(np.isnan(z), 0.0, z)
        beyond = np.abs(z) > Z_LIMIT
        if beyond.any():
            counts = beyond.sum(axis=0)
            log.warning(
                "clipped to ±%g standard deviations: %s",
                Z_LIMIT,
                ", ".join(
                    f"{int(n)} value(s) of {f.name}" for f, n in zip(self.fields, counts, strict=True) if n
                ),
            )
            np.clip(z, -Z_LIMIT, Z_LIMIT, out=z)
        return z.astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {
            "fields": [vars(f) for f in self.fields],
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> NumericStats:
        return cls(
            [NumericField(**f) for f in state["fields"]],
            np.asarray(state["mean"], dtype=np.float64),
            np.asarray(state["std"], dtype=np.float64),
        )


Allocator = Callable[[str, tuple[int, ...], np.dtype], np.ndarray]
"""(name, shape, dtype) → an uninitialised array to encode into (numpy memory, or a memory-mapped file)."""


def _allocate(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


TIME_NUMERIC = (NumericField("gap_days", transform="log1p"), NumericField("age_days", transform="log1p"))
TIME_CATEGORICAL = {"day_of_week": 7, "hour": 24}
VISIT_LINES = NumericField("visit_lines", transform="log1p")
"""With visits, each step also carries how many lines (basket items, page views) the visit had."""


@dataclass(frozen=True)
class VisitSpec:
    """How event lines group into visits (`data.visits`): a new visit starts at a new customer, a new
    calendar day, a change of `key` (an order or session id) and, with `gap_minutes`, after a pause longer
    than that. Neither set: every event is its own step. A visit never spans midnight, so a cutoff (a day)
    never splits one."""

    key: str | None = None
    gap_minutes: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.key) or self.gap_minutes is not None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> VisitSpec:
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"key", "gap_minutes"}
        if unknown:
            raise ConfigError(f"data.visits: unknown keys {sorted(unknown)} (known: key, gap_minutes)")
        gap = cfg.get("gap_minutes")
        if gap is not None and not float(gap) > 0:
            raise ConfigError(f"data.visits.gap_minutes must be positive, got {gap}")
        return cls(cfg.get("key") or None, float(gap) if gap is not None else None)

    def state(self) -> dict[str, Any]:
        return {"key": self.key, "gap_minutes": self.gap_minutes}

    def starts(self, log: EventLog) -> np.ndarray:
        """bool per log event: it opens a visit."""
        start = np.ones(len(log), dtype=bool)
        if len(log) > 1:
            day = log.ts // DAY_NS
            new = (log.customer[1:] != log.customer[:-1]) | (day[1:] != day[:-1])
            if self.key:
                codes = log.frame[self.key].cat.codes.to_numpy()
                new |= codes[1:] != codes[:-1]
            if self.gap_minutes is not None:
                new |= np.diff(log.ts) > self.gap_minutes * 60 * 10**9
            start[1:] = new
        return start


@dataclass(frozen=True)
class Steps:
    """What a row's sequence is made of: step j covers log events [first[j], stop[j]) (one event, or one
    visit's lines), and row i's steps are [offsets[i], offsets[i + 1])."""

    offsets: np.ndarray
    first: np.ndarray
    stop: np.ndarray
    gap_days: np.ndarray
    """Days since the customer's previous step (0 for their first)."""

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class EncodedSequences:
    """Encoded snapshots in a compact columnar layout: row i's events are [offsets[i], offsets[i+1])."""

    offsets: np.ndarray
    cat: np.ndarray
    """int32 (events, n_cat): event categorical ids, then day of week and hour (1-based, 0 = pad)."""
    num: np.ndarray
    """float32 (events, n_num): standardised numeric fields, then gap and age features."""
    static_cat: np.ndarray
    static_num: np.ndarray
    label: np.ndarray
    customer_id: np.ndarray
    cutoff: np.ndarray
    tte: np.ndarray
    """float32 (events,): days from each step to the customer's next activity, or to where observation
    stopped (features/time_to_event.py); 0 where no targets were built (scoring)."""
    tte_observed: np.ndarray
    """bool (events,): tte ends at an observed activity (else it is censored there)."""
    weight: np.ndarray
    """float32 (rows,): the row's weight in the training loss (`data.sample_weight`; 1 elsewhere)."""

    def __len__(self) -> int:
        return len(self.label)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, index: np.ndarray) -> EncodedSequences:
        """Rows `index` as a new, contiguous EncodedSequences (copies the selected events)."""
        index = np.asarray(index, dtype=np.int64)
        ev = slice_events(self.offsets, index)
        lengths = self.lengths[index]
        return EncodedSequences(
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            self.cat[ev],
            self.num[ev],
            self.static_cat[index],
            self.static_num[index],
            self.label[index],
            self.customer_id[index],
            self.cutoff[index],
            self.tte[ev],
            self.tte_observed[ev],
            self.weight[index],
        )


def slice_events(offsets: np.ndarray, rows: np.ndarray, max_len: int | None = None) -> np.ndarray:
    """Flat event indices of `rows`, each row's events in order (its last `max_len` when given)."""
    starts, ends = offsets[rows], offsets[np.asarray(rows) + 1]
    if max_len is not None:
        starts = np.maximum(starts, ends - max_len)
    return ranges(starts, ends)


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for each pair, without a Python loop."""
    lengths = (ends - starts).astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    row_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(starts.astype(np.int64) - row_start, lengths) + np.arange(total, dtype=np.int64)


class SequenceEncoder:
    """Fits vocabularies and numeric statistics on training histories; encodes any snapshots the same way."""

    def __init__(
        self,
        schema: EventSchema,
        customer_schema: CustomerSchema | None = None,
        max_len: int = 256,
        min_count: int = 1,
        max_vocab: int | None = None,
        visits: VisitSpec | None = None,
        max_span_days: float | None = None,
    ):
        self.schema = schema
        self.customer_schema = customer_schema or CustomerSchema()
        self.max_len = int(max_len)
        """Steps (events, or visits) kept per row: the most recent ones."""
        self.min_count = int(min_count)
        self.max_vocab = max_vocab
        self.visits = visits or VisitSpec()
        if self.visits.key and self.visits.key != schema.visit_key:
            raise ConfigError(f"data.visits.key {self.visits.key!r} is not the schema's visit key")
        if max_span_days is not None and not float(max_span_days) > 0:
            raise ConfigError(f"data.max_span_days must be positive, got {max_span_days}")
        self.max_span_days = float(max_span_days) if max_span_days is not None else None
        """With it, a row also keeps only the steps of its last `max_span_days` days (at least one)."""
        self.vocabs: dict[str, Vocabulary] = {}
        self.static_vocabs: dict[str, Vocabulary] = {}
        self.numeric: NumericStats | None = None
        self.static_numeric: NumericStats | None = None

    # -- names and sizes the models need ----------------------------------------------------------------
    @property
    def cat_names(self) -> list[str]:
        return [*self.schema.categorical, *TIME_CATEGORICAL]

    @property
    def cat_cardinalities(self) -> list[int]:
        return [len(self.vocabs[n]) for n in self.schema.categorical] + [
            v + 1 for v in TIME_CATEGORICAL.values()
        ]

    @property
    def _step_numeric(self) -> list[NumericField]:
        """The numeric inputs of a step: event fields (a visit's reduced over its lines), the visit's line
        count, then the time features."""
        lines = [VISIT_LINES] if self.visits.enabled else []
        return [*self.schema.numeric, *lines, *TIME_NUMERIC]

    @property
    def num_names(self) -> list[str]:
        return [f.name for f in self._step_numeric]

    @property
    def static_cat_names(self) -> list[str]:
        return list(self.customer_schema.categorical)

    @property
    def static_cat_cardinalities(self) -> list[int]:
        return [len(self.static_vocabs[n]) for n in self.static_cat_names]

    @property
    def static_num_names(self) -> list[str]:
        return [
            *(f.name for f in self.customer_schema.numeric),
            *(f"{d}_days" for d in self.customer_schema.dates),
        ]

    @property
    def is_fitted(self) -> bool:
        return self.numeric is not None

    # -- fit / transform -----------------------------------------------------------------------------------
    def fit(self, log: EventLog, snaps: Snapshots, customers: pd.DataFrame | None = None) -> SequenceEncoder:
        """Fit on the distinct events inside `snaps`' histories (and those customers' static rows) only."""
        fit_events = history_mask(len(log), snaps.start, snaps.end)
        frame = log.frame
        for name in self.schema.categorical:
            self.vocabs[name] = Vocabulary.fit(frame[name][fit_events], self.min_count, self.max_vocab)
        steps = self.steps(log, snaps)
        age = self._age(log, snaps, steps)
        if self.visits.enabled:  # visit values are fitted on the distinct visits the rows see
            _, distinct = np.unique(steps.first, return_index=True)
            event_cols = [c[distinct] for c in self._reduced(log, steps.first, steps.stop)]
            event_fields = [*self.schema.numeric, VISIT_LINES]
        else:  # event fields on distinct events
            event_cols = [frame[n].to_numpy(dtype=np.float64)[fit_events] for n in self.schema.numeric_names]
            event_fields = list(self.schema.numeric)
        # time features on what the model sees (per row)
        event_stats = NumericStats(event_fields).fit(event_cols)
        time_stats = NumericStats(list(TIME_NUMERIC)).fit([steps.gap_days, age])
        self.numeric = NumericStats(
            self._step_numeric,
            np.concatenate([event_stats.mean, time_stats.mean]),
            np.concatenate([event_stats.std, time_stats.std]),
        )
        static = self._static_frame(log, snaps, customers)
        for name in self.customer_schema.categorical:
            self.static_vocabs[name] = Vocabulary.fit(static[name].dropna(), 1, self.max_vocab)
        self.static_numeric = NumericStats(self._static_num_fields()).fit(
            [static[n].to_numpy(dtype=np.float64) for n in self.static_num_names]
        )
        return self

    def steps(self, log: EventLog, snaps: Snapshots) -> Steps:
        """Each row's steps: its last `max_len` events (or visits) before the cutoff, within
        `max_span_days` of it when set."""
        start, end = snaps.start, snaps.end
        if self.max_span_days is not None:
            since = snaps.cutoff.view(np.int64) - np.int64(round(self.max_span_days * DAY_NS))
            start = np.minimum(np.maximum(start, _first_at_or_after(log, snaps, since)), end - 1)
        if not self.visits.enabled:
            start = np.maximum(start, end - self.max_len)
            rows = ranges(start, end)
            offsets = np.concatenate([[0], np.cumsum(end - start)]).astype(np.int64)
            return Steps(offsets, rows, rows + 1, log.gap_days[rows])
        opens = self.visits.starts(log)
        visit_of = np.cumsum(opens) - 1
        visit_at = np.flatnonzero(opens)
        visit_end = np.append(visit_at[1:], len(log))
        v1 = visit_of[end - 1] + 1
        v0 = np.maximum(visit_of[start], v1 - self.max_len)
        visits = ranges(v0, v1)
        counts = v1 - v0
        first = np.maximum(visit_at[visits], np.repeat(start, counts))
        stop = np.minimum(visit_end[visits], np.repeat(end, counts))
        # days since the customer's previous visit (the first line of each)
        visit_gap = np.zeros(len(visit_at))
        if len(visit_at) > 1:
            visit_gap[1:] = np.diff(log.ts[visit_at]) / DAY_NS
            visit_gap[1:][log.customer[visit_at[1:]] != log.customer[visit_at[:-1]]] = 0.0
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Steps(offsets, first, stop, visit_gap[visits])

    def _reduced(self, log: EventLog, first: np.ndarray, stop: np.ndarray) -> list[np.ndarray]:
        """Raw numeric values per step: each field over the step's lines as its `visit` rule says (filled
        first), then the line count."""
        lines = ranges(first, stop)
        count = (stop - first).astype(np.float64)
        at = np.concatenate([[0], np.cumsum(stop - first)[:-1]]).astype(np.int64)
        out = []
        for spec in self.schema.numeric:
            x = log.frame[spec.name].to_numpy(dtype=np.float64)[lines]
            if spec.fill is not None:
                x = np.where(np.isnan(x), spec.fill, x)
            if not len(first):
                out.append(np.zeros(0))
            elif spec.visit == "last":
                out.append(x[at + count.astype(np.int64) - 1])
            elif spec.visit == "max":
                out.append(np.maximum.reduceat(x, at))
            else:
                total = np.add.reduceat(x, at)
                out.append(total / count if spec.visit == "mean" else total)
        out.append(count)
        return out

    def _age(self, log: EventLog, snaps: Snapshots, steps: Steps) -> np.ndarray:
        """Days from each step to its row's cutoff."""
        cutoff = np.repeat(snaps.cutoff.view(np.int64), steps.lengths)
        return (cutoff - log.ts[steps.first]) / DAY_NS

    def transform(
        self,
        log: EventLog,
        snaps: Snapshots,
        customers: pd.DataFrame | None = None,
        chunk_events: int = 1_000_000,
        alloc: Allocator | None = None,
    ) -> EncodedSequences:
        """Encode each snapshot row's steps (`steps`): its last `max_len` events or visits before its cutoff.

        Works through the rows in chunks of about `chunk_events` steps, writing into preallocated
        outputs, so temporary memory stays bounded however large the log is. `alloc(name, shape, dtype)`
        provides the per-step outputs ("cat", "num"); the encoded-snapshot cache passes memory-mapped
        files, so encoding a log larger than RAM never holds its encoding in memory. The time-to-event
        targets are zero here (features/time_to_event.py fills them for training).
        """
        if not self.is_fitted:
            raise RuntimeError("SequenceEncoder.transform called before fit")
        steps = self.steps(log, snaps)
        offsets = steps.offsets
        total = int(offsets[-1])
        frame = log.frame
        n_fields = len(self.schema.categorical)
        alloc = alloc or _allocate
        cat = alloc("cat", (total, n_fields + len(TIME_CATEGORICAL)), np.dtype(np.int32))
        num = alloc("num", (total, len(self.num_names)), np.dtype(np.float32))
        tables, codes = {}, {}
        for name in self.schema.categorical:
            tables[name], codes[name] = self.vocabs[name].table(frame[name])
        numeric = [frame[n].to_numpy(dtype=np.float64) for n in self.schema.numeric_names]
        age = self._age(log, snaps, steps)
        cuts = np.searchsorted(offsets, np.arange(chunk_events, total, chunk_events))
        bounds = np.unique(np.concatenate([[0], cuts, [len(snaps)]]))
        for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
            out = slice(offsets[r0], offsets[r1])
            first, stop = steps.first[out], steps.stop[out]
            for j, name in enumerate(self.schema.categorical):
                if self.visits.enabled:
                    cat[out, j] = _mode(tables[name][codes[name][ranges(first, stop)]], stop - first)
                else:
                    cat[out, j] = tables[name][codes[name][first]]
            ts = log.ts[first]
            # Day of week and hour of the step's wall-clock time: 1-based, 0 stays padding.
            days = ts // DAY_NS
            cat[out, n_fields] = (days + 3) % 7 + 1  # 1970-01-01 was a Thursday (Monday = 1)
            cat[out, n_fields + 1] = (ts - days * DAY_NS) // (3600 * 10**9) + 1
            if self.visits.enabled:
                values = self._reduced(log, first, stop)
            else:
                values = [col[first] for col in numeric]
            num[out] = self.numeric.transform([*values, steps.gap_days[out], age[out]])
        static = self._static_frame(log, snaps, customers)
        static_cat = np.zeros((len(snaps), len(self.static_cat_names)), dtype=np.int32)
        for j, name in enumerate(self.static_cat_names):
            static_cat[:, j] = self.static_vocabs[name].lookup(static[name])
        static_num = self.static_numeric.transform(
            [static[n].to_numpy(dtype=np.float64) for n in self.static_num_names], n_rows=len(snaps)
        )
        return EncodedSequences(
            offsets,
            cat,
            num,
            static_cat,
            static_num,
            snaps.label.astype(np.float32),
            snaps.customer_ids(log),
            snaps.cutoff,
            _zeros(alloc, "tte", total, np.float32),
            _zeros(alloc, "tte_observed", total, np.bool_),
            np.ones(len(snaps), dtype=np.float32),
        )

    # -- static attributes ----------------------------------------------------------------------------------
    def _static_num_fields(self) -> list[NumericField]:
        return [
            *self.customer_schema.numeric,
            *(NumericField(f"{d}_days", transform="log1p") for d in self.customer_schema.dates),
        ]

    def _static_frame(self, log: EventLog, snaps: Snapshots, customers: pd.DataFrame | None) -> pd.DataFrame:
        """Static attributes per snapshot row; date columns become days before that row's cutoff."""
        cs = self.customer_schema
        ids = snaps.customer_ids(log)
        out = pd.DataFrame(index=pd.RangeIndex(len(ids)))
        present = customers.reindex(ids) if customers is not None else None
        for name in cs.categorical:
            out[name] = present[name].to_numpy() if present is not None else None
        for spec in cs.numeric:
            out[spec.name] = present[spec.name].to_numpy(dtype=np.float64) if present is not None else np.nan
        for name in cs.dates:
            if present is None:
                out[f"{name}_days"] = np.nan
                continue
            when = present[name].to_numpy(dtype="datetime64[ns]")
            days = (snaps.cutoff - when) / np.timedelta64(1, "D")
            out[f"{name}_days"] = np.clip(days, 0, None)  # a date after the cutoff is not yet known: 0 days
        return out

    # -- persistence (JSON-able; carried inside the exported model) ---------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "max_len": self.max_len,
            "min_count": self.min_count,
            "max_vocab": self.max_vocab,
            "vocabs": {k: v.tokens for k, v in self.vocabs.items()},
            "static_vocabs": {k: v.tokens for k, v in self.static_vocabs.items()},
            "numeric": self.numeric.state() if self.numeric else None,
            "static_numeric": self.static_numeric.state() if self.static_numeric else None,
            "visits": self.visits.state(),
            "max_span_days": self.max_span_days,
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], schema: EventSchema, customer_schema: CustomerSchema | None = None
    ) -> SequenceEncoder:
        enc = cls(
            schema,
            customer_schema,
            state["max_len"],
            state["min_count"],
            state["max_vocab"],
            VisitSpec.from_config(state.get("visits")),
            state.get("max_span_days"),
        )
        enc.vocabs = {k: Vocabulary(list(v)) for k, v in state["vocabs"].items()}
        enc.static_vocabs = {k: Vocabulary(list(v)) for k, v in state["static_vocabs"].items()}
        enc.numeric = NumericStats.from_state(state["numeric"])
        enc.static_numeric = NumericStats.from_state(state["static_numeric"])
        return enc


def history_mask(n_events: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Boolean mask of events inside any [start, end) range (the distinct events of a set of histories)."""
    marks = np.zeros(n_events + 1, dtype=np.int64)
    np.add.at(marks, starts, 1)
    np.add.at(marks, ends, -1)
    return np.cumsum(marks[:-1]) > 0


def _zeros(alloc: Allocator, name: str, n: int, dtype: type) -> np.ndarray:
    out = alloc(name, (n,), np.dtype(dtype))
    out[:] = 0
    return out


def _first_at_or_after(log: EventLog, snaps: Snapshots, when_ns: np.ndarray) -> np.ndarray:
    """Per row, the first log index of its customer with a time at or after `when_ns` (its end if none):
    one binary search over (customer, time), which the log is sorted by."""
    base = np.int64(log.ts.min()) if len(log) else np.int64(0)
    key = log.customer.astype(np.int64) * (1 << 32) + (log.ts - base) // 10**9
    seconds = np.maximum((when_ns - base + 10**9 - 1) // 10**9, 0)  # rounded up: at or after
    wanted = snaps.customer.astype(np.int64) * (1 << 32) + seconds
    return np.searchsorted(key, wanted, side="left")


def _mode(ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The most frequent id in each consecutive group of `counts` ids (ties: the smallest id, i.e. the
    most frequent token overall, as vocabularies rank them)."""
    if not len(counts):
        return np.zeros(0, dtype=np.int32)
    group = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    width = np.int64(int(ids.max()) + 1)
    pairs, n = np.unique(group * width + ids, return_counts=True)
    owner = pairs // width
    best = np.lexsort((pairs % width, -n, owner))  # by group, then count (desc), then id
    keep = best[np.r_[True, owner[best][1:] != owner[best][:-1]]]
    return (pairs[keep] % width).astype(np.int32)
