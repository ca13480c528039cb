"""Files at a URL (any fsspec protocol; here fsspec's in-memory file system, which needs no service). An
output URL: the run writes locally and uploads the output and its report when it succeeds, the same rows a
local output gets; an existing object is kept without overwrite; a failed run uploads nothing; a protocol
that is not installed is one line before the work; and the local staging directory is gone either way. A
model URL: read whole and checked as a local file is, named in its errors. Input URLs: read in place (whole,
or split into parts), the same rows as local inputs, their errors naming the URL."""

from __future__ import annotations

import io
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from churnwatch.artifact.model_file import load_model
from churnwatch.data.readers import read_table
from churnwatch.errors import ArtifactError, ConfigError, DataValidationError
from churnwatch.jobs.score import ScoreJob, score_file
from tests.helpers import SCORE_OPTIONS

AS_OF = "2024-11-01"


def _job(model: Path, output: str | Path, stage: Path, **extra: object) -> ScoreJob:
    """A job scoring the tiny model's own data into `output`; `extra` overrides any option."""
    data = model.parent.parent / "data"
    options = dict(model_path=model, events_path=data / "events.parquet", output_path=output,
                   customers_path=data / "customers.parquet", as_of=AS_OF, spill_dir=stage,
                   **{**SCORE_OPTIONS, "drivers": {"enabled": False}})  # fmt: skip
    return ScoreJob(**{**options, **extra})


def _read(fs: fsspec.AbstractFileSystem, path: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(fs.cat_file(path)))


def test_a_url_output_gets_the_local_runs_rows_and_report_uploaded(model: Path, tmp_path: Path):
    fs = fsspec.filesystem("memory")
    url = f"memory://{tmp_path.name}/nightly/scores.parquet"
    local = score_file(_job(model, tmp_path / "scores.parquet", tmp_path / "stage"), progress=False)
    result = score_file(_job(model, url, tmp_path / "stage"), progress=False)
    assert result.output_path == url and result.customers == local.customers
    got = _read(fs, f"/{tmp_path.name}/nightly/scores.parquet")
    pd.testing.assert_frame_equal(got, pd.read_parquet(tmp_path / "scores.parquet"))
    assert fs.exists(f"/{tmp_path.name}/nightly/scores.parquet.report.json")
    assert list((tmp_path / "stage").iterdir()) == []  # staged, uploaded, removed


def test_an_existing_object_is_kept_without_overwrite_and_replaced_with_it(model: Path, tmp_path: Path):
    fs = fsspec.filesystem("memory")
    path = f"/{tmp_path.name}/scores.parquet"
    fs.pipe_file(path, b"yesterday")
    with pytest.raises(ConfigError, match=r"^output_path=memory://.*scores\.parquet exists \(overwrite=true"):
        score_file(_job(model, f"memory:/{path}", tmp_path / "stage"), progress=False)
    assert fs.cat_file(path) == b"yesterday"
    score_file(_job(model, f"memory:/{path}", tmp_path / "stage", overwrite=True), progress=False)
    assert len(_read(fs, path)) > 0


def test_a_failed_run_uploads_nothing_and_leaves_no_staging(model: Path, tmp_path: Path):
    fs = fsspec.filesystem("memory")
    bad = tmp_path / "events.csv"
    bad.write_text("customer_id,timestamp\nc1,not a date\n")
    job = _job(model, f"memory://{tmp_path.name}/scores.parquet", tmp_path / "stage")
    with pytest.raises(DataValidationError):
        score_file(ScoreJob(**{**vars(job), "events_path": bad, "customers_path": None}), progress=False)
    assert not fs.exists(f"/{tmp_path.name}")
    assert list((tmp_path / "stage").iterdir()) == []


