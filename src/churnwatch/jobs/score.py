"""The scoring job: an events file (and a customers file) in, a ranked score file and its sidecar out.

`score_file` streams inputs of any size in bounded memory: split into customer-disjoint parts on disk,
scored part by part with a `Scorer`, then ranked block by block. With a shard it writes one unranked part
that `churnwatch.scoring.shards.merge_shards` ranks with the others. What the job does is one `ScoreJob`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from churnwatch.config.options import check_values
from churnwatch.config.schema import DriversConfig, ScoreConfig
from churnwatch.data.partition import read_part
from churnwatch.data.validation import JoinReport, ValidationReport, no_event_rows, no_valid_events
from churnwatch.errors import ConfigError, DataValidationError
from churnwatch.io.atomic import atomic_path, check_output, scratch_dir
from churnwatch.io.object_store import UrlOutput, is_url
from churnwatch.io.signing import Verification
from churnwatch.runtime.hardware import leave_a_core
from churnwatch.runtime.memory import release_free_memory
from churnwatch.runtime.prefetch import ahead
from churnwatch.scoring.inputs import default_as_of
from churnwatch.scoring.output import RunWriter, atomic_output, check_suffix, read_rank_keys, report_path
from churnwatch.scoring.scorer import EXPLAIN_TIERS_UNRANKED, Scorer, with_drivers
from churnwatch.scoring.shards import check_shard, shard_footer

log = logging.getLogger(__name__)
TOP_ROWS = 100


@dataclass(frozen=True, kw_only=True)
class ScoreJob:
    """One scoring run of files: what to score with which model, where to write it, and how (the options
    of `churnwatch score`; each default and its meaning: `ScoreConfig` in config/schema.py)."""

    model_path: str | Path
    events_path: str | Path
    output_path: str | Path
    customers_path: str | Path | None = ScoreConfig.customers_path
    as_of: str | None = ScoreConfig.as_of
    """Events at or after it are ignored (default: the day after the last valid event)."""
    shard: tuple[int, int] | None = None
    """(num_shards, shard_index): score only that shard's customers into an unranked part."""
    overwrite: bool = ScoreConfig.overwrite
    # the model and its forward
    device: str = ScoreConfig.device
    batch_size: int | None = ScoreConfig.batch_size
    precision: str = ScoreConfig.precision
    verify: Verification | None = None
    """The model file's signature check."""
    # what each row says
    drivers: DriversConfig | Mapping[str, Any] = field(default_factory=DriversConfig)
    """A `DriversConfig`, or a partial mapping of one."""
    playbook: Mapping[str, Any] | None = None
    rank_by: str = ScoreConfig.rank_by
    value_days: int = ScoreConfig.value_days
    # memory: none of these changes the output
    chunk_customers: int = ScoreConfig.chunk_customers
    part_events: int = ScoreConfig.part_events
    block_rows: int = ScoreConfig.block_rows
    spill_dir: str | Path | None = ScoreConfig.spill_dir

    @classmethod
    def from_config(cls, cfg: DictConfig | ScoreConfig) -> ScoreJob:
        """The job a composed `churnwatch score` config describes (conf/score.yaml on `ScoreConfig`)."""
        c = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
        return cls(
            model_path=c.model_path,
            events_path=c.events_path,
            output_path=c.output_path,
            customers_path=c.customers_path,
            as_of=c.as_of,
            shard=(c.num_shards, c.shard_index) if c.num_shards else None,
            overwrite=c.overwrite,
            device=c.device,
            batch_size=c.batch_size,
            precision=c.precision,
            verify=Verification.from_config(c.verify_key, c.require_signature),
            drivers=c.drivers,
            playbook=c.playbook,
            rank_by=c.rank_by,
            value_days=c.value_days,
            chunk_customers=c.chunk_customers,
            part_events=c.part_events,
            block_rows=c.block_rows,
            spill_dir=c.spill_dir,
        )

    def scorer(self, **overrides: Any) -> Scorer:
        """The job's model, loaded and checked, with the job's options (`overrides` replace some)."""
        options = {
            "device": self.device,
            "batch_size": self.batch_size,
            "drivers": self.drivers,
            "playbook": self.playbook,
            "rank_by": self.rank_by,
            "value_days": self.value_days,
            "precision": self.precision,
            "verify": self.verify,
        }
        return Scorer(self.model_path, **{**options, **overrides})


@dataclass(frozen=True)
class ScoringResult:
    output_path: Path | str
    """The output file, or its URL."""
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


def score_file(job: ScoreJob, *, progress: bool = True) -> ScoringResult:
    """Score a file (or one shard of its customers) and write the result atomically, in memory bounded
    by `part_events`, not by the input: inputs with more rows are split into customer-disjoint parts on
    disk (`spill_dir`, default: next to the output), scored part by part, then ranked block by block.
    The output is the same for any part, block and chunk size. An output URL (`s3://...`) is written in
    `spill_dir` (default: the temp dir) and uploaded with its report when the run succeeds."""
    if not is_url(job.output_path):
        return _score_file(job, progress)
    check_suffix(Path(str(job.output_path)))
    target = UrlOutput.open(str(job.output_path), job.overwrite, job.spill_dir)
    try:
        result = _score_file(replace(job, output_path=target.local, overwrite=True), progress)
        target.upload(report_path(target.local), overwrite=job.overwrite)
    finally:
        target.close()
    return replace(result, output_path=target.url)


