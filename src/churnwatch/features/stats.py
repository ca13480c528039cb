"""What the sequence encoder fits on training events: category vocabularies and numeric statistics.

Both are fitted once on the training snapshots' histories and carried as plain JSON (inside the encoder's
state, and so inside an exported model); aggregates and the drift monitor reuse them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from churnwatch.data.schema import OOV_TOKEN, PAD_TOKEN, NumericField

log = logging.getLogger(__name__)
PAD, OOV = 0, 1
Z_LIMIT = 1e4
"""Standardised inputs are clipped to ±Z_LIMIT: far beyond any real measurement, far within float32 and
bf16, and small enough that weights times inputs cannot overflow a network."""


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """A log scale for heavy-tailed values of either sign (refunds are negative amounts): 0 stays 0."""
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class Vocabulary:
    """Category → id, with 0 = padding and 1 = out-of-vocabulary (unseen or too rare)."""

    tokens: list[str]

    @classmethod
    def fit(cls, values: pd.Series, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        return cls.from_counts(cls.counts(values), min_count, max_size)

    @staticmethod
    def counts(values: pd.Series) -> pd.Series:
        """Occurrences per token (as text): what a vocabulary is fitted from. Counts of disjoint parts add
        up (`merge_counts`) to the counts of their union."""
        cat = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
        counts = cat.value_counts(sort=False)  # per category: cheap even for 10M events
        return counts.groupby(counts.index.astype(str)).sum()

    @classmethod
    def from_counts(cls, counts: pd.Series, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        counts = counts[counts >= min_count]
        # Most frequent first, ties broken by the token itself, so the vocabulary is deterministic.
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - 2)]
        return cls([PAD_TOKEN, OOV_TOKEN, *(k for k, _ in ranked)])

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def table(self, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(ids per category of `values`, category codes): ids = table[codes]; unseen and null → OOV."""
        cat = (values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")).array
        return self._ids(cat.categories, np.asarray(cat.codes))

    def lookup(self, values: pd.Series) -> np.ndarray:
        """int32 ids; unseen values (and nulls) map to OOV."""
        if isinstance(values.dtype, pd.CategoricalDtype):
            table, codes = self.table(values)
        else:  # the distinct values as they come: no Categorical to build (per request, it would dominate)
            value_codes, distinct = pd.factorize(values)
            table, codes = self._ids(distinct, value_codes)
        return table[codes]

    def _ids(self, distinct: pd.Index, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids per distinct value, then OOV for nulls; codes with -1 pointing at that OOV)."""
        index = self._index
        table = np.array([index.get(str(c), OOV) for c in distinct] + [OOV], dtype=np.int32)
        return table, np.where(codes < 0, len(table) - 1, codes)


def merge_counts(parts: Sequence[pd.Series]) -> pd.Series:
    """Token counts of customer-disjoint parts added up: the counts `Vocabulary.counts` gives their union."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.Series([], dtype=np.int64)
    return pd.concat(parts).groupby(level=0).sum()


@dataclass
class Moments:
    """Per column: how many values are not NaN, their mean and their sum of squared deviations, in units of
    `scale` (the column's largest magnitude), so squares of values up to 1e300 (what validation lets
    through) never overflow float64.

    Moments of disjoint parts merge into the moments of their union (Chan, Golub & LeVeque, "Updating
    formulae and a pairwise algorithm for computing sample variances", 1979): statistics fitted part by
    part on a cluster equal one pass over all rows up to floating-point rounding.
    """

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, raw: np.ndarray) -> Moments:
        """Moments of the columns of `raw` (rows, columns), NaN ignored."""
        raw = np.asarray(raw, dtype=np.float64)
        with np.errstate(all="ignore"):
            scale = np.fmax.reduce(np.abs(raw), axis=0, initial=0.0)  # ignores NaN
            scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
            x = raw / scale
            seen = ~np.isnan(x)
            n = seen.sum(axis=0).astype(np.float64)
            mean = np.where(seen, x, 0.0).sum(axis=0) / np.maximum(n, 1)
            m2 = np.where(seen, (x - mean) ** 2, 0.0).sum(axis=0)
        return cls(n, mean, m2, scale)

    def merge(self, other: Moments) -> Moments:
        scale = np.maximum(self.scale, other.scale)
        a, b = self.scale / scale, other.scale / scale
        n = self.n + other.n
        mean_a, mean_b = self.mean * a, other.mean * b
        delta = mean_b - mean_a
        share = np.divide(other.n, n, out=np.zeros_like(n), where=n > 0)
        m2 = self.m2 * a * a + other.m2 * b * b + delta * delta * self.n * share
        return Moments(n, mean_a + delta * share, m2, scale)

    @staticmethod
    def merged(parts: Sequence[Moments]) -> Moments:
        out = parts[0]
        for part in parts[1:]:
            out = out.merge(part)
        return out

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, population std) per column: mean 0 where no value was seen, std 1 where there is no
        usable spread."""
        with np.errstate(all="ignore"):
            mean = np.where(self.n > 0, self.mean * self.scale, 0.0)
            std = np.sqrt(self.m2 / self.n) * self.scale
        return np.nan_to_num(mean), np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)


def _filled(spec: NumericField, column: np.ndarray) -> np.ndarray:
    """A numeric column as float64, missing values filled and log-scaled as `spec` says."""
    x = np.asarray(column, dtype=np.float64)
    if spec.fill is not None:
        x = np.where(np.isnan(x), spec.fill, x)
    return signed_log1p(x) if spec.transform == "log1p" else x


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
            out[:, j] = _filled(spec, col)
        return out

    def fit(self, columns: Sequence[np.ndarray]) -> NumericStats:
        return self.fit_moments(self.moments(columns))

    def moments(self, columns: Sequence[np.ndarray]) -> Moments:
        """What fitting needs of `columns` (filled and transformed): moments that merge across parts."""
        return Moments.of(self._raw(columns, n_rows=0))

    def fit_moments(self, moments: Moments) -> NumericStats:
        self.mean, self.std = moments.mean_std()
        return self

    def transform(
        self, columns: Sequence[np.ndarray], n_rows: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """float32 (n, n_fields); any value still missing becomes 0 (the training mean), never NaN, and
        values beyond ±Z_LIMIT standard deviations are clipped there (counted in a warning), so a raw
        value that passes validation never becomes an infinite network input.

        `n_rows` gives the row count when there are no fields (columns is empty). `out`: a float32
        (n, n_fields) array to write into (e.g. a slice of the encoder's memory-mapped array). A column at a
        time, so no (n, n_fields) float64 intermediates: a third of the time of whole-matrix arithmetic."""
        n_rows = len(columns[0]) if columns else (n_rows or 0)
        if out is None:
            out = np.empty((n_rows, len(self.fields)), dtype=np.float32)
        clipped = []
        for j, (spec, col) in enumerate(zip(self.fields, columns, strict=True)):
            with np.errstate(over="ignore", invalid="ignore"):
                z = _filled(spec, col) - self.mean[j]  # a new array: the caller's column stays as it is
                z /= self.std[j]
            np.copyto(z, 0.0, where=np.isnan(z))
            beyond = int(np.count_nonzero(np.abs(z) > Z_LIMIT))
            if beyond:
                clipped.append(f"{beyond} value(s) of {spec.name}")
                np.clip(z, -Z_LIMIT, Z_LIMIT, out=z)
            out[:, j] = z
        if clipped:
            log.warning("clipped to ±%g standard deviations: %s", Z_LIMIT, ", ".join(clipped))
        return out

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
