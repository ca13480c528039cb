"""Every tabular baseline trains on the aggregates and is judged with the same metrics as the networks."""

from __future__ import annotations

import json

import pytest

from churnwatch.evaluation import METRIC_NAMES
from churnwatch.models.tabular import ESTIMATORS
from churnwatch.training import train

from .test_config import compose


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tabular") / "data"


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_baseline_trains_and_reports_the_common_metrics(estimator, data_dir, tmp_path):
    cfg = compose(
        "train",
        [
            f"model={estimator}",
            f"data.data_dir={data_dir}",
            "data.generate.n_customers=1500",
            f"paths.output_dir={tmp_path}",
        ],
    )
    metrics = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["model"] == estimator
    for stage in ("val", "test"):
        for name in METRIC_NAMES:
            assert 0.0 <= saved[stage][f"{stage}/{name}"] <= 1.0
    assert saved["test"]["test/auroc"] > 0.7  # the aggregates carry real signal on the synthetic data
    assert saved["val"]["val/threshold"] == pytest.approx(saved["threshold"])
    assert saved["tier_cuts"]["high"] >= saved["tier_cuts"]["medium"]
    assert metrics["train_seconds"] > 0
