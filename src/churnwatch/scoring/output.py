"""Score files: written atomically, block by block, in rank order, in memory bounded by the block size.

Scoring writes each part of the population unranked (a run); ranking needs the whole population, but only
a few narrow columns of it (`RANK_KEYS`). `write_ranked` sorts those, then routes every run's rows to the
block of the ranked order they belong to, and writes the blocks in order. Shard parts are runs too, so
merging shards and ranking one run share this path.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from churnwatch.config.schema import ScoreConfig
from churnwatch.data.schema import CUSTOMER_ID
from churnwatch.errors import ConfigError
from churnwatch.io.atomic import atomic_path, scratch_dir
from churnwatch.runtime.prefetch import ahead

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
"""A score file's columns, in order."""
RANK_KEYS = (CUSTOMER_ID, "churn_probability", "value_at_risk", "no_history", "lapsed")
POSITION = "__rank_position__"
BlockRanker = Callable[[pd.DataFrame, int], pd.DataFrame]
"""Rows `start..start + len(block)` of the ranked order (sorted) and `start` → the finished output rows."""


class RunWriter:
    """Unranked score rows appended frame by frame to one parquet file, with one schema throughout (and
    `metadata` in its footer). When every frame was empty the file still gets their columns: a shard
    without customers is a part with no rows, not a missing part."""

    def __init__(self, path: str | Path, metadata: Mapping[str, str] | None = None):
        self.path = Path(path)
        self.rows = 0
        self.metadata = dict(metadata or {})
        self.opened = False
        """Whether any frame, even an empty one, was written."""
        self._writer: pq.ParquetWriter | None = None
        self._empty: pd.DataFrame | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            self._empty = frame if self._empty is None else self._empty
            return
        self._write(frame)

    def _write(self, frame: pd.DataFrame) -> None:
        if self._writer is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **self.metadata})
            self._writer = pq.ParquetWriter(self.path, table.schema)
            self.opened = True
        else:
            table = pa.Table.from_pandas(frame, schema=self._writer.schema, preserve_index=False)
        self._writer.write_table(table)
        self.rows += len(frame)

    def close(self) -> None:
        if not self.opened and self._empty is not None:
            self._write(self._empty)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@contextmanager
def atomic_output(
    path: str | Path, overwrite: bool = False, metadata: Mapping[str, str] | None = None
) -> Iterator[Callable[[pd.DataFrame], None]]:
    """A function that appends frames to `path` (parquet, with `metadata` in its footer, or CSV by
    extension) through a temp file renamed into place at the end: a crash never leaves a partial file at
    `path`. Without `overwrite`, a `path` that exists by the end (another run wrote it) is kept and this one
    fails; callers refuse an existing one before their work (`atomic.check_output`)."""
    path = Path(path)
    suffix = check_suffix(path)
    with atomic_path(path, suffix, replace=overwrite) as tmp:
        parquet = RunWriter(tmp, metadata)
        state = {"header": True}

        def append(frame: pd.DataFrame) -> None:
            if suffix == ".parquet":
                parquet.write(frame)
                return
            frame.to_csv(tmp, index=False, header=state["header"], mode="w" if state["header"] else "a")
            state["header"] = False

        try:
            yield append
            parquet.close()
            if suffix == ".parquet" and not parquet.opened:
                raise ValueError(f"{path}: nothing was written")
        finally:
            parquet.close()


def report_path(output_path: str | Path) -> Path:
    """The sidecar of a scoring output: `<output_path>.report.json`."""
    output_path = Path(output_path)
    return output_path.with_name(f"{output_path.name}.report.json")


