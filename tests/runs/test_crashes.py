"""kill -9 at the worst moments: outputs appear whole or not at all, re-runs complete, and a training run
resumed from last.ckpt ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from churnwatch.artifact.model_file import load_artifact
from churnwatch.config.compose import compose
from churnwatch.runs.train import train
from tests.helpers import REPO, TINY, hidden_names, run_in_repo, run_killed_at_rename, script_command

AS_OF = "2024-11-01"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("crashes")
    (root / "run").mkdir()
    train(compose("train", [f"data.data_dir={root / 'data'}", f"paths.output_dir={root / 'run'}", *TINY]))
    return root


def script_main(name: str, *overrides: str) -> None:
    """Run a script's task function in this process (Hydra's decorator passes a given config through)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(compose(name, list(overrides)))


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds, and check it was still running then."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, (
                f"finished before the kill point: {proc.stderr.read().decode()[-2000:]}"
            )
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def files_under(folder: Path) -> list[Path]:
    return [Path(d, f) for d, _, names in os.walk(folder) for f in names]


def test_score_killed_mid_run_leaves_no_output_and_a_rerun_completes(trained, tmp_path, capsys):
    events = trained / "data" / "events.parquet"
    out = tmp_path / "out" / "scores.parquet"
    args = [
        f"model_path={trained / 'run' / 'model.pt'}",
        f"events_path={events}",
        f"customers_path={trained / 'data' / 'customers.parquet'}",
        f"output_path={out}",
        f"as_of={AS_OF}",
        "device=cpu",
        "part_events=5000",  # about ten parts: scored rows sit in the spill dir long before the output
        "drivers.enabled=false",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    # killed once a part's scores are on disk (in the hidden spill dir next to the output)
    kill_when(
        script_command("score", *args),
        lambda: out.parent.exists() and any(p.suffix == ".parquet" for p in files_under(out.parent)),
    )
    assert not out.exists()
    assert files_under(out.parent)  # the killed run really had partial results on disk
    script_main("score", *args)  # the same job again, leftovers and all
    assert hidden_names(out.parent) == []  # the killed run's spill dir went with the re-run
    scores = pd.read_parquet(out)
    customers = pd.read_parquet(events, columns=["customer_id"])["customer_id"].astype(str).unique()
    assert scores["customer_id"].is_unique and sorted(scores["customer_id"]) == sorted(customers)
    assert_kept_then_replaced("score", args, out, capsys)
    pd.testing.assert_frame_equal(pd.read_parquet(out), scores)


def assert_kept_then_replaced(name: str, args: list[str], out: Path, capsys) -> None:
    """An existing output stays as it is without overwrite=true (one line, exit status 2) and is
    replaced, by a new file renamed into place, with it."""
    before, stat = out.read_bytes(), out.stat()
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        script_main(name, *args)
    assert refused.value.code == 2
    assert f"{name}: {out} exists; pass overwrite=true to replace it" in capsys.readouterr().err
    assert out.read_bytes() == before and out.stat().st_mtime_ns == stat.st_mtime_ns
    script_main(name, *args, "overwrite=true")
    assert out.stat().st_ino != stat.st_ino


def test_export_killed_before_its_rename_leaves_no_output_and_a_rerun_completes(trained, tmp_path, capsys):
    """Killed at the last moment (the model fully written under a temp name, the rename pending)."""
    out = tmp_path / "out" / "model.pt"
    args = [
        f"ckpt_path={trained / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"output_path={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    run_killed_at_rename(out, 1, script_command("export", *args))
    assert not out.exists()
    assert [p.name.startswith(".model.pt~") for p in out.parent.iterdir()] == [True]  # only the temp file
    script_main("export", *args)
    assert hidden_names(out.parent) == []  # the re-run removed the killed run's temp file
    _, meta = load_artifact(out)
    assert meta["test_metrics"] == json.loads((trained / "run" / "metrics.json").read_text())["test"]
    assert_kept_then_replaced("export", args, out, capsys)
    load_artifact(out)


@pytest.mark.slow  # 15-35 s; `make test-slow` runs it
def test_training_killed_while_saving_a_checkpoint_keeps_the_last_one_whole(tmp_path):
    """Killed just before the second epoch's last.ckpt is renamed into place: the file a resume reads is
    still the first epoch's, whole, and the new one waits complete under a temp name *beside* it (Lightning
    alone stages checkpoints in the system temp dir, so the rename may be a copy across file systems,
    which a kill tears). The resume completes the run and clears the leftover."""
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    overrides = [
        f"hydra.run.dir={run_dir}",
        f"data.data_dir={tmp_path / 'data'}",
        *TINY,
        "trainer.max_epochs=2",
    ]
    run_killed_at_rename(last, 2, script_command("train", *overrides))
    assert torch.load(last, weights_only=True)["epoch"] == 0
    temps = [p for p in last.parent.iterdir() if p.name.startswith(".last.ckpt~")]
    assert len(temps) == 1 and torch.load(temps[0], weights_only=True)["epoch"] == 1
    assert not (run_dir / "metrics.json").exists()
    resumed = run_in_repo(script_command("train", *overrides, "ckpt_path=last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 1 and (run_dir / "metrics.json").exists()
    assert hidden_names(last.parent) == []


@pytest.mark.slow
def test_training_killed_after_its_first_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    """Exact equality: the checkpoint carries the weights, optimizer, scheduler and callback state, the
    sampler's order is a function of (seed, epoch), and the module restores the RNG state (dropout) saved
    with the checkpoint, so the resumed run performs the very same float operations."""
    data = tmp_path / "data"
    overrides = [f"data.data_dir={data}", *TINY, "trainer.max_epochs=2"]

    def train_cmd(run_dir: Path, *extra: str) -> list[str]:
        return script_command("train", f"hydra.run.dir={run_dir}", *overrides, *extra)

    full, killed = tmp_path / "full", tmp_path / "killed"
    done = run_in_repo(train_cmd(full))
    assert done.returncode == 0, done.stderr[-3000:]
    kill_when(train_cmd(killed), lambda: (killed / "checkpoints" / "last.ckpt").exists())
    assert not (killed / "metrics.json").exists()
    resumed = run_in_repo(train_cmd(killed, "ckpt_path=last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def saved(run_dir: Path) -> dict:  # the runs differ only in the paths they record
        return json.loads((run_dir / "metrics.json").read_text().replace(str(run_dir), "<run>"))

    a, b = saved(full), saved(killed)
    assert a["test"]["test/auroc"] > 0.5
    assert a == b
