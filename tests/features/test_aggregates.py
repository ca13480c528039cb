"""Aggregate features checked by hand on a tiny log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.loaders import load_events
from churnwatch.data.schema import EventSchema
from churnwatch.data.snapshots import EventLog, Snapshots, build_snapshot
from churnwatch.errors import ConfigError
from churnwatch.features.aggregates import AggregateFeaturizer, AggregateSpec
from churnwatch.features.window import FlatHistories
from tests.helpers import AGGREGATE_ROWS, AGGREGATE_SPEC, SCHEMA_CFG, aggregate_table


def test_rfm_windows_gaps_and_counts_by_hand():
    t, _ = aggregate_table(AGGREGATE_ROWS)
    a, b = t.loc["a"], t.loc["b"]
    assert a["recency_days"] == pytest.approx(5)
    assert a["n_purchases"] == 4 and a["n_purchase_occasions"] == 3
    assert a["spend_total"] == pytest.approx(50) and a["spend_mean"] == pytest.approx(12.5)
    assert a["tenure_days"] == pytest.approx(60)
    assert a["days_since_last_event"] == pytest.approx(2)
    assert a["n_purchases_7d"] == 2 and a["spend_7d"] == pytest.approx(10)
    assert a["n_purchases_30d"] == 3 and a["spend_30d"] == pytest.approx(40)
    assert a["n_events_7d"] == 3
    assert a["gap_mean_days"] == pytest.approx((40 + 15) / 2)  # occasions, not invoice lines
    assert a["gap_max_days"] == pytest.approx(40) and a["gap_last_days"] == pytest.approx(15)
    assert a["n_kind_complaint"] == 1 and a["days_since_kind_complaint"] == pytest.approx(2)
    # b never bought twice: gap statistics fall back to the tenure, explicitly
    assert b["gap_mean_days"] == pytest.approx(b["tenure_days"]) == pytest.approx(181)
    assert b["n_kind_complaint"] == 0


def test_category_mix_and_shift():
    t, feat = aggregate_table(AGGREGATE_ROWS)
    a = t.loc["a"]
    assert feat.mix_categories == ["x", "y"]  # top-2 by purchases; z falls into 'other'
    assert a["mix_cat_x"] == pytest.approx(0.5) and a["mix_cat_other"] == pytest.approx(0.25)
    assert a["mix_cat_x_recent"] == pytest.approx(1 / 3)
    # before the last 30 days: all x; recent: x, y, z a third each → total variation 2/3
    assert a["mix_shift_cat"] == pytest.approx(2 / 3)


def test_numeric_summaries_and_no_nan_anywhere():
    t, _ = aggregate_table(AGGREGATE_ROWS)
    assert t.loc["a", "amount_last"] == pytest.approx(5)
    assert t.loc["a", "amount_min"] == pytest.approx(5)
    assert t.loc["a", "amount_mean"] == pytest.approx(12.5)
    assert np.isfinite(t.to_numpy()).all()


def _with_attributes() -> tuple[EventLog, Snapshots, pd.DataFrame, AggregateFeaturizer]:
    """The hand log, its snapshot, two customers' attributes and a featurizer (unfitted) that reads them."""
    customers = pd.DataFrame(
        {"region": ["n", "s"], "signup": pd.to_datetime(["2024-03-01", "2023-01-01"])},
        index=pd.Index(["a", "b"], name="customer_id"),
    )
    frame = pd.DataFrame(AGGREGATE_ROWS, columns=["cid", "ts", "kind", "cat", "amount"])
    loaded = load_events("e.csv", EventSchema.from_config(SCHEMA_CFG), frame=frame, end_date="2030-01-01")
    log = EventLog.from_frame(loaded.frame)
    snap = build_snapshot(log, "2024-04-01", horizon_days=None)
    feat = AggregateFeaturizer(AGGREGATE_SPEC, static_categorical=["region"], static_dates=["signup"])
    return log, snap, customers, feat


def test_static_attributes_become_features():
    log, snap, customers, feat = _with_attributes()
    table = feat.fit(log, snap, customers).transform(log, snap, customers)
    frame = table.to_frame()
    assert frame["static_signup_days"].tolist() == [31.0, 456.0]
    assert table.categorical == ["static_region"]
    assert sorted(frame["static_region"].tolist()) == [2.0, 3.0]


def test_asked_columns_are_the_full_tables_own():
    """Scoring without drivers asks for a few columns (value, segments): each, alone or with others, is
    that column of the full table, in the table's order, and a categorical one stays named as such."""
    log, snap, customers, feat = _with_attributes()
    full = feat.fit(log, snap, customers).transform(log, snap, customers)
    assert len(full.names) > 40 and full.categorical == ["static_region"]
    for j, name in enumerate(full.names):
        alone = feat.transform(log, snap, customers, columns=[name])
        assert alone.names == [name], name
        assert np.array_equal(alone.values[:, 0], full.values[:, j]), name
        assert alone.categorical == ([name] if name in full.categorical else [])
    some = full.names[::3]
    got = feat.transform(log, snap, customers, columns=[*reversed(some), "not_a_column"])
    assert got.names == some and np.array_equal(got.values, full.values[:, ::3])


