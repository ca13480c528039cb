"""Which training rows validate: a stratified holdout or k folds of customers, and the customer subsamples of
learning curves. A customer's rows stay together, so no customer is on both sides of a split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from churnwatch.config.schema import DataConfig
from churnwatch.data.snapshots import Snapshots
from churnwatch.errors import ConfigError


def customer_strata(snaps: Snapshots) -> tuple[np.ndarray, np.ndarray]:
    """Unique customers (sorted) and a stratum per customer: their label at their latest cutoff. For
    customer-disjoint parts of one population, concatenated in customer order, these are the whole's."""
    order = np.lexsort((snaps.cutoff, snaps.customer))
    cust = snaps.customer[order]
    last = np.r_[cust[1:] != cust[:-1], True]
    return cust[last], np.nan_to_num(snaps.label[order][last], nan=0.0).astype(int)


def _stratify(strata: np.ndarray, n_splits: int) -> np.ndarray | None:
    _, counts = np.unique(strata, return_counts=True)
    return strata if len(counts) > 1 and counts.min() >= n_splits else None


def holdout_customers(
    customers: np.ndarray, strata: np.ndarray, val_fraction: float, seed: int
) -> np.ndarray:
    """The validation customers: a stratified holdout of `customers` (with their `strata`)."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if len(customers) < 2:
        raise ConfigError("need at least 2 training customers to hold out a validation set")
    _, val_customers = train_test_split(
        customers, test_size=val_fraction, random_state=seed, stratify=_stratify(strata, 2)
    )
    return val_customers


def fold_customers(customers: np.ndarray, strata: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """The validation customers of each of `folds` stratified folds."""
    if folds < 2 or folds > len(customers):
        raise ConfigError(f"cv folds must be in [2, {len(customers)}], got {folds}")
    stratify = _stratify(strata, folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    y = stratify if stratify is not None else np.zeros(len(customers), dtype=int)
    return [customers[val_pos] for _, val_pos in splitter.split(customers, y)]


def sample_customers(customers: np.ndarray, strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified sample of `fraction` of `customers` (learning curves)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.train_fraction must be in (0, 1], got {fraction}")
    keep = max(2, int(round(fraction * len(customers))))
    if fraction == 1 or keep >= len(customers):
        return customers
    chosen, _ = train_test_split(customers, train_size=keep, random_state=seed, stratify=_stratify(strata, 2))
    return chosen


def split_customers(
    cfg: Mapping[str, Any], customers: np.ndarray, strata: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) customers as the data config says: fold `fold` of `folds`, else a holdout of
    `val_fraction`; then, for learning curves, a `train_fraction` sample of the training customers."""
    seed = int(cfg.get("seed") or 0)
    if cfg.get("fold") is not None:
        val = fold_customers(customers, strata, int(cfg["folds"]), seed)[int(cfg["fold"])]
    else:
        val = holdout_customers(
            customers, strata, float(cfg.get("val_fraction", DataConfig.val_fraction)), seed
        )
    train = ~np.isin(customers, val)
    if cfg.get("train_fraction") is None:
        return customers[train], val
    return sample_customers(customers[train], strata[train], float(cfg["train_fraction"]), seed), val
