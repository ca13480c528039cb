"""Benchmark batch scoring: customers/s, where the time goes, and peak RSS, for an exported model on CPU.

    python scripts/bench_score.py --model checkpoints/demo/model.pt [--customers 1000000 4000000]
        [--drivers on off] [--chunk 100000] [--part-events 2000000] [--as-of 2025-01-01]
        [--work-dir /tmp/churnwatch_bench_score] [--engine local ray] [--device cpu|cuda]
    python scripts/bench_score.py --model checkpoints/demo/model.pt --forward-batches 64 128 256 1024 4096 \
        --events checkpoints/demo/data/events.parquet --as-of 2025-01-01

The second form times only the model forward (already encoded sequences, best of 2 passes) per batch size
and precision: what the scorer's default batch size rests on.

Synthetic data (seed 7) is generated once per size up to --generate-max customers; larger sizes tile the
largest generated file with prefixed ids (the same customers' histories again, under new ids: the same
work per customer, without generating millions more in memory). Each (size, drivers, engine) scoring runs
in a fresh process so its peak RSS is its own (with `--engine ray`: a local Ray cluster of --threads CPUs,
one scoring actor per CPU, whose workers are other processes, so neither peak RSS nor phases). Prints a
markdown table for docs/BENCHMARKS.md and writes the raw figures as JSON into the work dir.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

PHASES = ("read", "encode", "forward", "segments", "drivers", "offers", "rank", "write")
"""Wall seconds per phase. Reading ahead (score_file) overlaps read and encode with the rest, so they can
sum to more than the run."""


def _score_once(
    model: str, data: Path, out: Path, drivers: bool, engine: str, args: argparse.Namespace
) -> dict:
    run = (
        "r = score_file(job, progress=False)"
        if engine == "local"
        else f"import ray; ray.init(num_cpus={args.threads}, log_to_driver=False, include_dashboard=False)\n"
        "from churnwatch.jobs.score_ray import score_on_ray\nr = score_on_ray(job)"
    )
    code = f"""
import json, time, torch
torch.set_num_threads({args.threads})
from churnwatch.jobs.score import ScoreJob, score_file
job = ScoreJob(model_path={model!r}, events_path={str(data / "events.parquet")!r}, output_path={str(out)!r},
               customers_path={str(data / "customers.parquet")!r}, device={args.device!r},
               chunk_customers={args.chunk}, overwrite=True, drivers={{"enabled": {drivers}}},
               as_of={args.as_of!r}, part_events={args.part_events}, batch_size={args.batch_size},
               precision={args.precision!r})
{run}
print(json.dumps({{"seconds": r.seconds, "customers": r.customers, "phases": r.phases, "parts": r.parts,
                   "ranked": sum(r.tiers.get(t, 0) for t in ("high", "medium", "low"))}}))
"""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # ru_maxrss of children is the largest child so far: only a new maximum is this run's own
    result["peak_rss_gb"] = peak_kb / 2**20 if peak_kb > before and engine == "local" else None
    return result


def _tile(base: Path, out: Path, copies: int) -> None:
    """events/customers of `base` `copies` times, ids prefixed "t<k>-", streamed row group by row group."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    for name in ("events", "customers"):
        source = pq.ParquetFile(base / f"{name}.parquet")
        schema = source.schema_arrow.set(0, pa.field("customer_id", pa.string()))
        tmp = out / f".{name}.parquet.tmp"
        with pq.ParquetWriter(tmp, schema.remove_metadata()) as writer:
            for k in range(copies):
                for g in range(source.num_row_groups):
                    table = source.read_row_group(g)
                    ids = pc.binary_join_element_wise(
                        f"t{k}", pc.cast(table.column("customer_id"), pa.string()), "-"
                    )
                    table = table.set_column(0, "customer_id", ids)
                    writer.write_table(table.cast(schema.remove_metadata()))
        tmp.rename(out / f"{name}.parquet")


