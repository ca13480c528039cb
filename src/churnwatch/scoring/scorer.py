"""Batch scoring: raw events → (the training contract and encoders, from the artifact) → risk per customer.

Nothing here re-implements encoding: the artifact's metadata rebuilds the same contract, encoder and
aggregate featurizer objects that training fitted, and their `transform` does the work. Every customer id
in the input appears exactly once in the output, or the run fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from churnwatch.artifact.export import Artifact, load_model, tabular_attribution
from churnwatch.config.options import check_values
from churnwatch.data.contract import (
    CUSTOMER_ID,
    TIMESTAMP,
    CustomerSchema,
    DataValidationError,
    EventSchema,
    JoinReport,
    LoadedEvents,
    ValidationReport,
    count_rows,
    load_customers,
    load_events,
    no_event_rows,
    no_valid_events,
    parse_day,
    read_table,
    some_of,
)
from churnwatch.data.partition import by_category, read_part, split_file
from churnwatch.data.snapshots import DAY_NS, EventLog, Snapshots, build_snapshot
from churnwatch.explain.drivers import IndicatorCatalogue, explain_sequences, sum_by_owner, top_drivers
from churnwatch.explain.insights import Segments, context_frame, owners
from churnwatch.explain.playbook import Playbook
from churnwatch.features.aggregates import AggregateFeaturizer, AggregateTable
from churnwatch.features.encode import EncodedSequences, SequenceEncoder
from churnwatch.io.atomic import atomic_path, check_output, scratch_dir
from churnwatch.io.signing import Verification
from churnwatch.models.thresholds import Operating, tiers_at
from churnwatch.pipeline.batch import EventBatch, pad_batch
from churnwatch.runtime.hardware import autocast, choose_precision, fit_threads, resolve_device
from churnwatch.runtime.memory import release_free_memory
from churnwatch.scoring.output import (
    RANK_KEYS,
    atomic_output,
    check_suffix,
    rank_order,
    read_rank_keys,
    write_ranked,
)

log = logging.getLogger(__name__)
OUTPUT_COLUMNS = (
    "customer_id",
    "churn_probability",
    "risk_tier",
    "risk_rank",
    "percentile",
    "n_events",
    "last_event_at",
    "as_of",
    "no_history",
    "lapsed",
    "recent_spend",
    "expected_purchases",
    "expected_spend",
    "value_at_risk",
    "rfm_segment",
    "behaviour_cluster",
    "main_driver",
    "driver_1",
    "driver_2",
    "driver_3",
    "action",
)
RANK_BY = ("probability", "value_at_risk")
# Default forward batch. On CPU small batches stay in cache: the demo LSTM scores 1.4x faster at 256 than
# at 1024 (docs/BENCHMARKS.md); a GPU wants large ones (not timed here).
CPU_BATCH, GPU_BATCH = 256, 4096


@dataclass(frozen=True)
class ScoringInput:
    """What a scoring run reads: the validated event log, one snapshot per customer, attributes, ids."""

    log: EventLog
    snaps: Snapshots
    customers: pd.DataFrame | None
    as_of: pd.Timestamp
    input_ids: np.ndarray
    join: JoinReport | None = None
    """How the customers file joined these customers (None without one)."""


@dataclass(frozen=True)
class ScoringResult:
    output_path: Path
    customers: int
    scored: int
    no_history: int
    seconds: float
    top: pd.DataFrame
    """The output's first rows: the riskiest customers (a shard part's first rows, unranked)."""
    tiers: dict[str, int]
    """Customers per risk tier (empty for a shard part: tiers need the whole population)."""
    parts: int
    """Customer-disjoint parts the input was streamed in (1: it fitted in one)."""
    phases: dict[str, float]
    """Wall seconds per phase: read (and validate), encode, forward, segments, drivers, rank, write."""


Table = str | Path | pd.DataFrame | pa.Table
"""An input table: a parquet or CSV file, or the rows in memory."""


def table_source(table: Table | None, name: str) -> tuple[str | Path | None, pd.DataFrame | None]:
    """A file as (its path, None); rows in memory as (a label for messages, a DataFrame whose index is the
    row number, what validation errors cite)."""
    if isinstance(table, pa.Table):
        return f"<{name}: Arrow table>", table.to_pandas()
    if isinstance(table, pd.DataFrame):
        return f"<{name}: DataFrame>", table.reset_index(drop=True)
    return table, None


class Scorer:
    """A loaded model, ready to score event logs in the contract it was trained on.

    scorer = Scorer("model.pt", precision="auto")   # or Scorer(load_model("model.pt"))
    scores = scorer.score(events_df, customers_df, as_of="2024-11-01")
    """

    def __init__(
        self,
        model: str | Path | Artifact,
        device: str = "auto",
        batch_size: int | None = None,
        drivers: Mapping[str, Any] | None = None,
        playbook: Mapping[str, Any] | None = None,
        rank_by: str = "probability",
        value_days: int = 90,
        precision: str = "fp32",
        verify: Verification | None = None,
    ):
        drivers_values = {f"drivers.{k}": v for k, v in (drivers or {}).items()}
        check_values({"batch_size": batch_size, "value_days": value_days, **drivers_values})
        self.device = resolve_device(device)
        fit_threads()
        self.precision = choose_precision(precision, self.device)
        """What the forward runs in: `precision` (fp32 | bf16 | auto) as this device can run it."""
        self.seconds: dict[str, float] = {}
        """Wall seconds per phase (read, encode, forward, segments, drivers, rank, write), summed."""
        artifact = model if isinstance(model, Artifact) else load_model(model, self.device, verify)
        self.model_path = artifact.path
        self.model, self.meta = artifact.module.to(self.device), artifact.meta
        self.batch_size = batch_size or (CPU_BATCH if self.device.type == "cpu" else GPU_BATCH)
        data = self.meta["data"]
        self.data_cfg = data
        self.schema = EventSchema.from_config(data)
        self.customer_schema = (
            CustomerSchema.from_config(data.get("customers"))
            if data.get("customers_path")
            else CustomerSchema()
        )
        self.encoder = SequenceEncoder.from_state(self.meta["encoder"], self.schema, self.customer_schema)
        self.use_aggregates = int(self.meta["features"].get("n_aggregates", 0)) > 0
        self.raw_aggregates = bool(self.meta["features"].get("raw_aggregates"))
        """A tabular model reads the filled aggregate table as it is; networks read it scaled."""
        self.featurizer = AggregateFeaturizer.from_state(self.meta["featurizer"])
        tiers = self.meta["tiers"]
        self.operating = Operating(
            self.meta["threshold"], tiers["high"], tiers["medium"], tiers.get("rule", {})
        )
        if rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
        self.rank_by = rank_by
        self.value_column = f"spend_{int(value_days)}d"
        windows = self.featurizer.spec.windows
        if int(value_days) not in windows:
            raise ValueError(f"value_days={value_days} must be one of the aggregate windows {windows}")
        self.segments = Segments.from_state(self.meta["segments"]) if self.meta.get("segments") else None
        self.playbook = Playbook.from_config(playbook or {"rules": [{"action": "no_action"}]})
        self.drivers = {"enabled": True, "top_n": 3, "steps": 4, "batch_size": 256, **dict(drivers or {})}
        trained = self.meta.get("drivers") or {}
        self.catalogue = IndicatorCatalogue.from_config(data.get("indicators"), trained.get("indicators"))
        center = trained.get("center")
        self.center = np.asarray(center if center else np.zeros(len(self.catalogue.names)), dtype=np.float64)
        self.customer_columns: pd.DataFrame | None = None
        """An empty customers part, for parts none of whose customers has attributes."""
        tte = (self.meta.get("config") or {}).get("model", {}).get("tte") or {}
        trained_tte = float(tte.get("weight") or 0) > 0 or bool(tte.get("only"))
        self.forecast = trained_tte and hasattr(self.model, "demand")  # (an ensemble has no one hazard)
        """The model has a time-to-event head: expected purchases and spend come from it (else NaN)."""
        self.horizon_days = int(data.get("horizon_days") or 0)
        # networks: integrated gradients; tabular models: occlusion of each aggregate
        self.tabular = hasattr(self.model, "attribute")
        self.explain = bool(self.drivers["enabled"]) and (
            self.tabular or hasattr(self.model, "logit_from_embedded")
        )
        if self.drivers["enabled"] and not self.explain:
            log.warning("%s has no attribution entry points: driver columns stay empty", self.model_path)

    def _batches(
        self, seqs: EncodedSequences, agg: np.ndarray | None
    ) -> Iterator[tuple[np.ndarray, EventBatch]]:
        """The rows in forward batches on the device, similar lengths together (little padding)."""
        order = np.argsort(-seqs.lengths, kind="stable")
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            yield rows, pad_batch(seqs, rows, agg).to(self.device)

    @torch.inference_mode()
    def _predict(self, seqs: EncodedSequences, agg: np.ndarray | None) -> np.ndarray:
        probs = np.empty(len(seqs), dtype=np.float64)
        for rows, b in self._batches(seqs, agg):
            with autocast(self.device, self.precision == "bf16"):
                out = self.model(b.cat, b.num, b.lengths, b.static_cat, b.static_num, b.aggregates)
            probs[rows] = out.float().cpu().numpy()
        return probs

    @torch.inference_mode()
    def _demand(self, seqs: EncodedSequences, agg: np.ndarray | None) -> np.ndarray:
        """(rows, 2): expected purchases within the label horizon and P(at least one), from the hazard."""
        out = np.empty((len(seqs), 2), dtype=np.float64)
        for rows, b in self._batches(seqs, agg):
            got = self.model.demand(
                b.cat, b.num, b.lengths, b.static_cat, b.static_num, b.aggregates, self.horizon_days
            )
            out[rows] = got.double().cpu().numpy()
        return out

    def _drivers(
        self,
        log_: EventLog,
        snaps: Snapshots,
        customers: pd.DataFrame | None,
        seqs: EncodedSequences,
        table: AggregateTable,
        agg: np.ndarray | None,
    ) -> pd.DataFrame:
        """Top drivers of the customers in the model's population (lapsed customers get none)."""
        rows = np.flatnonzero(self.in_population(log_, snaps))
        sub = snaps.subset(rows)
        batch_size, n_indicators = int(self.drivers["batch_size"]), len(self.catalogue.names)
        if self.tabular:
            scores = sum_by_owner(
                tabular_attribution(self.model, agg[rows], batch_size, self.device),
                self.catalogue.name_owner(table.names, "aggregates"),
                n_indicators,
            )
        else:
            event_owner, static_owner, agg_owner = owners(
                self.catalogue, log_, sub, self.encoder, table.names if self.use_aggregates else []
            )
            scores = explain_sequences(
                self.model,
                seqs.subset(rows),
                event_owner,
                static_owner,
                agg_owner,
                agg[rows] if agg is not None else None,
                n_indicators,
                batch_size,
                int(self.drivers["steps"]),
                self.device,
            )
        sub_table = AggregateTable(table.values[rows], table.names, table.categorical)
        context = context_frame(sub_table, customers, sub.customer_ids(log_), self.customer_schema.columns)
        found = top_drivers(scores - self.center, self.catalogue, context, int(self.drivers["top_n"]))
        out = pd.DataFrame("", index=range(len(snaps)), columns=found.columns)
        out.iloc[rows] = found.to_numpy()
        return out

    def in_population(self, log_: EventLog, snaps: Snapshots) -> np.ndarray:
        """Per snapshot: an event within the training `lookback_days` before its cutoff, the population the
        model was trained on (the others are lapsed)."""
        lookback = self.data_cfg.get("lookback_days")
        if not lookback or not len(snaps):
            return np.ones(len(snaps), dtype=bool)
        since = snaps.cutoff.astype("datetime64[ns]").view(np.int64) - int(lookback) * DAY_NS
        return log_.ts[snaps.end - 1] >= since

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def _score_chunk(self, log_: EventLog, snaps: Snapshots, customers: pd.DataFrame | None) -> pd.DataFrame:
        """Probability, value at risk, segments and drivers of one chunk of snapshots."""
        with self.timed("encode"):
            seqs = self.encoder.transform(log_, snaps, customers)
            table = self.featurizer.transform(log_, snaps, customers)
            agg = None
            if self.use_aggregates:
                agg = table.values if self.raw_aggregates else self.featurizer.scale(table)
        with self.timed("forward"):
            probs = self._predict(seqs, agg)
        check_finite(probs, seqs.customer_id, self.model_path)
        out = pd.DataFrame({"churn_probability": probs})
        spend = table.values[:, table.names.index(self.value_column)].astype(np.float64)
        out["recent_spend"] = spend
        out["expected_purchases"] = np.nan
        out["expected_spend"] = np.nan
        out["value_at_risk"] = out["churn_probability"] * spend
        if self.forecast:
            with self.timed("forecast"):
                expected, active = self._demand(seqs, agg).T
            out["expected_purchases"] = expected
            if {"spend_total", "n_purchase_occasions"} <= set(table.names):
                # spend per purchase occasion so far: what each forecast purchase is worth
                total, occasions = (
                    table.values[:, table.names.index(n)].astype(np.float64)
                    for n in ("spend_total", "n_purchase_occasions")
                )
                out["expected_spend"] = expected * total / np.maximum(occasions, 1.0)
                # at risk: what they would spend over the horizon if they stay, E[spend | any purchase]
                out["value_at_risk"] = probs * out["expected_spend"] / np.maximum(active, 1e-6)
        with self.timed("segments"):
            if self.segments is not None:
                out = pd.concat([out, self.segments.assign(table).reset_index(drop=True)], axis=1)
        with self.timed("drivers"):
            if self.explain:
                out = pd.concat([out, self._drivers(log_, snaps, customers, seqs, table, agg)], axis=1)
        return out

    def read_events(
        self, path: str | Path, frame: pd.DataFrame | None = None, part: bool = True
    ) -> LoadedEvents:
        """Validate events under the training contract: the whole file, or `frame`, one part of it (or
        with `part=False`, a whole table handed over in memory)."""
        data = self.data_cfg
        return load_events(
            path,
            self.schema,
            policy=data.get("policy", "drop"),
            end_date=None,
            row_filter=data.get("filter"),
            derived=data.get("derived"),
            frame=frame,
            part=part and frame is not None,
        )

    @property
    def uses_customers(self) -> bool:
        return bool(self.customer_schema.columns)

    def read_customers(
        self, path: str | Path | None, frame: pd.DataFrame | None = None
    ) -> tuple[pd.DataFrame | None, ValidationReport | None]:
        """The attributes the model uses (the whole file, or one part of it), or None without them."""
        if not self.uses_customers or path is None:
            return None, None
        return load_customers(
            path,
            self.schema.customer_id,
            self.customer_schema,
            self.schema.timezone,
            self.data_cfg.get("policy", "drop"),
            frame=frame,
        )

    def prepare(
        self, loaded: LoadedEvents, customers: pd.DataFrame | None, as_of: pd.Timestamp
    ) -> ScoringInput:
        """Validated events → one snapshot per customer at `as_of`. An `as_of` before every event leaves
        everyone without history: said in the log, not only by the 'unknown' tiers."""
        event_log = EventLog.from_frame(loaded.frame)
        snaps = build_snapshot(event_log, as_of, horizon_days=None)
        first = loaded.frame[TIMESTAMP].min() if len(loaded.frame) else pd.NaT
        if not pd.isna(first) and as_of <= first:
            log.warning(
                "as_of %s is before every event (the first is %s): %s customers are scored without history",
                as_of.date(),
                first,
                f"{len(loaded.input_ids):,}",
            )
        join = JoinReport.of(loaded.input_ids, customers.index) if customers is not None else None
        return ScoringInput(event_log, snaps, customers, as_of, np.asarray(loaded.input_ids), join)

    def warn_without_customers(self, customers: Table | None) -> None:
        if self.uses_customers and customers is None:
            log.warning(
                "the model uses customer attributes but no customers_path was given: they are scored as "
                "unknown"
            )

    def load(
        self,
        events: Table,
        customers: Table | None = None,
        as_of: str | pd.Timestamp | None = None,
        shard: tuple[int, int] | None = None,
    ) -> ScoringInput:
        """Raw events (a file, a DataFrame or an Arrow table) → the training contract → one snapshot per
        customer at `as_of`, all in memory (monitoring reads its input this way; `score_file` streams
        files in parts); `shard=(num_shards, index)` keeps that shard's customers."""
        events_path, events_frame = table_source(events, "events")
        loaded = self.read_events(events_path, events_frame, part=False)
        self.warn_without_customers(customers)
        customers_path, customers_frame = table_source(customers, "customers")
        customers, _ = self.read_customers(customers_path, customers_frame)
        frame, input_ids = loaded.frame, loaded.input_ids
        if shard is not None:
            check_shard(shard)
            input_ids = np.asarray(input_ids)[shard_of(input_ids, shard[0]) == shard[1]]
            frame = frame[frame[CUSTOMER_ID].astype(str).isin(set(map(str, input_ids)))]
            if isinstance(frame[CUSTOMER_ID].dtype, pd.CategoricalDtype):
                frame = frame.assign(**{CUSTOMER_ID: frame[CUSTOMER_ID].cat.remove_unused_categories()})
        as_of_ts = default_as_of(as_of, loaded.data_end)
        inp = self.prepare(replace(loaded, frame=frame, input_ids=input_ids), customers, as_of_ts)
        if inp.join is not None:
            inp.join.check(customers_path)
        return inp

    def split_input(
        self,
        events_path: str | Path,
        customers_path: str | Path | None,
        shard: tuple[int, int] | None,
        part_events: int,
        spill: Path,
    ) -> list[tuple[Path | None, Path | None]]:
        """(events part, customers part) pairs of customer-disjoint parts on disk, about `part_events`
        rows each; [(None, None)] when the input fits in one part and is read whole."""
        rows = count_rows(events_path)
        if rows is None:  # CSV: estimate from the size (about 64 bytes per row)
            rows = os.path.getsize(events_path) // 64
        n_parts = max(1, -(-int(rows) // max(1, int(part_events))))
        if n_parts == 1 and shard is None:
            return [(None, None)]
        keep = shard_filter(shard) if shard is not None else None
        events = split_file(events_path, self.schema.customer_id, n_parts, spill / "events", keep)
        if not events:
            raise no_event_rows(events_path)
        customers: dict[str, Path] = {}
        if self.uses_customers and customers_path is not None:
            found = split_file(customers_path, self.schema.customer_id, n_parts, spill / "customers", keep)
            customers = {p.name: p for p in found}
            self.customer_columns = read_part(found[0]).iloc[:0] if found else None
        return [(p, customers.get(p.name)) for p in events]

    def read_part(
        self,
        events_path: str | Path,
        customers_path: str | Path | None,
        events_part: Path | None,
        customers_part: Path | None,
    ) -> tuple[LoadedEvents, pd.DataFrame | None, ValidationReport | None]:
        """One part validated (events and the same customers' attributes); `None` parts: the whole files."""
        events = read_table(events_path) if events_part is None else read_part(events_part)
        loaded = self.read_events(events_path, events)
        if customers_path is None or not self.uses_customers:
            return loaded, None, None
        if events_part is None:
            customers = read_table(customers_path)
        elif customers_part is not None:
            customers = read_part(customers_part)
        elif self.customer_columns is not None:  # none of this part's customers has attributes
            customers = self.customer_columns
        else:  # the customers file has no rows at all
            customers = read_table(customers_path)
        frame, report = self.read_customers(customers_path, customers)
        return loaded, frame, report

    def write_ranked(
        self,
        runs: list[str | Path],
        output_path: str | Path,
        overwrite: bool = False,
        drop: tuple[str, ...] = (),
        block_rows: int = 250_000,
        on_block: Callable[[pd.DataFrame], None] | None = None,
    ) -> int:
        """Rank the rows of unranked runs (scored parts, shard parts) as one population and write them,
        riskiest first, block by block: only the rank keys of the whole population are in memory."""
        keys = read_rank_keys(runs)
        release_free_memory()  # each step's scratch space (read buffers, hash table, sort) goes back first
        distinct = pc.count_distinct(keys.column(CUSTOMER_ID)).as_py()
        release_free_memory()
        if distinct != len(keys):
            raise RuntimeError(
                f"scoring lost or duplicated customers: {len(keys)} rows, {distinct} distinct ids in {runs}"
            )
        order, n = rank_order(keys, self.rank_by)
        ranked_keys = keys.column(self.rank_key).to_numpy()[order[:n]]
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        del keys, order
        release_free_memory()

        def finish(block: pd.DataFrame, start: int) -> pd.DataFrame:
            out = self.finish_block(block, start, ranked_keys)
            check_finite(out["churn_probability"].to_numpy(), out[CUSTOMER_ID].to_numpy(), self.model_path)
            if on_block is not None:
                on_block(out)
            return out

        return write_ranked(runs, output_path, position, finish, block_rows, overwrite, drop)

    def score(
        self,
        events: Table,
        customers: Table | None = None,
        as_of: str | pd.Timestamp | None = None,
        chunk_customers: int = 100_000,
        progress: bool = True,
        shard: tuple[int, int] | None = None,
    ) -> pd.DataFrame:
        """In memory: one row per customer id in `events` (a parquet or CSV path, a pandas DataFrame or an
        Arrow table in the training contract; `customers` likewise), riskiest first. With
        `shard=(num_shards, index)`, only the customers whose id hashes to that shard, not yet ranked.
        `score_file` does the same for files in bounded memory."""
        with self.timed("read"):
            inp = self.load(events, customers, as_of, shard)
        scored = self.score_input(inp, chunk_customers, progress)
        if shard is not None:
            return scored.assign(num_shards=shard[0], shard_index=shard[1])
        with self.timed("rank"):
            return self.rank(scored)

    def score_input(
        self, inp: ScoringInput, chunk_customers: int = 100_000, progress: bool = True
    ) -> pd.DataFrame:
        """Every customer of a loaded input (`load`, or one part of a streamed file) exactly once, with
        its probability, value, segments and drivers; not yet ranked (`rank`, `write_ranked`)."""
        check_values({"chunk_customers": chunk_customers})
        event_log, snaps, customers, as_of_ts = inp.log, inp.snaps, inp.customers, inp.as_of
        parts = []
        chunks = range(0, len(snaps), chunk_customers)
        with Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("customers"),
            TimeElapsedColumn(),
            disable=not progress,
        ) as bar:
            task = bar.add_task("score", total=len(snaps))
            for start in chunks:
                rows = np.arange(start, min(start + chunk_customers, len(snaps)))
                parts.append(self._score_chunk(event_log, snaps.subset(rows), customers))
                bar.advance(task, len(rows))
        last = event_log.ts[snaps.end - 1] if len(snaps) else np.zeros(0, dtype=np.int64)
        if not parts:
            parts.append(self._score_chunk(event_log, snaps, customers))
        scored = pd.concat(parts, ignore_index=True)
        scored = scored.assign(
            **{
                CUSTOMER_ID: snaps.customer_ids(event_log).astype(str),
                "n_events": (snaps.end - snaps.start).astype(np.int64),
                "last_event_at": pd.to_datetime(last).astype("datetime64[ns]"),
                "lapsed": ~self.in_population(event_log, snaps),
            }
        )
        return self._complete(scored, inp.input_ids, as_of_ts)

    def _complete(self, scored: pd.DataFrame, input_ids: np.ndarray, as_of: pd.Timestamp) -> pd.DataFrame:
        """Add the customers without history before as_of (training base rate, no_history=True) and check
        that each input id appears exactly once. Not yet ranked: `rank` does that, on one run or on the
        union of shard parts alike."""
        ids = pa.array(np.asarray(input_ids, dtype=str))
        missing = ids.filter(pc.invert(pc.is_in(ids, value_set=pa.array(scored[CUSTOMER_ID])))).to_numpy(
            zero_copy_only=False
        )
        scored = scored.assign(no_history=False)
        rest = pd.DataFrame(
            {
                CUSTOMER_ID: missing,
                "churn_probability": float(self.meta["train_positive_rate"]),
                "n_events": np.zeros(len(missing), dtype=np.int64),
                "last_event_at": pd.Series(pd.NaT, index=range(len(missing)), dtype="datetime64[ns]"),
                "no_history": True,
                "lapsed": False,
                "recent_spend": 0.0,
                "expected_purchases": np.nan,
                "expected_spend": np.nan,
                "value_at_risk": 0.0,
            }
        )
        out = pd.concat([scored, rest], ignore_index=True) if len(rest) else scored.reset_index(drop=True)
        out["as_of"] = as_of
        for col in ("rfm_segment", "main_driver", "driver_1", "driver_2", "driver_3"):
            out[col] = out[col].fillna("").astype(str) if col in out else ""
        out["behaviour_cluster"] = (
            out["behaviour_cluster"].astype("Int64")
            if "behaviour_cluster" in out
            else pd.array([pd.NA] * len(out), dtype="Int64")
        )
        check_each_once(out, ids)
        return out

    def rank(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rank and tier the population by `rank_by`, then the playbook's action, in memory (`score_file`
        does it block by block with the same `rank_order` and `finish_block`). Lapsed customers (no event
        within the training lookback) keep their probability but get tier 'lapsed' and no rank; customers
        without history get tier 'unknown'. A pure function of the rows, so shards merge exactly."""
        keys = pa.Table.from_pandas(frame[list(RANK_KEYS)], preserve_index=False)
        order, n = rank_order(keys, self.rank_by)
        ranked_keys = frame[self.rank_key].to_numpy()[order[:n]]
        return self.finish_block(frame.iloc[order].reset_index(drop=True), 0, ranked_keys)

    @property
    def rank_key(self) -> str:
        return "churn_probability" if self.rank_by == "probability" else "value_at_risk"

    def finish_block(self, block: pd.DataFrame, start: int, ranked_keys: np.ndarray) -> pd.DataFrame:
        """Rows `start..start + len(block)` of the ranked order → tier, rank, percentile and action, given
        `ranked_keys`: the rank key of every ranked customer, riskiest first."""
        n = len(ranked_keys)
        position = np.arange(start, start + len(block))
        ranked = position < n
        out = block.reset_index(drop=True)
        tier = np.where(out["no_history"], "unknown", "lapsed").astype(object)
        # capacity rules fill the tiers in rank order; cut-off rules read the probability
        tier[ranked] = tiers_at(
            position[ranked], out["churn_probability"].to_numpy()[ranked], n, self.operating
        )
        out["risk_tier"] = tier
        out["risk_rank"] = pd.array(np.where(ranked, position + 1, 0), dtype="Int64")
        out.loc[~ranked, "risk_rank"] = pd.NA
        # percentile among ranked customers: share at or below this risk (100 = the riskiest)
        key = out[self.rank_key].to_numpy()[ranked]
        below = n - np.searchsorted(-ranked_keys, -key, side="left")
        percentile = np.full(len(out), np.nan)
        percentile[ranked] = 100.0 * below / max(n, 1)
        out["percentile"] = percentile
        out["action"] = self.playbook.assign(out)
        return out[list(OUTPUT_COLUMNS)]


def check_each_once(frame: pd.DataFrame, ids: pa.Array) -> None:
    """Every id of the (distinct) input ids exactly once in the output, or a loud failure: as many rows
    as ids and every id among them leaves no room for a duplicate or a stranger."""
    found = pc.sum(pc.is_in(ids, value_set=pa.array(frame[CUSTOMER_ID]))).as_py() or 0
    if len(frame) != len(ids) or found != len(ids):
        raise RuntimeError(
            f"scoring lost or duplicated customers: {len(ids)} ids in the input, "
            f"{frame[CUSTOMER_ID].nunique()} distinct of {len(frame)} rows in the output"
        )


def check_finite(probs: np.ndarray, customer_ids: np.ndarray, model_path: Path) -> None:
    """A probability that is not a number (or outside [0, 1]) would rank anywhere: fail, naming the
    customers, instead, at the forward and again on each ranked block before the output is renamed into
    place. Inputs are finite by construction (validation, then clipping in the encoders), so this is the
    model's doing, e.g. weights that went NaN in training."""
    finite = np.isfinite(probs)
    bad = ~finite | (np.where(finite, probs, 0.0) < 0) | (np.where(finite, probs, 0.0) > 1)
    if bad.any():
        what = "a non-finite churn probability" if not finite.all() else "a churn probability outside [0, 1]"
        raise FloatingPointError(
            f"{model_path}: the model gave {what} for {int(bad.sum())} of {len(probs)} customers, e.g. "
            f"{some_of(np.asarray(customer_ids)[bad])}; nothing was written (are its weights finite?)"
        )


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """A customer's shard: a stable hash of its id (BLAKE2b, the same on every machine and version)."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") % num_shards
            for i in ids
        ),
        dtype=np.int64,
        count=len(ids),
    )


def check_shard(shard: tuple[int, int]) -> None:
    """num_shards ≥ 1 and 0 ≤ shard_index < num_shards, by the options' rules."""
    check_values({"num_shards": shard[0], "shard_index": shard[1]})


def default_as_of(as_of: str | pd.Timestamp | None, data_end: pd.Timestamp) -> pd.Timestamp:
    """`as_of` as a day (a one-line error when it is not one), or the day after the data's last valid
    event."""
    return parse_day(as_of, "as_of") if as_of is not None else data_end.normalize() + pd.Timedelta(days=1)


def shard_filter(shard: tuple[int, int]) -> Callable[[pd.Series], np.ndarray]:
    """Rows of a shard, from canonical ids (one hash per distinct id); null ids go to shard 0, so their
    rows are reported once."""
    num_shards, index = shard

    def keep(ids: pd.Series) -> np.ndarray:
        return by_category(ids, lambda categories: shard_of(categories, num_shards) == index, index == 0)

    return keep


SHARD_METADATA = "churnwatch.shard"
"""A shard part's footer key: its num_shards, shard_index and as_of (a shard without customers is a part
without rows, so the rows cannot carry them)."""


def shard_footer(shard: tuple[int, int], as_of: pd.Timestamp) -> dict[str, str]:
    num_shards, index = shard
    return {SHARD_METADATA: json.dumps({"num_shards": num_shards, "shard_index": index, "as_of": str(as_of)})}


def shard_identity(path: str | Path) -> dict[str, Any]:
    """num_shards, shard_index and as_of of a shard part, from its footer (`shard_footer`)."""
    found = (pq.read_schema(path).metadata or {}).get(SHARD_METADATA.encode())
    if found is None:
        raise ValueError(f"{path}: not a shard part (score with num_shards=N shard_index=i)")
    return json.loads(found)


def merge_shards(
    model_path: str | Path,
    part_paths: list[str | Path],
    output_path: str | Path,
    playbook: Mapping[str, Any] | None = None,
    rank_by: str = "probability",
    overwrite: bool = False,
    block_rows: int = 250_000,
    verify: Verification | None = None,
) -> int:
    """The union of shard parts, ranked and tiered as one run over the whole population (row for row the
    output of an unsharded run), in bounded memory. Refuses missing or repeated shards and customers in
    two parts. Returns the number of customers written."""
    if not part_paths:
        raise ValueError("merge: no shard parts given")
    check_values({"block_rows": block_rows})
    parts = {f"parts[{i}]": p for i, p in enumerate(part_paths)}
    check_suffix(check_output(output_path, overwrite, {"model_path": model_path, **parts}))
    info = pd.DataFrame([shard_identity(p) for p in part_paths])
    shards = sorted(info["shard_index"].unique())
    expected = int(info["num_shards"].iloc[0])
    if info["num_shards"].nunique() != 1 or shards != list(range(expected)):
        raise ValueError(f"merge: parts cover shards {shards} of num_shards={expected}")
    if len(part_paths) != expected:
        raise ValueError(f"merge: {len(part_paths)} parts for {expected} shards")
    if info["as_of"].nunique() != 1:
        raise ValueError(
            f"merge: parts were scored at different as_of dates {sorted(info['as_of'].unique())}"
        )
    check_some_kept(part_paths)
    scorer = Scorer(
        model_path, "cpu", playbook=playbook, rank_by=rank_by, drivers={"enabled": False}, verify=verify
    )
    return scorer.write_ranked(
        part_paths, output_path, overwrite, drop=("num_shards", "shard_index"), block_rows=block_rows
    )


def check_some_kept(part_paths: list[str | Path]) -> None:
    """Shards whose validation, all together, kept no event row: the unsharded run fails there, and so does
    the merge (read from the parts' sidecars; parts moved without them are not checked)."""
    sidecars = [report_path(p) for p in part_paths]
    if not all(s.exists() for s in sidecars):
        log.warning("merge: not every part has its sidecar (<part>.report.json): validation not checked")
        return
    events = [json.loads(s.read_text())["validation"]["events"] or {} for s in sidecars]
    if not any(e.get("rows_kept") for e in events):
        raise DataValidationError(
            f"merge: no shard kept a valid event row ({events[0].get('path')}); see {sidecars[0]} and the "
            "other parts' sidecars for what was dropped and why"
        )


def score_file(
    model_path: str | Path,
    events_path: str | Path,
    output_path: str | Path,
    customers_path: str | Path | None = None,
    as_of: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    chunk_customers: int = 100_000,
    overwrite: bool = False,
    progress: bool = True,
    drivers: Mapping[str, Any] | None = None,
    playbook: Mapping[str, Any] | None = None,
    rank_by: str = "probability",
    value_days: int = 90,
    shard: tuple[int, int] | None = None,
    part_events: int = 2_000_000,
    precision: str = "fp32",
    block_rows: int = 250_000,
    spill_dir: str | Path | None = None,
    verify: Verification | None = None,
) -> ScoringResult:
    """Score a file (or one shard of its customers) and write the result atomically, in memory bounded
    by `part_events`, not by the input: inputs with more rows are split into customer-disjoint parts on
    disk (`spill_dir`, default: next to the output), scored part by part, then ranked block by block.
    The output is the same for any part, block and chunk size."""
    t0 = time.perf_counter()
    as_of = default_as_of(as_of, pd.NaT) if as_of is not None else None  # a bad date fails before the work
    check_values({"chunk_customers": chunk_customers, "part_events": part_events, "block_rows": block_rows})
    inputs = {"events_path": events_path, "customers_path": customers_path, "model_path": model_path}
    output_path = check_output(output_path, overwrite, inputs)
    check_suffix(output_path)
    if shard is not None:
        check_shard(shard)
        if output_path.suffix.lower() != ".parquet":
            raise ValueError(
                f"{output_path}: a shard part must be .parquet (churnwatch merge-scores reads it)"
            )
        if as_of is None:
            raise ValueError("sharded scoring needs an explicit as_of: every shard must score the same date")
    scorer = Scorer(model_path, device, batch_size, drivers, playbook, rank_by, value_days, precision, verify)
    scorer.warn_without_customers(customers_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    spill = scratch_dir(output_path, "spill", spill_dir)
    try:
        with scorer.timed("read"):
            parts = scorer.split_input(events_path, customers_path, shard, part_events, spill)
        if as_of is None and len(parts) > 1:  # the data's end is a property of the whole file
            with scorer.timed("read"):
                ends = [scorer.read_events(events_path, read_part(ev)).data_end for ev, _ in parts]
            valid = [e for e in ends if not pd.isna(e)]
            if not valid:
                raise DataValidationError(f"{events_path}: no valid events left after validation")
            as_of = default_as_of(None, max(valid))
        stats = _Stats()
        run = spill / "scored.parquet"
        with (
            atomic_output(
                output_path if shard else run,
                overwrite or not shard,
                shard_footer(shard, default_as_of(as_of, pd.NaT)) if shard else None,
            ) as append,
            Progress(
                TextColumn("scoring"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("parts"),
                TimeElapsedColumn(),
                disable=not progress,
            ) as bar,
        ):
            task = bar.add_task("score", total=len(parts))
            for events_part, customers_part in parts:
                with scorer.timed("read"):
                    loaded, customers, customer_report = scorer.read_part(
                        events_path, customers_path, events_part, customers_part
                    )
                stats.add(loaded.report, customer_report)
                if len(parts) == 1:  # the whole file: its checks can run now
                    stats.check(events_path, shard)
                inp = scorer.prepare(loaded, customers, default_as_of(as_of, loaded.data_end))
                stats.as_of = inp.as_of
                stats.add_join(inp.join)
                scored = scorer.score_input(inp, chunk_customers, progress=False)
                if shard is not None:
                    scored = scored.assign(num_shards=shard[0], shard_index=shard[1])
                with scorer.timed("write"):
                    append(scored)
                stats.count(scored)
                if shard is not None:  # a part is unranked: its first rows are the top
                    stats.keep_top(scored)
                del loaded, customers, inp, scored
                release_free_memory()
                bar.advance(task)
            stats.check(events_path, shard)
            stats.check_join(customers_path)
            stats.log()
        if shard is None:
            with scorer.timed("rank"):
                scorer.write_ranked(
                    [run], output_path, overwrite, block_rows=block_rows, on_block=stats.block
                )
        stats.write(report_path(output_path), len(parts))
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return ScoringResult(
        output_path,
        stats.customers,
        stats.customers - stats.no_history,
        stats.no_history,
        time.perf_counter() - t0,
        stats.top,
        stats.tiers,
        len(parts),
        dict(scorer.seconds),
    )


TOP_ROWS = 100


def report_path(output_path: str | Path) -> Path:
    """The sidecar of a scoring output: `<output_path>.report.json`."""
    output_path = Path(output_path)
    return output_path.with_name(f"{output_path.name}.report.json")


@dataclass
class _Stats:
    """What a streamed scoring run adds up over its parts and blocks."""

    customers: int = 0
    no_history: int = 0
    events: ValidationReport | None = None
    customer_report: ValidationReport | None = None
    join: JoinReport | None = None
    as_of: pd.Timestamp | None = None
    tiers: dict[str, int] = field(default_factory=dict)
    top: pd.DataFrame = field(default_factory=pd.DataFrame)

    def add(self, events: ValidationReport, customers: ValidationReport | None) -> None:
        for name, report in (("events", events), ("customer_report", customers)):
            if report is None:
                continue
            if getattr(self, name) is None:
                setattr(self, name, ValidationReport(report.path))
            getattr(self, name).add(report)

    def add_join(self, join: JoinReport | None) -> None:
        if join is not None:
            self.join = self.join or JoinReport()
            self.join.add(join)

    def check_join(self, customers_path: str | Path | None) -> None:
        if self.join is not None:
            self.join.check(customers_path)

    def count(self, scored: pd.DataFrame) -> None:
        self.customers += len(scored)
        self.no_history += int(scored["no_history"].sum())

    def check(self, events_path: str | Path, shard: tuple[int, int] | None = None) -> None:
        """The whole file's checks, once all its parts are validated (or the one part that is all). A shard
        sees only its customers' rows: none at all, or none valid, still leaves the other shards' (split_file
        saw that the file has rows), so its customers are scored without history, as the unsharded run
        would, and `merge_shards` fails if no shard kept any row."""
        report = self.events
        if shard is not None:
            if report.rows_read and not report.rows_kept:
                log.warning(
                    "shard %d of %d kept no valid event row: %s", shard[1], shard[0], report.summary()
                )
            return
        if report.rows_read == report.rows_filtered:
            raise no_event_rows(events_path)
        if report.rows_kept == 0:
            raise no_valid_events(report)

    def log(self) -> None:
        for r in (self.events, self.customer_report):
            if r is not None:
                (log.warning if r.dropped else log.info)("%s", r.summary())

    def write(self, path: Path, parts: int) -> None:
        """The sidecar next to the output: rows dropped per table and reason with an example row each, and
        who was scored, so no input row or customer goes missing unaccounted. Written atomically."""
        report = {
            "as_of": str(self.as_of.date()) if self.as_of is not None else None,
            "parts": parts,
            "customers": self.customers,
            "scored": self.customers - self.no_history,
            "no_history": self.no_history,
            "validation": {
                "events": self.events.as_dict() if self.events is not None else None,
                "customers": self.customer_report.as_dict() if self.customer_report is not None else None,
            },
            "customers_join": self.join.as_dict() if self.join is not None else None,
        }
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        log.info("validation report: %s", path)

    def block(self, block: pd.DataFrame) -> None:
        for tier, n in block["risk_tier"].value_counts().items():
            self.tiers[str(tier)] = self.tiers.get(str(tier), 0) + int(n)
        self.keep_top(block)

    def keep_top(self, rows: pd.DataFrame) -> None:
        """The output's first TOP_ROWS rows, from the frames written in order."""
        if len(self.top) < TOP_ROWS:
            self.top = pd.concat([self.top, rows.head(TOP_ROWS - len(self.top))], ignore_index=True)
