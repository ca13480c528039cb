"""Built-in synthetic customer event log with a known ground truth.

Why: churn models need a data set where we *know* why and when each customer left, so that tests and
benchmarks can check that a model picks up real warning signals (including ones that only live in the
order of events) instead of leaks. Every customer gets latent traits; seven documented churn mechanisms
each propose a churn time; the earliest wins and all of that customer's events stop there.
docs/SYNTHETIC.md documents the schema, the mechanisms and their parameters.

Everything is vectorised over flat numpy arrays (one row per candidate event, built with ``np.repeat``
of per-customer parameters); Python loops run only over mechanisms, event types and the handful of
price-rise dates. One ``numpy.random.default_rng(seed)`` drives the log, and the items (items.py) come last
from their own stream, so a seed fixes the output and the items never change the other columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnwatch.data.synthetic.churn import plan_churn
from churnwatch.data.synthetic.columns import (
    AGE_BANDS,
    CATEGORIES,
    DRIVERS,
    INCOME_BANDS,
    PLANS,
    REGIONS,
    SECONDS_PER_DAY,
    Driver,
    categorical,
    customer_ids,
    epoch_us,
)
from churnwatch.data.synthetic.config import SyntheticConfig
from churnwatch.data.synthetic.events import basket_lines, make_events
from churnwatch.data.synthetic.items import ITEM_STREAM, check_item_config, draw_items, with_items
from churnwatch.data.synthetic.population import draw_customers
from churnwatch.errors import ConfigError


@dataclass(frozen=True)
class SyntheticData:
    """The tables of a synthetic data set (see docs/SYNTHETIC.md for the columns); ``items`` and ``tastes``
    (the item catalogue and each taste cluster's affinities) are None without items (``n_items=0``)."""

    events: pd.DataFrame
    customers: pd.DataFrame
    truth: pd.DataFrame
    items: pd.DataFrame | None = None
    tastes: pd.DataFrame | None = None


def generate(
    n_customers: int,
    seed: int,
    start: str = "2023-01-01",
    end: str = "2024-12-31",
    config: SyntheticConfig | None = None,
    extra_lines_per_purchase: float | None = None,
) -> SyntheticData:
    """Generate a synthetic event log with known churn times and drivers.

    Events lie in [start, end) (timestamps >= start and < end), never before a customer's signup and
    never after their churn time. The same ``seed`` (and config) always gives identical frames.
    ``extra_lines_per_purchase`` > 0 splits each purchase into basket lines with an ``order_id`` (see
    ``basket_lines``); 0 or None gives one row per event, exactly as without it. With ``config.n_items`` > 0
    every purchase row (each basket line) also gets an item, drawn last from a stream of its own.
    """
    cfg = config or SyntheticConfig()
    if n_customers < 1:
        raise ConfigError(f"n_customers must be >= 1, got {n_customers}")
    if extra_lines_per_purchase is not None and not extra_lines_per_purchase >= 0:
        raise ConfigError(f"extra_lines_per_purchase must be >= 0, got {extra_lines_per_purchase}")
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    horizon = (end_ts - start_ts) / pd.Timedelta(days=1)
    if horizon <= cfg.signup_last_gap_days:
        raise ConfigError(
            f"end ({end}) must be more than {cfg.signup_last_gap_days} days after start ({start})"
        )
    check_item_config(cfg)

    rng = np.random.default_rng(seed)
    st = draw_customers(rng, n_customers, horizon, cfg)
    triggers = plan_churn(rng, st, cfg)
    ids = customer_ids(n_customers)
    events = make_events(rng, st, triggers, cfg, start_ts).frame(ids, start_ts)
    if extra_lines_per_purchase:  # drawn after everything else: the same purchases as one-line output
        events = basket_lines(rng, events, st.cat_pref, extra_lines_per_purchase)
    world = None
    if cfg.n_items:
        item_rng = np.random.default_rng([seed, ITEM_STREAM])
        world = draw_items(item_rng, st.cat_pref, cfg)
        events = with_items(item_rng, events, world, cfg)

    def as_time(days: np.ndarray) -> np.ndarray:
        finite = np.isfinite(days)
        us = np.where(finite, np.floor(np.where(finite, days, 0) * SECONDS_PER_DAY) * 1_000_000, 0)
        out = (epoch_us(start_ts) + us.astype(np.int64)).view("datetime64[us]")
        out[~finite] = np.datetime64("NaT")
        return out

    customer_id = categorical(np.arange(n_customers, dtype=np.int32), ids)
    customers = pd.DataFrame(
        {
            "customer_id": customer_id,
            "signup_date": as_time(st.signup),
            "region": categorical(st.region, REGIONS),
            "age_band": categorical(st.age, AGE_BANDS),
            "income_band": categorical(st.income, INCOME_BANDS),
            "plan": categorical(st.plan, PLANS),
        }
    )
    churned = st.churn <= horizon
    driver = np.where(churned, st.driver, Driver.NONE).astype(np.int8)
    truth = pd.DataFrame(
        {
            "customer_id": customer_id,
            "churned": churned,
            "churn_at": as_time(np.where(churned, st.churn, np.inf)),
            "dominant_driver": categorical(driver, DRIVERS),
            "latent_churn_at": as_time(st.churn),
            "latent_driver": categorical(st.driver, DRIVERS),
            "decline_start": as_time(np.where(np.isfinite(st.ramp_start), st.ramp_start, np.inf)),
            "trigger_at": as_time(st.trigger),
            "purchase_rate_per_week": st.purchase_rate * 7.0,
            "visit_rate_per_week": st.visit_rate * 7.0,
            "season_amp": st.season_amp,
            "basket_mean": st.basket_mean,
            "price_sensitivity": st.price_sens,
            "loyalty": st.loyalty,
            "satisfaction_base": st.sat_base,
            "complaints_per_year": st.complaint_rate * 365.0,
            "favourite_category": categorical(np.argmax(st.cat_pref, axis=1).astype(np.int8), CATEGORIES),
        }
    )
    if world is None:
        return SyntheticData(events=events, customers=customers, truth=truth)
    truth["taste_cluster"] = world.cluster
    items, tastes = world.tables()
    return SyntheticData(events=events, customers=customers, truth=truth, items=items, tastes=tastes)
