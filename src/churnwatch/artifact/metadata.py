"""What a model file says about itself: `ModelMeta`, built here for every kind of model file (a network, a
tabular baseline, an ensemble) and serialised to the JSON stored inside the file.

Scoring and monitoring read the serialised form (a dict, checked by `artifact.checks.check_meta`), so
`ModelMeta.to_dict` is the file format: its keys and their meaning stay as they are across releases
(FORMAT_VERSION changes when they do not).
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import platform
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

import churnwatch
from churnwatch.models.calibration import Calibrator
from churnwatch.models.thresholds import Operating

FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """What a training run measured and how it was configured, for its model file: test metrics, the
    config, each tier's expected (validation) precision and recall, the fitted segments, the monitoring
    reference (monitoring.drift.training_reference) and the drivers' centre and indicators. A model
    exported from a bare checkpoint (`churnwatch export`) has only what its run dir still says."""

    test_metrics: Mapping[str, float] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    expected_tiers: list[dict[str, Any]] = field(default_factory=list)
    segments: Mapping[str, Any] = field(default_factory=dict)
    reference: Mapping[str, Any] | None = None
    drivers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ModelMeta:
    """The metadata every model file carries: the data contract and fitted encoders scoring rebuilds, the
    operating point and what the run measured; then what its kind adds (a network's config and source
    checkpoint, a tabular model's estimator, an ensemble's members). An ensemble's file carries none of a
    single run's own figures (calibration, driver centre, score reference, expected tiers, creation time):
    its members differ there. Build it with `of_run` or `of_ensemble`."""

    data: Mapping[str, Any]
    encoder: Mapping[str, Any]
    featurizer: Mapping[str, Any]
    train_positive_rate: float
    threshold: float
    high_cut: float
    medium_cut: float
    rule: Mapping[str, Any]
    features: Mapping[str, Any]
    test_metrics: Mapping[str, float]
    config: Mapping[str, Any]
    segments: Mapping[str, Any]
    versions: Mapping[str, str]
    format_version: int = FORMAT_VERSION
    # one run's model (None in an ensemble's file)
    created_at: str | None = None
    calibration: Mapping[str, Any] | None = None
    expected_tiers: list[dict[str, Any]] | None = None
    drivers: Mapping[str, Any] | None = None
    reference: Mapping[str, Any] | None = None
    # what the kind adds
    source_checkpoint: str | None = None
    net: Mapping[str, Any] | None = None
    estimator: str | None = None
    ensemble: Mapping[str, Any] | None = None

    @classmethod
    def of_run(
        cls,
        *,
        data: Mapping[str, Any],
        data_state: Mapping[str, Any],
        op: Operating,
        calibrator: Calibrator,
        features: Mapping[str, Any],
        facts: RunFacts | None = None,
        source_checkpoint: str | None = None,
        net: Mapping[str, Any] | None = None,
        estimator: str | None = None,
    ) -> ModelMeta:
        """One run's model: a network (`net`, `source_checkpoint`) or a tabular baseline (`estimator`).
        `data` is the data config, `data_state` the datamodule's fitted encoders
        (ChurnDataModule.state_dict)."""
        facts = facts or RunFacts()
        return cls(
            data=data,
            encoder=data_state["encoder"],
            featurizer=data_state["featurizer"],
            train_positive_rate=data_state["train_positive_rate"],
            threshold=float(op.threshold),
            high_cut=float(op.high_cut),
            medium_cut=float(op.medium_cut),
            rule=dict(op.rule or {}),
            features=features,
            test_metrics=facts.test_metrics or {},
            config=facts.config or {},
            segments=facts.segments or {},
            versions=versions(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            calibration=calibrator.state(),
            expected_tiers=facts.expected_tiers or [],
            drivers=facts.drivers or {},
            reference=facts.reference,
            source_checkpoint=source_checkpoint,
            net=net,
            estimator=estimator,
        )

    @classmethod
    def of_ensemble(
        cls,
        base: Mapping[str, Any],
        *,
        op: Operating,
        features: Mapping[str, Any],
        test_metrics: Mapping[str, float] | None,
        ensemble: Mapping[str, Any],
    ) -> ModelMeta:
        """An ensemble's file: the data contract, encoders, segments, config and versions of its `base`
        member's metadata (what scoring rebuilds), its own operating point and test metrics."""
        return cls(
            data=base["data"],
            encoder=base["encoder"],
            featurizer=base["featurizer"],
            train_positive_rate=base["train_positive_rate"],
            threshold=float(op.threshold),
            high_cut=float(op.high_cut),
            medium_cut=float(op.medium_cut),
            rule=dict(op.rule or {}),
            features=features,
            test_metrics=test_metrics or {},
            config=base.get("config", {}),
            segments=base.get("segments", {}),
            versions=base.get("versions", {}),
            ensemble=ensemble,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in the model file."""
        tiers: dict[str, Any] = {"high": self.high_cut, "medium": self.medium_cut, "rule": dict(self.rule)}
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "data": self.data,
            "encoder": self.encoder,
            "featurizer": self.featurizer,
            "train_positive_rate": self.train_positive_rate,
            "threshold": self.threshold,
            "tiers": tiers,
            "segments": self.segments,
            "test_metrics": self.test_metrics,
            "config": self.config,
            "versions": self.versions,
            "features": self.features,
        }
        if self.ensemble is None:
            tiers["expected"] = self.expected_tiers or []
            out.update(
                created_at=self.created_at,
                calibration=self.calibration,
                drivers=self.drivers or {},
                reference=self.reference,
            )
        else:
            out["ensemble"] = self.ensemble
        if self.source_checkpoint is not None:
            out["source_checkpoint"] = self.source_checkpoint
        if self.net is not None:
            out["net"] = self.net
        if self.estimator is not None:
            out.update(kind="tabular", estimator=self.estimator)
        return out


def versions() -> dict[str, str]:
    """The versions of churnwatch, torch, Python and the data libraries that wrote a model file."""
    out = {
        "churnwatch": churnwatch.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for pkg in ("lightning", "numpy", "pandas", "pyarrow"):
        with suppress(importlib_metadata.PackageNotFoundError):
            out[pkg] = importlib_metadata.version(pkg)
    return out
