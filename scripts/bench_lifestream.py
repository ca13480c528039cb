"""Side by side with pytorch-lifestream (ptls): same data, same model sizes; epoch time and test AUROC.

    .venv-ptls/bin/python scripts/bench_lifestream.py [--customers 20000] [--epochs 8] [--batch-size 256]
        [--max-len 128] [--lr 0.002] [--d-model 64] [--hidden 128] [--head-hidden 64] [--threads 2]
        [--models churnwatch ptls ptls-bucketed] [--work-dir /tmp/churnwatch_bench_lifestream]

Runs in its own environment (`make bench-lifestream` builds `.venv-ptls`: torch, churnwatch, then
pytorch-lifestream). The data is built once by churnwatch's own pipeline (`build_data` on the composed
`train` config's `data` group, model=gru); both models then train on the identical encoded train split,
validate on the same validation split and are judged on the same out-of-time test split:

- churnwatch: `ChurnModule` built exactly as `scripts/train.py` builds it (model=gru: event encoder →
  GRU → last real step, static embeddings joined before the MLP head; BCE with pos_weight; AdamW with
  warmup + cosine per step), trained with Lightning on churnwatch's length-bucketed loader.
- ptls: `TrxEncoder` (embeddings of the same sizes for the same categorical codes, the same standardised
  numbers as identity scalers, a linear projection to d_model) → `RnnSeqEncoder` (GRU, same hidden size,
  last step) → `Head` (the same hidden layer), trained with `SequenceToTarget` on `SeqToTargetDataset`
  batches from `PtlsDataModule` (ptls's own collate and padding). The static customer fields, which ptls's
  TrxEncoder can only take as sequence features, are repeated along each sequence (the usual ptls idiom).
  Same loss (BCE with the same pos_weight), same AdamW lr and weight decay, same per-step schedule,
  same gradient clipping, batch size, epochs and thread count.
- ptls-bucketed: the same ptls model, dataset and collate, but training batches from churnwatch's
  LengthBucketBatchSampler instead of PtlsDataModule's shuffled ones: separates input pipeline from model.

Epoch time is the wall time of the training batches of one epoch (validation excluded; reported
separately), as the median over epochs 2+ (the first is warm-up: allocator, first shapes). The process's
CPU seconds per epoch and the load average are recorded as a contention check: alone on the machine, CPU
seconds are about threads × wall; other jobs inflate both (OpenMP threads spin while waiting). Test AUROC is
torchmetrics' binary AUROC of the final-epoch model on the test split (no checkpoint selection for either).
Prints a markdown table for docs/BENCHMARKS.md and writes `results.json` into the work dir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torchmetrics.functional.classification import binary_auroc

from churnwatch.config.compose import compose
from churnwatch.models.encoders import embedding_dim
from churnwatch.pipeline.build import build_data
from churnwatch.pipeline.dataset import ChurnData, Split

REPO = Path(__file__).resolve().parents[1]


# -- shared ---------------------------------------------------------------------------------------------
def epoch_timer(base: type) -> type:
    """An epoch-timing callback for either Lightning package (`lightning` or `pytorch_lightning`): wall and
    process CPU seconds of the training batches, and of the whole epoch with its validation."""

    class EpochTimer(base):
        def __init__(self) -> None:
            self.train_s: list[float] = []
            self.train_cpu_s: list[float] = []
            self.epoch_s: list[float] = []
            self.loadavg: list[float] = []
            self._start = self._last = self._cpu_start = self._cpu_last = 0.0

        def on_train_epoch_start(self, trainer, module) -> None:
            self._start = self._last = time.perf_counter()
            self._cpu_start = self._cpu_last = time.process_time()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self._last, self._cpu_last = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, module) -> None:  # runs after the epoch's validation
            self.train_s.append(self._last - self._start)
            self.train_cpu_s.append(self._cpu_last - self._cpu_start)
            self.epoch_s.append(time.perf_counter() - self._start)
            self.loadavg.append(os.getloadavg()[0])

    return EpochTimer()


def schedule(total_steps: int, warmup_steps: int):
    """churnwatch's warmup + cosine factor (ChurnModule.configure_optimizers), per optimiser step."""
    warmup = min(warmup_steps, total_steps // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def trainer_kwargs(cfg: DictConfig, args: argparse.Namespace, work_dir: Path) -> dict:
    """The same Trainer settings for both: conf/trainer/cpu.yaml's clipping, precision and determinism."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": args.epochs,
        "precision": cfg.trainer.precision,
        "gradient_clip_val": cfg.trainer.gradient_clip_val,
        "deterministic": cfg.trainer.deterministic,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(work_dir),
    }


def loader_pass(loader, width_of) -> dict:
    """One pass over a training loader alone: its wall time and the share of padded (wasted) steps."""
    t0 = time.perf_counter()
    cells = real = 0
    for batch in loader:
        rows, width, events = width_of(batch)
        cells += rows * width
        real += events
    return {
        "loader_only_epoch_s": round(time.perf_counter() - t0, 3),
        "padded_steps_per_event": round(cells / real, 3),
    }


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def summarise(name: str, timer, aurocs: dict, params: int, train_events: int, extra: dict) -> dict:
    """Epoch figures leave out the first epoch (warm-up). Medians, since the machine may be shared: another
    process's burst inflates some epochs (wall and CPU seconds alike)."""
    later = timer.train_s[1:] or timer.train_s
    median_s = float(np.median(later))
    return {
        "model": name,
        "epochs": len(timer.train_s),
        "train_epoch_s": [round(s, 3) for s in timer.train_s],
        "train_epoch_cpu_s": [round(s, 3) for s in timer.train_cpu_s],
        "epoch_with_val_s": [round(s, 3) for s in timer.epoch_s],
        "loadavg_1m_per_epoch": [round(x, 2) for x in timer.loadavg],
        "first_epoch_s": round(timer.train_s[0], 3),
        "median_epoch_s": round(median_s, 3),
        "min_epoch_s": round(float(np.min(later)), 3),
        "mean_epoch_s": round(float(np.mean(later)), 3),
        "median_epoch_cpu_s": round(float(np.median(timer.train_cpu_s[1:] or timer.train_cpu_s)), 3),
        "median_epoch_with_val_s": round(float(np.median(timer.epoch_s[1:] or timer.epoch_s)), 3),
        "train_events_per_s": round(train_events / median_s),
        "params": params,
        **{k: round(v, 4) for k, v in aurocs.items()},
        **extra,
    }


# -- churnwatch --------------------------------------------------------------------------------------------
def run_churnwatch(cfg: DictConfig, data: ChurnData, args: argparse.Namespace, work_dir: Path) -> dict:
    import lightning as L

    from churnwatch.pipeline.datamodule import ChurnDataModule
    from churnwatch.runs.train import build_module

    L.seed_everything(args.seed, workers=True)
    dm = ChurnDataModule(cfg.data)
    dm.data = data  # the one build, shared with ptls (setup() is then a no-op)
    module = build_module(cfg, dm)  # as scripts/train.py builds it
    timer = epoch_timer(L.Callback)
    trainer = L.Trainer(callbacks=[timer], **trainer_kwargs(cfg, args, work_dir / "churnwatch"))
    trainer.fit(module, datamodule=dm)

    def predict(loader) -> tuple[torch.Tensor, torch.Tensor]:
        scores, labels = [], []
        module.eval()
        with torch.inference_mode():
            for b in loader:
                scores.append(module.net(b.cat, b.num, b.lengths, b.static_cat, b.static_num, b.aggregates))
                labels.append(b.label)
        return torch.cat(scores), torch.cat(labels)

    data_pass = loader_pass(
        dm.train_dataloader(), lambda b: (b.cat.shape[0], b.cat.shape[1], int(b.lengths.sum()))
    )
    aurocs = {}
    for stage, loader in (("val_auroc", dm.val_dataloader()), ("test_auroc", dm.test_dataloader())):
        scores, labels = predict(loader)
        aurocs[stage] = float(binary_auroc(scores, labels.int()))
    return summarise(
        "churnwatch GRU",
        timer,
        aurocs,
        n_params(module.net),
        int(data.train.seqs.lengths.sum()),
        {
            "loader": "LengthBucketBatchSampler slices of flat arrays",
            **data_pass,
            "pos_weight": float(module.pos_weight),
        },
    )


# -- ptls ------------------------------------------------------------------------------------------------
def ptls_records(
    split: Split, cat_names: list[str], num_names: list[str], static_cat: list[str], static_num: list[str]
) -> list[dict]:
    """One ptls feature dict per row: every event field as a (T,) tensor, static fields repeated along the
    sequence, `target` a float. Values are churnwatch's encoded codes and standardised numbers."""
    seqs = split.seqs
    lengths = seqs.lengths
    sizes = lengths.tolist()
    columns: dict[str, tuple[torch.Tensor, ...]] = {}
    for j, name in enumerate(cat_names):
        columns[name] = torch.from_numpy(seqs.cat[:, j].astype(np.int64)).split(sizes)
    for j, name in enumerate(num_names):
        columns[name] = torch.from_numpy(np.ascontiguousarray(seqs.num[:, j])).split(sizes)
    for j, name in enumerate(static_cat):
        repeated = np.repeat(seqs.static_cat[:, j].astype(np.int64), lengths)
        columns[name] = torch.from_numpy(repeated).split(sizes)
    for j, name in enumerate(static_num):
        columns[name] = torch.from_numpy(np.repeat(seqs.static_num[:, j], lengths)).split(sizes)
    labels = seqs.label.astype(np.float32).tolist()
    return [{**{k: v[i] for k, v in columns.items()}, "target": labels[i]} for i in range(len(labels))]


class WeightedBCELoss(torch.nn.Module):
    """BCE on probabilities with churnwatch's pos_weight (the same objective as BCEWithLogits(pos_weight))."""

    def __init__(self, pos_weight: float):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = 1.0 + (self.pos_weight - 1.0) * target
        return torch.nn.functional.binary_cross_entropy(prob.float(), target.float(), weight=weight)


def run_ptls(
    cfg: DictConfig, data: ChurnData, args: argparse.Namespace, work_dir: Path, bucketed: bool = False
) -> dict:
    """ptls's supervised GRU; `bucketed`: the same, but its training batches come from churnwatch's
    LengthBucketBatchSampler (still ptls's dataset and collate), to separate input pipeline from model."""
    import pytorch_lightning as pl
    import torchmetrics
    from ptls.frames import PtlsDataModule
    from ptls.frames.supervised import SeqToTargetDataset, SequenceToTarget
    from ptls.nn import Head, RnnSeqEncoder, TrxEncoder

    class StepScheduled(SequenceToTarget):
        """SequenceToTarget whose scheduler steps per batch, like churnwatch's warmup + cosine."""

        def configure_optimizers(self):
            (opt,), (sched,) = super().configure_optimizers()
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    pl.seed_everything(args.seed, workers=True)
    enc = data.encoder
    static_cat = [f"static_{n}" for n in enc.static_cat_names]
    static_num = [f"static_{n}" for n in enc.static_num_names]
    t0 = time.perf_counter()
    splits = {
        s: SeqToTargetDataset(
            ptls_records(getattr(data, s), enc.cat_names, enc.num_names, static_cat, static_num),
            target_col_name="target",
            target_dtype=torch.float32,
        )
        for s in ("train", "val", "test")
    }
    convert_s = time.perf_counter() - t0
    eval_batch = int(cfg.data.eval_batch_size)
    dm = PtlsDataModule(
        train_data=splits["train"],
        train_batch_size=args.batch_size,
        valid_data=splits["val"],
        valid_batch_size=eval_batch,
        test_data=splits["test"],
        test_batch_size=eval_batch,
    )
    if bucketed:
        from churnwatch.pipeline.batch import LengthBucketBatchSampler

        sampler = LengthBucketBatchSampler(data.train.seqs.lengths, args.batch_size, seed=args.seed)
        train = splits["train"]
        dm.train_dataloader = lambda: torch.utils.data.DataLoader(
            train, batch_sampler=sampler, collate_fn=train.collate_fn
        )
    embeddings = {
        n: {"in": c, "out": embedding_dim(c)}
        for n, c in zip(enc.cat_names, enc.cat_cardinalities, strict=True)
    }
    embeddings.update(
        {
            n: {"in": c, "out": embedding_dim(c, 16)}
            for n, c in zip(static_cat, enc.static_cat_cardinalities, strict=True)
        }
    )
    trx_encoder = TrxEncoder(
        embeddings=embeddings,
        numeric_values={n: "identity" for n in [*enc.num_names, *static_num]},  # already standardised
        use_batch_norm=args.ptls_batch_norm,
        linear_projection_size=args.d_model,
    )
    seq_encoder = RnnSeqEncoder(trx_encoder=trx_encoder, hidden_size=args.hidden, type="gru")
    head = Head(
        input_size=seq_encoder.embedding_size,
        hidden_layers_sizes=[args.head_hidden],
        drop_probs=[args.dropout],
        objective="classification",
    )
    pos_rate = float(data.train.snaps.label.mean())
    pos_weight = (1 - pos_rate) / max(pos_rate, 1e-6)
    steps = args.epochs * math.ceil(len(data.train) / args.batch_size)
    model = StepScheduled(
        seq_encoder=seq_encoder,
        head=head,
        loss=WeightedBCELoss(pos_weight),
        metric_list=torchmetrics.AUROC(task="binary"),
        optimizer_partial=partial(torch.optim.AdamW, lr=args.lr, weight_decay=args.weight_decay),
        lr_scheduler_partial=partial(
            torch.optim.lr_scheduler.LambdaLR, lr_lambda=schedule(steps, args.warmup_steps)
        ),
    )
    timer = epoch_timer(pl.Callback)
    trainer = pl.Trainer(callbacks=[timer], **trainer_kwargs(cfg, args, work_dir / "ptls"))
    trainer.fit(model, datamodule=dm)

    first = enc.cat_names[0]
    data_pass = loader_pass(
        dm.train_dataloader(),
        lambda b: (*b[0].payload[first].shape, int(b[0].seq_lens.sum())),
    )
    aurocs = {}
    model.eval()
    for stage, loader in (("val_auroc", dm.val_dataloader()), ("test_auroc", dm.test_dataloader())):
        probs, labels = [], []
        with torch.inference_mode():
            for x, y in loader:
                probs.append(model(x))
                labels.append(y)
        aurocs[stage] = float(binary_auroc(torch.cat(probs), torch.cat(labels).int()))
    return summarise(
        "ptls GRU, length-bucketed batches" if bucketed else "ptls GRU (SequenceToTarget)",
        timer,
        aurocs,
        n_params(model.seq_encoder) + n_params(model.head),
        int(data.train.seqs.lengths.sum()),
        {
            "loader": (
                "LengthBucketBatchSampler + SeqToTargetDataset.collate_fn"
                if bucketed
                else "PtlsDataModule + SeqToTargetDataset.collate_fn"
            ),
            **data_pass,
            "convert_to_ptls_s": round(convert_s, 2),
            "pos_weight": pos_weight,
        },
    )


# -- main ------------------------------------------------------------------------------------------------
def compose_config(args: argparse.Namespace, data_dir: str) -> DictConfig:
    overrides = [
        "model=gru",
        f"seed={args.seed}",
        f"data.data_dir={data_dir}",
        f"data.generate.n_customers={args.customers}",
        f"data.max_len={args.max_len}",
        f"data.batch_size={args.batch_size}",
        f"model.net.d_model={args.d_model}",
        f"model.net.hidden={args.hidden}",
        f"model.net.head_hidden={args.head_hidden}",
        f"model.net.dropout={args.dropout}",
        f"model.optimizer.lr={args.lr}",
        f"model.optimizer.weight_decay={args.weight_decay}",
        f"model.scheduler.warmup_steps={args.warmup_steps}",
        f"trainer.max_epochs={args.epochs}",
        # no encoded-snapshot cache (where the checkout has one): build in memory, write nothing into the repo
        "++data.cache.enabled=false",
    ]
    cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.insights.enabled = False
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--customers", type=int, default=20_000, help="synthetic customers (generated if missing)"
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--d-model", type=int, default=64, help="per-event vector size (GRU input)")
    parser.add_argument("--hidden", type=int, default=128, help="GRU hidden size")
    parser.add_argument("--head-hidden", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--models",
        nargs="+",
        choices=["churnwatch", "ptls", "ptls-bucketed"],
        default=["churnwatch", "ptls", "ptls-bucketed"],
        help="ptls-bucketed: ptls's model and collate fed by churnwatch's length-bucketing batch sampler",
    )
    parser.add_argument("--ptls-batch-norm", action="store_true", help="TrxEncoder batch norm on the numbers")
    parser.add_argument("--data-dir", default=None, help="default: <work-dir>/data_<customers>")
    parser.add_argument("--work-dir", default="/tmp/churnwatch_bench_lifestream")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir or str(work_dir / f"data_{args.customers}")
    cfg = compose_config(args, data_dir)

    t0 = time.perf_counter()
    data = build_data(cfg.data)
    build_s = time.perf_counter() - t0
    sizes = data.sizes()
    print(f"data built in {build_s:.1f} s: {sizes}, {int(data.train.seqs.lengths.sum()):,} training events")

    runners = {
        "churnwatch": run_churnwatch,
        "ptls": run_ptls,
        "ptls-bucketed": partial(run_ptls, bucketed=True),
    }
    rows = []
    for name in args.models:
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        row = runners[name](cfg, data, args, work_dir)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row["loadavg_1m_before"] = round(load, 2)
        row["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        row["key"] = name
        rows.append(row)
        print(json.dumps(row))

    ptls_version = None
    try:
        from importlib.metadata import version

        ptls_version = version("pytorch-lifestream")
    except Exception:  # noqa: BLE001 - only for the record
        pass
    setup = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} threads",
        "ptls_version": ptls_version,
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(args),
        "data": {**sizes, "train_events": int(data.train.seqs.lengths.sum()), "build_s": round(build_s, 1)},
    }
    by_key = {r["key"]: r for r in rows}
    ours, ref = by_key.get("churnwatch"), by_key.get("ptls")
    if ours and ref:
        setup["ratio_epoch_time_ours_over_ptls"] = round(ours["median_epoch_s"] / ref["median_epoch_s"], 3)
        setup["ratio_epoch_cpu_ours_over_ptls"] = round(
            ours["median_epoch_cpu_s"] / ref["median_epoch_cpu_s"], 3
        )
        setup["ratio_test_auroc_ours_over_ptls"] = round(ours["test_auroc"] / ref["test_auroc"], 4)
    (work_dir / "results.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))

    print(
        f"\n{setup['machine']}, ptls {ptls_version}; {sizes.get('train_rows')} train / "
        f"{sizes.get('val_rows')} val / {sizes.get('test_rows')} test rows, {args.epochs} epochs, "
        f"batch {args.batch_size}, max_len {args.max_len}, d_model {args.d_model}, hidden {args.hidden}; "
        f"{setup['date']}\n"
    )
    header = (
        "| model | params | first epoch s | epoch s (median, epochs 2+) | min epoch s | CPU s/epoch | "
        "epoch s incl. validation | train events/s | loader alone s/epoch | padded steps/event | val AUROC "
        "| test AUROC |"
    )
    keys = [
        ("params", "{:,}"),
        ("first_epoch_s", "{:.1f}"),
        ("median_epoch_s", "{:.2f}"),
        ("min_epoch_s", "{:.2f}"),
        ("median_epoch_cpu_s", "{:.2f}"),
        ("median_epoch_with_val_s", "{:.2f}"),
        ("train_events_per_s", "{:,}"),
        ("loader_only_epoch_s", "{:.2f}"),
        ("padded_steps_per_event", "{:.2f}"),
        ("val_auroc", "{:.4f}"),
        ("test_auroc", "{:.4f}"),
    ]
    print(header + "\n|" + "---|" * (len(keys) + 1))
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(f.format(r[k]) for k, f in keys) + " |")
    if ours and ref:
        ratios = [ours[k] / ref[k] for k, _ in keys]
        print("| ratio ours / ptls | " + " | ".join(f"{x:.3f}" for x in ratios) + " |")
    print(f"\nresults: {work_dir / 'results.json'}")


if __name__ == "__main__":
    main()
