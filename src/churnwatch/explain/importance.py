"""Feature importance for the tabular baselines: the model's own view, and permutation importance for all.

Model-specific: split gain for LightGBM, impurity decrease for sklearn trees, |coefficient| of the
standardised input for linear models (one-hot columns summed back to their feature). Permutation
importance (drop in validation AUROC when a column is shuffled) works for every model, naive Bayes and
the calibrated SVM included, and is the column to compare models by.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from churnwatch.features.aggregates import AggregateTable


def model_importance(estimator: BaseEstimator, table: AggregateTable) -> np.ndarray | None:
    """Importance per input column as the model sees it, or None where the model has no such notion."""
    names = table.names
    if hasattr(estimator, "booster_"):  # LightGBM
        return estimator.booster_.feature_importance(importance_type="gain").astype(np.float64)
    if hasattr(estimator, "feature_importances_"):
        return np.asarray(estimator.feature_importances_, dtype=np.float64)
    if isinstance(estimator, Pipeline) and hasattr(estimator[-1], "coef_"):
        coef = np.abs(np.ravel(estimator[-1].coef_))
        out_names = estimator[0].get_feature_names_out()
        out = np.zeros(len(names))
        for value, name in zip(coef, out_names, strict=True):
            kind, _, rest = name.partition("__")
            index = int(rest[1:].split("_")[0]) if kind == "cat" else int(rest[1:])  # "x12" or "x12_3.0"
            out[index] += value
        return out
    return None


def importance_table(
    estimator: BaseEstimator,
    table: AggregateTable,
    x_val: np.ndarray,
    y_val: np.ndarray,
    seed: int,
    n_repeats: int = 3,
) -> pd.DataFrame:
    """One row per feature: model importance (if any) and permutation importance (mean, std), sorted."""
    perm = permutation_importance(
        estimator, x_val, y_val, scoring="roc_auc", n_repeats=n_repeats, random_state=seed, n_jobs=1
    )
    frame = pd.DataFrame(
        {
            "feature": table.names,
            "permutation_auroc_drop": perm.importances_mean,
            "permutation_std": perm.importances_std,
        }
    )
    own = model_importance(estimator, table)
    if own is not None:
        frame["model_importance"] = own / max(float(own.sum()), 1e-12)  # share of the total
    return frame.sort_values("permutation_auroc_drop", ascending=False, kind="stable").reset_index(drop=True)


def plot_importance(frame: pd.DataFrame, path: Path, title: str, top: int = 20) -> Path:
    """Horizontal bar chart of the top permutation importances (with their spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = frame.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(head) + 1.2))
    ax.barh(head["feature"], head["permutation_auroc_drop"], xerr=head["permutation_std"], color="#3b75af")
    ax.set_xlabel("drop in validation AUROC when shuffled")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
