"""The Python API (`from churnwatch import Scorer, compose, load_model, train`): the README's notebook
example runs as written, and Scorer takes DataFrames and Arrow tables as well as paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import churnwatch
from churnwatch.errors import DataValidationError
from tests.helpers import REPO


def readme_example() -> str:
    """The first python block under the README's "Python API" heading."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def notebook(tmp_path_factory) -> tuple[Path, dict]:
    """The README example, run as written in a fresh directory; its variables."""
    workdir = tmp_path_factory.mktemp("notebook")
    before = Path.cwd()
    os.chdir(workdir)
    try:
        namespace: dict = {}
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    finally:
        os.chdir(before)
    return workdir, namespace


def test_the_readme_notebook_example_runs_as_written(notebook):
    workdir, ns = notebook
    run, scores = ns["run"], ns["scores"]
    assert isinstance(run, churnwatch.TrainedRun)
    assert run.run_dir.is_relative_to(workdir / "checkpoints" / "train")  # the command's own run dir
    assert run.model_path == run.run_dir / "model.pt" and run.model_path.exists()
    assert run.report_path.exists() and run.checkpoint.exists()
    assert 0.5 < run.test["test/auroc"] <= 1 and run.metrics["test"] == run.test
    assert ns["model"].threshold == pytest.approx(run.metrics["threshold"])
    events = ns["events"]
    assert sorted(scores["customer_id"]) == sorted(events["customer_id"].astype(str).unique())
    assert scores["churn_probability"].between(0, 1).all()


def test_scorer_takes_a_dataframe_an_arrow_table_or_a_path_alike(notebook):
    workdir, ns = notebook
    scorer = churnwatch.Scorer(ns["run"].model_path, device="cpu", drivers={"enabled": False})
    path = workdir / "data" / "notebook" / "events.parquet"
    customers = workdir / "data" / "notebook" / "customers.parquet"
    common = dict(as_of="2024-11-01", progress=False)
    from_path = scorer.score(path, customers, **common)
    frame = pd.read_parquet(path).sample(frac=1, random_state=0).set_index("customer_id", drop=False)
    from_frame = scorer.score(frame, pd.read_parquet(customers), **common)
    from_arrow = scorer.score(
        pa.Table.from_pandas(frame, preserve_index=False), pa.table(pd.read_parquet(customers)), **common
    )
    pd.testing.assert_frame_equal(from_frame, from_path)
    pd.testing.assert_frame_equal(from_arrow, from_path)


def test_a_bad_in_memory_table_is_a_one_line_error_naming_it(notebook):
    _, ns = notebook
    scorer = churnwatch.Scorer(ns["model"], device="cpu")
    with pytest.raises(DataValidationError, match=r"^<events: DataFrame>: .*'timestamp'"):
        scorer.score(ns["events"].drop(columns=["timestamp"]), progress=False)


def test_compose_builds_any_commands_config_with_its_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = churnwatch.compose("train", ["model=gru"])
    assert cfg.model.name == "gru" and "hydra" not in cfg
    assert Path(cfg.paths.output_dir).is_relative_to(tmp_path / "checkpoints" / "train")
    score = churnwatch.compose("score", ["model_path=m.pt"], output_dir="out")
    assert score.model_path == "m.pt" and score.paths.output_dir == str(tmp_path / "out")
    assert churnwatch.compose("make_synthetic").n_customers == 20000
    # an override of paths.output_dir is the run dir, as on the command line
    assert churnwatch.compose("train", ["paths.output_dir=/tmp/given"]).paths.output_dir == "/tmp/given"
