"""Benchmark driver attribution: explained customers/s against fidelity, by integrated-gradients steps.

    python scripts/bench_drivers.py --model checkpoints/demo/model.pt \\
        --events data/synthetic/events.parquet --truth data/synthetic/truth.parquet --as-of 2024-10-15 \\
        [--steps 1 2 4] [--reference-steps 32] [--customers 4000]

Scores the customers in the model's population at `--as-of` (up to `--customers`), explains them with each
number of Gauss-Legendre steps and with `--reference-steps` (the "full-step" attribution), and reports per
setting: explained customers/s (integrated gradients alone, and the whole driver step with the texts), the
share of customers whose top driver agrees with the reference's, the share whose top-3 set agrees, and,
where `--truth` is given (the synthetic generator's ground truth), the match rate of the top driver with
the true mechanism among customers who truly churned within the horizon after `--as-of`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from churnwatch.explain.drivers import context_frame, explain_sequences, match_rate, owners, top_drivers
from churnwatch.features.aggregates import AggregateTable
from churnwatch.runtime.hardware import autocast
from churnwatch.scoring.scorer import CPU_DRIVERS_BATCH, Scorer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "checkpoints" / "demo" / "model.pt"))
    ap.add_argument("--events", default=str(REPO / "data" / "synthetic" / "events.parquet"))
    ap.add_argument("--customers-file", default=str(REPO / "data" / "synthetic" / "customers.parquet"))
    ap.add_argument("--truth", default=str(REPO / "data" / "synthetic" / "truth.parquet"))
    ap.add_argument("--as-of", default="2024-10-15")
    ap.add_argument("--horizon-days", type=int, default=None, help="default: the model's label horizon")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--reference-steps", type=int, default=32)
    ap.add_argument("--customers", type=int, default=4000, help="explained customers, at most")
    ap.add_argument("--batch-size", type=int, default=CPU_DRIVERS_BATCH, help="the scorer's CPU default")
    ap.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="of the timed steps (bf16: autocast, where the CPU has bf16 units); the reference is fp32",
    )
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    scorer = Scorer(args.model, device="cpu", drivers={"enabled": True})
    attributes = args.customers_file if args.customers_file and Path(args.customers_file).exists() else None
    inp = scorer.load(args.events, attributes, as_of=args.as_of)
    log_, snaps = inp.log, inp.snaps
    rows = np.flatnonzero(scorer.in_population(log_, snaps))[: args.customers]
    sub = snaps.subset(rows)
    seqs = scorer.encoder.transform(log_, sub, inp.customers)
    table = scorer.featurizer.transform(log_, sub, inp.customers)
    agg = None
    if scorer.use_aggregates:
        agg = table.values if scorer.raw_aggregates else scorer.featurizer.scale(table)
    owner = owners(scorer.catalogue, log_, sub, scorer.encoder, table.names if scorer.use_aggregates else [])
    ids = sub.customer_ids(log_).astype(str)
    context = context_frame(
        AggregateTable(table.values, table.names, table.categorical),
        inp.customers,
        ids,
        scorer.customer_schema.columns,
    )
    truth = _truth(args, scorer, ids)

    def explain(steps: int, bf16: bool = False) -> tuple[np.ndarray, float, float, pd.DataFrame]:
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), bf16):
            scores = explain_sequences(
                scorer.model, seqs, owner, agg, batch_size=args.batch_size, steps=steps, device="cpu"
            )
        t1 = time.perf_counter()
        centred = scores - scorer.center
        found = top_drivers(centred, scorer.catalogue, context, 3)
        return centred, t1 - t0, time.perf_counter() - t0, found

    bf16 = args.precision == "bf16"
    explain(1, bf16)  # warm-up: TorchScript's first calls
    reference = explain(args.reference_steps)[0]
    ref_top = np.argsort(-reference, axis=1)[:, :3]
    results = []
    for steps in [*args.steps, args.reference_steps]:
        scores, ig_s, all_s, found = explain(steps, bf16)
        top = np.argsort(-scores, axis=1)[:, :3]
        row = {
            "steps": steps,
            "precision": args.precision,
            "customers": len(rows),
            "events": int(seqs.lengths.sum()),
            "ig_customers_per_s": len(rows) / ig_s,
            "drivers_customers_per_s": len(rows) / all_s,
            "top1_agrees": float(np.mean(top[:, 0] == ref_top[:, 0])),
            "top3_set_agrees": float(np.mean(np.all(np.sort(top, 1) == np.sort(ref_top, 1), axis=1))),
        }
        if truth is not None:
            churned = truth.notna().to_numpy()
            got = match_rate(found["main_driver"][churned], truth[churned], scorer.catalogue)
            row["truth_match"], row["truth_customers"] = got["match_rate"], got["customers"]
        results.append(row)
        print(
            f"steps {steps:>3}: IG {row['ig_customers_per_s']:7.0f} customers/s, with texts "
            f"{row['drivers_customers_per_s']:7.0f}/s; top driver = {args.reference_steps}-step's for "
            f"{100 * row['top1_agrees']:5.1f}%, top-3 set {100 * row['top3_set_agrees']:5.1f}%"
            + (
                f"; truth match {row['truth_match']:.3f} (n={row['truth_customers']})"
                if truth is not None
                else ""
            ),
            flush=True,
        )
    if args.out:
        report = {
            "machine": f"{platform.machine()}, {platform.processor() or '?'}, torch threads "
            f"{torch.get_num_threads()}",
            "model": args.model,
            "as_of": args.as_of,
            "results": results,
        }
        Path(args.out).write_text(json.dumps(report, indent=1))


def _truth(args: argparse.Namespace, scorer: Scorer, ids: np.ndarray) -> pd.Series | None:
    """The true mechanism of each customer who truly churned within the horizon after as_of, else NaN."""
    if not args.truth or not Path(args.truth).exists():
        return None
    horizon = args.horizon_days or int(scorer.data_cfg["horizon_days"])
    truth = pd.read_parquet(args.truth).set_index("customer_id").reindex(ids)
    cutoff = pd.Timestamp(args.as_of)
    churn_at = pd.to_datetime(truth["churn_at"])
    within = (churn_at >= cutoff) & (churn_at < cutoff + pd.Timedelta(days=horizon))
    return pd.Series(truth["dominant_driver"].astype(object).where(within).to_numpy())


if __name__ == "__main__":
    main()
