"""Built-in synthetic customer event log with a known ground truth.

Why: churn models need a data set where we *know* why and when each customer left, so that tests and
benchmarks can check that a model picks up real warning signals (including ones that only live in the
order of events) instead of leaks. Every customer gets latent traits; seven documented churn mechanisms
each propose a churn time; the earliest wins and all of that customer's events stop there.
docs/SYNTHETIC.md documents the schema, the mechanisms and their parameters.

Everything is vectorised over flat numpy arrays (one row per candidate event, built with ``np.repeat``
of per-customer parameters); Python loops run only over mechanisms, event types and the handful of
price-rise dates. One ``numpy.random.default_rng(seed)`` drives everything, so a seed fixes the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnwatch.io.atomic import atomic_path

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

# integer codes used internally (index into the tuples above)
_PURCHASE, _VISIT, _SERVICE, _COMPLAINT, _SURVEY, _PRICE, _OFFER = range(7)
_OPEN, _RESOLVED, _INFO = range(3)
_CLEARANCE = CATEGORIES.index("clearance")
_PHONE = CHANNELS.index("phone")
_NONE, _DIS, _CAT, _SAT, _UNRES, _PRICE_RISE, _COMPETITOR, _SHORT = range(8)
_MAX_PAUSES = 3
_SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator. Rates are per customer; durations in days (see docs/SYNTHETIC.md)."""

    # --- population -------------------------------------------------------------------------------
    signup_lookback_days: int = 3 * 365
    """Earliest signup is this many days before ``start``."""
    signup_last_gap_days: int = 90
    """Latest signup is this many days before ``end``."""
    region_p: tuple[float, ...] = (0.22, 0.2, 0.18, 0.2, 0.2)
    age_p: tuple[float, ...] = (0.12, 0.22, 0.22, 0.18, 0.14, 0.12)

    # --- everyday behaviour ---------------------------------------------------------------------------
    purchase_rate_median_per_week: float = 0.2
    purchase_rate_sigma: float = 0.85
    """Lognormal spread of the purchase rate between customers (heavy right tail)."""
    visit_ratio: tuple[float, float] = (1.0, 2.0)
    """Visits per purchase, uniform per customer."""
    season_amp_gamma: tuple[float, float] = (2.0, 0.4)
    """Gamma(shape, scale) amplitude of the December peak: intensity is (1 + amp) at the peak."""
    december_peak_doy: int = 349
    december_peak_sd_days: float = 12.0
    basket_median_by_income: tuple[float, float, float] = (28.0, 42.0, 65.0)
    basket_sigma: float = 0.35
    """Lognormal spread of the customer basket mean."""
    basket_noise_sigma: float = 0.5
    """Lognormal noise of a single purchase around the customer's basket mean."""
    category_concentration: float = 2.5
    survey_period_days: tuple[float, float] = (60.0, 120.0)
    survey_response_prob: float = 0.8
    post_contact_survey_prob: float = 0.3
    satisfaction_mean: float = 7.3
    satisfaction_sd: float = 1.2
    satisfaction_noise_sd: float = 0.9
    info_contacts_per_year: float = 1.5
    complaints_per_year: float = 0.7
    complaint_resolve_prob: float = 0.8
    complaint_resolve_mean_days: float = 2.5
    complaint_recur_prob: float = 0.25
    """A resolved complaint comes back as a new complaint 1 + Exp(mean) days after the resolution."""
    complaint_recur_mean_days: float = 10.0
    recurrence_resolve_prob: float = 0.5
    recurrence_churn_boost: float = 1.4
    """Multiplies the chance that an unresolved complaint makes the customer leave, for a recurrence."""
    pauses_per_year: float = 0.5
    pause_days: tuple[float, float] = (20.0, 50.0)
    pause_activity: float = 0.08
    post_pause_complaint_prob: float = 0.25
    competitor_offers_per_year: float = 1.2

    # --- churn mechanisms ---------------------------------------------------------------------------
    disengagement_per_year: float = 0.3
    disengagement_window_days: tuple[float, float] = (45.0, 120.0)
    disengagement_floor: float = 0.15
    disengagement_basket_floor: float = 0.5
    category_shift_per_year: float = 0.12
    category_shift_window_days: tuple[float, float] = (60.0, 120.0)
    category_shift_max_share: float = 0.8
    category_shift_clearance_share: float = 0.6
    category_shift_activity: float = 0.7
    low_satisfaction_per_year: float = 0.13
    low_satisfaction_window_days: tuple[float, float] = (90.0, 150.0)
    low_satisfaction_drop: float = 3.5
    low_satisfaction_contact_boost: float = 2.5
    low_satisfaction_activity: float = 0.75
    unresolved_churn_prob: float = 0.6
    unresolved_delay_days: float = 3.0
    unresolved_mean_days: float = 21.0
    unresolved_activity: float = 0.08
    unresolved_satisfaction_drop: float = 1.5
    price_rise_every_days: float = 180.0
    """Each region gets a rise this often; regions are staggered so every ~36 days some region does."""
    price_rise_delta: tuple[float, float] = (0.05, 0.15)
    price_sensitivity_beta: tuple[float, float] = (1.3, 5.0)
    price_reaction_scale: float = 0.42
    """P(react to a rise) = 1 - exp(-scale * sensitivity * delta * 10)."""
    price_churn_mean_days: float = 30.0
    price_activity: float = 0.35
    competitor_churn_prob: float = 0.13
    competitor_churn_mean_days: float = 20.0
    competitor_activity: float = 0.5
    short_tenure_prob_by_age: tuple[float, ...] = (0.32, 0.24, 0.17, 0.13, 0.1, 0.08)
    short_tenure_mean_days: float = 45.0
    final_decline_days: float = 30.0
    final_decline: float = 0.3
    final_satisfaction_drop: float = 0.7


