"""The shared Online Retail data loads through the contract with config overrides only."""

from __future__ import annotations

import numpy as np
import pytest

from churnwatch.config.compose import compose
from churnwatch.pipeline.build import build_data
from tests.helpers import ONLINE_RETAIL

pytestmark = pytest.mark.skipif(
    not ONLINE_RETAIL.exists(),
    reason=f"Online Retail data not found at {ONLINE_RETAIL} (../shared is absent)",
)


def test_protocol_test_snapshot_has_3317_customers_and_43_8_percent_churn():
    cfg = compose("prepare", ["data=online_retail", f"data.events_path={ONLINE_RETAIL}"])
    data = build_data(cfg.data)
    report = data.reports[0]
    assert report.dropped["null_id"] == 133_359  # the 135,080 null ids less those the protocol filter removes
    assert data.test is not None
    assert len(data.test) == 3317
    assert round(float(np.mean(data.test.snaps.label)), 3) == 0.438
    assert [str(c.date()) for c in data.plan.train_cutoffs][-1] == "2011-06-03"
    assert len(data.plan.train_cutoffs) == 6
