"""What the synthetic tables hold: the categories of each column, their integer codes (the generator works
on codes and turns them into categoricals only when it builds the frames), and those conversions."""

from __future__ import annotations

import numpy as np
import pandas as pd

EVENT_TYPES = (
    "purchase",
    "visit",
    "service_contact",
    "complaint",
    "survey",
    "price_change",
    "competitor_offer",
)
CATEGORIES = ("grocery", "home", "electronics", "fashion", "beauty", "toys", "sports", "clearance")
CHANNELS = ("web", "app", "store", "phone")
OUTCOMES = ("open", "resolved", "info")
REGIONS = ("north", "south", "east", "west", "central")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
INCOME_BANDS = ("low", "mid", "high")
PLANS = ("basic", "plus", "premium")
DRIVERS = (
    "none",
    "disengagement",
    "category_shift",
    "low_satisfaction",
    "unresolved_complaint",
    "price_rise",
    "competitor_offer",
    "short_tenure",
)

CLEARANCE = CATEGORIES.index("clearance")
PHONE = CHANNELS.index("phone")
SECONDS_PER_DAY = 86_400


class EventType:
    """Integer codes of EVENT_TYPES (each its index there)."""

    PURCHASE, VISIT, SERVICE_CONTACT, COMPLAINT, SURVEY, PRICE_CHANGE, COMPETITOR_OFFER = range(7)


class Outcome:
    """Integer codes of OUTCOMES."""

    OPEN, RESOLVED, INFO = range(3)


class Driver:
    """Integer codes of DRIVERS: NONE, then the seven churn mechanisms."""

    (
        NONE,
        DISENGAGEMENT,
        CATEGORY_SHIFT,
        LOW_SATISFACTION,
        UNRESOLVED_COMPLAINT,
        PRICE_RISE,
        COMPETITOR_OFFER,
        SHORT_TENURE,
    ) = range(8)


def customer_ids(n: int) -> pd.Index:
    """'C0000001'-style ids built from integer digits in C (no Python object per customer)."""
    width = max(7, len(str(max(n, 1))))
    numbers = np.arange(1, n + 1, dtype=np.int64)
    digits = (numbers[:, None] // (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))) % 10
    raw = np.empty((n, width + 1), dtype=np.uint8)
    raw[:, 0] = ord("C")
    raw[:, 1:] = digits + ord("0")
    ids = raw.view(f"S{width + 1}").ravel().astype(f"U{width + 1}")
    return pd.Index(ids, dtype="str")


def epoch_us(ts: pd.Timestamp) -> np.int64:
    """Microseconds since the Unix epoch of a naive timestamp."""
    return np.datetime64(ts.to_datetime64(), "us").astype(np.int64)


def categorical(codes: np.ndarray, categories: tuple[str, ...] | pd.Index) -> pd.Categorical:
    """Categorical from integer codes (-1 = null) without materialising strings per row."""
    cats = categories if isinstance(categories, pd.Index) else pd.Index(list(categories), dtype="str")
    return pd.Categorical.from_codes(codes, categories=cats, validate=False)
