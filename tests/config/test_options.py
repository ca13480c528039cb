"""Every numeric option of every command is checked up front against one table (churnwatch.config.options): a
bad value fails in one line naming the key, the value and the rule, before any work and before a run dir, from
the command line and from the Python API alike. The shipped configs all pass and every numeric key in them
has a rule."""

from __future__ import annotations

import numbers
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from churnwatch.cli.errors import composition_error
from churnwatch.config.compose import compose, config_dir
from churnwatch.config.options import check_config, check_values, problems, rule_of
from churnwatch.errors import ConfigError
from churnwatch.jobs.monitor import run_monitor
from churnwatch.jobs.score import ScoreJob, ScoringResult, score_file
from churnwatch.scoring.scorer import Scorer
from churnwatch.scoring.shards import merge_shards

NO_MODEL = Path("no_model.pt")  # never read: the option checks come first
UNCHECKED = {"trainer.devices"}  # an int, a list or a string such as "0,1": Lightning's own rule


def _configs() -> list[tuple[str, list[str]]]:
    """Every command's config, and train with every model, trainer and experiment."""
    conf = config_dir()
    found = [(p.stem, []) for p in sorted(conf.glob("*.yaml"))]
    for group in ("model", "trainer", "experiment"):
        found += [("train", [f"{group}={p.stem}"]) for p in sorted((conf / group).glob("*.yaml"))]
    found.append(("train", ["data=online_retail"]))
    return found


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _leaves(v, f"{prefix}{'.' if prefix else ''}{k}")]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _leaves(v, f"{prefix}[{i}]")]
    return [(prefix, node)]


def test_the_shipped_configs_pass_and_every_numeric_key_in_them_has_a_rule() -> None:
    for name, overrides in _configs():
        cfg = compose(name, overrides)
        check_config(cfg)
        numeric = [
            key
            for key, value in _leaves(OmegaConf.to_container(cfg, resolve=False))
            if isinstance(value, numbers.Real) and not isinstance(value, bool)
        ]
        assert [k for k in numeric if rule_of(k) is None and k not in UNCHECKED] == [], (name, overrides)


