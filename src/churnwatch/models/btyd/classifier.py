"""BTYD as a scikit-learn churn classifier on the aggregate features (`model=btyd`, conf/model/btyd.yaml).

It reads each row's purchase history from three aggregate columns (src/churnwatch/features/aggregates.py):
x = max(n_purchase_occasions - 1, 0) repeat occasions, T = first_purchase_days, tx = max(T - recency_days,
0), and scores P(no purchase within the label horizon) with BG/NBD or Pareto/NBD.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from churnwatch.errors import ConfigError
from churnwatch.models.btyd.base import BTYDModel
from churnwatch.models.btyd.bgnbd import BGNBD
from churnwatch.models.btyd.pareto_nbd import ParetoNBD

log = logging.getLogger(__name__)

# Columns of the aggregate table the BTYD models read (src/churnwatch/features/aggregates.py).
OCCASIONS, RECENCY, FIRST_PURCHASE = "n_purchase_occasions", "recency_days", "first_purchase_days"
MODELS: dict[str, type[BTYDModel]] = {m.name: m for m in (BGNBD, ParetoNBD)}
FIT_ON = ("train", "scored")


def purchase_histories(
    X: np.ndarray | pd.DataFrame, names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, tx, T) per row of an aggregate table, its columns named by `names` or the DataFrame's own.

    Customers who never bought get x = 0, tx = 0 and T = first_purchase_days, which the featurizer fills
    with their tenure: they count as one-time buyers whose first purchase was their first event.
    """
    names = list(X.columns) if isinstance(X, pd.DataFrame) else names
    if names is None:
        raise ValueError("BTYD needs the feature names (or a DataFrame) to find its columns")
    names = list(names)
    missing = [c for c in (OCCASIONS, RECENCY, FIRST_PURCHASE) if c not in names]
    if missing:
        raise ConfigError(f"BTYD: feature columns {missing} are missing")
    values = np.asarray(X, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"expected a 2-d matrix with {len(names)} columns, got shape {values.shape}")
    column = {name: values[:, names.index(name)] for name in (OCCASIONS, RECENCY, FIRST_PURCHASE)}
    x = np.maximum(column[OCCASIONS] - 1, 0.0)
    T = np.maximum(column[FIRST_PURCHASE], 0.0)
    tx = np.clip(T - column[RECENCY], 0.0, T)
    return x, tx, T


def make_model(name: str, penalizer: float = 0.0) -> BTYDModel:
    """An unfitted purchase-count model by config name (`model.params.model`)."""
    if name not in MODELS:
        raise ConfigError(f"BTYD model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](penalizer=penalizer)


class BTYDClassifier(ClassifierMixin, BaseEstimator):
    """A BTYD model as a scikit-learn classifier; class 1 = no purchase in the horizon (churn).

    `model`: bgnbd (Fader, Hardie & Lee 2005) or pareto_nbd (Schmittlein, Morrison & Colombo 1987). `fit`
    is unsupervised: it fits the model (`model_`, its estimates in `params_`) to the training rows'
    purchase histories; y only sets `classes_` = [0, 1].

    `fit_on`: which histories the parameters scoring uses come from. `train` (default): the training fit.
    `scored`: the standard BTYD practice, maximum likelihood on the scored cutoff's own histories:
    `predict_proba(X)` refits on the rows of X when there are at least `min_fit_rows` of them (else, or if
    that fit fails, it keeps the training fit), and logs which. This is leakage-free: the fit never sees a
    label, and each row's columns come only from events before its cutoff. The last refit is kept for
    repeated calls on the same histories (occlusion and permutation importance change other columns).
    """

    def __init__(
        self,
        horizon_days: float,
        feature_names: list[str] | None = None,
        penalizer: float = 0.0,
        model: str = "bgnbd",
        fit_on: str = "train",
        min_fit_rows: int = 500,
    ):
        self.horizon_days = horizon_days
        self.feature_names = feature_names
        self.penalizer = penalizer
        self.model = model
        self.fit_on = fit_on
        self.min_fit_rows = min_fit_rows

    def fit(self, X: np.ndarray | pd.DataFrame, y: np.ndarray | None = None) -> BTYDClassifier:
        """Fit the model on the rows' purchase histories (labels are not used)."""
        if self.fit_on not in FIT_ON:
            raise ConfigError(f"BTYD fit_on must be one of {FIT_ON}, got {self.fit_on!r}")
        self.model_ = make_model(self.model, float(self.penalizer)).fit(
            *purchase_histories(X, self.feature_names)
        )
        self.params_ = self.model_.params_
        self.classes_ = np.array([0, 1])
        self._scored: tuple[bytes, BTYDModel] | None = None
        return self

    def scoring_model(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> BTYDModel:
        """The fitted model that scores these histories (see `fit_on`)."""
        check_is_fitted(self, "model_")
        if self.fit_on == "train":
            return self.model_
        if len(x) < int(self.min_fit_rows):
            log.info(
                "BTYD fit_on=scored: %d rows < min_fit_rows=%d, scoring with the training fit",
                len(x),
                self.min_fit_rows,
            )
            return self.model_
        key = hashlib.blake2b(np.stack([x, tx, T]).tobytes(), digest_size=16).digest()
        if self._scored is not None and self._scored[0] == key:
            return self._scored[1]
        try:
            model = make_model(self.model, float(self.penalizer)).fit(x, tx, T)
        except RuntimeError as err:
            log.warning(
                "BTYD fit_on=scored: the fit on %d scored rows failed (%s); using the training fit",
                len(x),
                err,
            )
            return self.model_
        log.info("BTYD fit_on=scored: refitted on the %d scored rows: %s", len(x), model.params_)
        self._scored = (key, model)
        return model

    def predict_proba(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Columns [P(purchase in the horizon), P(no purchase in the horizon)]."""
        check_is_fitted(self, "model_")
        x, tx, T = purchase_histories(X, self.feature_names)
        p0 = self.scoring_model(x, tx, T).prob_no_purchase(x, tx, T, float(self.horizon_days))
        return np.column_stack([1.0 - p0, p0])

    def predict(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]
