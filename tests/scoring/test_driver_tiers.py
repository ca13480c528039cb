"""`drivers.tiers`: explain only the customers in the tiers that get an action. The ranking comes first, the
drivers after it, so a customer's drivers are the ones the full run gives them; the others' stay blank."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from churnwatch.errors import ConfigError
from churnwatch.scoring.scorer import Scorer
from tests.helpers import SCORE_OPTIONS, score_model_data

AS_OF = "2024-11-01"
DRIVERS = ["main_driver", "driver_1", "driver_2", "driver_3"]


def _score(model: Path, out: Path, **options) -> pd.DataFrame:
    return score_model_data(model, out, AS_OF, **options)


def test_only_the_chosen_tiers_are_explained_as_the_full_run_explains_them(model: Path, tmp_path: Path):
    options = dict(part_events=4_000, chunk_customers=300)  # several parts and chunks: the second pass too
    full = _score(model, tmp_path / "full.parquet", **options)
    drivers = {**SCORE_OPTIONS["drivers"], "tiers": ["high", "medium"]}
    chosen = _score(model, tmp_path / "chosen.parquet", **options, drivers=drivers)
    rest = [c for c in full.columns if c not in (*DRIVERS, "action")]
    pd.testing.assert_frame_equal(chosen[rest], full[rest])  # same ranking, tiers and everything else
    explained = full["risk_tier"].isin(["high", "medium"]).to_numpy()
    assert 0 < explained.sum() < len(full)
    pd.testing.assert_frame_equal(chosen.loc[explained, DRIVERS], full.loc[explained, DRIVERS])
    pd.testing.assert_series_equal(chosen.loc[explained, "action"], full.loc[explained, "action"])
    assert (chosen.loc[~explained, DRIVERS] == "").all().all()
    assert (full.loc[~explained & (full["risk_tier"] == "low"), "main_driver"] != "").any()  # not vacuous


def test_in_memory_scoring_explains_the_chosen_tiers_too(model: Path):
    data = model.parent.parent / "data"
    events, customers = data / "events.parquet", data / "customers.parquet"
    full = Scorer(model, **SCORE_OPTIONS).score(events, customers, as_of=AS_OF, progress=False)
    drivers = {**SCORE_OPTIONS["drivers"], "tiers": ["high"]}
    high = Scorer(model, **{**SCORE_OPTIONS, "drivers": drivers}).score(
        events, customers, as_of=AS_OF, progress=False
    )
    explained = (full["risk_tier"] == "high").to_numpy()
    assert explained.any()
    pd.testing.assert_frame_equal(high.loc[explained, DRIVERS], full.loc[explained, DRIVERS])
    assert (high.loc[~explained, DRIVERS] == "").all().all()


def test_unknown_tiers_and_unranked_shards_are_one_line(model: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^drivers.tiers must be some of \['high', 'medium', 'low'\]"):
        Scorer(model, device="cpu", drivers={"tiers": ["urgent"]})
    with pytest.raises(ConfigError, match=r"^drivers.tiers explains the tiers the whole population"):
        _score(model, tmp_path / "s.parquet", shard=(2, 0), drivers={"tiers": ["high"]})
