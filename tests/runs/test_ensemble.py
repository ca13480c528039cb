"""Hybrid network and ensembles: fitted on validation, exported, and scored by the same scorer."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from churnwatch.artifact.model_file import load_artifact
from churnwatch.config.compose import compose
from churnwatch.errors import ArtifactError
from churnwatch.runs.ensemble import fit_weights, train_ensemble
from churnwatch.runs.predictions import read_predictions
from churnwatch.runs.record import read_timings
from churnwatch.runs.train import train
from churnwatch.scoring.scorer import Scorer
from tests.helpers import TINY


def test_weights_are_a_convex_combination_that_prefers_the_informative_member():
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.3
    good = np.clip(0.3 + 0.4 * (y - 0.3) + rng.normal(0, 0.1, len(y)), 0.01, 0.99)
    noise = rng.uniform(0.01, 0.99, len(y))
    w = fit_weights(np.column_stack([noise, good, noise[::-1]]), y)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w[1] > 0.8
    assert fit_weights(good[:, None], y).tolist() == [1.0]


def _scoring_reproduces_test_predictions(run_dir, data_dir) -> bool:
    """Scoring (churnwatch score) on the raw events at the test cutoff gives the run's test probabilities."""
    test = read_predictions(run_dir).query("split == 'test'").set_index("customer_id")
    scored = (
        Scorer(run_dir / "model.pt", device="cpu")
        .score(
            data_dir / "events.parquet",
            data_dir / "customers.parquet",
            as_of=test["cutoff"].iloc[0],
            progress=False,
        )
        .set_index("customer_id")
    )
    return bool(np.allclose(scored.loc[test.index, "churn_probability"], test["probability"], atol=1e-5))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    out = {}
    data_only = [o for o in TINY if not o.startswith("model.")]
    for name, extra in (
        ("lstm", TINY),
        ("hybrid", ["model=hybrid", *TINY]),
        ("logreg", ["model=logreg", *data_only]),
        (
            "lightgbm",
            ["model=lightgbm", "model.params.n_estimators=60", "++model.params.n_jobs=1", *data_only],
        ),
    ):
        cfg = compose("train", [f"data.data_dir={root / 'data'}", f"paths.output_dir={root / name}", *extra])
        (root / name).mkdir()
        out[name] = train(cfg)
    return root, out


def test_hybrid_exports_and_scores_from_raw_events_like_training(runs):
    root, metrics = runs
    _, meta = load_artifact(root / "hybrid" / "model.pt")
    assert meta["features"]["n_aggregates"] == len(meta["featurizer"]["fill"]) > 50
    # the scorer recomputes the aggregates from raw events: same probabilities as the test pass
    assert _scoring_reproduces_test_predictions(root / "hybrid", root / "data")
    assert metrics["hybrid"]["test"]["test/auroc"] > 0.6


def test_network_ensemble_fits_on_validation_exports_and_scores(runs, tmp_path):
    root, _ = runs
    metrics = train_ensemble([root / "lstm", root / "hybrid"], tmp_path, export=True)
    weights = np.array(list(metrics["weights"].values()))
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    assert 0.5 < metrics["test"]["test/auroc"] <= 1
    _, meta = load_artifact(tmp_path / "model.pt")
    assert meta["ensemble"]["weights"] == pytest.approx(weights.tolist())
    assert _scoring_reproduces_test_predictions(tmp_path, root / "data")


def test_ensemble_of_a_network_and_a_baseline_exports_and_scores(runs, tmp_path):
    """LightGBM reads the aggregates raw, the hybrid fuses them scaled: the file takes them raw and scales
    them for the hybrid itself (and is no tabular model, though its first member is)."""
    root, _ = runs
    metrics = train_ensemble([root / "lightgbm", root / "hybrid"], tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["weights"]) == {"hybrid", "lightgbm"}
    assert sum(saved["weights"].values()) == pytest.approx(1.0)
    assert "export_skipped" not in metrics and read_timings(tmp_path)["scoring_customers_per_s"] > 0
    _, meta = load_artifact(tmp_path / "model.pt")
    assert meta["features"]["raw_aggregates"] and "kind" not in meta
    assert meta["ensemble"]["nets"][0] == {"estimator": "lightgbm"}
    assert _scoring_reproduces_test_predictions(tmp_path, root / "data")


