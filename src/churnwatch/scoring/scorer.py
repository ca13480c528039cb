"""Batch scoring: raw events → (the training contract and encoders, from the artifact) → risk per customer.

Nothing here re-implements encoding: the artifact's metadata rebuilds the same contract, encoder and
aggregate featurizer objects that training fitted, and their `transform` does the work. Every customer id
in the input appears exactly once in the output, or the run fails. Reading inputs is `inputs.py`'s job,
ranking `ranking.py`'s; `churnwatch.jobs.score.score_file` streams files of any size through a `Scorer`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from churnwatch.artifact.model_file import Artifact, load_model, tabular_attribution
from churnwatch.config.options import check_values
from churnwatch.config.schema import DriversConfig, ScoreConfig, typed
from churnwatch.data.schema import CUSTOMER_ID, CustomerSchema, EventSchema
from churnwatch.data.snapshots import DAY_NS, EventLog, Snapshots
from churnwatch.errors import ConfigError
from churnwatch.explain.drivers import (
    IndicatorCatalogue,
    context_frame,
    explain_sequences,
    owners,
    sum_by_owner,
    top_drivers,
)
from churnwatch.explain.segments import Segments
from churnwatch.features.aggregates import AggregateFeaturizer, AggregateTable
from churnwatch.features.encode import EncodedSequences, SequenceEncoder
from churnwatch.io.signing import Verification
from churnwatch.models.thresholds import TIERS
from churnwatch.pipeline.batch import EventBatch, auto_width_multiple, pad_batch
from churnwatch.runtime.hardware import autocast, choose_precision, fit_threads, onednn_bf16, resolve_device
from churnwatch.scoring.inputs import InputReader, ScoringInput, Table
from churnwatch.scoring.ranking import Ranker, check_each_once, check_finite

log = logging.getLogger(__name__)
EXPLAIN_TIERS_UNRANKED = (
    "drivers.tiers explains the tiers the whole population's ranking gives: not with shards (unranked "
    "parts); explain the shards' parts with drivers.tiers=null, or score unsharded"
)
# Default forward batch. On CPU small batches stay in cache: the demo LSTM scores 1.4x faster at 256 than
# at 1024 (docs/BENCHMARKS.md); a GPU wants large ones (not timed here).
CPU_BATCH, GPU_BATCH = 256, 4096
# Default drivers batch: on CPU, 128 customers a batch, two batches side by side (`explain_sequences`),
# explained 8% faster than 256 (docs/BENCHMARKS.md); on a GPU the earlier default, not tuned there.
CPU_DRIVERS_BATCH, GPU_DRIVERS_BATCH = 128, 256
STR = pd.api.types.pandas_dtype(str)
"""The dtype `astype(str)` gives."""


@dataclass(frozen=True)
class EncodedChunk:
    """A chunk of a loaded input's snapshots as the model reads them (`Scorer.encode_chunks`): sequences,
    the aggregate table, and the aggregates the model reads (None: it reads none)."""

    snaps: Snapshots
    seqs: EncodedSequences
    table: AggregateTable
    agg: np.ndarray | None
    batches: list[tuple[np.ndarray, EventBatch]] | None = None
    """The forward's padded batches on the CPU (`Scorer.padded`), when made ahead with the chunk
    (`Scorer.encode_input`)."""


@dataclass(frozen=True)
class EncodedInput:
    """Everything a loaded input gives the scorer before the forward pass (`Scorer.encode_input`): its
    encoded chunks, and the offer columns of every customer indexed by id (None: the model offers
    nothing). `score_file` makes the next part's on its reading thread."""

    chunks: list[EncodedChunk]
    offers: pd.DataFrame | None
    drivers: bool | None
    """`score_input`'s `drivers` it was made for: without drivers, the aggregate table holds only the
    columns scoring reads (`Scorer.table_columns`)."""


