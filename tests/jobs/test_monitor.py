"""Monitoring: PSI and the verdict by hand, then a tiny trained model monitored on its own data (ok), on a
shifted copy (retrain), with a backtest at its test cutoff."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from churnwatch.artifact.export import export_checkpoint
from churnwatch.artifact.model_file import load_artifact
from churnwatch.config.compose import compose
from churnwatch.data.schema import MISSING
from churnwatch.data.snapshots import EventLog, build_snapshot
from churnwatch.errors import ConfigError, MonitorError
from churnwatch.features.stats import OOV, Vocabulary
from churnwatch.jobs.monitor import LabelSource, run_monitor, write_report
from churnwatch.monitoring.drift import (
    backtest,
    bin_shares,
    distribution,
    freshness_stats,
    key_features,
    oov_shares,
    psi,
    shift,
    verdict,
)
from churnwatch.runs.train import train
from tests.helpers import MONITOR_THRESHOLDS, REPO, TINY


# -- psi and bins --------------------------------------------------------------------------------------------
def test_psi_is_zero_for_identical_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    ref = distribution(rng.normal(size=20_000))
    assert psi(ref["shares"], ref["shares"]) == 0.0
    values = [shift(ref, rng.normal(loc=mu, size=20_000))["psi"] for mu in (0.0, 0.2, 0.5, 1.0)]
    assert values[0] < 0.01  # sampling noise only
    assert values == sorted(values) and values[-1] > 0.25


def test_psi_is_symmetric_non_negative_and_finite_with_empty_bins():
    rng = np.random.default_rng(1)
    for _ in range(20):
        e, a = rng.dirichlet(np.ones(10)), rng.dirichlet(np.ones(10))
        assert psi(e, a) == pytest.approx(psi(a, e))
        assert psi(e, a) >= 0
    assert np.isfinite(psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])) and psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) > 1
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])


def test_quantile_bins_merge_ties_and_are_right_closed():
    counts = np.r_[np.zeros(700), np.ones(200), np.full(100, 5.0)]  # a count feature: mostly zero
    ref = distribution(counts)
    assert ref["edges"] == [0.0, 1.0] and ref["shares"] == pytest.approx([0.7, 0.2, 0.1])
    assert bin_shares([0.0, 0.5, 1.0, 2.0], [0.0, 1.0]) == [0.25, 0.5, 0.25]
    assert shift(ref, counts)["psi"] == 0.0


# -- vocabulary coverage --------------------------------------------------------------------------------
def test_oov_share_counts_unseen_values_but_not_the_missing_token():
    vocab = Vocabulary.fit(pd.Series(["a", "b", MISSING, "a"]))
    today = pd.Series(["a", "new", MISSING, MISSING, "b", "other"])
    cat = vocab.lookup(today)[:, None]
    assert (cat[:, 0] == OOV).sum() == 2
    out = oov_shares(cat, {"cat": vocab.tokens}, ["cat"])
    assert out["cat"] == {"share": 0.5, "values": 4}  # 2 unknown of the 4 events with a value


# -- feature choice, verdict, backtest -----------------------------------------------------------------------
def test_key_features_default_to_those_present_plus_patterns():
    names = ["recency_days", "spend_90d", "n_event_type_complaint_90d", "satisfaction_mean_recent", "x"]
    assert key_features(names) == [
        "recency_days",
        "spend_90d",
        "satisfaction_mean_recent",
        "n_event_type_complaint_90d",
    ]
    assert key_features(names, ["x"]) == ["x"]
    with pytest.raises(ConfigError, match="not in the reference"):
        key_features(names, ["nope"])


def _report(feature_psi=0.0, score_psi=0.0, oov=0.0, volume=1.0, customers=1.0, tier=0.0):
    return {
        "features": {"recency_days": {"psi": feature_psi, "training_drift": None}},
        "score": {"psi": score_psi, "training_drift": None},
        "oov": {"category": {"increase": oov}},
        "volume": {"events_per_customer_30d": {"ratio": volume}, "customers": {"ratio": customers}},
        "tiers": {"high": {"diff": tier}, "medium": {"diff": -tier}, "low": {"diff": 0.0}},
    }


@pytest.mark.parametrize(
    ("kwargs", "level", "check"),
    [
        ({}, "ok", None),
        ({"feature_psi": 0.099}, "ok", None),
        ({"feature_psi": 0.1}, "warn", "feature_psi"),
        ({"score_psi": 0.3}, "retrain", "score_psi"),
        ({"oov": 0.02}, "warn", "oov"),
        ({"oov": -0.2}, "ok", None),  # fewer unknown values is no drift
        ({"volume": 0.6}, "retrain", "volume"),  # 0.6 is 1/1.67: as far off as 1.67
        ({"volume": 1.3}, "warn", "volume"),
        ({"volume": 0.0}, "retrain", "volume"),  # no events at all
        ({"customers": 10.0}, "warn", "volume"),  # population_ratio never retrains (null)
        ({"tier": -0.06}, "warn", "tier_share"),
    ],
)
def test_verdict_levels(kwargs, level, check):
    got, reasons = verdict(_report(**kwargs), MONITOR_THRESHOLDS)
    assert got == level
    assert [r["check"] for r in reasons] == ([check] if check else [])


def test_psi_limits_rise_to_the_drift_seen_in_training_but_never_fall():
    report = _report(feature_psi=0.3)
    report["features"]["recency_days"]["training_drift"] = 0.5  # tested across more drift than today's
    assert verdict(report, MONITOR_THRESHOLDS)[0] == "ok"
    report["features"]["recency_days"]["training_drift"] = 0.27
    assert verdict(report, MONITOR_THRESHOLDS)[1][0] == {
        "check": "feature_psi", "name": "recency_days", "value": 0.3, "limit": 0.27, "level": "retrain"
    }  # fmt: skip
    report["features"]["recency_days"]["training_drift"] = 0.01  # a stable feature keeps 0.1 / 0.25
    assert verdict(report, MONITOR_THRESHOLDS)[0] == "retrain"
    strict = {**MONITOR_THRESHOLDS, "psi": {"warn": 0.1, "retrain": 0.25, "tolerate_training_drift": False}}
    report["features"]["recency_days"]["training_drift"] = 0.5
    assert verdict(report, strict)[0] == "retrain"


def test_verdict_lists_the_worst_reason_first():
    got, reasons = verdict(_report(feature_psi=0.12, oov=0.2), MONITOR_THRESHOLDS)
    assert got == "retrain"
    assert [(r["check"], r["level"]) for r in reasons] == [("oov", "retrain"), ("feature_psi", "warn")]
    assert reasons[0]["limit"] == 0.05


def test_freshness_counts_the_whole_days_without_any_event_before_the_cutoff(loaded):
    log = EventLog.from_frame(loaded.frame)
    newest = pd.Timestamp(log.ts.max())
    for cutoff, silent in [
        (newest + pd.Timedelta(hours=1), 0),
        (newest.normalize() + pd.Timedelta(days=4), 3),
    ]:
        fresh = freshness_stats(log, build_snapshot(log, cutoff, None))
        assert fresh == {"last_event": str(newest), "silent_days": float(silent)}
    early = pd.Timestamp(log.ts.min()).normalize() + pd.Timedelta(days=30)
    before = pd.Timestamp(log.ts[log.ts < early.value].max())  # the newest event before that cutoff
    assert freshness_stats(log, build_snapshot(log, early, None)) == {
        "last_event": str(before),
        "silent_days": float((early - before).days),
    }


@pytest.mark.parametrize(("silent", "thresholds", "level"), [
    (2.0, MONITOR_THRESHOLDS, "ok"), (3.0, MONITOR_THRESHOLDS, "warn"),
    (30.0, MONITOR_THRESHOLDS, "warn"),  # retrain: null
    (30.0, {k: v for k, v in MONITOR_THRESHOLDS.items() if k != "freshness"}, "ok"),  # older configs
])  # fmt: skip
def test_verdict_warns_on_a_stale_input(silent, thresholds, level):
    report = {**_report(), "freshness": {"last_event": "2024-01-01 10:00:00", "silent_days": silent}}
    got, reasons = verdict(report, thresholds)
    assert got == level
    assert [(r["check"], r["name"], r["value"]) for r in reasons] == (
        [("freshness", "silent_days", silent)] if level != "ok" else []
    )


def test_backtest_auroc_and_precision_per_tier():
    probs = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1, 0.05])
    labels = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    tiers = np.array(["high", "high", "medium", "medium", "low", "low", "low", "low"])
    out = backtest(probs, labels, tiers)
    assert out["auroc"] == pytest.approx(14 / 15)
    assert out["tiers"]["high"] == {"customers": 2, "churners": 2, "precision": 1.0, "recall": 2 / 3}
    assert out["tiers"]["medium"]["precision"] == 0.5 and out["tiers"]["low"]["precision"] == 0.0
    assert backtest(probs, np.zeros(8), tiers)["auroc"] is None  # one class: no AUROC


# -- end to end ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    overrides = [
        f"data.data_dir={root / 'data'}",
        f"paths.output_dir={root / 'run'}",
        "insights.enabled=false",
    ]
    cfg = compose("train", [*overrides, *TINY])
    (root / "run").mkdir()
    metrics = train(cfg)
    return root, metrics, str(cfg.data.test_cutoff)


def _monitor(root, events, as_of, **kwargs):
    return run_monitor(
        root / "run" / "model.pt",
        events,
        MONITOR_THRESHOLDS,
        customers_path=root / "data" / "customers.parquet",
        as_of=as_of,
        device="cpu",
        **kwargs,
    )


def test_training_data_at_the_test_cutoff_is_ok_and_backtests_like_the_test(trained, tmp_path):
    root, metrics, cutoff = trained
    _, meta = load_artifact(root / "run" / "model.pt")
    reference = meta["reference"]
    assert reference["split"] == "test" and reference["cutoff"] == cutoff and reference["drift_from"] < cutoff
    assert reference["features"]["recency_days"]["training_drift"] >= 0
    report = _monitor(root, root / "data" / "events.parquet", cutoff)
    assert report["verdict"] == "ok", report["reasons"]
    assert report["score"]["psi"] < 1e-3 and max(f["psi"] for f in report["features"].values()) < 1e-9
    assert all(o["increase"] == 0 for o in report["oov"].values())
    assert report["population"]["active"] == metrics["sizes"]["test_rows"]
    bt = report["backtest"]
    assert bt["available"] and 0 <= bt["auroc"] <= 1
    assert bt["auroc"] == pytest.approx(metrics["test"]["test/auroc"], abs=1e-3)  # the same labels and scores
    assert {t["precision"] is not None for t in bt["tiers"].values()} == {True}
    assert "expected_precision" in bt["tiers"]["high"]
    json.loads(write_report(report, tmp_path).read_text())  # strict JSON

    # the same labels from a file with its own column names
    derived = pd.read_parquet(root / "run" / "predictions.parquet")
    test = derived[derived["split"] == "test"]
    path = tmp_path / "labels.csv"
    test.rename(columns={"customer_id": "cust", "label": "left"})[["cust", "left"]].to_csv(path, index=False)
    from_file = _monitor(
        root, root / "data" / "events.parquet", cutoff, labels=LabelSource(str(path), "cust", "left")
    )["backtest"]
    assert from_file["labels"].startswith("file") and from_file["auroc"] == pytest.approx(bt["auroc"])


def test_shifted_data_says_retrain_and_names_the_checks(trained, tmp_path):
    root, _, cutoff = trained
    events = pd.read_parquet(root / "data" / "events.parquet")
    events["amount"] *= 3
    purchase = np.flatnonzero(events["event_type"].astype(str).to_numpy() == "purchase")
    rng = np.random.default_rng(0)
    category = events["category"].astype(object).to_numpy(copy=True)
    category[rng.choice(purchase, size=len(purchase) // 3, replace=False)] = "crypto"
    events["category"] = category
    path = tmp_path / "shifted.parquet"
    events.to_parquet(path)
    report = _monitor(root, path, cutoff)
    assert report["verdict"] == "retrain"
    drivers = {(r["check"], r["name"]) for r in report["reasons"] if r["level"] == "retrain"}
    assert ("feature_psi", "spend_90d") in drivers and ("oov", "category") in drivers
    assert report["oov"]["category"]["today"] == pytest.approx(1 / 3, abs=0.05)


def test_a_late_feed_is_flagged_as_stale(trained, tmp_path):
    root, _, cutoff = trained
    events = pd.read_parquet(root / "data" / "events.parquet")
    ts = pd.to_datetime(events["timestamp"])
    late = events[~((ts >= pd.Timestamp(cutoff) - pd.Timedelta(days=5)) & (ts < pd.Timestamp(cutoff)))]
    path = tmp_path / "late.parquet"
    late.to_parquet(path)
    kwargs = {"customers_path": root / "data" / "customers.parquet", "as_of": cutoff, "device": "cpu"}
    events = root / "data" / "events.parquet"
    clean = run_monitor(root / "run" / "model.pt", events, MONITOR_THRESHOLDS, **kwargs)
    assert clean["verdict"] == "ok" and clean["freshness"]["silent_days"] == 0
    report = run_monitor(root / "run" / "model.pt", path, MONITOR_THRESHOLDS, **kwargs)
    assert report["freshness"]["silent_days"] == 5 and report["verdict"] != "ok"
    assert {"check": "freshness", "name": "silent_days", "value": 5.0, "limit": 3.0, "level": "warn"} in (
        report["reasons"]
    )


def test_no_backtest_without_labels_and_a_clear_error_without_reference(trained, tmp_path):
    root, _, _ = trained
    report = _monitor(root, root / "data" / "events.parquet", None)  # the day after the last event
    assert not report["backtest"]["available"] and "horizon" in report["backtest"]["why"]
    ckpt = json.loads((root / "run" / "metrics.json").read_text())["best_checkpoint"]
    old = export_checkpoint(ckpt, tmp_path / "old.pt")  # exported without a reference
    with pytest.raises(MonitorError, match="re-export"):
        run_monitor(old, root / "data" / "events.parquet", MONITOR_THRESHOLDS, device="cpu")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "monitor.py"), f"model_path={old}",
         f"events_path={root / 'data' / 'events.parquet'}", f"hydra.run.dir={tmp_path / 'cli'}"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"churnwatch monitor: {old}: the model carries no monitoring reference; re-export it with this "
        "version (churnwatch train embeds one)"
    ]