def test_a_baseline_with_other_sequence_settings_joins_networks_that_must_share_theirs(runs, tmp_path):
    """A baseline reads the aggregates alone: its vocabulary and max_len may differ from the network's
    (Online Retail's logreg and tuned hybrid do). Two networks must share their encoder."""
    root, _ = runs
    data_only = [o for o in TINY if not o.startswith("model.")]
    other = ["data.vocab.max_size=20", "data.max_len=16"]
    for name, extra in (("logreg", ["model=logreg", *data_only]), ("lstm", TINY)):
        (tmp_path / name).mkdir()
        train(
            compose(
                "train",
                [f"data.data_dir={root / 'data'}", f"paths.output_dir={tmp_path / name}", *extra, *other],
            )
        )
    metrics = train_ensemble([tmp_path / "logreg", root / "hybrid"], tmp_path / "mixed")
    assert "export_skipped" not in metrics
    _, meta = load_artifact(tmp_path / "mixed" / "model.pt")
    assert meta["encoder"]["max_len"] != 16  # the network's encoder: what scoring rebuilds
    assert _scoring_reproduces_test_predictions(tmp_path / "mixed", root / "data")
    metrics = train_ensemble([tmp_path / "lstm", root / "hybrid"], tmp_path / "networks")
    assert "data config (max_len, vocab)" in metrics["export_skipped"]


def test_a_member_without_model_file_leaves_the_ensemble_evaluation_only(runs, tmp_path):
    root, _ = runs
    shutil.copytree(root / "logreg", tmp_path / "logreg", ignore=shutil.ignore_patterns("model.pt"))
    metrics = train_ensemble([root / "hybrid", tmp_path / "logreg"], tmp_path / "ensemble")
    assert set(metrics["weights"]) == {"hybrid", "logreg"}
    assert "no model.pt" in metrics["export_skipped"] and not (tmp_path / "ensemble" / "model.pt").exists()


def test_members_from_different_splits_are_refused(runs, tmp_path):
    root, _ = runs
    other = tmp_path / "other"
    other.mkdir()
    cfg = compose(
        "train", [f"data.data_dir={root / 'data'}", f"paths.output_dir={other}", "model=logreg", "seed=7"]
    )
    train(cfg)
    with pytest.raises(ValueError, match="different rows"):
        train_ensemble([root / "logreg", other], tmp_path / "ens")


def test_a_member_model_file_that_fails_its_checks_is_an_error_not_a_skipped_export(runs, tmp_path):
    """'export_skipped' is for ensembles with no single TorchScript form; a member file that is broken or
    tampered with must stop the export loudly."""
    root, _ = runs
    members = []
    for name in ("lstm", "hybrid"):
        shutil.copytree(root / name, tmp_path / name, ignore=shutil.ignore_patterns("checkpoints"))
        members.append(tmp_path / name)
    broken = tmp_path / "lstm" / "model.pt"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=r"lstm/model\.pt: not a readable churnwatch model"):
        train_ensemble(members, tmp_path / "ensemble", export=True)


def test_the_ensemble_records_calibration_per_stage_and_its_report_shows_it(runs, tmp_path):
    """Like every run: metrics.json's calibration holds each stage's figures before and after calibration
    (beside each member's Platt slope and intercept), and report.html's calibration table shows them."""
    root, _ = runs
    metrics = train_ensemble([root / "lstm", root / "logreg"], tmp_path, export=False)
    calibration = json.loads((tmp_path / "metrics.json").read_text())["calibration"]
    assert calibration == metrics["calibration"] and set(calibration["members"]) == {"lstm", "logreg"}
    for stage in ("val", "test"):
        assert set(calibration[stage]) == {"ece_raw", "ece_calibrated", "log_loss_raw", "log_loss_calibrated"}
    assert metrics["report"] == str(tmp_path / "report.html")
    report = (tmp_path / "report.html").read_text()
    table = report.split("<h2>Calibration (platt)</h2>")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>(\w+)</td>((?:<td>[^<]*</td>)+)</tr>", table)
    assert [split for split, _ in rows] == ["val", "test"]
    for _, cells in rows:  # ECE and log loss before and after, every cell filled
        values = [float(v) for v in re.findall(r"<td>([^<]*)</td>", cells)]
        assert len(values) == 4 and all(0 <= v < 2 for v in values)
