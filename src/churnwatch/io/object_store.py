"""Files at a URL (`s3://`, `gs://`, `az://`, any fsspec protocol): outputs written locally, then uploaded
whole; model files read whole.

An object store has no rename, so an output cannot be written beside its target and moved into place. It is
written and checked on the local disk as usual, then uploaded, and an object appears only once its upload
completes (S3, GCS and Azure commit a multi-part upload as one object): a failed run leaves nothing at the
URL. The file system comes from fsspec, with the protocol's package installed (`s3fs`, `gcsfs`, `adlfs`:
`pip install 'churnwatch[cloud]'`) and its usual credentials (environment, config files, instance roles).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec

from churnwatch.errors import ConfigError


def is_url(path: str | Path) -> bool:
    """Whether `path` names its file system (`<protocol>://...`) rather than a local path."""
    return isinstance(path, str) and "://" in path


def _one_line(url: str, exc: BaseException, key: str) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = " (pip install 'churnwatch[cloud]')" if isinstance(exc, ImportError) else ""
    return ConfigError(f"{key}={url}: {first}{hint}")


def _located(url: str, key: str) -> tuple[Any, str, bool]:
    """`url`'s fsspec file system, its path there, and whether an object is at it; or one line naming `key`
    (a protocol not installed or not known, a store that cannot be reached)."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        return fs, path, fs.exists(path)
    except (ImportError, ValueError, OSError) as exc:
        raise _one_line(url, exc, key) from None


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
        fs, path, exists = _located(url, key)
        if exists and not overwrite:
            raise ConfigError(f"{key}={url} exists (overwrite=true replaces it)")
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