@dataclass(frozen=True)
class SyntheticData:
    """The three tables of a synthetic data set (see docs/SYNTHETIC.md for the columns)."""

    events: pd.DataFrame
    customers: pd.DataFrame
    truth: pd.DataFrame


# ------------------------------------------------------------------------------------------- helpers


def _customer_ids(n: int) -> pd.Index:
    """'C0000001'-style ids built from integer digits in C (no Python object per customer)."""
    width = max(7, len(str(max(n, 1))))
    numbers = np.arange(1, n + 1, dtype=np.int64)
    digits = (numbers[:, None] // (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))) % 10
    raw = np.empty((n, width + 1), dtype=np.uint8)
    raw[:, 0] = ord("C")
    raw[:, 1:] = digits + ord("0")
    ids = raw.view(f"S{width + 1}").ravel().astype(f"U{width + 1}")
    return pd.Index(ids, dtype="str")


def _epoch_us(ts: pd.Timestamp) -> np.int64:
    """Microseconds since the Unix epoch of a naive timestamp."""
    return np.datetime64(ts.to_datetime64(), "us").astype(np.int64)


def _categorical(codes: np.ndarray, categories: tuple[str, ...] | pd.Index) -> pd.Categorical:
    """Categorical from integer codes (-1 = null) without materialising strings per row."""
    cats = categories if isinstance(categories, pd.Index) else pd.Index(list(categories), dtype="str")
    return pd.Categorical.from_codes(codes, categories=cats, validate=False)


def _sample_rows(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Draw one index per element from per-row categorical distributions.

    ``cum`` has shape (K, n_rows): cumulative probabilities, one column per row; ``rows`` says which
    column each draw uses. Looping over the K classes keeps memory at one gathered column at a time.
    """
    u = rng.random(rows.size)
    out = np.zeros(rows.size, dtype=np.int8)
    for k in range(cum.shape[0] - 1):
        out += u > cum[k][rows]
    return out


def _cumulative(p: np.ndarray) -> np.ndarray:
    """(n, K) probabilities -> (K, n) cumulative table with an exact 1.0 last row."""
    cum = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1).T.copy()
    cum[-1] = 1.0
    return cum


def _poisson_uniform(
    rng: np.random.Generator, rate: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Homogeneous Poisson process with per-customer ``rate`` (per day) on [lo, hi)."""
    span = np.maximum(hi - lo, 0.0)
    counts = rng.poisson(rate * span)
    cust = np.repeat(np.arange(rate.size, dtype=np.int32), counts)
    t = lo[cust] + rng.random(cust.size) * span[cust]
    return cust, t


def _ramp(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """0 before a, 1 after b, linear in between (a < b)."""
    return np.clip((t - a) / np.maximum(b - a, 1e-9), 0.0, 1.0)


def _group_min(
    cust: np.ndarray, value: np.ndarray, when: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
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


_HOURS_CUSTOMER = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 4, 5, 6, 7, 6, 5, 5, 6, 7, 8, 9, 9, 7, 4, 2], dtype=float
)
_HOURS_OFFICE = np.array(
    [0, 0, 0, 0, 0, 0, 0, 0.5, 3, 6, 7, 7, 5, 6, 7, 6, 5, 4, 2, 1, 0.5, 0, 0, 0], dtype=float
)


def _time_of_day(rng: np.random.Generator, t: np.ndarray, hourly: np.ndarray) -> np.ndarray:
    """Keep the day of each time, redraw the time of day."""
    return np.floor(t) + _daily_profile(rng, t.size, hourly)


# --------------------------------------------------------------------------------------------- state


@dataclass
class _State:
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
    pause_start: np.ndarray  # (_MAX_PAUSES, n), inf = no pause
    pause_end: np.ndarray
    # churn plan (filled by _plan_churn)
    churn: np.ndarray | None = None  # latent churn time (may lie after the horizon)
    driver: np.ndarray | None = None
    ramp_start: np.ndarray | None = None  # start of the pre-churn decline for ramp mechanisms
    trigger: np.ndarray | None = None  # triggering event time for event-driven mechanisms
    stop: np.ndarray | None = None  # min(churn, horizon): events happen in [t0, stop)


def _draw_customers(rng: np.random.Generator, n: int, horizon: float, cfg: SyntheticConfig) -> _State:
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
    income = _sample_rows(rng, _cumulative(income_by_age).astype(np.float64), age.astype(np.intp))
    plan_by_income = np.array([[0.7, 0.25, 0.05], [0.45, 0.4, 0.15], [0.25, 0.4, 0.35]])
    plan = _sample_rows(rng, _cumulative(plan_by_income), income.astype(np.intp))
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

    n_pauses = np.minimum(rng.poisson(cfg.pauses_per_year * (horizon - t0) / 365.0), _MAX_PAUSES)
    p_start = t0 + rng.random((_MAX_PAUSES, n)) * (horizon - t0)
    p_end = p_start + rng.uniform(*cfg.pause_days, size=(_MAX_PAUSES, n))
    unused = np.arange(_MAX_PAUSES)[:, None] >= n_pauses[None, :]
    p_start[unused] = np.inf
    p_end[unused] = np.inf
    return _State(
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


# ------------------------------------------------------------------------------------- phase A: churn


def _resolution_times(
    rng: np.random.Generator, complaint_t: np.ndarray, resolved: np.ndarray, cfg: SyntheticConfig
) -> np.ndarray:
    """When the resolving service contact happens (office hours, days later); inf if never."""
    delay = 0.1 + rng.exponential(cfg.complaint_resolve_mean_days, complaint_t.size)
    t = _time_of_day(rng, complaint_t + delay, _HOURS_OFFICE)
    return np.where(resolved, np.maximum(t, complaint_t + 0.05), np.inf)  # same-day redraw stays after


@dataclass
class _Triggers:
    """Low-rate events that drive churn; generated before the churn time is known."""

    complaint_cust: np.ndarray
    complaint_t: np.ndarray
    resolution_t: np.ndarray  # inf = never resolved
    offer_cust: np.ndarray
    offer_t: np.ndarray
    schedule: list[tuple]


def _plan_churn(rng: np.random.Generator, st: _State, cfg: SyntheticConfig) -> _Triggers:
    """Candidate churn time per mechanism; the earliest wins (fills st.churn/driver/...)."""
    n, horizon, t0 = st.n, st.horizon, st.t0
    cand = np.full((len(DRIVERS) - 1, n), np.inf)  # row d-1 = driver d
    trig = np.full((len(DRIVERS) - 1, n), np.inf)

    # 1-3: latent hazards, starting when the customer is first observed
    engagement = np.clip(st.purchase_rate / (cfg.purchase_rate_median_per_week / 7.0), 0.05, 20)
    h_dis = cfg.disengagement_per_year / 365.0 * (1.6 - st.loyalty) * engagement**-0.25
    h_cat = cfg.category_shift_per_year / 365.0 * (1.6 - st.loyalty)
    h_sat = cfg.low_satisfaction_per_year / 365.0 * np.exp(-0.6 * (st.sat_base - cfg.satisfaction_mean))
    cand[_DIS - 1] = t0 + rng.exponential(1.0, n) / h_dis
    cand[_CAT - 1] = t0 + rng.exponential(1.0, n) / h_cat
    cand[_SAT - 1] = t0 + rng.exponential(1.0, n) / h_sat

    # 4: complaints (base rate + after natural pauses), resolution, unresolved -> churn
    c_cust, c_t = _poisson_uniform(rng, st.complaint_rate, t0, np.full(n, horizon))
    after_pause_c, after_pause_t = [], []
    for j in range(_MAX_PAUSES):
        hit = np.flatnonzero(np.isfinite(st.pause_end[j]) & (rng.random(n) < cfg.post_pause_complaint_prob))
        after_pause_c.append(hit.astype(np.int32))
        after_pause_t.append(st.pause_end[j][hit] + rng.uniform(0, 5, hit.size))
    c_cust = np.concatenate([c_cust, *after_pause_c])
    c_t = _time_of_day(rng, np.concatenate([c_t, *after_pause_t]), _HOURS_CUSTOMER)
    keep = c_t < horizon
    c_cust, c_t = c_cust[keep], c_t[keep]
    resolved = rng.random(c_t.size) < cfg.complaint_resolve_prob
    resolution_t = _resolution_times(rng, c_t, resolved, cfg)
    # a fix that does not stick: some resolved complaints come back as a new, angrier complaint
    again = np.flatnonzero(resolved & (rng.random(c_t.size) < cfg.complaint_recur_prob))
    r_t = _time_of_day(
        rng,
        resolution_t[again] + 1.0 + rng.exponential(cfg.complaint_recur_mean_days, again.size),
        _HOURS_CUSTOMER,
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
    cand[_UNRES - 1], trig[_UNRES - 1] = _group_min(c_cust[leaves], leave_t[leaves], c_t[leaves], n)

    # 5: region-staggered price rises; sensitive customers leave ~Exp(30 d) after one
    schedule = _price_schedule(rng, horizon, cfg)
    for day, region, delta in schedule:
        idx = np.flatnonzero((st.region == region) & (t0 <= day))
        p = 1.0 - np.exp(-cfg.price_reaction_scale * st.price_sens[idx] * delta * 10.0)
        react = idx[rng.random(idx.size) < p]
        leave = day + 1.0 + rng.exponential(cfg.price_churn_mean_days, react.size)
        better = leave < cand[_PRICE_RISE - 1][react]
        cand[_PRICE_RISE - 1][react[better]] = leave[better]
        trig[_PRICE_RISE - 1][react[better]] = day

    # 6: competitor offers; low-loyalty / low-income customers take them more often
    o_cust, o_t = _poisson_uniform(
        rng, np.full(n, cfg.competitor_offers_per_year / 365.0), t0, np.full(n, horizon)
    )
    p_take = np.clip(
        cfg.competitor_churn_prob * (1.6 - st.loyalty[o_cust]) * np.array([1.4, 1.0, 0.6])[st.income[o_cust]],
        0,
        1,
    )
    takes = rng.random(o_t.size) < p_take
    take_t = o_t + 1.0 + rng.exponential(cfg.competitor_churn_mean_days, o_t.size)
    cand[_COMPETITOR - 1], trig[_COMPETITOR - 1] = _group_min(o_cust[takes], take_t[takes], o_t[takes], n)

    # 7: short tenure: some new customers (more of the young) leave soon after signup
    p_short = np.asarray(cfg.short_tenure_prob_by_age)[st.age] * np.array([1.2, 1.0, 0.7])[st.plan]
    short_t = st.signup + 3.0 + rng.exponential(cfg.short_tenure_mean_days, n)
    short = (rng.random(n) < p_short) & (short_t > t0 + 0.5)
    cand[_SHORT - 1][short] = short_t[short]

    # resolve: earliest mechanism wins
    winner = np.argmin(cand, axis=0)
    churn = cand[winner, np.arange(n)]
    driver = (winner + 1).astype(np.int8)
    driver[~np.isfinite(churn)] = _NONE
    window = np.zeros(n)
    for d, (lo, hi) in (
        (_DIS, cfg.disengagement_window_days),
        (_CAT, cfg.category_shift_window_days),
        (_SAT, cfg.low_satisfaction_window_days),
    ):
        sel = driver == d
        window[sel] = rng.uniform(lo, hi, size=int(sel.sum()))
    st.churn = churn
    st.driver = driver
    st.ramp_start = np.where(window > 0, churn - window, np.inf)
    st.trigger = np.where(
        np.isin(driver, (_UNRES, _PRICE_RISE, _COMPETITOR)), trig[winner, np.arange(n)], np.inf
    )
    st.stop = np.minimum(churn, horizon)

    # an unresolved-complaint leaver goes silent: no later complaints, and no late resolutions
    silent_after = np.where(driver == _UNRES, st.trigger, np.inf)
    keep = c_t <= silent_after[c_cust]
    trig_rows = keep & (c_t == silent_after[c_cust])
    resolution_t = np.where(trig_rows | (resolution_t > silent_after[c_cust]), np.inf, resolution_t)
    return _Triggers(
        complaint_cust=c_cust[keep],
        complaint_t=c_t[keep],
        resolution_t=resolution_t[keep],
        offer_cust=o_cust,
        offer_t=o_t,
        schedule=schedule,
    )


# ------------------------------------------------------------------------------------ phase B: events


def _activity(
    st: _State, cfg: SyntheticConfig, cust: np.ndarray, t: np.ndarray, pauses: bool = True
) -> np.ndarray:
    """Multiplier (<= 1) of a customer's baseline activity at time t: pauses, pre-churn declines."""
    m = np.ones(t.size)
    if pauses:
        for j in range(_MAX_PAUSES):
            m[(t >= st.pause_start[j][cust]) & (t < st.pause_end[j][cust])] *= cfg.pause_activity
    drv = st.driver[cust]
    for d, floor in (
        (_DIS, cfg.disengagement_floor),
        (_CAT, cfg.category_shift_activity),
        (_SAT, cfg.low_satisfaction_activity),
    ):
        sel = np.flatnonzero(drv == d)
        c = cust[sel]
        m[sel] *= 1.0 - (1.0 - floor) * _ramp(t[sel], st.ramp_start[c], st.churn[c])
    for d, level in (
        (_UNRES, cfg.unresolved_activity),
        (_PRICE_RISE, cfg.price_activity),
        (_COMPETITOR, cfg.competitor_activity),
    ):
        sel = np.flatnonzero(drv == d)
        m[sel] *= np.where(t[sel] >= st.trigger[cust[sel]], level, 1.0)
    end = st.churn[cust]
    sel = np.flatnonzero(t > end - cfg.final_decline_days)
    m[sel] *= 1.0 - cfg.final_decline * _ramp(t[sel], end[sel] - cfg.final_decline_days, end[sel])
    return m


def _seasonal_grid(start: pd.Timestamp, horizon: float, cfg: SyntheticConfig) -> tuple[np.ndarray, ...]:
    """Daily December-peak bump and its cumulative integral over [0, horizon] (days from start)."""
    days = np.arange(0, int(np.ceil(horizon)) + 1, dtype=np.float64)
    doy = (start.day_of_year - 1 + days) % 365.25
    dist = np.abs(doy - cfg.december_peak_doy)
    dist = np.minimum(dist, 365.25 - dist)
    bump = np.exp(-0.5 * (dist / cfg.december_peak_sd_days) ** 2) + 1e-9
    cum = np.concatenate([[0.0], np.cumsum(bump[:-1])])
    return days, cum


def _seasonal_process(
    rng: np.random.Generator, rate: np.ndarray, lo: np.ndarray, hi: np.ndarray, grid: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson process with intensity rate * bump(t) on [lo, hi), sampled by inverting the bump's CDF."""
    days, cum = grid
    g_lo, g_hi = np.interp(lo, days, cum), np.interp(hi, days, cum)
    mass = np.maximum(g_hi - g_lo, 0.0)
    counts = rng.poisson(rate * mass)
    cust = np.repeat(np.arange(rate.size, dtype=np.int32), counts)
    g = g_lo[cust] + rng.random(cust.size) * mass[cust]
    return cust, np.interp(g, cum, days)


def _activity_events(
    rng: np.random.Generator, st: _State, cfg: SyntheticConfig, rate: np.ndarray, grid: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Purchase/visit times: seasonal inhomogeneous Poisson process thinned by the activity multiplier."""
    c1, t1 = _poisson_uniform(rng, rate, st.t0, st.stop)
    c2, t2 = _seasonal_process(rng, rate * st.season_amp, st.t0, st.stop, grid)
    cust, t = np.concatenate([c1, c2]), np.concatenate([t1, t2])
    keep = rng.random(t.size) < _activity(st, cfg, cust, t)
    cust, t = cust[keep], _time_of_day(rng, t[keep], _HOURS_CUSTOMER)
    keep = t < st.stop[cust]
    return cust[keep], t[keep]


class _Columns:
    """Accumulates event blocks (flat arrays) and assembles one sorted events frame."""

    def __init__(self) -> None:
        self.blocks: list[dict[str, np.ndarray]] = []

    def add(self, event_type: int, cust: np.ndarray, t: np.ndarray, **cols: np.ndarray) -> None:
        self.blocks.append(
            {
                "cust": cust.astype(np.int32, copy=False),
                "t": t,
                "type": np.full(t.size, event_type, dtype=np.int8),
                **cols,
            }
        )

    def frame(self, ids: pd.Index, start: pd.Timestamp) -> pd.DataFrame:
        total = sum(b["t"].size for b in self.blocks)
        specs = {
            "category": (np.int8, -1),
            "channel": (np.int8, -1),
            "outcome": (np.int8, -1),
            "amount": (np.float64, np.nan),
            "satisfaction": (np.float64, np.nan),
            "price_delta": (np.float64, np.nan),
        }
        cust = np.concatenate([b["cust"] for b in self.blocks])
        seconds = np.floor(np.concatenate([b["t"] for b in self.blocks]) * _SECONDS_PER_DAY).astype(np.int64)
        etype = np.concatenate([b["type"] for b in self.blocks])
        key = (cust.astype(np.int64) << np.int64(35)) | (seconds << np.int64(3)) | etype.astype(np.int64)
        order = np.argsort(key)
        del key
        out = {
            "customer_id": _categorical(cust[order], ids),
            "timestamp": (_epoch_us(start) + seconds[order] * 1_000_000).view("datetime64[us]"),
            "event_type": _categorical(etype[order], EVENT_TYPES),
        }
        del cust, seconds, etype
        for name, (dtype, fill) in specs.items():
            col = np.full(total, fill, dtype=dtype)
            pos = 0
            for b in self.blocks:
                size = b["t"].size
                if name in b:
                    col[pos : pos + size] = b[name]
                pos += size
            col = col[order]
            if name in ("category", "channel", "outcome"):
                cats = {"category": CATEGORIES, "channel": CHANNELS, "outcome": OUTCOMES}[name]
                out[name] = _categorical(col, cats)
            else:
                out[name] = col
        return pd.DataFrame(out, copy=False)


def _make_events(
    rng: np.random.Generator, st: _State, trig: _Triggers, cfg: SyntheticConfig, start: pd.Timestamp
) -> _Columns:
    """All events of every customer in [max(signup, start), min(churn, end))."""
    cols = _Columns()
    grid = _seasonal_grid(start, st.horizon, cfg)
    chan_cum = _cumulative(st.chan_pref)
    no_phone = st.chan_pref.copy()
    no_phone[:, _PHONE] = 0.0
    visit_chan_cum = _cumulative(no_phone)

    def contact_channel(cust: np.ndarray) -> np.ndarray:
        chan = _sample_rows(rng, chan_cum, cust)
        return np.where(rng.random(cust.size) < 0.5, np.int8(_PHONE), chan).astype(np.int8)

    # purchases: category from preferences (shifted for category_shift leavers), basket, channel
    cust, t = _activity_events(rng, st, cfg, st.purchase_rate, grid)
    cat = _sample_rows(rng, _cumulative(st.cat_pref), cust)
    shift = np.flatnonzero(st.driver[cust] == _CAT)
    c = cust[shift]
    share = cfg.category_shift_max_share * _ramp(t[shift], st.ramp_start[c], st.churn[c])
    moved = shift[rng.random(shift.size) < share]
    if moved.size:
        anti = (1.0 - st.cat_pref[cust[moved]]) ** 4
        anti[:, _CLEARANCE] = 0.0
        other = _sample_rows(rng, _cumulative(anti), np.arange(moved.size))
        to_clearance = rng.random(moved.size) < cfg.category_shift_clearance_share
        cat[moved] = np.where(to_clearance, np.int8(_CLEARANCE), other)
    cat_mult = np.array([0.8, 1.5, 2.6, 1.2, 0.8, 1.0, 1.3, 0.5])
    basket = np.ones(t.size)
    dis = np.flatnonzero(st.driver[cust] == _DIS)
    c = cust[dis]
    basket[dis] -= (1.0 - cfg.disengagement_basket_floor) * _ramp(t[dis], st.ramp_start[c], st.churn[c])
    noise = np.exp(cfg.basket_noise_sigma * rng.standard_normal(t.size) - cfg.basket_noise_sigma**2 / 2)
    amount = np.maximum(np.round(st.basket_mean[cust] * cat_mult[cat] * basket * noise, 2), 0.5)
    cols.add(_PURCHASE, cust, t, category=cat, channel=_sample_rows(rng, chan_cum, cust), amount=amount)

    # visits (no purchase): same seasonality and declines, never by phone
    cust, t = _activity_events(rng, st, cfg, st.visit_rate, grid)
    cols.add(_VISIT, cust, t, channel=_sample_rows(rng, visit_chan_cum, cust))

    # info service contacts: baseline, plus a boost in the low-satisfaction decline window
    c1, t1 = _poisson_uniform(rng, st.info_rate, st.t0, st.stop)
    boost_lo = np.where(st.driver == _SAT, np.maximum(st.ramp_start, st.t0), st.stop)
    c2, t2 = _poisson_uniform(rng, st.info_rate * cfg.low_satisfaction_contact_boost, boost_lo, st.stop)
    cust, t = np.concatenate([c1, c2]), np.concatenate([t1, t2])
    keep = rng.random(t.size) < _activity(st, cfg, cust, t, pauses=False)
    cust, t = cust[keep], _time_of_day(rng, t[keep], _HOURS_OFFICE)
    keep = t < st.stop[cust]
    info_cust, info_t = cust[keep], t[keep]
    cols.add(
        _SERVICE,
        info_cust,
        info_t,
        channel=contact_channel(info_cust),
        outcome=np.full(info_t.size, _INFO, dtype=np.int8),
    )

    # complaints and their resolutions (phase A drew them; here we cut them at the churn time)
    keep = trig.complaint_t < st.stop[trig.complaint_cust]
    cust, t = trig.complaint_cust[keep], trig.complaint_t[keep]
    cols.add(
        _COMPLAINT, cust, t, channel=contact_channel(cust), outcome=np.full(t.size, _OPEN, dtype=np.int8)
    )
    res_t = trig.resolution_t[keep]
    keep = res_t < st.stop[cust]
    res_cust, res_t = cust[keep], res_t[keep]
    cols.add(
        _SERVICE,
        res_cust,
        res_t,
        channel=contact_channel(res_cust),
        outcome=np.full(res_t.size, _RESOLVED, dtype=np.int8),
    )

    # surveys: every ~60-120 days per customer, plus some right after a service contact
    span = np.maximum(st.stop - st.t0 - st.survey_phase, 0.0)
    counts = np.where(span > 0, np.floor(span / st.survey_period).astype(np.int64) + 1, 0)
    cust = np.repeat(np.arange(st.n, dtype=np.int32), counts)
    k = np.arange(cust.size) - np.repeat(np.cumsum(counts) - counts, counts)
    t = st.t0[cust] + st.survey_phase[cust] + k * st.survey_period[cust] + rng.normal(0, 3, cust.size)
    contact_cust = np.concatenate([info_cust, res_cust])
    contact_t = np.concatenate([info_t, res_t])
    after = rng.random(contact_t.size) < cfg.post_contact_survey_prob
    cust = np.concatenate([cust, contact_cust[after]])
    t = np.concatenate([t, contact_t[after] + rng.uniform(0.5, 3.0, int(after.sum()))])
    keep = (t >= st.t0[cust]) & (rng.random(t.size) < cfg.survey_response_prob * _activity(st, cfg, cust, t))
    cust, t = cust[keep], _time_of_day(rng, t[keep], _HOURS_CUSTOMER)
    keep = t < st.stop[cust]
    cust, t = cust[keep], t[keep]
    score = st.sat_base[cust] + rng.normal(0, cfg.satisfaction_noise_sd, t.size)
    end = st.churn[cust]
    score -= cfg.final_satisfaction_drop * _ramp(t, end - cfg.final_decline_days, end)
    sat = np.flatnonzero(st.driver[cust] == _SAT)
    score[sat] -= cfg.low_satisfaction_drop * _ramp(t[sat], st.ramp_start[cust[sat]], end[sat])
    unres = np.flatnonzero(st.driver[cust] == _UNRES)
    score[unres] -= np.where(t[unres] >= st.trigger[cust[unres]], cfg.unresolved_satisfaction_drop, 0.0)
    cols.add(_SURVEY, cust, t, satisfaction=np.clip(np.round(score), 1, 10))

    # price rises: every customer of the region active on that day
    for day, region, delta in trig.schedule:
        idx = np.flatnonzero((st.region == region) & (st.t0 <= day) & (day < st.stop))
        cols.add(_PRICE, idx, np.full(idx.size, day), price_delta=np.full(idx.size, delta))

    # competitor offers (exogenous, until churn)
    keep = trig.offer_t < st.stop[trig.offer_cust]
    cols.add(_OFFER, trig.offer_cust[keep], trig.offer_t[keep])
    return cols


def _basket_lines(
    rng: np.random.Generator, events: pd.DataFrame, cat_pref: np.ndarray, mean: float
) -> pd.DataFrame:
    """Each purchase as 1 + Poisson(mean) lines at its time, like invoice lines of a real log.

    Why: the encoder groups lines into visits (``data.visits.key``); this gives it a log with a known
    one-row-per-purchase truth. Every event gets an ``order_id`` (its row in the one-line log), so a
    purchase's lines share one and other events have their own. The purchase's amount is split in whole
    cents (every line >= 1 cent, so an order has at most as many lines as cents) and its lines sum to it;
    the first line keeps the purchase's category, every further line keeps it with probability 0.6 and
    is otherwise drawn from the customer's category mix.
    """
    purchase = (events["event_type"].cat.codes == _PURCHASE).to_numpy()
    cents = np.round(events["amount"].to_numpy()[purchase] * 100).astype(np.int64)
    count = np.minimum(1 + rng.poisson(mean, cents.size), cents)
    lines = np.ones(len(events), dtype=np.int64)
    lines[purchase] = count
    row = np.repeat(np.arange(len(events), dtype=np.int64), lines)
    out = events.iloc[row].reset_index(drop=True)
    out["order_id"] = row
    if cents.size == 0:
        return out

    # amounts: every line 1 cent plus an Exp-weighted share of the rest; rounding leftovers go to line 0
    at = np.flatnonzero(purchase[row])  # purchase lines, each order's lines contiguous
    order = np.repeat(np.arange(cents.size), count)
    opens = np.cumsum(count) - count
    weight = rng.exponential(1.0, at.size)
    share = weight / np.add.reduceat(weight, opens)[order]
    line_cents = 1 + np.floor(share * (cents - count)[order]).astype(np.int64)
    line_cents[opens] += cents - np.add.reduceat(line_cents, opens)
    amount = out["amount"].to_numpy().copy()
    amount[at] = line_cents / 100.0
    out["amount"] = amount

    # categories: extra lines keep the purchase's category (p 0.6) or draw from the customer's mix
    extra = at[np.arange(at.size) != np.repeat(opens, count)]
    redraw = extra[rng.random(extra.size) >= 0.6]
    codes = out["category"].cat.codes.to_numpy().copy()
    customer = out["customer_id"].cat.codes.to_numpy()[redraw]
    codes[redraw] = _sample_rows(rng, _cumulative(cat_pref), customer)
    out["category"] = _categorical(codes, CATEGORIES)
    return out


# --------------------------------------------------------------------------------------------- public


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
    ``_basket_lines``); 0 or None gives one row per event, exactly as without it.
    """
    cfg = config or SyntheticConfig()
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    if extra_lines_per_purchase is not None and not extra_lines_per_purchase >= 0:
        raise ValueError(f"extra_lines_per_purchase must be >= 0, got {extra_lines_per_purchase}")
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    horizon = (end_ts - start_ts) / pd.Timedelta(days=1)
    if horizon <= cfg.signup_last_gap_days:
        raise ValueError(
            f"end ({end}) must be more than {cfg.signup_last_gap_days} days after start ({start})"
        )

    rng = np.random.default_rng(seed)
    st = _draw_customers(rng, n_customers, horizon, cfg)
    triggers = _plan_churn(rng, st, cfg)
    ids = _customer_ids(n_customers)
    events = _make_events(rng, st, triggers, cfg, start_ts).frame(ids, start_ts)
    if extra_lines_per_purchase:  # drawn after everything else: the same purchases as one-line output
        events = _basket_lines(rng, events, st.cat_pref, extra_lines_per_purchase)

    def as_time(days: np.ndarray) -> np.ndarray:
        finite = np.isfinite(days)
        us = np.where(finite, np.floor(np.where(finite, days, 0) * _SECONDS_PER_DAY) * 1_000_000, 0)
        out = (_epoch_us(start_ts) + us.astype(np.int64)).view("datetime64[us]")
        out[~finite] = np.datetime64("NaT")
        return out

    customer_id = _categorical(np.arange(n_customers, dtype=np.int32), ids)
    customers = pd.DataFrame(
        {
            "customer_id": customer_id,
            "signup_date": as_time(st.signup),
            "region": _categorical(st.region, REGIONS),
            "age_band": _categorical(st.age, AGE_BANDS),
            "income_band": _categorical(st.income, INCOME_BANDS),
            "plan": _categorical(st.plan, PLANS),
        }
    )
    churned = st.churn <= horizon
    driver = np.where(churned, st.driver, _NONE).astype(np.int8)
    truth = pd.DataFrame(
        {
            "customer_id": customer_id,
            "churned": churned,
            "churn_at": as_time(np.where(churned, st.churn, np.inf)),
            "dominant_driver": _categorical(driver, DRIVERS),
            "latent_churn_at": as_time(st.churn),
            "latent_driver": _categorical(st.driver, DRIVERS),
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
            "favourite_category": _categorical(np.argmax(st.cat_pref, axis=1).astype(np.int8), CATEGORIES),
        }
    )
    return SyntheticData(events=events, customers=customers, truth=truth)


_ROW_GROUP_ROWS = 1 << 20


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """One parquet file; categoricals dictionary-encoded, timestamps and order ids (sorted) delta-encoded.

    When ``customer_id`` is a categorical whose codes are sorted (true for all three tables), each
    row group gets a compact dictionary of just its customers. Handing parquet the full million-id
    dictionary for every row group is ~10x slower to write and to read.
    """
    table = pa.Table.from_pandas(frame, preserve_index=False)
    names = table.column_names
    encoding = {c: "DELTA_BINARY_PACKED" for c in ("timestamp", "order_id") if c in names} or None
    options = {
        "compression": "zstd",
        "compression_level": 1,
        "column_encoding": encoding,
        "use_dictionary": [c for c in names if c not in ("timestamp", "order_id")],
    }
    ids = frame["customer_id"] if "customer_id" in names else None
    categorical = ids is not None and isinstance(ids.dtype, pd.CategoricalDtype)
    codes = ids.cat.codes.to_numpy() if categorical else None
    sorted_codes = (
        codes is not None and codes.size > 0 and codes[0] >= 0 and bool(np.all(codes[1:] >= codes[:-1]))
    )
    if not sorted_codes:
        pq.write_table(table, path, row_group_size=_ROW_GROUP_ROWS, **options)
        return
    col = names.index("customer_id")
    field = table.schema.field(col)
    dictionary = table.column(col).chunk(0).dictionary
    # row group i gets ids [lo_i, hi_i]; the ranges tile all ids, so reading back (which unifies the
    # dictionaries in order) gives exactly the original categories
    starts = np.arange(0, table.num_rows, _ROW_GROUP_ROWS)
    lo = codes[starts].astype(np.int64)
    lo[0] = 0
    hi = np.maximum(
        np.r_[lo[1:] - 1, len(dictionary) - 1],
        codes[np.minimum(starts + _ROW_GROUP_ROWS, table.num_rows) - 1],
    )
    with pq.ParquetWriter(path, table.schema, **options) as writer:
        for row, first, last in zip(starts.tolist(), lo.tolist(), hi.tolist(), strict=True):
            part = table.slice(row, _ROW_GROUP_ROWS)
            local = codes[row : row + _ROW_GROUP_ROWS] - first
            compact = pa.DictionaryArray.from_arrays(
                pa.array(local, type=field.type.index_type), dictionary.slice(first, last - first + 1)
            )
            writer.write_table(part.set_column(col, field, compact), row_group_size=_ROW_GROUP_ROWS)


def write(data: SyntheticData, out_dir: str | Path) -> dict[str, Path]:
    """Write events/customers/truth as parquet under ``out_dir``; returns {table name: path}.

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written table.
    Reading back with ``pd.read_parquet`` gives the same dtypes (categoricals stay categorical).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in ("events", "customers", "truth"):
        path = out / f"{name}.parquet"
        with atomic_path(path) as tmp:
            _write_parquet(getattr(data, name), tmp)
        paths[name] = path
    return paths