def _forward_sweep(args: argparse.Namespace) -> None:
    import torch

    from churnwatch.scoring.scorer import Scorer

    torch.set_num_threads(args.threads)
    scorer = Scorer(args.model, device="cpu", drivers={"enabled": False})
    customers = Path(args.events).with_name("customers.parquet")
    inp = scorer.load(args.events, customers if customers.exists() else None, args.as_of)
    seqs = scorer.encoder.transform(inp.log, inp.snaps, inp.customers)
    table = scorer.featurizer.transform(inp.log, inp.snaps, inp.customers)
    agg = scorer.featurizer.scale(table) if scorer.use_aggregates else None
    events = int(seqs.lengths.sum())
    print(f"{len(seqs):,} customers, {events:,} events; {args.threads} threads; {time.strftime('%Y-%m-%d')}")
    print("| precision | batch | seconds | customers/s | events/s |\n|---|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        scorer.precision = precision
        for size in args.forward_batches:
            scorer.batch_size = size
            scorer._predict(seqs, agg)  # warm-up: kernels and allocations for this shape
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                scorer._predict(seqs, agg)
                best = min(best, time.perf_counter() - t0)
            print(f"| {precision} | {size} | {best:.2f} | {len(seqs) / best:,.0f} | {events / best:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--customers", type=int, nargs="+", default=[200_000])
    parser.add_argument("--drivers", nargs="+", default=["off", "on"], choices=["on", "off"])
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the forward and drivers)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the scorer's (256 on CPU, 4096 on a GPU)"
    )
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--part-events", type=int, default=2_000_000)
    parser.add_argument("--as-of", default=None, help="score date (default: the day after the last event)")
    parser.add_argument("--generate-max", type=int, default=1_000_000)
    parser.add_argument("--work-dir", default="/tmp/churnwatch_bench_score")
    parser.add_argument("--forward-batches", type=int, nargs="+", help="time only the forward per batch size")
    parser.add_argument("--events", help="events file for --forward-batches")
    parser.add_argument("--engine", nargs="+", default=["local"], choices=["local", "ray"])
    args = parser.parse_args()
    if args.forward_batches:
        if not args.events:
            parser.error("--forward-batches needs --events")
        _forward_sweep(args)
        return
    work = Path(args.work_dir)
    rows = []
    for n in sorted(args.customers):
        data = work / f"synthetic_{n}"
        if not (data / "events.parquet").exists():
            t0 = time.perf_counter()
            if n <= args.generate_max:
                from churnwatch.data import synthetic

                synthetic.write(synthetic.generate(n_customers=n, seed=7), data)
            else:
                base = work / f"synthetic_{args.generate_max}"
                if not (base / "events.parquet").exists():
                    from churnwatch.data import synthetic

                    synthetic.write(synthetic.generate(n_customers=args.generate_max, seed=7), base)
                _tile(base, data, -(-n // args.generate_max))
            print(f"made {n:,} customers in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        import pyarrow.parquet as pq

        events = pq.ParquetFile(data / "events.parquet").metadata.num_rows
        for flag in sorted(args.drivers):  # off first: its peak RSS is the smaller one
            for engine in args.engine:
                out = work / f"scores_{n}_{flag}_{engine}{'.parquet' if engine == 'local' else ''}"
                r = _score_once(args.model, data, out, flag == "on", engine, args)
                r.update(n=n, events=events, drivers=flag, engine=engine)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr)
    (work / "bench_score.json").write_text(json.dumps(rows, indent=1))
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, device {args.device}, {args.threads} "
        f"torch threads, chunk {args.chunk:,}, part_events {args.part_events:,}, batch {args.batch_size}, "
        f"{args.precision}, as_of {args.as_of}; "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print(
        "| engine | customers | events | parts | drivers | ranked | seconds | customers/s | forward share | "
        + " | ".join(PHASES)
        + " | peak RSS GB |"
    )
    print("|" + "---|" * (10 + len(PHASES)))
    for r in rows:
        ph = r["phases"]
        rss = f"{r['peak_rss_gb']:.2f}" if r["peak_rss_gb"] else "n/a"
        print(
            f"| {r['engine']} | {r['n']:,} | {r['events']:,} | {r['parts']} | {r['drivers']} | "
            f"{r['ranked']:,} | "
            f"{r['seconds']:.1f} | "
            f"{r['customers'] / r['seconds']:,.0f} | {ph.get('forward', 0) / r['seconds']:.0%} | "
            + " | ".join(f"{ph.get(p, 0):.1f}" for p in PHASES)
            + f" | {rss} |"
        )


if __name__ == "__main__":
    main()
