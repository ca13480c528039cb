"""Hybrid network and ensembles: fitted on validation, exported, and scored by the same scorer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from churnwatch.ensemble import fit_weights, train_ensemble
from churnwatch.errors import ArtifactError
from churnwatch.export import load_artifact
from churnwatch.predictions import read_predictions
from churnwatch.scoring import Scorer
from churnwatch.training import read_timings, train

from .test_config import compose
from .test_end_to_end import TINY


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


def test_ensemble_with_a_baseline_is_evaluated_but_not_exported(runs, tmp_path):
    root, _ = runs
    metrics = train_ensemble([root / "hybrid", root / "logreg"], tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["weights"]) == {"hybrid", "logreg"}
    assert sum(saved["weights"].values()) == pytest.approx(1.0)
    assert "no model.pt" in metrics["export_skipped"] and not (tmp_path / "model.pt").exists()
    assert read_timings(tmp_path)["scoring_customers_per_s"] > 0  # the members' rates combined


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
