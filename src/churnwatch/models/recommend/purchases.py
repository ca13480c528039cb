"""Who bought what, when: the item catalogue and the purchase log every recommender learns from.

A purchase is an event row with an item (`data.item`; rows without one, e.g. visits or complaints, are not
purchases). Recommenders see only purchases before a cutoff (`before`); evaluation reads what each
customer bought in the horizon after it (`between`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from churnwatch.data.schema import CUSTOMER_ID, MISSING, TIMESTAMP
from churnwatch.errors import ConfigError

if TYPE_CHECKING:  # fitting builds matrices; scoring, which imports this module too, never does
    from scipy import sparse

DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class ItemColumns:
    """Which event columns hold the item, its name and its category (`data.item*`)."""

    item: str
    name: str | None = None
    category: str | None = None


@dataclass(frozen=True)
class ItemCatalogue:
    """The items a recommender can offer: index → item id (and readable name). Items bought fewer than
    `min_count` times before the fit cutoff are left out (nobody learns anything from them)."""

    ids: np.ndarray
    names: np.ndarray
    """Readable name per item (the id itself where the data has no name column)."""
    categories: np.ndarray
    """The item's category per item ('' where the data names none)."""

    @classmethod
    def of(
        cls,
        frame: pd.DataFrame,
        item: str,
        *,
        name: str | None = None,
        category: str | None = None,
        min_count: int = 1,
    ) -> ItemCatalogue:
        """The catalogue of the purchases in `frame` (a canonical event frame): the most frequent name and
        category of each item, items ordered by id."""
        for col, key in ((item, "data.item"), (name, "data.item_name"), (category, "data.item_category")):
            if col is not None and col not in frame:
                raise ConfigError(
                    f"{key}={col!r} is not a column of the events (columns: {list(frame.columns)})"
                )
        bought = frame[frame[item].notna() & (frame[item].astype(str) != MISSING)]  # rows without an item
        counts = bought[item].astype(str).value_counts()
        ids = np.sort(counts.index[counts >= max(int(min_count), 1)].to_numpy(dtype=object))
        out = {}
        for key, col in (("names", name), ("categories", category)):
            if col is None:
                out[key] = ids.copy() if key == "names" else np.full(len(ids), "", dtype=object)
                continue
            pairs = bought[[item, col]].astype(str).value_counts().reset_index()
            top = pairs.drop_duplicates(item).set_index(item)[col]  # value_counts sorts by count
            out[key] = top.reindex(ids).replace(MISSING, "").fillna("").to_numpy(dtype=object)
        return cls(ids, out["names"], out["categories"])

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """Catalogue index of each value (-1: not in the catalogue, or no item: null or the loader's MISSING,
        which is never in the catalogue). A categorical column (the canonical frame's) is looked up once
        per category, then taken by code."""
        if isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
            codes = np.asarray(values.cat.codes if isinstance(values, pd.Series) else values.codes)
            of_category = self.index_of(np.asarray(values.dtype.categories, dtype=object))
            return np.where(codes >= 0, np.append(of_category, -1)[codes], -1)
        values = pd.Series(values, dtype=object)
        return pd.Index(self.ids).get_indexer(values.astype(str).where(values.notna()))

    def state(self) -> dict[str, Any]:
        return {
            "ids": self.ids.tolist(),
            "names": self.names.tolist(),
            "categories": self.categories.tolist(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ItemCatalogue:
        return cls(*(np.asarray(state[k], dtype=object) for k in ("ids", "names", "categories")))


@dataclass(frozen=True)
class Purchases:
    """Purchase rows: customer (row in `customers`), catalogue item index and time (ns), in time order per
    customer as the canonical frame has them."""

    customers: pd.Index
    customer: np.ndarray
    item: np.ndarray
    time: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, item: str, catalogue: ItemCatalogue) -> Purchases:
        """The rows of `frame` (a canonical event frame) with a catalogue item; `customers` in order of
        first purchase."""
        idx = catalogue.index_of(frame[item])
        keep = idx >= 0
        ids = frame[CUSTOMER_ID]
        if not isinstance(ids.dtype, pd.CategoricalDtype):  # categorical ones factorise by code, not text
            ids = ids.astype(str)
        customer, first_seen = pd.factorize(ids[keep])
        return cls(
            pd.Index(np.asarray(first_seen, dtype=object).astype(str)),
            customer.astype(np.int64),
            idx[keep],
            frame[TIMESTAMP].to_numpy().astype("datetime64[ns]").view(np.int64)[keep],
        )

    def select(self, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> Purchases:
        """The purchases in [start, end) (either side open when None)."""
        keep = np.ones(len(self.time), dtype=bool)
        if start is not None:
            keep &= self.time >= pd.Timestamp(start).value
        if end is not None:
            keep &= self.time < pd.Timestamp(end).value
        return Purchases(self.customers, self.customer[keep], self.item[keep], self.time[keep])

    def buyers(self) -> pd.Index:
        """The customers with at least one of these purchases (`customers` may hold more: a log's ids)."""
        return pd.Index(self.customers[np.unique(self.customer)])

    def before(self, cutoff: pd.Timestamp) -> Purchases:
        return self.select(end=cutoff)

    def between(self, start: pd.Timestamp, end: pd.Timestamp) -> Purchases:
        return self.select(start, end)

    def weights(self, as_of: pd.Timestamp | None = None, half_life_days: float | None = None) -> np.ndarray:
        """Each purchase's weight: 1, or with a half-life, 2^(-days before `as_of` / half_life_days) (recent
        purchases say more about what comes next)."""
        if half_life_days is None:
            return np.ones(len(self.time))
        age = (pd.Timestamp(as_of).value - self.time) / DAY_NS
        return np.exp2(-np.maximum(age, 0.0) / float(half_life_days))

    def matrix(
        self,
        n_items: int,
        rows: pd.Index | None = None,
        *,
        as_of: pd.Timestamp | None = None,
        half_life_days: float | None = None,
    ) -> sparse.csr_matrix:
        """Purchase counts (decayed, with a half-life), customers (`rows`, default every customer) × items."""
        from scipy import sparse

        rows = self.customers if rows is None else rows
        r = rows.get_indexer(self.customers[self.customer]) if len(self.customer) else np.zeros(0, int)
        keep = r >= 0
        data = self.weights(as_of, half_life_days)[keep]
        m = sparse.csr_matrix((data, (r[keep], self.item[keep])), shape=(len(rows), n_items))
        m.sum_duplicates()
        return m

    def popularity(self, n_items: int) -> np.ndarray:
        """Purchases per item."""
        return np.bincount(self.item, minlength=n_items).astype(np.float64)
