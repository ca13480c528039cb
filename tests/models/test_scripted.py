"""Tabular baselines as TorchScript: the scripted estimator gives the native probabilities, and a baseline's
model.pt scores, explains and monitors like a network's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from churnwatch.artifact.checks import check_meta
from churnwatch.artifact.model_file import load_artifact
from churnwatch.config.compose import compose
from churnwatch.errors import ArtifactError
from churnwatch.jobs.monitor import run_monitor
from churnwatch.models.scripted import NotScriptable, script_estimator
from churnwatch.models.tabular import build_estimator, fit_estimator
from churnwatch.pipeline.datamodule import ChurnDataModule
from churnwatch.runs.predictions import read_predictions
from churnwatch.runs.train import train
from churnwatch.scoring.scorer import Scorer
from tests.helpers import MONITOR_THRESHOLDS

QUICK = {"lightgbm": {"n_estimators": 60, "n_jobs": 1}, "random_forest": {"n_estimators": 30}}
"""Small ensembles, one thread (LightGBM's default takes every core, and crawls on a busy machine)."""
TREES = ("decision_tree", "random_forest", "lightgbm")
"""Estimators that fit and predict with missing values."""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("scripted") / "data"


@pytest.fixture(scope="module")
def tables(data_dir):
    """Training and test aggregates of small synthetic data, with their churn labels."""
    cfg = compose("train", [f"data.data_dir={data_dir}", "data.generate.n_customers=1500"])
    dm = ChurnDataModule(cfg.data)
    dm.setup("fit")
    return dm.data.train.aggregates, dm.data.test.aggregates, dm.data.train.snaps.label.astype(int)


def _holes(values: np.ndarray, categorical: list[int], share: float, seed: int) -> np.ndarray:
    """A copy with `share` of the numeric cells missing (NaN)."""
    out = values.copy()
    missing = np.random.default_rng(seed).random(out.shape) < share
    missing[:, categorical] = False
    out[missing] = np.nan
    return out


def _fitted(name: str, tables, nan: bool):
    train_table, test_table, labels = tables
    params = OmegaConf.to_container(compose("train", [f"model={name}"]).model, resolve=True)["params"]
    params.update(QUICK.get(name, {}))
    estimator = build_estimator(name, params, train_table, 0)
    cat = [train_table.names.index(c) for c in train_table.categorical]
    x_train, x_test = train_table.values, test_table.values.copy()
    if nan:  # missing values in training (LightGBM's missing_type NaN) and at scoring
        x_train, x_test = _holes(x_train, cat, 0.1, 0), _holes(x_test, cat, 0.2, 1)
    x_test[:4, cat[0]] = [-1.0, 0.5, 99.0, 1e6]  # categories never seen: negative, fractional, unknown
    fit_estimator(estimator, name, x_train, labels, train_table)
    return estimator, x_test


@pytest.mark.parametrize("name", ["logreg", "naive_bayes", "linear_svm", "btyd", *TREES])
def test_scripted_estimator_gives_the_native_probabilities(name, tables):
    estimator, x = _fitted(name, tables, nan=name in TREES)
    scripted = torch.jit.script(script_estimator(estimator, name, tables[0].names))
    got = scripted(torch.from_numpy(x)).numpy()
    native = estimator.predict_proba(x)[:, 1]
    assert np.abs(got - native).max() < 1e-5, np.abs(got - native).max()
    assert native.std() > 0.05  # a model that says something, so agreeing means something


def test_lightgbm_categorical_and_zero_as_missing_splits(tables):
    """LightGBM's other split kinds: categorical (the static attributes) and missing_type Zero."""
    estimator, x = _fitted("lightgbm", tables, nan=True)
    dump = str(estimator.booster_.dump_model())
    assert "'decision_type': '=='" in dump and "'missing_type': 'NaN'" in dump
    estimator.set_params(zero_as_missing=True)
    fit_estimator(estimator, "lightgbm", tables[0].values, tables[2], tables[0])
    assert "'missing_type': 'Zero'" in str(estimator.booster_.dump_model())
    scripted = script_estimator(estimator, "lightgbm", tables[0].names)
    x[:50, :20] = 0.0
    got = scripted(torch.from_numpy(x)).numpy()
    assert np.abs(got - estimator.predict_proba(x)[:, 1]).max() < 1e-5


@pytest.mark.parametrize("name", ["random_forest", "lightgbm"])
def test_tree_occlusion_walks_only_the_paths_it_changes_and_matches_the_full_forwards(name, tables):
    estimator, x = _fitted(name, tables, nan=False)
    scripted = torch.jit.script(script_estimator(estimator, name, tables[0].names))
    x = torch.from_numpy(x[:64])
    center = torch.from_numpy(tables[0].values.mean(axis=0, dtype=np.float64))
    every_column = []
    for j in range(x.shape[1]):
        occluded = x.clone()
        occluded[:, j] = center[j].float()
        every_column.append(scripted(occluded))
    expected = torch.stack(every_column, dim=1)
    assert torch.allclose(scripted.occluded(x, center), expected, rtol=0, atol=1e-12)
    assert (expected != scripted(x).unsqueeze(1)).any()  # some columns do move the probability


def test_estimators_without_a_torchscript_form_are_refused(tables):
    estimator, _ = _fitted("logreg", tables, nan=False)
    names = tables[0].names
    with pytest.raises(NotScriptable, match="'xgboost' has no TorchScript form"):
        script_estimator(estimator, "xgboost", names)
    with pytest.raises(
        NotScriptable, match=f"fitted on {len(names)} columns, the aggregate table has {len(names) - 1}"
    ):
        script_estimator(estimator, "logreg", names[:-1])
    btyd, _ = _fitted("btyd", tables, nan=False)
    btyd.set_params(fit_on="scored")  # refitted on the rows it scores: no fixed parameters to script
    with pytest.raises(NotScriptable, match="fit_on=scored"):
        script_estimator(btyd, "btyd", tables[0].names)


@pytest.fixture(scope="module")
def lightgbm_run(data_dir, tables, tmp_path_factory):
    out = tmp_path_factory.mktemp("lightgbm_run")
    overrides = [f"data.data_dir={data_dir}", "data.generate.n_customers=1500", f"paths.output_dir={out}"]
    quick = [f"++model.params.{k}={v}" for k, v in QUICK["lightgbm"].items()]
    metrics = train(compose("train", ["model=lightgbm", *overrides, "report=false", *quick]))
    return out, metrics


def test_a_tabular_run_exports_a_model_that_scores_explains_and_monitors_like_training(
    lightgbm_run, data_dir
):
    run, metrics = lightgbm_run
    assert metrics["model_path"] == str(run / "model.pt")
    _, meta = load_artifact(run / "model.pt")
    assert (meta["kind"], meta["estimator"]) == ("tabular", "lightgbm")
    assert meta["features"] == {"n_aggregates": len(meta["featurizer"]["fill"]), "raw_aggregates": True}
    assert len(meta["drivers"]["center"]) == len(meta["drivers"]["indicators"]) + 1  # and `other`
    test = read_predictions(run).query("split == 'test'").set_index("customer_id")
    cutoff = test["cutoff"].iloc[0]
    scored = (
        Scorer(run / "model.pt", device="cpu")
        .score(data_dir / "events.parquet", data_dir / "customers.parquet", as_of=cutoff, progress=False)
        .set_index("customer_id")
        .loc[test.index]
    )
    assert np.abs(scored["churn_probability"] - test["probability"]).max() < 1e-5
    explained = scored["main_driver"] != ""
    assert explained.mean() > 0.5 and (scored.loc[explained, "driver_1"] != "").all()
    report = run_monitor(
        run / "model.pt",
        data_dir / "events.parquet",
        MONITOR_THRESHOLDS,
        customers_path=data_dir / "customers.parquet",
        as_of=str(cutoff.date()),
        device="cpu",
    )
    assert report["reference"]["split"] == "test" and report["score"]["psi"] < 1e-3
    assert report["population"]["active"] == len(test)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m["features"].update(n_aggregates=m["features"]["n_aggregates"] - 1),
            r"features.n_aggregates: \d+, the featurizer makes \d+",
        ),
        (lambda m: m["features"].pop("raw_aggregates"), "raw_aggregates is False, the file holds 1 tabular"),
        (lambda m: m.update(estimator="xgboost"), "kind: estimator 'xgboost' is not one of"),
        (lambda m: m["calibration"].update(slope=2.5), "calibration: platt calibration differs"),
    ],
    ids=["width", "scaled-input", "estimator", "calibration"],
)
def test_a_tabular_file_whose_metadata_contradicts_its_model_is_refused(lightgbm_run, edit, message):
    run, _ = lightgbm_run
    module, meta = load_artifact(run / "model.pt")
    meta = copy.deepcopy(meta)
    edit(meta)
    with pytest.raises(ArtifactError, match=message):
        check_meta(meta, module, run / "model.pt")
