"""Benchmark training throughput: events/s and sequences/s per model, each step split into data and compute.

    python scripts/bench_train.py [--models lstm gru transformer] [--device cpu|cuda] [--precision 32|bf16]
        [--customers 20000] [--batch-size 512] [--max-len 256] [--d-model 128] [--layers 4] [--steps 40]
        [--num-workers 0] [--device-gather auto|true|false] [--pad-multiple auto|N] [--compile]
        [--data-dir /tmp/churnwatch_bench_train]

Real batches come from the training DataLoader (length-bucketed slices of the flat encoded arrays);
"data" is the wall time to get the next batch and move it to the device, "compute" the forward, backward
and optimiser step (synchronised on CUDA). The same steps are then timed on the same batches already on the
device ("in-device"): the input pipeline is the bottleneck when real step time exceeds that. Batches are
gathered where `data.device_gather` says and padded to `data.pad_multiple`, whose auto settings follow
--device as a training run's follow its trainer's (a GPU: gathered there if the split fits, widths of 16).
Prints a markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time

import torch

from churnwatch.config.compose import compose
from churnwatch.models.module import ChurnModule
from churnwatch.pipeline.datamodule import ChurnDataModule


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _net_config(model: str, d_model: int, layers: int) -> dict:
    if model == "transformer":
        return {
            "encoder": "transformer",
            "d_model": d_model,
            "num_layers": layers,
            "n_heads": 4,
            "pooling": "attention",
            "head_hidden": d_model,
        }
    return {
        "encoder": model,
        "d_model": d_model,
        "hidden": d_model,
        "num_layers": 1,
        "pooling": "last",
        "head_hidden": d_model,
    }


def bench(model: str, dm: ChurnDataModule, args: argparse.Namespace, device: torch.device) -> dict:
    module = ChurnModule(
        dm.feature_spec(), _net_config(model, args.d_model, args.layers), pos_rate=dm.train_positive_rate
    ).to(device)
    net = torch.compile(module.net) if args.compile else module.net
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step(batch) -> None:
        with amp:
            logits = net(
                batch.cat, batch.num, batch.lengths, batch.static_cat, batch.static_num, batch.aggregates
            )
        loss = module.loss(logits, batch.label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    loader = itertools.cycle(dm.train_dataloader())
    batches, data_s, compute_s = [], 0.0, 0.0
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        batch = next(loader).to(device, non_blocking=True)
        _sync(device)
        t1 = time.perf_counter()
        step(batch)
        _sync(device)
        t2 = time.perf_counter()
        if i >= args.warmup:
            data_s += t1 - t0
            compute_s += t2 - t1
            batches.append(batch)
    events = sum(int(b.lengths.sum()) for b in batches)
    sequences = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for batch in batches:  # the same batches, already on the device
        step(batch)
    _sync(device)
    in_device_s = time.perf_counter() - t0
    real_s = data_s + compute_s
    return {
        "model": model,
        "events_per_s": events / real_s,
        "sequences_per_s": sequences / real_s,
        "step_ms": 1000 * real_s / args.steps,
        "data_ms": 1000 * data_s / args.steps,
        "compute_ms": 1000 * compute_s / args.steps,
        "in_device_step_ms": 1000 * in_device_s / args.steps,
        "mean_length": events / sequences,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["lstm", "gru", "transformer"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4, help="transformer layers")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--device-gather", default="auto", help="data.device_gather: auto | true | false")
    parser.add_argument("--pad-multiple", default="auto", help="data.pad_multiple: auto | N")
    parser.add_argument("--data-dir", default="/tmp/churnwatch_bench_train")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    overrides = [
        f"data.data_dir={args.data_dir}",
        f"data.generate.n_customers={args.customers}",
        f"data.max_len={args.max_len}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.num_workers}",
        f"data.pin_memory={device.type == 'cuda'}",
        f"data.device_gather={args.device_gather}",
        f"data.pad_multiple={args.pad_multiple}",
    ]
    dm = ChurnDataModule(compose("train", overrides=overrides).data, device=device)
    dm.setup("fit")
    served = dm.train_dataloader().dataset
    gathered = getattr(served, "device", None)
    rows = [bench(m, dm, args, device) for m in args.models]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    setup = (
        f"{name}, {args.precision}, batch {args.batch_size}, max_len {args.max_len}, d_model {args.d_model}, "
        f"transformer layers {args.layers}, {args.steps} steps, num_workers {args.num_workers}, "
        f"compile {args.compile}, batches gathered on {gathered or 'the host'}, widths rounded to "
        f"{served.width_multiple}; {time.strftime('%Y-%m-%d')}"
    )
    columns = [
        "events/s",
        "sequences/s",
        "step ms",
        "data ms",
        "compute ms",
        "in-device step ms",
        "mean length",
    ]
    keys = ["events_per_s", "sequences_per_s", "step_ms", "data_ms", "compute_ms", "in_device_step_ms"]
    print(f"\n{setup}\n\n| model | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1))
    for r in rows:
        cells = [f"{r[k]:,.0f}" if k.endswith("per_s") else f"{r[k]:.1f}" for k in keys]
        print(f"| {r['model']} | " + " | ".join(cells) + f" | {r['mean_length']:.0f} |")


if __name__ == "__main__":
    main()
