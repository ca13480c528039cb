"""Scoring on a Ray cluster: a parquet dataset of any size in, a directory of parquet files in rank order
out, row for row what `score_file` writes for the same rows on one machine.

Ray Data rather than Spark: the scorer (torch, pandas, Arrow) runs unchanged inside Ray's Python workers,
with no JVM and no row conversion at the boundary, and `pip install` is all a laptop needs to run the same
job on a local cluster. The job, stage by stage:

1. **read** (jobs/ray_data.py): every row group of the events (and customers) dataset is one read task. A
   row keeps its number in the dataset (files in path order), what validation messages cite, and gets its
   part: a hash of its canonical id, as `split_file` gives it on one machine.
2. **group**: Ray's shuffle (`groupby(part).map_groups`) brings each part's events and customer rows
   together; a pool of actors, each holding one `Scorer`, validates, encodes and scores a part at a time.
3. **rank**: Ray sorts the scored rows (ranked customers first, riskiest first, ties by id). Each sorted
   block is finished by `Ranker.finish_block` at its global position, in parallel: the only thing a block
   needs of the others is the `BlockEdge` of those before it, chained on the driver.
4. **write**: files of `block_rows` rows in rank order (part-k holds rows k·block_rows onwards), into a
   hidden directory renamed onto the output, and the validation sidecar next to it. At a URL (`s3://...`),
   the workers write the files through fsspec into a hidden prefix, moved under the URL when all are
   written; then the sidecar and an empty `_SUCCESS` (io/object_store.py, `UrlDirectory`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from churnwatch.config.options import check_values
from churnwatch.config.schema import RayConfig, ScoreConfig
from churnwatch.data.loaders import LoadedEvents
from churnwatch.data.schema import CUSTOMER_ID
from churnwatch.data.validation import ValidationReport, no_event_rows
from churnwatch.errors import ConfigError
from churnwatch.io.atomic import StagedDirectory, check_output
from churnwatch.io.object_store import UrlDirectory, is_url
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
from churnwatch.jobs.score import RunStats, ScoreJob, ScoringResult
from churnwatch.scoring.inputs import ScoringInput, default_as_of
from churnwatch.scoring.output import RANK_KEYS, rank_group, report_path
from churnwatch.scoring.ranking import BlockEdge, Carry, Ranker, carry_after, check_finite
from churnwatch.scoring.scorer import with_drivers

log = logging.getLogger(__name__)
GROUP = "__churnwatch_group__"
"""Sort key: `rank_group` (0 ranked, 1 lapsed, 2 without history), as `rank_order` sorts first."""


def score_on_ray(job: ScoreJob, cluster: RayConfig | Mapping[str, Any] | None = None) -> ScoringResult:
    """Score the parquet dataset `job.events_path` (a file or a directory of files, hive partitions
    allowed; `job.customers_path` likewise; either may be a URL) on a Ray cluster into the directory
    `job.output_path` (or a URL): its files, read in name order, are the rows `score_file` would write, in
    rank order. Needs `job.as_of`."""
    t0 = time.perf_counter()
    cluster = cluster_config(cluster)
    check_values(
        {
            "part_events": job.part_events,
            "chunk_customers": job.chunk_customers,
            "block_rows": job.block_rows,
        }
    )
    if job.shard is not None:
        raise ConfigError("engine=ray scores the whole population: num_shards is for engine=local")
    if job.as_of is None:
        raise ConfigError("engine=ray needs an explicit as_of: every part must score the same date")
    if job.device == "cuda" and not cluster.gpus_per_worker:
        raise ConfigError(
            "engine=ray with device=cuda needs ray.gpus_per_worker > 0 (Ray hides GPUs otherwise)"
        )
    as_of = default_as_of(job.as_of, pd.NaT)
    inputs = {
        "events_path": job.events_path,
        "customers_path": job.customers_path,
        "model_path": job.model_path,
    }
    output = _output(job.output_path, job.overwrite, inputs)
    # the driver loads the model once, for its checks (the signature too) and the ranking; actors score
    scorer = job.scorer(device="cpu", batch_size=None, precision=ScoreConfig.precision)
    reader = scorer.reader
    reader.warn_without_customers(job.customers_path)
    connect(cluster)
    workers = cluster_workers(cluster)
    events = ParquetSource(job.events_path, EVENTS)
    if not events.rows:
        raise no_event_rows(job.events_path)
    n_parts = max(workers, -(-events.rows // job.part_events))
    customers = (
        ParquetSource(job.customers_path, CUSTOMERS)
        if reader.uses_customers and job.customers_path is not None
        else None
    )
    id_column = reader.schema.customer_id

    def by_part(actor: type, keep: np.ndarray | None = None, **kwargs: Any) -> ray.data.Dataset:
        """The events and customer rows (of the customers `keep`, if given) shuffled into parts, each part
        handed to one of a pool of `actor`s."""
        data = events.read(id_column, n_parts, customers, keep=keep)
        if customers is not None:
            data = data.union(customers.read(id_column, n_parts, events, keep=keep))
        schemas = {"events": events.columns, "customers": None if customers is None else customers.columns}
        return data.groupby(PART, num_partitions=n_parts).map_groups(
            actor,
            fn_constructor_kwargs={"job": job, "as_of": as_of, **schemas, **kwargs},
            batch_format="pyarrow",
            # a pool that grows from one: a fixed one would hold every CPU before the reads could run
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            num_cpus=cluster.cpus_per_worker,
            num_gpus=cluster.gpus_per_worker,
        )

    def explain(chosen: np.ndarray) -> ray.ObjectRef:
        """`drivers.tiers`' second pass: the drivers of the customers `chosen`, read and explained again."""
        found = by_part(_PartExplainer, keep=chosen, chosen=chosen).materialize().to_arrow_refs()
        return _concat.remote(*found)

    reports = Reports.remote()
    scored = by_part(_PartScorer, reports=reports)
    sort_key = [GROUP, scorer.ranker.rank_key, CUSTOMER_ID]
    with user_errors():
        ranked = (
            scored.map_batches(_with_group, batch_format="pyarrow")
            .sort(sort_key, descending=[False, True, False])
            .materialize()
        )
    stats = RunStats()
    for part in ray.get(reports.all.remote()).values():
        stats.add(part["events"], part["customers"])
        stats.add_join(part["join"])
        stats.customers += part["customers_scored"]
        stats.no_history += part["no_history"]
    stats.as_of = as_of
    stats.check(str(job.events_path))
    stats.check_join(job.customers_path)
    stats.log()
    tiers = tuple(scorer.drivers.tiers or ()) if scorer.explain_tiers else ()
    try:
        with user_errors():
            _write_ranked(ranked, scorer.ranker, output, job.block_rows, stats, tiers, explain)
        _commit(output, stats, n_parts, job.overwrite)
    finally:
        output.close()
    where = output.url if isinstance(output, UrlDirectory) else output.path
    return stats.result(where, time.perf_counter() - t0, n_parts, {})


