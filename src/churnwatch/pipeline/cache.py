"""The encoded-snapshot cache: a built ChurnData on disk as memory-mapped columns, found again by a key.

Loading, validating, snapshotting and encoding an event log is most of a run's set-up time, and every
re-run, sweep trial, learning-curve point and leaderboard seed repeats it on the same inputs. This module
stores what `build_data` produces under a key that changes whenever anything that produced it changes
(pipeline/cache_key.py), as an entry of memory-mappable files (pipeline/cache_entry.py), and hands it back
memory-mapped, so a hit costs milliseconds and an encoding larger than RAM still trains.

Safety: an entry is built in a temporary directory and renamed into place, so a crash never leaves a
partial entry under a key. A per-key file lock lets concurrent builders of one key (sweep trials, DDP
ranks) wait for the first instead of encoding twice; the atomic rename keeps losers of any remaining race
(no working lock, e.g. some network file systems) correct. A hit is checked (manifest, file sizes, array
shapes; digests too with `verify`), and a bad entry is logged and rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnwatch.config.schema import CacheConfig, typed
from churnwatch.errors import ConfigError
from churnwatch.io.atomic import fsync, process_alive
from churnwatch.pipeline.cache_entry import CacheEntryError, EntryWriter, load_entry
from churnwatch.pipeline.cache_key import describe_change, digest_key, key_parts, size_and_mtime
from churnwatch.pipeline.dataset import ChurnData

log = logging.getLogger(__name__)

PRUNE_GRACE_S = 3600
"""Seconds since last use within which an entry is never pruned (a running job may reopen its files)."""


@dataclass(frozen=True)
class CacheSettings:
    """The data config's `cache` block (`CacheConfig` in config/schema.py: its keys, defaults and meanings),
    checked, with `dir` resolved. A data config with no `cache` block (one built by hand, not composed) has
    the cache off."""

    enabled: bool
    dir: Path | None
    content_hash: str
    verify: bool
    max_entries: int | None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> CacheSettings:
        if cfg is None:
            cfg = {"enabled": False, "dir": None}
        c = typed(CacheConfig, cfg, "data.cache")
        given = c.dir and "${" not in str(c.dir)  # an interpolation nothing resolved is no directory
        settings = cls(
            enabled=bool(c.enabled),
            dir=Path(c.dir).expanduser().resolve() if given else None,
            content_hash=str(c.content_hash),
            verify=bool(c.verify),
            max_entries=int(c.max_entries) if c.max_entries is not None else None,
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


# ------------------------------------------------------------------------------------------------ the cache


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

    def get_or_build(self, build: Callable[[EntryWriter | None], ChurnData]) -> ChurnData:
        """A hit, or `build(writer)` stored under the key and returned memory-mapped. `build` places arrays
        through the writer (`writer.allocator(split)`, or `writer.array` and `writer.write_events` for one
        assembled in place); None: the cache directory is unusable, build in memory."""
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
        return describe_change(best, self.parts)

    # -- build and store ----------------------------------------------------------------------------------
    def _build_and_store(self, build: Callable[[EntryWriter | None], ChurnData]) -> ChurnData:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._clean_leftovers()
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.key}-", dir=self.root))
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the entry from others sharing the cache dir
            (tmp / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        except OSError as exc:
            log.warning("encoded cache: cannot use %s (%s); building without it", self.root, exc)
            return build(None)
        writer = EntryWriter(tmp, digests=self.settings.verify)
        try:
            data = build(writer)
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
            if size_and_mtime(ident["path"]) != (ident["size"], ident["mtime_ns"]):
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
