"""Hydra configs compose, and a new event log needs overrides only."""

from __future__ import annotations

from churnwatch.config.compose import compose
from churnwatch.data.schema import EventSchema
from churnwatch.data.snapshots import SnapshotPlan
from churnwatch.pipeline.build import build_data
from tests.helpers import make_events


def test_data_configs_compose_and_parse():
    for data in ("synthetic", "online_retail"):
        cfg = compose("prepare", [f"data={data}"])
        EventSchema.from_config(cfg.data)
        plan = SnapshotPlan.from_config(cfg.data)
        assert plan.test_cutoff is not None
        assert all(
            c + __import__("pandas").Timedelta(days=plan.horizon_days) <= plan.test_cutoff
            for c in plan.train_cutoffs
        )


def test_online_retail_inherits_but_replaces_aggregate_counts():
    cfg = compose("prepare", ["data=online_retail"])
    assert cfg.data.aggregates.count_values is None
    assert cfg.data.customers_path is None
    assert cfg.data.horizon_days == 90


def test_a_new_event_log_with_overrides_only(tmp_path):
    events = make_events(n_customers=50, seed=2).rename(columns={"cid": "user", "ts": "when"})
    path = tmp_path / "my_log.csv"
    events.to_csv(path, index=False)
    cfg = compose(
        "prepare",
        [
            f"data.events_path={path}",
            "data.customers_path=null",
            "data.generate=null",
            "data.customer_id=user",
            "data.timestamp=when",
            "data.categorical=[kind,cat]",
            "data.numeric=[{name: amount, min: 0, fill: 0}]",
            "data.end_date=2030-01-01",
            "data.horizon_days=30",
            "data.lookback_days=null",
            "data.test_cutoff=2024-06-15",
            "data.n_snapshots=2",
            "data.aggregates.purchase_when='kind == \"purchase\"'",
            "data.aggregates.count_values=[kind:complaint]",
            "data.aggregates.mix_field=cat",
            "data.aggregates.numeric_summaries=[]",
            "data.vocab.min_count=1",
        ],
    )
    data = build_data(cfg.data)
    assert data.encoder.cat_names[:2] == ["kind", "cat"]
    assert len(data.train) > 0 and data.test is not None and len(data.test) > 0


def test_default_synthetic_config_generates_and_builds_end_to_end(tmp_path):
    cfg = compose("prepare", [f"data.data_dir={tmp_path}", "data.generate.n_customers=3000"])
    data = build_data(cfg.data)  # no events file yet: generated on first use
    assert (tmp_path / "events.parquet").exists() and (tmp_path / "truth.parquet").exists()
    summary = data.summary()
    assert summary["validation"][0]["dropped"] == {}  # the generator writes clean data
    assert 0.1 < summary["test"]["churn_rate"] < 0.4
    assert data.encoder.static_cat_names == ["region", "age_band", "income_band", "plan"]
    assert "mix_shift_category" in data.train.aggregates.names
    assert set(data.train.snaps.customer).isdisjoint(data.val.snaps.customer)