def _output(
    path: str | Path, overwrite: bool, inputs: Mapping[str, str | Path | None]
) -> StagedDirectory | UrlDirectory:
    """The output directory, checked before any work (one line): local, or at a URL."""
    if not is_url(path):
        return StagedDirectory(check_output(path, overwrite, inputs, directory=True))
    inside = f"{str(path).rstrip('/')}/"
    for name, given in inputs.items():
        if given is not None and (str(given) == path or str(given).startswith(inside)):
            raise ConfigError(
                f"output_path={path} holds {name}={given}: writing it would destroy the input, "
                "overwrite or not"
            )
    return UrlDirectory.open(str(path), overwrite)


def _commit(output: StagedDirectory | UrlDirectory, stats: RunStats, n_parts: int, overwrite: bool) -> None:
    """The written files in place, then the validation sidecar beside them."""
    if isinstance(output, StagedDirectory):
        output.commit(overwrite)
        stats.write(report_path(output.path), n_parts)
        return
    with tempfile.TemporaryDirectory(prefix="churnwatch-report-") as tmp:
        report = Path(tmp) / f"{PurePosixPath(output.path).name}.report.json"
        stats.write(report, n_parts)
        output.commit(report, overwrite)


class _PartInput:
    """A scoring actor's input: one `Scorer` (the model loaded once), and a part of the shuffle read,
    validated and prepared exactly as `score_file` reads one part on disk."""

    def __init__(
        self, job: ScoreJob, as_of: pd.Timestamp, events: pa.Schema, customers: pa.Schema | None
    ) -> None:
        self.scorer = job.scorer()
        self.job, self.as_of = job, as_of
        self.events, self.customers = events, customers

    def prepared(self, group: pa.Table) -> tuple[ScoringInput, LoadedEvents, ValidationReport | None]:
        reader, job = self.scorer.reader, self.job
        loaded = reader.read_events(job.events_path, source_frame(group, EVENTS, self.events))
        customers, customer_report = None, None
        if self.customers is not None:
            rows = source_frame(group, CUSTOMERS, self.customers)
            customers, customer_report = reader.read_customers(job.customers_path, rows)
        return reader.prepare(loaded, customers, self.as_of), loaded, customer_report


