"""Snapshots: label windows, populations, plans that would leak, and customer-level splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.loaders import load_events
from churnwatch.data.schema import EventSchema
from churnwatch.data.snapshots import (
    EventLog,
    SnapshotPlan,
    build_snapshot,
    build_snapshots,
    label_event_mask,
)
from churnwatch.data.splits import customer_strata, split_customers
from churnwatch.errors import ConfigError
from tests.helpers import SCHEMA_CFG


def _log(rows: list[tuple[str, str, str]]) -> EventLog:
    frame = pd.DataFrame(rows, columns=["cid", "ts", "kind"])
    frame["cat"] = "x"
    frame["amount"] = 1.0
    loaded = load_events("e.csv", EventSchema.from_config(SCHEMA_CFG), frame=frame, end_date="2030-01-01")
    return EventLog.from_frame(loaded.frame)


def _by_id(log: EventLog, snaps) -> dict[str, tuple[float, int]]:
    ids = snaps.customer_ids(log)
    return {
        i: (float(lab), int(e - s))
        for i, lab, s, e in zip(ids, snaps.label, snaps.start, snaps.end, strict=True)
    }


def test_label_window_is_half_open_and_history_strictly_before_cutoff():
    log = _log(
        [
            ("a", "2024-01-01", "purchase"),
            ("a", "2024-02-01 00:00", "purchase"),  # event exactly at cutoff
            ("b", "2024-01-05", "purchase"),
            ("b", "2024-03-02 00:00", "purchase"),  # exactly at cutoff + 30d
            ("c", "2024-01-10", "purchase"),
            ("c", "2024-03-01 23:59", "purchase"),  # last moment of window
            ("d", "2024-02-10", "purchase"),  # first event after the cutoff: not in the population
        ]
    )
    snap = build_snapshot(log, "2024-02-01", horizon_days=30)
    got = _by_id(log, snap)
    assert set(got) == {"a", "b", "c"}
    assert got["a"] == (0.0, 1)  # the event at the cutoff is a label event, not history
    assert got["b"] == (1.0, 1)  # [c, c+30d) excludes c+30d
    assert got["c"] == (0.0, 1)


def test_lookback_restricts_population_to_recently_active():
    log = _log(
        [("a", "2023-01-01", "purchase"), ("b", "2024-01-20", "purchase"), ("b", "2024-02-20", "purchase")]
    )
    snap = build_snapshot(log, "2024-02-01", horizon_days=30, lookback_days=90)
    assert set(snap.customer_ids(log)) == {"b"}
    assert set(build_snapshot(log, "2024-02-01", horizon_days=30).customer_ids(log)) == {"a", "b"}


def test_label_events_limit_what_counts_as_activity():
    log = _log(
        [
            ("a", "2024-01-01", "purchase"),
            ("a", "2024-02-05", "complaint"),
            ("b", "2024-01-01", "purchase"),
            ("b", "2024-02-05", "purchase"),
        ]
    )
    mask = label_event_mask(log.frame, "kind == 'purchase'")
    snap = build_snapshot(log, "2024-02-01", horizon_days=30, label_events=mask)
    assert _by_id(log, snap)["a"][0] == 1.0  # only a complaint after the cutoff: churned
    assert _by_id(log, snap)["b"][0] == 0.0


def test_explicit_labels_define_population_and_label():
    log = _log(
        [("a", "2024-01-01", "purchase"), ("b", "2024-01-01", "purchase"), ("c", "2024-03-01", "purchase")]
    )
    labels = pd.DataFrame(
        {"customer_id": ["a", "c"], "cutoff": pd.to_datetime(["2024-02-01"] * 2), "label": [1.0, 0.0]}
    )
    snap = build_snapshot(log, "2024-02-01", horizon_days=30, labels=labels)
    assert _by_id(log, snap) == {"a": (1.0, 1)}  # b unlabelled, c has no history before the cutoff


def test_label_window_past_data_end_is_rejected():
    log = _log([("a", "2024-01-01", "purchase")])
    with pytest.raises(ConfigError, match="runs past the data's end"):
        build_snapshot(log, "2024-02-01", horizon_days=30, data_end=pd.Timestamp("2024-02-15"))


def test_plan_from_n_snapshots_ends_at_latest_cutoff_without_leakage():
    plan = SnapshotPlan.from_config(
        {"horizon_days": 90, "test_cutoff": "2011-09-01", "n_snapshots": 6, "snapshot_every_days": 14}
    )
    assert plan.train_cutoffs[-1] == pd.Timestamp("2011-06-03")
    assert [c.day for c in plan.train_cutoffs[:2]] == [25, 8]
    assert len(plan.train_cutoffs) == 6


@pytest.mark.parametrize(
    "cfg",
    [
        {"train_cutoffs": ["2011-06-04"]},
        {"last_train_cutoff": "2011-07-01", "n_snapshots": 2},
    ],
)
def test_plan_whose_labels_reach_into_test_period_is_rejected(cfg):
    with pytest.raises(ConfigError, match="leak"):
        SnapshotPlan.from_config({"horizon_days": 90, "test_cutoff": "2011-09-01", **cfg})


def test_empty_population_is_a_clear_error():
    log = _log([("a", "2024-01-01", "purchase")])
    plan = SnapshotPlan.from_config({"horizon_days": 10, "train_cutoffs": ["2023-01-01"]})
    with pytest.raises(ConfigError, match="empty population"):
        build_snapshots(log, plan.train_cutoffs, plan)


def test_holdout_and_kfold_split_by_customer(loaded):
    log = EventLog.from_frame(loaded.frame)
    plan = SnapshotPlan.from_config({"horizon_days": 30, "train_cutoffs": ["2024-04-01", "2024-05-01"]})
    snaps = build_snapshots(log, plan.train_cutoffs, plan)

    def rows(cfg: dict) -> tuple[np.ndarray, np.ndarray]:
        train_customers, val_customers = split_customers(cfg, *customer_strata(snaps))
        return tuple(np.flatnonzero(np.isin(snaps.customer, c)) for c in (train_customers, val_customers))

    train, val = rows({"val_fraction": 0.25, "seed": 1})
    assert len(train) + len(val) == len(snaps)
    assert not set(snaps.customer[train]) & set(snaps.customer[val])
    again = rows({"val_fraction": 0.25, "seed": 1})
    assert np.array_equal(val, again[1])
    folds = [rows({"fold": k, "folds": 4, "seed": 0}) for k in range(4)]
    seen = np.concatenate([snaps.customer[v] for _, v in folds])
    assert sorted(set(seen)) == sorted(set(snaps.customer))
    assert len(np.unique(np.concatenate([np.unique(snaps.customer[v]) for _, v in folds]))) == len(
        np.unique(snaps.customer)
    )  # each customer validates in exactly one fold
    for tr, va in folds:
        assert not set(snaps.customer[tr]) & set(snaps.customer[va])
