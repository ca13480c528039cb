"""Benchmark the scoring service on localhost: requests/s, customers/s and p50/p99 latency at 1, 16 and 64
concurrent clients, for single-customer and 100-customer requests, with and without micro-batching.

    python scripts/bench_serve.py --model checkpoints/demo/model.pt --events data/synthetic/events.parquet \\
        --as-of 2025-01-01 [--clients 1 16 64] [--sizes 1 100] [--seconds 10] [--drivers off] [--out FILE] \\
        [--format json|json-columns|arrow] [--workers N]

The service runs as `churnwatch serve` in its own process; the clients are a lean keep-alive HTTP/1.1 loop
in this one (asyncio streams, bodies built beforehand), so the load generator costs little next to the
server, but it shares the machine: on 2 cores the figures are a floor. Customers of about 50 events each;
every request asks about other customers. Each cell runs `--seconds` (after a warm-up second), bounded by
`--max-requests`. Each line ends with the server's own view from its /metrics: the mean requests per
micro-batch and the mean batch time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]


def bodies(
    events: pd.DataFrame, size: int, count: int, as_of: str, seed: int, kind: str = "json"
) -> list[bytes]:
    """Up to `count` JSON bodies of `size` customers each, no customer in two bodies (concurrent requests
    about one customer are rare, and the service scores them in separate passes). Single-customer bodies
    take customers of 45-55 events; larger ones, any customer."""
    lengths = events.groupby("customer_id", observed=True).size()
    pool = lengths[(lengths >= 45) & (lengths <= 55)] if size == 1 else lengths
    chosen = np.random.default_rng(seed).permutation(np.asarray(pool.index.astype(str)))
    chosen = chosen[: min(count, len(chosen) // size) * size]
    sub = events[events["customer_id"].astype(str).isin(set(chosen))]
    by_customer = {
        str(c): json.loads(g.to_json(orient="records", date_format="iso"))
        for c, g in sub.groupby("customer_id", observed=True)
    }
    out = []
    for start in range(0, len(chosen), size):
        rows = [r for c in chosen[start : start + size] for r in by_customer[str(c)]]
        if kind == "json":
            out.append(json.dumps({"events": rows, "as_of": as_of}).encode())
            continue
        if kind == "json-columns":  # the same rows as {column: [values]}
            keys = dict.fromkeys(k for row in rows for k in row)
            columns = {k: [row.get(k) for row in rows] for k in keys}
            out.append(json.dumps({"events": columns, "as_of": as_of}).encode())
            continue
        table = pa.Table.from_pylist(rows)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        out.append(sink.getvalue())
    return out


def request_bytes(body: bytes, drivers: bool, kind: str, as_of: str) -> bytes:
    as_json = kind.startswith("json")
    query = ([] if drivers else ["drivers=false"]) + ([] if as_json else [f"as_of={as_of}"])
    path = "/v1/score" + ("?" + "&".join(query) if query else "")
    media = "application/json" if as_json else "application/vnd.apache.arrow.stream"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {media}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def client(port: int, requests: list[bytes], until: float, warm_until: float, out: list, cursor: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until and cursor[0] < cursor[1]:
            i = cursor[0]
            cursor[0] += 1
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            if t0 >= warm_until:
                out.append((time.perf_counter() - t0, status))
    finally:
        writer.close()


async def cell(port: int, requests: list[bytes], clients: int, seconds: float, max_requests: int) -> list:
    start = time.perf_counter()
    warm_until, until = start + 1.0, start + 1.0 + seconds
    out: list = []
    cursor = [0, max_requests]
    await asyncio.gather(*(client(port, requests, until, warm_until, out, cursor) for _ in range(clients)))
    return out, time.perf_counter() - warm_until


def batch_totals(port: int) -> dict[str, float]:
    """The server's batch counters from /metrics: batches, requests and seconds so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    wanted = {
        "churnwatch_batch_seconds_count": "batches",
        "churnwatch_batch_seconds_sum": "seconds",
        "churnwatch_batch_requests_sum": "requests",
    }
    return {
        wanted[name]: float(value)
        for name, value in (line.split()[:2] for line in text.splitlines() if line.split()[:1] != ["#"])
        if name in wanted
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, seconds: float = 300.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the service on port {port} did not answer within {seconds:.0f} s")


def start_server(model: str, batching: bool, drivers: bool, workers: int = 1) -> tuple[subprocess.Popen, int]:
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "serve.py"),
        f"model_path={model}",
        f"port={0 if workers == 1 else free_port()}",  # workers share a port given beforehand
        "log_level=warning",
        "reload_seconds=0",
        f"workers={workers}",
        f"batching.enabled={str(batching).lower()}",
        f"drivers.enabled={str(drivers).lower()}",
        "hydra.run.dir=/tmp/churnwatch_bench_serve",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    for line in proc.stdout:
        if line.startswith("churnwatch serve:"):
            url = next(w for w in line.split() if w.startswith("http://"))
            # its log goes on: read and drop it, or a full pipe would stop the server mid-write
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            port = int(url.rsplit(":", 1)[1])
            if workers > 1:  # the workers bind the port after this line: wait until they answer
                wait_healthy(port, proc)
            return proc, port
    raise RuntimeError(f"the service did not start: {proc.wait()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "checkpoints" / "demo" / "model.pt"))
    ap.add_argument("--events", default=str(REPO / "data" / "synthetic" / "events.parquet"))
    ap.add_argument("--as-of", default="2025-01-01")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--batching", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--drivers", default="off", choices=["on", "off"])
    ap.add_argument(
        "--format",
        default="json",
        choices=["json", "json-columns", "arrow"],
        help="the request bodies: JSON rows [{column: value}], JSON columns {column: [values]}, Arrow IPC",
    )
    ap.add_argument("--workers", type=int, default=1, help="server processes (churnwatch serve workers=)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    events = pd.read_parquet(args.events)
    drivers = args.drivers == "on"
    prepared = {
        size: [
            request_bytes(b, drivers, args.format, args.as_of)
            for b in bodies(events, size, 1000, args.as_of, size, args.format)
        ]
        for size in args.sizes
    }
    results = []
    for batching in args.batching:
        proc, port = start_server(args.model, batching == "on", drivers, args.workers)
        try:
            for size in args.sizes:
                for clients in args.clients:
                    before = batch_totals(port)
                    got, seconds = asyncio.run(
                        cell(port, prepared[size], clients, args.seconds, args.max_requests)
                    )
                    done = {k: v - before.get(k, 0.0) for k, v in batch_totals(port).items()}
                    batches = max(done.get("batches", 0.0), 1.0)
                    latency = np.array([t for t, _ in got]) * 1000
                    errors = sum(1 for _, s in got if s != 200)
                    row = {
                        "batching": batching,
                        "format": args.format,
                        "customers_per_request": size,
                        "clients": clients,
                        "requests": len(got),
                        "errors": errors,
                        "requests_per_s": len(got) / seconds,
                        "customers_per_s": len(got) * size / seconds,
                        "p50_ms": float(np.percentile(latency, 50)) if len(got) else float("nan"),
                        "p99_ms": float(np.percentile(latency, 99)) if len(got) else float("nan"),
                        # the server's side, warm-up second included: how big its batches were, how long
                        "requests_per_batch": done.get("requests", 0.0) / batches,
                        "batch_ms": 1000 * done.get("seconds", 0.0) / batches,
                    }
                    results.append(row)
                    print(
                        f"{args.format:>12} batching {batching:>3}  {size:>3} customer(s)/request  "
                        f"{clients:>2} clients: "
                        f"{row['requests_per_s']:8.1f} req/s  {row['customers_per_s']:8.1f} customers/s  "
                        f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {errors}  "
                        f"(batches of {row['requests_per_batch']:.1f} requests, {row['batch_ms']:.1f} ms)",
                        flush=True,
                    )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    report = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}, python {platform.python_version()}",
        "model": args.model,
        "drivers": args.drivers,
        "workers": args.workers,
        "seconds_per_cell": args.seconds,
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
