"""Customer demand forecasts from the BTYD models: per snapshot row, the expected number of purchases and
the expected spend within a horizon after the cutoff, what the customer really bought then, and how well
the one forecasts the other.

Why: the churn models say who will stop buying; planning (stock, budgets, the value at risk behind an alert)
needs how much each customer will buy. BG/NBD or Pareto/NBD (models/btyd) give the expected purchases from
the purchase history alone; the Gamma-Gamma model turns them into spend.

Inputs are aggregate features of snapshot rows (src/churnwatch/features/aggregates.py, as a DataFrame): the
history (x, tx, T) that `purchase_histories` reads, and spend per purchase occasion = spend_total /
n_purchase_occasions. spend_total sums `data.aggregates.amount` over the purchase events (their count when
no amount is configured). It includes the first occasion, which Fader & Hardie leave out of the
Gamma-Gamma fit: the aggregates cannot split it off, so here it counts as one more draw of the customer's
spend.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from churnwatch.data.expressions import query_mask
from churnwatch.data.snapshots import EventLog, Snapshots
from churnwatch.errors import ConfigError
from churnwatch.features.aggregates import AggregateSpec, _previous_gap_days
from churnwatch.models.btyd import OCCASIONS, BTYDModel, GammaGamma, make_model, purchase_histories

SPEND_TOTAL = "spend_total"


def spend_per_occasion(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(n purchase occasions, mean spend per occasion) per row; the mean is 0 for rows without a purchase."""
    if SPEND_TOTAL not in frame.columns:
        raise ConfigError(f"demand forecasts need the aggregate column {SPEND_TOTAL!r}")
    n = frame[OCCASIONS].to_numpy(dtype=np.float64)
    return n, frame[SPEND_TOTAL].to_numpy(dtype=np.float64) / np.maximum(n, 1.0)


def fit_demand(
    frame: pd.DataFrame, model: str = "bgnbd", penalizer: float = 0.0
) -> tuple[BTYDModel, GammaGamma]:
    """The purchase-count model (`model`: bgnbd | pareto_nbd) fitted on every row's history, and Gamma-Gamma
    fitted on the rows with a repeat occasion (x >= 1) and positive spend."""
    counts = make_model(model, penalizer).fit(*purchase_histories(frame))
    n, m = spend_per_occasion(frame)
    repeat = (n >= 2) & (m > 0)
    return counts, GammaGamma().fit(n[repeat], m[repeat])


def expected_purchases(counts: BTYDModel, frame: pd.DataFrame, horizon_days: float) -> np.ndarray:
    """E[purchase occasions within horizon_days after each row's cutoff | its history]."""
    x, tx, T = purchase_histories(frame)
    return counts.expected_purchases(x, tx, T, horizon_days)


def expected_spend(
    counts: BTYDModel, spend: GammaGamma, frame: pd.DataFrame, horizon_days: float
) -> np.ndarray:
    """E[spend within horizon_days after the cutoff] = expected purchases × E[spend per purchase].

    The spend per purchase is Gamma-Gamma's conditional expectation given the customer's occasions and
    mean spend, or its population mean for customers without a repeat occasion (Fader, Hardie & Lee 2005).
    """
    n, m = spend_per_occasion(frame)
    per_purchase = np.full(len(n), spend.mean_spend())
    repeat = n >= 2
    per_purchase[repeat] = spend.conditional_expected_spend(n[repeat], m[repeat])
    return expected_purchases(counts, frame, horizon_days) * per_purchase


def realised_demand(
    log: EventLog, snaps: Snapshots, horizon_days: float, spec: AggregateSpec
) -> pd.DataFrame:
    """Per snapshot row, the purchase occasions and spend in [cutoff, cutoff + horizon_days): what the
    forecasts are judged against. Purchases, occasions and spend are those of the aggregates (`spec`:
    `purchase_when`, `amount`; lines at one moment are one occasion). The window must lie inside the data,
    as the label window does."""
    purchase = query_mask(log.frame, spec.purchase_when, "data.aggregates.purchase_when")
    occasion = purchase & (_previous_gap_days(log, purchase) != 0)
    amount = (
        np.nan_to_num(log.frame[spec.amount].to_numpy(dtype=np.float64)) * purchase
        if spec.amount
        else purchase.astype(np.float64)
    )
    purchases, spend = np.zeros(len(snaps)), np.zeros(len(snaps))
    horizon = np.timedelta64(int(round(horizon_days * 86_400e9)), "ns")
    for cutoff in np.unique(snaps.cutoff):
        rows = snaps.cutoff == cutoff
        start, end = cutoff.astype("datetime64[ns]").astype(np.int64), (cutoff + horizon).astype(np.int64)
        window = (log.ts >= start) & (log.ts < end)
        customers = snaps.customer[rows]
        purchases[rows] = np.bincount(log.customer[window & occasion], minlength=log.n_customers)[customers]
        spend[rows] = np.bincount(log.customer[window], weights=amount[window], minlength=log.n_customers)[
            customers
        ]
    return pd.DataFrame({"purchases": purchases, "spend": spend})


def forecast_metrics(expected: Any, realised: Any, bins: int = 10) -> dict[str, Any]:
    """How a per-customer forecast matches what followed: MAE, RMSE, Spearman rank correlation, and its
    calibration, the mean forecast against the mean outcome overall and per `bins` quantile groups of the
    forecast (deciles by default; rank groups, so ties cannot empty one), as a small table."""
    expected, realised = np.asarray(expected, dtype=np.float64), np.asarray(realised, dtype=np.float64)
    if expected.shape != realised.shape or expected.ndim != 1 or len(expected) < 2:
        raise ValueError(f"need two 1-d arrays of one length >= 2, got {expected.shape}, {realised.shape}")
    if not (np.isfinite(expected).all() and np.isfinite(realised).all()):
        raise ValueError("forecasts and outcomes must be finite")
    groups = [g for g in np.array_split(np.argsort(expected, kind="stable"), bins) if len(g)]
    constant = np.ptp(expected) == 0 or np.ptp(realised) == 0  # rank correlation undefined
    return {
        "customers": len(expected),
        "mae": float(np.mean(np.abs(expected - realised))),
        "rmse": float(np.sqrt(np.mean((expected - realised) ** 2))),
        "spearman": float("nan") if constant else float(spearmanr(expected, realised).statistic),
        "mean_expected": float(expected.mean()),
        "mean_realised": float(realised.mean()),
        "deciles": pd.DataFrame(
            {
                "group": np.arange(1, len(groups) + 1),
                "customers": [len(g) for g in groups],
                "mean_expected": [expected[g].mean() for g in groups],
                "mean_realised": [realised[g].mean() for g in groups],
            }
        ),
    }
