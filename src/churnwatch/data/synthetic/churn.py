"""The ground truth (phase A): every churn mechanism proposes a churn time per customer and the earliest wins,
which fixes each customer's churn time and dominant driver before any everyday event is drawn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from churnwatch.data.synthetic.columns import DRIVERS, REGIONS, Driver
from churnwatch.data.synthetic.config import SyntheticConfig
from churnwatch.data.synthetic.population import MAX_PAUSES, CustomerState
from churnwatch.data.synthetic.sampling import (
    HOURS_CUSTOMER,
    HOURS_OFFICE,
    group_min,
    poisson_uniform,
    time_of_day,
)


def _price_schedule(rng: np.random.Generator, horizon: float, cfg: SyntheticConfig) -> list[tuple]:
    """(day, region, delta) of every price rise: each region every ~180 d, regions staggered."""
    period = cfg.price_rise_every_days
    stagger = period / len(REGIONS)
    schedule = []
    for r in range(len(REGIONS)):
        first = 0.4 * stagger + r * stagger
        for day in np.arange(first, horizon, period):
            jittered = float(np.floor(np.clip(day + rng.uniform(-5, 5), 0, horizon - 1)))
            schedule.append((jittered, r, round(float(rng.uniform(*cfg.price_rise_delta)), 3)))
    schedule.sort()
    return schedule


def _resolution_times(
    rng: np.random.Generator, complaint_t: np.ndarray, resolved: np.ndarray, cfg: SyntheticConfig
) -> np.ndarray:
    """When the resolving service contact happens (office hours, days later); inf if never."""
    delay = 0.1 + rng.exponential(cfg.complaint_resolve_mean_days, complaint_t.size)
    t = time_of_day(rng, complaint_t + delay, HOURS_OFFICE)
    return np.where(resolved, np.maximum(t, complaint_t + 0.05), np.inf)  # same-day redraw stays after


@dataclass
class ChurnTriggers:
    """Low-rate events that drive churn; generated before the churn time is known."""

    complaint_cust: np.ndarray
    complaint_t: np.ndarray
    resolution_t: np.ndarray  # inf = never resolved
    offer_cust: np.ndarray
    offer_t: np.ndarray
    schedule: list[tuple]


def plan_churn(rng: np.random.Generator, st: CustomerState, cfg: SyntheticConfig) -> ChurnTriggers:
    """Candidate churn time per mechanism; the earliest wins (fills st.churn/driver/...)."""
    n, horizon, t0 = st.n, st.horizon, st.t0
    cand = np.full((len(DRIVERS) - 1, n), np.inf)  # row d-1 = driver d
    trig = np.full((len(DRIVERS) - 1, n), np.inf)

    # 1-3: latent hazards, starting when the customer is first observed
    engagement = np.clip(st.purchase_rate / (cfg.purchase_rate_median_per_week / 7.0), 0.05, 20)
    h_dis = cfg.disengagement_per_year / 365.0 * (1.6 - st.loyalty) * engagement**-0.25
    h_cat = cfg.category_shift_per_year / 365.0 * (1.6 - st.loyalty)
    h_sat = cfg.low_satisfaction_per_year / 365.0 * np.exp(-0.6 * (st.sat_base - cfg.satisfaction_mean))
    cand[Driver.DISENGAGEMENT - 1] = t0 + rng.exponential(1.0, n) / h_dis
    cand[Driver.CATEGORY_SHIFT - 1] = t0 + rng.exponential(1.0, n) / h_cat
    cand[Driver.LOW_SATISFACTION - 1] = t0 + rng.exponential(1.0, n) / h_sat

    # 4: complaints (base rate + after natural pauses), resolution, unresolved -> churn
    c_cust, c_t = poisson_uniform(rng, st.complaint_rate, t0, np.full(n, horizon))
    after_pause_c, after_pause_t = [], []
    for j in range(MAX_PAUSES):
        hit = np.flatnonzero(np.isfinite(st.pause_end[j]) & (rng.random(n) < cfg.post_pause_complaint_prob))
        after_pause_c.append(hit.astype(np.int32))
        after_pause_t.append(st.pause_end[j][hit] + rng.uniform(0, 5, hit.size))
    c_cust = np.concatenate([c_cust, *after_pause_c])
    c_t = time_of_day(rng, np.concatenate([c_t, *after_pause_t]), HOURS_CUSTOMER)
    keep = c_t < horizon
    c_cust, c_t = c_cust[keep], c_t[keep]
    resolved = rng.random(c_t.size) < cfg.complaint_resolve_prob
    resolution_t = _resolution_times(rng, c_t, resolved, cfg)
    # a fix that does not stick: some resolved complaints come back as a new, angrier complaint
    again = np.flatnonzero(resolved & (rng.random(c_t.size) < cfg.complaint_recur_prob))
    r_t = time_of_day(
        rng,
        resolution_t[again] + 1.0 + rng.exponential(cfg.complaint_recur_mean_days, again.size),
        HOURS_CUSTOMER,
    )
    r_cust = c_cust[again][r_t < horizon]
    r_t = r_t[r_t < horizon]
    r_resolved = rng.random(r_t.size) < cfg.recurrence_resolve_prob
    boost = np.r_[np.ones(c_t.size), np.full(r_t.size, cfg.recurrence_churn_boost)]
    c_cust, c_t = np.concatenate([c_cust, r_cust]), np.concatenate([c_t, r_t])
    resolved = np.concatenate([resolved, r_resolved])
    resolution_t = np.concatenate([resolution_t, _resolution_times(rng, r_t, r_resolved, cfg)])
    p_leave = np.clip(cfg.unresolved_churn_prob * boost * (1.3 - 0.6 * st.loyalty[c_cust]), 0, 1)
    leaves = ~resolved & (rng.random(c_t.size) < p_leave)
    leave_t = c_t + cfg.unresolved_delay_days + rng.exponential(cfg.unresolved_mean_days, c_t.size)
    cand[Driver.UNRESOLVED_COMPLAINT - 1], trig[Driver.UNRESOLVED_COMPLAINT - 1] = group_min(
        c_cust[leaves], leave_t[leaves], c_t[leaves], n
    )

    # 5: region-staggered price rises; sensitive customers leave ~Exp(30 d) after one
    schedule = _price_schedule(rng, horizon, cfg)
    for day, region, delta in schedule:
        idx = np.flatnonzero((st.region == region) & (t0 <= day))
        p = 1.0 - np.exp(-cfg.price_reaction_scale * st.price_sens[idx] * delta * 10.0)
        react = idx[rng.random(idx.size) < p]
        leave = day + 1.0 + rng.exponential(cfg.price_churn_mean_days, react.size)
        better = leave < cand[Driver.PRICE_RISE - 1][react]
        cand[Driver.PRICE_RISE - 1][react[better]] = leave[better]
        trig[Driver.PRICE_RISE - 1][react[better]] = day

    # 6: competitor offers; low-loyalty / low-income customers take them more often
    o_cust, o_t = poisson_uniform(
        rng, np.full(n, cfg.competitor_offers_per_year / 365.0), t0, np.full(n, horizon)
    )
    p_take = np.clip(
        cfg.competitor_churn_prob * (1.6 - st.loyalty[o_cust]) * np.array([1.4, 1.0, 0.6])[st.income[o_cust]],
        0,
        1,
    )
    takes = rng.random(o_t.size) < p_take
    take_t = o_t + 1.0 + rng.exponential(cfg.competitor_churn_mean_days, o_t.size)
    cand[Driver.COMPETITOR_OFFER - 1], trig[Driver.COMPETITOR_OFFER - 1] = group_min(
        o_cust[takes], take_t[takes], o_t[takes], n
    )

    # 7: short tenure: some new customers (more of the young) leave soon after signup
    p_short = np.asarray(cfg.short_tenure_prob_by_age)[st.age] * np.array([1.2, 1.0, 0.7])[st.plan]
    short_t = st.signup + 3.0 + rng.exponential(cfg.short_tenure_mean_days, n)
    short = (rng.random(n) < p_short) & (short_t > t0 + 0.5)
    cand[Driver.SHORT_TENURE - 1][short] = short_t[short]

    # resolve: earliest mechanism wins
    winner = np.argmin(cand, axis=0)
    churn = cand[winner, np.arange(n)]
    driver = (winner + 1).astype(np.int8)
    driver[~np.isfinite(churn)] = Driver.NONE
    window = np.zeros(n)
    for d, (lo, hi) in (
        (Driver.DISENGAGEMENT, cfg.disengagement_window_days),
        (Driver.CATEGORY_SHIFT, cfg.category_shift_window_days),
        (Driver.LOW_SATISFACTION, cfg.low_satisfaction_window_days),
    ):
        sel = driver == d
        window[sel] = rng.uniform(lo, hi, size=int(sel.sum()))
    st.churn = churn
    st.driver = driver
    st.ramp_start = np.where(window > 0, churn - window, np.inf)
    st.trigger = np.where(
        np.isin(driver, (Driver.UNRESOLVED_COMPLAINT, Driver.PRICE_RISE, Driver.COMPETITOR_OFFER)),
        trig[winner, np.arange(n)],
        np.inf,
    )
    st.stop = np.minimum(churn, horizon)

    # an unresolved-complaint leaver goes silent: no later complaints, and no late resolutions
    silent_after = np.where(driver == Driver.UNRESOLVED_COMPLAINT, st.trigger, np.inf)
    keep = c_t <= silent_after[c_cust]
    trig_rows = keep & (c_t == silent_after[c_cust])
    resolution_t = np.where(trig_rows | (resolution_t > silent_after[c_cust]), np.inf, resolution_t)
    return ChurnTriggers(
        complaint_cust=c_cust[keep],
        complaint_t=c_t[keep],
        resolution_t=resolution_t[keep],
        offer_cust=o_cust,
        offer_t=o_t,
        schedule=schedule,
    )
