"""Which training rows validate: a stratified holdout or k folds of customers, and the customer subsamples of
learning curves. A customer's rows stay together, so no customer is on both sides of a split.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from churnwatch.data.snapshots import Snapshots
from churnwatch.errors import ConfigError


def _customer_strata(snaps: Snapshots) -> tuple[np.ndarray, np.ndarray]:
    """Unique customers and a stratum per customer: their label at their latest cutoff."""
    order = np.lexsort((snaps.cutoff, snaps.customer))
    cust = snaps.customer[order]
    last = np.r_[cust[1:] != cust[:-1], True]
    return cust[last], np.nan_to_num(snaps.label[order][last], nan=0.0).astype(int)


def _stratify(strata: np.ndarray, n_splits: int) -> np.ndarray | None:
    _, counts = np.unique(strata, return_counts=True)
    return strata if len(counts) > 1 and counts.min() >= n_splits else None


def holdout_split(snaps: Snapshots, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val): a stratified holdout of customers, so no customer is in both."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    customers, strata = _customer_strata(snaps)
    if len(customers) < 2:
        raise ConfigError("need at least 2 training customers to hold out a validation set")
    _, val_customers = train_test_split(
        customers, test_size=val_fraction, random_state=seed, stratify=_stratify(strata, 2)
    )
    is_val = np.isin(snaps.customer, val_customers)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def kfold_splits(snaps: Snapshots, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Row indices (train, val) per fold, stratified k-fold by customer."""
    customers, strata = _customer_strata(snaps)
    if folds < 2 or folds > len(customers):
        raise ConfigError(f"cv folds must be in [2, {len(customers)}], got {folds}")
    stratify = _stratify(strata, folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    y = stratify if stratify is not None else np.zeros(len(customers), dtype=int)
    out = []
    for _, val_pos in splitter.split(customers, y):
        is_val = np.isin(snaps.customer, customers[val_pos])
        out.append((np.flatnonzero(~is_val), np.flatnonzero(is_val)))
    return out


def customer_subsample(snaps: Snapshots, fraction: float, seed: int) -> np.ndarray:
    """Row indices of a stratified sample of `fraction` of the customers (all their rows): learning curves."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(len(snaps))
    customers, strata = _customer_strata(snaps)
    keep = max(2, int(round(fraction * len(customers))))
    if keep >= len(customers):
        return np.arange(len(snaps))
    chosen, _ = train_test_split(customers, train_size=keep, random_state=seed, stratify=_stratify(strata, 2))
    return np.flatnonzero(np.isin(snaps.customer, chosen))
