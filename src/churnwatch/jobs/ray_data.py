"""Ray Data's side of churnwatch's cluster jobs (scoring, jobs/score_ray.py; preparing training snapshots,
jobs/prepare_ray.py): a parquet dataset read as one task per row group, each row numbered in the dataset
and given its customer-disjoint part, so the engine's own shuffle brings a part's events and customer rows
together; how wide the cluster is; and churnwatch's errors out of Ray's wrappers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
from ray.exceptions import RayError

from churnwatch.config.options import check_values
from churnwatch.config.schema import RayConfig, typed
from churnwatch.data.partition import FILE_ROW, among, canonical_ids, part_of, range_of
from churnwatch.data.readers import parquet_dataset
from churnwatch.errors import ArtifactError, ConfigError, DataValidationError

PART = "__churnwatch_part__"
SOURCE = "__churnwatch_source__"
"""Which table a row of the shuffle came from: EVENTS or CUSTOMERS."""
EVENTS, CUSTOMERS = 0, 1
CUSTOMER_COLUMN = "__customer__."
"""The customers table's columns ride in the shuffle under this prefix, beside the events' own."""
USER_ERRORS = (DataValidationError, ConfigError, ArtifactError, FloatingPointError)


def cluster_config(cluster: RayConfig | Mapping[str, Any] | None) -> RayConfig:
    """The `ray` keys, typed and checked (a bad value is one line before any work)."""
    cluster = cluster if isinstance(cluster, RayConfig) else typed(RayConfig, cluster or {}, "ray")
    check_values(
        {
            "ray.workers": cluster.workers,
            "ray.cpus_per_worker": cluster.cpus_per_worker,
            "ray.gpus_per_worker": cluster.gpus_per_worker,
        }
    )
    return cluster


def connect(cluster: RayConfig) -> None:
    """Join the cluster `ray.address` names (null: $RAY_ADDRESS, else start a local one), unless this
    process already has (a notebook's or a test's `ray.init`)."""
    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)


def cluster_workers(cluster: RayConfig) -> int:
    """`ray.workers`, or as many workers (scoring actors, preparing tasks) as the cluster's CPUs and GPUs
    hold. An ask the cluster cannot meet is refused now, not left waiting forever: a GPU it lacks, or a
    worker that would hold every CPU, so that no read task could run to feed it."""
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    if cluster.cpus_per_worker >= cpus:
        raise ConfigError(
            f"ray.cpus_per_worker={cluster.cpus_per_worker}: the cluster has {cpus} CPU(s), and a worker "
            "must leave one for reading and shuffling"
        )
    workers = max(1, cpus // cluster.cpus_per_worker)
    if cluster.gpus_per_worker:
        gpus = resources.get("GPU", 0)
        if gpus < cluster.gpus_per_worker:
            raise ConfigError(
                f"ray.gpus_per_worker={cluster.gpus_per_worker}: the cluster has {gpus:g} GPU(s)"
            )
        workers = min(workers, int(gpus // cluster.gpus_per_worker))
    return cluster.workers or workers


class ParquetSource:
    """A parquet dataset (a file, or a directory of files with hive partitions) as read tasks, one per row
    group, each row numbered in the dataset: files in path order, as one file concatenating them would be."""

    def __init__(self, path: str | Path, source: int):
        self.path = str(path)
        self.source = source
        dataset = parquet_dataset(self.path)
        self.filesystem = dataset.filesystem
        self.schema = dataset.schema
        """The dataset's schema: its files' columns, then the hive partition keys."""
        self.groups: list[dict[str, Any]] = []
        first = 0
        for fragment in dataset.get_fragments():  # in path order
            keys = pads.get_partition_keys(fragment.partition_expression)
            for g, group in enumerate(fragment.metadata.to_dict()["row_groups"]):
                self.groups.append(
                    {"path": fragment.path, "group": g, "first": first, "keys": json.dumps(keys, default=str)}
                )
                first += group["num_rows"]
        self.rows = first
        prefix = CUSTOMER_COLUMN if source == CUSTOMERS else ""
        self.columns = pa.schema(
            [pa.field(prefix + f.name, _plain(f.type)) for f in self.schema]
            + [pa.field(prefix + FILE_ROW, pa.int64())]
        )
        """The columns this table's rows carry in the shuffle (dictionaries decoded, names prefixed)."""

    def read(
        self,
        id_column: str,
        n_parts: int,
        other: ParquetSource | None,
        bounds: np.ndarray | None = None,
        keep: np.ndarray | None = None,
    ) -> ray.data.Dataset:
        """Its rows in the shuffle's one schema: this table's columns, the `other` table's as nulls. A row's
        part is a hash of its canonical id (`part_of`), or with `bounds` (sorted ids, `id_ranges`) the range
        of ids it falls in, so that parts in order hold the ids in order. With `keep` (canonical ids), only
        those customers' rows."""
        return ray.data.from_items(self.groups, override_num_blocks=max(1, len(self.groups))).map_batches(
            _read_groups,
            batch_size=1,
            batch_format="pandas",
            fn_kwargs={
                "table": (self.path, self.source, self.filesystem, self.schema, self.columns),
                "id_column": id_column,
                "n_parts": n_parts,
                "other": other.columns if other is not None else None,
                "bounds": bounds,
                "keep": keep,
            },
        )

    def id_ranges(self, id_column: str, n_parts: int, per_group: int = 256) -> np.ndarray:
        """Up to `n_parts - 1` sorted canonical ids that cut the table into ranges of about equal rows:
        from up to `per_group` ids of each row group, weighted by the rows they stand for (only the id
        column is read)."""
        sample = ray.data.from_items(self.groups, override_num_blocks=max(1, len(self.groups))).map_batches(
            _sample_ids,
            batch_size=1,
            batch_format="pandas",
            fn_kwargs={
                "path": self.path,
                "filesystem": self.filesystem,
                "id_column": id_column,
                "per_group": per_group,
            },
        )
        rows = sample.to_pandas()
        if not len(rows):
            return np.zeros(0, dtype=object)
        rows = rows.groupby("id", sort=True)["rows"].sum()
        cum = np.cumsum(rows.to_numpy())
        at = np.searchsorted(cum, cum[-1] * np.arange(1, n_parts) / n_parts, side="left")
        return np.unique(np.asarray(rows.index, dtype=object)[np.minimum(at, len(rows) - 1)])


