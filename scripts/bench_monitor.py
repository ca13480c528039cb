"""Benchmark monitoring: a trained model against fresh synthetic data of its own regime and of a shifted one.

    python scripts/train.py experiment=demo hydra.run.dir=/tmp/mon_demo data.data_dir=/tmp/mon_demo/data
    python scripts/bench_monitor.py --model /tmp/mon_demo/model.pt --train-data /tmp/mon_demo/data

Generates (once) a same-regime data set with another seed and a shifted one (the same seed, but far more
competitor offers and stronger reactions to price rises), monitors each at the same as_of, and prints a
markdown section for docs/BENCHMARKS.md. With --train-data the training data itself is monitored at
as_of too, which separates calendar effects (present there as well) from a new sample or a new regime.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from churnwatch.data import synthetic
from churnwatch.jobs.monitor import run_monitor, write_report

REPO = Path(__file__).resolve().parents[1]
SHIFT = {"competitor_offers_per_year": 6.0, "price_reaction_scale": 1.05}
"""Five times the competitor offers (default 1.2 a year), 2.5 times the reaction to a price rise (0.42)."""


def make_data(out: Path, customers: int, seed: int, shifted: bool) -> Path:
    if not (out / "events.parquet").exists():
        config = synthetic.SyntheticConfig(**SHIFT) if shifted else synthetic.SyntheticConfig()
        synthetic.write(synthetic.generate(customers, seed, config=config), out)
    return out


def row(name: str, report: dict, seconds: float) -> dict:
    worst = max(report["features"], key=lambda n: report["features"][n]["psi"])
    bt = report["backtest"]
    return {
        "data": name,
        "verdict": report["verdict"],
        "drivers": ", ".join(f"{r['name']} ({r['level']})" for r in report["reasons"]) or "-",
        "score_psi": report["score"]["psi"],
        "worst_feature": f"{worst} {report['features'][worst]['psi']:.3f}",
        "oov_increase": max(o["increase"] for o in report["oov"].values()),
        "events_ratio": report["volume"]["events_per_customer_30d"]["ratio"],
        "customers_ratio": report["volume"]["customers"]["ratio"],
        "high_share": report["tiers"]["high"]["today"],
        "auroc": bt.get("auroc"),
        "churn_rate": bt.get("churn_rate"),
        "mean_probability": bt.get("mean_probability"),
        "high_precision": bt.get("tiers", {}).get("high", {}).get("precision"),
        "seconds": seconds,
    }


def markdown(rows: list[dict], reports: dict[str, dict], expected: dict) -> str:
    head = (
        "| data | verdict | score PSI | worst feature PSI | max OOV increase | events/customer 30d | "
        "active customers | share above high cut | backtest AUROC | churn rate (mean predicted) | "
        "high-tier precision | seconds |\n"
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['data']} | **{r['verdict']}** | {r['score_psi']:.3f} | {r['worst_feature']} | "
        f"{r['oov_increase']:+.2%} | ×{r['events_ratio']:.3f} | ×{r['customers_ratio']:.3f} | "
        f"{r['high_share']:.1%} | {_num(r['auroc'], '.4f')} | "
        f"{_num(r['churn_rate'], '.1%')} ({_num(r['mean_probability'], '.1%')}) | "
        f"{_num(r['high_precision'], '.1%')} | "
        f"{r['seconds']:.0f} |"
        for r in rows
    ]
    expectation = (
        f"\nExpected (the model's test cutoff at training): AUROC {_num(expected['auroc'], '.4f')}, "
        f"high-tier precision {_num(expected['high_precision'], '.1%')} (validation).\n"
    )
    first = next(iter(reports.values()))
    psi = "\n| PSI | training drift | " + " | ".join(reports) + " |\n|---|" + "---:|" * (len(reports) + 1)
    for n in ["churn_probability (score)", *first["features"]]:
        pick = [rep["score"] if n.endswith("(score)") else rep["features"][n] for rep in reports.values()]
        drift = _num(pick[0]["training_drift"], ".3f")
        psi += f"\n| {n} | {drift} | " + " | ".join(f"{f['psi']:.3f}" for f in pick) + " |"
    psi += "\n"
    drivers = "\n" + "\n".join(f"- {r['data']}: {r['drivers']}" for r in rows) + "\n"
    return head + "\n".join(lines) + "\n" + expectation + psi + drivers


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train-data", type=Path, default=None, help="the model's data dir (optional)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/churnwatch_monitor_bench"))
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", default="2024-11-01", help="the data end minus the 60-day horizon")
    parser.add_argument("--strict", action="store_true", help="psi.tolerate_training_drift=false")
    args = parser.parse_args()
    thresholds = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "monitor.yaml").thresholds)
    thresholds["psi"]["tolerate_training_drift"] = not args.strict
    sets = {
        f"same regime, seed {args.seed}": make_data(args.work_dir / "same", args.customers, args.seed, False),
        f"shifted regime, seed {args.seed}": make_data(
            args.work_dir / "shifted", args.customers, args.seed, True
        ),
    }
    if args.train_data:
        sets = {"training data": args.train_data, **sets}
    rows, reports = [], {}
    for name, data in sets.items():
        t0 = time.perf_counter()
        report = run_monitor(
            args.model,
            data / "events.parquet",
            thresholds,
            customers_path=data / "customers.parquet",
            as_of=args.as_of,
            device="cpu",
        )
        seconds = time.perf_counter() - t0
        write_report(report, args.work_dir / name.split(",")[0].replace(" ", "_"))
        rows.append(row(name, report, seconds))
        reports[name] = report
    bt = next(iter(reports.values()))["backtest"]
    expected = {
        "auroc": bt.get("expected_auroc"),
        "high_precision": bt.get("tiers", {}).get("high", {}).get("expected_precision"),
    }
    (args.work_dir / "bench_monitor.json").write_text(
        json.dumps({"as_of": args.as_of, "shift": SHIFT, "rows": rows}, indent=2)
    )
    print(f"monitor at as_of {args.as_of}; shifted regime: {SHIFT}\n")
    print(markdown(rows, reports, expected))


if __name__ == "__main__":
    main()
