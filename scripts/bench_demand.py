"""Benchmark BTYD demand forecasts: purchases and spend per customer in the horizon after the test cutoff.

    python scripts/bench_demand.py [--customers 20000] [--data-dir /tmp/churnwatch_bench_demand]
        [--datasets synthetic online_retail]

For the synthetic data (generated into --data-dir) and Online Retail (when ../shared/data/online_retail/
online_retail.parquet exists), with each data config's snapshots and aggregates (churnwatch.pipeline.dataset):
BG/NBD and Pareto/NBD, each with Gamma-Gamma spend, fitted on the test cutoff's own histories ("scored":
events before the cutoff, no labels) and on the training snapshots ("train"). Their forecasts of purchase
occasions and spend in [cutoff, cutoff + data.horizon_days) are compared with what the event log shows
there (churnwatch.models.demand.forecast_metrics), and P(no purchase) with the churn label (test AUROC).
Prints markdown tables for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from churnwatch.api import compose
from churnwatch.models.btyd import purchase_histories
from churnwatch.models.demand import (
    expected_purchases,
    expected_spend,
    fit_demand,
    forecast_metrics,
    realised_demand,
)
from churnwatch.pipeline.build import build_data
from churnwatch.pipeline.dataset import ChurnData

ONLINE_RETAIL = Path(__file__).resolve().parents[1].parent / "shared/data/online_retail/online_retail.parquet"


def data_config(dataset: str, args: argparse.Namespace) -> Any:
    overrides = ["data.cache.enabled=false"]
    if dataset == "synthetic":
        overrides += [
            f"data.data_dir={args.data_dir}/n{args.customers}",
            f"data.generate.n_customers={args.customers}",
        ]
    else:
        overrides.append("experiment=online_retail")
    return compose("train", overrides).data


def network_forecast(model_path: str, data: ChurnData, cfg: Any) -> dict[str, np.ndarray]:
    """A network's forecast from its time-to-event head: `expected_purchases` and `expected_spend` of
    `churnwatch score` on the raw events at the test cutoff, in the test rows' order."""
    from churnwatch.scoring.scorer import Scorer

    scorer = Scorer(model_path, drivers={"enabled": False})
    snaps = data.test.snaps
    as_of = pd.Timestamp(snaps.cutoff[0])
    scores = scorer.score(cfg.events_path, cfg.get("customers_path"), as_of=as_of, progress=False)
    scores = scores.set_index("customer_id").reindex(snaps.customer_ids(data.log))
    return {
        "purchases": scores["expected_purchases"].to_numpy(),
        "spend": scores["expected_spend"].to_numpy(),
    }


def bench(
    data: ChurnData, cfg: Any, model_path: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """One row of results per (model, fit on), and the decile tables of purchases and spend."""
    test = data.test.aggregates.to_frame()
    horizon = float(data.plan.horizon_days)
    realised = realised_demand(data.log, data.test.snaps, horizon, data.featurizer.spec)
    fit_frames = {"scored": test, "train": data.train.aggregates.to_frame()}
    rows, deciles = [], {"purchases": [], "spend": []}
    for model in ("bgnbd", "pareto_nbd"):
        for fit_on, frame in fit_frames.items():
            t0 = time.perf_counter()
            counts, spend = fit_demand(frame, model)
            fit_s = time.perf_counter() - t0
            forecast = {
                "purchases": expected_purchases(counts, test, horizon),
                "spend": expected_spend(counts, spend, test, horizon),
            }
            p0 = counts.prob_no_purchase(*purchase_histories(test), horizon)
            row: dict[str, Any] = {
                "model": model,
                "fit on": f"{fit_on} ({len(frame):,} rows)",
                "fit s": fit_s,
                "params": ", ".join(f"{k}={v:.3g}" for k, v in vars(counts.params_).items()),
                "gamma-gamma": ", ".join(f"{k}={v:.3g}" for k, v in vars(spend.params_).items()),
                "auroc": roc_auc_score(data.test.snaps.label, p0),
            }
            for what, expected in forecast.items():
                m = forecast_metrics(expected, realised[what].to_numpy())
                row.update({f"{what} {k}": m[k] for k in ("mae", "rmse", "spearman", "mean_expected")})
                row[f"{what} mean_realised"] = m["mean_realised"]
                table = m["deciles"].set_index("group")[["mean_expected", "mean_realised"]]
                deciles[what].append(table.add_prefix(f"{model}/{fit_on} "))
            rows.append(row)
    if model_path:
        forecast = network_forecast(model_path, data, cfg)
        row = {"model": "network (time-to-event head)", "fit on": "training rows", "fit s": np.nan}
        row.update({"params": Path(model_path).parent.name, "gamma-gamma": "", "auroc": np.nan})
        for what, expected in forecast.items():
            m = forecast_metrics(expected, realised[what].to_numpy())
            row.update({f"{what} {k}": m[k] for k in ("mae", "rmse", "spearman", "mean_expected")})
            row[f"{what} mean_realised"] = m["mean_realised"]
            table = m["deciles"].set_index("group")[["mean_expected", "mean_realised"]]
            deciles[what].append(table.add_prefix("network "))
        rows.append(row)
    return rows, {k: pd.concat(v, axis=1) for k, v in deciles.items()}


def markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float | np.floating) else str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def report(name: str, data: ChurnData, rows: list[dict[str, Any]], deciles: dict[str, pd.DataFrame]) -> None:
    snaps = data.test.snaps
    print(
        f"\n### {name}: test cutoff {pd.Timestamp(snaps.cutoff[0]).date()}, {len(snaps):,} customers, "
        f"horizon {data.plan.horizon_days} days, {len(data.train.snaps):,} training rows\n"
    )
    frame = pd.DataFrame(rows)
    print(markdown(frame[["model", "fit on", "params", "gamma-gamma", "fit s", "auroc"]]))
    for what in ("purchases", "spend"):
        cols = ["model", "fit on", *(f"{what} {k}" for k in ("mae", "rmse", "spearman", "mean_expected"))]
        print(
            f"\n{what.capitalize()} in the horizon (mean realised {frame[f'{what} mean_realised'][0]:.3f}):\n"
        )
        print(markdown(frame[cols].rename(columns={c: c.removeprefix(f"{what} ") for c in cols})))
        print(f"\n{what.capitalize()}, mean expected and realised per decile of each forecast:\n")
        print(markdown(deciles[what].reset_index().rename(columns={"group": "decile"})))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=20_000, help="synthetic customers")
    parser.add_argument("--data-dir", default="/tmp/churnwatch_bench_demand", help="synthetic data goes here")
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "online_retail"])
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="DATASET=PATH",
        help="also judge this model.pt's expected_purchases / expected_spend (a network with model.tte)",
    )
    args = parser.parse_args()
    print(
        f"{datetime.date.today()}, {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; python scripts/bench_demand.py --customers {args.customers}"
    )
    for dataset in args.datasets:
        if dataset == "online_retail" and not ONLINE_RETAIL.exists():
            print(f"\n{ONLINE_RETAIL} is missing: Online Retail skipped")
            continue
        t0 = time.perf_counter()
        cfg = data_config(dataset, args)
        data = build_data(cfg)
        load_s = time.perf_counter() - t0
        models = dict(m.split("=", 1) for m in args.model)
        rows, deciles = bench(data, cfg, models.get(dataset))
        report(dataset, data, rows, deciles)
        print(f"\n(data path {load_s:.0f} s)")


if __name__ == "__main__":
    main()