class Scorer:
    """A loaded model, ready to score event logs in the contract it was trained on.

    scorer = Scorer("model.pt", precision="auto")   # or Scorer(load_model("model.pt"))
    scores = scorer.score(events_df, customers_df, as_of="2024-11-01")
    """

    def __init__(
        self,
        model: str | Path | Artifact,
        *,
        device: str = ScoreConfig.device,
        batch_size: int | None = ScoreConfig.batch_size,
        drivers: DriversConfig | Mapping[str, Any] | None = None,
        playbook: Mapping[str, Any] | None = None,
        rank_by: str = ScoreConfig.rank_by,
        value_days: int = ScoreConfig.value_days,
        precision: str = ScoreConfig.precision,
        verify: Verification | None = None,
    ):
        """`drivers`: a `DriversConfig` or a partial mapping of one (the rest from its defaults)."""
        if not isinstance(drivers, DriversConfig):
            drivers = typed(DriversConfig, drivers, "drivers")
        self.drivers = drivers
        drivers_values = {f"drivers.{f}": getattr(drivers, f) for f in ("top_n", "steps", "batch_size")}
        check_values({"batch_size": batch_size, "value_days": value_days, **drivers_values})
        if drivers.tiers is not None and (not drivers.tiers or set(drivers.tiers) - set(TIERS)):
            raise ConfigError(f"drivers.tiers must be some of {list(TIERS)} (or null), got {drivers.tiers}")
        self.device = resolve_device(device)
        fit_threads()
        self.precision = choose_precision(precision, self.device)
        """What the forward runs in: `precision` (fp32 | bf16 | auto) as this device can run it."""
        self.seconds: dict[str, float] = {}
        """Wall seconds per phase (read, encode, forward, segments, drivers, rank, write), summed."""
        artifact = model if isinstance(model, Artifact) else load_model(model, self.device, verify)
        self.model_path = artifact.path
        self.model_sha256 = artifact.sha256
        """The model file's SHA-256, of the bytes loaded."""
        self.model, self.meta = artifact.module.to(self.device), artifact.meta
        self.offers = artifact.offers
        """The next-best-offer ranker the model file carries (None: the run fitted no recommender)."""
        cpu = self.device.type == "cpu"
        self.batch_size = batch_size or (CPU_BATCH if cpu else GPU_BATCH)
        self.drivers_batch_size = self.drivers.batch_size or (CPU_DRIVERS_BATCH if cpu else GPU_DRIVERS_BATCH)
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
        self.reader = InputReader(data, self.schema, self.customer_schema)
        """Reads and validates inputs under the model's contract."""
        self.ranker = Ranker.from_meta(self.meta, self.model_path, playbook=playbook, rank_by=rank_by)
        """Ranks, tiers and assigns actions to the scored population."""
        self.value_column = f"spend_{int(value_days)}d"
        windows = self.featurizer.spec.windows
        if int(value_days) not in windows:
            raise ConfigError(f"value_days={value_days} must be one of the aggregate windows {windows}")
        self.segments = Segments.from_state(self.meta["segments"]) if self.meta.get("segments") else None
        trained = self.meta.get("drivers") or {}
        self.catalogue = IndicatorCatalogue.from_config(data.get("indicators"), trained.get("indicators"))
        center = trained.get("center")
        self.center = np.asarray(center if center else np.zeros(len(self.catalogue.names)), dtype=np.float64)
        tte = (self.meta.get("config") or {}).get("model", {}).get("tte") or {}
        trained_tte = float(tte.get("weight") or 0) > 0 or bool(tte.get("only"))
        self.forecast = trained_tte and hasattr(self.model, "demand")  # (an ensemble has no one hazard)
        """The model has a time-to-event head: expected purchases and spend come from it (else NaN)."""
        self.bf16_network = _bf16_network(self.model, self.meta) if self.precision == "bf16" and cpu else None
        """The probability forward's network with bf16 weights, where that is as exact as autocast (None:
        the forward runs under autocast)."""
        self.table_columns = None if self.use_aggregates else self._table_columns()
        """The aggregate columns a pass without drivers reads (None: all, the model reads them): the
        value, the forecast's spend per occasion and the segments' inputs. Driver texts may quote any."""
        self.horizon_days = int(data.get("horizon_days") or 0)
        # networks: integrated gradients; tabular models: occlusion of each aggregate
        self.tabular = hasattr(self.model, "attribute")
        self.explain = bool(self.drivers.enabled) and (
            self.tabular or hasattr(self.model, "logit_from_embedded")
        )
        if self.drivers.enabled and not self.explain:
            log.warning("%s has no attribution entry points: driver columns stay empty", self.model_path)
        self.explain_tiers = self.explain and self.drivers.tiers is not None
        """Only the customers of `drivers.tiers` are explained, in a second pass after the ranking
        (`explain_chosen`): the first scores everyone without drivers."""
        self.first_pass_drivers = False if self.explain_tiers else None
        """`score_input`'s `drivers` for a batch run's scoring pass: none when `drivers.tiers` leaves them to
        the second pass, else as configured."""

    def padded(
        self, seqs: EncodedSequences, agg: np.ndarray | None
    ) -> Iterator[tuple[np.ndarray, EventBatch]]:
        """The rows in forward batches, similar lengths together (little padding; on a GPU widths rounded up
        to 16, so few shapes: `auto_width_multiple`), with int32 codes (half the memory ahead)."""
        order = np.argsort(-seqs.lengths, kind="stable")
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            yield rows, pad_batch(seqs, rows, agg, auto_width_multiple(self.device), codes=np.int32)

    def _batches(self, chunk: EncodedChunk) -> Iterator[tuple[np.ndarray, EventBatch]]:
        """A chunk's forward batches on the device: those made ahead, or padded now."""
        for rows, b in chunk.batches if chunk.batches is not None else self.padded(chunk.seqs, chunk.agg):
            yield rows, b.to(self.device)

    @torch.inference_mode()
    def _predict(self, chunk: EncodedChunk) -> np.ndarray:
        probs = np.empty(len(chunk.seqs), dtype=np.float64)
        low = self.bf16_network
        for rows, b in self._batches(chunk):
            if low is not None:
                half = [t.to(torch.bfloat16) for t in (b.num, b.static_num, b.aggregates)]
                logit = low(b.cat, half[0], b.lengths, b.static_cat, half[1], half[2])
                out = self.model.calibration(logit.float())
            else:
                with autocast(self.device, self.precision == "bf16"):
                    out = self.model(b.cat, b.num, b.lengths, b.static_cat, b.static_num, b.aggregates)
            probs[rows] = out.float().cpu().numpy()
        return probs

    @torch.inference_mode()
    def _demand(self, chunk: EncodedChunk) -> np.ndarray:
        """(rows, 2): expected purchases within the label horizon and P(at least one), from the hazard."""
        out = np.empty((len(chunk.seqs), 2), dtype=np.float64)
        for rows, b in self._batches(chunk):
            got = self.model.demand(
                b.cat, b.num, b.lengths, b.static_cat, b.static_num, b.aggregates, self.horizon_days
            )
            out[rows] = got.double().cpu().numpy()
        return out

    def _drivers(self, log_: EventLog, chunk: EncodedChunk, customers: pd.DataFrame | None) -> pd.DataFrame:
        """Top drivers of a chunk's customers in the model's population (lapsed customers get none)."""
        snaps, seqs, table, agg = chunk.snaps, chunk.seqs, chunk.table, chunk.agg
        rows = np.flatnonzero(self.in_population(log_, snaps))
        sub = snaps.subset(rows)
        batch_size, n_indicators = self.drivers_batch_size, len(self.catalogue.names)
        if self.tabular:
            scores = sum_by_owner(
                tabular_attribution(self.model, agg[rows], batch_size, self.device),
                self.catalogue.name_owner(table.names, "aggregates"),
                n_indicators,
            )
        else:
            owner = owners(
                self.catalogue, log_, sub, self.encoder, table.names if self.use_aggregates else []
            )
            # in the forward's precision: bf16 explains 1.8x faster where the CPU has bf16 units, with the
            # same top driver as fp32's for 99% of customers at 32 steps (docs/BENCHMARKS.md)
            with autocast(self.device, self.precision == "bf16"):
                scores = explain_sequences(
                    self.model,
                    seqs.subset(rows),
                    owner,
                    agg[rows] if agg is not None else None,
                    batch_size=batch_size,
                    steps=int(self.drivers.steps),
                    device=self.device,
                )
        sub_table = AggregateTable(table.values[rows], table.names, table.categorical)
        context = context_frame(sub_table, customers, sub.customer_ids(log_), self.customer_schema.columns)
        found = top_drivers(scores - self.center, self.catalogue, context, int(self.drivers.top_n))
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

    def _table_columns(self) -> list[str]:
        columns = [self.value_column]
        if self.forecast:
            columns += ["spend_total", "n_purchase_occasions"]
        if self.segments is not None:
            columns += self.segments.inputs()
        return columns

    def _explains(self, drivers: bool | None) -> bool:
        """Whether a pass with `score_input`'s `drivers` explains its customers."""
        return self.explain and drivers is not False

    def _encode(
        self, log_: EventLog, snaps: Snapshots, customers: pd.DataFrame | None, explain: bool
    ) -> tuple[EncodedSequences, AggregateTable, np.ndarray | None]:
        """Sequences, aggregate table (all of it to `explain`) and the aggregates the model reads (None: it
        reads none)."""
        with self.timed("encode"):
            seqs = self.encoder.transform(log_, snaps, customers)
            table = self.featurizer.transform(log_, snaps, customers, None if explain else self.table_columns)
            agg = None
            if self.use_aggregates:
                agg = table.values if self.raw_aggregates else self.featurizer.scale(table)
        return seqs, table, agg

    def explain_tiers_of(
        self, scored: pd.DataFrame, inp: ScoringInput, chunk_customers: int, ranker: Ranker | None = None
    ) -> pd.DataFrame:
        """`scored` (a loaded input scored without drivers) with the drivers of its customers in
        `drivers.tiers`, by the tiers `ranker` (default: this scorer's) gives them: in memory, where the
        input is at hand (`score_file` re-reads its parts instead, `_explain_tiers`)."""
        chosen = self.chosen_for_drivers((ranker or self.ranker).keys(scored), ranker)
        return with_drivers(scored, self.explain_chosen(inp, chosen, chunk_customers))

    def chosen_for_drivers(self, keys: pa.Table, ranker: Ranker | None = None) -> np.ndarray:
        """The ids of a scored population (its rank keys) in `drivers.tiers`, by the tiers `ranker` (default:
        this scorer's) gives them."""
        chosen = np.isin((ranker or self.ranker).tiers_of(keys), list(self.drivers.tiers or ()))
        return keys.column(CUSTOMER_ID).filter(pa.array(chosen)).to_numpy(zero_copy_only=False)

    def explain_chosen(self, inp: ScoringInput, ids: np.ndarray, chunk_customers: int) -> pd.DataFrame:
        """The driver columns of the customers `ids` of a loaded input (or part), indexed by customer id:
        the second pass of `drivers.tiers`, explaining only the customers the ranking put there."""
        names = inp.snaps.customer_ids(inp.log).astype(str)
        rows = np.flatnonzero(
            pc.is_in(pa.array(names), value_set=pa.array(ids, pa.string())).to_numpy(zero_copy_only=False)
        )
        if not len(rows):
            return pd.DataFrame(
                columns=["main_driver", *(f"driver_{k + 1}" for k in range(int(self.drivers.top_n)))]
            )
        found = []
        for chunk in self.encode_chunks(inp, chunk_customers, rows, explain=True):
            with self.timed("drivers"):
                drivers = self._drivers(inp.log, chunk, inp.customers)
            found.append(drivers.set_index(chunk.snaps.customer_ids(inp.log).astype(str)))
        return pd.concat(found)

    def encode_chunks(
        self, inp: ScoringInput, chunk_customers: int, rows: np.ndarray | None = None, *, explain: bool
    ) -> Iterator[EncodedChunk]:
        """A loaded input's snapshots `rows` (default: all) encoded in chunks of `chunk_customers` (one empty
        chunk for none), for a pass that does or does not `explain` them: what `score_input` reads, lazily,
        or as a list made ahead on another thread (`score_file`); `explain_chosen` reads the chosen rows'."""
        check_values({"chunk_customers": chunk_customers})
        rows = np.arange(len(inp.snaps)) if rows is None else rows
        for start in range(0, max(len(rows), 1), chunk_customers):
            snaps = inp.snaps.subset(rows[start : start + chunk_customers])
            yield EncodedChunk(snaps, *self._encode(inp.log, snaps, inp.customers, explain))

    def encode_input(
        self, inp: ScoringInput, chunk_customers: int, drivers: bool | None = None
    ) -> EncodedInput:
        """`encode_chunks`, their forward batches and `offers_of` of a loaded input, made at once for
        `score_input` with `drivers`: `score_file` makes the next part's on its reading thread, so the
        forward's thread only runs the model."""
        chunks = []
        for chunk in self.encode_chunks(inp, chunk_customers, explain=self._explains(drivers)):
            with self.timed("encode"):
                chunks.append(replace(chunk, batches=list(self.padded(chunk.seqs, chunk.agg))))
        return EncodedInput(chunks, self.offers_of(inp), drivers)

    def offers_of(self, inp: ScoringInput) -> pd.DataFrame | None:
        """The offer columns of every customer of a loaded input (those without history too: they get
        popular items), indexed by id; None when the model carries no recommender."""
        if self.offers is None:
            return None
        with self.timed("offers"):
            ids = pd.Index(np.asarray(inp.input_ids, dtype=str))
            return self.offers.frame(inp.log.frame, ids, inp.as_of).set_axis(ids)

    def _score_chunk(
        self, log_: EventLog, chunk: EncodedChunk, customers: pd.DataFrame | None, explain: bool
    ) -> dict[str, Any]:
        """Probability, value at risk, segments and (with `explain`) drivers of one chunk of snapshots, as
        columns (arrays, or Series on a range index): framed once, by `_complete`, as a frame's inserts
        cost more than a request's forward."""
        seqs, table = chunk.seqs, chunk.table
        with self.timed("forward"):
            probs = self._predict(chunk)
        check_finite(probs, seqs.customer_id, self.model_path)
        spend = table.values[:, table.names.index(self.value_column)].astype(np.float64)
        out: dict[str, Any] = {
            "churn_probability": probs,
            "recent_spend": spend,
            "expected_purchases": np.full(len(probs), np.nan),
            "expected_spend": np.full(len(probs), np.nan),
            "value_at_risk": probs * spend,
        }
        if self.forecast:
            with self.timed("forecast"):
                expected, active = self._demand(chunk).T
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
                out.update(self.segments.columns(table))
        with self.timed("drivers"):
            if explain:
                out.update(self._drivers(log_, chunk, customers).items())
        return out

    def load(
        self,
        events: Table,
        customers: Table | None = None,
        as_of: str | pd.Timestamp | None = None,
        shard: tuple[int, int] | None = None,
    ) -> ScoringInput:
        """Raw events (a file, a DataFrame or an Arrow table) → one snapshot per customer at `as_of`, in
        memory (`InputReader.load`); `shard=(num_shards, index)` keeps that shard's customers."""
        return self.reader.load(events, customers, as_of, shard)

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
        `churnwatch.jobs.score.score_file` does the same for files in bounded memory."""
        if shard is not None and self.explain_tiers:
            raise ConfigError(EXPLAIN_TIERS_UNRANKED)
        with self.timed("read"):
            inp = self.load(events, customers, as_of, shard)
        scored = self.score_input(inp, chunk_customers, progress, drivers=self.first_pass_drivers)
        if shard is not None:
            return scored.assign(num_shards=shard[0], shard_index=shard[1])
        if self.explain_tiers:
            scored = self.explain_tiers_of(scored, inp, chunk_customers)
        with self.timed("rank"):
            return self.rank(scored)

    def score_input(
        self,
        inp: ScoringInput,
        chunk_customers: int = 100_000,
        progress: bool = True,
        drivers: bool | None = None,
        encoded: EncodedInput | None = None,
    ) -> pd.DataFrame:
        """Every customer of a loaded input (`load`, or one part of a streamed file) exactly once, with
        its probability, value, segments, drivers and offers; not yet ranked (`rank`,
        `Ranker.write_ranked`). `drivers=False` leaves the driver columns empty for this call (the
        service's per-request switch); None: as configured. `encoded`: this input's `encode_input`, if
        already made."""
        explain = self._explains(drivers)
        if encoded is not None and encoded.drivers != drivers:
            raise ValueError(f"the input was encoded for drivers={encoded.drivers}, not {drivers}")
        event_log, snaps, customers, as_of_ts = inp.log, inp.snaps, inp.customers, inp.as_of
        parts = []
        with Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("customers"),
            TimeElapsedColumn(),
            disable=not progress,
        ) as bar:
            task = bar.add_task("score", total=len(snaps))
            chunks = (
                self.encode_chunks(inp, chunk_customers, explain=explain)
                if encoded is None
                else encoded.chunks
            )
            for chunk in chunks:
                parts.append(self._score_chunk(event_log, chunk, customers, explain))
                bar.advance(task, len(chunk.snaps))
        last = event_log.ts[snaps.end - 1] if len(snaps) else np.zeros(0, dtype=np.int64)
        columns = (
            parts[0]
            if len(parts) == 1
            else dict(pd.concat([pd.DataFrame(p) for p in parts], ignore_index=True).items())
        )
        columns.update(
            {
                CUSTOMER_ID: pd.array(snaps.customer_ids(event_log).astype(str), dtype=str),
                "n_events": (snaps.end - snaps.start).astype(np.int64),
                "last_event_at": last.astype("datetime64[ns]"),
                "lapsed": ~self.in_population(event_log, snaps),
            }
        )
        out = self._complete(columns, inp.input_ids, as_of_ts)
        offers = self.offers_of(inp) if encoded is None else encoded.offers
        if offers is not None:
            out = pd.concat([out, offers.reindex(out[CUSTOMER_ID]).reset_index(drop=True)], axis=1)
        return out

    def _complete(self, columns: dict[str, Any], input_ids: np.ndarray, as_of: pd.Timestamp) -> pd.DataFrame:
        """The scored columns framed, with the customers without history before as_of added (training
        base rate, no_history=True), and each input id checked to appear exactly once. Not yet ranked:
        `rank` does that, on one run or on the union of shard parts alike."""
        ids = pa.array(np.asarray(input_ids, dtype=str))
        missing = ids.filter(pc.invert(pc.is_in(ids, value_set=pa.array(columns[CUSTOMER_ID])))).to_numpy(
            zero_copy_only=False
        )
        columns["no_history"] = np.zeros(len(columns[CUSTOMER_ID]), dtype=bool)
        if len(missing):
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
            columns = dict(pd.concat([pd.DataFrame(columns), rest], ignore_index=True).items())
        rows = pd.RangeIndex(len(columns[CUSTOMER_ID]))
        columns["as_of"] = pd.Series(as_of, index=rows)  # (the dtype a scalar column gets)
        blank = pd.array(np.full(len(rows), "", dtype=object), dtype=str)
        for col in ("rfm_segment", "main_driver", "driver_1", "driver_2", "driver_3"):
            columns[col] = _text(columns[col]) if col in columns else blank
        columns["behaviour_cluster"] = (
            _nullable_int(columns["behaviour_cluster"])
            if "behaviour_cluster" in columns
            else pd.array([pd.NA] * len(rows), dtype="Int64")
        )
        out = pd.DataFrame(columns, index=rows)
        check_each_once(out, ids)
        return out

    def rank(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rank and tier the scored population in memory, then the playbook's action (`Ranker.rank`)."""
        return self.ranker.rank(frame)


def _bf16_network(model: torch.nn.Module, meta: Mapping[str, Any]) -> torch.nn.Module | None:
    """A copy of a recurrent network (LSTM, GRU) with its weights in bf16, for the CPU's bf16 forward, or
    None. Autocast casts weights and activations to bf16 around every layer, and back to fp32 for the layer
    norm: 10-13% of the demo LSTM's forward on one thread (docs/BENCHMARKS.md). The probabilities are as
    close to fp32's as autocast's, since the recurrent layer, the linear layers and the head read bf16 either
    way. Not for a transformer (its time encoding's sines need fp32 angles), nor a hazard-only logit (its
    survival needs fp32), nor where oneDNN has no bf16 RNN kernels (autocast keeps those in fp32,
    `bf16_kernels`)."""
    model_cfg = (meta.get("config") or {}).get("model") or {}
    encoder = (model_cfg.get("net") or {}).get("encoder")
    tte_only = bool((model_cfg.get("tte") or {}).get("only"))
    if not (hasattr(model, "net") and hasattr(model, "calibration")) or encoder not in ("lstm", "gru"):
        return None
    if tte_only or not onednn_bf16().ok:
        return None
    with torch.no_grad():  # (a copy made with grad tracking has non-leaf weights)
        return copy.deepcopy(model.net).to(torch.bfloat16)


def with_drivers(scored: pd.DataFrame, found: pd.DataFrame) -> pd.DataFrame:
    """`scored` with the driver columns of the customers in `found` (`Scorer.explain_chosen`, indexed by
    id) filled in; the other rows keep theirs."""
    if not len(found):
        return scored
    ids = scored[CUSTOMER_ID].to_numpy(dtype=object)
    value_set = pa.array(found.index.to_numpy(dtype=object), pa.string())
    hit = pc.is_in(pa.array(ids, pa.string()), value_set=value_set).to_numpy(zero_copy_only=False)
    scored = scored.copy()
    for col in found.columns:
        scored.loc[hit, col] = found[col].reindex(ids[hit]).to_numpy()
    return scored


def _text(values: Any) -> Any:
    """A text column with blanks for nulls (one already so is kept as it is; numpy text has no nulls)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return pd.array(values, dtype=str)
    text = pd.Series(values)
    if text.dtype == STR and not text.hasnans:
        return text
    return text.fillna("").astype(str)


def _nullable_int(values: Any) -> Any:
    """`astype("Int64")`, straight from int64 numbers (the common case) without a Series."""
    if isinstance(values, np.ndarray) and values.dtype == np.int64:
        return pd.arrays.IntegerArray(values.copy(), np.zeros(len(values), dtype=bool))
    return pd.Series(values).astype("Int64")
