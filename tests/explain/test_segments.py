"""RFM segments, behaviour clusters and the segment table, on hand-built aggregate tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from churnwatch.explain.segments import (
    RFM_SEGMENTS,
    BehaviourClusters,
    RFMSegmenter,
    Segments,
    segment_table,
)
from churnwatch.features.aggregates import AggregateTable


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tables: KMeans' OpenMP threads only add overhead, and spin when the machine is busy."""
    with threadpool_limits(1):
        yield


def _table(columns: dict[str, np.ndarray]) -> AggregateTable:
    return AggregateTable(np.column_stack(list(columns.values())).astype(np.float32), list(columns), [])


def _rfm_table(n: int = 400, seed: int = 0) -> AggregateTable:
    rng = np.random.default_rng(seed)
    return _table(
        {
            "recency_days": rng.uniform(0, 365, n),
            "n_purchase_occasions": rng.integers(1, 30, n).astype(float),
            "spend_total": rng.lognormal(4, 1, n),
            "tenure_days": np.full(n, 400.0),
        }
    )


def _with_rows(table: AggregateTable, rows: list[list[float]]) -> AggregateTable:
    return AggregateTable(np.vstack([table.values, np.float32(rows)]), table.names, [])


# ----------------------------------------------------------------------------------------------------------
def test_rfm_names_best_and_worst_customers_and_scores_are_monotone():
    train = _rfm_table()
    seg = RFMSegmenter().fit(train)
    best, worst = [1.0, 50.0, 1e5, 400.0], [400.0, 1.0, 1.0, 400.0]
    out = seg.transform(_with_rows(train, [best, worst]))
    assert list(out.columns) == ["r_score", "f_score", "m_score", "rfm_score", "rfm_segment"]
    assert all(out[c].dtype == np.int8 for c in ("r_score", "f_score", "m_score"))
    scores = out[["r_score", "f_score", "m_score"]].to_numpy()
    assert scores.min() >= 1 and scores.max() <= 5
    assert set(out["rfm_segment"]) <= set(RFM_SEGMENTS)
    assert out.iloc[-2]["rfm_score"] == "555" and out.iloc[-2]["rfm_segment"] == "champions"
    assert out.iloc[-1][["r_score", "f_score", "m_score"]].tolist() == [1, 1, 1]
    assert out.iloc[-1]["rfm_segment"] in ("lost", "hibernating")
    expected = out["r_score"].astype(str) + out["f_score"].astype(str) + out["m_score"].astype(str)
    assert (out["rfm_score"] == expected).all()
    # Less recent never scores higher on R; more purchases / spend never score lower on F / M.
    frame = train.to_frame()
    scored = seg.transform(train)
    for col, score, sign in (
        ("recency_days", "r_score", -1),
        ("n_purchase_occasions", "f_score", 1),
        ("spend_total", "m_score", 1),
    ):
        order = np.argsort(frame[col].to_numpy(), kind="stable")
        assert np.all(sign * np.diff(scored[score].to_numpy()[order].astype(int)) >= 0)
        # Quintile edges from training rows: each score holds about a fifth of them.
        shares = scored[score].value_counts(normalize=True)
        assert len(shares) == 5 and shares.between(0.1, 0.3).all()


def test_rfm_grid_reads_recency_down_and_frequency_across():
    train = _rfm_table()
    seg = RFMSegmenter().fit(train)
    frame = train.to_frame()
    rec = np.quantile(frame["recency_days"], [0.05, 0.7, 0.95])
    freq = frame["n_purchase_occasions"].max() + 10
    rows = {
        "new": [rec[0], 1.0, 50.0],  # just bought, once
        "cannot_lose": [rec[2], freq, 50.0],  # bought very often, but long ago
        "hibernating": [rec[1], 1.0, 50.0],  # R = 2, F = 1
        "lost": [rec[2], 1.0, 50.0],  # R = 1, F = 1
    }
    out = seg.transform(_with_rows(train, [[*r, 400.0] for r in rows.values()])).tail(len(rows))
    assert out["rfm_segment"].tolist() == list(rows)
    assert out["r_score"].tolist() == [5, 1, 2, 1] and out["f_score"].tolist() == [1, 5, 1, 1]


def test_rfm_scores_new_rows_with_training_edges_only():
    train = _rfm_table()
    seg = RFMSegmenter().fit(train)
    edges = json.dumps(seg.state())
    recent = _rfm_table(seed=1)
    recent.values[:, 0] = np.linspace(0, 1, len(recent.values))  # everyone bought within a day
    out = seg.transform(recent)
    assert (out["r_score"] == 5).all()  # a refit would spread them over 1..5
    assert json.dumps(seg.state()) == edges


