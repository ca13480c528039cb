"""The customer population: static attributes (signup, region, age, income, plan) and the latent taste and
behaviour of each customer (rates, basket size, category and channel preferences, satisfaction, pauses)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from churnwatch.data.synthetic.columns import AGE_BANDS, REGIONS
from churnwatch.data.synthetic.config import SyntheticConfig
from churnwatch.data.synthetic.sampling import cumulative, sample_rows

MAX_PAUSES = 3
"""Most natural pauses (weeks of low activity) a customer takes."""


@dataclass
class CustomerState:
    """Per-customer latent traits and the resolved churn plan (arrays of length n)."""

    n: int
    horizon: float  # days from start to end
    signup: np.ndarray
    t0: np.ndarray
    region: np.ndarray
    age: np.ndarray
    income: np.ndarray
    plan: np.ndarray
    loyalty: np.ndarray
    purchase_rate: np.ndarray  # per day
    visit_rate: np.ndarray
    season_amp: np.ndarray
    basket_mean: np.ndarray
    cat_pref: np.ndarray  # (n, 8)
    chan_pref: np.ndarray  # (n, 4)
    sat_base: np.ndarray
    price_sens: np.ndarray
    complaint_rate: np.ndarray
    info_rate: np.ndarray
    survey_period: np.ndarray
    survey_phase: np.ndarray
    pause_start: np.ndarray  # (MAX_PAUSES, n), inf = no pause
    pause_end: np.ndarray
    # churn plan (filled by plan_churn)
    churn: np.ndarray | None = None  # latent churn time (may lie after the horizon)
    driver: np.ndarray | None = None
    ramp_start: np.ndarray | None = None  # start of the pre-churn decline for ramp mechanisms
    trigger: np.ndarray | None = None  # triggering event time for event-driven mechanisms
    stop: np.ndarray | None = None  # min(churn, horizon): events happen in [t0, stop)


def draw_customers(rng: np.random.Generator, n: int, horizon: float, cfg: SyntheticConfig) -> CustomerState:
    """Static attributes and latent behavioural traits per customer."""
    last_signup = int(np.floor(horizon)) - cfg.signup_last_gap_days
    signup = rng.integers(-cfg.signup_lookback_days, last_signup + 1, size=n).astype(np.float64)
    t0 = np.maximum(signup, 0.0)
    region = rng.choice(len(REGIONS), size=n, p=np.asarray(cfg.region_p) / sum(cfg.region_p)).astype(np.int8)
    age = rng.choice(len(AGE_BANDS), size=n, p=np.asarray(cfg.age_p) / sum(cfg.age_p)).astype(np.int8)
    income_by_age = np.array(
        [
            [0.55, 0.38, 0.07],
            [0.35, 0.48, 0.17],
            [0.25, 0.48, 0.27],
            [0.22, 0.46, 0.32],
            [0.27, 0.45, 0.28],
            [0.4, 0.44, 0.16],
        ]
    )
    income = sample_rows(rng, cumulative(income_by_age).astype(np.float64), age.astype(np.intp))
    plan_by_income = np.array([[0.7, 0.25, 0.05], [0.45, 0.4, 0.15], [0.25, 0.4, 0.35]])
    plan = sample_rows(rng, cumulative(plan_by_income), income.astype(np.intp))
    tenure_years = np.maximum(-signup, 0.0) / 365.0
    loyalty = np.clip(rng.beta(2.5, 2.0, size=n) + 0.05 * tenure_years + 0.05 * plan, 0.0, 1.0)

    plan_rate = np.array([0.85, 1.05, 1.3])[plan]
    age_rate = np.array([0.9, 1.1, 1.15, 1.05, 0.95, 0.8])[age]
    purchase_rate = (
        cfg.purchase_rate_median_per_week
        / 7.0
        * plan_rate
        * age_rate
        * np.exp(cfg.purchase_rate_sigma * rng.standard_normal(n))
    )
    visit_rate = purchase_rate * rng.uniform(*cfg.visit_ratio, size=n)
    season_amp = np.minimum(rng.gamma(*cfg.season_amp_gamma, size=n), 2.5)
    basket_mean = np.asarray(cfg.basket_median_by_income)[income] * np.exp(
        cfg.basket_sigma * rng.standard_normal(n)
    )
    base_share = np.array([0.24, 0.14, 0.1, 0.15, 0.12, 0.08, 0.11, 0.06])
    cat_pref = rng.dirichlet(cfg.category_concentration * base_share / base_share.sum(), size=n)
    chan_alpha = np.array(
        [
            [3.0, 5.0, 1.5, 0.2],
            [3.5, 3.5, 2.0, 0.2],
            [3.0, 2.5, 2.5, 0.3],
            [2.5, 1.5, 3.0, 0.4],
            [2.0, 1.0, 3.5, 0.6],
            [1.2, 0.5, 4.0, 1.0],
        ]
    )
    chan_pref = rng.gamma(chan_alpha[age]) + 1e-6
    chan_pref /= chan_pref.sum(axis=1, keepdims=True)
    sat_base = np.clip(rng.normal(cfg.satisfaction_mean, cfg.satisfaction_sd, size=n), 2.5, 9.7)
    sens = rng.beta(*cfg.price_sensitivity_beta, size=n)
    price_sens = np.clip(sens * np.array([1.4, 1.0, 0.65])[income] * np.array([1.2, 1.0, 0.8])[plan], 0, 1)
    complaint_rate = (
        cfg.complaints_per_year
        / 365.0
        * np.exp(0.3 * (cfg.satisfaction_mean - sat_base))
        * rng.lognormal(-0.125, 0.5, size=n)
    )
    info_rate = cfg.info_contacts_per_year / 365.0 * rng.lognormal(-0.125, 0.5, size=n)
    survey_period = rng.uniform(*cfg.survey_period_days, size=n)
    survey_phase = rng.random(n) * survey_period

    n_pauses = np.minimum(rng.poisson(cfg.pauses_per_year * (horizon - t0) / 365.0), MAX_PAUSES)
    p_start = t0 + rng.random((MAX_PAUSES, n)) * (horizon - t0)
    p_end = p_start + rng.uniform(*cfg.pause_days, size=(MAX_PAUSES, n))
    unused = np.arange(MAX_PAUSES)[:, None] >= n_pauses[None, :]
    p_start[unused] = np.inf
    p_end[unused] = np.inf
    return CustomerState(
        n=n,
        horizon=horizon,
        signup=signup,
        t0=t0,
        region=region,
        age=age,
        income=income,
        plan=plan,
        loyalty=loyalty,
        purchase_rate=purchase_rate,
        visit_rate=visit_rate,
        season_amp=season_amp,
        basket_mean=basket_mean,
        cat_pref=cat_pref,
        chan_pref=chan_pref,
        sat_base=sat_base,
        price_sens=price_sens,
        complaint_rate=complaint_rate,
        info_rate=info_rate,
        survey_period=survey_period,
        survey_phase=survey_phase,
        pause_start=p_start,
        pause_end=p_end,
    )
