"""Learning and validation curves, in the spirit of scikit-learn's `learning_curve` / `validation_curve`.

Learning curve: the metric against the number of training customers (`data.train_fraction` keeps a
stratified share of them; validation and test stay the same). Validation curve: the metric against one
hyperparameter's values. Each point is a full training run (reused when its metrics.json exists) over the
seeds; curve.csv holds every run and curve.png the mean ± std per split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from churnwatch.errors import ConfigError
from churnwatch.runs.leaderboard import ComposeTrain, train_run

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


OWN_KEYS = {"kind", "metric", "fractions", "param", "values", "seeds", "seed", "title"}


def run_curve(
    cfg: DictConfig, compose_train: ComposeTrain, out_dir: str | Path, overrides: Sequence[str] = ()
) -> pd.DataFrame:
    """Train every (point, seed) with `overrides`; write curve.csv and curve.png; return the runs."""
    out_dir = Path(out_dir)
    kind = str(cfg.kind)
    if kind == "learning":
        param, values = "data.train_fraction", list(cfg.fractions)
    elif kind == "validation":
        if not cfg.get("param") or not cfg.get("values"):
            raise ConfigError("a validation curve needs param=<config key> and values=[...]")
        param, values = str(cfg.param), list(cfg["values"])
    else:
        raise ConfigError(f"kind must be learning or validation, got {kind!r}")
    rows = []
    for seed in cfg.seeds:
        for value in values:
            run_dir = out_dir / f"{param.rsplit('.', 1)[-1]}_{value}" / f"seed_{seed}"
            metrics = train_run(compose_train, [*overrides, f"{param}={value}", f"seed={seed}"], run_dir)
            rows.append({"param": param, "value": value, "seed": seed, **metrics})
    runs = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out_dir / "curve.csv", index=False)
    x = "train_customers" if kind == "learning" else "value"
    title = f"{kind} curve: {cfg.get('title') or ' '.join(overrides)}"
    plot_curve(runs, x=x, metric=str(cfg.metric), path=out_dir / "curve.png", title=title, param=param)
    return runs


def plot_curve(
    runs: pd.DataFrame,
    *,
    x: str,
    metric: str,
    path: Path,
    title: str,
    param: str,
    splits: Sequence[str] = SPLITS,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric_x = pd.api.types.is_numeric_dtype(runs[x])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for split in splits:
        col = f"{split}/{metric}"
        if col not in runs.columns or runs[col].isna().all():
            continue
        stats = runs.groupby(x, sort=False)[col].agg(["mean", "std"]).fillna(0.0)
        if numeric_x:
            stats = stats.sort_index()
        xs = stats.index if numeric_x else range(len(stats))
        ax.plot(xs, stats["mean"], marker="o", label=split)
        ax.fill_between(xs, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
        if not numeric_x:
            ax.set_xticks(list(xs), [str(v) for v in stats.index])
    ax.set_xlabel("training customers" if x == "train_customers" else param)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
