"""Temp files beside their target: what a killed writer leaves is removed by the next writer, what a
running one (or one on another host) is using is not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from churnwatch.io.atomic import atomic_path, remove_stale, scratch_dir


def dead_pid() -> int:
    """The id of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def leftover(folder: Path, target: str, pid: int, host: str | None = None, kind: str = "tmp") -> Path:
    host = host or socket.gethostname()
    path = folder / f".{target}~{kind}~{host}~{pid}~abc123"
    path.write_text("partial")
    return path


def test_only_the_leftovers_of_dead_writers_on_this_host_are_removed(tmp_path: Path) -> None:
    pid = dead_pid()
    dead = leftover(tmp_path, "scores.parquet", pid)
    spill = tmp_path / f".scores.parquet~spill~{socket.gethostname()}~{pid}~xyz"
    (spill / "events").mkdir(parents=True)
    (spill / "events" / "part-00000.arrow").write_bytes(b"rows")
    running = leftover(tmp_path, "scores.parquet", os.getpid())
    elsewhere = leftover(tmp_path, "scores.parquet", pid, host="another-host")
    other_target = leftover(tmp_path, "model.pt", pid)
    unrelated = tmp_path / ".scores.parquet.bak"
    unrelated.write_text("the user's")
    assert sorted(remove_stale(tmp_path / "scores.parquet")) == sorted([dead, spill])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (running, elsewhere, other_target, unrelated)
    )


def test_a_new_write_clears_a_killed_writers_temp_file_and_replaces_the_target_whole(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.pt"
    target.parent.mkdir()
    target.write_text("old")
    stale = leftover(target.parent, "model.pt", dead_pid())
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and not stale.exists()
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers still see the old file until the rename
    assert target.read_text() == "new" and sorted(target.parent.iterdir()) == [target]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="mid-write"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("mid-write")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def test_scratch_dirs_are_private_and_clear_the_stale_ones(tmp_path: Path) -> None:
    target = tmp_path / "scores.parquet"
    stale = leftover(tmp_path, "scores.parquet", dead_pid(), kind="rank")
    first = scratch_dir(target, "spill")
    second = scratch_dir(target, "rank", tmp_path / "elsewhere")
    assert not stale.exists() and first.is_dir() and first.parent == tmp_path
    assert second.parent == tmp_path / "elsewhere" and first != second
    assert scratch_dir(target, "spill").exists() and first.exists()  # a live run's dir stays
