"""Every tabular baseline trains on the aggregates and is judged with the same metrics as the networks."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from churnwatch.artifact.model_file import load_artifact
from churnwatch.config.compose import compose
from churnwatch.models.metrics import METRIC_NAMES
from churnwatch.models.tabular import ESTIMATORS
from churnwatch.runs.record import read_timings
from churnwatch.runs.train import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tabular") / "data"


FAST = ("logreg", "lightgbm", "btyd")
"""The baselines `make test` trains; the others share their code path and run in `make test-slow`."""


@pytest.mark.parametrize(
    "estimator", [e if e in FAST else pytest.param(e, marks=pytest.mark.slow) for e in ESTIMATORS]
)
def test_baseline_trains_and_reports_the_common_metrics(estimator, data_dir, tmp_path):
    cfg = compose(
        "train",
        [
            f"model={estimator}",
            f"data.data_dir={data_dir}",
            "data.generate.n_customers=1500",
            f"paths.output_dir={tmp_path}",
            *(
                ["model.params.n_estimators=40"] if estimator == "random_forest" else []
            ),  # keep the test quick
        ],
    )
    metrics = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["model"] == estimator
    for stage in ("val", "test"):
        for name in METRIC_NAMES:
            assert 0.0 <= saved[stage][f"{stage}/{name}"] <= 1.0
    assert saved["test"]["test/auroc"] > 0.7  # the aggregates carry real signal on the synthetic data
    assert 0 < saved["test"]["test/capture_top10"] <= 1 and saved["test"]["test/lift_top10"] > 1
    assert saved["val"]["val/threshold"] == pytest.approx(saved["threshold"])
    assert saved["tier_cuts"]["high"] >= saved["tier_cuts"]["medium"]
    assert read_timings(tmp_path)["train_seconds"] > 0 and "train_seconds" not in metrics
    importance = pd.read_csv(tmp_path / "feature_importance.csv")
    assert len(importance) == saved["n_features"] and importance["feature"].is_unique
    assert importance["permutation_auroc_drop"].iloc[0] > 0  # shuffling the top feature hurts AUROC
    if estimator in ("logreg", "lightgbm", "random_forest", "decision_tree"):
        assert importance["model_importance"].sum() == pytest.approx(1.0)
    assert (tmp_path / "feature_importance.png").stat().st_size > 0
    _, meta = load_artifact(saved["model_path"])  # every baseline exports, checked on load
    assert (meta["kind"], meta["estimator"]) == ("tabular", estimator)


@pytest.mark.slow  # 15-35 s; `make test-slow` runs it
def test_cross_validation_by_customer(data_dir, tmp_path):
    from churnwatch.pipeline.build import build_data

    overrides = ["model=logreg", f"data.data_dir={data_dir}", "data.generate.n_customers=1500"]
    cfg = compose("train", [*overrides, f"paths.output_dir={tmp_path}", "cv.folds=3"])
    metrics = train(cfg)
    summary = json.loads((tmp_path / "cv_metrics.json").read_text())
    assert summary["folds"] == 3 and len(summary["per_fold"]) == 3
    fold_aurocs = [m["val"]["val/auroc"] for m in summary["per_fold"]]
    assert summary["val"]["val/auroc"]["mean"] == pytest.approx(sum(fold_aurocs) / 3)
    assert metrics["val"]["val/auroc"] == pytest.approx(summary["val"]["val/auroc"]["mean"])
    assert all((tmp_path / f"fold_{i}" / "metrics.json").exists() for i in range(3))
    # every training customer validates in exactly one fold, and never trains in that fold
    val_sets = []
    for fold in range(3):
        data = build_data(compose("train", [*overrides, "data.folds=3", f"data.fold={fold}"]).data)
        val = set(data.val.snaps.customer_ids(data.log))
        assert not val & set(data.train.snaps.customer_ids(data.log))
        val_sets.append(val)
    assert sum(len(v) for v in val_sets) == len(set().union(*val_sets))
    everyone = set(data.train.snaps.customer_ids(data.log)) | set(data.val.snaps.customer_ids(data.log))
    assert set().union(*val_sets) == everyone


@pytest.mark.parametrize("name", ["logreg", "lightgbm"])
def test_row_weights_reach_the_estimator_as_repeated_rows_would(name):
    """data.sample_weight=customer weighs rows in the fit: weight 3 counts as the row three times."""
    import numpy as np

    from churnwatch.features.aggregates import AggregateTable
    from churnwatch.models.tabular import build_estimator, fit_estimator

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] + rng.normal(size=300) > 0).astype(int)
    weight = rng.integers(1, 4, 300).astype(np.float32)
    table = AggregateTable(x, ["a", "b", "c", "d"], [])
    params = {"n_estimators": 20, "min_child_samples": 5, "n_jobs": 1} if name == "lightgbm" else {}
    weighted, repeated, plain = (build_estimator(name, params, table, 0) for _ in range(3))
    fit_estimator(weighted, name, x, y, table, weight)
    rows = np.repeat(np.arange(300), weight.astype(int))
    fit_estimator(repeated, name, x[rows], y[rows], table)
    fit_estimator(plain, name, x, y, table)
    p = [m.predict_proba(x)[:, 1] for m in (weighted, repeated, plain)]
    if name == "logreg":  # (its scaler sees the repeats, not the weights: close, not equal)
        assert np.allclose(p[0], p[1], atol=1e-3)
    else:  # LightGBM's leaf-size limits count rows, not weights: only closer than the unweighted fit
        assert np.abs(p[0] - p[1]).mean() < np.abs(p[2] - p[1]).mean()
    assert not np.allclose(p[0], p[2], atol=1e-3)
