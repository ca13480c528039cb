"""Leaderboards: every listed model trained on one dataset with the same snapshots and metrics, over seeds.

One run per (model, seed) under <out>/<model>/seed_<s>/ with the usual metrics.json and predictions.parquet;
a run dir that already holds metrics.json is reused, so an interrupted leaderboard resumes. Ensembles of
listed models are fitted per seed from those runs. Results: leaderboard_runs.csv (one row per run),
leaderboard.csv (mean and std per model) and leaderboard.md (mean ± std, best AUROC first).

Rolling origin (`origins`: test cutoffs): every model × seed also runs once per origin, under
<out>/<model>/origin_<date>/seed_<s>/, with the test cutoff there and the training cutoffs moved back with
it, so one lucky or unlucky test month does not decide the ranking; the tables then also carry the test
AUROC per origin.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

from churnwatch.errors import ConfigError
from churnwatch.runs.ensemble import train_ensemble
from churnwatch.runs.record import METRICS_FILE, read_timings
from churnwatch.runs.train import train

log = logging.getLogger(__name__)
ComposeTrain = Callable[[list[str]], DictConfig]
"""Composes the train config from overrides (hydra.compose inside a script, the test helper in tests)."""

COLUMNS = {
    "test/auroc": "AUROC",
    "test/average_precision": "AP",
    "test/f1": "F1@thr",
    "test/lift_top10": "lift@10%",
    "test/capture_top10": "capture@10%",
    "test/brier": "Brier",
    "train_seconds": "train s",
    "scoring_customers_per_s": "scoring cust/s",
    "val/auroc": "val AUROC",
}


def run_metrics(metrics: Mapping[str, Any], timings: Mapping[str, float]) -> dict[str, float]:
    """The leaderboard's numbers from one run's metrics.json and timings.json."""
    flat = {**metrics.get("val", {}), **metrics.get("test", {}), **metrics.get("train", {})}
    for key in ("train_seconds", "scoring_customers_per_s"):
        flat[key] = timings.get(key, math.nan)
    for key, value in (metrics.get("sizes") or {}).items():
        flat[key] = value
    return {k: float(v) for k, v in flat.items() if isinstance(v, int | float)}


def train_run(compose_train: ComposeTrain, overrides: Sequence[str], run_dir: Path) -> dict[str, float]:
    """Train one configuration into run_dir, or read its metrics.json when it is already there."""
    done = run_dir / METRICS_FILE
    if not done.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = compose_train([*overrides, f"paths.output_dir='{run_dir}'"])
        with open_dict(cfg):  # many runs share one log: no progress bars
            cfg.trainer.enable_progress_bar = False
        log.info("training %s → %s", " ".join(overrides), run_dir)
        train(cfg)
    else:
        log.info("reusing %s", run_dir)
    return run_metrics(json.loads(done.read_text()), read_timings(run_dir))


OWN_KEYS = {"models", "seeds", "ensembles", "title", "model_overrides", "model", "seed", "origins"}


def passthrough(overrides: Sequence[str], own_keys: set[str]) -> list[str]:
    """The command line's train overrides (experiment=, data=, trainer.max_epochs=...), minus the script's
    own keys and hydra's: every run composes the train config with them."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key not in own_keys and not key.startswith("hydra"):
            out.append(item)
    return out


def model_run(compose_train: ComposeTrain, overrides: Sequence[str], model: str) -> list[str]:
    """Overrides that train `model`: with `experiment=X` given and an experiment `X_<model>` present (tuned
    settings for that model on X's dataset, e.g. online_retail_lstm), that experiment replaces X."""
    experiments = [o for o in overrides if o.startswith("experiment=")]
    rest = [o for o in overrides if o not in experiments]
    if experiments:
        specific = [*rest, f"{experiments[-1]}_{model}"]
        try:
            cfg = compose_train(specific)
        except MissingConfigException:
            pass
        else:
            chosen = OmegaConf.select(cfg, "model.estimator") or OmegaConf.select(cfg, "model.net.encoder")
            log.info("%s: using %s (model %s)", model, specific[-1], chosen)
            return specific
    return [*overrides, f"model={model}"]


def origin_overrides(data: Mapping[str, Any], origin: str) -> list[str]:
    """Overrides that move a data config's test cutoff to `origin` and its training cutoffs with it.

    The training cutoffs keep their count and spacing (data/snapshots.py `SnapshotPlan.from_config`): a
    last training cutoff derived from the test cutoff follows it by itself; explicit dates (train_cutoffs,
    else last_train_cutoff and first_train_cutoff) shift by as many days as the test cutoff moved.
    """
    target = pd.Timestamp(origin).normalize()
    out = [f"data.test_cutoff='{target.date()}'"]
    if data.get("train_cutoffs"):
        keys = ["train_cutoffs"]
    else:
        keys = [k for k in ("last_train_cutoff", "first_train_cutoff") if data.get(k) is not None]
    if not keys:
        return out
    if not data.get("test_cutoff"):
        raise ConfigError(
            f"origins: data.{keys[0]} is set but data.test_cutoff is not, so nothing says how far to move "
            "the training cutoffs; set data.test_cutoff"
        )
    shift = target - pd.Timestamp(data["test_cutoff"]).normalize()

    def moved(date: Any) -> str:
        return f"'{(pd.Timestamp(date).normalize() + shift).date()}'"

    for key in keys:
        value = data[key]
        out.append(
            f"data.{key}=[{','.join(map(moved, value))}]"
            if key == "train_cutoffs"
            else f"data.{key}={moved(value)}"
        )
    return out


