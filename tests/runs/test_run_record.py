"""The run record: metrics.json, written last and whole, marks a finished run; what a model file says about
itself (ModelMeta) is the same dict for every writer."""

from __future__ import annotations

import json

import pytest

from churnwatch.artifact.metadata import FORMAT_VERSION, ModelMeta, RunFacts
from churnwatch.config.compose import compose
from churnwatch.models.calibration import Calibrator
from churnwatch.models.thresholds import Operating
from churnwatch.runs.record import METRICS_FILE, refuse_finished_run
from churnwatch.runs.train import train

STATE = {"encoder": {"max_len": 8}, "featurizer": {"scale_mean": [0.0]}, "train_positive_rate": 0.25}


def test_a_run_whose_report_fails_leaves_no_metrics_json_and_is_not_finished(tmp_path):
    """metrics.json is the finished-run marker (the leaderboard reuses such run dirs): a report that
    cannot be written (its figures' folder is taken by a file) must not leave one behind."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "report").write_text("not a folder")
    cfg = compose(
        "train",
        [
            "model=logreg",
            f"data.data_dir={tmp_path / 'data'}",
            "data.generate.n_customers=800",
            f"paths.output_dir={run}",
            "insights.enabled=false",
        ],
    )
    with pytest.raises(FileExistsError):
        train(cfg)
    assert not (run / METRICS_FILE).exists()
    assert (run / "predictions.parquet").exists() and (run / "timings.json").exists()  # written before it
    refuse_finished_run(cfg)  # not finished: training into it again needs no overwrite=true
    (run / "report").unlink()
    metrics = train(cfg)
    assert json.loads((run / METRICS_FILE).read_text()) == metrics
    written = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    before = ("timings.json", "predictions.parquet", "report.html", "model.pt")
    assert all(written[METRICS_FILE] >= written[name] for name in before)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temp files left


def test_model_meta_serialises_one_run_and_an_ensemble_as_their_files_always_had_them():
    op = Operating(0.4, 0.7, 0.5, {"threshold": "max_f1"})
    facts = RunFacts(test_metrics={"test/auroc": 0.8}, expected_tiers=[{"tier": "high"}])
    meta = ModelMeta.of_run(
        data={"data_dir": "d"},
        data_state=STATE,
        op=op,
        calibrator=Calibrator(),
        features={"n_aggregates": 1, "raw_aggregates": True},
        facts=facts,
        estimator="logreg",
    ).to_dict()
    assert meta["format_version"] == FORMAT_VERSION and meta["kind"] == "tabular"
    rule = {"threshold": "max_f1"}
    assert meta["tiers"] == {"high": 0.7, "medium": 0.5, "rule": rule, "expected": [{"tier": "high"}]}
    assert meta["reference"] is None and meta["drivers"] == {} and meta["calibration"]["method"] == "none"
    assert {"created_at", "versions"} <= set(meta) and "net" not in meta and "source_checkpoint" not in meta
    ensemble = ModelMeta.of_ensemble(
        meta, op=op, features={"n_aggregates": 1}, test_metrics=None, ensemble={"names": ["a"]}
    ).to_dict()
    assert ensemble["tiers"] == {"high": 0.7, "medium": 0.5, "rule": rule}
    assert ensemble["versions"] == meta["versions"] and ensemble["test_metrics"] == {}
    for own in ("created_at", "calibration", "drivers", "reference", "kind", "estimator"):  # a member's own
        assert own not in ensemble
