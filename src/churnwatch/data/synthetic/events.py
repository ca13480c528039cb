"""Every event of every customer (phase B), given the churn plan: purchases and visits from seasonal,
declining Poisson processes, service contacts, complaints and their resolutions, surveys, price changes and
competitor offers, all cut at the churn time; optionally purchases split into basket lines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnwatch.data.synthetic.churn import ChurnTriggers
from churnwatch.data.synthetic.columns import (
    CATEGORIES,
    CHANNELS,
    CLEARANCE,
    EVENT_TYPES,
    OUTCOMES,
    PHONE,
    SECONDS_PER_DAY,
    Driver,
    EventType,
    Outcome,
    categorical,
    epoch_us,
)
from churnwatch.data.synthetic.config import SyntheticConfig
from churnwatch.data.synthetic.population import MAX_PAUSES, CustomerState
from churnwatch.data.synthetic.sampling import (
    HOURS_CUSTOMER,
    HOURS_OFFICE,
    cumulative,
    poisson_uniform,
    ramp,
    sample_rows,
    time_of_day,
)


def _activity(
    st: CustomerState, cfg: SyntheticConfig, cust: np.ndarray, t: np.ndarray, pauses: bool = True
) -> np.ndarray:
    """Multiplier (<= 1) of a customer's baseline activity at time t: pauses, pre-churn declines."""
    m = np.ones(t.size)
    if pauses:
        for j in range(MAX_PAUSES):
            m[(t >= st.pause_start[j][cust]) & (t < st.pause_end[j][cust])] *= cfg.pause_activity
    drv = st.driver[cust]
    for d, floor in (
        (Driver.DISENGAGEMENT, cfg.disengagement_floor),
        (Driver.CATEGORY_SHIFT, cfg.category_shift_activity),
        (Driver.LOW_SATISFACTION, cfg.low_satisfaction_activity),
    ):
        sel = np.flatnonzero(drv == d)
        c = cust[sel]
        m[sel] *= 1.0 - (1.0 - floor) * ramp(t[sel], st.ramp_start[c], st.churn[c])
    for d, level in (
        (Driver.UNRESOLVED_COMPLAINT, cfg.unresolved_activity),
        (Driver.PRICE_RISE, cfg.price_activity),
        (Driver.COMPETITOR_OFFER, cfg.competitor_activity),
    ):
        sel = np.flatnonzero(drv == d)
        m[sel] *= np.where(t[sel] >= st.trigger[cust[sel]], level, 1.0)
    end = st.churn[cust]
    sel = np.flatnonzero(t > end - cfg.final_decline_days)
    m[sel] *= 1.0 - cfg.final_decline * ramp(t[sel], end[sel] - cfg.final_decline_days, end[sel])
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
    rng: np.random.Generator,
    st: CustomerState,
    cfg: SyntheticConfig,
    rate: np.ndarray,
    grid: tuple[np.ndarray, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Purchase/visit times: seasonal inhomogeneous Poisson process thinned by the activity multiplier."""
    c1, t1 = poisson_uniform(rng, rate, st.t0, st.stop)
    c2, t2 = _seasonal_process(rng, rate * st.season_amp, st.t0, st.stop, grid)
    cust, t = np.concatenate([c1, c2]), np.concatenate([t1, t2])
    keep = rng.random(t.size) < _activity(st, cfg, cust, t)
    cust, t = cust[keep], time_of_day(rng, t[keep], HOURS_CUSTOMER)
    keep = t < st.stop[cust]
    return cust[keep], t[keep]


class EventColumns:
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
        seconds = np.floor(np.concatenate([b["t"] for b in self.blocks]) * SECONDS_PER_DAY).astype(np.int64)
        etype = np.concatenate([b["type"] for b in self.blocks])
        key = (cust.astype(np.int64) << np.int64(35)) | (seconds << np.int64(3)) | etype.astype(np.int64)
        order = np.argsort(key)
        del key
        out = {
            "customer_id": categorical(cust[order], ids),
            "timestamp": (epoch_us(start) + seconds[order] * 1_000_000).view("datetime64[us]"),
            "event_type": categorical(etype[order], EVENT_TYPES),
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
                out[name] = categorical(col, cats)
            else:
                out[name] = col
        return pd.DataFrame(out, copy=False)


def make_events(
    rng: np.random.Generator,
    st: CustomerState,
    trig: ChurnTriggers,
    cfg: SyntheticConfig,
    start: pd.Timestamp,
) -> EventColumns:
    """All events of every customer in [max(signup, start), min(churn, end))."""
    cols = EventColumns()
    grid = _seasonal_grid(start, st.horizon, cfg)
    chan_cum = cumulative(st.chan_pref)
    no_phone = st.chan_pref.copy()
    no_phone[:, PHONE] = 0.0
    visit_chan_cum = cumulative(no_phone)

    def contact_channel(cust: np.ndarray) -> np.ndarray:
        chan = sample_rows(rng, chan_cum, cust)
        return np.where(rng.random(cust.size) < 0.5, np.int8(PHONE), chan).astype(np.int8)

    # purchases: category from preferences (shifted for category_shift leavers), basket, channel
    cust, t = _activity_events(rng, st, cfg, st.purchase_rate, grid)
    cat = sample_rows(rng, cumulative(st.cat_pref), cust)
    shift = np.flatnonzero(st.driver[cust] == Driver.CATEGORY_SHIFT)
    c = cust[shift]
    share = cfg.category_shift_max_share * ramp(t[shift], st.ramp_start[c], st.churn[c])
    moved = shift[rng.random(shift.size) < share]
    if moved.size:
        anti = (1.0 - st.cat_pref[cust[moved]]) ** 4
        anti[:, CLEARANCE] = 0.0
        other = sample_rows(rng, cumulative(anti), np.arange(moved.size))
        to_clearance = rng.random(moved.size) < cfg.category_shift_clearance_share
        cat[moved] = np.where(to_clearance, np.int8(CLEARANCE), other)
    cat_mult = np.array([0.8, 1.5, 2.6, 1.2, 0.8, 1.0, 1.3, 0.5])
    basket = np.ones(t.size)
    dis = np.flatnonzero(st.driver[cust] == Driver.DISENGAGEMENT)
    c = cust[dis]
    basket[dis] -= (1.0 - cfg.disengagement_basket_floor) * ramp(t[dis], st.ramp_start[c], st.churn[c])
    noise = np.exp(cfg.basket_noise_sigma * rng.standard_normal(t.size) - cfg.basket_noise_sigma**2 / 2)
    amount = np.maximum(np.round(st.basket_mean[cust] * cat_mult[cat] * basket * noise, 2), 0.5)
    cols.add(
        EventType.PURCHASE, cust, t, category=cat, channel=sample_rows(rng, chan_cum, cust), amount=amount
    )

    # visits (no purchase): same seasonality and declines, never by phone
    cust, t = _activity_events(rng, st, cfg, st.visit_rate, grid)
    cols.add(EventType.VISIT, cust, t, channel=sample_rows(rng, visit_chan_cum, cust))

    # info service contacts: baseline, plus a boost in the low-satisfaction decline window
    c1, t1 = poisson_uniform(rng, st.info_rate, st.t0, st.stop)
    boost_lo = np.where(st.driver == Driver.LOW_SATISFACTION, np.maximum(st.ramp_start, st.t0), st.stop)
    c2, t2 = poisson_uniform(rng, st.info_rate * cfg.low_satisfaction_contact_boost, boost_lo, st.stop)
    cust, t = np.concatenate([c1, c2]), np.concatenate([t1, t2])
    keep = rng.random(t.size) < _activity(st, cfg, cust, t, pauses=False)
    cust, t = cust[keep], time_of_day(rng, t[keep], HOURS_OFFICE)
    keep = t < st.stop[cust]
    info_cust, info_t = cust[keep], t[keep]
    cols.add(
        EventType.SERVICE_CONTACT,
        info_cust,
        info_t,
        channel=contact_channel(info_cust),
        outcome=np.full(info_t.size, Outcome.INFO, dtype=np.int8),
    )

    # complaints and their resolutions (phase A drew them; here we cut them at the churn time)
    keep = trig.complaint_t < st.stop[trig.complaint_cust]
    cust, t = trig.complaint_cust[keep], trig.complaint_t[keep]
    cols.add(
        EventType.COMPLAINT,
        cust,
        t,
        channel=contact_channel(cust),
        outcome=np.full(t.size, Outcome.OPEN, dtype=np.int8),
    )
    res_t = trig.resolution_t[keep]
    keep = res_t < st.stop[cust]
    res_cust, res_t = cust[keep], res_t[keep]
    cols.add(
        EventType.SERVICE_CONTACT,
        res_cust,
        res_t,
        channel=contact_channel(res_cust),
        outcome=np.full(res_t.size, Outcome.RESOLVED, dtype=np.int8),
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
    cust, t = cust[keep], time_of_day(rng, t[keep], HOURS_CUSTOMER)
    keep = t < st.stop[cust]
    cust, t = cust[keep], t[keep]
    score = st.sat_base[cust] + rng.normal(0, cfg.satisfaction_noise_sd, t.size)
    end = st.churn[cust]
    score -= cfg.final_satisfaction_drop * ramp(t, end - cfg.final_decline_days, end)
    sat = np.flatnonzero(st.driver[cust] == Driver.LOW_SATISFACTION)
    score[sat] -= cfg.low_satisfaction_drop * ramp(t[sat], st.ramp_start[cust[sat]], end[sat])
    unres = np.flatnonzero(st.driver[cust] == Driver.UNRESOLVED_COMPLAINT)
    score[unres] -= np.where(t[unres] >= st.trigger[cust[unres]], cfg.unresolved_satisfaction_drop, 0.0)
    cols.add(EventType.SURVEY, cust, t, satisfaction=np.clip(np.round(score), 1, 10))

    # price rises: every customer of the region active on that day
    for day, region, delta in trig.schedule:
        idx = np.flatnonzero((st.region == region) & (st.t0 <= day) & (day < st.stop))
        cols.add(EventType.PRICE_CHANGE, idx, np.full(idx.size, day), price_delta=np.full(idx.size, delta))

    # competitor offers (exogenous, until churn)
    keep = trig.offer_t < st.stop[trig.offer_cust]
    cols.add(EventType.COMPETITOR_OFFER, trig.offer_cust[keep], trig.offer_t[keep])
    return cols


def basket_lines(
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
    purchase = (events["event_type"].cat.codes == EventType.PURCHASE).to_numpy()
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
    codes[redraw] = sample_rows(rng, cumulative(cat_pref), customer)
    out["category"] = categorical(codes, CATEGORIES)
    return out
