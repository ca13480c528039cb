"""Files at a URL (`s3://`, `gs://`, `az://`, any fsspec protocol): outputs written locally, then uploaded
whole; model files read whole; input tables read in place (data/readers.py, through `url_fs`); a cluster
job's directory output written in place by its workers (`UrlDirectory`).

An object store has no rename, so an output cannot be written beside its target and moved into place. It is
written and checked on the local disk as usual, then uploaded, and an object appears only once its upload
completes (S3, GCS and Azure commit a multi-part upload as one object): a failed run leaves nothing at the
URL. The file system comes from fsspec, with the protocol's package installed (`s3fs`, `gcsfs`, `adlfs`:
`pip install 'churnwatch[cloud]'`) and its usual credentials (environment, config files, instance roles).
"""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import pandas as pd

from churnwatch.errors import ConfigError

log = logging.getLogger(__name__)
SUCCESS = "_SUCCESS"
"""The empty object a directory output at a URL gets last (`UrlDirectory`)."""


def is_url(path: str | Path) -> bool:
    """Whether `path` names its file system (`<protocol>://...`) rather than a local path."""
    return isinstance(path, str) and "://" in path


def _one_line(url: str, exc: BaseException, key: str | None) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = " (pip install 'churnwatch[cloud]')" if isinstance(exc, ImportError) else ""
    return ConfigError(f"{key}={url}: {first}{hint}" if key else f"{url}: {first}{hint}")


def url_fs(url: str, key: str | None = None) -> tuple[Any, str]:
    """`url`'s fsspec file system and its path there, or one line naming the URL (and `key`, if given): a
    protocol not installed or not known."""
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError, OSError) as exc:
        raise _one_line(url, exc, key) from None


def _located(url: str, key: str) -> tuple[Any, str, bool]:
    """`url`'s fsspec file system, its path there, and whether an object is at it; or one line naming `key`
    (a protocol not installed or not known, a store that cannot be reached)."""
    fs, path = url_fs(url, key)
    try:
        return fs, path, fs.exists(path)
    except OSError as exc:
        raise _one_line(url, exc, key) from None


def _vacant(url: str, overwrite: bool, key: str) -> tuple[Any, str]:
    """`url`'s file system and path, refusing in one line, before any work, an output URL whose protocol is
    not installed, whose store cannot be reached, or where something exists without `overwrite`."""
    fs, path, exists = _located(url, key)
    if exists and not overwrite:
        raise ConfigError(f"{key}={url} exists (overwrite=true replaces it)")
    return fs, path


MODIFIED = ("mtime", "LastModified", "last_modified", "updated", "created")
"""Where fsspec's file systems report when an object was last written (local, S3, Azure, GCS, memory)."""
VERSION = ("ETag", "etag", "generation", "version_id", "VersionId")
"""Where they report a tag that changes with every write (S3 and Azure, GCS)."""


def modified_ns(info: dict[str, Any]) -> int:
    """When the object `info` (an fsspec `info()`) describes was last written, in ns (0 where its store
    keeps no time)."""
    when = next((info[k] for k in MODIFIED if info.get(k) is not None), None)
    if when is None:
        return 0
    stamp = pd.Timestamp(when, unit="s") if isinstance(when, int | float) else pd.Timestamp(when)
    return int(stamp.value)


def object_stamp(url: str, key: str) -> tuple[Any, ...]:
    """(size, last written in ns, version tag or None) of the object at `url`: what says it was replaced.
    Raises OSError (FileNotFoundError where nothing is there)."""
    fs, path = url_fs(url, key)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "not found", url) from None
    tag = next((str(info[k]) for k in VERSION if info.get(k) is not None), None)
    return int(info["size"]), modified_ns(info), tag


def read_url(url: str, key: str) -> bytes:
    """The whole object at `url` (a model file: a few MB), or one line naming `key` and why not."""
    fs, path, exists = _located(url, key)
    if not exists:
        raise ConfigError(f"{key}={url}: not found")
    try:
        return fs.cat_file(path)
    except OSError as exc:
        raise _one_line(url, exc, key) from None


