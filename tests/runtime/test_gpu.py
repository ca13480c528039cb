"""The reliability guarantees on CUDA (`make test-gpu` on a GPU machine; skipped elsewhere, CI included):
bf16-mixed training killed at a checkpoint's rename resumes, and every passing case of the malformed-input
corpus scores on the GPU, fp32 and bf16, with each customer once and probabilities close to the CPU's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from churnwatch.config.compose import compose
from churnwatch.jobs.score import ScoreJob, score_file
from churnwatch.runs.train import train
from tests.helpers import (
    BAD_INPUT_CASES,
    BAD_INPUTS,
    TINY,
    hidden_names,
    run_in_repo,
    run_killed_at_rename,
    script_command,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
GPU_TRAINER = ["trainer=gpu", "trainer.max_epochs=2", "data.generate.n_customers=3000"]


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu")
    (root / "run").mkdir()
    overrides = [f"data.data_dir={root / 'data'}", f"paths.output_dir={root / 'run'}", *TINY, *GPU_TRAINER]
    train(compose("train", overrides))
    return root / "run" / "model.pt"


def test_bf16_training_killed_at_a_checkpoint_rename_keeps_last_whole_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    overrides = [f"hydra.run.dir={run_dir}", f"data.data_dir={tmp_path / 'data'}", *TINY, *GPU_TRAINER]
    run_killed_at_rename(last, 2, script_command("train", *overrides))
    assert torch.load(last, weights_only=True)["epoch"] == 0
    assert len([n for n in hidden_names(last.parent) if n.startswith(".last.ckpt~")]) == 1
    resumed = run_in_repo(script_command("train", *overrides, "ckpt_path=last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["test/auroc"] > 0.5 and hidden_names(last.parent) == []


PASSING = sorted(name for name, case in BAD_INPUT_CASES.items() if case["outcome"] == "passes")


@pytest.mark.parametrize("name", PASSING)
def test_cuda_scoring_of_the_corpus_matches_the_cpu(gpu_model: Path, name: str, tmp_path: Path) -> None:
    case = BAD_INPUT_CASES[name]
    events = BAD_INPUTS / case["events"]
    customers = BAD_INPUTS / case["customers"] if case.get("customers") else None
    scored = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")):
        out = tmp_path / f"{device}-{precision}.parquet"
        job = ScoreJob(
            model_path=gpu_model, events_path=events, output_path=out, customers_path=customers,
            device=device, precision=precision, drivers={"steps": 2},
        )  # fmt: skip
        score_file(job, progress=False)
        frame = pd.read_parquet(out).set_index("customer_id")
        assert sorted(frame.index) == case["ids"] and frame.index.is_unique
        scored[(device, precision)] = frame["churn_probability"]
    cpu = scored[("cpu", "fp32")]
    assert all(np.isfinite(p).all() and p.between(0, 1).all() for p in scored.values())
    assert (scored[("cuda", "fp32")] - cpu.loc[scored[("cuda", "fp32")].index]).abs().max() < 1e-4
    assert (scored[("cuda", "bf16")] - cpu.loc[scored[("cuda", "bf16")].index]).abs().max() < 3e-2
