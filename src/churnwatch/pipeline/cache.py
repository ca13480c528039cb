"""The encoded-snapshot cache: a built ChurnData on disk as memory-mapped columns, found again by a key.

Loading, validating, snapshotting and encoding an event log is most of a run's set-up time, and every
re-run, sweep trial, learning-curve point and leaderboard seed repeats it on the same inputs. This module
stores what `build_data` produces under a key that changes whenever anything that produced it changes,
and hands it back memory-mapped, so a hit costs milliseconds and an encoding larger than RAM still trains.

Key (BLAKE2b): each input file's resolved path, size, mtime_ns and content hash; the data config minus the
keys that do not change the encoding (loader settings, drivers, paths covered by the file identities);
the cache format version, the churnwatch version and a fingerprint of the data-path source code.

Entry (a directory named by the key): `events.arrow` / `customers.arrow` (Arrow IPC = feather v2,
uncompressed, memory-mapped on load), one `.npy` per array of each split (loaded with mmap_mode="r"),
`key.json` (what the key was made of) and `manifest.json` (sizes of every file, and their BLAKE2b digests
with `verify`; array shapes, the fitted encoder and featurizer states, the validation reports), written last.

Safety: an entry is built in a temporary directory and renamed into place, so a crash never leaves a
partial entry under a key. A per-key file lock lets concurrent builders of one key (sweep trials, DDP
ranks) wait for the first instead of encoding twice; the atomic rename keeps losers of any remaining race
(no working lock, e.g. some network file systems) correct. A hit is checked (manifest, file sizes, array
shapes; digests too with `verify`), and a bad entry is logged and rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather

from churnwatch import __version__
from churnwatch.data.contract import CUSTOMER_ID, ConfigError, CustomerSchema, EventSchema, ValidationReport
from churnwatch.data.snapshots import EventLog, SnapshotPlan, Snapshots
from churnwatch.features.aggregates import AggregateFeaturizer, AggregateTable
from churnwatch.features.encode import Allocator, EncodedSequences, SequenceEncoder
from churnwatch.io.atomic import fsync, process_alive
from churnwatch.pipeline.dataset import ChurnData, Split

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bump when the entry layout or the meaning of a stored array changes."""

LOADER_KEYS = frozenset(
    {
        "batch_size",
        "eval_batch_size",
        "num_workers",
        "pin_memory",
        "bucket_by_length",
        "use_aggregates",
        "device_gather",
        "device_gather_fraction",
    }
)
"""Data keys read only when batches are served: changing them must not invalidate an encoding."""
NOT_ENCODING_KEYS = frozenset(
    {
        "cache",
        "indicators",
        "truth_path",
        "data_dir",
        "events_path",
        "customers_path",
        "labels_path",
        "generate",
    }
)
"""Keys that never reach the encoding: the cache itself, drivers, and paths (their files' identities are
part of the key instead, so moving the data misses but renaming a config variable does not)."""
INPUTS = (("events", "events_path"), ("customers", "customers_path"), ("labels", "labels_path"))
CODE_MODULES = (
    "churnwatch.data.contract",
    "churnwatch.data.snapshots",
    "churnwatch.pipeline.dataset",
    "churnwatch.pipeline.cache",
    "churnwatch.features.encode",
    "churnwatch.features.aggregates",
    "churnwatch.features.time_to_event",
)
"""The source files whose code decides what an entry holds: editing any of them invalidates entries."""
BLOCK = 8 << 20
SAMPLES = 16
SAMPLE_BYTES = 64 << 10
PRUNE_GRACE_S = 3600
SPLITS = ("train", "val", "test")
SNAPSHOT_ARRAYS = tuple(f.name for f in fields(Snapshots))
SEQUENCE_ARRAYS = tuple(f.name for f in fields(EncodedSequences) if f.name != "customer_id")
"""customer_id (object strings) is not stored per row: it is the log's id table indexed by snaps.customer."""


