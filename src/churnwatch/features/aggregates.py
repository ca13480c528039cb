"""Per-customer aggregate features for the tabular baselines, from the same history the sequence sees.

RFM, counts and spend in windows, MA/EMA trend ratios, inter-purchase gaps, category mix and its shift,
counts of chosen event values (complaints, contacts, ...), summaries of numeric fields (satisfaction, ...)
and static attributes. Every value is computed from events strictly before the row's cutoff, and every
"no data" case has an explicit, documented fill: no NaN leaves this module.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from churnwatch.data.expressions import check_expression, query_mask
from churnwatch.data.schema import MISSING, OTHER_TOKEN, PAD_TOKEN
from churnwatch.data.snapshots import DAY_NS, EventLog, Snapshots
from churnwatch.errors import ConfigError
from churnwatch.features.stats import Moments, Vocabulary, merge_counts
from churnwatch.features.stats import signed_log1p as _signed_log1p
from churnwatch.features.window import FlatHistories, history_mask


@dataclass(frozen=True)
class AggregateSpec:
    """Which event fields mean money, purchases, mix and the counts worth keeping."""

    windows: tuple[int, ...] = (7, 30, 90, 180)
    amount: str | None = None
    purchase_when: str | None = None
    """Which events are purchases, a condition (docs/EXPRESSIONS.md), e.g. "event_type == 'purchase'";
    None: every event."""
    count_values: tuple[tuple[str, str], ...] = ()
    """(field, value) pairs to count, given in config as "field:value" strings."""
    mix_field: str | None = None
    mix_top_k: int = 8
    numeric_summaries: tuple[str, ...] = ()
    ema_half_lives: tuple[float, float] = (14.0, 90.0)
    recent_days: int = 90
    """'Recent' for the mix shift, amount trend and recent numeric means."""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> AggregateSpec:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"data.aggregates: unknown keys {sorted(unknown)}")
        conv = {
            "windows": lambda v: tuple(int(x) for x in v),
            "purchase_when": lambda v: str(v) if v else None,
            "count_values": lambda v: tuple(_field_value(x) for x in (v or ())),
            "numeric_summaries": lambda v: tuple(map(str, v or ())),
            "ema_half_lives": lambda v: (float(v[0]), float(v[1])),
        }
        spec = cls(**{k: conv.get(k, lambda v: v)(v) for k, v in cfg.items()})
        check_expression(spec.purchase_when, "data.aggregates.purchase_when")  # before any data is read
        return spec


@dataclass
class AggregateTable:
    """A float32 feature matrix with names; `categorical` names the columns holding category ids."""

    values: np.ndarray
    names: list[str]
    categorical: list[str]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.values, columns=self.names)


@dataclass
class FeaturizerCounts:
    """Round one of fitting the aggregates (`AggregateFeaturizer.counts`): token counts of the mix field and
    the static categoricals, and (sum, n) of the purchase flags and amounts that set the trend smoothing.
    Parts' counts merge into their union's."""

    mix: pd.Series | None
    static: dict[str, pd.Series]
    trend: dict[str, np.ndarray]

    @staticmethod
    def merged(parts: Sequence[FeaturizerCounts]) -> FeaturizerCounts:
        return FeaturizerCounts(
            merge_counts([p.mix for p in parts]) if parts[0].mix is not None else None,
            {k: merge_counts([p.static[k] for p in parts]) for k in parts[0].static},
            {k: np.sum([p.trend[k] for p in parts], axis=0) for k in parts[0].trend},
        )


class AggregateFeaturizer:
    """fit on training snapshots (mix categories, static vocabularies, fills), transform any snapshots."""

    def __init__(
        self,
        spec: AggregateSpec,
        static_categorical: Sequence[str] = (),
        static_numeric: Sequence[str] = (),
        static_dates: Sequence[str] = (),
    ):
        self.spec = spec
        self.static_categorical = list(static_categorical)
        self.static_numeric = list(static_numeric)
        self.static_dates = list(static_dates)
        self.mix_categories: list[str] = []
        self.static_vocabs: dict[str, Vocabulary] = {}
        self.fill: dict[str, float] = {}
        self.trend_smoothing: dict[str, float] = {}
        self.scale_mean = np.zeros(0)
        self.scale_std = np.ones(0)

    def fit(
        self, log: EventLog, snaps: Snapshots, customers: pd.DataFrame | None = None
    ) -> AggregateFeaturizer:
        """Fit on the training rows `snaps`, in the three rounds a cluster runs part by part: vocabularies
        and trend smoothing (`counts`), then the fills (`fill_moments`), then the scale (`scale_moments`)."""
        self.fit_counts(self.counts(log, snaps, customers))
        table, fill = self.fill_moments(log, snaps, customers)
        self.fit_fill(table.names, fill)
        self.fit_scale(self.scale_moments(self._apply_fill(table)))
        return self

    def counts(
        self, log: EventLog, snaps: Snapshots, customers: pd.DataFrame | None = None
    ) -> FeaturizerCounts:
        """Round one: token counts of the mix field (purchases in the histories) and of the static
        categoricals (per row), and the sums that set the trend ratios' smoothing."""
        self._check(log)
        mix = None
        if self.spec.mix_field:
            seen = history_mask(len(log), snaps.start, snaps.end)
            values = log.frame[self.spec.mix_field][seen & self._purchase_mask(log)]
            mix = Vocabulary.counts(values[values.astype(str) != MISSING])
        rows = customers.reindex(snaps.customer_ids(log)) if customers is not None else None
        static = {
            name: Vocabulary.counts(rows[name].dropna() if rows is not None else pd.Series([], dtype=str))
            for name in self.static_categorical
        }
        hist = FlatHistories.of(log, snaps)
        _, is_p, amount = self._purchases(log, hist)
        trend = {"freq": np.array([is_p.sum(), len(is_p)], dtype=np.float64)}
        trend["spend"] = np.array([amount.sum(), len(amount)], dtype=np.float64)
        return FeaturizerCounts(mix, static, trend)

    def fit_counts(self, counts: FeaturizerCounts) -> None:
        if self.spec.mix_field:
            vocab = Vocabulary.from_counts(counts.mix, 1, self.spec.mix_top_k + 2)
            self.mix_categories = vocab.tokens[2:]
        self.static_vocabs = {
            name: Vocabulary.from_counts(counts.static[name]) for name in self.static_categorical
        }
        # the trend ratios' smoothing constant: fitted once on training rows, so a row's value never depends
        # on the other rows transformed with it (scoring chunks, batches)
        self.trend_smoothing = {
            what: float(total / n) if n else 1.0 for what, (total, n) in counts.trend.items()
        }

    def fill_moments(
        self, log: EventLog, snaps: Snapshots, customers: pd.DataFrame | None = None
    ) -> tuple[AggregateTable, Moments]:
        """Round two (after `fit_counts`): the rows' features, unfilled, and their moments: each
        'no observation' fill is the training mean of the observed values, so the table never holds NaN."""
        table = self._compute(log, snaps, customers)
        return table, Moments.of(np.where(np.isfinite(table.values), table.values, np.nan))

    def fit_fill(self, names: Sequence[str], moments: Moments) -> None:
        self.fill = {n: float(m) for n, m in zip(names, moments.mean_std()[0], strict=True)}

    @staticmethod
    def scale_moments(filled: AggregateTable) -> Moments:
        """Round three: moments of the filled training features on the network's (signed log) scale."""
        return Moments.of(_signed_log1p(filled.values.astype(np.float64)))

    def fit_scale(self, moments: Moments) -> None:
        self.scale_mean, self.scale_std = moments.mean_std()

    def state(self) -> dict[str, Any]:
        """JSON-able fitted state (carried by an exported model that fuses aggregates)."""
        return {
            "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self.spec).items()},
            "static_categorical": self.static_categorical,
            "static_numeric": self.static_numeric,
            "static_dates": self.static_dates,
            "mix_categories": self.mix_categories,
            "static_vocabs": {k: v.tokens for k, v in self.static_vocabs.items()},
            "fill": self.fill,
            "trend_smoothing": self.trend_smoothing,
            "scale_mean": self.scale_mean.tolist(),
            "scale_std": self.scale_std.tolist(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AggregateFeaturizer:
        spec = dict(state["spec"])
        spec["count_values"] = [":".join(pair) for pair in spec["count_values"]]
        feat = cls(
            AggregateSpec.from_config(spec),
            state["static_categorical"],
            state["static_numeric"],
            state["static_dates"],
        )
        feat.mix_categories = list(state["mix_categories"])
        feat.static_vocabs = {k: Vocabulary(list(v)) for k, v in state["static_vocabs"].items()}
        feat.fill = dict(state["fill"])
        feat.trend_smoothing = dict(state["trend_smoothing"])
        feat.scale_mean = np.asarray(state["scale_mean"], dtype=np.float64)
        feat.scale_std = np.asarray(state["scale_std"], dtype=np.float64)
        return feat

    def scale(self, table: AggregateTable) -> np.ndarray:
        """Signed log1p, then standardise with training statistics: the form a network takes."""
        return ((_signed_log1p(table.values.astype(np.float64)) - self.scale_mean) / self.scale_std).astype(
            np.float32
        )

    def transform(
        self,
        log: EventLog,
        snaps: Snapshots,
        customers: pd.DataFrame | None = None,
        columns: Collection[str] | None = None,
    ) -> AggregateTable:
        """The aggregate table of `snaps`; with `columns`, only those (in the table's order), and only the
        work they need: scoring without drivers reads a few (value, segments) of the ~70."""
        return self._apply_fill(self._compute(log, snaps, customers, columns))

    def _apply_fill(self, table: AggregateTable) -> AggregateTable:
        for j, name in enumerate(table.names):
            col = table.values[:, j]
            col[~np.isfinite(col)] = self.fill.get(name, 0.0)
        return table

    def fit_transform(
        self, log: EventLog, snaps: Snapshots, customers: pd.DataFrame | None = None
    ) -> AggregateTable:
        return self.fit(log, snaps, customers).transform(log, snaps, customers)

    # ----------------------------------------------------------------------------------------------------
    def _check(self, log: EventLog) -> None:
        cols = set(log.frame.columns)
        wanted = [
            self.spec.amount,
            self.spec.mix_field,
            *self.spec.numeric_summaries,
            *(f for f, _ in self.spec.count_values),
        ]
        for name in wanted:
            if name is not None and name not in cols:
                raise ConfigError(
                    f"data.aggregates names {name!r}, which is not an event field (fields: {sorted(cols)})"
                )

    def _purchase_mask(self, log: EventLog) -> np.ndarray:
        return query_mask(log.frame, self.spec.purchase_when, "data.aggregates.purchase_when")

    def _purchases(self, log: EventLog, hist: FlatHistories) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(purchase mask over the log, per history event: is it a purchase, and its amount; a purchase
        without an amount field counts 1)."""
        purchase_all = self._purchase_mask(log)
        is_p = purchase_all[hist.events]
        if not self.spec.amount:
            return purchase_all, is_p, is_p.astype(np.float64)
        amount = np.nan_to_num(log.frame[self.spec.amount].to_numpy(dtype=np.float64)[hist.events]) * is_p
        return purchase_all, is_p, amount

    def _compute(
        self,
        log: EventLog,
        snaps: Snapshots,
        customers: pd.DataFrame | None,
        columns: Collection[str] | None = None,
    ) -> AggregateTable:
        self._check(log)
        spec = self.spec
        hist = FlatHistories.of(log, snaps)
        n, lengths, rows, age = hist.n_rows, hist.lengths, hist.events, hist.age
        total = hist.total
        cols: dict[str, np.ndarray] = {}

        asked = None if columns is None else set(columns)

        def want(*names: str) -> bool:
            """Whether any of `names` is asked for (each group below computes only when one is)."""
            return asked is None or any(name in asked for name in names)

        purchase_all, is_p, amount = self._purchases(log, hist)
        first_age = age[np.concatenate([[0], np.cumsum(lengths)[:-1]])] if n else np.zeros(0)
        last_age = age[np.cumsum(lengths) - 1] if n else np.zeros(0)

        # Recency / frequency / monetary (on purchases) and activity.
        n_p = total(is_p.astype(np.float64))
        # recency_days: also the numerator of recency_over_mean_gap
        gaps = want("n_purchase_occasions", "recency_over_mean_gap", *GAP_COLUMNS)
        if want("recency_days") or gaps:
            recency = hist.reduce(np.minimum, np.where(is_p, age, np.inf), np.inf)
            cols["recency_days"] = np.where(np.isfinite(recency), recency, first_age)  # never bought: tenure
        if want("first_purchase_days"):
            first_p = hist.reduce(np.maximum, np.where(is_p, age, -np.inf), -np.inf)
            # Days since the first purchase (BTYD's T; never bought: tenure, like recency_days).
            cols["first_purchase_days"] = np.where(np.isfinite(first_p), first_p, first_age)
        cols["n_purchases"] = n_p
        if want("spend_total", "spend_mean"):
            cols["spend_total"] = total(amount)
            cols["spend_mean"] = cols["spend_total"] / np.maximum(n_p, 1)
        cols["tenure_days"] = first_age
        cols["n_events"] = lengths.astype(np.float64)
        cols["days_since_last_event"] = last_age
        cols["purchases_per_30d"] = n_p / np.maximum(first_age, 1.0) * 30
        for w in spec.windows:
            in_w = age < w
            if want(f"n_purchases_{w}d"):
                cols[f"n_purchases_{w}d"] = total((is_p & in_w).astype(np.float64))
            if want(f"spend_{w}d"):
                cols[f"spend_{w}d"] = total(amount * in_w)
            if want(f"n_events_{w}d"):
                cols[f"n_events_{w}d"] = total(in_w.astype(np.float64))

        # Moving-average trend ratios (smoothed, 1.0 = steady) and exponentially weighted rates.
        def counts_in(w: float, weights: np.ndarray) -> np.ndarray:
            return total(weights * (age < w))

        for short, long in ((30, 90), (90, 180)):
            for what, weights in (("freq", is_p), ("spend", amount)):
                if not want(f"{what}_trend_{short}_{long}"):
                    continue
                weights = np.asarray(weights, dtype=np.float64)
                s, lg = counts_in(short, weights), counts_in(long, weights)
                scale = self.trend_smoothing[what]
                cols[f"{what}_trend_{short}_{long}"] = (s + scale) / (lg * short / long + scale)
        hl_short, hl_long = spec.ema_half_lives
        if want(f"ema_rate_{hl_short:g}d", f"ema_rate_{hl_long:g}d", "ema_trend"):
            ema_s = total(is_p * np.exp2(-age / hl_short)) * np.log(2) / hl_short
            ema_l = total(is_p * np.exp2(-age / hl_long)) * np.log(2) / hl_long
            cols[f"ema_rate_{hl_short:g}d"] = ema_s
            cols[f"ema_rate_{hl_long:g}d"] = ema_l
            cols["ema_trend"] = (ema_s + 1e-3) / (ema_l + 1e-3)
        if gaps:
            self._gaps(log, hist, purchase_all, is_p, first_age, cols)
        recent = age < spec.recent_days
        if want("amount_trend"):
            n_recent = np.maximum(total((is_p & recent).astype(np.float64)), 1)
            n_before = np.maximum(total((is_p & ~recent).astype(np.float64)), 1)
            amt_recent, amt_before = total(amount * recent) / n_recent, total(amount * ~recent) / n_before
            cols["amount_trend"] = (amt_recent + 1.0) / (amt_before + 1.0)

        if spec.mix_field and want(*self._mix_names()):
            self._mix(log, hist, is_p, recent, cols)
        for col, value in spec.count_values:
            name = f"n_{col}_{value}"
            if not want(name, f"{name}_30d", f"{name}_{spec.recent_days}d", f"days_since_{col}_{value}"):
                continue
            one = _isin(log.frame[col], (value,))[rows].astype(np.float64)
            cols[name] = total(one)
            for w in (30, spec.recent_days):
                cols[f"{name}_{w}d"] = total(one * (age < w))
            latest = hist.reduce(np.minimum, np.where(one > 0, age, np.inf), np.inf)
            cols[f"days_since_{col}_{value}"] = np.where(np.isfinite(latest), latest, first_age + 1)
        for name in spec.numeric_summaries:
            if want(*(f"{name}_{stat}" for stat in SUMMARY_STATS)):
                self._summaries(log, name, hist, recent, cols)
        categorical = self._static(log, snaps, customers, cols, want)
        names = [k for k in cols if want(k)]
        return AggregateTable(_stack_float32([cols[k] for k in names], n), names, categorical)

    def _gaps(
        self,
        log: EventLog,
        hist: FlatHistories,
        purchase_all: np.ndarray,
        is_p: np.ndarray,
        first_age: np.ndarray,
        cols: dict[str, np.ndarray],
    ) -> None:
        """Gaps between purchase occasions (lines at the same moment are one occasion). Histories are
        prefixes of the customer's events, so each occasion's previous one is always in range."""
        rows, n, total = hist.events, hist.n_rows, hist.total
        p_gap = _previous_gap_days(log, purchase_all)[rows]
        cols["n_purchase_occasions"] = total((is_p & (p_gap != 0)).astype(np.float64))
        has_gap = is_p & np.isfinite(p_gap) & (p_gap != 0)
        g = np.where(has_gap, p_gap, 0.0)
        n_gap = total(has_gap.astype(np.float64))
        mean_gap = total(g) / np.maximum(n_gap, 1)
        var_gap = total(g * g) / np.maximum(n_gap, 1) - mean_gap**2
        max_gap = hist.reduce(np.maximum, g, 0.0)
        last_gap = np.zeros(n)
        last_idx = hist.reduce(np.maximum, np.where(has_gap, np.arange(len(rows)), -1), -1)
        last_gap[last_idx >= 0] = g[last_idx[last_idx >= 0]]
        no_gap = n_gap == 0  # fewer than two purchases: the usual gap is the whole tenure
        cols["gap_mean_days"] = np.where(no_gap, first_age, mean_gap)
        cols["gap_std_days"] = np.sqrt(np.clip(var_gap, 0, None))
        cols["gap_max_days"] = np.where(no_gap, first_age, max_gap)
        cols["gap_last_days"] = np.where(no_gap, first_age, last_gap)
        cols["recency_over_mean_gap"] = cols["recency_days"] / np.maximum(cols["gap_mean_days"], 1.0)

    def _mix_names(self) -> list[str]:
        """The columns `_mix` writes."""
        field_name = self.spec.mix_field
        names = [f"mix_shift_{field_name}"]
        for cat in [*self.mix_categories, "other"]:
            names += [f"mix_{field_name}_{cat}", f"mix_{field_name}_{cat}_recent"]
        return names

    def _mix(
        self,
        log: EventLog,
        hist: FlatHistories,
        is_p: np.ndarray,
        recent: np.ndarray,
        cols: dict[str, np.ndarray],
    ) -> None:
        """Purchase shares per mix category (top k, then other), all and recent, and the recent shift."""
        rows, seg, n = hist.events, hist.row, hist.n_rows
        k = len(self.mix_categories)
        vocabulary = Vocabulary([PAD_TOKEN, OTHER_TOKEN, *self.mix_categories])
        lookup = vocabulary.lookup(log.frame[self.spec.mix_field])
        code = lookup[rows] - 2  # -1 = other (OOV), 0..k-1 = top categories
        valid = is_p & ~_isin(log.frame[self.spec.mix_field], (MISSING,))[rows]
        bins = np.where(code < 0, k, code)  # 'other' is bucket k
        counts = {}
        for part, sel in (("all", valid), ("recent", valid & recent), ("before", valid & ~recent)):
            flat = np.bincount(seg[sel] * (k + 1) + bins[sel], minlength=n * (k + 1)).reshape(n, k + 1)
            counts[part] = flat / np.maximum(flat.sum(axis=1, keepdims=True), 1)
            counts[part + "_n"] = flat.sum(axis=1)
        field_name = self.spec.mix_field
        for j, cat in enumerate([*self.mix_categories, "other"]):
            cols[f"mix_{field_name}_{cat}"] = counts["all"][:, j]
            cols[f"mix_{field_name}_{cat}_recent"] = counts["recent"][:, j]
        both = (counts["recent_n"] > 0) & (counts["before_n"] > 0)
        shift = 0.5 * np.abs(counts["recent"] - counts["before"]).sum(axis=1)
        cols[f"mix_shift_{field_name}"] = np.where(both, shift, 0.0)

    def _summaries(
        self, log: EventLog, name: str, hist: FlatHistories, recent: np.ndarray, cols: dict[str, np.ndarray]
    ) -> None:
        """Count, mean (all and recent), min, last and trend of numeric field `name` (NaN: never observed)."""
        rows, n, total = hist.events, hist.n_rows, hist.total
        raw = log.frame[name].to_numpy(dtype=np.float64)[rows]
        seen = np.isfinite(raw)
        x = np.where(seen, raw, 0.0)
        count = total(seen.astype(np.float64))
        recent_count = total((seen & recent).astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            cols[f"{name}_count"] = count
            cols[f"{name}_mean"] = np.where(count > 0, total(x) / count, np.nan)
            cols[f"{name}_mean_recent"] = np.where(recent_count > 0, total(x * recent) / recent_count, np.nan)
        low = hist.reduce(np.minimum, np.where(seen, raw, np.inf), np.inf)
        cols[f"{name}_min"] = np.where(np.isfinite(low), low, np.nan)
        last_idx = hist.reduce(np.maximum, np.where(seen, np.arange(len(rows)), -1), -1)
        last = np.full(n, np.nan)
        last[last_idx >= 0] = raw[last_idx[last_idx >= 0]]
        cols[f"{name}_last"] = last
        cols[f"{name}_trend"] = cols[f"{name}_mean_recent"] - cols[f"{name}_mean"]

    def _static(
        self,
        log: EventLog,
        snaps: Snapshots,
        customers: pd.DataFrame | None,
        cols: dict[str, np.ndarray],
        want: Callable[[str], bool],
    ) -> list[str]:
        """The static attributes' columns that `want` asks for; the names of the categorical ones."""
        numeric = [name for name in self.static_numeric if want(f"static_{name}")]
        dates = [name for name in self.static_dates if want(f"static_{name}_days")]
        categories = [name for name in self.static_categorical if want(f"static_{name}")]
        if not (numeric or dates or categories):
            return []
        rows = customers.reindex(snaps.customer_ids(log)) if customers is not None else None
        n = len(snaps)
        for name in numeric:
            cols[f"static_{name}"] = (
                rows[name].to_numpy(dtype=np.float64) if rows is not None else np.full(n, np.nan)
            )
        for name in dates:
            when = rows[name].to_numpy(dtype="datetime64[ns]") if rows is not None else None
            days = (snaps.cutoff - when) / np.timedelta64(1, "D") if when is not None else np.full(n, np.nan)
            cols[f"static_{name}_days"] = np.clip(days, 0, None)
        categorical = []
        for name in categories:
            vocab = self.static_vocabs[name]
            ids = vocab.lookup(rows[name]) if rows is not None else np.ones(n, dtype=np.int32)
            cols[f"static_{name}"] = ids.astype(np.float64)
            categorical.append(f"static_{name}")
        return categorical


def _field_value(item: str) -> tuple[str, str]:
    name, sep, value = str(item).partition(":")
    if not sep or not name.strip() or not value.strip():
        raise ConfigError(f"data.aggregates.count_values: expected 'field:value', got {item!r}")
    return name.strip(), value.strip()


def _isin(values: pd.Series, wanted: Sequence[str]) -> np.ndarray:
    """Vectorised membership on a (categorical) column, comparing as strings."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories, codes = values.array.categories, np.asarray(values.array.codes)
        if categories.inferred_type == "string":  # text already (canonical frames): no conversion
            hit = np.fromiter((c in wanted for c in categories), dtype=bool, count=len(categories))
        else:
            hit = np.isin(categories.astype(str), list(wanted))
        return (
            np.where(codes >= 0, hit[np.maximum(codes, 0)], False)
            if len(hit)
            else np.zeros(len(values), bool)
        )
    return values.astype(str).isin(list(wanted)).to_numpy()


def _previous_gap_days(log: EventLog, mask: np.ndarray) -> np.ndarray:
    """Per masked event: days since the customer's previous masked event at an earlier moment.

    NaN for the first occasion, 0 for further events at the same moment (same basket), so gap
    statistics describe the time between occasions, not between lines of one invoice.
    """
    out = np.full(len(log), np.nan)
    idx = np.flatnonzero(mask)
    if len(idx) > 1:
        cust, ts = log.customer[idx], log.ts[idx]
        new_occasion = np.r_[True, (cust[1:] != cust[:-1]) | (ts[1:] != ts[:-1])]
        occ = idx[new_occasion]
        same = log.customer[occ[1:]] == log.customer[occ[:-1]]
        gaps = np.full(len(occ), np.nan)
        gaps[1:] = np.where(same, (log.ts[occ[1:]] - log.ts[occ[:-1]]) / DAY_NS, np.nan)
        out[occ] = gaps
        out[idx[~new_occasion]] = 0.0
    return out


GAP_COLUMNS = ("gap_mean_days", "gap_std_days", "gap_max_days", "gap_last_days")
SUMMARY_STATS = ("count", "mean", "mean_recent", "min", "last", "trend")
"""The columns `_summaries` writes per numeric field, `<field>_<stat>`."""
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _stack_float32(columns: list[np.ndarray], n: int) -> np.ndarray:
    """The columns side by side as float32, written straight into the table (stacking float64 first and
    converting was a quarter of the aggregates' time). Finite values saturate at the float32 range instead
    of overflowing to inf (sums of amounts near validation's 1e300 bound would), so they read as "very
    large", not as "no observation" (NaN and inf keep that meaning: the fitted fill replaces them)."""
    out = np.empty((n, len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        with np.errstate(over="ignore"):
            out[:, j] = column
        overflowed = np.isinf(out[:, j])
        if overflowed.any():
            wide = np.asarray(column, dtype=np.float64)
            out[:, j] = np.where(overflowed & np.isfinite(wide), np.sign(wide) * FLOAT32_MAX, out[:, j])
    return out
