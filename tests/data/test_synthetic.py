"""The synthetic generator: schema, determinism, hard invariants, and one behavioural check per churn
mechanism (each would fail if that mechanism were removed from the generator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.synthetic import generate, write
from churnwatch.data.synthetic.columns import (
    AGE_BANDS,
    CATEGORIES,
    CHANNELS,
    DRIVERS,
    EVENT_TYPES,
    INCOME_BANDS,
    OUTCOMES,
    PLANS,
    REGIONS,
)
from churnwatch.data.synthetic.generator import SyntheticData
from tests.helpers import REPO

START, END = pd.Timestamp("2023-01-01"), pd.Timestamp("2024-12-31")
DAY = np.timedelta64(1, "D")
N = 20_000


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(N, seed=0)


class _View:
    """Flat numpy views of the events plus per-customer helpers, shared by the behavioural tests."""

    def __init__(self, data: SyntheticData) -> None:
        ev, truth = data.events, data.truth
        self.n = len(truth)
        self.code = ev["customer_id"].cat.codes.to_numpy()
        self.ts = ev["timestamp"].to_numpy()
        self.type = ev["event_type"].astype(str).to_numpy()
        self.outcome = ev["outcome"].astype(str).to_numpy()
        self.churned = truth["churned"].to_numpy()
        self.driver = truth["dominant_driver"].astype(str).to_numpy()
        self.churn_at = truth["churn_at"].to_numpy()
        self.churn_ev = self.churn_at[self.code]  # the event's customer's churn time
        self.signup = data.customers["signup_date"].to_numpy()
        self.first_seen = np.maximum(self.signup, np.datetime64(START))

    def count(self, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.code[mask], minlength=self.n)

    def before_churn(self, days_from: float, days_to: float) -> np.ndarray:
        """Events in [churn - days_from, churn - days_to) of their (churned) customer."""
        return (self.ts >= self.churn_ev - days_from * DAY) & (self.ts < self.churn_ev - days_to * DAY)


@pytest.fixture(scope="module")
def view(data: SyntheticData) -> _View:
    return _View(data)


def _window_churn(v: _View, cutoff: str, lookback: int = 90, horizon: int = 60) -> tuple[float, int]:
    """Share of customers active in the lookback window with no event at all in [c, c + horizon)."""
    c = np.datetime64(cutoff)
    active = v.count((v.ts >= c - lookback * DAY) & (v.ts < c)) > 0
    future = v.count((v.ts >= c) & (v.ts < c + horizon * DAY)) > 0
    return float((~future[active]).mean()), int(active.sum())


# ------------------------------------------------------------------------------------ determinism


def test_same_seed_same_frames_different_seed_differs() -> None:
    a, b, c = generate(1500, seed=11), generate(1500, seed=11), generate(1500, seed=12)
    for name in ("events", "customers", "truth", "items", "tastes"):  # .equals: dtypes and values, fast
        assert getattr(a, name).equals(getattr(b, name)), name
    assert not a.events.equals(c.events)
    assert not a.truth["churn_at"].equals(c.truth["churn_at"])


def test_tiny_and_invalid_inputs(tmp_path: Path) -> None:
    one = generate(1, seed=3)
    assert len(one.customers) == len(one.truth) == 1
    write(one, tmp_path)  # zero or few events must still write
    with pytest.raises(ValueError):
        generate(0, seed=0)
    with pytest.raises(ValueError):
        generate(10, seed=0, start="2024-01-01", end="2024-02-01")


# ------------------------------------------------------------------------------------------ schema


def test_events_schema(data: SyntheticData) -> None:
    ev = data.events
    assert list(ev.columns) == [
        "customer_id",
        "timestamp",
        "event_type",
        "category",
        "channel",
        "outcome",
        "amount",
        "satisfaction",
        "price_delta",
        "item_id",
        "item_name",
    ]
    assert isinstance(ev["customer_id"].dtype, pd.CategoricalDtype)
    assert ev["timestamp"].dtype == "datetime64[us]"
    for col, values in (
        ("event_type", EVENT_TYPES),
        ("category", CATEGORIES),
        ("channel", CHANNELS),
        ("outcome", OUTCOMES),
    ):
        assert isinstance(ev[col].dtype, pd.CategoricalDtype)
        assert tuple(ev[col].cat.categories) == values
    for col in ("amount", "satisfaction", "price_delta"):
        assert ev[col].dtype == np.float64
    assert ev["event_type"].notna().all() and ev["timestamp"].notna().all()
    assert set(ev["event_type"].unique()) == set(EVENT_TYPES)
    assert ev["customer_id"].astype(str).str.fullmatch(r"C\d{7}").all()


def test_event_columns_filled_exactly_for_their_event_types(data: SyntheticData) -> None:
    ev = data.events
    t = ev["event_type"].astype(str)
    purchase, survey, price = t == "purchase", t == "survey", t == "price_change"
    assert (ev["category"].notna() == purchase).all()
    assert (ev["channel"].notna() == t.isin(["purchase", "visit", "service_contact", "complaint"])).all()
    assert (ev.loc[t == "visit", "channel"] != "phone").all()
    assert (ev.loc[t == "complaint", "outcome"] == "open").all()
    assert set(ev.loc[t == "service_contact", "outcome"].astype(str)) == {"resolved", "info"}
    assert ev.loc[~t.isin(["complaint", "service_contact"]), "outcome"].isna().all()
    assert (ev["amount"].notna() == purchase).all() and (ev.loc[purchase, "amount"] > 0).all()
    sat = ev.loc[survey, "satisfaction"]
    assert (ev["satisfaction"].notna() == survey).all()
    assert sat.between(1, 10).all() and (sat == sat.round()).all()
    assert (ev["price_delta"].notna() == price).all()
    assert ev.loc[price, "price_delta"].between(0.05, 0.15).all()


def test_customer_and_truth_schema(data: SyntheticData) -> None:
    cu, tr = data.customers, data.truth
    assert list(cu.columns) == ["customer_id", "signup_date", "region", "age_band", "income_band", "plan"]
    assert cu["customer_id"].is_unique and len(cu) == N
    assert (cu["customer_id"].astype(str).to_numpy() == tr["customer_id"].astype(str).to_numpy()).all()
    assert cu["signup_date"].dtype == "datetime64[us]"
    assert cu["signup_date"].min() >= START - pd.Timedelta(days=3 * 365)
    assert cu["signup_date"].max() <= END - pd.Timedelta(days=90)
    for col, values in (
        ("region", REGIONS),
        ("age_band", AGE_BANDS),
        ("income_band", INCOME_BANDS),
        ("plan", PLANS),
    ):
        assert tuple(cu[col].cat.categories) == values and cu[col].notna().all()
    assert list(tr.columns[:4]) == ["customer_id", "churned", "churn_at", "dominant_driver"]
    assert tr["churned"].dtype == bool and tr["churn_at"].dtype == "datetime64[us]"
    assert tuple(tr["dominant_driver"].cat.categories) == DRIVERS
    assert (tr["churn_at"].notna() == tr["churned"]).all()
    assert ((tr["dominant_driver"] == "none") == ~tr["churned"]).all()
    assert (tr.loc[tr["churned"], "churn_at"] <= END).all()
    for col in ("purchase_rate_per_week", "basket_mean", "price_sensitivity", "satisfaction_base"):
        assert col in tr.columns and tr[col].notna().all()


def test_write_round_trips_exactly(tmp_path: Path) -> None:
    small = generate(2000, seed=5)
    paths = write(small, tmp_path / "out")
    assert set(paths) == {"events", "customers", "truth", "items", "tastes"}
    for name, path in paths.items():
        assert path.name == f"{name}.parquet" and path.exists()
        assert pd.read_parquet(path).equals(getattr(small, name)), name  # dtypes and values, fast
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())


# ------------------------------------------------------------------------------------- invariants


def test_events_sorted_and_inside_each_customers_lifetime(view: _View) -> None:
    order = np.lexsort((view.ts, view.code))
    assert (order == np.arange(order.size)).all()
    assert view.ts.min() >= np.datetime64(START) and view.ts.max() <= np.datetime64(END)
    assert (view.ts >= view.signup[view.code]).all()
    churned = ~np.isnat(view.churn_ev)
    assert (view.ts[churned] <= view.churn_ev[churned]).all()


def test_every_driver_occurs_with_a_real_share(data: SyntheticData) -> None:
    shares = data.truth.loc[data.truth["churned"], "dominant_driver"].value_counts(normalize=True)
    for driver in DRIVERS[1:]:
        assert shares[driver] > 0.03, (driver, shares.to_dict())
    assert 0.4 < data.truth["churned"].mean() < 0.95


def test_calibration_events_and_window_churn(data: SyntheticData, view: _View) -> None:
    per_customer = len(data.events) / N
    assert 20 <= per_customer <= 45
    for cutoff in ("2024-06-01", "2024-10-15"):
        rate, active = _window_churn(view, cutoff)
        assert active > 0.2 * N
        assert 0.15 <= rate <= 0.35, (cutoff, rate)
    december = data.events.loc[data.events["event_type"] == "purchase", "timestamp"].dt.month == 12
    november = data.events.loc[data.events["event_type"] == "purchase", "timestamp"].dt.month == 11
    assert december.sum() > 1.2 * november.sum()  # seasonal peak


# ---------------------------------------------------------------------- one check per mechanism


def _last_complaint(view: _View) -> np.ndarray:
    last = np.full(view.n, np.datetime64("NaT"), dtype="datetime64[us]")
    idx = np.flatnonzero(view.type == "complaint")
    last[view.code[idx]] = view.ts[idx]  # events are sorted, so the last write is the last complaint
    return last


def test_unresolved_complaint_is_the_last_word(view: _View) -> None:
    last = _last_complaint(view)
    has = ~np.isnat(last)
    open_last = has & (view.count((view.outcome == "resolved") & (view.ts > last[view.code])) == 0)
    uc = has & (view.driver == "unresolved_complaint")
    stay = has & ~view.churned
    assert uc.sum() > 100 and stay.sum() > 100
    assert open_last[uc].mean() > 0.95
    assert open_last[stay].mean() < 0.4  # most complaints of those who stay get resolved


def test_unresolved_complaint_leavers_stop_buying_after_it(view: _View) -> None:
    complaint, resolved = view.type == "complaint", view.outcome == "resolved"
    first = np.full(view.n, np.datetime64("NaT"), dtype="datetime64[us]")
    idx = np.flatnonzero(complaint)[::-1]
    first[view.code[idx]] = view.ts[idx]
    assert (view.ts[resolved] > first[view.code[resolved]]).all()  # a resolution answers a complaint
    stay = ~view.churned[view.code]
    assert view.count(resolved & stay).sum() > 0.6 * view.count(complaint & stay).sum()
    # purchase rate after the (unresolved) last complaint vs before it
    last = _last_complaint(view)
    uc = (view.driver == "unresolved_complaint") & ~np.isnat(last)
    after_days = (view.churn_at - last) / DAY
    before_days = (last - view.first_seen) / DAY
    purchase = view.type == "purchase"
    after = view.count(purchase & (view.ts > last[view.code]))
    before = view.count(purchase & (view.ts < last[view.code]))
    rate_after = after[uc].sum() / after_days[uc].sum()
    rate_before = before[uc].sum() / before_days[uc].sum()
    assert rate_after < 0.3 * rate_before, (rate_after, rate_before)


def test_fixes_that_do_not_stick_come_back_and_stay_open(view: _View) -> None:
    """resolution -> new complaint (an order-only pattern) is common and riskier than a first complaint."""
    rel = np.flatnonzero((view.type == "complaint") | (view.outcome == "resolved"))
    code, ts, is_complaint = view.code[rel], view.ts[rel], view.type[rel] == "complaint"
    same_prev = np.r_[False, code[1:] == code[:-1]]
    same_next = np.r_[code[1:] == code[:-1], False]
    gap = ts - np.r_[ts[:1], ts[:-1]]
    after_fix = is_complaint & same_prev & np.r_[False, ~is_complaint[:-1]] & (gap < 30 * DAY)
    fixed_next = same_next & np.r_[~is_complaint[1:], False]
    first = is_complaint & ~after_fix
    assert after_fix.sum() > 0.08 * is_complaint.sum()
    assert fixed_next[after_fix].mean() < fixed_next[first].mean() - 0.15


def test_disengagement_rate_falls_before_churn(view: _View) -> None:
    purchase = view.type == "purchase"
    early_days = np.maximum((view.churn_at - 120 * DAY - view.first_seen) / DAY, 0)

    def ratio(driver: str | None) -> float:
        who = view.churned & (early_days > 60)
        who &= (view.driver == driver) if driver else (view.driver != "disengagement")
        recent = view.count(purchase & view.before_churn(60, 0))[who].sum() / (60 * who.sum())
        early = view.count(purchase & (view.ts < view.churn_ev - 120 * DAY))[who].sum()
        early /= early_days[who].sum()
        return recent / early

    dis, others = ratio("disengagement"), ratio(None)
    assert dis < 0.6 and dis < others - 0.15, (dis, others)


def test_price_rise_leavers_churn_soon_after_a_price_change(view: _View) -> None:
    had = view.count((view.type == "price_change") & view.before_churn(90, 0)) > 0
    price = view.driver == "price_rise"
    other = view.churned & ~price
    assert had[price].mean() > 0.9 and had[price].mean() > had[other].mean() + 0.3


def test_category_shift_moves_purchases_to_clearance(data: SyntheticData, view: _View) -> None:
    purchase = view.type == "purchase"
    clearance = purchase & (data.events["category"].astype(str).to_numpy() == "clearance")
    recent, early = view.before_churn(60, 0), view.ts < view.churn_ev - 120 * DAY

    def share(who: np.ndarray, when: np.ndarray) -> float:
        return view.count(clearance & when)[who].sum() / view.count(purchase & when)[who].sum()

    shift = view.driver == "category_shift"
    other = view.churned & ~shift
    assert share(shift, recent) > 2 * share(shift, early)
    assert share(shift, recent) > 2 * share(other, recent)


def test_low_satisfaction_scores_fall_before_churn(data: SyntheticData, view: _View) -> None:
    survey = view.type == "survey"
    score = data.events["satisfaction"].to_numpy()
    ref = np.where(view.churned, view.churn_at, np.datetime64(END))[view.code]
    recent = survey & (view.ts >= ref - 90 * DAY) & (view.ts < ref)
    total = np.bincount(view.code[recent], weights=score[recent], minlength=view.n)
    count = view.count(recent)

    def mean(who: np.ndarray) -> float:
        return total[who].sum() / count[who].sum()

    low = view.driver == "low_satisfaction"
    assert mean(low) < mean(view.churned & ~low) - 1.5
    assert mean(low) < mean(~view.churned) - 1.5
    contacts = view.count((view.type == "service_contact") & (view.ts >= ref - 90 * DAY) & (view.ts < ref))
    assert contacts[low].mean() > 1.3 * contacts[~view.churned].mean()


def test_competitor_offer_leavers_had_a_recent_offer(view: _View) -> None:
    had = view.count((view.type == "competitor_offer") & view.before_churn(60, 0)) > 0
    comp = view.driver == "competitor_offer"
    assert had[comp].mean() > 0.9 and had[comp].mean() > had[view.churned & ~comp].mean() + 0.5


def test_short_tenure_leavers_churn_soon_after_signup(data: SyntheticData, view: _View) -> None:
    tenure = (view.churn_at - view.signup) / DAY
    short = view.driver == "short_tenure"
    assert np.median(tenure[short]) < 60 and np.median(tenure[view.churned & ~short]) > 300
    young = data.customers["age_band"].isin(["18-24", "25-34"]).to_numpy()
    assert short[young].mean() > 1.5 * short[~young].mean()


def test_complaint_then_silence_is_worse_than_silence_then_complaint(view: _View) -> None:
    """An order-only signal: same counts in the last 30 days (1 complaint, no purchase/visit)."""
    early_hits = late_hits = early_n = late_n = 0
    for cutoff in ("2024-03-01", "2024-06-01", "2024-08-01", "2024-10-15"):
        c = np.datetime64(cutoff)
        active = view.count((view.ts >= c - 90 * DAY) & (view.ts < c)) > 0
        churn = view.count((view.ts >= c) & (view.ts < c + 60 * DAY)) == 0
        window = (view.ts >= c - 30 * DAY) & (view.ts < c)
        complaint = window & (view.type == "complaint")
        quiet = view.count(window & np.isin(view.type, ["purchase", "visit"])) == 0
        when = np.full(view.n, np.datetime64("NaT"), dtype="datetime64[us]")
        when[view.code[complaint]] = view.ts[complaint]
        base = active & quiet & (view.count(complaint) == 1)
        early, late = base & (when < c - 20 * DAY), base & (when >= c - 7 * DAY)
        early_hits, early_n = early_hits + churn[early].sum(), early_n + early.sum()
        late_hits, late_n = late_hits + churn[late].sum(), late_n + late.sum()
    assert early_n > 50 and late_n > 30
    assert early_hits / early_n > late_hits / late_n + 0.15


# ----------------------------------------------------------------------------------- basket lines


def test_no_extra_lines_is_the_one_line_log_exactly() -> None:
    plain = generate(1500, seed=7)
    for off in (0, 0.0, None):
        same = generate(1500, seed=7, extra_lines_per_purchase=off)
        for name in ("events", "customers", "truth"):  # .equals: dtypes and values, fast on categoricals
            assert getattr(same, name).equals(getattr(plain, name)), (off, name)
    with pytest.raises(ValueError):
        generate(10, seed=0, extra_lines_per_purchase=-1)


def test_basket_lines_split_each_purchase_into_an_order(tmp_path: Path) -> None:
    plain, lined = generate(1500, seed=7), generate(1500, seed=7, extra_lines_per_purchase=3)
    assert lined.truth.equals(plain.truth) and lined.customers.equals(plain.customers)
    ev = lined.events
    assert ev["order_id"].dtype == np.int64 and ev["order_id"].is_monotonic_increasing
    # one row per order id is the one-line log, but for the purchase's amount (split across its lines)
    firsts = ev.drop_duplicates("order_id").drop(columns="order_id").reset_index(drop=True)
    per_line = ["amount", "item_id", "item_name"]  # the items are drawn per line (test_synthetic_items.py)
    assert firsts.drop(columns=per_line).equals(plain.events.drop(columns=per_line))
    orders = ev.groupby("order_id", sort=True)
    purchase = (plain.events["event_type"] == "purchase").to_numpy()
    sizes = orders.size().to_numpy()
    assert (sizes[~purchase] == 1).all() and (sizes[purchase] >= 1).all()
    assert 3.5 < sizes[purchase].mean() < 4.5  # 1 + Poisson(3)
    # a line carries its order's customer, time and channel; the order's total is the purchase's amount
    for col in ("customer_id", "timestamp", "event_type", "channel"):
        assert (orders[col].nunique(dropna=False) == 1).all()
    cents = np.round(orders["amount"].sum(min_count=1).to_numpy()[purchase] * 100)
    np.testing.assert_array_equal(cents, np.round(plain.events.loc[purchase, "amount"].to_numpy() * 100))
    assert (ev.loc[ev["event_type"] == "purchase", "amount"] >= 0.01).all()
    # further lines mostly keep the purchase's category, and sometimes come from the customer's mix
    line_cat = ev["category"].astype(str).to_numpy()
    order_cat = plain.events["category"].astype(str).to_numpy()[ev["order_id"].to_numpy()]
    extra = (ev["event_type"] == "purchase").to_numpy() & ev["order_id"].duplicated().to_numpy()
    kept = (line_cat[extra] == order_cat[extra]).mean()
    assert 0.6 < kept < 0.95, kept
    write(lined, tmp_path)
    assert pd.read_parquet(tmp_path / "events.parquet").equals(ev)


# ------------------------------------------------------------------------------------- entry point


@pytest.mark.parametrize("extra_lines", [0, 2])
def test_make_synthetic_script_writes_without_littering(tmp_path: Path, extra_lines: int) -> None:
    out = tmp_path / "syn"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_synthetic.py"),
            f"out_dir={out}",
            "n_customers=300",
            "seed=4",
            f"extra_lines_per_purchase={extra_lines}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("events", "customers", "truth", "items", "tastes"):
        assert (out / f"{name}.parquet").exists()
        assert name in result.stdout
    assert "churned" in result.stdout
    assert not (tmp_path / "outputs").exists()
    expected = generate(300, seed=4, extra_lines_per_purchase=extra_lines)
    for name in ("events", "truth"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), getattr(expected, name))
