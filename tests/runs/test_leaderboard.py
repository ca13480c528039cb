"""Leaderboard and learning/validation curves: every run lands in the tables; statistics come from runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from churnwatch.config.compose import compose
from churnwatch.data.snapshots import SnapshotPlan
from churnwatch.errors import ConfigError
from churnwatch.pipeline.dataset import DATA_REPORT
from churnwatch.runs.curves import OWN_KEYS as CURVE_KEYS
from churnwatch.runs.curves import run_curve
from churnwatch.runs.leaderboard import OWN_KEYS, model_run, origin_overrides, passthrough, run_leaderboard


@pytest.fixture(scope="module")
def data_overrides(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    return [f"data.data_dir={root / 'data'}", "data.generate.n_customers=1200"]


def test_command_line_overrides_reach_every_run_except_the_scripts_own_keys():
    given = [
        "experiment=demo",
        "models=[a,b]",
        "seeds=[1]",
        "model=lstm",
        "trainer.max_epochs=2",
        "hydra.run.dir=x",
        "origins=[2024-08-15]",
    ]
    assert passthrough(given, OWN_KEYS) == ["experiment=demo", "trainer.max_epochs=2"]
    assert passthrough(["model=lightgbm", "values=[1,2]", "param=a.b"], CURVE_KEYS) == ["model=lightgbm"]


def test_a_model_uses_the_experiments_tuned_variant_where_one_exists():
    def compose_train(overrides):
        return compose("train", overrides)

    assert model_run(compose_train, ["experiment=online_retail", "seed=3"], "lstm") == [
        "seed=3",
        "experiment=online_retail_lstm",
    ]
    assert model_run(compose_train, ["experiment=online_retail"], "logreg") == [
        "experiment=online_retail",
        "model=logreg",
    ]
    assert model_run(compose_train, [], "gru") == ["model=gru"]


@pytest.mark.slow  # the longest run-level tests: make test-slow
def test_leaderboard_trains_every_model_and_seed_and_summarises_them(data_overrides, tmp_path):
    cfg = compose(
        "leaderboard", ["models=[logreg,naive_bayes]", "seeds=[1,2]", "ensembles=[[logreg,naive_bayes]]"]
    )
    summary = run_leaderboard(cfg, lambda o: compose("train", o), tmp_path, data_overrides)
    runs = pd.read_csv(tmp_path / "leaderboard_runs.csv")
    assert len(runs) == 6 and set(runs["model"]) == {"logreg", "naive_bayes", "ensemble(logreg+naive_bayes)"}
    for model, group in runs.groupby("model"):
        row = summary.set_index("model").loc[model]
        assert row["test/auroc mean"] == pytest.approx(group["test/auroc"].mean())
        assert row["test/auroc std"] == pytest.approx(group["test/auroc"].std(ddof=1))
        assert row["runs"] == 2
    assert summary["test/auroc mean"].is_monotonic_decreasing
    text = (tmp_path / "leaderboard.md").read_text()
    for column in ("AUROC", "AP", "F1@thr", "lift@10%", "capture@10%", "Brier", "train s", "scoring cust/s"):
        assert column in text
    assert " ± " in text
    assert "origin" not in runs.columns and "AUROC @" not in text  # one test cutoff: no per-origin columns
    # a second call reuses the finished runs instead of training again
    before = (tmp_path / "logreg" / "seed_1" / "metrics.json").stat().st_mtime_ns
    run_leaderboard(cfg, lambda o: compose("train", o), tmp_path, data_overrides)
    assert (tmp_path / "logreg" / "seed_1" / "metrics.json").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "cutoffs",
    [
        [],  # the last training cutoff follows the test cutoff by itself
        ["data.last_train_cutoff=2024-07-20", "data.first_train_cutoff=2024-03-01"],
        ["data.first_train_cutoff=2024-05-01"],
        ["data.train_cutoffs=[2024-02-10,2024-05-01,2024-06-11]"],
    ],
)
def test_an_origin_moves_the_training_cutoffs_with_the_test_cutoff(cutoffs):
    base = compose("train", cutoffs).data
    moved = compose("train", [*cutoffs, *origin_overrides(base, "2024-08-01")]).data
    before, after = SnapshotPlan.from_config(base), SnapshotPlan.from_config(moved)
    shift = pd.Timestamp("2024-08-01") - before.test_cutoff
    assert after.test_cutoff == pd.Timestamp("2024-08-01")
    assert after.train_cutoffs == tuple(c + shift for c in before.train_cutoffs)


def test_an_origin_needs_a_test_cutoff_to_move_explicit_training_cutoffs():
    data = compose("train", ["data.test_cutoff=null", "data.last_train_cutoff=2024-07-20"]).data
    with pytest.raises(ConfigError, match="data.test_cutoff"):
        origin_overrides(data, "2024-08-01")


@pytest.mark.slow  # the longest run-level tests: make test-slow
def test_rolling_origin_leaderboard_trains_each_origin_and_reports_each(data_overrides, tmp_path):
    origins = ["2024-09-01", "2024-10-15"]
    cfg = compose("leaderboard", ["models=[logreg]", "seeds=[1]", f"origins=[{','.join(origins)}]"])
    tiny = ["report=false", "insights.enabled=false", "data.n_snapshots=2"]
    overrides = [*data_overrides, *tiny, "data.last_train_cutoff=2024-08-01"]
    summary = run_leaderboard(cfg, lambda o: compose("train", o), tmp_path, overrides)
    runs = pd.read_csv(tmp_path / "leaderboard_runs.csv")
    assert runs["origin"].tolist() == origins
    for origin, last in zip(origins, ["2024-06-18", "2024-08-01"], strict=True):
        run_dir = tmp_path / "logreg" / f"origin_{origin}" / "seed_1"
        report = json.loads((run_dir / DATA_REPORT).read_text())
        assert report["test_cutoff"] == origin
        assert report["train_cutoffs"] == [str((pd.Timestamp(last) - pd.Timedelta(days=30)).date()), last]
    row = summary.set_index("model").loc["logreg"]
    assert row["runs"] == 2
    assert row["test/auroc mean"] == pytest.approx(runs["test/auroc"].mean())
    assert row["test/auroc std"] == pytest.approx(runs["test/auroc"].std(ddof=1))
    for origin, auroc in zip(runs["origin"], runs["test/auroc"], strict=True):
        assert row[f"test/auroc @{origin}"] == pytest.approx(auroc)
    text = (tmp_path / "leaderboard.md").read_text()
    table_head = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert all(f"AUROC @{o}" in table_head for o in origins) and " ± " in text
    # finished runs are reused per origin
    done = tmp_path / "logreg" / "origin_2024-09-01" / "seed_1" / "metrics.json"
    before = done.stat().st_mtime_ns
    run_leaderboard(cfg, lambda o: compose("train", o), tmp_path, overrides)
    assert done.stat().st_mtime_ns == before


@pytest.mark.slow  # 15-35 s; `make test-slow` runs it
def test_learning_curve_grows_the_training_set_and_plots(data_overrides, tmp_path):
    cfg = compose("curves", ["model=logreg", "kind=learning", "fractions=[0.3,1.0]"])
    runs = run_curve(cfg, lambda o: compose("train", o), tmp_path, ["model=logreg", *data_overrides])
    assert runs["train_customers"].is_monotonic_increasing and runs["train_customers"].nunique() == 2
    # validation and test customers do not change with the training fraction
    assert runs["val_rows"].nunique() == 1 and runs["test_rows"].nunique() == 1
    assert np.isfinite(runs[["train/auroc", "val/auroc", "test/auroc"]].to_numpy()).all()
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "curve.csv")) == 2


@pytest.mark.slow  # 15-35 s; `make test-slow` runs it
def test_validation_curve_sets_the_parameter(data_overrides, tmp_path):
    cfg = compose(
        "curves", ["model=decision_tree", "kind=validation", "param=model.params.max_depth", "values=[1,6]"]
    )
    runs = run_curve(cfg, lambda o: compose("train", o), tmp_path, ["model=decision_tree", *data_overrides])
    assert runs["value"].tolist() == [1, 6]
    # a deeper tree fits its own training data better: the parameter really reached the model
    assert runs["train/auroc"].iloc[1] > runs["train/auroc"].iloc[0]
