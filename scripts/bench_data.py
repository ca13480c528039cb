"""Benchmark the data path: synthetic generation, then load/validate, snapshot, encode and aggregate.

    python scripts/bench_data.py [--customers 1000000] [--work-dir /tmp/churnwatch_bench]
    python scripts/bench_data.py --cache [--customers 20000] [--work-dir /tmp/churnwatch_bench_cache] [--ray]

Each phase runs in a fresh Python process so its peak RSS is its own. Prints a markdown table for
docs/BENCHMARKS.md and writes the raw figures as JSON next to the generated data.

`--cache` measures the encoded-snapshot cache instead: `build_data` on the default synthetic config without
the cache, on a miss (empty cache dir: build + write the entry) and on a hit, each in a fresh process, plus
the entry's size on disk and the time to hash the events file (the part of a hit that grows with input).
With `--ray`, also `churnwatch prepare engine=ray`'s build of the same entry (jobs/prepare_ray.py) on a local
Ray cluster of every core, into its own cache dir (the driver's peak RSS only: the workers are other
processes), checked against the single-machine build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's RSS every few ms: the peak above a baseline, for one phase of work."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self.base = _rss_bytes()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.every)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def phase_generate(args: argparse.Namespace) -> dict:
    from churnwatch.data import synthetic

    t0 = time.perf_counter()
    data = synthetic.generate(n_customers=args.customers, seed=0)
    t1 = time.perf_counter()
    synthetic.write(data, args.work_dir)
    t2 = time.perf_counter()
    return {
        "customers": args.customers,
        "events": len(data.events),
        "generate_s": t1 - t0,
        "write_s": t2 - t1,
        "total_s": t2 - t0,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def phase_encode(args: argparse.Namespace) -> dict:
    import pandas as pd

    from churnwatch.config.compose import compose
    from churnwatch.data.loaders import load_customers, load_events
    from churnwatch.data.schema import CustomerSchema, EventSchema
    from churnwatch.data.snapshots import EventLog, SnapshotPlan, build_snapshots
    from churnwatch.features.aggregates import AggregateFeaturizer, AggregateSpec
    from churnwatch.features.encode import SequenceEncoder

    cfg = compose("prepare", overrides=[f"data.data_dir={args.work_dir}", "paths.output_dir=."])
    cfg = cfg.data
    out: dict = {}
    t = time.perf_counter()
    schema = EventSchema.from_config(cfg)
    loaded = load_events(cfg.events_path, schema, end_date=cfg.end_date)
    customers, _ = load_customers(
        cfg.customers_path, CustomerSchema.from_config(cfg.customers), id_column=schema.customer_id
    )
    out["load_validate_s"] = time.perf_counter() - t
    out["events"] = len(loaded.frame)
    out["raw_frame_gb"] = loaded.frame.memory_usage(deep=True).sum() / 2**30
    log = EventLog.from_frame(loaded.frame)
    t = time.perf_counter()
    plan = SnapshotPlan.from_config(cfg)
    # One cutoff, whole histories: every event before it is encoded (no max_len truncation).
    snaps = build_snapshots(log, [pd.Timestamp(args.cutoff)], plan)
    out["snapshot_s"] = time.perf_counter() - t
    out["snapshot_rows"] = len(snaps)
    out["history_events"] = int((snaps.end - snaps.start).sum())
    encoder = SequenceEncoder(schema, CustomerSchema.from_config(cfg.customers), max_len=10**9, min_count=5)
    with PeakRSS() as mem:
        t = time.perf_counter()
        encoder.fit(log, snaps, customers)
        out["encoder_fit_s"] = time.perf_counter() - t
        t = time.perf_counter()
        seqs = encoder.transform(log, snaps, customers)
        out["encode_s"] = time.perf_counter() - t
    out["encoded_events"] = int(len(seqs.cat))
    out["encode_events_per_s"] = out["encoded_events"] / out["encode_s"]
    out["fit_plus_encode_events_per_s"] = out["encoded_events"] / (out["encode_s"] + out["encoder_fit_s"])
    out["encode_peak_extra_gb"] = (mem.peak - mem.base) / 2**30
    out["encode_peak_over_raw"] = out["encode_peak_extra_gb"] / out["raw_frame_gb"]
    del seqs
    featurizer = AggregateFeaturizer(
        AggregateSpec.from_config(cfg.aggregates), cfg.customers.categorical, [], cfg.customers.dates
    )
    with PeakRSS() as mem:
        t = time.perf_counter()
        table = featurizer.fit(log, snaps, customers).transform(log, snaps, customers)
        out["aggregates_fit_transform_s"] = time.perf_counter() - t
    out["aggregate_features"] = len(table.names)
    out["aggregates_events_per_s"] = out["history_events"] / out["aggregates_fit_transform_s"]
    out["aggregates_peak_extra_gb"] = (mem.peak - mem.base) / 2**30
    out["process_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def phase_cache(args: argparse.Namespace) -> dict:
    """One build_data through the cache (or without it, phase "uncached"), then touch what training reads."""
    from churnwatch.config.compose import compose
    from churnwatch.pipeline.build import build_data
    from churnwatch.pipeline.cache_key import content_digest
    from churnwatch.pipeline.dataset import as_dict

    cache = args.work_dir / ("cache_ray" if args.phase == "ray" else "cache")
    overrides = [
        f"data.data_dir={args.work_dir}",
        "paths.output_dir=.",
        f"data.cache.dir={cache}",
        f"data.cache.enabled={args.phase != 'uncached'}",
    ]
    cfg = as_dict(compose("prepare", overrides=overrides).data)
    out: dict = {"phase": args.phase}
    if args.phase == "ray":
        import ray

        from churnwatch.jobs.prepare_ray import prepare_on_ray

        ray.init(num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)
    with PeakRSS() as mem:
        t = time.perf_counter()
        data = prepare_on_ray(cfg, {}, args.part_events) if args.phase == "ray" else build_data(cfg)
        out["build_s"] = time.perf_counter() - t
        # What an epoch reads: every encoded event and aggregate row once (pages come in from the mapping).
        t = time.perf_counter()
        checksum = 0.0
        for name in ("train", "val", "test"):
            split = getattr(data, name)
            for arr in (split.seqs.cat, split.seqs.num, split.aggregates.values):
                for i in range(0, len(arr), 1 << 20):
                    checksum += float(np.asarray(arr[i : i + (1 << 20)], dtype=np.float64).sum())
        out["read_arrays_s"] = time.perf_counter() - t
        t = time.perf_counter()
        out["log_events"] = len(data.log)  # a hit converts the memory-mapped event frame here, on first use
        out["event_log_s"] = time.perf_counter() - t
    out["peak_extra_gb"] = (mem.peak - mem.base) / 2**30
    out["encoded_events"] = int(sum(len(getattr(data, n).seqs.cat) for n in ("train", "val", "test")))
    out["rows"] = int(sum(len(getattr(data, n)) for n in ("train", "val", "test")))
    out["checksum"] = checksum
    events_path = Path(cfg["events_path"])
    out["events_file_mb"] = events_path.stat().st_size / 1e6
    for how in ("full", "sampled"):
        t = time.perf_counter()
        content_digest(events_path, how)
        out[f"hash_{how}_s"] = time.perf_counter() - t
    entries = [p for p in cache.glob("*") if p.is_dir() and not p.name.startswith(".")]
    out["entry_mb"] = sum(f.stat().st_size for e in entries for f in e.iterdir()) / 1e6
    sizes = {f.name: f.stat().st_size for e in entries for f in e.iterdir()}
    out["events_arrow_mb"] = sizes.get("events.arrow", 0) / 1e6
    per_event = [v for k, v in sizes.items() if k.endswith((".cat.npy", ".num.npy"))]
    out["per_event_arrays_mb"] = sum(per_event) / 1e6
    return out


def _run_phase(phase: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--customers",
        str(args.customers),
        "--work-dir",
        str(args.work_dir),
        "--cutoff",
        args.cutoff,
        "--part-events",
        str(args.part_events),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> str:
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"numpy {np.__version__}, python {platform.python_version()}"
    )


def main_cache(args: argparse.Namespace) -> None:
    """Uncached vs cache miss vs cache hit, each in a fresh process, on one generated data set."""
    import shutil

    marker = args.work_dir / "customers.txt"
    if not marker.exists() or marker.read_text() != str(args.customers):
        _run_phase("generate", args)
        marker.write_text(str(args.customers))
    shutil.rmtree(args.work_dir / "cache", ignore_errors=True)
    shutil.rmtree(args.work_dir / "cache_ray", ignore_errors=True)
    phases = ("uncached", "cold", "warm", "ray") if args.ray else ("uncached", "cold", "warm")
    runs = {p: _run_phase(p, args) for p in phases}
    runs["machine"] = _machine()
    (args.work_dir / "bench_cache.json").write_text(json.dumps(runs, indent=2))
    u, c, w = runs["uncached"], runs["cold"], runs["warm"]
    assert u["checksum"] == c["checksum"] == w["checksum"], "cached arrays differ from the uncached build"
    if args.ray:  # numeric statistics summed part by part: equal to rounding
        assert np.isclose(runs["ray"]["checksum"], u["checksum"], rtol=1e-6), "the Ray build differs"
    print(
        f"{args.customers:,} customers, {w['log_events']:,} events ({w['events_file_mb']:.0f} MB parquet), "
        f"{w['rows']:,} snapshot rows, {w['encoded_events']:,} encoded events\n"
    )
    print("| build_data | time | then read all arrays | event log ready | peak RSS + |")
    print("| --- | --- | --- | --- | --- |")
    named = [("no cache", u), ("cache miss (build + write)", c), ("cache hit", w)]
    if args.ray:
        named.append((f"engine=ray, {os.cpu_count()} CPUs (build + write)", runs["ray"]))
    for name, r in named:
        print(
            f"| {name} | {r['build_s']:.2f} s | {r['read_arrays_s']:.2f} s | {r['event_log_s']:.2f} s | "
            f"{r['peak_extra_gb']:.2f} GB |"
        )
    print(
        f"\nentry {w['entry_mb']:.0f} MB on disk "
        f"({w['entry_mb'] * 1e6 / w['log_events']:.0f} B per input event): "
        f"events.arrow {w['events_arrow_mb']:.0f} MB, per-event arrays {w['per_event_arrays_mb']:.0f} MB "
        f"({w['per_event_arrays_mb'] * 1e6 / w['encoded_events']:.0f} B per encoded event); "
        f"hashing the events file: full {w['hash_full_s']:.3f} s, sampled {w['hash_sampled_s']:.3f} s"
    )
    print(f"\n{runs['machine']}; figures in {args.work_dir / 'bench_cache.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/churnwatch_bench"))
    parser.add_argument("--cutoff", default="2024-10-15")
    parser.add_argument("--cache", action="store_true", help="measure the encoded-snapshot cache")
    parser.add_argument("--ray", action="store_true", help="with --cache: also on a local Ray cluster")
    parser.add_argument("--part-events", type=int, default=2_000_000, help="engine=ray's part size")
    phases = ["generate", "encode", "uncached", "cold", "warm", "ray"]
    parser.add_argument("--phase", choices=phases, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phases = {"generate": phase_generate, "encode": phase_encode}
        result = phases.get(args.phase, phase_cache)(args)
        print(json.dumps(result))
        return
    if args.cache:
        main_cache(args)
        return
    results = {phase: _run_phase(phase, args) for phase in ("generate", "encode")}
    results["machine"] = _machine()
    (args.work_dir / "bench_data.json").write_text(json.dumps(results, indent=2))
    g, e = results["generate"], results["encode"]
    rows = [
        (
            "generate + write parquet",
            f"{g['total_s']:.1f} s",
            f"{g['customers']:,} customers, {g['events']:,} events",
            f"{g['peak_rss_gb']:.2f} GB peak RSS",
        ),
        (
            "load + validate (parquet → canonical frame)",
            f"{e['load_validate_s']:.1f} s",
            f"{e['events'] / e['load_validate_s'] / 1e6:.2f} M events/s",
            f"raw frame {e['raw_frame_gb']:.2f} GB",
        ),
        (
            "snapshot (one cutoff, full histories)",
            f"{e['snapshot_s']:.2f} s",
            f"{e['snapshot_rows']:,} rows",
            "",
        ),
        (
            "sequence encoding: transform",
            f"{e['encode_s']:.1f} s",
            f"{e['encode_events_per_s'] / 1e6:.2f} M events/s ({e['encoded_events']:,} events)",
            f"peak +{e['encode_peak_extra_gb']:.2f} GB = {e['encode_peak_over_raw']:.2f}× raw (fit included)",
        ),
        (
            "sequence encoding: fit + transform",
            f"{e['encode_s'] + e['encoder_fit_s']:.1f} s",
            f"{e['fit_plus_encode_events_per_s'] / 1e6:.2f} M events/s",
            "",
        ),
        (
            "aggregates: fit + transform",
            f"{e['aggregates_fit_transform_s']:.1f} s",
            f"{e['aggregates_events_per_s'] / 1e6:.2f} M events/s, {e['aggregate_features']} features",
            f"peak +{e['aggregates_peak_extra_gb']:.2f} GB",
        ),
    ]
    print("| step | time | throughput | memory |\n| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{results['machine']}; figures in {args.work_dir / 'bench_data.json'}")


if __name__ == "__main__":
    main()
