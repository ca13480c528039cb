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

from churnwatch.data.contract import OOV_TOKEN, PAD_TOKEN, CustomerSchema, EventSchema, NumericField
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
    ):
        self.schema = schema
        self.customer_schema = customer_schema or CustomerSchema()
        self.max_len = int(max_len)
        self.min_count = int(min_count)
        self.max_vocab = max_vocab
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
    def num_names(self) -> list[str]:
        return [*self.schema.numeric_names, *(f.name for f in TIME_NUMERIC)]

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
        # Event fields are fitted on distinct events; time features on what the model sees (per row).
        event_stats = NumericStats(list(self.schema.numeric)).fit(
            [frame[n].to_numpy(dtype=np.float64)[fit_events] for n in self.schema.numeric_names]
        )
        _, _, gap, age = self._window(log, snaps)
        time_stats = NumericStats(list(TIME_NUMERIC)).fit([gap, age])
        self.numeric = NumericStats(
            [*self.schema.numeric, *TIME_NUMERIC],
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

    def transform(
        self,
        log: EventLog,
        snaps: Snapshots,
        customers: pd.DataFrame | None = None,
        chunk_events: int = 1_000_000,
        alloc: Allocator | None = None,
    ) -> EncodedSequences:
        """Encode each snapshot row's last `max_len` events before its cutoff.

        Works through the rows in chunks of about `chunk_events` events, writing into preallocated
        outputs, so temporary memory stays bounded however large the log is. `alloc(name, shape, dtype)`
        provides the per-event outputs ("cat", "num"); the encoded-snapshot cache passes memory-mapped
        files, so encoding a log larger than RAM never holds its encoding in memory.
        """
        if not self.is_fitted:
            raise RuntimeError("SequenceEncoder.transform called before fit")
        start = np.maximum(snaps.start, snaps.end - self.max_len)
        offsets = np.concatenate([[0], np.cumsum(snaps.end - start)]).astype(np.int64)
        frame = log.frame
        n_fields = len(self.schema.categorical)
        alloc = alloc or _allocate
        cat = alloc("cat", (int(offsets[-1]), n_fields + len(TIME_CATEGORICAL)), np.dtype(np.int32))
        num = alloc("num", (int(offsets[-1]), len(self.num_names)), np.dtype(np.float32))
        tables, codes = {}, {}
        for name in self.schema.categorical:
            tables[name], codes[name] = self.vocabs[name].table(frame[name])
        numeric = [frame[n].to_numpy(dtype=np.float64) for n in self.schema.numeric_names]
        cuts = np.searchsorted(offsets, np.arange(chunk_events, offsets[-1], chunk_events))
        bounds = np.unique(np.concatenate([[0], cuts, [len(snaps)]]))
        for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
            out = slice(offsets[r0], offsets[r1])
            rows = ranges(start[r0:r1], snaps.end[r0:r1])
            for j, name in enumerate(self.schema.categorical):
                cat[out, j] = tables[name][codes[name][rows]]
            ts = log.ts[rows]
            # Day of week and hour of the event's wall-clock time: 1-based, 0 stays padding.
            days = ts // DAY_NS
            cat[out, n_fields] = (days + 3) % 7 + 1  # 1970-01-01 was a Thursday (Monday = 1)
            cat[out, n_fields + 1] = (ts - days * DAY_NS) // (3600 * 10**9) + 1
            age = (np.repeat(snaps.cutoff[r0:r1].view(np.int64), np.diff(offsets[r0 : r1 + 1])) - ts) / DAY_NS
            num[out] = self.numeric.transform([*(col[rows] for col in numeric), log.gap_days[rows], age])
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
        )

    def _window(self, log: EventLog, snaps: Snapshots) -> tuple[np.ndarray, ...]:
        """Per row: kept length; flat event indices of the last `max_len` events; gap and age in days."""
        start = np.maximum(snaps.start, snaps.end - self.max_len)
        lengths = snaps.end - start
        rows = ranges(start, snaps.end)
        age = (np.repeat(snaps.cutoff.view(np.int64), lengths) - log.ts[rows]) / DAY_NS
        return lengths, rows, log.gap_days[rows], age

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
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], schema: EventSchema, customer_schema: CustomerSchema | None = None
    ) -> SequenceEncoder:
        enc = cls(schema, customer_schema, state["max_len"], state["min_count"], state["max_vocab"])
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
