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

from .conftest import SCHEMA_CFG, make_events

CUTOFFS = ["2024-04-01", "2024-05-01"]
TEST_CUTOFF = "2024-06-15"


def _cfg(path: Path, **extra) -> dict:
    return {
        **extra,
        **SCHEMA_CFG,
        "events_path": str(path),
        "end_date": "2030-01-01",
        "horizon_days": 30,
        "train_cutoffs": CUTOFFS,
        "test_cutoff": TEST_CUTOFF,
        "val_fraction": 0.25,
        "seed": 3,
        "max_len": 8,
        "vocab": {"min_count": 1},
        "aggregates": {
            "amount": "amount",
            "purchase_when": "kind == 'purchase'",
            "mix_field": "cat",
            "count_values": ["kind:complaint"],
            "numeric_summaries": ["amount"],
        },
    }


def _tamper(events: pd.DataFrame, at: str, seed: int = 9, add_at_cutoff: bool = True) -> pd.DataFrame:
    """Change every event at/after `at` and add more there (new customers too).

    Without `add_at_cutoff`, who is active in which label window stays the same, so training labels (and
    the label-stratified validation split) stay the same too.
    """
    rng = np.random.default_rng(seed)
    out = events.copy()
    late = out["ts"] >= pd.Timestamp(at)
    out.loc[late, "amount"] = out.loc[late, "amount"] * 1000 + 7
    out.loc[late, "cat"] = "never-seen-before"
    out.loc[late, "kind"] = np.where(rng.random(int(late.sum())) < 0.5, "complaint", "purchase")
    extra = out.loc[late].copy()
    extra["ts"] = extra["ts"] + pd.Timedelta(minutes=1)
    at_cutoff = out.groupby("cid").head(1).copy() if add_at_cutoff else out.head(0)
    at_cutoff["ts"] = pd.Timestamp(at)  # exactly at the cutoff: not history, must not leak
    newcomers = extra.head(5).assign(cid=lambda f: "zz-new-" + f["cid"])
    return pd.concat([out, extra, at_cutoff, newcomers], ignore_index=True).sample(frac=1, random_state=1)


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
    return build_data(_cfg(path, **extra))


@pytest.mark.parametrize("steps", [{}, VISITS], ids=["events", "visits"])
def test_training_features_and_fitted_statistics_ignore_events_after_the_last_training_cutoff(
    tmp_path, steps
):
    events = make_events(n_customers=60, seed=5)
    clean = _build(events, tmp_path, "clean", **steps)
    tampered = _build(_tamper(events, CUTOFFS[-1], add_at_cutoff=False), tmp_path, "tampered", **steps)
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
    tampered = _build(_tamper(events, TEST_CUTOFF), tmp_path, "tampered", **steps)
    assert clean.encoder.state() == tampered.encoder.state()
    a, b = _by_customer(clean.test), _by_customer(tampered.test)
    assert a == b
    assert len(a) > 20


def test_tampering_before_the_cutoff_is_detected(tmp_path):
    """The guard above is not vacuous: the same comparison notices a change one day before the cutoff."""
    events = make_events(n_customers=60, seed=6)
    clean = _build(events, tmp_path, "clean")
    day_before = str((pd.Timestamp(TEST_CUTOFF) - pd.Timedelta(days=1)).date())
    tampered = _build(_tamper(events, day_before), tmp_path, "tampered")
    assert _by_customer(clean.test) != _by_customer(tampered.test)


@pytest.mark.parametrize("steps", [{}, VISITS], ids=["events", "visits"])
def test_time_to_event_targets_stop_at_the_label_window(tmp_path, steps):
    """A training row's dense targets may read its label window [c, c + horizon), as its label does, and
    nothing at or after the window's end: tampering from the last window's end on (events exactly there
    included) changes no training target; the same tampering a day earlier does."""
    events = make_events(n_customers=60, seed=7)
    window_end = pd.Timestamp(CUTOFFS[-1]) + pd.Timedelta(days=30)  # horizon_days=30 in _cfg
    clean = _build(events, tmp_path, "clean", **steps)
    tampered = _build(_tamper(events, str(window_end.date())), tmp_path, "tampered", **steps)
    for split in ("train", "val"):
        a, b = getattr(clean, split), getattr(tampered, split)
        assert _by_customer(a, targets=True) == _by_customer(b, targets=True)
        assert a.seqs.tte_observed.any() and not a.seqs.tte_observed.all()
    day_before = str((window_end - pd.Timedelta(days=1)).date())
    earlier = _build(_tamper(events, day_before), tmp_path, "early", **steps)
    assert _by_customer(clean.train, targets=True) != _by_customer(earlier.train, targets=True)
