"""Sequence encoding: raw event fields → integer ids and standardised numbers in flat arrays.

Fit on the training snapshots' histories only (vocabularies, numeric statistics: features/stats.py),
transform anywhere. Which events each row keeps, one step per event or per visit, is features/window.py's
rule. Training and scoring call the same `SequenceEncoder.transform`; its state is plain JSON so an
exported model can carry it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from churnwatch.data.schema import CustomerSchema, EventSchema, NumericField
from churnwatch.data.snapshots import DAY_NS, EventLog, Snapshots
from churnwatch.errors import ConfigError
from churnwatch.features.stats import Moments, NumericStats, Vocabulary, merge_counts
from churnwatch.features.window import HistoryWindow, Steps, VisitSpec, history_mask, kept_steps, ranges

Allocator = Callable[[str, tuple[int, ...], np.dtype], np.ndarray]
"""(name, shape, dtype) → an uninitialised array to encode into (numpy memory, or a memory-mapped file)."""


def _allocate(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


TIME_NUMERIC = (NumericField("gap_days", transform="log1p"), NumericField("age_days", transform="log1p"))
TIME_CATEGORICAL = {"day_of_week": 7, "hour": 24}
VISIT_LINES = NumericField("visit_lines", transform="log1p")
"""With visits, each step also carries how many lines (basket items, page views) the visit had."""


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


@dataclass
class EncoderStats:
    """What `SequenceEncoder.fit_stats` needs of the training histories: token counts per categorical field
    and moments of the numeric inputs. Parts' stats merge into their union's."""

    vocab: dict[str, pd.Series]
    events: Moments
    time: Moments
    static_vocab: dict[str, pd.Series]
    static: Moments

    @staticmethod
    def merged(parts: Sequence[EncoderStats]) -> EncoderStats:
        return EncoderStats(
            vocab={k: merge_counts([p.vocab[k] for p in parts]) for k in parts[0].vocab},
            events=Moments.merged([p.events for p in parts]),
            time=Moments.merged([p.time for p in parts]),
            static_vocab={k: merge_counts([p.static_vocab[k] for p in parts]) for k in parts[0].static_vocab},
            static=Moments.merged([p.static for p in parts]),
        )


class SequenceEncoder:
    """Fits vocabularies and numeric statistics on training histories; encodes any snapshots the same way."""

    def __init__(
        self,
        schema: EventSchema,
        customer_schema: CustomerSchema | None = None,
        *,
        max_len: int = 256,
        min_count: int = 1,
        max_vocab: int | None = None,
        visits: VisitSpec | None = None,
        max_span_days: float | None = None,
    ):
        self.schema = schema
        self.customer_schema = customer_schema or CustomerSchema()
        self.min_count = int(min_count)
        self.max_vocab = max_vocab
        visits = visits or VisitSpec()
        if visits.key and visits.key != schema.visit_key:
            raise ConfigError(f"data.visits.key {visits.key!r} is not the schema's visit key")
        self.window = HistoryWindow(max_len=max_len, max_span_days=max_span_days, visits=visits)
        """Which events of each row's history its sequence keeps (features/window.py)."""
        self.vocabs: dict[str, Vocabulary] = {}
        self.static_vocabs: dict[str, Vocabulary] = {}
        self.numeric: NumericStats | None = None
        self.static_numeric: NumericStats | None = None

    # -- the history window -------------------------------------------------------------------------------
    @property
    def max_len(self) -> int:
        return self.window.max_len

    @property
    def max_span_days(self) -> float | None:
        return self.window.max_span_days

    @property
    def visits(self) -> VisitSpec:
        return self.window.visits

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
        return self.fit_stats(self.stats(log, snaps, customers))

    def stats(self, log: EventLog, snaps: Snapshots, customers: pd.DataFrame | None = None) -> EncoderStats:
        """What fitting reads of `snaps`' histories: counts and moments, which add up over customer-disjoint
        parts (`EncoderStats.merge`), so a cluster fits part by part what one machine fits at once."""
        fit_events = history_mask(len(log), snaps.start, snaps.end)
        frame = log.frame
        vocab = {name: Vocabulary.counts(frame[name][fit_events]) for name in self.schema.categorical}
        steps = kept_steps(log, snaps, self.window)
        age = self._age(log, snaps, steps)
        if self.visits.enabled:  # visit values are fitted on the distinct visits the rows see
            _, distinct = np.unique(steps.first, return_index=True)
            event_cols = [c[distinct] for c in self._reduced(log, steps.first, steps.stop)]
            event_fields = [*self.schema.numeric, VISIT_LINES]
        else:  # event fields on distinct events
            event_cols = [frame[n].to_numpy(dtype=np.float64)[fit_events] for n in self.schema.numeric_names]
            event_fields = list(self.schema.numeric)
        static = self._static_frame(log, snaps, customers)
        return EncoderStats(
            vocab=vocab,
            events=NumericStats(event_fields).moments(event_cols),
            # time features on what the model sees (per row)
            time=NumericStats(list(TIME_NUMERIC)).moments([steps.gap_days, age]),
            static_vocab={name: Vocabulary.counts(static[name].dropna()) for name in self.static_cat_names},
            static=NumericStats(self._static_num_fields()).moments(
                [static[n].to_numpy(dtype=np.float64) for n in self.static_num_names]
            ),
        )

    def fit_stats(self, stats: EncoderStats) -> SequenceEncoder:
        """Fit from the (merged) `stats` of the training histories."""
        self.vocabs = {
            name: Vocabulary.from_counts(stats.vocab[name], self.min_count, self.max_vocab)
            for name in self.schema.categorical
        }
        event_mean, event_std = stats.events.mean_std()
        time_mean, time_std = stats.time.mean_std()
        self.numeric = NumericStats(
            self._step_numeric, np.concatenate([event_mean, time_mean]), np.concatenate([event_std, time_std])
        )
        self.static_vocabs = {
            name: Vocabulary.from_counts(stats.static_vocab[name], 1, self.max_vocab)
            for name in self.static_cat_names
        }
        self.static_numeric = NumericStats(self._static_num_fields()).fit_moments(stats.static)
        return self

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
        """Encode each snapshot row's steps (`kept_steps`): its last `max_len` events or visits before its
        cutoff.

        Works through the rows in chunks of about `chunk_events` steps, writing into preallocated
        outputs, so temporary memory stays bounded however large the log is. `alloc(name, shape, dtype)`
        provides the per-step outputs ("cat", "num"); the encoded-snapshot cache passes memory-mapped
        files, so encoding a log larger than RAM never holds its encoding in memory. The time-to-event
        targets are zero here (features/time_to_event.py fills them for training).
        """
        if not self.is_fitted:
            raise RuntimeError("SequenceEncoder.transform called before fit")
        steps = kept_steps(log, snaps, self.window)
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
            self.numeric.transform([*values, steps.gap_days[out], age[out]], out=num[out])
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
        rows = pd.RangeIndex(len(ids))
        out: dict[str, Any] = {}  # framed once: inserts into a frame cost more than a request's encoding
        present = customers.reindex(ids) if customers is not None else None
        for name in cs.categorical:
            out[name] = (
                present[name].to_numpy() if present is not None else np.full(len(ids), None, dtype=object)
            )
        for spec in cs.numeric:
            out[spec.name] = present[spec.name].to_numpy(dtype=np.float64) if present is not None else np.nan
        for name in cs.dates:
            if present is None:
                out[f"{name}_days"] = np.nan
                continue
            when = present[name].to_numpy(dtype="datetime64[ns]")
            days = (snaps.cutoff - when) / np.timedelta64(1, "D")
            out[f"{name}_days"] = np.clip(days, 0, None)  # a date after the cutoff is not yet known: 0 days
        return pd.DataFrame(out, index=rows)

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
            max_len=state["max_len"],
            min_count=state["min_count"],
            max_vocab=state["max_vocab"],
            visits=VisitSpec.from_config(state.get("visits")),
            max_span_days=state.get("max_span_days"),
        )
        enc.vocabs = {k: Vocabulary(list(v)) for k, v in state["vocabs"].items()}
        enc.static_vocabs = {k: Vocabulary(list(v)) for k, v in state["static_vocabs"].items()}
        enc.numeric = NumericStats.from_state(state["numeric"])
        enc.static_numeric = NumericStats.from_state(state["static_numeric"])
        return enc


def _zeros(alloc: Allocator, name: str, n: int, dtype: type) -> np.ndarray:
    out = alloc(name, (n,), np.dtype(dtype))
    out[:] = 0
    return out


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
