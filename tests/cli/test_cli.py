"""The `churnwatch` command: subcommands, `--help` from each config's own keys and comments, one line for a
missing key (and no run dir left behind), scripts/*.py as thin wrappers of the same commands."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from churnwatch.cli import COMMANDS
from churnwatch.cli.app import command_help, require_packages
from churnwatch.cli.errors import is_user_error, one_line_errors
from churnwatch.config.compose import config_dir
from churnwatch.errors import ArtifactError, ConfigError, DataValidationError, MonitorError
from churnwatch.models.calibration import Calibrator
from tests.helpers import REPO


def churnwatch(*args: str, cwd: Path, script: str | None = None) -> subprocess.CompletedProcess:
    """`python -m churnwatch <args>` (or `python scripts/<script>.py <args>`) from `cwd`."""
    cmd = (
        [sys.executable, str(REPO / "scripts" / f"{script}.py")]
        if script
        else [sys.executable, "-m", "churnwatch"]
    )
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_the_command_lists_its_subcommands_and_refuses_unknown_ones(tmp_path):
    proc = churnwatch("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for name in COMMANDS:
        assert f"\n  {name} " in proc.stdout
    proc = churnwatch("scroe", "model_path=m", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"churnwatch: unknown command 'scroe'; one of {', '.join(COMMANDS)} (churnwatch --help)"
    ]
    assert churnwatch("--version", cwd=tmp_path).stdout.startswith("churnwatch 0.")


def test_score_help_lists_the_scoring_keys_with_their_comments_not_the_training_groups(tmp_path):
    proc = churnwatch("score", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("usage: churnwatch score model_path=M events_path=E output_path=O")
    for line in ("model_path: ???", "precision: fp32", "# auto | cpu | cuda", "top_n: 3"):
        assert line in out
    assert "playbook=default" in out
    for training in ("model=", "trainer=", "data=", "max_epochs", "defaults:"):
        assert training not in out
    assert not list(tmp_path.iterdir())  # --help writes nothing
    # the script in a checkout is the same command
    assert churnwatch("--help", cwd=tmp_path, script="score").stdout == out


@pytest.mark.parametrize("config", sorted(c.replace("-", "_") for c in COMMANDS))
def test_every_command_has_help_built_from_its_own_config(config):
    text = command_help(config)
    assert text.startswith(f"usage: churnwatch {config.replace('_', '-')}")
    assert f"keys ({config_dir() / config}.yaml; ??? = required" in text
    assert "defaults:" not in text


def test_train_help_lists_its_config_groups_with_their_options():
    text = command_help("train")
    groups = text.split("config groups (group=option):")[1]
    assert "model=lstm  (options: " in groups and "transformer" in groups and "logreg" in groups
    assert "trainer=cpu  (options: cpu, ddp, gpu)" in groups
    assert "hydra" not in groups.split("Hydra:")[0] and "paths=" not in groups
    assert "and every key and group of `churnwatch train`" in command_help("leaderboard")


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["score"], "model_path, events_path, output_path"),
        (["score", "model_path=m.pt", "events_path=e.parquet"], "output_path"),
        (["report"], "run_dir"),
        (["ensemble"], "members"),
        (["monitor", "events_path=e.parquet"], "model_path"),
    ],
)
def test_a_missing_required_key_is_one_line_and_leaves_no_run_dir(tmp_path, args, missing):
    proc = churnwatch(*args, cwd=tmp_path)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    name = f"churnwatch {args[0]}"
    assert line.startswith(
        f"{name}: missing required key{'s' if ',' in missing else ''} {missing}: e.g. {name}"
    )
    assert not list(tmp_path.iterdir())  # no checkpoints/<task>/<timestamp>/ (nor the report's log dir)


def test_an_unknown_scoring_engine_is_one_line(tmp_path):
    proc = churnwatch(
        "score",
        "model_path=m.pt",
        "events_path=e.parquet",
        "output_path=o.parquet",
        "engine=spark",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "churnwatch score: engine must be 'local' or 'ray', got 'spark'"
    ]


def test_an_option_whose_package_is_not_installed_names_the_extra(tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None:
        pytest.skip("hydra-ray-launcher is installed here")
    proc = churnwatch("train", "-m", "hydra/launcher=ray_cluster", "model=logreg", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "churnwatch train: hydra/launcher=ray_cluster needs the optional package(s) "
        "hydra_plugins.hydra_ray_launcher: pip install 'churnwatch[ray]'"
    ]
    assert not list(tmp_path.iterdir())


def test_a_bug_keeps_its_traceback_while_a_refused_config_value_is_one_line(capsys, monkeypatch):
    """Only churnwatch's own user-error types are shortened: a ValueError that a built-in raises inside
    churnwatch code (here float() of a malformed calibration state) is a bug, and keeps its traceback."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @one_line_errors("churnwatch test")
    def calibrate(method: str, state: dict) -> Calibrator:
        Calibrator.fit(method, np.array([0.2, 0.4, 0.7, 0.9]), np.array([0, 1, 0, 1]))
        return Calibrator.from_state(state)

    with pytest.raises(ValueError, match="could not convert string to float") as bug:
        calibrate("platt", {"method": "platt", "slope": "steep"})
    tb = bug.value.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_globals["__name__"] == "churnwatch.models.calibration"  # raised in our code
    assert not is_user_error(bug.value)
    with pytest.raises(SystemExit) as exited:
        calibrate("magic", {})
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("churnwatch test: calibration must be one of") and line.endswith("got 'magic'")
    for error in (ConfigError("x"), DataValidationError("x"), ArtifactError("x"), MonitorError("x")):
        assert is_user_error(error)


def test_a_command_whose_extra_is_missing_stops_in_one_line_naming_it(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        require_packages("churnwatch serve", ("fastapi", "churnwatch_no_such_package"), "serve")
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "churnwatch serve: needs the optional package(s) churnwatch_no_such_package: "
        "pip install 'churnwatch[serve]'"
    )