def _plain(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _sample_ids(
    items: pd.DataFrame, *, path: str, filesystem: Any, id_column: str, per_group: int
) -> pd.DataFrame:
    """A row group's distinct canonical ids, thinned to `per_group` evenly spaced ones, each with the rows
    of the ids it stands for."""
    out = []
    for item in items.itertuples():
        file = pq.ParquetFile(item.path, filesystem=filesystem)
        if id_column not in file.schema_arrow.names:
            continue  # the read says which column is missing, with the file
        group = file.read_row_group(item.group, columns=[id_column])
        _, ids = canonical_ids(group, id_column, path)
        counts = ids.value_counts(sort=False).sort_index()
        counts = counts[counts > 0]
        if not len(counts):
            continue
        keep = np.unique(np.linspace(0, len(counts) - 1, min(per_group, len(counts))).astype(int))
        rows = np.add.reduceat(counts.to_numpy(), np.r_[0, keep[:-1] + 1])
        out.append(pd.DataFrame({"id": np.asarray(counts.index[keep], dtype=object), "rows": rows}))
    return pd.concat(out) if out else pd.DataFrame({"id": pd.Series([], dtype=object), "rows": []})


def _read_groups(
    items: pd.DataFrame,
    *,
    table: tuple[Any, ...],
    id_column: str,
    n_parts: int,
    other: pa.Schema | None,
    bounds: np.ndarray | None,
    keep: np.ndarray | None,
) -> pa.Table:
    """Row groups → rows numbered in the dataset, each with its part and the shuffle's columns
    (`table`: the source's path, kind, file system, schema and shuffle columns); only the rows of the
    customers `keep` where given."""
    path, source, filesystem, schema, columns = table
    plain = pa.schema([pa.field(f.name, _plain(f.type)) for f in schema])
    tables = []
    for item in items.itertuples():
        group = pq.ParquetFile(item.path, filesystem=filesystem).read_row_group(item.group)
        for key, value in json.loads(item.keys).items():  # hive partition keys, typed as the dataset says
            group = group.append_column(key, pa.array([value] * len(group)).cast(plain.field(key).type))
        group = pa.table(  # a column some file lacks is null there, as the dataset reads it
            {
                f.name: _decoded(group.column(f.name))
                if f.name in group.column_names
                else pa.nulls(len(group))
                for f in schema
            }
        ).cast(plain)
        group = group.append_column(FILE_ROW, pa.array(np.arange(item.first, item.first + len(group))))
        group, ids = canonical_ids(group, id_column, path)
        part = part_of(ids, n_parts) if bounds is None else range_of(ids, bounds)
        if keep is not None:
            mask = among(ids, keep)
            group, part = group.filter(pa.array(mask)), part[mask]
        tables.append(group.rename_columns(list(columns.names)).append_column(PART, pa.array(part)))
    rows = pa.concat_tables(tables)
    mine = {f.name: rows.column(f.name) for f in columns}
    absent = {f.name: pa.nulls(len(rows), f.type) for f in other} if other is not None else {}
    ordered = {**mine, **absent} if source == EVENTS else {**absent, **mine}
    kind = pa.array(np.full(len(rows), source, dtype=np.int8))
    return pa.table({**ordered, PART: rows.column(PART), SOURCE: kind})


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


@ray.remote(num_cpus=0)
class Reports:
    """What each part reported (its validation, its join, its sizes), for the driver to add up."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[str, Any]] = {}

    def add(self, part: int, report: dict[str, Any]) -> None:
        self.parts[part] = report  # by part: a part done again after a worker died counts once

    def all(self) -> dict[int, dict[str, Any]]:
        return dict(sorted(self.parts.items()))


@contextmanager
def user_errors() -> Iterator[None]:
    """A churnwatch error raised in a Ray worker (bad data, a refused value, a probability that is not a
    number) comes out as itself, its one line intact, not wrapped in Ray's task error and traceback."""
    try:
        yield
    except Exception as exc:
        found, seen = None, exc
        while seen is not None:
            if isinstance(seen, USER_ERRORS) and not isinstance(seen, RayError):
                found = seen
            seen = getattr(seen, "cause", None) or seen.__cause__
        if found is None:
            raise
        # Ray appends its retry advice to the message: churnwatch's own is the first line
        raise type(found)(str(found).splitlines()[0]) from exc


def source_frame(group: pa.Table, source: int, columns: pa.Schema) -> pd.DataFrame:
    """One table's rows of a shuffle group (`source`: EVENTS or CUSTOMERS), as `read_part` gives a part: its
    own columns, indexed by their number in the dataset."""
    table = group.filter(pa.array(group.column(SOURCE).to_numpy() == source))
    prefix = CUSTOMER_COLUMN if source == CUSTOMERS else ""
    frame = table.select(columns.names).to_pandas()
    frame.columns = [c[len(prefix) :] for c in frame.columns]
    return frame.set_index(FILE_ROW).rename_axis(None)
