"""Batch scoring: raw events → (the training contract and encoders, from the artifact) → risk per customer.

Nothing here re-implements encoding: the artifact's metadata rebuilds the same contract, encoder and
aggregate featurizer objects that training fitted, and their `transform` does the work. Every customer id
in the input appears exactly once in the output, or the run fails.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from churnwatch.data.batch import pad_batch
from churnwatch.data.contract import CUSTOMER_ID, CustomerSchema, EventSchema, load_customers, load_events
from churnwatch.data.snapshots import DAY_NS, EventLog, Snapshots, build_snapshot
from churnwatch.drivers import IndicatorCatalogue, explain_sequences, top_drivers
from churnwatch.export import load_artifact
from churnwatch.features.aggregates import AggregateFeaturizer, AggregateTable
from churnwatch.features.encode import EncodedSequences, SequenceEncoder
from churnwatch.insights import Segments, context_frame, owners
from churnwatch.models.thresholds import CAPACITY, Operating, assign_tiers
from churnwatch.playbook import Playbook

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


@dataclass(frozen=True)
class ScoringInput:
    """What a scoring run reads: the validated event log, one snapshot per customer, attributes, ids."""

    log: EventLog
    snaps: Snapshots
    customers: pd.DataFrame | None
    as_of: pd.Timestamp
    input_ids: np.ndarray


@dataclass(frozen=True)
class ScoringResult:
    output_path: Path
    customers: int
    scored: int
    no_history: int
    seconds: float
    frame: pd.DataFrame
    phases: dict[str, float]
    """Wall seconds per phase: read, encode, forward, segments, drivers, rank, write."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device} requested but CUDA is not available on this machine")
    return torch.device(device)


