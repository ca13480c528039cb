"""The built wheel, installed into a clean venv, works from a directory outside the checkout: the configs
travel inside it, the `churnwatch` command runs make-synthetic → train → score, and a core install pulls
no sweeper and no database libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import REPO, TINY

NOT_IN_CORE = {"hydra-optuna-sweeper", "optuna", "sqlalchemy", "alembic", "mlflow", "mlflow-skinny", "wandb"}


def run(cmd: list, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"{cmd}: {proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_wheel_installs_into_a_clean_venv_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, REPO], cwd=tmp_path)
    [wheel] = dist.glob("churnwatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "churnwatch/conf/train.yaml",
        "churnwatch/conf/score.yaml",
        "churnwatch/conf/model/lstm.yaml",
    } <= names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", os.environ.get("TORCH_SPEC", "torch==2.13.0")], cwd=tmp_path)
    run([python, "-m", "pip", "install", "-q", wheel], cwd=tmp_path)
    listed = run([python, "-m", "pip", "list", "--format", "json"], cwd=tmp_path).stdout
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed)}
    assert not installed & NOT_IN_CORE, installed & NOT_IN_CORE

    work = tmp_path / "work"  # outside the checkout: nothing of it is importable or readable from here
    work.mkdir()
    code = "from churnwatch.config.compose import config_dir; print(config_dir())"
    found = run([python, "-c", code], cwd=work)
    assert Path(found.stdout.strip()).is_relative_to(venv)
    command = venv / "bin" / "churnwatch"
    assert "model_path: ???" in run([command, "score", "--help"], cwd=work).stdout
    run([command, "make-synthetic", "out_dir=data", "n_customers=1500"], cwd=work)
    run([command, "train", "data.data_dir=data", *TINY, "hydra.run.dir=run"], cwd=work)
    assert (work / "run" / "model.pt").exists() and (work / "run" / "metrics.json").exists()
    run(
        [
            command,
            "score",
            "model_path=run/model.pt",
            "events_path=data/events.parquet",
            "customers_path=data/customers.parquet",
            "output_path=scores.parquet",
        ],
        cwd=work,
    )
    scores = pd.read_parquet(work / "scores.parquet")
    events = pd.read_parquet(work / "data" / "events.parquet", columns=["customer_id"])
    assert len(scores) == events["customer_id"].nunique() and scores["customer_id"].is_unique
