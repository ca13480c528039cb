"""Scoring on a Ray cluster (engine=ray) writes, row for row, what one machine writes for the same rows: a
local cluster started by the test, a partitioned parquet dataset whose customers are spread over files and
row groups, some invalid rows, and several shuffle parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnwatch.errors import ConfigError, DataValidationError
from churnwatch.jobs.score import ScoreJob, ScoringResult, score_file
from churnwatch.scoring.output import report_path
from tests.helpers import SCORE_OPTIONS, hidden_names, score_model_data

ray = pytest.importorskip("ray", reason="engine=ray needs Ray Data: pip install 'churnwatch[distributed]'")
from churnwatch.jobs.score_ray import score_on_ray  # noqa: E402  (after the skip: it imports ray)

AS_OF = "2024-11-01"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def partitioned(table: pa.Table, root: Path, files: int, row_group: int) -> pa.Table:
    """`table` cut by position (so a customer's rows land in several files) into hive partitions
    `month=<k>`, row groups of `row_group` rows; returns the one table those files read as, in path order:
    the same rows and row numbers, the partition key as its last column."""
    pieces, size = [], -(-len(table) // files)
    for k in range(files):
        piece = table.slice(k * size, size)
        (root / f"month={k + 1}").mkdir(parents=True)
        pq.write_table(piece, root / f"month={k + 1}" / "part-0.parquet", row_group_size=row_group)
        pieces.append(piece.append_column("month", pa.array([k + 1] * len(piece), pa.int32())))
    return pa.concat_tables(pieces)


def on_two_workers(out: Path, **options: Any) -> tuple[ScoringResult, list[Path]]:
    """`score_on_ray` with two workers into `out`: its result and its files in name order."""
    result = score_on_ray(ScoreJob(output_path=out, **options), {"workers": 2})
    return result, sorted(out.glob("*.parquet"))


@pytest.mark.slow
def test_the_command_starts_a_local_cluster_and_writes_ranked_files(model: Path, tmp_path: Path) -> None:
    """`churnwatch score engine=ray` end to end, in its own process and its own local cluster (this module's
    cluster starts after it)."""
    partitioned(pq.read_table(model.parent.parent / "data" / "events.parquet"), tmp_path / "events", 2, 2_000)
    out = tmp_path / "scores"
    args = [
        f"model_path={model}",
        f"events_path={tmp_path / 'events'}",
        f"output_path={out}",
        f"as_of={AS_OF}",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "churnwatch",
            "score",
            "engine=ray",
            "ray.workers=1",
            "drivers.enabled=false",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = pd.concat([pd.read_parquet(f) for f in sorted(out.glob("part-*.parquet"))], ignore_index=True)
    assert f"scored {(~scores['no_history']).sum():,} customers" in proc.stdout
    ranked = scores["risk_rank"].dropna()
    assert ranked.tolist() == list(range(1, len(ranked) + 1))  # in rank order across the files
    assert scores["customer_id"].is_unique and json.loads(report_path(out).read_text())["as_of"] == AS_OF


@pytest.mark.slow
def test_ray_scoring_writes_what_one_machine_writes(model: Path, cluster: None, tmp_path: Path) -> None:
    data = model.parent.parent / "data"
    events = pd.read_parquet(data / "events.parquet")
    events.loc[[5, 800], "timestamp"] = pd.NaT  # invalid rows: dropped and reported with their row number
    events["customer_id"] = events["customer_id"].astype(str)
    events.loc[1234, "customer_id"] = None
    whole = partitioned(pa.Table.from_pandas(events, preserve_index=False), tmp_path / "events", 3, 700)
    customers = partitioned(pq.read_table(data / "customers.parquet"), tmp_path / "customers", 2, 100)
    pq.write_table(whole, tmp_path / "events.parquet")
    pq.write_table(customers, tmp_path / "customers.parquet")
    options = dict(SCORE_OPTIONS, as_of=AS_OF, model_path=model)

    single = score_file(
        ScoreJob(
            events_path=tmp_path / "events.parquet",
            customers_path=tmp_path / "customers.parquet",
            output_path=tmp_path / "single.parquet",
            **options,
        ),
        progress=False,
    )
    result, files = on_two_workers(
        tmp_path / "ray_scores",
        events_path=tmp_path / "events",
        customers_path=tmp_path / "customers",
        part_events=2_000,
        block_rows=100,
        **options,
    )
    assert result.parts >= 6  # scored in several parts
    # files of block_rows rows in rank order, whatever blocks Ray's sort made
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [100, 100, single.customers - 200]
    got = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    expected = pd.read_parquet(tmp_path / "single.parquet")
    pd.testing.assert_frame_equal(got, expected)
    assert (result.customers, result.tiers) == (single.customers, single.tiers)
    pd.testing.assert_frame_equal(result.top, single.top)
    sidecar = json.loads(report_path(tmp_path / "ray_scores").read_text())
    reference = json.loads(report_path(tmp_path / "single.parquet").read_text())
    for key in ("as_of", "customers", "scored", "no_history"):
        assert sidecar[key] == reference[key], key
    ray_events, single_events = sidecar["validation"]["events"], reference["validation"]["events"]
    assert ray_events["dropped"] == single_events["dropped"] and sum(ray_events["dropped"].values()) == 3
    for key in ("rows_read", "rows_kept", "examples"):
        assert ray_events[key] == single_events[key], key


@pytest.mark.slow
def test_bad_data_in_a_worker_is_the_one_line_error_one_machine_gives(
    model: Path, cluster: None, tmp_path: Path
) -> None:
    events = pq.read_table(model.parent.parent / "data" / "events.parquet").drop_columns(["amount"])
    partitioned(events, tmp_path / "events", 2, 5_000)
    job = ScoreJob(
        model_path=model,
        events_path=tmp_path / "events",
        output_path=tmp_path / "out",
        as_of=AS_OF,
        **SCORE_OPTIONS,
    )
    with pytest.raises(DataValidationError) as caught:
        score_on_ray(job)
    assert type(caught.value) is DataValidationError  # itself, not Ray's wrapper of it
    assert str(caught.value).startswith(f"{tmp_path / 'events'}: column 'amount'")
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_ask_the_cluster_cannot_meet_is_refused_not_left_waiting(
    model: Path, cluster: None, tmp_path: Path
) -> None:
    pq.write_table(pq.read_table(model.parent.parent / "data" / "events.parquet"), tmp_path / "e.parquet")
    job = ScoreJob(
        model_path=model,
        events_path=tmp_path / "e.parquet",
        output_path=tmp_path / "out",
        as_of=AS_OF,
        **SCORE_OPTIONS,
    )
    with pytest.raises(ConfigError, match=r"^ray.gpus_per_worker=1: the cluster has 0 GPU\(s\)$"):
        score_on_ray(job, {"gpus_per_worker": 1, "workers": 1})
    # an actor holding every CPU would starve the reads that feed it: the job would wait forever
    with pytest.raises(
        ConfigError, match=r"^ray.cpus_per_worker=2: the cluster has 2 CPU\(s\), and a worker must"
    ):
        score_on_ray(job, {"cpus_per_worker": 2, "workers": 1})


def test_cuda_without_a_gpu_per_worker_is_refused_before_the_work(model: Path, tmp_path: Path) -> None:
    job = ScoreJob(
        model_path=model,
        events_path=tmp_path,
        output_path=tmp_path / "out",
        as_of=AS_OF,
        **{**SCORE_OPTIONS, "device": "cuda"},
    )
    with pytest.raises(ConfigError, match="device=cuda needs ray.gpus_per_worker > 0"):
        score_on_ray(job)


@pytest.mark.slow
def test_a_csv_input_is_one_line(model: Path, cluster: None, tmp_path: Path) -> None:
    pd.read_parquet(model.parent.parent / "data" / "events.parquet").to_csv(tmp_path / "e.csv", index=False)
    job = ScoreJob(
        model_path=model,
        events_path=tmp_path / "e.csv",
        output_path=tmp_path / "out",
        as_of=AS_OF,
        **SCORE_OPTIONS,
    )
    with pytest.raises(
        DataValidationError, match=r"e.csv: not a parquet file or a directory of parquet files \("
    ) as caught:
        score_on_ray(job)
    assert "\n" not in str(caught.value)
    assert hidden_names(tmp_path) == [] and not (tmp_path / "out").exists()  # no staging made or left


def test_ray_scoring_refuses_a_run_without_as_of_before_the_work(model: Path, tmp_path: Path) -> None:
    job = ScoreJob(model_path=model, events_path=tmp_path, output_path=tmp_path / "out", **SCORE_OPTIONS)
    with pytest.raises(ConfigError, match="engine=ray needs an explicit as_of"):
        score_on_ray(job)
    url = ScoreJob(**{**vars(job), "as_of": "2024-11-01", "output_path": "memory://bucket/out",
                      "events_path": "memory://bucket/out/events.parquet"})  # fmt: skip
    with pytest.raises(ConfigError, match="^output_path=memory://bucket/out holds events_path=memory://"):
        score_on_ray(url)


@pytest.mark.slow
def test_inputs_and_output_at_urls_are_what_local_files_give(
    model: Path, cluster: None, tmp_path: Path
) -> None:
    """URLs (here `file://`: the workers are other processes, so fsspec's in-memory store would not do)
    read in place and written by the workers through fsspec: the files, then the sidecar, then `_SUCCESS`."""
    data = model.parent.parent / "data"
    partitioned(pq.read_table(data / "events.parquet"), tmp_path / "events", 2, 1_500)
    options = dict(SCORE_OPTIONS, as_of=AS_OF, model_path=model, part_events=3_000, block_rows=500)
    local, files = on_two_workers(tmp_path / "local", events_path=tmp_path / "events", **options)
    url = f"file://{tmp_path}/remote"
    job = ScoreJob(output_path=url, events_path=f"file://{tmp_path}/events", **options)
    result = score_on_ray(job, {"workers": 2})
    assert result.output_path == url and result.tiers == local.tiers
    remote = sorted((tmp_path / "remote").glob("*.parquet"))
    assert [f.name for f in remote] == [f.name for f in files] and (tmp_path / "remote" / "_SUCCESS").exists()
    for got, want in zip(remote, files, strict=True):
        pd.testing.assert_frame_equal(pd.read_parquet(got), pd.read_parquet(want))
    assert json.loads(report_path(tmp_path / "remote").read_text())["customers"] == local.customers
    with pytest.raises(ConfigError, match=rf"^output_path={url} exists \(overwrite=true"):
        score_on_ray(job, {"workers": 2})
    score_on_ray(ScoreJob(**{**vars(job), "overwrite": True, "block_rows": 10_000}), {"workers": 2})
    assert sorted(f.name for f in (tmp_path / "remote").iterdir()) == ["_SUCCESS", "part-00000.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.slow
def test_drivers_of_chosen_tiers_on_ray_are_what_one_machine_gives(
    model: Path, cluster: None, tmp_path: Path
) -> None:
    """`drivers.tiers` on a cluster: the tiers are known once the sorted blocks have their global positions,
    so their customers are read, shuffled and explained again, and their drivers (and the actions the
    playbook takes from them) are exactly the single-machine run's; every other customer has none."""
    data = model.parent.parent / "data"
    partitioned(pq.read_table(data / "events.parquet"), tmp_path / "events", 2, 1_500)
    drivers = {"steps": 2, "tiers": ["high"]}
    expected = score_model_data(model, tmp_path / "single.parquet", AS_OF, drivers=drivers)
    result, files = on_two_workers(
        tmp_path / "ray_scores",
        events_path=tmp_path / "events",
        customers_path=data / "customers.parquet",
        part_events=3_000,
        block_rows=500,
        **dict(SCORE_OPTIONS, as_of=AS_OF, model_path=model, drivers=drivers),
    )
    got = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected)
    explained = got["main_driver"].fillna("").ne("")
    assert result.tiers["high"] > 0 and explained.sum() == (got["risk_tier"] == "high").sum()
    assert (got.loc[explained, "risk_tier"] == "high").all()