class CacheEntryError(RuntimeError):
    """A cache entry that must not be trusted (missing or truncated file, bad manifest, wrong digest)."""


@dataclass(frozen=True)
class CacheSettings:
    """The data config's `cache` block."""

    enabled: bool = False
    dir: Path | None = None
    content_hash: str = "full"
    """full: BLAKE2b of every byte of each input; sampled: head and tail 8 MiB plus 16 spread 64 KiB blocks
    (for multi-GB inputs; size and mtime_ns still catch ordinary writes)."""
    verify: bool = False
    """Store each file's BLAKE2b digest when writing and check it on each hit (reads the whole entry; about
    1.7 s per GB here). Sizes and array shapes are always checked."""
    max_entries: int | None = 20
    """Keep at most this many entries in `dir`, dropping the least recently used (null: no limit)."""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> CacheSettings:
        cfg = dict(cfg or {})
        unknown = set(cfg) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"data.cache: unknown keys {sorted(unknown)}")
        settings = cls(
            enabled=bool(cfg.get("enabled", False)),
            dir=Path(cfg["dir"]).expanduser().resolve() if cfg.get("dir") else None,
            content_hash=str(cfg.get("content_hash") or "full"),
            verify=bool(cfg.get("verify", False)),
            max_entries=int(cfg["max_entries"]) if cfg.get("max_entries") is not None else None,
        )
        if settings.content_hash not in ("full", "sampled"):
            raise ConfigError(
                f"data.cache.content_hash must be full or sampled, got {settings.content_hash!r}"
            )
        if settings.enabled and settings.dir is None:
            raise ConfigError("data.cache.enabled is true but data.cache.dir is not set")
        if settings.max_entries is not None and settings.max_entries < 1:
            raise ConfigError(
                f"data.cache.max_entries must be at least 1 (or null), got {settings.max_entries}"
            )
        return settings


# ------------------------------------------------------------------------------------------------- the key


