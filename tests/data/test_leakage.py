"""No leakage: nothing at or after a cutoff reaches that cutoff's features, encodings or fitted statistics.

The test tampers with every event at or after a cutoff (new values, unseen categories, extra events, new
customers) and proves that everything computed for that cutoff is bit-for-bit unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnwatch.pipeline.build import build_data
from tests.helpers import (
    LEAKAGE_TEST_CUTOFF,
    LEAKAGE_TRAIN_CUTOFFS,
    leakage_cfg,
    make_events,
    tamper_from,
)


def _by_customer(split, targets: bool = False) -> dict:
    """Each row's encoded events, static features and aggregates (or its time-to-event targets), keyed by
    (customer, cutoff)."""
    seqs = split.seqs
    out = {}
    for i, (cid, cut) in enumerate(zip(seqs.customer_id, seqs.cutoff, strict=True)):
        s, e = seqs.offsets[i], seqs.offsets[i + 1]
        if targets:
            out[(cid, cut)] = (seqs.tte[s:e].tobytes(), seqs.tte_observed[s:e].tobytes())
            continue
        out[(cid, cut)] = (
            seqs.cat[s:e].tobytes(),
            seqs.num[s:e].tobytes(),
            split.aggregates.values[i].tobytes(),
        )
    return out


VISITS = {"visits": {"gap_minutes": 720}, "max_span_days": 60}
"""Steps that are visits (a 12-hour pause starts a new one) within 60 days: the same guarantees hold."""


def _build(events: pd.DataFrame, tmp_path: Path, name: str, **extra):
    path = tmp_path / f"{name}.parquet"
    events.to_parquet(path)
    return build_data(leakage_cfg(path, **extra))


@pytest.mark.parametrize("steps", [{}, VISITS], ids=["events", "visits"])
def test_training_features_and_fitted_statistics_ignore_events_after_the_last_training_cutoff(
    tmp_path, steps
):
    events = make_events(n_customers=60, seed=5)
    clean = _build(events, tmp_path, "clean", **steps)
    tampered = _build(
        tamper_from(events, LEAKAGE_TRAIN_CUTOFFS[-1], add_at_cutoff=False), tmp_path, "tampered", **steps
    )
    # Labels may use the future; vocabularies, numeric statistics and aggregate fills may not.
    assert clean.encoder.state() == tampered.encoder.state()
    assert clean.featurizer.fill == tampered.featurizer.fill
    assert clean.featurizer.mix_categories == tampered.featurizer.mix_categories
    for split in ("train", "val"):
        a, b = getattr(clean, split), getattr(tampered, split)
        assert np.array_equal(a.snaps.label, b.snaps.label)
        assert _by_customer(a) == _by_customer(b)
    # The tampered test period holds a category never seen in training: it encodes as OOV (id 1).
    cat_col = tampered.encoder.cat_names.index("cat")
    assert 1 in set(tampered.test.seqs.cat[:, cat_col].tolist())


@pytest.mark.parametrize("steps", [{}, VISITS], ids=["events", "visits"])
def test_test_features_ignore_events_at_or_after_the_test_cutoff(tmp_path, steps):
    events = make_events(n_customers=60, seed=6)
    clean = _build(events, tmp_path, "clean", **steps)
    tampered = _build(tamper_from(events, LEAKAGE_TEST_CUTOFF), tmp_path, "tampered", **steps)
    assert clean.encoder.state() == tampered.encoder.state()
    a, b = _by_customer(clean.test), _by_customer(tampered.test)
    assert a == b
    assert len(a) > 20


def test_tampering_before_the_cutoff_is_detected(tmp_path):
    """The guard above is not vacuous: the same comparison notices a change one day before the cutoff."""
    events = make_events(n_customers=60, seed=6)
    clean = _build(events, tmp_path, "clean")
    day_before = str((pd.Timestamp(LEAKAGE_TEST_CUTOFF) - pd.Timedelta(days=1)).date())
    tampered = _build(tamper_from(events, day_before), tmp_path, "tampered")
    assert _by_customer(clean.test) != _by_customer(tampered.test)


@pytest.mark.parametrize("steps", [{}, VISITS], ids=["events", "visits"])
def test_time_to_event_targets_stop_at_the_label_window(tmp_path, steps):
    """A training row's dense targets may read its label window [c, c + horizon), as its label does, and
    nothing at or after the window's end: tampering from the last window's end on (events exactly there
    included) changes no training target; the same tampering a day earlier does."""
    events = make_events(n_customers=60, seed=7)
    window_end = pd.Timestamp(LEAKAGE_TRAIN_CUTOFFS[-1]) + pd.Timedelta(
        days=30
    )  # horizon_days=30 in leakage_cfg
    clean = _build(events, tmp_path, "clean", **steps)
    tampered = _build(tamper_from(events, str(window_end.date())), tmp_path, "tampered", **steps)
    for split in ("train", "val"):
        a, b = getattr(clean, split), getattr(tampered, split)
        assert _by_customer(a, targets=True) == _by_customer(b, targets=True)
        assert a.seqs.tte_observed.any() and not a.seqs.tte_observed.all()
    day_before = str((window_end - pd.Timedelta(days=1)).date())
    earlier = _build(tamper_from(events, day_before), tmp_path, "early", **steps)
    assert _by_customer(clean.train, targets=True) != _by_customer(earlier.train, targets=True)
