"""One encoded-cache entry on disk: a built ChurnData written as memory-mappable files, and read back.

Entry (a directory named by the key, pipeline/cache_key.py): `events.arrow` / `customers.arrow` (Arrow IPC
= feather v2, uncompressed, memory-mapped on load), one `.npy` per array of each split (loaded with
mmap_mode="r"), `key.json` (what the key was made of) and `manifest.json` (sizes of every file, and their
BLAKE2b digests with `verify`; array shapes, the fitted encoder and featurizer states, the validation
reports), written last. Reading checks the manifest, file sizes and array shapes (digests too with
`verify`) and raises CacheEntryError on anything wrong: pipeline/cache.py then rebuilds, never trusts it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather

from churnwatch import __version__
from churnwatch.data.schema import CUSTOMER_ID, TIMESTAMP, CustomerSchema, EventSchema
from churnwatch.data.snapshots import EventLog, SnapshotPlan, Snapshots
from churnwatch.data.validation import ValidationReport
from churnwatch.features.aggregates import AggregateFeaturizer, AggregateTable
from churnwatch.features.encode import Allocator, EncodedSequences, SequenceEncoder
from churnwatch.io.atomic import fsync
from churnwatch.pipeline.cache_key import FORMAT_VERSION, content_digest
from churnwatch.pipeline.dataset import ChurnData, Split

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SNAPSHOT_ARRAYS = tuple(f.name for f in fields(Snapshots))
SEQUENCE_ARRAYS = tuple(f.name for f in fields(EncodedSequences) if f.name != "customer_id")
"""customer_id (object strings) is not stored per row: it is the log's id table indexed by snaps.customer."""


class CacheEntryError(RuntimeError):
    """A cache entry that must not be trusted (missing or truncated file, bad manifest, wrong digest)."""


# ------------------------------------------------------------------------------------------------ frames


def _write_frame(frame: pd.DataFrame, path: Path, index: bool) -> dict[str, Any]:
    """Arrow IPC (feather v2, uncompressed: memory-mappable), plus what Arrow does not round-trip."""
    feather.write_feather(
        pa.Table.from_pandas(frame, preserve_index=index), str(path), compression="uncompressed"
    )
    return _frame_info(frame, len(frame), index)


def _frame_info(frame: pd.DataFrame, rows: int, index: bool) -> dict[str, Any]:
    return {
        "rows": rows,
        "index_dtype": str(frame.index.dtype) if index else None,
        "categories_dtype": {
            str(c): str(frame[c].dtype.categories.dtype)
            for c in frame.columns
            if isinstance(frame[c].dtype, pd.CategoricalDtype)
        },
    }


def _with_rows(schema: pa.Schema, rows: int) -> pa.Schema:
    """A schema whose pandas metadata describes a frame of `rows` rows (index 0..rows), as one written
    whole would: the pieces of a streamed frame each carry their own."""
    meta = json.loads(schema.metadata[b"pandas"])
    meta["index_columns"] = [{"kind": "range", "name": None, "start": 0, "stop": rows, "step": 1}]
    return schema.with_metadata({**schema.metadata, b"pandas": json.dumps(meta).encode()})


def _open_table(path: Path, rows: int) -> pa.Table:
    """The memory-mapped table (zero-copy): it stays readable even if the entry is deleted later."""
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    if table.num_rows != rows:
        raise CacheEntryError(f"{path.name} has {table.num_rows} rows, the manifest says {rows}")
    return table


def _to_frame(table: pa.Table, info: Mapping[str, Any]) -> pd.DataFrame:
    """Back to the exact pandas frame that was written (category dtypes and index dtype included)."""
    frame = table.to_pandas()
    for col, dtype in info["categories_dtype"].items():
        if col not in frame.columns:
            continue
        cats = frame[col].dtype.categories
        if str(cats.dtype) != dtype:
            want = pd.CategoricalDtype(pd.Index(cats, dtype=dtype), frame[col].dtype.ordered)
            frame[col] = pd.Categorical.from_codes(frame[col].cat.codes, dtype=want, validate=False)
    if info["index_dtype"] and str(frame.index.dtype) != info["index_dtype"]:
        frame.index = frame.index.astype(info["index_dtype"])
    return frame


# ---------------------------------------------------------------------------------------------- writing


