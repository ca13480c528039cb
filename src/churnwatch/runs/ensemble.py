"""Ensembles: a weighted mean of calibrated churn probabilities of runs, weights fitted on validation.

Members are run dirs of any model (network or baseline) trained on the same data config and seed, so their
predictions.parquet cover the same validation and test rows. Each member is calibrated on validation (Platt
scaling of its logit), then weights on the simplex minimise the validation log loss of the weighted mean.
Members whose runs exported a model.pt (networks and tabular baselines) and share the fitted encoders export
as one TorchScript file that `churnwatch score` runs like any model; a member without a model.pt makes the
ensemble evaluation-only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize
from torch import Tensor, nn

from churnwatch.artifact.metadata import ModelMeta
from churnwatch.artifact.model_file import load_model, write_artifact
from churnwatch.errors import ConfigError
from churnwatch.features.aggregates import AggregateFeaturizer
from churnwatch.io.atomic import check_output
from churnwatch.io.signing import Key
from churnwatch.models.calibration import Calibrator, log_loss
from churnwatch.models.metrics import evaluate
from churnwatch.models.thresholds import Operating, ThresholdRule, choose_operating_point
from churnwatch.pipeline.cache_key import LOADER_KEYS, NOT_ENCODING_KEYS
from churnwatch.runs.predictions import KEY, PREDICTIONS_FILE, read_predictions
from churnwatch.runs.record import (
    METRICS_FILE,
    RunRecord,
    read_timings,
    stage_calibration,
    stage_tiers,
    write_run,
)

log = logging.getLogger(__name__)


def fit_weights(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 (softmax parametrisation) minimising the log loss of probs @ w."""
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    if k == 1:
        return np.ones(1)
    y = np.asarray(labels, dtype=np.float64)

    def weights(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max())
        return e / e.sum()

    def loss(z: np.ndarray) -> float:
        return log_loss(probs @ weights(z), y)

    res = minimize(loss, np.zeros(k), method="L-BFGS-B")
    return weights(res.x)


@dataclass
class FittedEnsemble:
    names: list[str]
    calibrators: list[Calibrator]
    weights: np.ndarray

    def predict(self, member_probs: np.ndarray) -> np.ndarray:
        calibrated = np.column_stack([c(member_probs[:, j]) for j, c in enumerate(self.calibrators)])
        return calibrated @ self.weights

    def member_calibration(self) -> list[list[float]]:
        """Each member's Platt [slope, intercept] (1 and 0 uncalibrated)."""
        return [[c.slope, c.intercept] for c in self.calibrators]


