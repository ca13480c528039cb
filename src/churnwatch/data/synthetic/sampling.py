"""Vectorised random draws the generator is built from: per-row categorical draws, Poisson processes on
per-customer intervals, ramps, and realistic times of day."""

from __future__ import annotations

import numpy as np


def sample_rows(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Draw one index per element from per-row categorical distributions.

    ``cum`` has shape (K, n_rows): cumulative probabilities, one column per row; ``rows`` says which
    column each draw uses. Looping over the K classes keeps memory at one gathered column at a time.
    """
    u = rng.random(rows.size)
    out = np.zeros(rows.size, dtype=np.int8)
    for k in range(cum.shape[0] - 1):
        out += u > cum[k][rows]
    return out


def cumulative(p: np.ndarray) -> np.ndarray:
    """(n, K) probabilities -> (K, n) cumulative table with an exact 1.0 last row."""
    cum = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1).T.copy()
    cum[-1] = 1.0
    return cum


def poisson_uniform(
    rng: np.random.Generator, rate: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Homogeneous Poisson process with per-customer ``rate`` (per day) on [lo, hi)."""
    span = np.maximum(hi - lo, 0.0)
    counts = rng.poisson(rate * span)
    cust = np.repeat(np.arange(rate.size, dtype=np.int32), counts)
    t = lo[cust] + rng.random(cust.size) * span[cust]
    return cust, t


def ramp(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """0 before a, 1 after b, linear in between (a < b)."""
    return np.clip((t - a) / np.maximum(b - a, 1e-9), 0.0, 1.0)


def group_min(cust: np.ndarray, value: np.ndarray, when: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per customer: the smallest ``value`` and the ``when`` of the row achieving it (inf if none)."""
    best = np.full(n, np.inf)
    at = np.full(n, np.inf)
    if cust.size:
        order = np.lexsort((value, cust))
        c = cust[order]
        first = order[np.r_[True, c[1:] != c[:-1]]]
        best[cust[first]] = value[first]
        at[cust[first]] = when[first]
    return best, at


def _daily_profile(rng: np.random.Generator, size: int, hourly: np.ndarray) -> np.ndarray:
    """Fraction of a day drawn from an hourly profile (so timestamps have a realistic time of day)."""
    hours = rng.choice(24, size=size, p=hourly / hourly.sum())
    return (hours + rng.random(size)) / 24.0


HOURS_CUSTOMER = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 4, 5, 6, 7, 6, 5, 5, 6, 7, 8, 9, 9, 7, 4, 2], dtype=float
)
HOURS_OFFICE = np.array(
    [0, 0, 0, 0, 0, 0, 0, 0.5, 3, 6, 7, 7, 5, 6, 7, 6, 5, 4, 2, 1, 0.5, 0, 0, 0], dtype=float
)


def time_of_day(rng: np.random.Generator, t: np.ndarray, hourly: np.ndarray) -> np.ndarray:
    """Keep the day of each time, redraw the time of day."""
    return np.floor(t) + _daily_profile(rng, t.size, hourly)
