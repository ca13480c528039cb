"""Preparing training snapshots on a Ray cluster: an event log larger than one machine's memory in, the
encoded-snapshot cache entry out (pipeline/cache.py), holding what `build_data` builds on one machine from
the same rows: the same snapshots, split, fitted encoders and encodings (numeric statistics equal up to
floating-point rounding, since they are summed in another order). `churnwatch train` with the same data
config then finds the entry and trains from its memory-mapped arrays.

The job, stage by stage:

1. **group** (jobs/ray_data.py): customer ids are cut into ranges of about `part_events` rows, so parts in
   order hold the customers in id order, as one machine numbers them. Ray's shuffle brings a part's events
   and customer rows together; each part is validated and snapshotted at every cutoff, as `encode_data`
   does for the whole, and written to a scratch directory beside the cache.
2. **split** (driver): the whole's checks (rows kept, label windows inside the data, a population at every
   cutoff), then the stratified split over every training customer, in id order, which draws exactly the
   customers one machine draws.
3. **fit**, in rounds of one task per part whose results merge: token counts and moments of the encoder's
   inputs and the aggregates' vocabularies and trend sums; then the aggregates' fills (`FeaturizerCounts`,
   `Moments`).
4. **encode** each part's train, validation and test rows into scratch (and the aggregates' scale).
5. **assemble** (driver): the entry, streamed part by part, never whole in memory: events.arrow in customer
   order, and each split's arrays in (cutoff, customer) order.

No leakage: every part runs the single-machine code (`build_snapshots`, `SequenceEncoder`,
`AggregateFeaturizer`) on its own customers, so a row still sees only its customer's events before its
cutoff, and the encoders are fitted on training rows only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import ray

from churnwatch.config.options import check_values
from churnwatch.config.schema import RayConfig
from churnwatch.data.schema import CUSTOMER_ID, MISSING, EventSchema
from churnwatch.data.snapshots import (
    EventLog,
    SnapshotPlan,
    Snapshots,
    build_snapshots,
    check_label_window,
    check_population,
    label_event_mask,
)
from churnwatch.data.splits import customer_strata, split_customers
from churnwatch.data.validation import JoinReport, no_event_rows
from churnwatch.errors import ConfigError
from churnwatch.features.aggregates import AggregateFeaturizer, AggregateTable, FeaturizerCounts
from churnwatch.features.encode import EncodedSequences, EncoderStats, SequenceEncoder
from churnwatch.features.stats import Moments
from churnwatch.jobs.ray_data import (
    CUSTOMERS,
    EVENTS,
    PART,
    ParquetSource,
    Reports,
    cluster_config,
    cluster_workers,
    connect,
    source_frame,
    user_errors,
)
from churnwatch.jobs.score import RunStats
from churnwatch.pipeline.cache import EncodedCache
from churnwatch.pipeline.cache_entry import EntryWriter
from churnwatch.pipeline.dataset import (
    ChurnData,
    Split,
    SplitEncoding,
    as_dict,
    ensure_events,
    load_customer_table,
    load_event_table,
    load_label_table,
    sample_weighting,
    unfitted_encoders,
)

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
SNAPSHOT_FIELDS = tuple(f.name for f in fields(Snapshots))
ROW_FIELDS = ("static_cat", "static_num", "label", "cutoff", "weight")
"""EncodedSequences arrays with one entry per row; EVENT_FIELDS have one per encoded step."""
EVENT_FIELDS = ("cat", "num", "tte", "tte_observed")


def prepare_on_ray(
    cfg: Mapping[str, Any], cluster: RayConfig | Mapping[str, Any] | None = None, part_events: int = 2_000_000
) -> ChurnData:
    """The encoded training data of the data config `cfg`, prepared on a Ray cluster into the encoded-
    snapshot cache (`cache.enabled`, `cache.dir` on a file system every node mounts), or found there.
    `events_path` (and `customers_path`) may be a parquet file or a directory of them (hive partitions
    allowed)."""
    cfg = as_dict(cfg)
    cluster = cluster_config(cluster)
    check_values({"part_events": part_events})
    ensure_events(cfg)
    cache = EncodedCache.from_config(cfg)
    if cache is None:
        raise ConfigError(
            "engine=ray writes the prepared data into the encoded-snapshot cache: set "
            "data.cache.enabled=true and data.cache.dir (a directory every node of the cluster mounts)"
        )

    def build(writer: EntryWriter | None) -> ChurnData:
        if writer is None:
            raise ConfigError(f"engine=ray: cannot write into data.cache.dir {cache.root}")
        return _Preparation(cfg, cluster, part_events, writer).run()

    return cache.get_or_build(build)


@dataclass
class _PartFiles:
    """One part in the scratch directory: its validated events and customers, and its snapshots."""

    dir: Path

    def write(
        self,
        log_frame: pd.DataFrame,
        customers: pd.DataFrame | None,
        train: Snapshots,
        test: Snapshots | None,
    ) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        feather.write_feather(log_frame, self.dir / "events.arrow", compression="uncompressed")
        if customers is not None:
            feather.write_feather(
                customers.reset_index(), self.dir / "customers.arrow", compression="uncompressed"
            )
        snaps = {f"train.{f}": getattr(train, f) for f in SNAPSHOT_FIELDS}
        if test is not None:
            snaps.update({f"test.{f}": getattr(test, f) for f in SNAPSHOT_FIELDS})
        np.savez(self.dir / "snaps.npz", **snaps)

    def events(self) -> pd.DataFrame:
        return feather.read_feather(self.dir / "events.arrow", memory_map=True)

    def customers(self) -> pd.DataFrame | None:
        path = self.dir / "customers.arrow"
        return feather.read_feather(path).set_index(CUSTOMER_ID) if path.exists() else None

    def snapshots(self, name: str) -> Snapshots | None:
        with np.load(self.dir / "snaps.npz") as stored:
            if f"{name}.customer" not in stored:
                return None
            return Snapshots(*(stored[f"{name}.{f}"] for f in SNAPSHOT_FIELDS))

    def array(self, name: str) -> np.ndarray:
        return np.load(self.dir / f"{name}.npy", mmap_mode="r")

    def save(self, name: str, values: np.ndarray) -> None:
        np.save(self.dir / f"{name}.npy", np.ascontiguousarray(values))


@dataclass
class _Part:
    """A part loaded for a round: its event log, customers and snapshot rows."""

    log: EventLog
    customers: pd.DataFrame | None
    train_all: Snapshots
    test: Snapshots | None

    @classmethod
    def load(cls, files: _PartFiles) -> _Part:
        return cls(
            EventLog.from_frame(files.events()),
            files.customers(),
            files.snapshots("train"),
            files.snapshots("test"),
        )

    def rows_of(self, customers: np.ndarray) -> Snapshots:
        """The training-cutoff rows of these (local) customers."""
        return self.train_all.subset(np.flatnonzero(np.isin(self.train_all.customer, customers)))


class _Preparation:
    """One run of the job: the driver's side of every stage."""

    def __init__(self, cfg: dict[str, Any], cluster: RayConfig, part_events: int, writer: EntryWriter):
        self.cfg, self.cluster, self.part_events, self.writer = cfg, cluster, part_events, writer
        self.events_path = str(ensure_events(cfg))
        self.schema = EventSchema.from_config(cfg)
        self.plan = SnapshotPlan.from_config(cfg)
        self.weighted = sample_weighting(cfg) == "customer"
        """Training rows weigh 1 / their customer's rows (`data.sample_weight=customer`)."""

    def run(self) -> ChurnData:
        t0 = time.perf_counter()
        connect(self.cluster)
        scratch = Path(tempfile.mkdtemp(prefix=".tmp-parts-", dir=self.writer.dir.parent))
        (scratch / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        try:
            with user_errors():
                parts = self._group(scratch)
                train, val = self._split(parts)
                encoder, featurizer = self._fit(parts, train)
                sizes = self._encode(parts, train, val, encoder, featurizer)
            data = self._assemble(parts, sizes, encoder, featurizer)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("prepared %d part(s) on Ray in %.1f s", len(parts), time.perf_counter() - t0)
        return data

    # -- 1. group ------------------------------------------------------------------------------------------
    def _group(self, scratch: Path) -> dict[int, dict[str, Any]]:
        cfg, id_column = self.cfg, self.schema.customer_id
        events = ParquetSource(self.events_path, EVENTS)
        if not events.rows:
            raise no_event_rows(self.events_path)
        n_parts = max(cluster_workers(self.cluster), -(-events.rows // self.part_events))
        bounds = events.id_ranges(id_column, n_parts)
        customers = ParquetSource(cfg["customers_path"], CUSTOMERS) if cfg.get("customers_path") else None
        data = events.read(id_column, n_parts, customers, bounds)
        if customers is not None:
            data = data.union(customers.read(id_column, n_parts, events, bounds))
        labels = ray.put(load_label_table(cfg, self.schema)) if cfg.get("labels_path") else None
        reports = Reports.remote()
        data.groupby(PART, num_partitions=len(bounds) + 1).map_groups(
            _prepare_part,
            fn_kwargs={
                "cfg": cfg,
                "events_path": self.events_path,
                "columns": (events.columns, customers.columns if customers is not None else None),
                "scratch": str(scratch),
                "labels": labels,
                "reports": reports,
            },
            batch_format="pyarrow",
            num_cpus=self.cluster.cpus_per_worker,
        ).materialize()
        parts = ray.get(reports.all.remote())
        stats = RunStats()
        for part in parts.values():
            stats.add(part["events"], part["customers"])
            stats.add_join(part["join"])
        stats.check(self.events_path)
        stats.check_join(cfg.get("customers_path"))
        stats.log()
        self.reports = [r for r in (stats.events, stats.customer_report) if r is not None]
        return parts

    # -- 2. split ------------------------------------------------------------------------------------------
    def _split(self, parts: dict[int, dict[str, Any]]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """The whole's checks, then (training, validation) customers per part, in its own numbering."""
        plan, kept = self.plan, [p for p in parts.values() if p["n_events"]]
        data_end = max(p["data_end"] for p in kept)
        data_start = min(p["data_start"] for p in kept)
        for cutoffs, key in ((plan.train_cutoffs, "train_sizes"), ([plan.test_cutoff], "test_sizes")):
            if cutoffs[0] is None:
                continue
            if not self.cfg.get("labels_path"):
                for c in cutoffs:
                    check_label_window(c, plan.horizon_days, data_end)
            for k, c in enumerate(cutoffs):
                check_population(c, sum(p[key][k] for p in parts.values()), data_start)
        offsets = self._customer_offsets(parts)
        customers = np.concatenate([p["train_customers"] + offsets[k] for k, p in parts.items()])
        strata = np.concatenate([p["strata"] for p in parts.values()])
        train, val = split_customers(self.cfg, customers, strata)

        def local(chosen: np.ndarray) -> dict[int, np.ndarray]:
            chosen = np.sort(chosen)
            return {
                k: chosen[(chosen >= offsets[k]) & (chosen < offsets[k] + p["n_customers"])] - offsets[k]
                for k, p in parts.items()
            }

        return local(train), local(val)

    def _task(self, task: Any) -> Any:
        return task.options(num_cpus=self.cluster.cpus_per_worker)

    @staticmethod
    def _customer_offsets(parts: dict[int, dict[str, Any]]) -> dict[int, int]:
        counts = [p["n_customers"] for p in parts.values()]
        return dict(zip(parts, np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64).tolist(), strict=True))

    # -- 3. fit --------------------------------------------------------------------------------------------
    def _fit(
        self, parts: dict[int, dict[str, Any]], train: dict[int, np.ndarray]
    ) -> tuple[SequenceEncoder, AggregateFeaturizer]:
        encoder, featurizer = unfitted_encoders(self.cfg, self.schema, bool(self.cfg.get("customers_path")))
        count, fill = self._task(_count), self._task(_fill)
        counted = ray.get([count.remote(p["dir"], train[k], encoder, featurizer) for k, p in parts.items()])
        encoder.fit_stats(EncoderStats.merged([c[0] for c in counted]))
        featurizer.fit_counts(FeaturizerCounts.merged([c[1] for c in counted]))
        fills = ray.get([fill.remote(p["dir"], train[k], featurizer) for k, p in parts.items()])
        featurizer.fit_fill(fills[0][0], Moments.merged([m for _, m in fills]))
        return encoder, featurizer

    # -- 4. encode -----------------------------------------------------------------------------------------
    def _encode(
        self,
        parts: dict[int, dict[str, Any]],
        train: dict[int, np.ndarray],
        val: dict[int, np.ndarray],
        encoder: SequenceEncoder,
        featurizer: AggregateFeaturizer,
    ) -> dict[int, dict[str, Any]]:
        encoding = SplitEncoding(encoder, featurizer, self.plan.horizon_days, None)
        encode, label_events = self._task(_encode), self.cfg.get("label_events")
        sizes = ray.get(
            [
                encode.remote(p["dir"], train[k], val[k], encoding, label_events, self.weighted)
                for k, p in parts.items()
            ]
        )
        featurizer.fit_scale(Moments.merged([s["scale"] for s in sizes]))
        return dict(zip(parts, sizes, strict=True))

    # -- 5. assemble ---------------------------------------------------------------------------------------
    def _assemble(
        self,
        parts: dict[int, dict[str, Any]],
        sizes: dict[int, dict[str, Any]],
        encoder: SequenceEncoder,
        featurizer: AggregateFeaturizer,
    ) -> ChurnData:
        writer = self.writer
        customer_offsets = self._customer_offsets(parts)
        event_counts = [p["n_events"] for p in parts.values()]
        event_offsets = dict(
            zip(parts, np.r_[0, np.cumsum(event_counts)[:-1]].astype(np.int64).tolist(), strict=True)
        )
        n_customers = sum(p["n_customers"] for p in parts.values())
        events_dtypes = _global_categories(parts, "events")
        writer.write_events(
            (
                _recoded(_PartFiles(Path(p["dir"])).events(), events_dtypes, customer_offsets[k])
                for k, p in parts.items()
            ),
            rows=sum(event_counts),
            customers=n_customers,
        )
        customers = None
        if self.cfg.get("customers_path"):
            frames = [_PartFiles(Path(p["dir"])).customers() for p in parts.values()]
            dtypes = _global_categories(parts, "customers")
            customers = pd.concat([_recoded(f, dtypes, None) for f in frames if f is not None])
            writer.write_customers(customers)
        splits = {}
        cutoffs = {
            "train": self.plan.train_cutoffs,
            "val": self.plan.train_cutoffs,
            "test": [self.plan.test_cutoff],
        }
        for name in SPLITS:
            if name == "test" and self.plan.test_cutoff is None:
                splits[name] = None
                continue
            weighted = name == "train" and self.weighted
            splits[name] = _assemble_split(
                writer, name, cutoffs[name], parts, sizes, customer_offsets, event_offsets, weighted
            )
        return ChurnData(
            _not_held,
            customers,
            self.plan,
            encoder,
            featurizer,
            splits["train"],
            splits["val"],
            splits["test"],
            self.reports,
        )


def _not_held() -> EventLog:
    raise RuntimeError("the prepared event log is read from the cache entry, not held by the driver")


# ---------------------------------------------------------------------------------------------- part tasks


def _prepare_part(
    group: pa.Table,
    *,
    cfg: dict[str, Any],
    events_path: str,
    columns: tuple[pa.Schema, pa.Schema | None],
    scratch: str,
    labels: Any,
    reports: Any,
) -> pa.Table:
    """Stage 1 for one part: validate its rows, snapshot it at every cutoff, write it to scratch, and report
    what the driver needs (validation, sizes, training customers and their strata, categories)."""
    part = int(group.column(PART)[0].as_py())
    events = load_event_table(cfg, events_path, source_frame(group, EVENTS, columns[0]))
    customers, customer_report, join = None, None, None
    if columns[1] is not None:
        customers, customer_report = load_customer_table(
            cfg, events.schema, source_frame(group, CUSTOMERS, columns[1])
        )
        join = JoinReport.of(events.input_ids, customers.index)
    event_log = EventLog.from_frame(events.frame)
    plan = SnapshotPlan.from_config(cfg)
    label_table = ray.get(labels) if labels is not None else None
    mask = label_event_mask(event_log.frame, cfg.get("label_events"))
    train = build_snapshots(event_log, plan.train_cutoffs, plan, label_table, mask, part=True)
    test = None
    if plan.test_cutoff is not None:
        test = build_snapshots(event_log, [plan.test_cutoff], plan, label_table, mask, part=True)
    files = _PartFiles(Path(scratch) / f"part-{part:05d}")
    files.write(events.frame, customers, train, test)
    train_customers, strata = customer_strata(train)
    frames = {"events": events.frame, "customers": customers}
    report = {
        "dir": str(files.dir),
        "events": events.report,
        "customers": customer_report,
        "join": join,
        "n_events": len(event_log),
        "n_customers": event_log.n_customers,
        "data_start": pd.Timestamp(event_log.ts.min()) if len(event_log) else None,
        "data_end": events.data_end if len(event_log) else None,
        "train_sizes": [int((train.cutoff == c.to_datetime64()).sum()) for c in plan.train_cutoffs],
        "test_sizes": [len(test)] if test is not None else [],
        "train_customers": train_customers,
        "strata": strata,
        "categories": {
            (table, c): np.asarray(f[c].cat.categories, dtype=object)
            for table, f in frames.items()
            if f is not None
            for c in f.columns
            if isinstance(f[c].dtype, pd.CategoricalDtype)
        },
    }
    ray.get(reports.add.remote(part, report))
    return pa.table({"part": [part]})


@ray.remote
def _count(
    directory: str, train: np.ndarray, encoder: SequenceEncoder, featurizer: AggregateFeaturizer
) -> tuple[EncoderStats, FeaturizerCounts]:
    """Round one of fitting, on one part's training rows."""
    part = _Part.load(_PartFiles(Path(directory)))
    rows = part.rows_of(train)
    return encoder.stats(part.log, rows, part.customers), featurizer.counts(part.log, rows, part.customers)


@ray.remote
def _fill(directory: str, train: np.ndarray, featurizer: AggregateFeaturizer) -> tuple[list[str], Moments]:
    """Round two: the aggregates' fill moments on one part's training rows."""
    part = _Part.load(_PartFiles(Path(directory)))
    table, moments = featurizer.fill_moments(part.log, part.rows_of(train), part.customers)
    return table.names, moments


@ray.remote
def _encode(
    directory: str,
    train: np.ndarray,
    val: np.ndarray,
    encoding: SplitEncoding,
    label_events: str | None,
    weighted: bool,
) -> dict[str, Any]:
    """One part's splits encoded into scratch; what assembling needs of them, and the training rows'
    aggregate scale moments."""
    files = _PartFiles(Path(directory))
    part = _Part.load(files)
    encoding = replace(encoding, activity=label_event_mask(part.log.frame, label_events))
    out: dict[str, Any] = {}
    for name, snaps in (("train", part.rows_of(train)), ("val", part.rows_of(val)), ("test", part.test)):
        if snaps is None:
            continue
        split = encoding.encode(part.log, snaps, part.customers, weighted=weighted and name == "train")
        for f in SNAPSHOT_FIELDS:
            files.save(f"{name}.snaps.{f}", getattr(snaps, f))
        for f in ("offsets", *ROW_FIELDS, *EVENT_FIELDS):
            files.save(f"{name}.seqs.{f}", getattr(split.seqs, f))
        files.save(f"{name}.aggregates", split.aggregates.values)
        out[name] = {
            "rows": len(snaps),
            "events": int(split.seqs.offsets[-1]),
            "customers": int(len(np.unique(snaps.customer))),
            "aggregates": (split.aggregates.names, split.aggregates.categorical),
        }
        if name == "train":
            out["scale"] = encoding.featurizer.scale_moments(split.aggregates)
    return out


# ---------------------------------------------------------------------------------------------- assembly


def _global_categories(parts: dict[int, dict[str, Any]], table: str) -> dict[str, pd.CategoricalDtype]:
    """Each categorical column's categories over all parts of `table` (events or customers), as one machine
    would have them: ids sorted (the parts hold consecutive ranges), other labels sorted, MISSING last."""
    names = {c for p in parts.values() for t, c in p["categories"] if t == table}
    out = {}
    for name in names:
        each = [p["categories"][table, name] for p in parts.values() if (table, name) in p["categories"]]
        if name == CUSTOMER_ID:
            ids = np.concatenate(each) if each else np.zeros(0, dtype=object)
            if not np.all(ids[1:] > ids[:-1]):
                raise RuntimeError("parts are not in customer id order: the id ranges overlap")
            out[name] = pd.CategoricalDtype(pd.Index(ids, dtype=object))
            continue
        labels = set().union(*(set(c) for c in each))
        ordered = sorted(labels - {MISSING}) + ([MISSING] if MISSING in labels else [])
        out[name] = pd.CategoricalDtype(pd.Index(ordered, dtype=object))
    return out


def _recoded(
    frame: pd.DataFrame, dtypes: dict[str, pd.CategoricalDtype], id_offset: int | None
) -> pd.DataFrame:
    """A part's frame with the whole's categories: its ids are the whole's from `id_offset` on."""
    frame = frame.copy(deep=False)
    for col in frame.columns:
        if not isinstance(frame[col].dtype, pd.CategoricalDtype):
            continue
        if col == CUSTOMER_ID and id_offset is not None:
            codes = frame[col].cat.codes.to_numpy().astype(np.int64) + id_offset
            frame[col] = pd.Categorical.from_codes(codes, dtype=dtypes[col], validate=False)
        else:
            frame[col] = frame[col].cat.set_categories(dtypes[col].categories)
    return frame


def _assemble_split(
    writer: EntryWriter,
    name: str,
    cutoffs: Any,
    parts: dict[int, dict[str, Any]],
    sizes: dict[int, dict[str, Any]],
    customer_offsets: dict[int, int],
    event_offsets: dict[int, int],
    weighted: bool,
) -> Split:
    """One split's arrays in the entry, in (cutoff, customer) order: for each cutoff, the parts' rows of it
    in part order (the parts hold consecutive customer ranges)."""
    have = [k for k in parts if name in sizes[k]]
    rows = sum(sizes[k][name]["rows"] for k in have)
    steps = sum(sizes[k][name]["events"] for k in have)
    n_customers = sum(sizes[k][name]["customers"] for k in have)
    per_row = [f"snaps.{f}" for f in SNAPSHOT_FIELDS] + [f"seqs.{f}" for f in ROW_FIELDS] + ["aggregates"]
    per_event = [f"seqs.{f}" for f in EVENT_FIELDS]
    stored = {  # each part's arrays, opened once
        k: {
            f: _PartFiles(Path(parts[k]["dir"])).array(f"{name}.{f}")
            for f in [*per_row, *per_event, "seqs.offsets"]
        }
        for k in have
    }
    first = stored[have[0]]
    out = {
        f: writer.array(f"{name}.{f}", (rows if f in per_row else steps, *first[f].shape[1:]), first[f].dtype)
        for f in [*per_row, *per_event]
    }
    lengths = np.zeros(rows, dtype=np.int64)
    r = e = 0
    for cutoff in cutoffs:
        when = pd.Timestamp(cutoff).to_datetime64()
        for k in have:
            part, size = stored[k], sizes[k][name]
            cut = part["snaps.cutoff"]
            r0, r1 = int(np.searchsorted(cut, when, "left")), int(np.searchsorted(cut, when, "right"))
            if r0 == r1:
                continue
            e0, e1 = int(part["seqs.offsets"][r0]), int(part["seqs.offsets"][r1])
            dst, dst_e = slice(r, r + r1 - r0), slice(e, e + e1 - e0)
            for f in per_row:
                out[f][dst] = part[f][r0:r1]
            for f in per_event:
                out[f][dst_e] = part[f][e0:e1]
            out["snaps.customer"][dst] += customer_offsets[k]
            out["snaps.start"][dst] += event_offsets[k]
            out["snaps.end"][dst] += event_offsets[k]
            if weighted:  # each part's weights have its own mean 1: scale them to the whole's
                out["seqs.weight"][dst] *= (size["customers"] / size["rows"]) * (rows / n_customers)
            lengths[dst] = np.diff(part["seqs.offsets"][r0 : r1 + 1])
            r, e = r + r1 - r0, e + e1 - e0
    offsets = writer.array(f"{name}.seqs.offsets", (rows + 1,), np.dtype(np.int64))
    offsets[0] = 0
    np.cumsum(lengths, out=offsets[1:])
    agg_names, agg_categorical = sizes[have[0]][name]["aggregates"]
    snaps = {f: out[f"snaps.{f}"] for f in SNAPSHOT_FIELDS}
    seqs = {f: out[f"seqs.{f}"] for f in (*ROW_FIELDS, *EVENT_FIELDS)}
    return Split(
        Snapshots(**snaps),
        EncodedSequences(offsets=offsets, customer_id=np.zeros(0, dtype=object), **seqs),
        AggregateTable(out["aggregates"], list(agg_names), list(agg_categorical)),
    )
