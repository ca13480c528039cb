"""What each purchase bought (phase C): a catalogue of items per category with a global, Zipf-like popularity,
customer taste clusters that each prefer a few items per category, personal staples, and one item per
purchase row of its own category.

Why: a recommender needs item-level preferences with a known truth. Everything here comes from its own random
stream, drawn after the rest of the log, so the items never change a single value of the other columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnwatch.data.synthetic.columns import CATEGORIES, EventType, categorical
from churnwatch.data.synthetic.config import SyntheticConfig
from churnwatch.data.synthetic.sampling import cumulative, sample_rows
from churnwatch.errors import ConfigError

ITEM_STREAM = 1
"""The items' random stream is ``default_rng([seed, ITEM_STREAM])``, apart from the log's one."""

ITEM_NOUNS = {
    "grocery": ("coffee", "tea", "pasta", "rice", "cereal", "olive oil", "chocolate", "honey"),
    "home": ("lamp", "rug", "towel", "pillow", "vase", "candle", "mug", "blanket"),
    "electronics": ("headphones", "charger", "speaker", "keyboard", "mouse", "cable", "tablet", "camera"),
    "fashion": ("shirt", "scarf", "jacket", "sneakers", "belt", "hat", "dress", "socks"),
    "beauty": ("shampoo", "lipstick", "perfume", "cream", "soap", "serum", "lotion", "mascara"),
    "toys": ("puzzle", "doll", "blocks", "kite", "robot", "ball", "board game", "toy car"),
    "sports": ("yoga mat", "racket", "bottle", "dumbbell", "helmet", "gloves", "rope", "backpack"),
    "clearance": ("bundle", "box", "lot", "set", "pack", "kit", "crate", "bag"),
}


@dataclass(frozen=True)
class ItemWorld:
    """The item truth: the catalogue, each cluster's taste, and each customer's cluster and staples."""

    category: np.ndarray  # (n_items,) category code per item; items come grouped by category
    starts: np.ndarray  # (n_categories + 1,) first item of each category, then n_items
    popularity: np.ndarray  # (n_items,) global popularity, sums to 1
    affinity: np.ndarray  # (n_clusters, n_items) P(item | cluster, the item's category)
    cluster: np.ndarray  # (n_customers,) taste cluster
    staples: np.ndarray  # (n_customers, staples_per_customer) item codes

    def ids(self) -> pd.Index:
        """'P0001'-style item ids."""
        width = max(4, len(str(self.category.size)))
        return pd.Index([f"P{i:0{width}d}" for i in range(1, self.category.size + 1)], dtype="str")

    def names(self) -> pd.Index:
        """'home lamp 07'-style names: category, a noun of the category, a number (unique per item)."""
        names = []
        for item, cat in enumerate(self.category):
            nouns = ITEM_NOUNS[CATEGORIES[cat]]
            rank = item - self.starts[cat]
            names.append(f"{CATEGORIES[cat]} {nouns[rank % len(nouns)]} {rank // len(nouns) + 1:02d}")
        return pd.Index(names, dtype="str")

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The catalogue (item_id, item_name, category, popularity) and the tastes (taste_cluster, item_id,
        affinity) as written to items.parquet and tastes.parquet."""
        n_clusters, n_items = self.affinity.shape
        codes = np.arange(n_items, dtype=np.int32)
        ids = self.ids()
        items = pd.DataFrame(
            {
                "item_id": categorical(codes, ids),
                "item_name": categorical(codes, self.names()),
                "category": categorical(self.category, CATEGORIES),
                "popularity": self.popularity,
            }
        )
        tastes = pd.DataFrame(
            {
                "taste_cluster": np.repeat(np.arange(n_clusters, dtype=np.int32), n_items),
                "item_id": categorical(np.tile(codes, n_clusters), ids),
                "affinity": self.affinity.ravel(),
            }
        )
        return items, tastes


def check_item_config(cfg: SyntheticConfig) -> None:
    """Refuse item knobs the generator cannot honour, before anything is drawn."""
    if cfg.n_items == 0:
        return
    if cfg.n_items < len(CATEGORIES):
        raise ConfigError(f"n_items must be 0 or >= {len(CATEGORIES)} (one per category), got {cfg.n_items}")
    if cfg.n_taste_clusters < 1 or cfg.staples_per_customer < 0:
        raise ConfigError(
            f"n_taste_clusters must be >= 1 and staples_per_customer >= 0, got {cfg.n_taste_clusters} "
            f"and {cfg.staples_per_customer}"
        )
    if not (cfg.taste_concentration > 0 and cfg.item_popularity_zipf >= 0):
        raise ConfigError(
            f"taste_concentration must be > 0 and item_popularity_zipf >= 0, got {cfg.taste_concentration} "
            f"and {cfg.item_popularity_zipf}"
        )
    for name in ("staple_share", "taste_share"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"{name} must lie in [0, 1], got {getattr(cfg, name)}")


