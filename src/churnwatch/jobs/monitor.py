"""The monitoring job: today's scoring input, read exactly as the scorer reads it, against the reference
profile the model carries; a backtest where the churn labels of that date are known; monitor.json and a
console table. The verdict is data: only inputs that cannot be read or used raise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from churnwatch.config.options import check_values
from churnwatch.data.parsing import normalise_ids
from churnwatch.data.readers import read_table
from churnwatch.data.snapshots import build_snapshot, label_event_mask
from churnwatch.errors import MonitorError
from churnwatch.io.atomic import atomic_path
from churnwatch.io.signing import Verification
from churnwatch.monitoring.drift import (
    Population,
    backtest,
    compare,
    freshness_stats,
    verdict,
    volume_stats,
)
from churnwatch.scoring.inputs import ScoringInput, default_as_of
from churnwatch.scoring.scorer import Scorer

COLOURS = {"ok": "green", "warn": "yellow", "retrain": "red"}
MONITOR_FILE = "monitor.json"


@dataclass(frozen=True)
class LabelSource:
    """Where realised churn labels come from: a file (customer id, 0/1 label, optionally a cutoff column
    to pick as_of's rows), else the events after as_of when they cover the horizon."""

    path: str | None = None
    customer_id: str | None = None
    """Id column in the file (null: the model's data.customer_id)."""
    label: str = "churned"
    cutoff: str | None = None


def run_monitor(
    model_path: str | Path,
    events_path: str | Path,
    thresholds: Mapping[str, Any],
    *,
    customers_path: str | Path | None = None,
    as_of: str | None = None,
    features: Sequence[str] | None = None,
    labels: LabelSource | None = None,
    device: str = "auto",
    verify: Verification | None = None,
) -> dict[str, Any]:
    """The monitoring report of one scoring input: the verdict and its reasons, the population, and one
    section per view (features, score, oov, volume, tiers, freshness, backtest); monitor.json is this
    dict. `verify`: the model file's signature check."""
    as_of = default_as_of(as_of, pd.NaT) if as_of is not None else None  # a bad date fails before the work
    check_thresholds(thresholds)
    # drift needs scores, not explanations
    scorer = Scorer(model_path, device=device, drivers={"enabled": False}, verify=verify)
    reference_of(scorer)
    inp = scorer.load(events_path, customers_path, as_of)
    scored = scorer.rank(scorer.score_input(inp, progress=False)).set_index("customer_id")
    report, ids = assess(scorer, inp, scored, thresholds, features)
    return {
        "verdict": report.pop("verdict"),
        "reasons": report.pop("reasons"),
        "model_path": str(model_path),
        "events_path": str(events_path),
        **report,
        "backtest": _backtest(scorer, inp, ids, scored.loc[ids], labels or LabelSource()),
    }


def check_thresholds(thresholds: Mapping[str, Any]) -> None:
    """Each level a number ≥ 0 or null, warn ≤ retrain (one line otherwise)."""
    levels = {k: v for k, v in thresholds.items() if isinstance(v, Mapping)}
    check_values({f"thresholds.{k}.{lv}": x for k, v in levels.items() for lv, x in v.items()})


def reference_of(scorer: Scorer) -> dict[str, Any]:
    """The monitoring reference the model carries, or a one-line MonitorError."""
    reference = scorer.meta.get("reference")
    if not reference:
        raise MonitorError(
            f"{scorer.model_path}: the model carries no monitoring reference; re-export it with this "
            "version (churnwatch train embeds one)"
        )
    return reference


def assess(
    scorer: Scorer,
    inp: ScoringInput,
    scored: pd.DataFrame,
    thresholds: Mapping[str, Any],
    features: Sequence[str] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """The verdict on a loaded and scored input (`scored`: ranked, by customer id) against the model's
    reference (verdict, reasons, population, one section per view), and the active customers' ids."""
    reference = reference_of(scorer)
    snaps = inp.snaps.subset(np.flatnonzero(scorer.in_population(inp.log, inp.snaps)))
    if len(snaps) == 0:
        lookback = scorer.data_cfg.get("lookback_days")
        raise MonitorError(
            f"no customer with an event in the {lookback} days before as_of {inp.as_of.date()}"
        )
    ids = snaps.customer_ids(inp.log).astype(str)
    fields = list(scorer.schema.categorical)
    today = Population(
        inp.as_of,
        scorer.featurizer.transform(inp.log, snaps, inp.customers),
        scored.loc[ids, "churn_probability"].to_numpy(dtype=np.float64),
        scorer.encoder.transform(inp.log, snaps, inp.customers).cat[:, : len(fields)],
        volume_stats(inp.log, snaps),
        freshness_stats(inp.log, snaps),
    )
    vocabs = {name: vocab.tokens for name, vocab in scorer.encoder.vocabs.items()}
    tiers = scorer.meta["tiers"]
    report = compare(reference, today, vocabs, fields, (tiers["high"], tiers["medium"]), features)
    level, reasons = verdict(report, thresholds)
    return {
        "verdict": level,
        "reasons": reasons,
        "as_of": str(inp.as_of.date()),
        "reference": {k: reference[k] for k in ("split", "cutoff", "drift_from", "churn_rate")},
        "population": {
            "customers": len(scored),
            "active": len(snaps),
            "lapsed": int(scored["lapsed"].sum()),
            "no_history": int(scored["no_history"].sum()),
        },
        "thresholds": {k: dict(v) for k, v in thresholds.items()},
        **report,
    }, ids


def _backtest(
    scorer: Scorer, inp: ScoringInput, ids: np.ndarray, rows: pd.DataFrame, source: LabelSource
) -> dict[str, Any]:
    """Realised AUROC and precision per tier as alerted on as_of, next to what validation promised."""
    labels, origin = realised_labels(scorer, inp, source)
    if labels is None:
        return {"available": False, "why": origin}
    y = labels.reindex(ids).to_numpy(dtype=np.float64)
    known = ~np.isnan(y)
    out = {
        "available": True,
        "labels": origin,
        "unlabelled": int((~known).sum()),
        **backtest(
            rows["churn_probability"].to_numpy()[known], y[known], rows["risk_tier"].to_numpy()[known]
        ),
    }
    out["expected_auroc"] = scorer.meta.get("test_metrics", {}).get("test/auroc")
    for row in scorer.meta["tiers"].get("expected", []):
        if row["tier"] in out["tiers"]:
            out["tiers"][row["tier"]]["expected_precision"] = row["precision"]
    return out


def realised_labels(scorer: Scorer, inp: ScoringInput, source: LabelSource) -> tuple[pd.Series | None, str]:
    """Churn label per customer id at as_of and where it came from; (None, why) when they are not known.

    Derived labels use the training definition (build_snapshot on the full log: no event, among
    data.label_events, in [as_of, as_of + horizon_days)); features never see those events."""
    if source.path:
        return read_labels(source, scorer.schema.customer_id, inp.as_of), f"file {source.path}"
    data = scorer.data_cfg
    horizon = int(data["horizon_days"])
    last_day = pd.Timestamp(inp.log.ts.max()).normalize()
    needed = inp.as_of + pd.Timedelta(days=horizon - 1)
    if needed > last_day:
        return None, (
            f"the events end {last_day.date()}; labels at {inp.as_of.date()} need events until "
            f"{needed.date()} (horizon {horizon} days) or labels_path"
        )
    snap = build_snapshot(
        inp.log,
        inp.as_of,
        horizon,
        lookback_days=data.get("lookback_days"),
        label_events=label_event_mask(inp.log.frame, data.get("label_events")),
        data_end=last_day,
    )
    labels = pd.Series(snap.label, index=snap.customer_ids(inp.log).astype(str))
    return labels, f"derived from the events in the {horizon} days after as_of"


def read_labels(source: LabelSource, default_id: str, as_of: pd.Timestamp) -> pd.Series:
    """A 0/1 label per customer id from a CSV or parquet file (rows of as_of only, with a cutoff column)."""
    raw = read_table(source.path)
    id_col = source.customer_id or default_id
    wanted = [id_col, source.label, *([source.cutoff] if source.cutoff else [])]
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise MonitorError(
            f"{source.path}: no column(s) {missing} (it has {list(raw.columns)}); "
            "set labels.customer_id / labels.label / labels.cutoff"
        )
    if source.cutoff:
        raw = raw[pd.to_datetime(raw[source.cutoff], errors="coerce").dt.normalize() == as_of]
    text = raw[source.label].astype(str).str.strip().str.lower().replace({"true": "1", "false": "0"})
    values = pd.to_numeric(text, errors="coerce")
    ids = normalise_ids(raw[id_col])
    bad = ~values.isin([0.0, 1.0]) | ids.isna()
    if bad.any():
        raise MonitorError(
            f"{source.path}: {int(bad.sum())} row(s) without a customer id or a 0/1 label in "
            f"{source.label!r}, e.g. {raw[bad].iloc[0].to_dict()}"
        )
    labels = pd.Series(values.to_numpy(dtype=np.float64), index=ids.astype(str).to_numpy())
    if labels.index.duplicated().any():
        raise MonitorError(f"{source.path}: customer ids repeat (add labels.cutoff to pick one date)")
    if labels.empty:
        raise MonitorError(f"{source.path}: no labels for as_of {as_of.date()}")
    return labels


def write_report(report: Mapping[str, Any], output_dir: str | Path) -> Path:
    """monitor.json (NaN written as null, so any JSON reader takes it), replaced whole: a job reading
    the last verdict never sees half a file."""
    return write_json(report, Path(output_dir) / MONITOR_FILE)


def write_json(data: Mapping[str, Any], path: Path) -> Path:
    """Strict JSON (NaN and inf as null), written atomically: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2))
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def render(report: Mapping[str, Any], console: Console) -> None:
    """The verdict, the reasons and one table per view."""
    level = report["verdict"]
    status = {(r["check"], r["name"]): r["level"] for r in report["reasons"]}
    pop = report["population"]
    console.print(
        f"[bold {COLOURS[level]}]verdict: {level}[/] — as of {report['as_of']}, {pop['active']:,} active "
        f"customers ({pop['lapsed']:,} lapsed, {pop['no_history']:,} without history) against the "
        f"{report['reference']['split']} cutoff {report['reference']['cutoff']}"
    )
    for r in report["reasons"]:
        figure = f"{r['value']:.3f} ≥ {r['limit']:g}"
        if r["check"] == "volume":  # judged as max(ratio, 1 / ratio)
            figure = f"×{report['volume'][r['name']]['ratio']:.3f} (limit ×{r['limit']:g} either way)"
        if r["check"] == "freshness":
            figure = (
                f"{r['value']:g} days without any event before as_of (limit {r['limit']:g}): a late feed?"
            )
        console.print(f"  [{COLOURS[r['level']]}]{r['level']}[/]: {r['check']} {r['name']} {figure}")

    psi_rows = {("score PSI", "score_psi", "churn_probability"): report["score"]}
    psi_rows.update({("feature PSI", "feature_psi", n): f for n, f in report["features"].items()})
    lines = [
        (*key, f["reference_mean"], f["today_mean"], f"{f['psi']:.4f}", _num(f["training_drift"], ".4f"))
        for key, f in psi_rows.items()
    ]
    lines += [
        ("OOV share", "oov", n, o["reference"], o["today"], f"{o['increase']:+.2%}", "")
        for n, o in report["oov"].items()
    ]
    lines += [
        ("volume", "volume", n, v["reference"], v["today"], f"×{v['ratio']:.3f}", "")
        for n, v in report["volume"].items()
    ]
    drift = Table(title="population stability, vocabulary coverage, volume")
    for col in ("check", "name", "reference", "today", "value", "training drift", "status"):
        drift.add_column(col, justify="left" if col in ("check", "name", "status") else "right")
    for label, check, name, ref, now, value, tolerated in lines:
        lv = status.get((check, name), "ok")
        drift.add_row(label, name, f"{ref:.4g}", f"{now:.4g}", value, tolerated, f"[{COLOURS[lv]}]{lv}[/]")
    console.print(drift)
    fresh = report.get("freshness") or {}
    if fresh:
        console.print(f"newest event {fresh['last_event']}: {fresh['silent_days']:g} whole days before as_of")
    tiers = Table(title="share of customers above the tier cut-offs")
    for col in ("tier", "expected", "today", "diff"):
        tiers.add_column(col, justify="left" if col == "tier" else "right")
    for name, t in report["tiers"].items():
        tiers.add_row(name, f"{t['expected']:.1%}", f"{t['today']:.1%}", f"{t['diff']:+.1%}")
    console.print(tiers)
    bt = report["backtest"]
    if not bt["available"]:
        console.print(f"backtest: not available ({bt['why']})")
        return
    auroc, expected = _num(bt["auroc"], ".4f"), _num(bt.get("expected_auroc"), ".4f")
    table = Table(
        title=f"backtest: AUROC {auroc} (test at training {expected}), churn rate {bt['churn_rate']:.1%}"
    )
    for col in ("tier", "customers", "churners", "precision", "expected precision", "recall"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    for name, t in bt["tiers"].items():
        table.add_row(
            name,
            f"{t['customers']:,}",
            f"{t['churners']:,}",
            _num(t["precision"], ".1%"),
            _num(t.get("expected_precision"), ".1%"),
            _num(t["recall"], ".1%"),
        )
    console.print(table)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)
