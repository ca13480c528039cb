"""Judging recommenders the way they are used: fit on the purchases before a cutoff, offer `k` items to
every customer with a purchase before it, and compare with what they bought in the horizon after it.

The catalogue, the popularity and every fitted parameter come from purchases before the cutoff only; the
horizon's purchases are read only to score the offers. Items first sold after the cutoff cannot be offered,
so the relevant items are the catalogue's (a customer who bought only new items is not counted).

Two views per group of customers: every purchase in the horizon counts (`<group>`), and discovery
(`<group>/new`): offers leave out everything the customer already bought and only items new to them
count, where buy-again can find nothing and a collaborative recommender must show what it learned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from churnwatch.data.schema import TIMESTAMP
from churnwatch.models.recommend.base import Recommender
from churnwatch.models.recommend.evaluation import ranking_metrics
from churnwatch.models.recommend.offers import Histories, recommend
from churnwatch.models.recommend.purchases import ItemCatalogue, ItemColumns, Purchases


@dataclass(frozen=True)
class Fitted:
    """A recommender fitted before a cutoff, with the catalogue it offers from."""

    recommender: Recommender
    catalogue: ItemCatalogue
    purchases: Purchases
    """Every purchase of catalogue items (before and after the cutoff: callers cut it)."""


def fit_before(
    frame: pd.DataFrame,
    columns: ItemColumns,
    make: Callable[[], Recommender],
    cutoff: pd.Timestamp,
    *,
    min_count: int = 1,
    half_life_days: float | None = None,
) -> Fitted:
    """`make()` fitted on the purchases before `cutoff` in `frame` (a canonical event frame)."""
    before = frame[frame[TIMESTAMP] < cutoff]
    catalogue = ItemCatalogue.of(
        before, columns.item, name=columns.name, category=columns.category, min_count=min_count
    )
    purchases = Purchases.of(frame, columns.item, catalogue)
    history = purchases.before(cutoff)
    counts = history.matrix(
        len(catalogue), rows=history.buyers(), as_of=cutoff, half_life_days=half_life_days
    )
    model = make().fit(counts)
    return Fitted(model, catalogue, purchases)


def backtest(
    frame: pd.DataFrame,
    columns: ItemColumns,
    recommenders: Mapping[str, Callable[[], Recommender]],
    cutoff: pd.Timestamp,
    *,
    horizon_days: int,
    k: int = 10,
    min_count: int = 1,
    exclude_days: float | None = None,
    half_life_days: float | None = None,
    groups: Mapping[str, pd.Index] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """{recommender: {view: metrics}} at `cutoff`: each of `recommenders` fitted before it (`fit_before`)
    and judged on its horizon (`evaluate`)."""
    cutoff = pd.Timestamp(cutoff)
    return {
        name: evaluate(
            fit_before(frame, columns, make, cutoff, min_count=min_count, half_life_days=half_life_days),
            cutoff,
            horizon_days=horizon_days,
            k=k,
            exclude_days=exclude_days,
            half_life_days=half_life_days,
            groups=groups,
        )
        for name, make in recommenders.items()
    }


def evaluate(
    fitted: Fitted,
    cutoff: pd.Timestamp,
    *,
    horizon_days: int,
    k: int = 10,
    exclude_days: float | None = None,
    half_life_days: float | None = None,
    groups: Mapping[str, pd.Index] | None = None,
) -> dict[str, dict[str, float]]:
    """{view: metrics} of a recommender fitted before `cutoff`: views `<group>` and `<group>/new` (module
    docstring); group "all" is every customer with a purchase before it, `groups` name subsets of customer
    ids (e.g. the high-risk tier)."""
    cutoff = pd.Timestamp(cutoff)
    end = cutoff + pd.Timedelta(days=horizon_days)
    history = fitted.purchases.before(cutoff)
    customers = history.buyers()
    histories = Histories.of(history, customers, as_of=cutoff, half_life_days=half_life_days)
    ranker = fitted.recommender.ranker()
    n_items = len(fitted.catalogue)
    relevant = fitted.purchases.between(cutoff, end).matrix(n_items, rows=customers)
    bought = history.matrix(n_items, rows=customers) > 0
    views = {
        "": (recommend(ranker, histories, k=k, as_of=cutoff, exclude_days=exclude_days), relevant),
        "/new": (
            recommend(ranker, histories, k=k, as_of=cutoff, exclude_days=float("inf")),
            relevant - relevant.multiply(bought),
        ),
    }
    out: dict[str, dict[str, float]] = {}
    for group, ids in {"all": customers, **(groups or {})}.items():
        rows = customers.get_indexer(pd.Index(ids).astype(str))
        rows = rows[rows >= 0]
        for suffix, (offers, truth) in views.items():
            out[group + suffix] = ranking_metrics(offers[rows], truth[rows], k, n_items)
    return out