def aligned_predictions(run_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """One frame keyed by (split, customer_id, cutoff) with a probability column per member; refuses members
    whose rows differ (another data config or seed) or whose labels disagree."""
    names = _member_names(run_dirs)
    merged: pd.DataFrame | None = None
    for name, run_dir in zip(names, run_dirs, strict=True):
        frame = read_predictions(run_dir)[[*KEY, "label", "probability"]]
        frame = frame.rename(columns={"probability": name})
        if merged is None:
            merged = frame
            continue
        joined = merged.merge(frame, on=KEY, how="inner", suffixes=("", "_other"))
        if len(joined) != len(merged) or len(joined) != len(frame):
            raise ConfigError(
                f"ensemble members cover different rows: {run_dirs[0]} has {len(merged)} "
                f"predictions, {run_dir} has {len(frame)}, {len(joined)} in common; train every member "
                "with the same data config and seed"
            )
        if not np.array_equal(joined["label"].to_numpy(), joined["label_other"].to_numpy()):
            raise ConfigError(f"{run_dir}: labels differ from {run_dirs[0]} for the same rows")
        merged = joined.drop(columns="label_other")
    if merged is None:
        raise ConfigError("an ensemble needs at least one member run dir")
    return merged, names


def _member_names(run_dirs: Sequence[str | Path]) -> list[str]:
    names = []
    for run_dir in run_dirs:
        path = Path(run_dir) / METRICS_FILE
        model = json.loads(path.read_text()).get("model", "") if path.exists() else ""
        name = model or Path(run_dir).name
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def fit_ensemble(frame: pd.DataFrame, names: list[str], calibrate: bool = True) -> FittedEnsemble:
    val = frame[frame["split"] == "val"]
    y = val["label"].to_numpy()
    calibrators = [Calibrator.fit("platt" if calibrate else "none", val[n].to_numpy(), y) for n in names]
    calibrated = np.column_stack([c(val[n].to_numpy()) for c, n in zip(calibrators, names, strict=True)])
    return FittedEnsemble(names, calibrators, fit_weights(calibrated, y))


class EnsembleProbabilityModel(nn.Module):
    """Exported form: each member's probability, calibrated, then the weighted mean.

    With a tabular member (`raw_aggregates`) the file takes the raw aggregates, which that member reads,
    and scales them here for the networks that fuse them, as the featurizer (`scaling`) does."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        uses_aggregates: Sequence[bool],
        raw_aggregates: Sequence[bool],
        fitted: FittedEnsemble,
        scaling: AggregateFeaturizer,
    ):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("uses_aggregates", torch.tensor(list(uses_aggregates), dtype=torch.bool))
        self.register_buffer("raw_aggregates", torch.tensor(list(raw_aggregates), dtype=torch.bool))
        self.raw_input = any(raw_aggregates)
        self.register_buffer("scale_mean", torch.tensor(scaling.scale_mean, dtype=torch.float64))
        self.register_buffer("scale_std", torch.tensor(scaling.scale_std, dtype=torch.float64))
        self.register_buffer(
            "slope", torch.tensor([c.slope for c in fitted.calibrators], dtype=torch.float64)
        )
        self.register_buffer(
            "intercept", torch.tensor([c.intercept for c in fitted.calibrators], dtype=torch.float64)
        )
        self.register_buffer("weights", torch.tensor(fitted.weights, dtype=torch.float64))

    def forward(
        self,
        cat: Tensor,
        num: Tensor,
        lengths: Tensor,
        static_cat: Tensor,
        static_num: Tensor,
        aggregates: Tensor,
    ) -> Tensor:
        out = torch.zeros(cat.shape[0], dtype=torch.float64, device=cat.device)
        no_aggregates = aggregates[:, :0]
        scaled = aggregates
        if self.raw_input:  # AggregateFeaturizer.scale
            raw = aggregates.double()
            scaled = ((torch.sign(raw) * torch.log1p(raw.abs()) - self.scale_mean) / self.scale_std).float()
        for i, member in enumerate(self.members):
            agg = scaled if bool(self.uses_aggregates[i]) else no_aggregates
            if bool(self.raw_aggregates[i]):
                agg = aggregates
            p = member(cat, num, lengths, static_cat, static_num, agg).double().clamp(1e-6, 1.0 - 1e-6)
            z = self.slope[i] * (torch.log(p) - torch.log1p(-p)) + self.intercept[i]
            out = out + self.weights[i] * torch.sigmoid(z)
        return out.float()


SEQUENCE_KEYS = frozenset({"vocab", "max_len", "max_span_days", "visits"})
"""Data keys only the sequence encoder reads: a tabular member, which reads the aggregates alone, may
differ from the networks there."""


def _comparable(state: Any) -> Any:
    """A member's state without the keys that only say whether that member uses aggregates."""
    return {k: v for k, v in state.items() if k != "use_aggregates"} if isinstance(state, dict) else state


def _tabular(meta: dict[str, Any]) -> bool:
    return meta.get("kind") == "tabular"


def _differs(meta: dict[str, Any], base: dict[str, Any]) -> str | None:
    """What a member must share with the ensemble's base member and does not: the featurizer; the data
    config but for file locations and loader settings (and the sequence settings, where one is tabular);
    between networks, the sequence encoder."""
    either_tabular = _tabular(meta) or _tabular(base)
    ignore = NOT_ENCODING_KEYS | LOADER_KEYS | (SEQUENCE_KEYS if either_tabular else frozenset())
    data, base_data = (
        {k: v for k, v in _comparable(m["data"]).items() if k not in ignore} for m in (meta, base)
    )
    if data != base_data:
        keys = sorted(k for k in set(data) | set(base_data) if data.get(k) != base_data.get(k))
        return f"data config ({', '.join(keys)})"
    if _comparable(meta["featurizer"]) != _comparable(base["featurizer"]):
        return "fitted aggregate featurizer"
    if not either_tabular and meta["encoder"] != base["encoder"]:
        return "fitted sequence encoder (vocabularies, statistics)"
    return None


class NotExportable(ValueError):
    """An ensemble with no single TorchScript form (a member without model.pt, members on other data)."""


def export_ensemble(
    run_dirs: Sequence[str | Path],
    fitted: FittedEnsemble,
    op: Operating,
    out_path: str | Path,
    *,
    test_metrics: Mapping[str, float] | None = None,
    signing_key: Key | None = None,
) -> Path:
    """One TorchScript file from the members' model.pt files (networks and tabular baselines), signed with
    `signing_key` when given; NotExportable says why this ensemble has no such form (a member file that
    fails its checks is an ArtifactError: an error, not a reason to skip). `op.rule` is the alert rule as
    configured (what scoring reads)."""
    loaded = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "model.pt"
        if not path.exists():
            raise NotExportable(
                f"{run_dir} has no model.pt (trained with export=false, or a model without a TorchScript "
                "form: its metrics.json says why under export_skipped); an ensemble exports only when every "
                "member did"
            )
        loaded.append(load_model(path))
    artifacts = [(a.module, a.meta) for a in loaded]
    # the base: a network where there is one (its encoder and data config are what scoring rebuilds)
    base_at = next((i for i, (_, m) in enumerate(artifacts) if not _tabular(m)), 0)
    first = artifacts[base_at][1]
    for (_, meta), run_dir in zip(artifacts, run_dirs, strict=True):
        what = _differs(meta, first)
        if what is not None:
            raise NotExportable(
                f"{run_dir}: its {what} differs from {run_dirs[base_at]}'s; exported ensemble members must "
                "share the data config and seed (networks also their vocabulary settings)"
            )
    uses = [int(m["features"].get("n_aggregates", 0)) > 0 for _, m in artifacts]
    raw = [bool(m["features"].get("raw_aggregates")) for _, m in artifacts]
    featurizer = AggregateFeaturizer.from_state(first["featurizer"])
    model = EnsembleProbabilityModel([a for a, _ in artifacts], uses, raw, fitted, featurizer)
    best = int(np.argmax(uses)) if any(uses) else 0
    features = artifacts[best][1]["features"]
    if any(raw):  # scoring passes the raw aggregates; the networks' scaled form is computed inside
        features = {"n_aggregates": len(featurizer.scale_mean), "raw_aggregates": True}
    meta = ModelMeta.of_ensemble(
        first,
        op=op,
        features=features,
        test_metrics=test_metrics,
        ensemble={
            "members": [str(d) for d in run_dirs],
            "names": fitted.names,
            "weights": fitted.weights.tolist(),
            "calibration": fitted.member_calibration(),
            # a network's config, or a tabular member's estimator
            "nets": [m.get("net") or {"estimator": m.get("estimator")} for _, m in artifacts],
        },
    )
    # the members were fitted on the same data before the same cutoff: the base member's offers serve
    offers = loaded[base_at].offers
    return write_artifact(model, meta.to_dict(), out_path, signing_key=signing_key, offers=offers)


def train_ensemble(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    thresholds: Mapping[str, Any] | None = None,
    calibrate: bool = True,
    export: bool = True,
    report: bool = True,
    signing_key: Key | None = None,
) -> dict[str, Any]:
    """Fit the ensemble on the members' validation predictions, evaluate on test, and write its run into
    out_dir as every run does (write_run: timings, predictions, `report` report.html, metrics.json last),
    with model.pt when every member has one. out_dir must not be a member's (it would overwrite the files
    the ensemble is fitted on)."""
    out_dir = Path(out_dir)
    run_dirs = [str(d) for d in run_dirs]
    members = {f"members[{i}]/{PREDICTIONS_FILE}": Path(d) / PREDICTIONS_FILE for i, d in enumerate(run_dirs)}
    check_output(out_dir / PREDICTIONS_FILE, True, members, key=f"the ensemble's {PREDICTIONS_FILE}")
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, names = aligned_predictions(run_dirs)
    fitted = fit_ensemble(frame, names, calibrate)
    member_probs = frame[names].to_numpy()
    frame["probability"] = fitted.predict(member_probs)
    # before calibration: the members' own probabilities, weighted alike
    frame["probability_raw"] = member_probs @ fitted.weights
    val = frame[frame["split"] == "val"]
    op = choose_operating_point(
        val["probability"].to_numpy(), val["label"].to_numpy(), ThresholdRule.from_config(thresholds)
    )
    stages = [stage for stage in ("val", "test") if (frame["split"] == stage).any()]
    parts = {stage: frame[frame["split"] == stage] for stage in stages}
    predictions = {
        s: (p["probability_raw"].to_numpy(), p["probability"].to_numpy()) for s, p in parts.items()
    }
    labels = {stage: part["label"].to_numpy() for stage, part in parts.items()}
    scores = {stage: evaluate(predictions[stage][1], labels[stage], op.threshold, stage) for stage in stages}
    record = RunRecord(
        val=scores["val"],
        test=scores.get("test"),
        threshold=float(op.threshold),
        tier_cuts={"high": float(op.high_cut), "medium": float(op.medium_cut)},
        alert_rule=op.rule,
        calibration={
            "method": "platt" if calibrate else "none",
            "members": dict(zip(names, fitted.member_calibration(), strict=True)),
            **stage_calibration(predictions, labels),
        },
        tiers=stage_tiers(predictions, labels, op),
        model="ensemble(" + "+".join(names) + ")",
        members=run_dirs,
        weights=dict(zip(names, fitted.weights.tolist(), strict=True)),
        run_dir=str(out_dir),
    )
    if export:
        configured = Operating(op.threshold, op.high_cut, op.medium_cut, dict(thresholds or {}))
        try:
            exported = export_ensemble(
                run_dirs,
                fitted,
                configured,
                out_dir / "model.pt",
                test_metrics=record.test,
                signing_key=signing_key,
            )
            record.model_path = str(exported)
        except NotExportable as exc:
            record.export_skipped = str(exc)
            log.info("ensemble not exported: %s", exc)
    table = frame[[*KEY, "label", "probability", "probability_raw"]]
    write_run(out_dir, record, _timings(run_dirs), table, report=report)
    return record.to_json()


def _timings(run_dirs: Sequence[str | Path]) -> dict[str, float]:
    """The members' training time, summed; their scoring rates, combined: they score one after another,
    so the ensemble's time per customer is the sum of theirs."""
    members = [read_timings(d) for d in run_dirs]
    timings = {"train_seconds": float(sum(m.get("train_seconds", 0.0) for m in members))}
    rates = [m.get("scoring_customers_per_s") for m in members]
    if all(rates):
        timings["scoring_customers_per_s"] = 1.0 / sum(1.0 / r for r in rates)
    return timings