def run_leaderboard(
    cfg: DictConfig, compose_train: ComposeTrain, out_dir: str | Path, overrides: Sequence[str] = ()
) -> pd.DataFrame:
    """Train every model × seed (× origin, with `origins`) and the ensembles with `overrides`; write the
    tables; return the summary."""
    out_dir = Path(out_dir)
    extra = {str(k): list(v) for k, v in (cfg.get("model_overrides") or {}).items()}
    per_model = {  # the same for every seed: resolve each model's experiment once
        str(m): [*model_run(compose_train, overrides, str(m)), *extra.get(str(m), [])] for m in cfg.models
    }
    origins = [str(pd.Timestamp(o).date()) for o in cfg.get("origins") or []]
    data = {m: compose_train(o).data for m, o in per_model.items()} if origins else {}
    rows = []
    for origin in origins or [None]:
        where = {"origin": origin} if origin else {}
        sub = f"origin_{origin}" if origin else ""
        for seed in cfg.seeds:
            for model, model_overrides in per_model.items():
                run_dir = out_dir / model / sub / f"seed_{seed}"
                moved = origin_overrides(data[model], origin) if origin else []
                run = [*model_overrides, *moved, f"seed={seed}"]
                rows.append({"model": model, **where, "seed": seed, **train_run(compose_train, run, run_dir)})
            for members in cfg.get("ensembles") or []:
                joined = "+".join(map(str, members))
                name = f"ensemble({joined})"
                # run dir without parentheses, which Hydra overrides (model_path=...) would need quoted
                run_dir = out_dir / f"ensemble_{joined}" / sub / f"seed_{seed}"
                if not (run_dir / METRICS_FILE).exists():
                    train_ensemble(
                        [out_dir / str(m) / sub / f"seed_{seed}" for m in members],
                        run_dir,
                        thresholds=OmegaConf.to_container(cfg.thresholds, resolve=True),
                        report=bool(cfg.get("report", True)),
                    )
                metrics = json.loads((run_dir / METRICS_FILE).read_text())
                rows.append(
                    {"model": name, **where, "seed": seed, **run_metrics(metrics, read_timings(run_dir))}
                )
    runs = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out_dir / "leaderboard_runs.csv", index=False)
    summary = summarise(runs)
    summary.to_csv(out_dir / "leaderboard.csv", index=False)
    title = cfg.get("title") or " ".join(overrides) or "synthetic default"
    (out_dir / "leaderboard.md").write_text(to_markdown(summary, title, list(cfg.seeds), origins))
    return summary


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1; 0 for one run) of each leaderboard column per model over its seeds (and
    origins), best test AUROC first; with an `origin` column, also the test AUROC per origin (mean over
    seeds) as `test/auroc @<origin>`."""
    keys = [k for k in COLUMNS if k in runs.columns]
    grouped = runs.groupby("model", sort=False)[keys]
    mean = grouped.mean().add_suffix(" mean")
    std = grouped.std(ddof=1).fillna(0.0).add_suffix(" std")
    parts = [grouped.size().rename("runs"), mean, std]
    if "origin" in runs.columns:
        per_origin = runs.pivot_table(index="model", columns="origin", values="test/auroc", aggfunc="mean")
        parts.append(per_origin.add_prefix("test/auroc @"))
    out = pd.concat(parts, axis=1).reset_index()
    return out.sort_values("test/auroc mean", ascending=False, kind="stable").reset_index(drop=True)


def _cell(mean: float, std: float, runs: int, key: str) -> str:
    if math.isnan(mean):
        return ""
    if key in ("train_seconds", "scoring_customers_per_s"):
        return f"{mean:,.0f}" if mean >= 100 else f"{mean:.1f}"
    digits = 2 if key == "test/lift_top10" else 4
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if runs > 1 else "")


def to_markdown(summary: pd.DataFrame, title: str, seeds: Sequence[Any], origins: Sequence[str] = ()) -> str:
    """The summary as a markdown table; with `origins`, one more column per origin (its test AUROC)."""
    keys = [k for k in COLUMNS if f"{k} mean" in summary.columns]
    over = f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))})"
    if origins:
        over += (
            f" × {len(origins)} test cutoffs ({', '.join(origins)}; training cutoffs moved back with each); "
            "AUROC @cutoff: mean over seeds at that test cutoff"
        )
    lines = [
        f"# Leaderboard: {title}",
        "",
        f"Test cutoff metrics, mean ± std over {over}. "
        "Train seconds are wall clock of fitting (networks: all epochs); scoring customers/s is model "
        "inference on the encoded test features in one process.",
        "",
        "| model | " + " | ".join([*(COLUMNS[k] for k in keys), *(f"AUROC @{o}" for o in origins)]) + " |",
        "| --- |" + " ---: |" * (len(keys) + len(origins)),
    ]
    for row in summary.to_dict("records"):
        cells = [_cell(row[f"{k} mean"], row[f"{k} std"], int(row["runs"]), k) for k in keys]
        cells += [_cell(row[f"test/auroc @{o}"], 0.0, 1, "test/auroc") for o in origins]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
