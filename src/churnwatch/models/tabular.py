"""Tabular baselines on the aggregate features: same snapshots, same split, same metrics as the networks.

`model=logreg|decision_tree|random_forest|naive_bayes|linear_svm|lightgbm|btyd` with `model.kind: tabular`.
Linear models and naive Bayes see signed-log1p, standardised numbers and one-hot static categories; trees
see raw values (LightGBM with the static categories as categorical features). Models without
probabilities (the linear SVM) are calibrated with Platt scaling inside cross-validation on training data.
`btyd` is the classical BTYD yardstick (models/btyd/: BG/NBD or Pareto/NBD): fitted without labels on the
purchase history columns only (occasions, recency, first purchase), on the training rows or on the scored
rows themselves (`fit_on`), it predicts P(no purchase within data.horizon_days).
With `export: true` the run writes model.pt as a network run does: the fitted estimator as TorchScript
(models/scripted.py) with its calibration, scored by `churnwatch score` from raw events like any model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from scipy import sparse
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

from churnwatch.calibration import Calibrator, expected_calibration_error, logit
from churnwatch.data.datamodule import ChurnDataModule
from churnwatch.drivers import IndicatorCatalogue, sum_by_owner
from churnwatch.evaluation import evaluate
from churnwatch.export import TabularProbabilityModel, export_tabular, run_record, tabular_attribution
from churnwatch.features.aggregates import AggregateTable
from churnwatch.features.encode import signed_log1p
from churnwatch.insights import Segments, write_insights
from churnwatch.models.btyd import BTYDClassifier
from churnwatch.models.importance import importance_table, plot_importance
from churnwatch.models.scripted import NotScriptable, script_estimator
from churnwatch.models.thresholds import ThresholdRule, choose_operating_point
from churnwatch.predictions import write_predictions
from churnwatch.signing import load_signing_key
from churnwatch.trackers import instantiate_loggers, log_artifacts, log_run
from churnwatch.training import calibration_method, record_run, threshold_config, write_run_summary

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


def _fit(
    estimator: BaseEstimator,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    table: AggregateTable,
    weight: np.ndarray | None = None,
) -> None:
    """Fit with each row's weight (`data.sample_weight`; BTYD fits no labels and takes none)."""
    weighted = weight is not None and not np.all(weight == 1) and name != "btyd"
    if isinstance(estimator, Pipeline):
        extra = {f"{estimator.steps[-1][0]}__sample_weight": weight} if weighted else {}
    else:
        extra = {"sample_weight": weight} if weighted else {}
    if name == "lightgbm":
        cat = [table.names.index(c) for c in table.categorical]
        estimator.fit(x, y, categorical_feature=cat or "auto", **extra)
    else:
        estimator.fit(x, y, **extra)


def contributions(estimator: BaseEstimator, name: str, x: np.ndarray, train_x: np.ndarray) -> np.ndarray:
    """Per row and feature, the feature's push on the churn risk: LightGBM's TreeSHAP (log-odds), the path
    contributions of scikit-learn trees (probability, Saabas), coefficient × centred input for logistic
    regression (log-odds), and for the others occlusion (the change in log-odds when the feature is set to
    its training mean)."""
    if name == "lightgbm":
        return estimator.predict(x, pred_contrib=True)[:, :-1]
    if name in ("decision_tree", "random_forest"):
        trees = estimator.estimators_ if name == "random_forest" else [estimator]
        return sum(_path_contributions(t, x) for t in trees) / len(trees)
    if name == "logreg":
        inputs, clf = estimator.named_steps["x"], estimator.named_steps["clf"]
        z = inputs.transform(x) - inputs.transform(train_x).mean(axis=0)
        per_column = z * clf.coef_[0]
        out = np.zeros((len(x), x.shape[1]))
        start = 0
        for _, transformer, cols in inputs.transformers_:
            if transformer == "drop":
                continue
            one_hot = hasattr(transformer, "categories_")
            width = sum(len(c) for c in transformer.categories_) if one_hot else len(cols)
            block = per_column[:, start : start + width]
            if one_hot:  # sum each category's columns back to its feature
                edges = np.cumsum([0, *(len(c) for c in transformer.categories_)])
                for j, col in enumerate(cols):
                    out[:, col] = block[:, edges[j] : edges[j + 1]].sum(axis=1)
            else:
                out[:, cols] = block
            start += width
        return out
    base = logit(estimator.predict_proba(x)[:, 1])
    means = train_x.mean(axis=0)
    out = np.zeros((len(x), x.shape[1]))
    for j in range(x.shape[1]):
        occluded = x.copy()
        occluded[:, j] = means[j]
        out[:, j] = base - logit(estimator.predict_proba(occluded)[:, 1])
    return out