class Scorer:
    """A loaded artifact, ready to score event logs in the contract it was trained on."""

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        batch_size: int = 1024,
        drivers: Mapping[str, Any] | None = None,
        playbook: Mapping[str, Any] | None = None,
        rank_by: str = "probability",
        value_days: int = 90,
    ):
        self.device = resolve_device(device)
        self.seconds: dict[str, float] = {}
        """Wall seconds per phase (read, encode, forward, segments, drivers, rank, write), summed."""
        self.model, self.meta = load_artifact(model_path, self.device)
        self.batch_size = batch_size
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
        self.explain = bool(self.drivers["enabled"]) and hasattr(self.model, "logit_from_embedded")
        if self.drivers["enabled"] and not self.explain:
            log.warning("%s has no attribution entry points: driver columns stay empty", model_path)

    @torch.inference_mode()
    def _predict(self, seqs: EncodedSequences, agg: np.ndarray | None) -> np.ndarray:
        order = np.argsort(-seqs.lengths, kind="stable")  # similar lengths together: little padding
        probs = np.empty(len(seqs), dtype=np.float64)
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            b = pad_batch(seqs, rows, agg).to(self.device)
            out = self.model(b.cat, b.num, b.lengths, b.static_cat, b.static_num, b.aggregates)
            probs[rows] = out.float().cpu().numpy()
        return probs

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
            len(self.catalogue.names),
            int(self.drivers["batch_size"]),
            int(self.drivers["steps"]),
            self.device,
        )
        sub_table = AggregateTable(table.values[rows], table.names, table.categorical)
        context = context_frame(sub_table, customers, sub.customer_ids(log_))
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
            agg = self.featurizer.scale(table) if self.use_aggregates else None
        with self.timed("forward"):
            out = pd.DataFrame({"churn_probability": self._predict(seqs, agg)})
        spend = table.values[:, table.names.index(self.value_column)].astype(np.float64)
        out["recent_spend"] = spend
        out["value_at_risk"] = out["churn_probability"] * spend
        with self.timed("segments"):
            if self.segments is not None:
                out = pd.concat([out, self.segments.assign(table).reset_index(drop=True)], axis=1)
        with self.timed("drivers"):
            if self.explain:
                out = pd.concat([out, self._drivers(log_, snaps, customers, seqs, table, agg)], axis=1)
        return out

    def load(
        self,
        events_path: str | Path,
        customers_path: str | Path | None = None,
        as_of: str | pd.Timestamp | None = None,
        shard: tuple[int, int] | None = None,
    ) -> ScoringInput:
        """Raw files → the training contract → one snapshot per customer at `as_of` (monitoring reads the
        same input the scorer does); `shard=(num_shards, index)` keeps that shard's customers."""
        data = self.data_cfg
        loaded = load_events(
            events_path,
            self.schema,
            policy=data.get("policy", "drop"),
            end_date=None,
            row_filter=data.get("filter"),
            derived=data.get("derived"),
        )
        customers = None
        if self.customer_schema.categorical or self.customer_schema.numeric or self.customer_schema.dates:
            if customers_path is None:
                log.warning(
                    "the model uses customer attributes but no customers_path was given: they are "
                    "scored as unknown"
                )
            else:
                customers, _ = load_customers(
                    customers_path,
                    self.schema.customer_id,
                    self.customer_schema,
                    self.schema.timezone,
                    data.get("policy", "drop"),
                )
        frame, input_ids = loaded.frame, loaded.input_ids
        if shard is not None:
            num_shards, index = shard
            if not 0 <= index < num_shards:
                raise ValueError(f"shard_index={index} must be in [0, num_shards={num_shards})")
            input_ids = np.asarray(input_ids)[shard_of(input_ids, num_shards) == index]
            frame = frame[frame[CUSTOMER_ID].astype(str).isin(set(map(str, input_ids)))]
            if isinstance(frame[CUSTOMER_ID].dtype, pd.CategoricalDtype):
                frame = frame.assign(**{CUSTOMER_ID: frame[CUSTOMER_ID].cat.remove_unused_categories()})
        event_log = EventLog.from_frame(frame)
        as_of_ts = (
            pd.Timestamp(as_of).normalize()
            if as_of is not None
            else loaded.data_end.normalize() + pd.Timedelta(days=1)
        )
        snaps = build_snapshot(event_log, as_of_ts, horizon_days=None)
        return ScoringInput(event_log, snaps, customers, as_of_ts, input_ids)

    def score(
        self,
        events_path: str | Path,
        customers_path: str | Path | None = None,
        as_of: str | pd.Timestamp | None = None,
        chunk_customers: int = 100_000,
        progress: bool = True,
        shard: tuple[int, int] | None = None,
    ) -> pd.DataFrame:
        """One row per customer id in the input, riskiest first. With `shard=(num_shards, index)`, only the
        customers whose id hashes to that shard, and not yet ranked: `merge_shards` ranks the union."""
        with self.timed("read"):
            inp = self.load(events_path, customers_path, as_of, shard)
        return self.score_input(inp, chunk_customers, progress, shard)

    def score_input(
        self,
        inp: ScoringInput,
        chunk_customers: int = 100_000,
        progress: bool = True,
        shard: tuple[int, int] | None = None,
    ) -> pd.DataFrame:
        """`score` on an input already loaded (`load`), for callers that also read it otherwise."""
        event_log, snaps, customers, as_of_ts = inp.log, inp.snaps, inp.customers, inp.as_of
        parts = []
        chunks = range(0, len(snaps), max(1, chunk_customers))
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
                "last_event_at": pd.to_datetime(last),
                "lapsed": ~self.in_population(event_log, snaps),
            }
        )
        complete = self._complete(scored, inp.input_ids, as_of_ts)
        if shard is None:
            with self.timed("rank"):
                return self.rank(complete)
        return complete.assign(num_shards=shard[0], shard_index=shard[1])

    def _complete(self, scored: pd.DataFrame, input_ids: np.ndarray, as_of: pd.Timestamp) -> pd.DataFrame:
        """Add the customers without history before as_of (training base rate, no_history=True) and check
        that each input id appears exactly once. Not yet ranked: `rank` does that, on one run or on the
        union of shard parts alike."""
        ids = pd.Index(np.asarray(input_ids, dtype=str))
        missing = ids.difference(scored[CUSTOMER_ID]).to_numpy(dtype=str)
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
        """Rank and tier the population by `rank_by`, then the playbook's action. Lapsed customers (no event
        within the training lookback) keep their probability but get tier 'lapsed' and no rank; customers
        without history get tier 'unknown'. A pure function of the rows, so shards merge exactly."""
        key = "churn_probability" if self.rank_by == "probability" else "value_at_risk"
        group = np.where(frame["no_history"], 2, np.where(frame["lapsed"], 1, 0))
        out = (
            frame.assign(_group=group)
            .sort_values(["_group", key, CUSTOMER_ID], ascending=[True, False, True], kind="stable")
            .drop(columns="_group")
            .reset_index(drop=True)
        )
        n = int((group == 0).sum())
        p = out["churn_probability"].to_numpy()[:n]
        ranked = out[key].to_numpy()[:n]
        out["risk_tier"] = np.where(out["no_history"], "unknown", "lapsed").astype(object)
        # capacity rules fill the tiers in rank order; cut-off rules read the probability
        rule = self.operating.rule.get("tiers", "top_fraction")
        out.loc[: n - 1, "risk_tier"] = assign_tiers(ranked if rule in CAPACITY else p, self.operating)
        out["risk_rank"] = pd.array([pd.NA] * len(out), dtype="Int64")
        out.loc[: n - 1, "risk_rank"] = np.arange(1, n + 1)
        # percentile among ranked customers: share at or below this risk (100 = the riskiest)
        out["percentile"] = np.nan
        below = n - np.searchsorted(-ranked, -ranked, side="left")
        out.loc[: n - 1, "percentile"] = 100.0 * below / max(n, 1)
        out["action"] = self.playbook.assign(out)
        return out[list(OUTPUT_COLUMNS)]