def test_rfm_degenerate_columns_score_validly():
    n = 200
    rng = np.random.default_rng(3)
    train = _table(
        {
            "recency_days": np.full(n, 30.0),
            "n_purchase_occasions": np.ones(n),
            "spend_total": np.where(rng.random(n) < 0.7, 0.0, rng.uniform(1, 100, n)),
            "tenure_days": np.full(n, 100.0),
        }
    )
    seg = RFMSegmenter().fit(train)
    out = seg.transform(_with_rows(train, [[10.0, 3.0, 50.0, 100.0], [90.0, 1.0, 0.0, 100.0]]))
    for col in ("r_score", "f_score", "m_score"):
        assert out[col].between(1, 5).all()
    head = out.iloc[:n]
    # Ties share the lowest score their tie allows: an all-tied column scores everyone 1, and the 70% who
    # spent nothing are all in the bottom score.
    assert (head["f_score"] == 1).all() and (head["r_score"] == 1).all()
    assert (head["m_score"][train.values[:, 2] == 0] == 1).all()
    assert out.iloc[n]["f_score"] > head["f_score"].iloc[0] and out.iloc[n]["r_score"] == 5
    assert out.iloc[n + 1]["r_score"] == 1


def test_rfm_state_round_trip_is_identical_and_needs_fit():
    train = _rfm_table()
    with pytest.raises(RuntimeError, match="before fit"):
        RFMSegmenter().transform(train)
    seg = RFMSegmenter().fit(train)
    back = RFMSegmenter.from_state(json.loads(json.dumps(seg.state())))
    other = _rfm_table(seed=7)
    pd.testing.assert_frame_equal(back.transform(other), seg.transform(other))
    # the segment alone, as scoring reads it, is transform's column
    assert seg.segment(other).tolist() == seg.transform(other)["rfm_segment"].tolist()


# ----------------------------------------------------------------------------------------------------------
def _blobs(sizes: tuple[int, ...] = (150, 60, 100), seed: int = 0) -> tuple[AggregateTable, np.ndarray]:
    """Three blobs in log space: a baseline, big spenders, long-inactive customers."""
    rng = np.random.default_rng(seed)
    log_centers = np.array([[2.0, 3.0, 1.0], [2.0, 8.0, 1.0], [5.5, 3.0, 1.0]])
    truth = np.repeat(np.arange(3), sizes)
    logs = log_centers[truth] + rng.normal(0, 0.15, (len(truth), 3))
    logs[:, 2] = 1.0  # a constant column must not break the scaling
    raw = np.expm1(logs)
    columns = {"recency_days": raw[:, 0], "spend_total": raw[:, 1], "n_purchase_occasions": raw[:, 2]}
    columns["not_a_behaviour"] = rng.normal(size=len(truth))
    return _table(columns), truth


