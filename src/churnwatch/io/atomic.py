"""Files replaced whole: readers see the old file or the complete new one, never a partial one.

Temp files and scratch dirs live beside their target (a rename across file systems is a copy, which a
crash can tear) and are named `.<target name>~<kind>~<host>~<pid>~<random>`, so a later run can tell
the leftovers of a killed writer (same host, process gone) from those of one still running, and remove
them before it starts.

An output that must not replace an existing file (`replace=False`: overwrite=false) is put in place
exclusively, so of two runs writing it at once exactly one wins; `check_output` refuses, before any work,
an output that cannot be written or that is one of the run's inputs.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from churnwatch.errors import ConfigError
from churnwatch.io.object_store import is_url

SEP = "~"
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}
"""What `os.link` fails with where a file system has no hard links (FAT, some network and FUSE mounts)."""
LOCK_WAIT_S = 60.0


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (one of another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    return socket.gethostname().replace(SEP, "-").replace(os.sep, "-")


def _prefix(target: Path, kind: str) -> str:
    return f".{target.name}{SEP}{kind}{SEP}{_host()}{SEP}{os.getpid()}{SEP}"


def is_stale(name: str, target: Path) -> bool:
    """`name` is a temp file or scratch dir of `target` whose writer died on this host."""
    head = f".{target.name}{SEP}"
    if not name.startswith(head):
        return False
    fields = name[len(head) :].split(SEP)
    if len(fields) < 4 or fields[1] != _host() or not fields[2].isdigit():
        return False  # not ours to judge: another host's writer may still be running
    return not process_alive(int(fields[2]))


def remove_stale(target: str | Path, where: str | Path | None = None) -> list[Path]:
    """Remove what killed writers of `target` left in `where` (default: beside it); returns what went."""
    target = Path(target)
    folder = Path(where) if where is not None else target.parent
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if is_stale(entry.name, target):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def scratch_dir(target: str | Path, kind: str, where: str | Path | None = None) -> Path:
    """A new private dir for `target`'s intermediate files, in `where` (default: beside it), after
    removing the stale ones of killed runs. The caller removes it when done."""
    target = Path(target)
    folder = Path(where) if where is not None else target.parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(target, folder)
    return Path(tempfile.mkdtemp(prefix=_prefix(target, kind), dir=folder))


def fsync(path: str | Path) -> None:
    """Flush a file, or a dir's entries (after a rename), to disk; where a file system cannot sync a
    dir (EINVAL), there is nothing more to do."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "", replace: bool = True) -> Iterator[Path]:
    """A temp file beside `path` to write; flushed to disk and renamed onto `path` when the block ends
    normally, removed when it fails. A process killed before the rename leaves only the hidden temp
    file, which the next writer of `path` removes. With `replace=False`, a `path` that exists by then
    (another run wrote it meanwhile) is kept and the block fails with FileExistsError: of several such
    writers exactly one wins."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path, "tmp"), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        fsync(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            _place_new(Path(tmp), path)
        fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _taken(path: Path) -> FileExistsError:
    """The losing writer's one line: the file is another run's now, and how to replace it anyway."""
    return FileExistsError(
        f"{path} exists (written by another run meanwhile); pass overwrite=true to replace it"
    )


def _place_new(tmp: Path, path: Path) -> None:
    """`tmp` onto `path` only if no file is there, atomically: a hard link fails when `path` exists (the
    caller removes `tmp`). Where the file system has no hard links, a lock file beside `path` is held
    across the check and the rename."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise _taken(path) from None
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
    with _lock(path):
        if os.path.lexists(path):
            raise _taken(path)
        os.replace(tmp, path)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """`.<name>~lock` beside `path`, created exclusively and holding `<host>~<pid>`. One a killed writer on
    this host left is taken over; one a live writer (or another host's) holds is waited for, up to
    LOCK_WAIT_S: the check and the rename it guards take moments."""
    lock = path.with_name(f".{path.name}{SEP}lock")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = lock.read_text()  # empty while its writer is still writing it
            except FileNotFoundError:  # released meanwhile
                continue
            host, _, pid = holder.partition(SEP)
            if host == _host() and pid.isdigit() and not process_alive(int(pid)):
                lock.unlink(missing_ok=True)
            elif time.monotonic() > deadline:
                raise FileExistsError(
                    f"{lock} is held by {holder or 'another run'}; remove it if no run is writing {path}"
                ) from None
            else:
                time.sleep(0.01)
    try:
        os.write(fd, f"{_host()}{SEP}{os.getpid()}".encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _loops(path: str | Path) -> bool:
    """Whether resolving `path` runs into a symlink loop (which `exists()` reports as missing)."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def check_output(
    path: str | Path,
    overwrite: bool,
    inputs: Mapping[str, str | Path | None] | None = None,
    key: str = "output_path",
    directory: bool = False,
) -> Path:
    """Refuse, before any work and in one line, an output that cannot be written or would destroy an
    input: a symlink loop (in it or in an input, which would read as missing), one of `inputs` (the same
    file, also through a symlink or a hard link, whatever `overwrite` says), a directory (unless the output
    is one: `directory`), an existing output without `overwrite`, a parent that is a file or a dir this
    process cannot write in (probed with a temp file: permission bits alone do not say it, e.g. for root
    or a read-only mount)."""
    path = Path(path)
    # (an input at a URL cannot be this output)
    named = {name: Path(p) for name, p in (inputs or {}).items() if p is not None and not is_url(p)}
    for name, p in {key: path, **named}.items():
        if _loops(p):
            raise ConfigError(f"{name}={p}: symlink loop")
    for name, p in named.items():
        if path.exists() and p.exists() and os.path.samefile(path, p):
            raise ConfigError(
                f"{key}={path} is {name}={p} (the same file): writing it would destroy the input, "
                "overwrite or not"
            )
    if path.is_dir() and not directory:
        raise ConfigError(f"{key}={path} is a directory")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    folder = path.parent
    while not os.path.lexists(folder):  # the nearest existing dir is where the missing ones will be made
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{key}={path}: parent {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=_prefix(path, "probe"), dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{key}={path}: cannot write in {folder} ({exc.strerror})") from None
    return path


@dataclass(frozen=True)
class StagedDirectory:
    """A directory output whose files are written into a private directory beside it (by any process on
    this file system), then renamed onto it whole (`place_dir`). `UrlDirectory` is the same for a URL."""

    path: Path
    fs: None = None
    """(Local: no fsspec file system.)"""

    @cached_property
    def staging(self) -> Path:
        """The private directory (made on first use: a run that fails before writing leaves none)."""
        return scratch_dir(self.path, "tmp")

    def file(self, name: str) -> str:
        """Where the output's file `name` is written."""
        return str(self.staging / name)

    def commit(self, overwrite: bool) -> None:
        place_dir(self.staging, self.path, overwrite)

    def close(self) -> None:
        if "staging" in vars(self):
            shutil.rmtree(self.staging, ignore_errors=True)


def place_dir(tmp: Path, path: Path, overwrite: bool) -> None:
    """A finished directory `tmp` renamed onto `path` (both on one file system), replacing what is there
    only with `overwrite`: readers see the old output or the whole new one, apart from the moment between
    removing the old one and the rename."""
    if os.path.lexists(path):
        if not overwrite:
            raise _taken(path)
        old = Path(tempfile.mkdtemp(prefix=_prefix(path, "old"), dir=path.parent))
        os.replace(path, old / path.name)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)
    fsync(path.parent)