# (command, override, the line): each command's numeric keys, through the composed config as the CLI checks it
CASES = [
    ("score", "chunk_customers=0", "chunk_customers=0: must be an integer ≥ 1"),
    ("score", "batch_size=-1", "batch_size=-1: must be null or an integer ≥ 1"),
    ("score", "num_shards=0", "num_shards=0: must be null or an integer ≥ 1"),
    ("score", "num_shards=2 shard_index=2", "shard_index=2: must be < num_shards=2"),
    ("score", "shard_index=-1", "shard_index=-1: must be an integer ≥ 0"),
    ("score", "part_events=0", "part_events=0: must be an integer ≥ 1"),
    ("score", "block_rows=0", "block_rows=0: must be an integer ≥ 1"),
    ("score", "show_top=-1", "show_top=-1: must be an integer ≥ 0"),
    ("score", "value_days=0", "value_days=0: must be an integer ≥ 1"),
    ("score", "drivers.top_n=0", "drivers.top_n=0: must be an integer ≥ 1"),
    ("score", "drivers.steps=0", "drivers.steps=0: must be an integer ≥ 1"),
    ("score", "drivers.batch_size=0", "drivers.batch_size=0: must be null or an integer ≥ 1"),
    ("merge_scores", "block_rows=0", "block_rows=0: must be an integer ≥ 1"),
    ("monitor", "thresholds.psi.warn=-0.1", "thresholds.psi.warn=-0.1: must be null or a number ≥ 0"),
    (
        "monitor",
        "thresholds.volume_ratio.retrain=inf",
        "thresholds.volume_ratio.retrain=inf: must be null or",
    ),
    (
        "monitor",
        "thresholds.psi.warn=0.5 thresholds.psi.retrain=0.2",
        "thresholds.psi.warn=0.5: must be ≤ thresholds.psi.retrain=0.2",
    ),
    ("train", "trainer.max_epochs=0", "trainer.max_epochs=0: must be an integer ≥ 1"),
    ("train", "data.max_len=0", "data.max_len=0: must be an integer ≥ 1"),
    ("train", "data.horizon_days=0", "data.horizon_days=0: must be an integer ≥ 1"),
    ("train", "data.generate.n_customers=0", "data.generate.n_customers=0: must be an integer ≥ 1"),
    ("train", "data.val_fraction=1", "data.val_fraction=1.0: must be a number in (0, 1)"),  # a typed float
    ("train", "data.aggregates.windows=[7,0]", "data.aggregates.windows[1]=0: must be an integer ≥ 1"),
    ("train", "model.net.hidden=0", "model.net.hidden=0: must be an integer ≥ 1"),
    ("train", "model.net.dropout=1.0", "model.net.dropout=1.0: must be a number in [0, 1)"),
    ("train", "model.optimizer.lr=0", "model.optimizer.lr=0.0: must be a number > 0"),  # a typed float
    ("train", "model.loss.pos_weight=-1", "model.loss.pos_weight=-1: must be 'auto' or a number > 0"),
    (
        "train",
        "model=lightgbm model.params.num_leaves=1",
        "model.params.num_leaves=1: must be an integer ≥ 2",
    ),
    ("train", "seed=-1", "seed=-1: must be an integer in [0, 4294967295]"),
    ("train", "cv.folds=1", "cv.folds=1: must be null or an integer ≥ 2"),
    ("train", "thresholds.top_fraction=0", "thresholds.top_fraction=0.0: must be a number in (0, 1]"),
    ("prepare", "data.batch_size=0", "data.batch_size=0: must be an integer ≥ 1"),
    ("ensemble", "thresholds.high_k=0", "thresholds.high_k=0: must be an integer ≥ 1"),
    ("curves", "fractions=[0.5,0]", "fractions[1]=0: must be a number in (0, 1]"),
    ("leaderboard", "seeds=[1,-2]", "seeds[1]=-2: must be an integer in [0, 4294967295]"),
    ("make_synthetic", "n_customers=0", "n_customers=0: must be an integer ≥ 1"),
]


@pytest.mark.parametrize(("config", "override", "line"), CASES, ids=[f"{c}:{o}" for c, o, _ in CASES])
def test_a_bad_number_of_any_command_is_one_line_naming_key_value_and_rule(
    config: str, override: str, line: str
) -> None:
    cfg = compose(config, override.split())
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value).startswith(line), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("values", "ok"),
    [
        ({"block_rows": 1}, True),
        ({"block_rows": 100000.0}, True),  # 1e5 on the command line
        ({"block_rows": np.int64(3)}, True),
        ({"block_rows": True}, False),
        ({"block_rows": None}, False),
        ({"block_rows": float("inf")}, False),
        ({"block_rows": "3"}, False),
        ({"batch_size": None}, True),
        ({"model.loss.pos_weight": "auto"}, True),
        ({"model.loss.pos_weight": "often"}, False),
        ({"num_shards": 3, "shard_index": 2}, True),
        ({"thresholds.tier_share.warn": 0.05, "thresholds.tier_share.retrain": None}, True),
        ({"not_an_option": -1}, True),
    ],
)
def test_rules_refuse_bools_non_integers_non_finite_and_text_where_numbers_are_meant(
    values: dict[str, Any], ok: bool
) -> None:
    assert (problems(values) == []) is ok, problems(values)


