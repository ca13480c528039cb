"""Scoring starts without the training stack: a batch job, a service or a notebook that only scores loads
torch, pandas and the model file, not Lightning, scikit-learn, torchmetrics, matplotlib or LightGBM (each
costs seconds of import time; `churnwatch score` started in 11.7 s before this was checked, 4.6 s after)."""

from __future__ import annotations

import subprocess
import sys

TRAINING_ONLY = ("lightning", "sklearn", "torchmetrics", "matplotlib", "scipy", "lightgbm", "captum")


def test_the_scoring_job_imports_no_training_library():
    code = (
        "import sys, churnwatch.jobs.score, churnwatch.jobs.monitor; "
        f"print(sorted(m for m in {TRAINING_ONLY!r} if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert proc.stdout.strip() == "[]"
