"""Tabular baselines on the aggregate features: same snapshots, same split, same metrics as the networks.

`model=logreg|decision_tree|random_forest|naive_bayes|linear_svm|lightgbm|btyd` with `model.kind: tabular`.
Linear models and naive Bayes see signed-log1p, standardised numbers and one-hot static categories; trees
see raw values (LightGBM with the static categories as categorical features). Models without
probabilities (the linear SVM) are calibrated with Platt scaling inside cross-validation on training data.
`btyd` is the classical BG/NBD yardstick (models/btyd.py): fitted without labels on the purchase history
columns only (occasions, recency, first purchase), it predicts P(no purchase within data.horizon_days).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from churnwatch.data.datamodule import ChurnDataModule
from churnwatch.evaluation import evaluate
from churnwatch.features.aggregates import AggregateTable
from churnwatch.features.encode import signed_log1p
from churnwatch.models.btyd import BTYDClassifier
from churnwatch.models.importance import importance_table, plot_importance
from churnwatch.models.thresholds import ThresholdRule, choose_operating_point
from churnwatch.predictions import write_predictions
from churnwatch.training import record_run

log = logging.getLogger(__name__)
ESTIMATORS = ("logreg", "decision_tree", "random_forest", "naive_bayes", "linear_svm", "lightgbm", "btyd")


def _linear_inputs(table: AggregateTable) -> ColumnTransformer:
    cat = [table.names.index(c) for c in table.categorical]
    num = [i for i in range(len(table.names)) if i not in cat]
    numeric = make_pipeline(
        FunctionTransformer(signed_log1p, feature_names_out="one-to-one"), StandardScaler()
    )
    parts = [("num", numeric, num)]
    if cat:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cat))
    return ColumnTransformer(parts)


def build_estimator(name: str, params: Mapping[str, Any], table: AggregateTable, seed: int) -> BaseEstimator:
    """An unfitted estimator whose predict_proba gives churn probabilities."""
    params = dict(params or {})
    if name == "logreg":
        return Pipeline(
            [
                ("x", _linear_inputs(table)),
                ("clf", LogisticRegression(max_iter=2000, random_state=seed, **params)),
            ]
        )
    if name == "naive_bayes":
        return Pipeline([("x", _linear_inputs(table)), ("clf", GaussianNB(**params))])
    if name == "linear_svm":
        svm = LinearSVC(random_state=seed, **params)
        return Pipeline(
            [("x", _linear_inputs(table)), ("clf", CalibratedClassifierCV(svm, method="sigmoid", cv=3))]
        )
    if name == "decision_tree":
        return DecisionTreeClassifier(random_state=seed, **params)
    if name == "random_forest":
        return RandomForestClassifier(random_state=seed, n_jobs=-1, **params)
    if name == "lightgbm":
        import lightgbm

        return lightgbm.LGBMClassifier(random_state=seed, verbose=-1, **params)
    if name == "btyd":
        return BTYDClassifier(feature_names=table.names, **params)
    raise ValueError(f"model.estimator must be one of {ESTIMATORS}, got {name!r}")


def _fit(estimator: BaseEstimator, name: str, x: np.ndarray, y: np.ndarray, table: AggregateTable) -> None:
    if name == "lightgbm":
        cat = [table.names.index(c) for c in table.categorical]
        estimator.fit(x, y, categorical_feature=cat or "auto")
    else:
        estimator.fit(x, y)


def train_tabular(cfg: DictConfig) -> dict[str, Any]:
    """Fit a baseline on the training split's aggregates; threshold on validation; metrics.json and
    feature importance (feature_importance.csv / .png) in the run dir."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("run dir: %s", run_dir)
    dm = ChurnDataModule(cfg.data)
    dm.setup("fit")
    data = dm.data
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    name = model_cfg["estimator"]
    train = data.train.aggregates
    estimator = build_estimator(name, model_cfg.get("params"), train, int(cfg.seed))
    t0 = time.perf_counter()
    _fit(estimator, name, train.values, data.train.snaps.label.astype(int), train)
    fit_seconds = time.perf_counter() - t0
    val_probs = estimator.predict_proba(data.val.aggregates.values)[:, 1]
    op = choose_operating_point(
        val_probs,
        data.val.snaps.label,
        ThresholdRule.from_config(OmegaConf.to_container(cfg.thresholds) if cfg.get("thresholds") else None),
    )
    train_probs = estimator.predict_proba(train.values)[:, 1]
    metrics: dict[str, Any] = {
        "train": evaluate(train_probs, data.train.snaps.label, op.threshold, "train"),
        "val": evaluate(val_probs, data.val.snaps.label, op.threshold, "val"),
    }
    predictions = {"val": (data.val, val_probs)}
    if cfg.get("test") and data.test is not None:
        t0 = time.perf_counter()
        test_probs = estimator.predict_proba(data.test.aggregates.values)[:, 1]
        score_seconds = time.perf_counter() - t0
        predictions["test"] = (data.test, test_probs)
        metrics["test"] = evaluate(test_probs, data.test.snaps.label, op.threshold, "test")
        metrics["scoring_customers_per_s"] = len(test_probs) / max(score_seconds, 1e-9)
    record_run(cfg, data, metrics, op.threshold, (op.high_cut, op.medium_cut), fit_seconds)
    importance = importance_table(
        estimator, train, data.val.aggregates.values, data.val.snaps.label.astype(int), int(cfg.seed)
    )
    importance.to_csv(run_dir / "feature_importance.csv", index=False)
    plot_importance(importance, run_dir / "feature_importance.png", f"{name}: permutation importance")
    metrics["n_features"] = len(train.names)
    write_predictions(run_dir, predictions, data.log)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