def test_kmeans_recovers_three_blobs_and_describes_them(tmp_path):
    table, truth = _blobs()
    clusters = BehaviourClusters(seed=0).fit(table)
    assert clusters.used == ["recency_days", "n_purchase_occasions", "spend_total"]  # default order, present
    ids = clusters.transform(table)
    assert adjusted_rand_score(truth, ids) > 0.99
    sel = clusters.selection
    assert sel["k"].tolist() == list(range(2, 9))
    assert sel["chosen"].sum() == 1 and sel.loc[sel["chosen"], "k"].item() == 3
    assert sel.loc[sel["chosen"], "silhouette"].item() == sel["silhouette"].max()
    assert np.all(np.diff(sel["inertia"].to_numpy()) < 0)

    desc = clusters.describe()
    # Numbered by size, largest first; the sizes are the training assignments.
    assert desc["customers"].tolist() == np.bincount(ids).tolist() == sorted(np.bincount(truth), reverse=True)
    assert desc["share"].sum() == pytest.approx(1.0)
    for c in range(3):
        # The center, back in original units, is the member rows' mean in log space, undone.
        members = table.to_frame()[clusters.used][ids == c]
        expected = np.expm1(np.log1p(members).mean())
        np.testing.assert_allclose(desc.loc[c, clusters.used].to_numpy(float), expected, rtol=1e-4)
    spender = desc.loc[desc["spend_total"].idxmax(), "label"]
    sleeper = desc.loc[desc["recency_days"].idxmax(), "label"]
    assert spender.startswith("high spend_total") and sleeper.startswith("high recency_days")
    assert "n_purchase_occasions" not in " ".join(desc["label"])  # constant: never distinctive

    path = clusters.plot_selection(tmp_path / "k.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_kmeans_given_k_is_kept_and_sample_bounds_silhouette():
    table, truth = _blobs()
    clusters = BehaviourClusters(k_range=(2, 4), k=5, sample=50).fit(table)
    sel = clusters.selection
    assert sel["k"].tolist() == [2, 3, 4, 5] and sel.loc[sel["chosen"], "k"].item() == 5
    assert len(clusters.describe()) == 5 and set(np.unique(clusters.transform(table))) == set(range(5))
    again = BehaviourClusters(k_range=(2, 4), k=5, sample=50).fit(table)
    pd.testing.assert_frame_equal(again.selection, sel)  # seeded: KMeans and the silhouette sample
    full = BehaviourClusters(k_range=(2, 4), k=5).fit(table).selection
    pd.testing.assert_series_equal(full["inertia"], sel["inertia"])  # the sample is for the silhouette only
    assert not np.allclose(full["silhouette"], sel["silhouette"])


def test_segments_columns_are_the_assigned_frame():
    table, _ = _blobs()
    segments = Segments(RFMSegmenter().fit(table), BehaviourClusters(k=3).fit(table))
    columns = segments.columns(table)
    assert list(columns) == ["rfm_segment", "behaviour_cluster"]
    assert columns["rfm_segment"].tolist() == segments.rfm.transform(table)["rfm_segment"].tolist()
    assert columns["behaviour_cluster"].tolist() == segments.clusters.transform(table).tolist()
    assert segments.assign(table)["rfm_segment"].dtype == pd.api.types.pandas_dtype(str)


def test_kmeans_state_round_trip_is_identical():
    table, _ = _blobs()
    clusters = BehaviourClusters(k_range=(2, 5)).fit(table)
    back = BehaviourClusters.from_state(json.loads(json.dumps(clusters.state(), allow_nan=False)))
    other, _ = _blobs(seed=5)
    np.testing.assert_array_equal(back.transform(other), clusters.transform(other))
    pd.testing.assert_frame_equal(back.selection, clusters.selection)
    pd.testing.assert_frame_equal(back.describe(), clusters.describe())


def test_kmeans_skips_missing_features_and_names_them_when_none_left():
    table, truth = _blobs()
    clusters = BehaviourClusters(["mix_shift_category", "spend_total"], k_range=(2, 3)).fit(table)
    assert clusters.used == ["spend_total"]
    assert np.array(clusters.state()["centers"]).shape == (2, 1)
    # Two equal groups far apart on spend only: one "high", one "low"; a group at the mean is "typical".
    rng = np.random.default_rng(1)
    spend = np.expm1(np.repeat([2.0, 5.0, 8.0], 50) + rng.normal(0, 0.1, 150))
    three = BehaviourClusters(["spend_total"], k=3).fit(_table({"spend_total": spend}))
    assert sorted(three.describe()["label"]) == ["high spend_total", "low spend_total", "typical"]
    with pytest.raises(ValueError, match="mix_shift_category"):
        BehaviourClusters(["mix_shift_category", "freq_trend_30_90"]).fit(table)
    with pytest.raises(RuntimeError, match="before fit"):
        BehaviourClusters().transform(table)


# ----------------------------------------------------------------------------------------------------------
def test_segment_table_counts_and_churn_rates_by_hand():
    rng = np.random.default_rng(0)
    segments = rng.choice(["a", "b", "c", "d"], size=300, p=[0.4, 0.3, 0.2, 0.1])
    labels = (rng.random(300) < np.select([segments == "a", segments == "b"], [0.1, 0.5], 0.3)).astype(int)
    out = segment_table(segments, labels)
    assert list(out.columns) == ["segment", "customers", "share", "churn_rate"]
    assert out["customers"].sum() == 300 and out["share"].sum() == pytest.approx(1.0)
    for row in out.itertuples():
        mask = segments == row.segment
        assert row.customers == mask.sum()
        assert row.churn_rate == pytest.approx(labels[mask].mean())
    assert out["churn_rate"].is_monotonic_decreasing

    plain = segment_table(pd.Series(segments))
    assert plain["churn_rate"].isna().all() and plain["customers"].is_monotonic_decreasing
    assert plain["segment"].tolist() == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="labels"):
        segment_table(segments, labels[:-1])