class _PartScorer(_PartInput):
    """Scores a part (its drivers too, unless `drivers.tiers` leaves them to `_PartExplainer`), and
    reports its validation to `reports`."""

    def __init__(self, reports: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reports = reports

    def __call__(self, group: pa.Table) -> pa.Table:
        inp, loaded, customer_report = self.prepared(group)
        scored = self.scorer.score_input(
            inp, self.job.chunk_customers, progress=False, drivers=self.scorer.first_pass_drivers
        )
        report = {
            "events": loaded.report,
            "customers": customer_report,
            "join": inp.join,
            "customers_scored": len(scored),
            "no_history": int(scored["no_history"].sum()),
        }
        ray.get(self.reports.add.remote(int(group.column(PART)[0].as_py()), report))
        # Arrow with the frame's pandas metadata, as a part on disk keeps it: the blocks read back as the
        # same dtypes (nullable integers, strings) the single-machine path ranks
        return pa.Table.from_pandas(scored, preserve_index=False)


class _PartExplainer(_PartInput):
    """`drivers.tiers`' second pass over a part: the driver columns of its customers among `chosen`."""

    def __init__(self, chosen: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chosen = chosen

    def __call__(self, group: pa.Table) -> pa.Table:
        inp, _, _ = self.prepared(group)
        found = self.scorer.explain_chosen(inp, self.chosen, self.job.chunk_customers)
        return pa.Table.from_pandas(found.rename_axis(CUSTOMER_ID).reset_index(), preserve_index=False)


@ray.remote
def _concat(*found: pa.Table) -> pa.Table:
    """The explained parts as one table (one object every finishing task reads without a copy)."""
    return pa.concat_tables(found, promote_options="permissive")


@ray.remote
def _chosen(ranker: Ranker, block: pa.Table, start: int, n_ranked: int, tiers: tuple[str, ...]) -> np.ndarray:
    """The ids of a sorted block's customers whose tier (at its global position) is among `tiers`."""
    rows = block.select(["no_history", "churn_probability", CUSTOMER_ID]).to_pandas()
    chosen = np.isin(ranker.block_tiers(rows, start, n_ranked), list(tiers))
    return rows[CUSTOMER_ID].to_numpy(dtype=object)[chosen]


def _with_group(scored: pa.Table) -> pa.Table:
    group = rank_group(scored.column("no_history").to_numpy(), scored.column("lapsed").to_numpy())
    return scored.append_column(GROUP, pa.array(group))


@ray.remote
def _edge(ranker: Ranker, block: pa.Table) -> BlockEdge:
    return ranker.edge(block.select(list(RANK_KEYS)).to_pandas())


@ray.remote(num_returns=2)
def _finish(
    ranker: Ranker, block: pa.Table, start: int, n_ranked: int, carry: Carry, drivers: pa.Table | None
) -> tuple[Any, ...]:
    """A sorted block at its global position → the output rows (Arrow), and what the driver needs of them;
    its customers among the `drivers` (`drivers.tiers`' second pass) get theirs first, as the playbook's
    actions read the main driver."""
    rows = block.drop_columns([GROUP]).to_pandas()
    if drivers is not None:
        mine = drivers.filter(pc.is_in(drivers.column(CUSTOMER_ID), value_set=block.column(CUSTOMER_ID)))
        rows = with_drivers(rows, mine.to_pandas().set_index(CUSTOMER_ID))
    out = ranker.finish_block(rows, start, n_ranked, carry)
    check_finite(out["churn_probability"].to_numpy(), out[CUSTOMER_ID].to_numpy(), ranker.model_path)
    table = pa.Table.from_pandas(out, preserve_index=False)
    tiers = {str(k): int(v) for k, v in out["risk_tier"].value_counts().items()}
    return table, {"rows": len(out), "schema": table.schema, "tiers": tiers, "top": out.head(100)}


@ray.remote
def _write(
    schema: pa.Schema, path: str, filesystem: Any, slices: list[tuple[int, int]], *tables: pa.Table
) -> int:
    """One output file: the `slices` (offset, length) of consecutive finished blocks, in order."""
    rows = pa.concat_tables([t.slice(o, n).cast(schema) for t, (o, n) in zip(tables, slices, strict=True)])
    pq.write_table(rows, path, filesystem=filesystem)
    return len(rows)


def _write_ranked(
    ranked: ray.data.Dataset,
    ranker: Ranker,
    output: StagedDirectory | UrlDirectory,
    block_rows: int,
    stats: RunStats,
    tiers: tuple[str, ...] = (),
    explain: Callable[[np.ndarray], ray.ObjectRef] | None = None,
) -> None:
    """The sorted rows → tier, rank, percentile and action per block at its global position, in parallel;
    then files of `block_rows` rows in rank order (part-k holds ranked rows k·block_rows onwards, however
    Ray's sort cut its blocks), into `output`'s staging directory (`_commit` puts them in place). With
    `tiers`, their customers get their drivers (`explain` of their ids) before they are finished."""
    blocks = ranked.to_arrow_refs()
    ranker_ref = ray.put(ranker)
    edges = ray.get([_edge.remote(ranker_ref, b) for b in blocks])
    starts = np.r_[0, np.cumsum([e.rows for e in edges])[:-1]].astype(int)
    n_ranked = sum(e.ranked for e in edges)
    carries: list[Carry] = []
    carry: Carry = None
    for edge, start in zip(edges, starts, strict=True):
        carries.append(carry)
        carry = carry_after(edge, int(start), carry)
    drivers = None
    if tiers and explain is not None:
        found = [
            _chosen.remote(ranker_ref, b, int(s), n_ranked, tiers)
            for b, s in zip(blocks, starts, strict=True)
        ]
        chosen = np.concatenate([np.zeros(0, dtype=object), *ray.get(found)])
        drivers = explain(chosen) if len(chosen) else None
        log.info("explaining %s customers of tiers %s", f"{len(chosen):,}", list(tiers))
    finished = [
        (int(s), e.rows, *_finish.remote(ranker_ref, b, int(s), n_ranked, c, drivers))
        for b, s, c, e in zip(blocks, starts, carries, edges, strict=True)
        if e.rows
    ]
    infos = ray.get([info for *_, info in finished])
    schema = pa.unify_schemas([i["schema"] for i in infos], promote_options="permissive")
    total = sum(rows for _, rows, *_ in finished)
    writes = []
    for k, lo in enumerate(range(0, total, block_rows)):
        hi = min(total, lo + block_rows)
        pieces = [
            (start, rows, table) for start, rows, table, _ in finished if start < hi and start + rows > lo
        ]
        slices = [
            (max(lo, start) - start, min(hi, start + rows) - max(lo, start)) for start, rows, _ in pieces
        ]
        path = output.file(f"part-{k:05d}.parquet")
        writes.append(_write.remote(schema, path, output.fs, slices, *(table for *_, table in pieces)))
    written = sum(ray.get(writes))
    if written != stats.customers:
        raise RuntimeError(
            f"{output.path}: {written} rows for {stats.customers} customers; nothing was written"
        )
    for info in infos:
        for tier, n in info["tiers"].items():
            stats.tiers[tier] = stats.tiers.get(tier, 0) + n
        stats.keep_top(info["top"])
    log.info("ranked %s customers into %d files: %s", f"{written:,}", len(writes), output.path)