def check_suffix(path: Path) -> str:
    """The output's format, by its extension: .parquet or .csv, else a one-line error."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ConfigError(f"{path}: output must end in .parquet or .csv")
    return suffix


def rank_group(no_history: np.ndarray, lapsed: np.ndarray) -> np.ndarray:
    """The first sort key of the ranked order: 0 ranked, 1 lapsed, 2 without history."""
    return np.where(no_history, 2, np.where(lapsed, 1, 0)).astype(np.int8)


def rank_order(keys: pa.Table, rank_by: str, within: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Positions of `keys` rows in rank order and how many are ranked: the population by `rank_by`
    (riskiest first), then lapsed customers, then those without history; ties by customer id. `within`:
    a population label per row, sorted first (each population ranked on its own)."""
    group = rank_group(
        keys.column("no_history").to_numpy(zero_copy_only=False),
        keys.column("lapsed").to_numpy(zero_copy_only=False),
    )
    key = "churn_probability" if rank_by == "probability" else "value_at_risk"
    columns = {"group": group, "key": keys.column(key), "id": keys.column(CUSTOMER_ID)}
    sort_keys = [("group", "ascending"), ("key", "descending"), ("id", "ascending")]
    if within is not None:
        columns["within"] = within
        sort_keys.insert(0, ("within", "ascending"))
    order = pc.sort_indices(pa.table(columns), sort_keys=sort_keys)
    return order.to_numpy(), int((group == 0).sum())


def read_rank_keys(runs: Sequence[str | Path]) -> pa.Table:
    """The rank keys of every run, concatenated in run order."""
    return pa.concat_tables([pq.read_table(r, columns=list(RANK_KEYS)) for r in runs]).combine_chunks()


def write_ranked(
    runs: Sequence[str | Path],
    output_path: str | Path,
    *,
    position: np.ndarray,
    finish: BlockRanker,
    block_rows: int = ScoreConfig.block_rows,
    overwrite: bool = False,
    drop: Sequence[str] = (),
    spill_dir: str | Path | None = None,
) -> int:
    """Write the rows of `runs` to `output_path` in the order `position` gives them (position[i] is the
    rank position of the i-th row of the runs, concatenated), `block_rows` at a time through `finish`.
    Nothing is renamed into place unless every row was written exactly once."""
    n = len(position)
    blocks = max(1, -(-n // block_rows))
    spill = scratch_dir(output_path, "rank", spill_dir)
    try:
        # blocks spill as uncompressed Arrow IPC streams: written and read back at memory speed (parquet's
        # encoding was a third of ranking 4M customers)
        paths = [spill / f"block-{b:05d}.arrow" for b in range(blocks)]
        writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        first = 0
        # each run's rows to the block of their rank position, a row group at a time (the next one read on
        # a background thread meanwhile), in Arrow: a block's rows meet pandas once, when it is finished
        groups = (
            source.read_row_group(g).drop_columns(list(drop))
            for source in map(pq.ParquetFile, runs)
            for g in range(source.metadata.num_row_groups)
        )
        try:
            for table in ahead(groups):
                pos = position[first : first + len(table)]
                first += len(table)
                table = table.append_column(POSITION, pa.array(pos))
                block = pos // block_rows
                order = np.argsort(block, kind="stable")
                bounds = np.searchsorted(block[order], np.arange(blocks + 1))
                for b in np.flatnonzero(np.diff(bounds)):
                    piece = table.take(order[bounds[b] : bounds[b + 1]])
                    if b not in writers:
                        writers[b] = ipc.new_stream(paths[b], piece.schema)
                    writers[b].write_table(piece)
                del table
        finally:
            for w in writers.values():
                w.close()

        def sorted_block(b: int) -> pd.DataFrame:
            with ipc.open_stream(pa.memory_map(str(paths[b]))) as reader:
                block = reader.read_all()
            block = block.take(pc.sort_indices(block.column(POSITION)))  # (a copy: the map can go)
            paths[b].unlink()
            return block.drop_columns([POSITION]).to_pandas()

        filled = sorted(writers)
        with atomic_output(output_path, overwrite) as append:
            written = 0
            # the next block read and sorted on a background thread while this one is finished and written
            for b, block in zip(filled, ahead(map(sorted_block, filled)), strict=True):
                out = finish(block, b * block_rows)
                written += len(out)
                append(out)
            if written != n:
                raise RuntimeError(f"{output_path}: {written} rows for {n} customers; nothing was written")
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return n
