"""DDP with two CPU processes (gloo) under Hydra: one run dir, rank-zero export, a working model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from churnwatch.artifact.model_file import load_artifact
from tests.helpers import REPO


def _ddp_overrides(tmp_path, runs) -> list[str]:
    """A tiny DDP run on 2 CPU processes (gloo)."""
    return [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"data.data_dir={tmp_path / 'data'}",
        "data.generate.n_customers=1500",
        f"paths.log_dir={runs}",
        "model.net.hidden=16",
        "model.net.d_model=16",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "launch", [["scripts/train.py"], ["-m", "churnwatch", "train"]], ids=["script", "python-m-churnwatch"]
)
def test_ddp_two_cpu_processes_write_one_run_dir(tmp_path, launch):
    """Lightning starts the second rank by running the first one's command again: the script, or the
    `train` subcommand's own file when launched through the churnwatch command."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, *launch, *_ddp_overrides(tmp_path, runs)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = [p for p in (runs / "train").iterdir() if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs  # Hydra + DDP: the second rank reuses the first rank's run dir
    run = run_dirs[0]
    assert (run / "train_ddp_process_1.log").exists()  # proof that a second process ran
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.5 < metrics["test"]["test/auroc"] <= 1
    _, meta = load_artifact(run / "model.pt")
    assert meta["config"]["trainer"]["strategy"] == "ddp"
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pt") == ["model.pt"]


@pytest.mark.slow
def test_ddp_under_torchrun_writes_one_run_dir(tmp_path):
    """Launched from outside (torchrun here, srun on SLURM), every rank runs Hydra itself: the shared
    CHURNWATCH_RUN_ID names their one run dir, and only rank zero exports."""
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(REPO / "scripts" / "train.py"),
        *_ddp_overrides(tmp_path, runs),
        "report=false",
    ]
    # the data first, so the two ranks do not race to generate it
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_synthetic.py"),
            f"out_dir={tmp_path / 'data'}",
            "n_customers=1500",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "CHURNWATCH_RUN_ID": "job-42", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # the second rank joined
    assert [p.name for p in (runs / "train").iterdir()] == ["job-42"]
    run = runs / "train" / "job-42"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.5 < metrics["test"]["test/auroc"] <= 1
    _, meta = load_artifact(run / "model.pt")
    assert meta["config"]["trainer"]["devices"] == 2


@pytest.mark.slow
def test_sweep_through_the_submitit_launcher_writes_one_run_dir_per_job(tmp_path):
    """conf/hydra/launcher/local.yaml: submitit's local executor, the same path a SLURM sweep takes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    data = tmp_path / "data"
    cmd = [
        sys.executable,
        "scripts/train.py",
        "-m",
        "hydra/launcher=local",
        "model=logreg,naive_bayes",
        f"data.data_dir={data}",
        "data.generate.n_customers=1500",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "report=false",
        "insights.enabled=false",
    ]
    # the jobs share one generated data set: make it first, as a cluster sweep would read prepared data
    subprocess.run(
        [sys.executable, "scripts/make_synthetic.py", f"out_dir={data}", "n_customers=1500"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600)
    runs = [json.loads((tmp_path / "sweep" / str(i) / "metrics.json").read_text()) for i in (0, 1)]
    assert [r["model"] for r in runs] == ["logreg", "naive_bayes"]
    assert all(0.5 < r["test"]["test/auroc"] <= 1 for r in runs)
    jobs = [d for d in (tmp_path / "sweep" / ".submitit").iterdir() if d.name.isdigit()]
    assert len(jobs) == 2  # one submitit job (its own process, logs and pickles) each