@dataclass(frozen=True)
class UrlOutput:
    """An output at `url`, staged in `local_dir` (a private local directory) under the same file name."""

    url: str
    fs: Any
    """The fsspec file system of `url`."""
    path: str
    """`url` as `fs` names it."""
    local_dir: Path

    @classmethod
    def open(
        cls, url: str, overwrite: bool, where: str | Path | None = None, key: str = "output_path"
    ) -> UrlOutput:
        """Refuse, before any work and in one line, a URL whose file system is not installed or cannot be
        reached, or whose object exists without `overwrite`; then a staging directory in `where` (default:
        the system's temp dir)."""
        fs, path = _vacant(url, overwrite, key)
        if where is not None:
            Path(where).mkdir(parents=True, exist_ok=True)
        return cls(url, fs, path, Path(tempfile.mkdtemp(prefix="churnwatch-upload-", dir=where)))

    @property
    def local(self) -> Path:
        """Where the run writes the output before the upload."""
        return self.local_dir / PurePosixPath(self.path).name

    def upload(self, *sidecars: Path, overwrite: bool) -> None:
        """Upload each of `sidecars` (files beside `local`, e.g. its report) to the same place beside the URL,
        then the output itself, last, so whoever sees the output sees its sidecars too. Without `overwrite`,
        an output another run put there meanwhile is kept and this one fails."""
        if not overwrite and self.fs.exists(self.path):
            raise ConfigError(f"{self.url} appeared during the run (another run?); nothing was uploaded")
        parent = str(PurePosixPath(self.path).parent)
        for sidecar in sidecars:
            self.fs.put_file(str(sidecar), f"{parent}/{sidecar.name}")
        self.fs.put_file(str(self.local), self.path)

    def close(self) -> None:
        shutil.rmtree(self.local_dir, ignore_errors=True)


@dataclass(frozen=True)
class UrlDirectory:
    """A directory output at `url` whose files a cluster's workers write in place: into a hidden prefix
    beside it, moved under `url` when all are written, then its sidecar beside it, then an empty `_SUCCESS`
    in it (the marker Hadoop and Spark write: a reader that waits for it never sees a partial output). An
    object store has no atomic rename: the move copies each file, so while it runs `url` holds some of the
    files (and nothing of an old output that overwrite replaces), but no `_SUCCESS`."""

    url: str
    fs: Any
    """The fsspec file system of `url`: the workers write through it (it travels to them pickled)."""
    path: str
    staging: str
    """The hidden prefix (`.<name>.churnwatch-<id>` beside `path`) the workers write in."""

    @classmethod
    def open(cls, url: str, overwrite: bool, key: str = "output_path") -> UrlDirectory:
        """Refuse, before any work and in one line, a URL whose file system is not installed or cannot be
        reached, or where something exists without `overwrite`; then its staging prefix."""
        fs, path = _vacant(url, overwrite, key)
        where = PurePosixPath(path)
        return cls(url, fs, path, f"{where.parent}/.{where.name}.churnwatch-{uuid.uuid4().hex[:12]}")

    def file(self, name: str) -> str:
        """Where (on `fs`) a worker writes the output's file `name` (the staging prefix made first, where a
        file system has directories)."""
        self.fs.makedirs(self.staging, exist_ok=True)
        return f"{self.staging}/{name}"

    def commit(self, sidecar: Path, overwrite: bool) -> None:
        """The written files moved under the URL (an old output there removed first, with `overwrite`), the
        local file `sidecar` uploaded beside it, and `_SUCCESS` last."""
        self.fs.makedirs(self.staging, exist_ok=True)  # (an output of no files)
        if self.fs.exists(self.path):
            if not overwrite:
                raise ConfigError(
                    f"{self.url} appeared during the run (another run?); nothing was moved there"
                )
            self.fs.rm(self.path, recursive=True)
        self.fs.mv(self.staging, self.path, recursive=True)
        self.fs.put_file(str(sidecar), f"{PurePosixPath(self.path).parent}/{sidecar.name}")
        self.fs.pipe_file(f"{self.path}/{SUCCESS}", b"")

    def close(self) -> None:
        """Remove what a failed run left in the staging prefix (nothing after a commit)."""
        try:
            if self.fs.exists(self.staging):
                self.fs.rm(self.staging, recursive=True)
        except OSError as exc:
            log.warning("%s: could not remove %s (%s)", self.url, self.staging, exc)