def check_each_once(frame: pd.DataFrame, ids: pd.Index) -> None:
    """Every id of the input exactly once in the output, or a loud failure."""
    lost = not ids.isin(frame[CUSTOMER_ID]).all()
    if len(frame) != len(ids) or frame[CUSTOMER_ID].duplicated().any() or lost:
        raise RuntimeError(
            f"scoring lost or duplicated customers: {len(ids)} ids in the input, "
            f"{frame[CUSTOMER_ID].nunique()} distinct of {len(frame)} rows in the output"
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


def write_atomic(frame: pd.DataFrame, path: str | Path, overwrite: bool = False) -> Path:
    """Parquet or CSV (by extension) via a temp file and a rename: never a partial file at `path`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"{path}: output must end in .parquet or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def merge_shards(
    model_path: str | Path,
    part_paths: list[str | Path],
    output_path: str | Path,
    playbook: Mapping[str, Any] | None = None,
    rank_by: str = "probability",
    overwrite: bool = False,
) -> pd.DataFrame:
    """The union of shard parts, ranked and tiered as one run over the whole population (row for row the
    output of an unsharded run). Refuses missing or repeated shards and customers in two parts."""
    parts = [pd.read_parquet(p) if str(p).endswith(".parquet") else pd.read_csv(p) for p in part_paths]
    if not parts:
        raise ValueError("merge: no shard parts given")
    frame = pd.concat(parts, ignore_index=True)
    if "num_shards" not in frame:
        raise ValueError(f"{part_paths[0]}: not a shard part (score with num_shards=N shard_index=i)")
    counts = frame.groupby("shard_index").size()
    expected = int(frame["num_shards"].iloc[0])
    if frame["num_shards"].nunique() != 1 or sorted(counts.index) != list(range(expected)):
        raise ValueError(f"merge: parts cover shards {sorted(counts.index)} of num_shards={expected}")
    if len(parts) != expected or frame[CUSTOMER_ID].duplicated().any():
        raise ValueError(f"merge: {len(parts)} parts for {expected} shards, or a customer in two parts")
    if frame["as_of"].nunique() != 1:
        raise ValueError(
            f"merge: parts were scored at different as_of dates {sorted(frame['as_of'].unique())}"
        )
    scorer = Scorer(model_path, "cpu", playbook=playbook, rank_by=rank_by, drivers={"enabled": False})
    ranked = scorer.rank(frame.drop(columns=["num_shards", "shard_index"]))
    write_atomic(ranked, output_path, overwrite)
    return ranked


def score_file(
    model_path: str | Path,
    events_path: str | Path,
    output_path: str | Path,
    customers_path: str | Path | None = None,
    as_of: str | None = None,
    device: str = "auto",
    batch_size: int = 1024,
    chunk_customers: int = 100_000,
    overwrite: bool = False,
    progress: bool = True,
    drivers: Mapping[str, Any] | None = None,
    playbook: Mapping[str, Any] | None = None,
    rank_by: str = "probability",
    value_days: int = 90,
    shard: tuple[int, int] | None = None,
) -> ScoringResult:
    """Score a file (or one shard of its customers) and write the result atomically."""
    t0 = time.perf_counter()
    if Path(output_path).exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists; pass overwrite=true to replace it")
    scorer = Scorer(model_path, device, batch_size, drivers, playbook, rank_by, value_days)
    frame = scorer.score(events_path, customers_path, as_of, chunk_customers, progress, shard)
    with scorer.timed("write"):
        path = write_atomic(frame, output_path, overwrite)
    no_hist = int(frame["no_history"].sum())
    return ScoringResult(
        path, len(frame), len(frame) - no_hist, no_hist, time.perf_counter() - t0, frame, dict(scorer.seconds)
    )