def test_the_python_api_refuses_the_same_values_in_the_same_line_before_loading_the_model(
    tmp_path: Path,
) -> None:
    out = tmp_path / "scores.parquet"
    events = tmp_path / "events.csv"

    def score(**options: Any) -> ScoringResult:
        return score_file(ScoreJob(model_path=NO_MODEL, events_path=events, output_path=out, **options))

    calls = [
        (lambda: score(chunk_customers=0), "chunk_customers=0: must be"),
        (lambda: score(block_rows=0), "block_rows=0: must be"),
        (lambda: score(part_events=-5), "part_events=-5: must be"),
        (lambda: score(batch_size=-1), "batch_size=-1: must be null or"),
        (lambda: score(shard=(0, 0), as_of="2024-07-01"), "num_shards=0: must"),
        (lambda: score(drivers={"steps": 0}), "drivers.steps=0: must be"),
        (lambda: Scorer(NO_MODEL, batch_size=0), "batch_size=0: must be null or an integer ≥ 1"),
        (lambda: Scorer(NO_MODEL, value_days=-90), "value_days=-90: must be an integer ≥ 1"),
        (lambda: merge_shards(NO_MODEL, [tmp_path / "p.parquet"], out, block_rows=0), "block_rows=0: must"),
        (lambda: run_monitor(NO_MODEL, events, {"psi": {"warn": -1}}), "thresholds.psi.warn=-1: must be"),
        (
            lambda: run_monitor(NO_MODEL, events, {"psi": {"warn": 0.5, "retrain": 0.2}}),
            "thresholds.psi.warn=0.5: must be ≤ thresholds.psi.retrain=0.2",
        ),
    ]
    for call, line in calls:
        with pytest.raises(ConfigError, match="^" + line.replace("(", r"\(")):
            call()
    assert sorted(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="^chunk_customers=0: must be"):
        check_values({"chunk_customers": 0})


@pytest.mark.parametrize("value", ["1.5", "true", "nan", "lots"])
def test_a_typed_key_refuses_a_value_of_another_type_when_composed(value: str) -> None:
    """The typed scoring block (ScoreConfig) refuses what no rule needs to see; the command says it in one
    line (the CLI cases below)."""
    with pytest.raises(ConfigCompositionException) as refused:
        compose("score", [f"chunk_customers={value}"])
    line = composition_error(refused.value)
    assert line is not None and line.startswith(f"Error merging override chunk_customers={value}: ")
    assert "\n" not in line


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    cmd = [sys.executable, "-m", "churnwatch", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["score", "model_path=m.pt", "events_path=e.csv", "output_path=o.parquet", "chunk_customers=0"],
         "churnwatch score: chunk_customers=0: must be an integer ≥ 1"),
        (["merge-scores", "model_path=m.pt", "parts=[a.parquet]", "output_path=o.parquet", "block_rows=0"],
         "churnwatch merge-scores: block_rows=0: must be an integer ≥ 1"),
        (["monitor", "model_path=m.pt", "events_path=e.csv", "thresholds.psi.warn=0.5",
          "thresholds.psi.retrain=0.2"],
         "churnwatch monitor: thresholds.psi.warn=0.5: must be ≤ thresholds.psi.retrain=0.2"),
        (["train", "trainer.max_epochs=0"], "churnwatch train: trainer.max_epochs=0: must be an integer ≥ 1"),
        # refused by the typed configs when composed, before any rule runs
        (["score", "model_path=m.pt", "events_path=e.csv", "output_path=o.parquet", "chunk_customers=1.5"],
         "churnwatch score: Error merging override chunk_customers=1.5: Value '1.5' of type 'float' could "
         "not be converted to Integer (churnwatch score --help lists every key)"),
        (["train", "data.max_lenn=3"], "churnwatch train: Could not override 'data.max_lenn': Key 'max_lenn' "
         "not in 'DataConfig' (churnwatch train --help lists every key)"),
        (["score", "playbook=nope"], "churnwatch score: In 'score': Could not find 'playbook/nope'; options: "
         "default (churnwatch score --help lists every key)"),
    ],
)  # fmt: skip
def test_the_cli_says_one_line_exits_2_and_leaves_no_run_dir(
    args: list[str], line: str, tmp_path: Path
) -> None:
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [line]
    assert sorted(tmp_path.iterdir()) == []  # no checkpoints/<task>/<timestamp>/
