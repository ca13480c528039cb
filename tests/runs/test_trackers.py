"""Experiment trackers: a network run and a baseline run both reach MLflow (metrics, artifacts, FINISHED),
read back through MLflow's own client from a local store; a baseline with the CSV logger writes
logs/metrics.csv; W&B offline records config, metrics and the run's artifact under the run dir (these need
mlflow, the last also wandb, and skip without them); a network run with no logger at all trains."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from churnwatch.config.compose import compose
from churnwatch.runs.train import train
from tests.helpers import TINY

pytestmark = [
    # MLflow's own table definitions (lazy="noload") warn under SQLAlchemy 2.1; nothing of ours to fix
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | str]]:
    """One local MLflow store (SQLite + artifact folder, no server) and one data dir for the module."""
    root = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as env:
        # MLflow 3 starts a usage-reporting client on import (and saves an id in ~/.config) unless told
        # not to; so it is imported here, not at collection
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        pytest.importorskip("mlflow")
        yield {"root": root, "uri": f"sqlite:///{root / 'mlflow.db'}", "data": root / "data"}


def mlflow_overrides(store: dict, experiment: str) -> list[str]:
    return [
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={store['uri']}",
        f"logger.mlflow.artifact_location={store['root'] / 'mlartifacts'}",
        f"logger.mlflow.experiment_name={experiment}",
    ]


def only_run(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    out = set()
    for info in client.list_artifacts(run_id, folder):
        out |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def test_network_run_logs_metrics_and_artifacts_to_mlflow(store, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose(
        "train",
        [
            f"data.data_dir={store['data']}",
            f"paths.output_dir={run_dir}",
            *TINY,
            *mlflow_overrides(store, "nn"),
        ],
    )
    run_dir.mkdir()
    train(cfg)
    saved = json.loads((run_dir / "metrics.json").read_text())
    client, run = only_run(store["uri"], "nn")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/auroc"] == pytest.approx(saved["test"]["test/auroc"])
    assert run.data.metrics["val/auroc"] == pytest.approx(saved["val"]["val/auroc"])
    files = artifact_paths(client, run.info.run_id)
    assert {"metrics.json", "report.html", "model.pt", "timings.json"} <= files
    assert any(f.endswith(".png") for f in files)
    # what was uploaded is the run's file, byte for byte
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path)))
    assert local.read_bytes() == (run_dir / "metrics.json").read_bytes()


@pytest.fixture(scope="module")
def baseline(store: dict) -> Path:
    """A logistic-regression run logged to MLflow and CSV at once; its run dir."""
    run_dir = store["root"] / "baseline"
    overrides = mlflow_overrides(store, "baselines")
    overrides[0] = "logger=[csv,mlflow]"
    cfg = compose(
        "train",
        [
            "model=logreg",
            f"data.data_dir={store['data']}",
            "data.generate.n_customers=1500",
            f"paths.output_dir={run_dir}",
            *overrides,
        ],
    )
    train(cfg)
    return run_dir


def test_baseline_run_logs_config_metrics_and_artifacts(store, baseline):
    saved = json.loads((baseline / "metrics.json").read_text())
    client, run = only_run(store["uri"], "baselines")
    assert run.info.status == "FINISHED"
    for stage in ("val", "test"):
        for name in (f"{stage}/auroc", f"{stage}/average_precision", f"{stage}/brier"):
            assert run.data.metrics[name] == pytest.approx(saved[stage][name])
    assert run.data.metrics["threshold"] == pytest.approx(saved["threshold"])
    assert run.data.metrics["tier_cuts/high"] == pytest.approx(saved["tier_cuts"]["high"])
    assert run.data.params["model/estimator"] == "logreg"  # the resolved config, flattened
    assert run.data.params["seed"] == "42"
    files = artifact_paths(client, run.info.run_id)
    assert {"metrics.json", "report.html", "feature_importance.csv", "feature_importance.png"} <= files
    assert "model.pt" in files  # baselines export too (models/scripted.py)


def test_baseline_with_the_csv_logger_writes_its_metrics_csv(baseline):
    saved = json.loads((baseline / "metrics.json").read_text())
    with (baseline / "logs" / "metrics.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert float(row["test/auroc"]) == pytest.approx(saved["test"]["test/auroc"])
    assert float(row["threshold"]) == pytest.approx(saved["threshold"])
    assert "estimator: logreg" in (baseline / "logs" / "hparams.yaml").read_text()


def _read_wandb_log(path: Path) -> list:
    """A 7-byte file header, then LevelDB-log framing (32 KiB blocks; per chunk crc32, length and type:
    1 full, 2 first, 3 middle, 4 last) around wandb_internal_pb2.Record protobufs; a chunk still being
    written ends the list."""
    from wandb.proto import wandb_internal_pb2

    raw, block = path.read_bytes(), 32 * 1024
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # block tail too short for a chunk header: zero padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(raw[pos + 4 : pos + 6], "little"), raw[pos + 6]
        if kind == 0 or pos + 7 + length > len(raw):
            break
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_records_config_metrics_and_artifact_in_the_run_dir(baseline, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from churnwatch.runs.trackers import instantiate_loggers, log_artifacts, log_run

    # W&B's own folders (cache, staging, settings) under tmp_path; no network
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    cfg = compose("train", ["model=logreg", f"paths.output_dir={run_dir}", "logger=wandb"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    loggers = instantiate_loggers(cfg)
    log_run(loggers, cfg, metrics)
    log_artifacts(loggers, run_dir)
    import wandb

    wandb.teardown()  # finish() returns before W&B's service has written the log's tail; this waits for it
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = _read_wandb_log(next(offline.glob("run-*.wandb")))
    logged = {  # a key holding "/" is stored as nested_key
        item.key or "/".join(item.nested_key): json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }
    assert logged["test/auroc"] == pytest.approx(metrics["test"]["test/auroc"])
    assert logged["threshold"] == pytest.approx(metrics["threshold"])
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    assert config["model"]["estimator"] == "logreg"
    (artifact,) = (r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    assert artifact.type == "churnwatch-run"
    names = {entry.path for entry in artifact.manifest.contents}
    assert {"metrics.json", "report.html", "feature_importance.png"} <= names
    assert records[-1].WhichOneof("record_type") == "exit"  # the run was finished


def test_a_network_run_with_no_logger_trains_without_the_learning_rate_monitor(tmp_path):
    """`logger=none`: nothing to log to, so the default callbacks' LearningRateMonitor (which Lightning
    refuses without a logger) is left out, and the run completes."""
    cfg = compose(
        "train",
        [
            f"data.data_dir={tmp_path / 'data'}",
            f"paths.output_dir={tmp_path / 'run'}",
            *TINY,
            "logger=none",
            "report=false",
            "insights.enabled=false",
        ],
    )
    (tmp_path / "run").mkdir()
    metrics = train(cfg)
    assert 0.5 < metrics["test"]["test/auroc"] <= 1
    assert not (tmp_path / "run" / "logs").exists()