def test_unknown_field_is_a_config_error():
    with pytest.raises(ConfigError, match="not an event field"):
        aggregate_table(AGGREGATE_ROWS, featurizer=AggregateFeaturizer(AggregateSpec(mix_field="nope")))
    with pytest.raises(ConfigError, match="unknown keys"):
        AggregateSpec.from_config({"windowz": [1]})
    with pytest.raises(ConfigError, match="field:value"):
        AggregateSpec.from_config({"count_values": ["complaint"]})
    with pytest.raises(ConfigError, match="purchase_when"):
        aggregate_table(
            AGGREGATE_ROWS, featurizer=AggregateFeaturizer(AggregateSpec(purchase_when="nope == 1"))
        )


def _fitted_on_rows():
    frame = pd.DataFrame(AGGREGATE_ROWS, columns=["cid", "ts", "kind", "cat", "amount"])
    loaded = load_events("e.csv", EventSchema.from_config(SCHEMA_CFG), frame=frame, end_date="2030-01-01")
    log = EventLog.from_frame(loaded.frame)
    snap = build_snapshot(log, "2024-04-01", horizon_days=None)
    return log, snap, AggregateFeaturizer(AGGREGATE_SPEC).fit(log, snap)


def test_featurizer_state_round_trips_through_json():
    import json

    log, snap, feat = _fitted_on_rows()
    again = AggregateFeaturizer.from_state(json.loads(json.dumps(feat.state())))
    assert again.spec == feat.spec
    a, b = feat.transform(log, snap), again.transform(log, snap)
    assert np.array_equal(a.values, b.values)
    assert np.array_equal(feat.scale(a), again.scale(b))


def test_a_row_does_not_depend_on_the_rows_transformed_with_it():
    """Scoring transforms customers in chunks: every feature must be a function of the row alone."""
    log, snap, feat = _fitted_on_rows()
    both = feat.transform(log, snap).values
    for row in range(len(snap)):
        alone = feat.transform(log, snap.subset(np.array([row]))).values
        assert np.array_equal(alone[0], both[row]), feat.transform(log, snap).names


def test_segmented_reductions_equal_the_scatter_with_empty_rows_at_their_initial_value():
    """FlatHistories.reduce: ufunc.at over each row's events, starting from `initial` (rows without
    events keep it), for floats with infinities and for indices."""
    rng = np.random.default_rng(0)
    lengths = np.array([3, 0, 1, 5, 0, 2])
    row = np.repeat(np.arange(len(lengths)), lengths)
    hist = FlatHistories(np.arange(len(row)), row, lengths, rng.normal(size=len(row)))
    values = np.where(rng.random(len(row)) < 0.3, np.inf, rng.normal(size=len(row)))
    cases = [
        (np.minimum, values, np.inf),
        (np.maximum, -values, -np.inf),
        (np.maximum, np.abs(rng.normal(size=len(row))), 0.5),
        (np.maximum, np.where(rng.random(len(row)) < 0.5, np.arange(len(row)), -1), -1),
    ]
    for ufunc, v, initial in cases:
        expected = np.full(len(lengths), initial, dtype=np.result_type(v, type(initial)))
        ufunc.at(expected, row, v)
        got = hist.reduce(ufunc, v, initial)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    assert hist.reduce(np.minimum, values, np.inf)[[1, 4]].tolist() == [np.inf, np.inf]


def test_the_table_is_float32_with_finite_sums_saturated_and_nan_and_inf_kept():
    """Sums beyond float32 (amounts near validation's 1e300 bound) read as the largest float32, keeping
    their sign, never as inf; NaN and inf keep their meaning; everything else is the float32 nearest."""
    from churnwatch.features.aggregates import FLOAT32_MAX, _stack_float32

    big = np.array([1e39, -1e300, 3.4e38, np.nan, np.inf, -np.inf, 1.1, 0.0])
    small = np.arange(8, dtype=np.float64) / 3
    table = _stack_float32([big, small], 8)
    assert table.dtype == np.float32 and table.shape == (8, 2) and table.flags["C_CONTIGUOUS"]
    assert table[:2, 0].tolist() == [FLOAT32_MAX, -FLOAT32_MAX]
    assert table[2, 0] == np.float32(3.4e38) and np.isnan(table[3, 0])
    assert table[4:6, 0].tolist() == [np.inf, -np.inf] and table[6, 0] == np.float32(1.1)
    assert (table[:, 1] == small.astype(np.float32)).all()
    assert _stack_float32([], 3).shape == (3, 0)
