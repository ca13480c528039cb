"""Files replaced whole: readers see the old file or the complete new one, never a partial one.

Temp files and scratch dirs live beside their target (a rename across file systems is a copy, which a
crash can tear) and are named `.<target name>~<kind>~<host>~<pid>~<random>`, so a later run can tell
the leftovers of a killed writer (same host, process gone) from those of one still running, and remove
them before it starts.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SEP = "~"


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
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temp file beside `path` to write; flushed to disk and renamed onto `path` when the block ends
    normally, removed when it fails. A process killed before the rename leaves only the hidden temp
    file, which the next writer of `path` removes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path, "tmp"), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