def _within_category(weights: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each row of (rows, n_items) weights normalised to sum to 1 within every category's block."""
    totals = np.add.reduceat(weights, starts[:-1], axis=1)
    return weights / np.repeat(totals, np.diff(starts), axis=1)


def _draw_in_category(
    rng: np.random.Generator, probs: np.ndarray, row: np.ndarray, cat: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """One item per draw from row ``row`` of ``probs`` within category ``cat``.

    ``probs`` (rows, n_items) sums to 1 in every (row, category) block. The blocks' cumulative sums, each
    shifted by its block number, lie end to end in one sorted array, so all draws are one binary search.
    """
    n_rows, n_items = probs.shape
    n_cats = starts.size - 1
    sizes = np.diff(starts)
    running = np.cumsum(probs, axis=1)
    before = np.concatenate([np.zeros((n_rows, 1)), running[:, starts[1:-1] - 1]], axis=1)
    cum = np.clip(running - np.repeat(before, sizes, axis=1), 0.0, 1.0)
    cum[:, starts[1:] - 1] = 1.0
    item_category = np.repeat(np.arange(n_cats), sizes)
    flat = (cum + np.arange(n_rows)[:, None] * n_cats + item_category).ravel()
    block = row.astype(np.int64) * n_cats + cat
    item = np.searchsorted(flat, block + rng.random(row.size), side="right") - row.astype(np.int64) * n_items
    return np.clip(item, starts[cat], starts[cat + 1] - 1).astype(np.int32)


def draw_items(rng: np.random.Generator, cat_pref: np.ndarray, cfg: SyntheticConfig) -> ItemWorld:
    """The catalogue, the clusters' tastes, and each customer's cluster and staples."""
    n_cats = len(CATEGORIES)
    starts = np.arange(n_cats + 1) * cfg.n_items // n_cats
    category = np.repeat(np.arange(n_cats, dtype=np.int8), np.diff(starts))
    rank = rng.permutation(cfg.n_items)
    popularity = (rank + 1.0) ** -cfg.item_popularity_zipf
    popularity /= popularity.sum()
    taste = rng.gamma(cfg.taste_concentration, size=(cfg.n_taste_clusters, cfg.n_items))
    affinity = _within_category(np.maximum(taste, np.finfo(np.float64).tiny), starts)
    n = cat_pref.shape[0]
    cluster = rng.integers(cfg.n_taste_clusters, size=n).astype(np.int32)
    owner = np.repeat(np.arange(n), cfg.staples_per_customer)
    staple_cat = sample_rows(rng, cumulative(cat_pref), owner)
    staples = _draw_in_category(rng, affinity, cluster[owner], staple_cat, starts)
    return ItemWorld(
        category=category,
        starts=starts,
        popularity=popularity,
        affinity=affinity,
        cluster=cluster,
        staples=staples.reshape(n, cfg.staples_per_customer),
    )


def purchase_items(
    rng: np.random.Generator, world: ItemWorld, cfg: SyntheticConfig, cust: np.ndarray, cat: np.ndarray
) -> np.ndarray:
    """The item of each purchase (customer ``cust``, category ``cat``): with ``staple_share`` one of the
    customer's staples of that category if any, else from the cluster's taste (``taste_share``) mixed
    with the category's popularity."""
    staple_u, pick_u = rng.random(cust.size), rng.random(cust.size)
    popular = _within_category(world.popularity[None, :], world.starts)
    mixed = cfg.taste_share * world.affinity + (1.0 - cfg.taste_share) * popular
    item = _draw_in_category(rng, mixed, world.cluster[cust], cat, world.starts)
    owned = [world.staples[cust, s] for s in range(world.staples.shape[1])]
    count = np.zeros(cust.size, dtype=np.int32)
    for own in owned:
        count += world.category[own] == cat
    nth = np.floor(pick_u * count).astype(np.int32)  # which of the matching staples
    use = (count > 0) & (staple_u < cfg.staple_share)
    seen = np.zeros(cust.size, dtype=np.int32)
    for own in owned:
        match = world.category[own] == cat
        take = use & match & (seen == nth)
        item[take] = own[take]
        seen += match
    return item


def with_items(
    rng: np.random.Generator, events: pd.DataFrame, world: ItemWorld, cfg: SyntheticConfig
) -> pd.DataFrame:
    """``events`` plus ``item_id`` and ``item_name`` (categoricals, null on rows that are not purchases)."""
    purchase = np.flatnonzero(events["event_type"].cat.codes.to_numpy() == EventType.PURCHASE)
    cust = events["customer_id"].cat.codes.to_numpy()[purchase]
    cat = events["category"].cat.codes.to_numpy()[purchase]
    codes = np.full(len(events), -1, dtype=np.int32)
    codes[purchase] = purchase_items(rng, world, cfg, cust, cat)
    return events.assign(item_id=categorical(codes, world.ids()), item_name=categorical(codes, world.names()))
