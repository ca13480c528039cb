"""Drivers are explained in the forward's precision: with bf16 (forced where the CPU has no bf16 units, so
every machine runs this path) they name the same top driver as fp32 for nearly every customer."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnwatch.runtime.hardware import forced
from churnwatch.scoring.scorer import Scorer
from tests.helpers import SCORE_OPTIONS

AS_OF = "2024-11-01"


@pytest.mark.parametrize("units", [True, False], ids=["bf16-units", "no-bf16-units"])
def test_bf16_scoring_explains_in_bf16_and_names_the_drivers_fp32_names(model: Path, units: bool):
    data = model.parent.parent / "data"
    inputs = dict(events=data / "events.parquet", customers=data / "customers.parquet", as_of=AS_OF)
    options = {**SCORE_OPTIONS, "drivers": {"steps": 8}}
    fp32 = Scorer(model, **options, precision="fp32").score(**inputs, progress=False)
    with forced(bf16=units):
        scorer = Scorer(model, **options, precision="bf16")
        got = scorer.score(**inputs, progress=False)
    assert scorer.precision == ("bf16" if units else "fp32")  # no bf16 units: fp32, drivers and all
    fp32, got = (f.set_index("customer_id").sort_index() for f in (fp32, got))
    explained = fp32["main_driver"] != ""
    assert explained.sum() > 50
    agree = (got.loc[explained, "main_driver"] == fp32.loc[explained, "main_driver"]).mean()
    texts = ["driver_1", "driver_2", "driver_3"]
    changed = (got.loc[explained, texts] != fp32.loc[explained, texts]).any(axis=1).mean()
    if units:  # bf16's own attributions (some near-tied ranks swap), the same top driver for nearly all
        assert agree >= 0.9 and changed > 0
    else:
        assert agree == 1.0 and changed == 0
