"""The robustness study: how far do a model's warnings move when its input is disturbed the way real feeds
are (events lost, a late feed, noisy amounts, a field gone blank, new category codes, duplicated rows, the
scoring date off by a week)?

For a past date whose outcome is known, each model scores the clean events once and each perturbed copy
once (`perturbations.py`), with the same `Scorer` and drivers off; labels are the monitor's backtest
labels of the clean log (the training definition), so only the inputs change. Each run is judged against
the same customers: AUROC, average precision, precision of the high tier and the share of customers whose
tier changed. Outputs: robustness.json, a console table, robustness.png and, when the output dir is a
training run's, its report's "Robustness" section.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churnwatch.artifact.model_file import Artifact
from churnwatch.config.options import check_values
from churnwatch.data.parsing import parse_day
from churnwatch.data.readers import read_table
from churnwatch.errors import ConfigError, DataValidationError
from churnwatch.io.signing import Verification
from churnwatch.jobs.monitor import (
    COLOURS,
    LabelSource,
    assess,
    check_thresholds,
    realised_labels,
    write_json,
)
from churnwatch.jobs.perturbations import (
    Perturbation,
    PerturbationConfig,
    RawEvents,
    apply,
    noise_fields,
    plan,
)
from churnwatch.monitoring.drift import backtest
from churnwatch.runs.report import ROBUSTNESS_FILE, ROBUSTNESS_PLOT, write_report
from churnwatch.scoring.inputs import ScoringInput
from churnwatch.scoring.scorer import Scorer

METRICS = {
    "auroc": "AUROC",
    "average_precision": "average precision",
    "high_precision": "high-tier precision",
    "tier_changed": "share of customers changing tier",
}


def model_file(path: str | Path) -> Path:
    """A model file, or the run dir holding one (its model.pt)."""
    path = Path(path)
    return path / "model.pt" if path.is_dir() else path


def model_names(scorers: Sequence[Scorer]) -> list[str]:
    """Each model's name: its training config's model name (else its run dir's), with the run dir added
    where two models would share one."""
    base = [
        str(((s.meta.get("config") or {}).get("model") or {}).get("name") or Path(s.model_path).parent.name)
        for s in scorers
    ]
    return [
        f"{name} ({Path(s.model_path).parent.name})" if base.count(name) > 1 else name
        for name, s in zip(base, scorers, strict=True)
    ]


def run_robustness(
    model_paths: Sequence[str | Path | Artifact],
    events_path: str | Path,
    as_of: str | pd.Timestamp,
    *,
    customers_path: str | Path | None = None,
    perturbations: PerturbationConfig | Mapping[str, Any] | None = None,
    labels: LabelSource | None = None,
    monitor_thresholds: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    verify: Verification | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every model (a model.pt, a run dir holding one, or a loaded `Artifact`) × perturbation × strength
    scored and judged against the clean run; robustness.json is this dict (`settings`, `models`, and
    `rows`: one per model and run, the clean one first). With
    `monitor_thresholds`, each run also gets the monitor's verdict on its input (models with a reference)."""
    as_of_ts = parse_day(as_of, "as_of")
    check_values({"seed": seed})
    if monitor_thresholds is not None:
        check_thresholds(monitor_thresholds)
    if isinstance(model_paths, str | Path):  # model_paths=run/model.pt on the command line
        model_paths = [model_paths]
    if not model_paths:
        raise ConfigError("model_paths is empty: name at least one model.pt or run dir")
    config = (
        perturbations
        if isinstance(perturbations, PerturbationConfig)
        else PerturbationConfig.from_mapping(perturbations)
    )
    scorers = [
        Scorer(
            p if isinstance(p, Artifact) else model_file(p),
            device=device,
            drivers={"enabled": False},
            verify=verify,
        )
        for p in model_paths
    ]
    names = model_names(scorers)
    events = read_table(events_path)
    columns = list(events.columns)
    rows: list[dict[str, Any]] = []
    models: dict[str, dict[str, Any]] = {}
    total = sum(len(plan(config, s.schema, columns)) + 1 for s in scorers)
    with Progress(
        TextColumn("robustness {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("", total=total)
        for name, scorer in zip(names, scorers, strict=True):  # one model's inputs in memory at a time
            bar.update(task, description=f"{name} clean")
            raw = RawEvents.of(events, scorer.schema, events_path)
            study = _Study(scorer, raw, as_of_ts, customers_path, config, labels or LabelSource())
            if scorer.meta.get("reference"):  # exported ensembles carry none: no verdict to record
                study.monitor_thresholds = monitor_thresholds
            clean = study.clean()
            rows.append({"model": name, **clean})
            bar.advance(task)
            for p in study.plan:
                bar.update(task, description=f"{name} {p.label}")
                rows.append({"model": name, **study.perturbed(p, seed, clean)})
                bar.advance(task)
            models[name] = {
                "path": str(scorer.model_path),
                "horizon_days": int(scorer.data_cfg["horizon_days"]),
                "labels": study.origin,
                "noise_fields": study.amount_fields,
                "expected_auroc": scorer.meta.get("test_metrics", {}).get("test/auroc"),
            }
    return {
        "settings": {
            "events_path": str(events_path),
            "customers_path": str(customers_path) if customers_path else None,
            "as_of": str(as_of_ts.date()),
            "seed": seed,
            "perturbations": asdict(config),
        },
        "models": models,
        "rows": rows,
    }


class _Study:
    """One model's clean run and its perturbed runs, judged on the clean run's labelled customers."""

    def __init__(
        self,
        scorer: Scorer,
        raw: RawEvents,
        as_of: pd.Timestamp,
        customers_path: str | Path | None,
        config: PerturbationConfig,
        source: LabelSource,
    ):
        self.scorer, self.as_of, self.customers_path = scorer, as_of, customers_path
        self.raw = raw
        columns = list(raw.frame.columns)
        self.amount_fields = noise_fields(scorer.schema, columns, config.noise_fields)
        self.plan: list[Perturbation] = plan(config, scorer.schema, columns)
        self.clean_input = scorer.load(self.raw.frame, customers_path, as_of)
        found, origin = realised_labels(scorer, self.clean_input, source)
        if found is None:
            raise ConfigError(f"as_of={as_of.date()}: the study needs churn labels: {origin}")
        self.labels, self.origin = found, origin
        self.clean_ids = np.asarray(self.clean_input.input_ids, dtype=str)
        self.clean_tiers: pd.Series | None = None
        self.monitor_thresholds: Mapping[str, Any] | None = None
        """The monitor's thresholds: each run's input then gets its verdict (`monitor` in the row)."""

    def clean(self) -> dict[str, Any]:
        scored, events = self._score(self.clean_input)
        self.clean_tiers = scored.loc[self.labels.index, "risk_tier"]
        return {
            "perturbation": "clean",
            "kind": "clean",
            "field": None,
            "strength": 0.0,
            "as_of": str(self.as_of.date()),
            "changed_rows": 0,
            "events": events,
            **self._judge(scored),
            "monitor": self._monitor(self.clean_input, scored),
        }

    def perturbed(self, p: Perturbation, seed: int, clean: Mapping[str, Any]) -> dict[str, Any]:
        """One perturbed run; a table the contract refuses (e.g. duplicates under policy=fail) is recorded
        as that run's `error`, not the end of the study."""
        out = apply(p, self.raw, self.as_of, seed, self.amount_fields)
        row = {
            "perturbation": p.name,
            "kind": p.kind,
            "field": p.field,
            "strength": p.strength,
            "as_of": str(out.as_of.date()),
            "changed_rows": out.changed_rows,
        }
        try:
            with _quiet_loader():  # the clean run logged the validation summary; rows hold the counts
                inp = self.scorer.load(out.frame, self.customers_path, out.as_of)
        except DataValidationError as exc:
            return {**row, "error": str(exc).splitlines()[0]}
        # every customer of the clean input is scored: one whose history the perturbation removed gets
        # the scorer's no-history answer, as in production
        inp = replace(inp, input_ids=np.union1d(np.asarray(inp.input_ids, dtype=str), self.clean_ids))
        scored, events = self._score(inp)
        judged = self._judge(scored)
        delta = _diff(judged["auroc"], clean["auroc"])
        return {
            **row,
            "events": events,
            **judged,
            "delta_auroc": delta,
            "monitor": self._monitor(inp, scored),
        }

    def _score(self, inp: ScoringInput) -> tuple[pd.DataFrame, int]:
        """Scores by customer id (each input id once: the scorer checks it), and the history events read."""
        scorer = self.scorer
        scored = scorer.rank(scorer.score_input(inp, progress=False)).set_index("customer_id")
        return scored, int((inp.snaps.end - inp.snaps.start).sum())

    def _monitor(self, inp: ScoringInput, scored: pd.DataFrame) -> dict[str, Any] | None:
        """What `churnwatch monitor` would say of this input: verdict, reasons, newest event."""
        if self.monitor_thresholds is None:
            return None
        report, _ = assess(self.scorer, inp, scored, self.monitor_thresholds)
        return {k: report[k] for k in ("verdict", "reasons", "freshness")}

    def _judge(self, scored: pd.DataFrame) -> dict[str, Any]:
        """The run's figures on the clean run's labelled customers."""
        rows = scored.loc[self.labels.index]
        tiers = rows["risk_tier"].astype(str)
        bt = backtest(rows["churn_probability"].to_numpy(), self.labels.to_numpy(), tiers.to_numpy())
        changed = float((tiers != self.clean_tiers).mean()) if self.clean_tiers is not None else 0.0
        return {
            "auroc": bt["auroc"],
            "average_precision": bt["average_precision"],
            "high_precision": bt["tiers"]["high"]["precision"],
            "high_customers": bt["tiers"]["high"]["customers"],
            "tier_changed": changed,
            "customers": len(scored),
            "evaluated": len(rows),
            "churn_rate": bt["churn_rate"],
            "mean_probability": bt["mean_probability"],
            "lost_history": int(rows["no_history"].sum()),
        }


def _diff(value: float | None, clean: float | None) -> float | None:
    return None if value is None or clean is None else value - clean


@contextmanager
def _quiet_loader() -> Iterator[None]:
    loader = logging.getLogger("churnwatch.data.loaders")
    level = loader.level
    loader.setLevel(logging.ERROR)
    try:
        yield
    finally:
        loader.setLevel(level)


# -- outputs ----------------------------------------------------------------------------------------------
def check_metric(metric: str) -> None:
    """A plot metric the rows hold (checked before the study runs, not after)."""
    if metric not in METRICS:
        raise ConfigError(f"plot_metric={metric!r}: must be one of {', '.join(METRICS)}")


def write_outputs(study: Mapping[str, Any], output_dir: str | Path, metric: str = "auroc") -> list[Path]:
    """robustness.json and robustness.png; in a training run's dir, its report too (with the section)."""
    check_metric(metric)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json(study, out / ROBUSTNESS_FILE), plot(study, out / ROBUSTNESS_PLOT, metric)]
    if (out / "metrics.json").exists() and (out / "predictions.parquet").exists():
        paths.append(write_report(out))
    return paths


def plot(study: Mapping[str, Any], path: Path, metric: str = "auroc") -> Path:
    """`metric` against the strength, one panel per perturbation (and field), one line per model; the
    clean run is each line's strength 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pd.DataFrame(study["rows"])
    clean = rows[rows["kind"] == "clean"].set_index("model")[metric]
    runs = rows[rows["kind"] != "clean"]
    panels = list(dict.fromkeys(runs["perturbation"]))
    ncols = min(3, max(len(panels), 1))
    nrows = max(1, -(-len(panels) // ncols))
    # one y scale for every panel: a small move looks small next to a large one
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False, sharey=True)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for model, group in runs[runs["perturbation"] == panel].groupby("model", sort=False):
            x = np.r_[0.0, group["strength"].to_numpy(dtype=float)]
            y = np.r_[clean.get(model, np.nan), group[metric].to_numpy(dtype=float)]
            order = np.argsort(x, kind="stable")
            ax.plot(x[order], y[order], "o-", label=model, markersize=4)
        ax.set(title=panel, xlabel=_unit(panel), ylabel=METRICS[metric])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if panels:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{METRICS[metric]} under perturbation (as of {study['settings']['as_of']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


UNITS = {
    "dropout": "share of events removed",
    "late_data": "latest days missing",
    "amount_noise": "lognormal sigma",
    "blank": "share of values blanked",
    "unseen": "share of values unseen",
    "duplicates": "share of events duplicated",
    "as_of_shift": "days as_of moved",
}


def _unit(panel: str) -> str:
    return UNITS[panel.split(" ")[0]]


def render(study: Mapping[str, Any], console: Console) -> None:
    """One row per run, per model: AUROC (change against clean), the share of customers whose tier
    changed and, where recorded, the monitor's verdict on the input."""
    rows = pd.DataFrame(study["rows"])
    models = list(study["models"])
    table = Table(
        title=f"robustness as of {study['settings']['as_of']}: AUROC (Δ clean) / tier changed / monitor"
    )
    table.add_column("perturbation")
    table.add_column("strength", justify="right")
    for model in models:
        table.add_column(model, justify="right")
    cells = {(r["perturbation"], r["strength"], r["model"]): r for _, r in rows.iterrows()}
    for panel, strength in dict.fromkeys(zip(rows["perturbation"], rows["strength"], strict=True)):
        table.add_row(panel, f"{strength:g}", *(_cell(cells.get((panel, strength, m))) for m in models))
    console.print(table)
    for model, info in study["models"].items():
        expected = info.get("expected_auroc")
        clean = rows[(rows["model"] == model) & (rows["kind"] == "clean")].iloc[0]
        console.print(
            f"{model}: clean AUROC {_num(clean['auroc'])} (test at training {_num(expected)}), "
            f"{int(clean['evaluated']):,} labelled customers, churn rate {clean['churn_rate']:.1%}"
        )


def _cell(row: pd.Series | None) -> str:
    if row is None:
        return "-"
    if isinstance(row.get("error"), str):
        return "[red]refused[/]"
    delta = row.get("delta_auroc")
    shown = f"{_num(row['auroc'])}"
    if delta is not None and not pd.isna(delta):
        shown += f" ({delta:+.3f})"
    monitor = row.get("monitor")
    verdict = (
        f" [{COLOURS[monitor['verdict']]}]{monitor['verdict']}[/]" if isinstance(monitor, Mapping) else ""
    )
    return f"{shown} / {row['tier_changed']:.0%}{verdict}"


def _num(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.3f}"
