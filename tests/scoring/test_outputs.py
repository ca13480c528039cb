"""Outputs: never written over an input, of two concurrent writers exactly one wins, an output that cannot
be written fails before the work in one line, and a score file is renamed into place only once every
probability is a number in [0, 1] and every customer is in it exactly once."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from churnwatch.errors import ConfigError
from churnwatch.io.atomic import atomic_path
from churnwatch.jobs.score import ScoreJob, score_file
from churnwatch.scoring.output import report_path
from churnwatch.scoring.scorer import Scorer
from churnwatch.scoring.shards import merge_shards
from tests.helpers import BAD_INPUTS, SCORE_OPTIONS

EVENTS = BAD_INPUTS / "single_event_customers" / "events.csv"
NO_MODEL = Path("no_model.pt")  # never read: the output checks come first


def race(target: Path, writers: int) -> list[BaseException | None]:
    """`writers` threads write `target` without replacing it, all reaching the final step together; what
    each ended with (None: it won)."""
    barrier = threading.Barrier(writers)
    ended: list[BaseException | None] = [None] * writers

    def write(i: int) -> None:
        try:
            with atomic_path(target, replace=False) as tmp:
                tmp.write_text(f"writer {i}")
                barrier.wait()
        except FileExistsError as exc:
            ended[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ended


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_of_writers_racing_for_one_output_exactly_one_wins_and_no_temp_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    if not links:  # FAT, some network mounts: the lock file beside the output takes over

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", refuse)
    targets = []
    for round_ in range(50):
        target = tmp_path / f"scores-{round_}.csv"
        ended = race(target, 4)
        winners = [i for i, e in enumerate(ended) if e is None]
        assert len(winners) == 1, ended
        assert target.read_text() == f"writer {winners[0]}"
        for e in ended:
            assert e is None or str(e) == (
                f"{target} exists (written by another run meanwhile); pass overwrite=true to replace it"
            )
        targets.append(target)
    assert sorted(tmp_path.iterdir()) == sorted(targets)  # no temp file, no lock file


def test_a_lock_a_killed_writer_left_is_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    target = tmp_path / "model.pt"
    (tmp_path / ".model.pt~lock").write_text(f"{socket.gethostname()}~{int(done.stdout)}")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "link", refuse)
    with atomic_path(target, replace=False) as tmp:
        tmp.write_text("new")
    assert sorted(tmp_path.iterdir()) == [target] and target.read_text() == "new"


def test_two_concurrent_scoring_runs_without_overwrite_one_wins_with_its_own_sidecar(
    model: Path, tmp_path: Path
) -> None:
    frame = pd.read_csv(EVENTS)
    inputs = [tmp_path / "all.csv", tmp_path / "some.csv"]
    frame.to_csv(inputs[0], index=False)
    frame.head(4).to_csv(inputs[1], index=False)
    out = tmp_path / "out" / "scores.parquet"
    barrier = threading.Barrier(2)
    ended: list[BaseException | None] = [None, None]

    def run(i: int) -> None:
        barrier.wait()
        try:
            job = ScoreJob(
                model_path=model, events_path=inputs[i], output_path=out, as_of="2024-07-01", **SCORE_OPTIONS
            )
            score_file(job, progress=False)
        except FileExistsError as exc:
            ended[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [winner] = [i for i, e in enumerate(ended) if e is None]
    [loser] = [e for e in ended if e is not None]
    # the loser meets the winner's file at its final step, or already at its up-front check
    meanwhile = r"( \(written by another run meanwhile\))?"
    said = rf"{re.escape(str(out))} exists{meanwhile}; pass overwrite=true to replace it"
    assert re.fullmatch(said, str(loser)), loser
    expected = sorted(pd.read_csv(inputs[winner])["customer_id"].astype(str).unique())  # rows are events
    assert sorted(pd.read_parquet(out)["customer_id"]) == expected
    sidecar = json.loads(report_path(out).read_text())
    assert sidecar["validation"]["events"]["path"] == str(inputs[winner])
    assert sidecar["customers"] == len(expected)
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.parquet", "scores.parquet.report.json"]


@pytest.mark.parametrize("via", ["same path", "symlink", "hard link"])
def test_an_output_that_is_an_input_is_refused_whatever_overwrite_says(tmp_path: Path, via: str) -> None:
    events = tmp_path / "events.csv"
    shutil.copy(EVENTS, events)
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id,plan\nC001,basic\n")
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    before = {p: p.read_bytes() for p in (events, customers, model)}
    for name, source in (("events_path", events), ("customers_path", customers), ("model_path", model)):
        out = tmp_path / f"out-{name}{source.suffix}"
        if via == "same path":
            out = source
        elif via == "symlink":
            out.symlink_to(source)
        else:
            os.link(source, out)
        for overwrite in (True, False):
            with pytest.raises(ConfigError) as err:
                job = ScoreJob(
                    model_path=model,
                    events_path=events,
                    output_path=out,
                    customers_path=customers,
                    overwrite=overwrite,
                    **SCORE_OPTIONS,
                )
                score_file(job, progress=False)
            assert str(err.value) == (
                f"output_path={out} is {name}={source} (the same file): writing it would destroy the input, "
                "overwrite or not"
            )
    assert {p: p.read_bytes() for p in before} == before


def test_a_merge_output_that_is_a_part_is_refused(tmp_path: Path) -> None:
    parts = [tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"]
    for p in parts:
        p.write_bytes(b"rows")
    with pytest.raises(ConfigError, match=r"^output_path=.*part-1.parquet is parts\[1\]="):
        merge_shards(NO_MODEL, parts, parts[1], overwrite=True)
    assert [p.read_bytes() for p in parts] == [b"rows", b"rows"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    cmd = [sys.executable, "-m", "churnwatch", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_an_export_over_its_checkpoint_is_one_line_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_000.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"checkpoint")
    proc = _cli("export", f"ckpt_path={ckpt}", f"output_path={ckpt}", "overwrite=true",
                f"hydra.run.dir={tmp_path / 'log'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"churnwatch export: output_path={ckpt} is ckpt_path={ckpt} (the same file): writing it would "
        "destroy the input, overwrite or not"
    ]
    assert ckpt.read_bytes() == b"checkpoint"


UNWRITABLE = [  # (case, what the case makes, the output, the line)
    ("a directory", "scores.parquet", "scores.parquet", "output_path={out} is a directory"),
    (
        "parent is a file",
        "file",
        "file/scores.parquet",
        "output_path={out}: parent {made} is not a directory",
    ),
    ("symlink loop", "loop.parquet", "loop.parquet", "output_path={out}: symlink loop"),
    ("loop in a parent", "a", "a/scores.parquet", "output_path={out}: symlink loop"),
    ("wrong suffix", "", "scores.txt", "{out}: output must end in .parquet or .csv"),
]


@pytest.mark.parametrize(("case", "made", "out", "line"), UNWRITABLE, ids=[c[0] for c in UNWRITABLE])
def test_an_output_that_cannot_be_written_fails_before_the_work_in_one_line(
    tmp_path: Path, case: str, made: str, out: str, line: str
) -> None:
    made_path, out_path = tmp_path / made, tmp_path / out
    if case == "a directory":
        made_path.mkdir()
    elif case == "parent is a file":
        made_path.write_text("not a dir")
    elif "loop" in case:
        made_path.symlink_to(made_path.name)
    with pytest.raises(ValueError) as err:  # before the model is even read: NO_MODEL does not exist
        job = ScoreJob(
            model_path=NO_MODEL, events_path=EVENTS, output_path=out_path, overwrite=True, **SCORE_OPTIONS
        )
        score_file(job, progress=False)
    assert str(err.value) == line.format(out=out_path, made=made_path)


def test_a_read_only_output_dir_fails_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_text("")
    except PermissionError:
        pass
    else:  # root writes there anyway: the file system refuses instead, as a read-only mount would
        (folder / "probe").unlink()
        real = tempfile.mkstemp

        def read_only(*args: Any, dir: Any = None, **kwargs: Any) -> tuple[int, str]:
            if Path(dir) == folder:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = folder / "new" / "scores.parquet"
    try:
        with pytest.raises(ConfigError) as err:
            score_file(
                ScoreJob(model_path=NO_MODEL, events_path=EVENTS, output_path=out, **SCORE_OPTIONS),
                progress=False,
            )
        assert str(err.value) == f"output_path={out}: cannot write in {folder} (Permission denied)"
    finally:
        folder.chmod(0o755)
    assert sorted(folder.iterdir()) == []


def test_an_input_in_a_symlink_loop_is_named_as_one(tmp_path: Path) -> None:
    loop = tmp_path / "events.csv"
    loop.symlink_to(loop.name)
    with pytest.raises(ConfigError, match=rf"^events_path={loop}: symlink loop$"):
        job = ScoreJob(
            model_path=NO_MODEL, events_path=loop, output_path=tmp_path / "scores.parquet", **SCORE_OPTIONS
        )
        score_file(job, progress=False)


def test_the_cli_says_an_unwritable_output_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    out.mkdir()
    proc = _cli("score", "model_path=m.pt", f"events_path={EVENTS}", f"output_path={out}", "overwrite=true",
                f"hydra.run.dir={tmp_path / 'log'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"churnwatch score: output_path={out} is a directory"]


@pytest.fixture(scope="module")
def scored(model: Path) -> tuple[Scorer, pd.DataFrame]:
    """The model and the unranked scores of the corpus's events (one run, before `Ranker.write_ranked`)."""
    scorer = Scorer(model, device="cpu", drivers={"enabled": False})
    return scorer, scorer.score_input(scorer.load(EVENTS, as_of="2024-07-01"), progress=False)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda f: f.assign(churn_probability=f["churn_probability"].mask(f.index == 2)),
         FloatingPointError, "non-finite churn probability for 1 of"),
        (lambda f: f.assign(churn_probability=f["churn_probability"].mask(f.index == 0, 1.5)),
         FloatingPointError, r"churn probability outside \[0, 1\] for 1 of"),
        (lambda f: pd.concat([f, f.tail(1)]), RuntimeError, "lost or duplicated customers"),
    ],
    ids=["nan", "above-1", "duplicate"],
)  # fmt: skip
def test_a_score_output_is_renamed_into_place_only_when_every_row_is_sound(
    scored: tuple[Scorer, pd.DataFrame], tmp_path: Path, change: Callable, error: type, match: str
) -> None:
    scorer, frame = scored
    run = tmp_path / "run.parquet"
    change(frame).to_parquet(run, index=False)
    out = tmp_path / "scores.parquet"
    with pytest.raises(error, match=match):
        scorer.ranker.write_ranked([run], out)
    assert sorted(tmp_path.iterdir()) == [run]  # no output, no temp file


def test_the_unchanged_run_writes_and_a_zero_chunk_is_refused(
    scored: tuple[Scorer, pd.DataFrame], tmp_path: Path
) -> None:
    scorer, frame = scored
    run = tmp_path / "run.parquet"
    frame.to_parquet(run, index=False)
    assert scorer.ranker.write_ranked([run], tmp_path / "scores.parquet") == len(frame)
    with pytest.raises(ConfigError, match="^chunk_customers=0: must be an integer ≥ 1$"):
        scorer.score(EVENTS, as_of="2024-07-01", chunk_customers=0, progress=False)
