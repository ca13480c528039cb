"""Offers for a set of customers: their purchase histories as the ranker's padded tensors, ranked in
batches. Training's evaluation and scoring both come through here, with the ranker scripted or not.
`Offers` is what a model file carries: the scripted ranker, the catalogue and the settings it was fitted
with, and the score columns it fills."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from churnwatch.models.recommend.purchases import DAY_NS, ItemCatalogue, ItemColumns, Purchases


@dataclass(frozen=True)
class Histories:
    """Each customer's distinct purchased items, flat and grouped by customer (`offsets`), with how often
    and when last they bought each."""

    offsets: np.ndarray
    item: np.ndarray
    count: np.ndarray
    last: np.ndarray

    @classmethod
    def of(
        cls,
        purchases: Purchases,
        customers: pd.Index,
        *,
        as_of: pd.Timestamp | None = None,
        half_life_days: float | None = None,
    ) -> Histories:
        """The histories of `customers` (any order; a customer without purchases has an empty one) from
        `purchases` (already cut to the scoring date `as_of`), counts decayed as the recommender was fitted
        (`Purchases.weights`)."""
        row = customers.get_indexer(purchases.customers)[purchases.customer] if len(purchases.item) else []
        row = np.asarray(row, dtype=np.int64)
        keep = row >= 0
        row, item, time = row[keep], purchases.item[keep].astype(np.int64), purchases.time[keep]
        weight = purchases.weights(as_of, half_life_days)[keep]
        key = row * (int(item.max(initial=0)) + 1) + item
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        count = np.bincount(inverse, weights=weight, minlength=len(uniq)).astype(np.float32)
        last = np.full(len(uniq), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, inverse, time)
        rows = row[first]
        offsets = np.zeros(len(customers) + 1, dtype=np.int64)
        np.add.at(offsets, rows + 1, 1)
        return cls(np.cumsum(offsets), item[first], count, last)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def padded(
        self, rows: np.ndarray, as_of: pd.Timestamp, exclude_days: float | None
    ) -> tuple[torch.Tensor, ...]:
        """(items, counts, exclude) of `rows`, padded to the longest history among them."""
        lengths = self.offsets[rows + 1] - self.offsets[rows]
        width = max(int(lengths.max(initial=0)), 1)
        items = np.full((len(rows), width), -1, dtype=np.int64)
        counts = np.zeros((len(rows), width), dtype=np.float32)
        exclude = np.zeros((len(rows), width), dtype=bool)
        c = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # place in its row
        r = np.repeat(np.arange(len(rows)), lengths)
        pos = np.repeat(self.offsets[rows], lengths) + c
        items[r, c] = self.item[pos]
        counts[r, c] = self.count[pos]
        if exclude_days is not None:
            exclude[r, c] = self.last[pos] >= pd.Timestamp(as_of).value - exclude_days * DAY_NS
        return torch.from_numpy(items), torch.from_numpy(counts), torch.from_numpy(exclude)


def recommend(
    ranker: torch.nn.Module,
    histories: Histories,
    *,
    k: int,
    as_of: pd.Timestamp,
    exclude_days: float | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """(customers, k) catalogue indices, best first (-1 where fewer than k items may be offered). Batches of
    256 keep neighbour lists in cache: 0.36 s for the 19,101 demo customers with item-kNN (k=200), 0.85 s
    at 1,024; stored dense (ranker.py), the same 400 items take 0.07 s either way."""
    out = np.full((len(histories), k), -1, dtype=np.int64)
    # similar history lengths together: a batch is padded to its longest history, and a customer's cost in
    # the ranker grows with it (item-kNN: items × neighbours)
    order = np.argsort(-np.diff(histories.offsets), kind="stable")
    with torch.inference_mode():
        for start in range(0, len(histories), batch_size):
            rows = order[start : start + batch_size]
            top, score = ranker(*histories.padded(rows, as_of, exclude_days), k)
            out[rows, : top.shape[1]] = np.where(torch.isfinite(score).numpy(), top.numpy(), -1)
    return out


@dataclass(frozen=True)
class OfferSpec:
    """How a model file's offers were fitted and are given: the recommender, the item columns of the
    data contract, the catalogue, and the scoring settings (RecommenderConfig)."""

    recommender: str
    params: Mapping[str, Any]
    columns: ItemColumns
    catalogue: ItemCatalogue
    offers: int
    half_life_days: float | None
    exclude_days: float | None
    actions: tuple[str, ...]
    fitted_before: str
    """The cutoff whose earlier purchases the recommender learned from."""

    def state(self) -> dict[str, Any]:
        return {
            "recommender": self.recommender,
            "params": dict(self.params),
            "columns": {
                "item": self.columns.item,
                "name": self.columns.name,
                "category": self.columns.category,
            },
            "catalogue": self.catalogue.state(),
            "offers": self.offers,
            "half_life_days": self.half_life_days,
            "exclude_days": self.exclude_days,
            "actions": list(self.actions),
            "fitted_before": self.fitted_before,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> OfferSpec:
        return cls(
            recommender=str(state["recommender"]),
            params=dict(state["params"]),
            columns=ItemColumns(**state["columns"]),
            catalogue=ItemCatalogue.from_state(state["catalogue"]),
            offers=int(state["offers"]),
            half_life_days=state["half_life_days"],
            exclude_days=state["exclude_days"],
            actions=tuple(state["actions"]),
            fitted_before=str(state["fitted_before"]),
        )

    @property
    def score_columns(self) -> tuple[str, ...]:
        """offer_1, offer_1_name, ..., offer_<n>, offer_<n>_name, offer_category (of the first offer)."""
        names = [c for i in range(1, self.offers + 1) for c in (f"offer_{i}", f"offer_{i}_name")]
        return (*names, "offer_category")


@dataclass(frozen=True)
class Offers:
    """A fitted recommender as scoring uses it: `ranker` (an OfferRanker, scripted once loaded from a
    model file) and its `spec`."""

    spec: OfferSpec
    ranker: torch.nn.Module

    def frame(self, events: pd.DataFrame, customers: pd.Index, as_of: pd.Timestamp) -> pd.DataFrame:
        """The offer columns (`spec.score_columns`) of `customers`, in that order, from their purchases in
        `events` (a canonical event frame) before `as_of`; a customer without any gets the popular items."""
        spec = self.spec
        if spec.columns.item not in events:  # an input without items (the loader said so): popular items
            events = events.assign(**{spec.columns.item: None})
        purchases = Purchases.of(events, spec.columns.item, spec.catalogue).before(as_of)
        histories = Histories.of(purchases, customers, as_of=as_of, half_life_days=spec.half_life_days)
        top = recommend(self.ranker, histories, k=spec.offers, as_of=as_of, exclude_days=spec.exclude_days)
        out = {}
        cat = spec.catalogue
        for i in range(spec.offers):
            idx = top[:, i]
            known = idx >= 0
            out[f"offer_{i + 1}"] = np.where(known, cat.ids[np.maximum(idx, 0)], "").astype(object)
            out[f"offer_{i + 1}_name"] = np.where(known, cat.names[np.maximum(idx, 0)], "").astype(object)
        first = top[:, 0] if spec.offers else np.full(len(customers), -1)
        out["offer_category"] = np.where(first >= 0, cat.categories[np.maximum(first, 0)], "").astype(object)
        return pd.DataFrame(out, index=range(len(customers)))
