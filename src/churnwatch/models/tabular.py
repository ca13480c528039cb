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
from collections.abc import Mapping
from typing import Any

import numpy as np
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

from churnwatch.errors import ConfigError
from churnwatch.features.aggregates import AggregateTable
from churnwatch.features.stats import signed_log1p
from churnwatch.models.btyd import BTYDClassifier
from churnwatch.models.calibration import logit

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
    raise ConfigError(f"model.estimator must be one of {ESTIMATORS}, got {name!r}")


def fit_estimator(
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