def _path_contributions(tree: DecisionTreeClassifier, x: np.ndarray) -> np.ndarray:
    """Each split on a row's path moves P(churn) from the parent's value to the child's; the move is
    credited to the parent's split feature (Saabas). The moves add up to leaf value minus root value."""
    t = tree.tree_
    value = t.value[:, 0, :]
    p1 = value[:, list(tree.classes_).index(1)] / value.sum(axis=1)
    nodes = np.arange(t.node_count)
    parent = np.full(t.node_count, -1)
    for children in (t.children_left, t.children_right):
        has = children >= 0
        parent[children[has]] = nodes[has]
    child = nodes[parent >= 0]
    moves = sparse.csr_matrix(
        (p1[child] - p1[parent[child]], (child, t.feature[parent[child]])),
        shape=(t.node_count, x.shape[1]),
    )
    return np.asarray((tree.decision_path(x.astype(np.float32)) @ moves).todense())


def train_tabular(cfg: DictConfig) -> dict[str, Any]:
    """Fit a baseline on the training split's aggregates; threshold on validation; metrics.json, feature
    importance (feature_importance.csv / .png) and (`export: true`) model.pt in the run dir; config,
    metrics and files to the experiment trackers of `cfg.logger`, as a network run has them. A rich
    progress bar follows its steps (a network's is Lightning's; `trainer.enable_progress_bar=false` hides
    both)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not cfg.trainer.get("enable_progress_bar", True),
    ) as bar:
        task = bar.add_task("baseline", total=len(BASELINE_STEPS))

        def step(name: str) -> None:
            done = BASELINE_STEPS.index(name)
            bar.update(task, completed=done, description=f"{cfg.model.get('estimator')}: {name}")

        metrics = _train_tabular(cfg, step)
        bar.update(task, completed=len(BASELINE_STEPS))
    return metrics


BASELINE_STEPS = ("fit", "calibrate and test", "insights", "feature importance", "write the run")


def _exported_form(
    cfg: DictConfig,
    estimator: BaseEstimator,
    name: str,
    train: AggregateTable,
    calibrator: Calibrator,
    metrics: dict[str, Any],
) -> TabularProbabilityModel | None:
    """What model.pt runs (`export: true`): the estimator scripted, its calibration, and the training means
    the drivers occlude the aggregates to; None, and why in `metrics["export_skipped"]`, for an estimator
    setting without a TorchScript form (BTYD fitted on the scored rows)."""
    if not cfg.get("export"):
        return None
    try:
        scripted = script_estimator(estimator, name, train.names)
    except NotScriptable as exc:
        metrics["export_skipped"] = str(exc)
        log.warning("no model.pt: %s", exc)
        return None
    return TabularProbabilityModel(scripted, calibrator, train.values.mean(axis=0, dtype=np.float64))


def _train_tabular(cfg: DictConfig, step: Callable[[str], None]) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers = instantiate_loggers(cfg)  # before training: a missing tracker package fails here
    signing_key = load_signing_key(cfg.get("signing_key") if cfg.get("export") else None)  # a bad key too
    log.info("run dir: %s", run_dir)
    dm = ChurnDataModule(cfg.data)
    dm.setup("fit")
    data = dm.data
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    name = model_cfg["estimator"]
    train = data.train.aggregates
    estimator = build_estimator(name, model_cfg.get("params"), train, int(cfg.seed))
    step("fit")
    t0 = time.perf_counter()
    _fit(estimator, name, train.values, data.train.snaps.label.astype(int), train, data.train.seqs.weight)
    timings = {"train_seconds": time.perf_counter() - t0}
    step("calibrate and test")
    val_raw = estimator.predict_proba(data.val.aggregates.values)[:, 1]
    calibrator = Calibrator.fit(calibration_method(cfg), val_raw, data.val.snaps.label)
    val_probs = calibrator(val_raw)
    op = choose_operating_point(
        val_probs, data.val.snaps.label, ThresholdRule.from_config(threshold_config(cfg, data))
    )
    train_probs = calibrator(estimator.predict_proba(train.values)[:, 1])
    metrics: dict[str, Any] = {
        "train": evaluate(train_probs, data.train.snaps.label, op.threshold, "train"),
        "val": evaluate(val_probs, data.val.snaps.label, op.threshold, "val"),
    }
    predictions = {"val": (val_raw, val_probs)}
    if cfg.get("test") and data.test is not None:
        t0 = time.perf_counter()
        test_raw = estimator.predict_proba(data.test.aggregates.values)[:, 1]
        score_seconds = time.perf_counter() - t0
        predictions["test"] = (test_raw, calibrator(test_raw))
        metrics["test"] = evaluate(predictions["test"][1], data.test.snaps.label, op.threshold, "test")
        timings["scoring_customers_per_s"] = len(test_raw) / max(score_seconds, 1e-9)
    for stage, (raw, _) in predictions.items():
        metrics[stage][f"{stage}/calibration_error_raw"] = expected_calibration_error(
            raw, getattr(data, stage).snaps.label
        )
    record_run(cfg, data, metrics, op, calibrator, predictions)
    model = _exported_form(cfg, estimator, name, train, calibrator, metrics)
    segments = Segments.fit(train, int(cfg.seed))
    center = None
    step("insights")
    if cfg.get("insights", {}).get("enabled", True):
        stage = "test" if "test" in predictions else "val"
        split = getattr(data, stage)
        catalogue = IndicatorCatalogue.from_config(cfg.data.get("indicators"))
        owner = catalogue.name_owner(split.aggregates.names, "aggregates")
        scores = sum_by_owner(
            contributions(estimator, name, split.aggregates.values, train.values), owner, len(catalogue.names)
        )
        metrics["insights"] = write_insights(
            run_dir, data, cfg.data, stage, predictions[stage][1], scores, catalogue, segments
        )
        if model is not None:  # scoring's drivers are the model's occlusion, centred on this split's mean
            occluded = tabular_attribution(model, split.aggregates.values)
            center = sum_by_owner(occluded, owner, len(catalogue.names)).mean(axis=0).tolist()
    step("feature importance")
    importance = importance_table(
        estimator, train, data.val.aggregates.values, data.val.snaps.label.astype(int), int(cfg.seed)
    )
    importance.to_csv(run_dir / "feature_importance.csv", index=False)
    plot_importance(importance, run_dir / "feature_importance.png", f"{name}: permutation importance")
    step("write the run")
    metrics["n_features"] = len(train.names)
    if model is not None:
        calibrated = {stage: probs for stage, (_, probs) in predictions.items()}
        metrics["model_path"] = str(
            export_tabular(
                model,
                name,
                dm.hparams["data"],
                dm.state_dict(),
                op,
                calibrator,
                run_dir / "model.pt",
                signing_key=signing_key,
                **run_record(cfg, data, metrics, op, calibrated, segments, center),
            )
        )
    write_predictions(run_dir, {stage: getattr(data, stage) for stage in predictions}, predictions, data.log)
    write_run_summary(cfg, metrics, timings)
    log_run(loggers, cfg, metrics)
    log_artifacts(loggers, run_dir)
    return metrics
