"""Fitting in parts: the encoder's and the aggregates' statistics, computed on customer-disjoint parts and
merged, are what one pass over the whole fits. This is what lets a cluster prepare training data part by
part (jobs/prepare_ray.py); no cluster is needed to check the arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from churnwatch.data.loaders import load_events
from churnwatch.data.schema import EventSchema
from churnwatch.data.snapshots import EventLog, SnapshotPlan, Snapshots, build_snapshots
from churnwatch.features.aggregates import FeaturizerCounts
from churnwatch.features.encode import EncoderStats
from churnwatch.features.stats import Moments
from churnwatch.pipeline.dataset import unfitted_encoders
from tests.helpers import leakage_cfg, make_events


def test_moments_of_parts_merge_into_the_moments_of_the_whole() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(5, 3, (1000, 3))
    raw[rng.random(raw.shape) < 0.2] = np.nan
    raw[:, 2] *= 1e300  # squares would overflow float64 without the per-column scale
    cuts = [0, 0, 17, 400, 401, 1000]  # empty parts and one-row parts too
    merged = Moments.merged([Moments.of(raw[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
    mean, std = merged.mean_std()
    assert_allclose(mean[:2], np.nanmean(raw[:, :2], axis=0), rtol=1e-12)
    assert_allclose(mean[2] / 1e300, np.nanmean(raw[:, 2] / 1e300), rtol=1e-12)
    assert_allclose(std[:2], np.nanstd(raw[:, :2], axis=0), rtol=1e-12)
    assert np.isfinite(std[2]) and std[2] > 1e299
    assert_allclose(std[2] / 1e300, np.nanstd(raw[:, 2] / 1e300), rtol=1e-12)
    # no value at all: mean 0 and std 1, as a fit on nothing gives
    none = Moments.of(np.full((5, 1), np.nan)).merge(Moments.of(np.zeros((0, 1))))
    assert [float(v[0]) for v in none.mean_std()] == [0.0, 1.0]


def _part_snapshots(frame: pd.DataFrame, cfg: dict) -> tuple[EventLog, Snapshots]:
    loaded = load_events(
        "events", EventSchema.from_config(cfg), end_date=cfg["end_date"], frame=frame, part=True
    )
    log = EventLog.from_frame(loaded.frame)
    plan = SnapshotPlan.from_config(cfg)
    return log, build_snapshots(log, plan.train_cutoffs, plan, part=True)


@pytest.mark.parametrize("steps", [{}, {"visits": {"gap_minutes": 720}}], ids=["events", "visits"])
def test_fitting_customer_disjoint_parts_equals_fitting_the_whole(tmp_path: Path, steps: dict) -> None:
    events = make_events(n_customers=80, seed=11)
    cfg = leakage_cfg(tmp_path / "unused.parquet", **steps)
    whole_log, whole = _part_snapshots(events, cfg)
    encoder, featurizer = unfitted_encoders(cfg, EventSchema.from_config(cfg), False)
    encoder.fit(whole_log, whole)
    featurizer.fit(whole_log, whole)

    # three parts of customers, as a cluster's range partitions hold them
    ids = np.sort(events["cid"].unique())
    parts = [_part_snapshots(events[events["cid"].isin(chunk)], cfg) for chunk in np.array_split(ids, 3)]
    part_encoder, part_featurizer = unfitted_encoders(cfg, EventSchema.from_config(cfg), False)
    part_encoder.fit_stats(EncoderStats.merged([part_encoder.stats(log, snaps) for log, snaps in parts]))
    part_featurizer.fit_counts(
        FeaturizerCounts.merged([part_featurizer.counts(log, snaps) for log, snaps in parts])
    )
    fills = [part_featurizer.fill_moments(log, snaps) for log, snaps in parts]
    part_featurizer.fit_fill(fills[0][0].names, Moments.merged([m for _, m in fills]))
    scales = [part_featurizer.scale_moments(part_featurizer.transform(log, snaps)) for log, snaps in parts]
    part_featurizer.fit_scale(Moments.merged(scales))

    whole_state, part_state = encoder.state(), part_encoder.state()
    assert part_state["vocabs"] == whole_state["vocabs"]
    for key in ("numeric", "static_numeric"):
        assert_allclose(part_state[key]["mean"], whole_state[key]["mean"], rtol=1e-12)
        assert_allclose(part_state[key]["std"], whole_state[key]["std"], rtol=1e-12)
    assert part_featurizer.mix_categories == featurizer.mix_categories
    for key in ("fill", "trend_smoothing"):
        got, want = getattr(part_featurizer, key), getattr(featurizer, key)
        assert list(got) == list(want)
        assert_allclose(list(got.values()), list(want.values()), rtol=1e-9)
    assert_allclose(part_featurizer.scale_mean, featurizer.scale_mean, rtol=1e-9, atol=1e-12)
    assert_allclose(part_featurizer.scale_std, featurizer.scale_std, rtol=1e-9)