class EntryWriter:
    """Fills a temporary entry directory: encoder outputs straight into memory-mapped .npy files."""

    def __init__(self, directory: Path, digests: bool = False):
        self.dir, self.digests = directory, digests
        self.mapped: dict[str, np.ndarray] = {}
        self.failed: str | None = None
        self.frames: dict[str, Any] = {}
        """Frames written already (`write_events`), which `write` then leaves as they are."""

    def allocator(self, split: str) -> Allocator:
        def alloc(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
            file = f"{split}.seqs.{name}"
            if self.failed is None:
                try:
                    return self.array(file, shape, dtype)
                except OSError as exc:  # e.g. no space: encode in memory, skip the cache
                    self.failed = f"{file}: {exc}"
                    log.warning("encoded cache: cannot write %s (%s); building in memory", self.dir, exc)
            return np.empty(shape, dtype=dtype)

        return alloc

    def array(self, file: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A new memory-mapped .npy of the entry (`{split}.{snaps|seqs}.{field}` or `{split}.aggregates`),
        to fill in place."""
        path = self.dir / f"{file}.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        if hasattr(os, "posix_fallocate") and arr.nbytes:
            # Reserve the blocks now: writing into a sparse mapping on a full disk kills with SIGBUS.
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.path.getsize(path))
            finally:
                os.close(fd)
        self.mapped[file] = arr
        return arr

    def write_events(self, pieces: Iterable[pd.DataFrame], rows: int, customers: int) -> None:
        """The events frame from consecutive `pieces` (a cluster's parts, in customer order, each with the
        whole's categories), `rows` in all: one events.arrow as `write` would make of the whole frame,
        never held whole."""
        writer, info, written = None, None, 0
        try:
            for piece in pieces:
                table = pa.Table.from_pandas(piece, preserve_index=False)
                if writer is None:
                    schema = _with_rows(table.schema, rows)
                    writer = pa.ipc.new_file(str(self.dir / "events.arrow"), schema)
                    info = _frame_info(piece, rows, index=False)
                writer.write_table(table.replace_schema_metadata(schema.metadata))
                written += len(piece)
        finally:
            if writer is not None:
                writer.close()
        if info is None or written != rows:
            raise CacheEntryError(f"events.arrow: {written} rows written, {rows} expected")
        self.frames["events"] = {**info, "customers": customers}

    def write_customers(self, customers: pd.DataFrame) -> None:
        self.frames["customers"] = _write_frame(customers, self.dir / "customers.arrow", index=True)

    def save_array(self, file: str, arr: np.ndarray, arrays: dict[str, Any]) -> None:
        if file in self.mapped and self.mapped[file] is arr:
            arr.flush()
        else:
            np.save(self.dir / f"{file}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        arrays[file] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}

    def write(self, data: ChurnData, key: str, parts: Mapping[str, Any]) -> None:
        """Everything ChurnData holds, then key.json and, last, manifest.json with sizes (and digests)."""
        arrays: dict[str, Any] = {}
        splits: dict[str, Any] = {}
        for name in SPLITS:
            split: Split | None = getattr(data, name)
            if split is None:
                continue
            for f in SNAPSHOT_ARRAYS:
                self.save_array(f"{name}.snaps.{f}", getattr(split.snaps, f), arrays)
            for f in SEQUENCE_ARRAYS:
                self.save_array(f"{name}.seqs.{f}", getattr(split.seqs, f), arrays)
            self.save_array(f"{name}.aggregates", split.aggregates.values, arrays)
            splits[name] = {"names": split.aggregates.names, "categorical": split.aggregates.categorical}
        if "events" not in self.frames:
            self.frames["events"] = _write_frame(data.log.frame, self.dir / "events.arrow", index=False)
            self.frames["events"]["customers"] = data.log.n_customers
        if data.customers is not None and "customers" not in self.frames:
            self.write_customers(data.customers)
        frames = self.frames
        (self.dir / "key.json").write_text(json.dumps(parts, indent=1, sort_keys=True, default=str))
        files = {}
        for path in sorted(self.dir.iterdir()):
            if path.name != "owner.json":
                files[path.name] = {"size": path.stat().st_size}
                if self.digests:
                    files[path.name]["blake2b"] = content_digest(path)
                fsync(path)
        manifest = {
            "format": FORMAT_VERSION,
            "key": key,
            "churnwatch": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
            "arrays": arrays,
            "splits": splits,
            "frames": frames,
            "encoder": data.encoder.state(),
            "featurizer": data.featurizer.state(),
            "reports": [r.as_dict() for r in data.reports],
        }
        (self.dir / "manifest.json").write_text(json.dumps(manifest, default=str))
        fsync(self.dir / "manifest.json")
        (self.dir / "owner.json").unlink(missing_ok=True)
        fsync(self.dir)


# ---------------------------------------------------------------------------------------------- reading


def load_entry(entry: Path, key: str, cfg: Mapping[str, Any], verify: bool = False) -> ChurnData:
    """The ChurnData stored in `entry`, memory-mapped; CacheEntryError if any part is missing or wrong."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise CacheEntryError(f"unreadable manifest ({exc})") from exc
    if manifest.get("format") != FORMAT_VERSION or manifest.get("key") != key:
        raise CacheEntryError(f"manifest is for format {manifest.get('format')}, key {manifest.get('key')}")
    try:
        return _load(entry, manifest, cfg, verify)
    except CacheEntryError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, pa.ArrowException) as exc:
        raise CacheEntryError(f"{type(exc).__name__}: {exc}") from exc


def _load(entry: Path, manifest: Mapping[str, Any], cfg: Mapping[str, Any], verify: bool) -> ChurnData:
    for name, info in manifest["files"].items():
        path = entry / name
        if not path.is_file():
            raise CacheEntryError(f"{name} is missing")
        if path.stat().st_size != info["size"]:
            raise CacheEntryError(f"{name} has {path.stat().st_size} bytes, the manifest says {info['size']}")
        if verify and "blake2b" not in info:
            raise CacheEntryError(f"{name} has no digest (written with verify off)")
        if verify and content_digest(path) != info["blake2b"]:
            raise CacheEntryError(f"{name} does not match its BLAKE2b digest")
    reports = [ValidationReport(**r) for r in manifest["reports"]]
    if cfg.get("end_date") is None and any(r.dropped.get("future") for r in reports):
        # Rows were dropped as later than the build's "now": a later run may keep them.
        raise CacheEntryError("built with data.end_date=null and dropped rows later than that day's 'now'")

    def array(file: str) -> np.ndarray:
        spec = manifest["arrays"][file]
        arr = np.load(entry / f"{file}.npy", mmap_mode="r", allow_pickle=False)
        if arr.dtype.str != spec["dtype"] or list(arr.shape) != spec["shape"]:
            raise CacheEntryError(f"{file}.npy holds {arr.dtype.str} {arr.shape}, expected {spec}")
        return arr

    frames = manifest["frames"]
    events = _open_table(entry / "events.arrow", frames["events"]["rows"])
    id_table = events.column(CUSTOMER_ID).chunk(0).dictionary
    customer_ids = np.asarray(id_table.to_numpy(zero_copy_only=False), dtype=object)
    if len(customer_ids) != frames["events"]["customers"]:
        raise CacheEntryError("events.arrow's customer ids do not match the manifest")
    customers = None
    if "customers" in frames:
        customers = _to_frame(
            _open_table(entry / "customers.arrow", frames["customers"]["rows"]), frames["customers"]
        )
    splits: dict[str, Split | None] = {}
    for name in SPLITS:
        if name not in manifest["splits"]:
            splits[name] = None
            continue
        snaps = Snapshots(**{f: array(f"{name}.snaps.{f}") for f in SNAPSHOT_ARRAYS})
        seqs = EncodedSequences(
            **{f: array(f"{name}.seqs.{f}") for f in SEQUENCE_ARRAYS},
            customer_id=customer_ids[snaps.customer],
        )
        info = manifest["splits"][name]
        aggregates = AggregateTable(
            array(f"{name}.aggregates"), list(info["names"]), list(info["categorical"])
        )
        splits[name] = Split(snaps, seqs, aggregates)
    customer_schema = (
        CustomerSchema.from_config(cfg.get("customers")) if customers is not None else CustomerSchema()
    )
    encoder = SequenceEncoder.from_state(manifest["encoder"], EventSchema.from_config(cfg), customer_schema)
    featurizer = AggregateFeaturizer.from_state(manifest["featurizer"])
    return ChurnData(
        _MappedEventLog(entry / "events.arrow", frames["events"], events),
        customers,
        SnapshotPlan.from_config(cfg),
        encoder,
        featurizer,
        splits["train"],
        splits["val"],
        splits["test"],
        reports,
    )


class _MappedEventLog:
    """The entry's events, made an EventLog on first use (training needs only the arrays): customer codes and
    times from the memory-mapped table, the other columns converted to pandas only when asked for (`frame`:
    the drivers' owners read a few columns of some rows, offers a few columns).

    It holds the memory-mapped table, so a later deletion of the entry cannot pull the log away; pickled
    (e.g. into a spawned process) it carries the path and maps the file again.
    """

    def __init__(self, path: Path, info: Mapping[str, Any], table: pa.Table | None = None):
        self.path, self.info, self.table = path, dict(info), table

    def _table(self) -> pa.Table:
        if self.table is None:
            self.table = _open_table(self.path, self.info["rows"])
        return self.table

    def __call__(self) -> EventLog:
        table = self._table()
        ids = table.column(CUSTOMER_ID)
        customer_ids = np.asarray(ids.chunk(0).dictionary.to_numpy(zero_copy_only=False), dtype=object)
        codes = np.concatenate([np.zeros(0, np.int64), *(c.indices.to_numpy() for c in ids.chunks)])
        ts = table.column(TIMESTAMP).to_numpy().astype("datetime64[ns]").view(np.int64)
        return EventLog.from_arrays(self, customer_ids, codes.astype(np.int64), ts)

    @property
    def columns(self) -> list[str]:
        """(`EventSource`) The events' column names."""
        return list(self._table().column_names)

    def frame(self, columns: Sequence[str] | None = None, rows: np.ndarray | None = None) -> pd.DataFrame:
        """(`EventSource`) The events as the entry's build held them, only `columns` of `rows` converted."""
        table = self._table()
        if columns is not None:
            table = table.select(list(columns))
        if rows is not None:
            table = table.take(pa.array(np.asarray(rows, dtype=np.int64)))
        return _to_frame(table, self.info)

    @property
    def size(self) -> tuple[int, int]:
        """(events, customers), from the manifest."""
        return int(self.info["rows"]), int(self.info["customers"])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "info": self.info, "table": None}