def test_a_protocol_that_is_not_installed_or_known_is_one_line_before_the_work(tmp_path: Path):
    job = ScoreJob(model_path="no_model.pt", events_path="e.csv", output_path="nope://bucket/scores.parquet",
                   spill_dir=tmp_path, **SCORE_OPTIONS)  # fmt: skip
    with pytest.raises(ConfigError, match=r"^output_path=nope://bucket/scores\.parquet: .*nope"):
        score_file(job, progress=False)
    with pytest.raises(ConfigError, match=r"output must end in \.parquet or \.csv"):
        score_file(ScoreJob(**{**vars(job), "output_path": "memory://b/scores.txt"}), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_model_at_a_url_scores_as_its_local_file_and_is_checked_as_one(model: Path, tmp_path: Path):
    fs = fsspec.filesystem("memory")
    url = f"memory://{tmp_path.name}/models/model.pt"
    fs.pipe_file(f"/{tmp_path.name}/models/model.pt", model.read_bytes())
    score_file(_job(model, tmp_path / "local.parquet", tmp_path / "stage"), progress=False)
    score_file(_job(model, tmp_path / "remote.parquet", tmp_path / "stage", model_path=url), progress=False)
    local, remote = (pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("local", "remote"))
    pd.testing.assert_frame_equal(remote, local)
    assert load_model(url).path == url
    with pytest.raises(ConfigError, match=rf"^model_path={url}x: not found$"):
        load_model(f"{url}x")
    bad = f"memory://{tmp_path.name}/models/bad.pt"
    fs.pipe_file(f"/{tmp_path.name}/models/bad.pt", b"not a model")
    with pytest.raises(ArtifactError, match=rf"^{bad}: not a readable churnwatch model"):
        load_model(bad)


def _put(fs: fsspec.AbstractFileSystem, local: Path, url: str) -> str:
    fs.put(str(local), url.removeprefix("memory:/"), recursive=local.is_dir())
    return url


@pytest.mark.parametrize(("kind", "part_events"), [("parquet", None), ("parquet", 500), ("csv", 500)])
def test_inputs_at_urls_score_as_their_local_files(
    model: Path, tmp_path: Path, kind: str, part_events: int | None
):
    fs = fsspec.filesystem("memory")
    data, root = model.parent.parent / "data", f"memory://{tmp_path.name}"
    local_events = data / "events.parquet"
    if kind == "csv":  # (its size estimates the rows: read from the store)
        local_events = tmp_path / "events.csv"
        pd.read_parquet(data / "events.parquet").to_csv(local_events, index=False)
    events = _put(fs, local_events, f"{root}/in/{local_events.name}")
    customers = _put(fs, data / "customers.parquet", f"{root}/in/customers.parquet")
    split = {"part_events": part_events} if part_events else {}  # 500: the input is split into parts
    stage = tmp_path / "stage"
    local = score_file(
        _job(model, tmp_path / "local.parquet", stage, events_path=local_events, **split), progress=False
    )
    job = _job(
        model, tmp_path / "remote.parquet", stage, events_path=events, customers_path=customers, **split
    )
    remote = score_file(job, progress=False)
    assert remote.parts == local.parts and (remote.parts > 1) == bool(part_events)
    got, want = (pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("remote", "local"))
    pd.testing.assert_frame_equal(got, want)


def test_a_csv_or_a_parquet_directory_at_a_url_reads_as_its_local_copy(tmp_path: Path):
    fs = fsspec.filesystem("memory")
    frame = pd.DataFrame(
        {"customer_id": ["007", "8", "9"], "amount": ["1.5", "", "3"], "day": ["a", "a", "b"]}
    )
    frame.to_csv(tmp_path / "events.csv", index=False)
    frame.to_parquet(tmp_path / "events", partition_cols=["day"])
    for name in ("events.csv", "events"):
        url = _put(fs, tmp_path / name, f"memory://{tmp_path.name}/{name}")
        got, want = read_table(url), read_table(tmp_path / name)
        pd.testing.assert_frame_equal(got, want)
    assert read_table(f"memory://{tmp_path.name}/events.csv")["customer_id"].tolist() == ["007", "8", "9"]


def test_an_input_url_that_is_missing_or_bad_is_one_line_naming_it(model: Path, tmp_path: Path):
    fs = fsspec.filesystem("memory")
    missing = f"memory://{tmp_path.name}/nothing.parquet"
    with pytest.raises(DataValidationError, match=rf"^{missing}: file not found$"):
        score_file(
            _job(model, tmp_path / "out.parquet", tmp_path / "stage", events_path=missing), progress=False
        )
    bad = f"memory://{tmp_path.name}/events.csv"
    fs.pipe_file(bad.removeprefix("memory:/"), b"customer_id,timestamp\nc1,not a date\n")
    with pytest.raises(DataValidationError, match=rf"^{bad}: column 'event_type' .*row 0: .*'not a date'"):
        score_file(_job(model, tmp_path / "out.parquet", tmp_path / "stage", events_path=bad,
                        customers_path=None), progress=False)  # fmt: skip
    fs.pipe_file(f"/{tmp_path.name}/broken.parquet", b"PAR1 not really")
    with pytest.raises(DataValidationError, match=rf"^memory://{tmp_path.name}/broken\.parquet: cannot read"):
        read_table(f"memory://{tmp_path.name}/broken.parquet")
    with pytest.raises(ConfigError, match=r"^nope://b/events\.parquet: .*nope"):
        read_table("nope://b/events.parquet")
    assert not (tmp_path / "out.parquet").exists()