def _score_file(job: ScoreJob, progress: bool) -> ScoringResult:
    t0 = time.perf_counter()
    events_path, customers_path, shard = job.events_path, job.customers_path, job.shard
    # a bad date fails before the work
    as_of = default_as_of(job.as_of, pd.NaT) if job.as_of is not None else None
    check_values(
        {"chunk_customers": job.chunk_customers, "part_events": job.part_events, "block_rows": job.block_rows}
    )
    inputs = {"events_path": events_path, "customers_path": customers_path, "model_path": job.model_path}
    output_path = check_output(job.output_path, job.overwrite, inputs)
    check_suffix(output_path)
    if shard is not None:
        check_shard(shard)
        if output_path.suffix.lower() != ".parquet":
            raise ConfigError(
                f"{output_path}: a shard part must be .parquet (churnwatch merge-scores reads it)"
            )
        if as_of is None:
            raise ConfigError("sharded scoring needs an explicit as_of: every shard must score the same date")
    scorer = job.scorer()
    if shard is not None and scorer.explain_tiers:
        raise ConfigError(EXPLAIN_TIERS_UNRANKED)
    reader = scorer.reader
    reader.warn_without_customers(customers_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    spill = scratch_dir(output_path, "spill", job.spill_dir)
    try:
        with scorer.timed("read"):
            parts = reader.split_input(events_path, customers_path, shard, job.part_events, spill)
        if as_of is None and len(parts) > 1:  # the data's end is a property of the whole file
            with scorer.timed("read"):
                ends = [reader.read_events(events_path, read_part(ev)).data_end for ev, _ in parts]
            valid = [e for e in ends if not pd.isna(e)]
            if not valid:
                raise DataValidationError(f"{events_path}: no valid events left after validation")
            as_of = default_as_of(None, max(valid))
        stats = RunStats()
        run = spill / "scored.parquet"
        with (
            atomic_output(
                output_path if shard else run,
                job.overwrite or not shard,
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
            leave_a_core(len(parts) > 1),  # for the next part's reading (ahead)
        ):
            task = bar.add_task("score", total=len(parts))
            # with drivers.tiers the drivers wait for the ranking (`_explain_tiers`)
            drivers = scorer.first_pass_drivers

            def read_and_encode(part: tuple[Path | None, Path | None]) -> tuple:
                """One part read, validated and encoded, offers too: on a background thread, a part ahead."""
                with scorer.timed("read"):
                    loaded, customers, customer_report = reader.read_part(events_path, customers_path, *part)
                if len(parts) == 1:  # the whole file: its checks run before anything is built from it
                    whole = RunStats()
                    whole.add(loaded.report, customer_report)
                    whole.check(events_path, shard)
                inp = reader.prepare(loaded, customers, default_as_of(as_of, loaded.data_end))
                return (
                    loaded.report,
                    customer_report,
                    inp,
                    scorer.encode_input(inp, job.chunk_customers, drivers),
                )

            for events_report, customer_report, inp, encoded in ahead(map(read_and_encode, parts)):
                stats.add(events_report, customer_report)
                stats.as_of = inp.as_of
                stats.add_join(inp.join)
                scored = scorer.score_input(
                    inp, job.chunk_customers, progress=False, drivers=drivers, encoded=encoded
                )
                if shard is not None:
                    scored = scored.assign(num_shards=shard[0], shard_index=shard[1])
                with scorer.timed("write"):
                    append(scored)
                stats.count(scored)
                if shard is not None:  # a part is unranked: its first rows are the top
                    stats.keep_top(scored)
                del inp, encoded, scored
                release_free_memory()
                bar.advance(task)
            stats.check(events_path, shard)
            stats.check_join(customers_path)
            stats.log()
        if scorer.explain_tiers:
            run = _explain_tiers(job, scorer, parts, run, stats.as_of)
        if shard is None:
            with scorer.timed("rank"):
                scorer.ranker.write_ranked(
                    [run],
                    output_path,
                    overwrite=job.overwrite,
                    block_rows=job.block_rows,
                    on_block=stats.block,
                )
        stats.write(report_path(output_path), len(parts))
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return stats.result(output_path, time.perf_counter() - t0, len(parts), dict(scorer.seconds))


def _explain_tiers(
    job: ScoreJob,
    scorer: Scorer,
    parts: list[tuple[Path | None, Path | None]],
    run: Path,
    as_of: pd.Timestamp,
) -> Path:
    """`drivers.tiers`' second pass: the tiers the ranking will give, from the scored run's rank keys;
    then each part's customers in those tiers explained, and filled into a copy of the run."""
    chosen = scorer.chosen_for_drivers(read_rank_keys([run]))
    found = []
    for events_part, customers_part in parts:
        with scorer.timed("read"):
            loaded, customers, _ = scorer.reader.read_part(
                job.events_path, job.customers_path, events_part, customers_part, keep=chosen
            )
        inp = scorer.reader.prepare(loaded, customers, as_of)
        found.append(scorer.explain_chosen(inp, chosen, job.chunk_customers))
        del loaded, customers, inp
        release_free_memory()
    drivers = pd.concat(found)
    explained = run.with_name("explained.parquet")
    writer, source = RunWriter(explained), pq.ParquetFile(run)
    with scorer.timed("write"):
        for g in range(source.num_row_groups):
            writer.write(with_drivers(source.read_row_group(g).to_pandas(), drivers))
        writer.close()
    run.unlink()
    log.info("explained %s customers of tiers %s", f"{len(drivers):,}", list(scorer.drivers.tiers or ()))
    return explained


@dataclass
class RunStats:
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

    def result(self, output: Path, seconds: float, parts: int, phases: dict[str, float]) -> ScoringResult:
        """What the run returns: its output and what these stats counted."""
        return ScoringResult(
            output,
            self.customers,
            self.customers - self.no_history,
            self.no_history,
            seconds,
            self.top,
            self.tiers,
            parts,
            phases,
        )

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
