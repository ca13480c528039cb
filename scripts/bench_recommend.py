"""Benchmark the recommenders: next-best offers judged on what customers bought after the cutoff.

    python scripts/bench_recommend.py [--datasets synthetic online_retail] [--customers 20000]
        [--data-dir /tmp/churnwatch_bench_recommend] [--predictions online_retail=PATH ...] [--out FILE]

For each data set (its data config: `data.item`, `data.item_name`): every recommender in GRID is fitted on
the purchases before the tuning cutoff (data.last_train_cutoff) and judged on the horizon after it
(churnwatch.models.recommend.backtest); the settings with the best NDCG@10 per recommender are then fitted
before the test cutoff and judged once on its horizon, for all customers with a purchase before it and for
the high-risk tier (the top 10% by churn probability in a run's predictions.parquet, when one is given), in
two views: every purchase, and discovery (items new to the customer). Prints markdown for
docs/BENCHMARKS.md and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from itertools import product
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from bench_demand import data_config
from churnwatch.models.recommend.backtest import backtest
from churnwatch.models.recommend.purchases import ItemColumns
from churnwatch.models.recommend.registry import make_recommender
from churnwatch.pipeline.dataset import load_sources

K = 10
GRID: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}],
    "buy_again": [{}],
    "item_knn": [{"k": k, "own": own} for k, own in product((20, 50, 200), (0.0, 1.0, 3.0, 10.0))],
    "als": [
        {"factors": f, "alpha": a, "regularization": 0.05, "own": own, "iterations": 15}
        for f, a, own in product((32, 64), (5.0,), (0.0, 0.3, 1.0))
    ],
}


def high_tier(path: str | None, cutoff: pd.Timestamp, fraction: float = 0.1) -> dict[str, pd.Index]:
    """The riskiest `fraction` of the test customers in a run's predictions.parquet."""
    if not path:
        return {}
    pred = pd.read_parquet(path)
    pred = pred[(pred["split"] == "test") & (pd.to_datetime(pred["cutoff"]) == cutoff)]
    top = pred.nlargest(max(1, round(fraction * len(pred))), "probability")
    return {"high": pd.Index(top["customer_id"].astype(str))}


def run(dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = OmegaConf.to_container(data_config(dataset, args), resolve=True)  # bench_demand's data sets
    t0 = time.perf_counter()
    events, *_ = load_sources(cfg)
    frame = events.frame
    columns = ItemColumns(cfg["item"], cfg.get("item_name"), cfg.get("item_category"))
    horizon = int(cfg["horizon_days"])
    test = pd.Timestamp(cfg["test_cutoff"])
    tune = pd.Timestamp(cfg.get("last_train_cutoff") or test - pd.Timedelta(days=horizon))
    common = {"horizon_days": horizon, "k": K, "min_count": args.min_count}
    tuning: dict[str, list[dict[str, Any]]] = {}
    chosen: dict[str, dict[str, Any]] = {}
    for name, grid in GRID.items():
        makers = {json.dumps(p, sort_keys=True): (lambda p=p, n=name: make_recommender(n, p)) for p in grid}
        scores = backtest(frame, columns, makers, tune, **common)
        tuning[name] = [{"params": json.loads(p), **s["all"], "new": s["all/new"]} for p, s in scores.items()]
        best = max(tuning[name], key=lambda r: r[f"ndcg@{K}"])
        chosen[name] = best["params"]
        print(f"{dataset} tune {tune.date()} {name}: best {best['params']} ndcg@{K} {best[f'ndcg@{K}']:.4f}")
    makers = {n: (lambda n=n: make_recommender(n, chosen[n])) for n in GRID}
    groups = high_tier(args.predictions.get(dataset), test)
    result = backtest(frame, columns, makers, test, groups=groups, **common)
    return {
        "dataset": dataset,
        "tune_cutoff": str(tune.date()),
        "test_cutoff": str(test.date()),
        "horizon_days": horizon,
        "k": K,
        "min_count": args.min_count,
        "chosen": chosen,
        "tuning": tuning,
        "test": result,
        "seconds": round(time.perf_counter() - t0, 1),
        "customers": int(frame["customer_id"].nunique()),
        "events": len(frame),
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"**{res['dataset']}**: tuned at {res['tune_cutoff']}, tested at {res['test_cutoff']} (horizon "
        f"{res['horizon_days']} days, k = {res['k']}, items bought at least {res['min_count']} times before "
        "the cutoff)",
        "",
        f"| recommender | settings | view | customers | HR@{K} | recall@{K} | NDCG@{K} | coverage |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, views in res["test"].items():
        settings = ", ".join(f"{k}={v}" for k, v in res["chosen"][name].items()) or "-"
        for view, m in views.items():
            lines.append(
                f"| {name} | {settings} | {view} | {m['customers']:,} | {m[f'hr@{K}']:.3f} | "
                f"{m[f'recall@{K}']:.3f} | {m[f'ndcg@{K}']:.3f} | {m['coverage']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "online_retail"])
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--data-dir", default="/tmp/churnwatch_bench_recommend")
    parser.add_argument("--min-count", type=int, default=2)
    parser.add_argument("--predictions", nargs="*", default=[], help="dataset=path/to/predictions.parquet")
    parser.add_argument("--out", default="bench_recommend.json")
    args = parser.parse_args()
    args.predictions = dict(p.split("=", 1) for p in args.predictions)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {datetime.date.today()}; "
        f"command: python scripts/bench_recommend.py {' '.join(os.sys.argv[1:])}\n"
    )
    results = []
    for dataset in args.datasets:  # each data set's table as soon as it is done
        results.append(run(dataset, args))
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(markdown(results[-1]), f"\n({results[-1]['seconds']} s)\n", flush=True)


if __name__ == "__main__":
    main()