def content_digest(path: str | Path, how: str = "full") -> str:
    """BLAKE2b of a file: every byte (`full`) or its head, tail and 16 evenly spread blocks (`sampled`)."""
    h = hashlib.blake2b(digest_size=20)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if how == "full" or size <= 2 * BLOCK + SAMPLES * SAMPLE_BYTES:
            while block := f.read(BLOCK):
                h.update(block)
            return h.hexdigest()
        h.update(f.read(BLOCK))
        for k in range(SAMPLES):
            f.seek(BLOCK + (size - 2 * BLOCK - SAMPLE_BYTES) * k // max(SAMPLES - 1, 1))
            h.update(f.read(SAMPLE_BYTES))
        f.seek(size - BLOCK)
        h.update(f.read(BLOCK))
    return h.hexdigest()


def file_identity(path: str | Path, how: str = "full") -> dict[str, Any]:
    """Resolved path, size, mtime_ns and content digest; raises OSError if the file changes while hashed."""
    resolved = Path(path).expanduser().resolve()
    before = resolved.stat()
    digest = content_digest(resolved, how)
    after = resolved.stat()
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise OSError(f"{resolved} changed while it was being hashed")
    return {
        "path": str(resolved),
        "size": after.st_size,
        "mtime_ns": after.st_mtime_ns,
        "content": f"blake2b-{how}:{digest}",
    }


def encoding_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a (resolved) data config that can change what build_data produces."""
    return {k: v for k, v in cfg.items() if k not in LOADER_KEYS and k not in NOT_ENCODING_KEYS}


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """BLAKE2b of the data-path modules' source, so an edited encoder never meets an old entry."""
    h = hashlib.blake2b(digest_size=16)
    for name in CODE_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        h.update(name.encode())
        if origin and os.path.exists(origin):
            h.update(Path(origin).read_bytes())
    return h.hexdigest()


def key_parts(cfg: Mapping[str, Any], how: str = "full") -> dict[str, Any]:
    """Everything the key is made of (stored in each entry as key.json, to explain later misses)."""
    return {
        "format": FORMAT_VERSION,
        "churnwatch": __version__,
        "code": code_fingerprint(),
        "inputs": {role: file_identity(cfg[k], how) if cfg.get(k) else None for role, k in INPUTS},
        "config": encoding_config(cfg),
    }


def digest_key(parts: Mapping[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


# ------------------------------------------------------------------------------------------------ frames


def _write_frame(frame: pd.DataFrame, path: Path, index: bool) -> dict[str, Any]:
    """Arrow IPC (feather v2, uncompressed: memory-mappable), plus what Arrow does not round-trip."""
    feather.write_feather(
        pa.Table.from_pandas(frame, preserve_index=index), str(path), compression="uncompressed"
    )
    return {
        "rows": len(frame),
        "index_dtype": str(frame.index.dtype) if index else None,
        "categories_dtype": {
            str(c): str(frame[c].dtype.categories.dtype)
            for c in frame.columns
            if isinstance(frame[c].dtype, pd.CategoricalDtype)
        },
    }


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
        cats = frame[col].dtype.categories
        if str(cats.dtype) != dtype:
            want = pd.CategoricalDtype(pd.Index(cats, dtype=dtype), frame[col].dtype.ordered)
            frame[col] = pd.Categorical.from_codes(frame[col].cat.codes, dtype=want, validate=False)
    if info["index_dtype"] and str(frame.index.dtype) != info["index_dtype"]:
        frame.index = frame.index.astype(info["index_dtype"])
    return frame


# ---------------------------------------------------------------------------------------------- writing


class _Writer:
    """Fills a temporary entry directory: encoder outputs straight into memory-mapped .npy files."""

    def __init__(self, directory: Path, digests: bool = False):
        self.dir, self.digests = directory, digests
        self.mapped: dict[str, np.ndarray] = {}
        self.failed: str | None = None

    def allocator(self, split: str) -> Allocator:
        def alloc(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
            file = f"{split}.seqs.{name}"
            if self.failed is None:
                try:
                    return self._map(file, shape, dtype)
                except OSError as exc:  # e.g. no space: encode in memory, skip the cache
                    self.failed = f"{file}: {exc}"
                    log.warning("encoded cache: cannot write %s (%s); building in memory", self.dir, exc)
            return np.empty(shape, dtype=dtype)

        return alloc

    def _map(self, file: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
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
        frames = {"events": _write_frame(data.log.frame, self.dir / "events.arrow", index=False)}
        frames["events"]["customers"] = data.log.n_customers
        if data.customers is not None:
            frames["customers"] = _write_frame(data.customers, self.dir / "customers.arrow", index=True)
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
    """The entry's event frame, converted to an EventLog on first use (training needs only the arrays).

    It holds the memory-mapped table, so a later deletion of the entry cannot pull the log away; pickled
    (e.g. into a spawned process) it carries the path and maps the file again.
    """

    def __init__(self, path: Path, info: Mapping[str, Any], table: pa.Table | None = None):
        self.path, self.info, self.table = path, dict(info), table

    def __call__(self) -> EventLog:
        table = self.table if self.table is not None else _open_table(self.path, self.info["rows"])
        return EventLog.from_frame(_to_frame(table, self.info))

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "info": self.info, "table": None}


# ------------------------------------------------------------------------------------------------ cache


class EncodedCache:
    """One data config's place in the cache directory: look it up, or build it once and store it."""

    def __init__(self, cfg: Mapping[str, Any], settings: CacheSettings, parts: dict[str, Any]):
        self.cfg, self.settings, self.parts = cfg, settings, parts
        self.key = digest_key(parts)
        self.root: Path = settings.dir  # type: ignore[assignment]
        self.entry = self.root / self.key

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EncodedCache | None:
        """None when caching is off, or an input cannot be identified (the build then reports it)."""
        settings = CacheSettings.from_config(cfg.get("cache"))
        if not settings.enabled:
            return None
        try:
            parts = key_parts(cfg, settings.content_hash)
        except OSError as exc:
            log.info("encoded cache skipped: %s", exc)
            return None
        return cls(cfg, settings, parts)

    def get_or_build(self, build: Callable[[Callable[[str], Allocator] | None], ChurnData]) -> ChurnData:
        """A hit, or `build(allocator_for_split)` stored under the key and returned memory-mapped."""
        data, reason = self._lookup()
        if data is not None:
            log.info("encoded cache hit %s", self.entry)
            return data
        log.info("encoded cache miss (%s): building %s", reason, self.entry)
        with self._lock():
            data, _ = self._lookup(quiet=True)
            if data is not None:  # another process built it while this one waited for the lock
                log.info("encoded cache hit %s (built by another process)", self.entry)
                return data
            if self.entry.exists():
                self._discard(self.entry)  # damaged: never left where a later lookup could find it
            return self._build_and_store(build)

    # -- lookup -------------------------------------------------------------------------------------------
    def _lookup(self, quiet: bool = False) -> tuple[ChurnData | None, str]:
        if not self.entry.exists():
            return None, self.explain_miss() if not quiet else "no entry"
        try:
            data = load_entry(self.entry, self.key, self.cfg, self.settings.verify)
        except CacheEntryError as exc:
            if not quiet:
                log.warning("encoded cache entry %s is unusable (%s): rebuilding it", self.entry, exc)
            return None, f"corrupt entry: {exc}"
        with contextlib.suppress(OSError):
            os.utime(self.entry / "manifest.json")  # least-recently-used order for pruning
        return data, ""

    def explain_miss(self) -> str:
        """Why no entry: what differs from the newest entry built from the same events file."""
        events = (self.parts["inputs"].get("events") or {}).get("path")
        best: dict[str, Any] | None = None
        best_time = -1.0
        for key_file in self.root.glob("*/key.json") if self.root.is_dir() else ():
            try:
                other = json.loads(key_file.read_text())
                when = key_file.stat().st_mtime
            except (OSError, ValueError):
                continue
            if (other.get("inputs", {}).get("events") or {}).get("path") == events and when > best_time:
                best, best_time = other, when
        if best is None:
            return "no entry for these inputs yet"
        changes = []
        if best.get("format") != self.parts["format"] or best.get("churnwatch") != self.parts["churnwatch"]:
            changes.append("cache format or churnwatch version changed")
        if best.get("code") != self.parts["code"]:
            changes.append("data-path code changed")
        for role, mine in self.parts["inputs"].items():
            theirs = best.get("inputs", {}).get(role)
            if mine != theirs:
                what = [
                    k for k in ("size", "mtime_ns", "content") if (mine or {}).get(k) != (theirs or {}).get(k)
                ]
                changes.append(f"{role} file changed ({', '.join(what)})")
        config, old = self.parts["config"], best.get("config", {})
        diff = sorted(k for k in set(config) | set(old) if config.get(k) != old.get(k))
        if diff:
            changes.append(
                "data config changed: "
                + ", ".join(f"{k} {_short(old.get(k))} → {_short(config.get(k))}" for k in diff)
            )
        return "; ".join(changes) or "no entry for this key"

    # -- build and store ----------------------------------------------------------------------------------
    def _build_and_store(self, build: Callable[[Callable[[str], Allocator] | None], ChurnData]) -> ChurnData:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._clean_leftovers()
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.key}-", dir=self.root))
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the entry from others sharing the cache dir
            (tmp / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        except OSError as exc:
            log.warning("encoded cache: cannot use %s (%s); building without it", self.root, exc)
            return build(None)
        writer = _Writer(tmp, digests=self.settings.verify)
        try:
            data = build(writer.allocator)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if writer.failed is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return data
        t0 = time.perf_counter()
        try:
            writer.write(data, self.key, self.parts)
            self._check_inputs_unchanged()
            self._commit(tmp)
        except (OSError, CacheEntryError) as exc:
            log.warning("encoded cache: could not store %s (%s); continuing without it", self.entry, exc)
            shutil.rmtree(tmp, ignore_errors=True)
            return data
        size = sum(p.stat().st_size for p in self.entry.iterdir())
        log.info(
            "encoded cache stored %s (%.1f MB, %.1f s)", self.entry, size / 1e6, time.perf_counter() - t0
        )
        self._prune()
        try:
            return load_entry(self.entry, self.key, self.cfg)
        except CacheEntryError as exc:  # removed or damaged by someone else already: use what was built
            log.warning("encoded cache entry %s unreadable right after writing (%s)", self.entry, exc)
            return data

    def _check_inputs_unchanged(self) -> None:
        """An input rewritten during the build would store new content under the old identity."""
        for role, ident in self.parts["inputs"].items():
            if ident is None:
                continue
            st = os.stat(ident["path"])
            if (st.st_size, st.st_mtime_ns) != (ident["size"], ident["mtime_ns"]):
                raise CacheEntryError(f"the {role} file changed during the build")

    def _commit(self, tmp: Path) -> None:
        """Rename into place; if another process won the race, keep its entry (same key, same content)."""
        try:
            os.rename(tmp, self.entry)
        except OSError:
            try:
                load_entry(self.entry, self.key, self.cfg, self.settings.verify)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            except CacheEntryError:
                pass
            self._discard(self.entry)
            os.rename(tmp, self.entry)
        with contextlib.suppress(OSError):
            fsync(self.root)

    def _discard(self, entry: Path) -> None:
        """Move an entry aside whole (one rename: readers see it or nothing), then delete it."""
        trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.root))
        os.rename(entry, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive per-key lock (fcntl.flock), or nothing where locks do not work."""
        try:
            import fcntl

            locks = self.root / ".locks"
            locks.mkdir(parents=True, exist_ok=True)
            handle = open(locks / self.key, "a+")  # noqa: SIM115 - held for the whole build
        except (ImportError, OSError):
            yield
            return
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("encoded cache: waiting for another process building %s", self.entry)
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:  # e.g. ENOLCK on some network file systems: the atomic rename still protects
                pass
            yield
        finally:
            handle.close()

    def _clean_leftovers(self) -> None:
        """Temporary dirs of dead builders on this host (killed mid-build) and anything a week old."""
        host = socket.gethostname()
        for path in list(self.root.glob(".tmp-*")) + list(self.root.glob(".trash-*")):
            try:
                old = time.time() - path.stat().st_mtime > 7 * 86400
                owner = (
                    json.loads((path / "owner.json").read_text()) if (path / "owner.json").exists() else {}
                )
            except (OSError, ValueError):
                continue
            dead = owner.get("host") == host and not process_alive(int(owner.get("pid", -1)))
            if old or dead or path.name.startswith(".trash-"):
                shutil.rmtree(path, ignore_errors=True)

    def _prune(self) -> None:
        """Drop the least recently used entries beyond max_entries.

        Entries used within the last hour stay: a running job may still reopen their files by path (spawned
        DataLoader workers do), even though its own memory maps would survive the deletion.
        """
        if self.settings.max_entries is None:
            return
        entries = []
        for manifest in self.root.glob("*/manifest.json"):
            with contextlib.suppress(OSError):
                entries.append((manifest.stat().st_mtime, manifest.parent))
        entries.sort(reverse=True)
        for used, entry in entries[self.settings.max_entries :]:
            if entry != self.entry and time.time() - used > PRUNE_GRACE_S:
                log.info("encoded cache: removing least recently used entry %s", entry)
                shutil.rmtree(entry, ignore_errors=True)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
