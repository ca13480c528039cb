"""The run report: one self-contained HTML file (PNGs inlined) that a retention team reads.

It shows the metrics table, ROC and PR curves, the calibration plot (before and after), the lift/gain chart,
the score distribution, global drivers, segment churn rates and the tier table, all from the files a
training run leaves in its run dir (metrics.json, predictions.parquet, drivers.parquet, *.png).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from churnwatch.io.atomic import atomic_path  # noqa: E402
from churnwatch.models.calibration import reliability_curve  # noqa: E402
from churnwatch.runs.predictions import read_predictions  # noqa: E402

REPORT_FILE = "report.html"
ROBUSTNESS_FILE, ROBUSTNESS_PLOT = "robustness.json", "robustness.png"
"""Written by `churnwatch robustness`; a run dir holding them gets a "Robustness" section."""
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}img{max-width:100%}
"""


def _png(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return _embed(path)


def _embed(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in frame.itertuples(False)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _curves(pred: pd.DataFrame, out: Path) -> dict[str, str]:
    y, p, raw = pred["label"].to_numpy(), pred["probability"].to_numpy(), pred["probability_raw"].to_numpy()
    figs = {}
    fig, ax = plt.subplots(figsize=(5, 4))
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend()
    figs["roc"] = _png(fig, out / "roc.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    prec, rec, _ = precision_recall_curve(y, p)
    ax.plot(rec, prec)
    ax.axhline(y.mean(), ls="--", color="grey", label=f"base rate {y.mean():.2f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.legend()
    figs["pr"] = _png(fig, out / "pr.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, probs in (("before calibration", raw), ("after calibration", p)):
        mean_p, rate, _ = reliability_curve(probs, y)
        ax.plot(mean_p, rate, "o-", label=name)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="predicted churn probability", ylabel="observed churn rate", title="Calibration")
    ax.legend()
    figs["calibration"] = _png(fig, out / "calibration.png")
    order = np.argsort(-p, kind="stable")
    share = np.arange(1, len(p) + 1) / len(p)
    gain = np.cumsum(y[order]) / max(y.sum(), 1)
    fig, ax1 = plt.subplots(figsize=(5, 4))
    ax1.plot(share, gain, label="cumulative gain")
    ax1.plot([0, 1], [0, 1], "--", color="grey")
    ax2 = ax1.twinx()
    ax2.plot(share, gain / share, color="tab:orange", label="lift")
    ax1.set(xlabel="share of customers contacted (riskiest first)", ylabel="share of churners found")
    ax2.set_ylabel("lift")
    ax1.set_title("Gain and lift")
    figs["gain"] = _png(fig, out / "gain.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(p[y == 0], bins=bins, alpha=0.6, label="stayed")
    ax.hist(p[y == 1], bins=bins, alpha=0.6, label="churned")
    ax.set(xlabel="churn probability", ylabel="customers", title="Score distribution")
    ax.legend()
    figs["scores"] = _png(fig, out / "scores.png")
    return figs


def _segments_plot(frame: pd.DataFrame, title: str, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(5, 0.3 * len(frame) + 1.2))
    f = frame.iloc[::-1]
    ax.barh(f["segment"].astype(str), f["churn_rate"])
    for i, (n, r) in enumerate(zip(f["customers"], f["churn_rate"], strict=True)):
        ax.text(r, i, f" {r:.0%} of {n}", va="center", fontsize=8)
    ax.set(xlabel="churn rate", title=title)
    ax.set_xlim(0, min(1.0, float(f["churn_rate"].max()) * 1.35 + 0.05))
    return _png(fig, path)


def _robustness(run_dir: Path) -> list[str]:
    """The robustness study's AUROC and high-tier precision per run and model, from robustness.json alone
    (and its plot): the job that writes them is a later stage than this report."""
    study = json.loads((run_dir / ROBUSTNESS_FILE).read_text())
    rows = pd.DataFrame(study["rows"])
    if "error" not in rows:
        rows["error"] = None
    table = rows.pivot_table(
        index=["perturbation", "strength"], columns="model", values=["auroc", "high_precision"], sort=False
    )
    names = {"auroc": "AUROC", "high_precision": "high-tier precision"}
    table.columns = [f"{model} {names[m]}" for m, model in table.columns]
    settings = study["settings"]
    parts = [
        "<h2>Robustness</h2>",
        f"<p>Each model re-scored the events before {html.escape(settings['as_of'])} "
        f"({html.escape(settings['events_path'])}) after each perturbation, judged on the clean run's "
        "labelled customers (seed "
        f"{settings['seed']}); strength 0 is the clean run. All figures: robustness.json.</p>",
        _table(table.reset_index(), 3),
    ]
    refused = rows[rows["error"].notna()]
    if len(refused):
        said = (f"{r.model} {r.perturbation} {r.strength:g}: {r.error}" for r in refused.itertuples())
        parts.append(f"<p>Refused by the data contract: {html.escape('; '.join(said))}</p>")
    if (run_dir / ROBUSTNESS_PLOT).exists():
        parts.append(_embed(run_dir / ROBUSTNESS_PLOT))
    return parts


def _offers(rec: Mapping[str, Any]) -> list[str]:
    """The recommender's backtest on the test horizon beside the two baselines (runs/offers.py)."""
    k = rec.get("k", 10)
    rows = [
        {"recommender": name, "view": view, **m}
        for name, views in (rec.get("test") or {}).items()
        for view, m in views.items()
    ]
    params = ", ".join(f"{key}={value}" for key, value in (rec.get("params") or {}).items()) or "defaults"
    parts = [
        f"<h2>Next-best offers ({html.escape(str(rec['name']))})</h2>",
        f"<p>{html.escape(str(rec['name']))} ({html.escape(params)}) learned from the purchases before "
        f"{html.escape(str(rec.get('fitted_before')))} ({rec.get('catalogue_items', 0):,} items to offer); "
        f"offers judged against what each customer bought in the horizon after it, top {k}, next to "
        "popularity and buy-again, for all customers and the high-risk tier; <i>/new</i>: only items new "
        "to the customer count (docs/RECOMMENDATIONS.md).</p>",
    ]
    if rows:
        parts.append(_table(pd.DataFrame(rows), 3))
    return parts


def write_report(run_dir: str | Path, metrics: Mapping[str, Any] | None = None) -> Path:
    """Write <run_dir>/report.html (and its PNGs under <run_dir>/report/) from `metrics` (what the run
    is about to write as metrics.json), or the run dir's metrics.json."""
    run_dir = Path(run_dir)
    if metrics is None:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    pred = read_predictions(run_dir)
    stage = "test" if (pred["split"] == "test").any() else "val"
    figs = _curves(pred[pred["split"] == stage], out)
    rows = []
    for key in sorted({k.split("/", 1)[1] for s in ("val", "test") for k in metrics.get(s, {})}):
        rows.append([key, *(metrics.get(s, {}).get(f"{s}/{key}", np.nan) for s in ("val", "test"))])
    parts = [
        f"<h1>churnwatch report: {html.escape(str(metrics.get('model', '')))}</h1>",
        f"<p class=sub>run dir {html.escape(str(run_dir))}; figures on the {stage} split "
        f"({len(pred[pred['split'] == stage]):,} customer snapshots)</p>",
        "<h2>Metrics</h2>",
        _table(pd.DataFrame(rows, columns=["metric", "val", "test"]), 4),
    ]
    cal = metrics.get("calibration") or {}
    if cal:
        cal_rows = [  # the per-stage figures beside the calibration's state
            [
                s,
                v.get("ece_raw"),
                v.get("ece_calibrated"),
                v.get("log_loss_raw"),
                v.get("log_loss_calibrated"),
            ]
            for s, v in cal.items()
            if s in ("train", "val", "test") and isinstance(v, Mapping)
        ]
        parts += [
            f"<h2>Calibration ({html.escape(str(cal.get('method')))})</h2>",
            _table(
                pd.DataFrame(
                    cal_rows,
                    columns=["split", "ECE before", "ECE after", "log loss before", "log loss after"],
                ),
                4,
            ),
        ]
    tiers = metrics.get("tiers") or {}
    if tiers:
        parts.append(
            "<h2>Alert tiers</h2><p>Validation: the expected precision and recall of each tier; test: "
            "what a scoring run at the test cutoff realised.</p>"
        )
        for s, table in tiers.items():
            parts += [f"<h3>{s}</h3>", _table(pd.DataFrame(table))]
    parts += [
        "<h2>Curves</h2><div class=grid>",
        *(f"<div>{figs[k]}</div>" for k in ("roc", "pr", "calibration", "gain", "scores")),
        "</div>",
    ]
    insights = metrics.get("insights") or {}
    if (run_dir / "driver_importance.png").exists():
        parts += ["<h2>Global drivers</h2>", _embed(run_dir / "driver_importance.png")]
        groups = insights.get("importance_by_group") or {}
        parts.append(_table(pd.DataFrame(list(groups.items()), columns=["group", "share"])))
        match = (insights.get("match") or {}).get("churners")
        if match:
            parts.append(
                f"<p>Top driver = true mechanism (synthetic truth) for {match['match_rate']:.1%} of "
                f"{match['customers']} churners; chance {match['chance']:.1%}, always the commonest "
                f"{match['majority']:.1%}.</p>"
            )
    segments = insights.get("segments") or {}
    if segments:
        parts.append("<h2>Segments</h2><div class=grid>")
        for key, title in (("rfm", "RFM segments"), ("clusters", "Behaviour clusters")):
            frame = pd.DataFrame(segments[key])
            if key == "clusters":
                frame["segment"] = "cluster " + frame["segment"].astype(str)
            plot = _segments_plot(frame, title, out / f"segments_{key}.png")
            parts.append(f"<div>{plot}{_table(frame)}</div>")
        parts.append("</div>")
        if (run_dir / "segment_selection.png").exists():
            parts += ["<h3>Choosing k (elbow and silhouette)</h3>", _embed(run_dir / "segment_selection.png")]
    if metrics.get("recommender"):
        parts += _offers(metrics["recommender"])
    if (run_dir / ROBUSTNESS_FILE).exists():
        parts += _robustness(run_dir)
    doc = (
        "<!doctype html><html><head><meta charset=utf-8><title>churnwatch report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    path = run_dir / REPORT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return path
