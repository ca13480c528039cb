"""The robustness study: each perturbation by hand on a small raw table (counts, dates, values), then the
tiny trained model studied end to end (strength 0 is the clean run, every model × perturbation × strength
and every customer in the result, the report's section) and a bad option refused in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from churnwatch.artifact.model_file import load_artifact, load_model
from churnwatch.data.loaders import load_events
from churnwatch.data.schema import EventSchema
from churnwatch.errors import ConfigError, DataValidationError
from churnwatch.jobs.perturbations import (
    UNSEEN_SUFFIX,
    Perturbation,
    PerturbationConfig,
    RawEvents,
    apply,
    noise_fields,
    plan,
)
from churnwatch.jobs.robustness import run_robustness, write_outputs
from tests.helpers import MONITOR_THRESHOLDS, REPO, SCHEMA_CFG, make_events

AS_OF = pd.Timestamp("2024-05-01")
SCHEMA = EventSchema.from_config(SCHEMA_CFG)


@pytest.fixture
def raw() -> RawEvents:
    return RawEvents.of(make_events(n_customers=60), SCHEMA)


def _apply(raw: RawEvents, kind: str, strength: float, field: str | None = None, seed: int = 0):
    return apply(Perturbation(kind, strength, field), raw, AS_OF, seed, ["amount"])


def _after(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["ts"] >= AS_OF].sort_values(["cid", "ts"]).reset_index(drop=True)


# -- each perturbation does what it says ---------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_removes_that_share_of_the_history_and_nothing_after_as_of(raw, rate):
    before = raw.before(AS_OF)
    out = _apply(raw, "dropout", rate)
    assert out.changed_rows == round(rate * before.sum())
    assert len(out.frame) == len(raw.frame) - out.changed_rows
    assert (out.frame["ts"] < AS_OF).sum() == before.sum() - out.changed_rows
    pd.testing.assert_frame_equal(_after(out.frame), _after(raw.frame))
    assert out.as_of == AS_OF


@pytest.mark.parametrize("days", [1, 7, 30])
def test_late_data_drops_exactly_the_last_days_before_as_of(raw, days):
    out = _apply(raw, "late_data", days)
    start = AS_OF - pd.Timedelta(days=days)
    ts = out.frame["ts"]
    assert not ((ts >= start) & (ts < AS_OF)).any()
    window = ((raw.frame["ts"] >= start) & (raw.frame["ts"] < AS_OF)).sum()
    assert window > 0 and out.changed_rows == window and len(out.frame) == len(raw.frame) - window
    assert (ts < start).sum() == (raw.frame["ts"] < start).sum()  # older history untouched
    pd.testing.assert_frame_equal(_after(out.frame), _after(raw.frame))


def test_amount_noise_is_lognormal_with_that_sigma_on_the_history_only(raw):
    out = _apply(raw, "amount_noise", 0.3)
    before = raw.before(AS_OF)
    old, new = raw.frame["amount"].to_numpy(), out.frame["amount"].to_numpy()
    has = before & (old > 0)
    log_ratio = np.log(new[has] / old[has])
    assert abs(log_ratio.std() - 0.3) < 0.05 and abs(np.median(log_ratio)) < 0.05
    assert np.array_equal(new[~before], old[~before], equal_nan=True)
    assert np.isnan(new[np.isnan(old)]).all()  # a missing amount stays missing
    pd.testing.assert_frame_equal(out.frame.drop(columns="amount"), raw.frame.drop(columns="amount"))


def test_noise_fields_default_to_the_non_negative_log_scale_numbers():
    schema = EventSchema.from_config(
        {**SCHEMA_CFG, "numeric": [
            {"name": "amount", "min": 0}, {"name": "score", "min": 0, "transform": "none"},
            {"name": "delta"}, {"name": "derived_total", "min": 0},
        ]}
    )  # fmt: skip
    assert noise_fields(schema, ["amount", "score", "delta"], None) == ["amount"]  # derived_total: no column
    assert noise_fields(schema, ["amount", "score"], ["score"]) == ["score"]
    with pytest.raises(ConfigError, match="noise_fields"):
        noise_fields(schema, ["amount"], ["nope"])


def test_blank_sets_the_field_null_before_as_of(raw):
    out = _apply(raw, "blank", 1.0, "cat")
    before = raw.before(AS_OF)
    assert out.frame["cat"][before].isna().all()
    assert out.changed_rows == raw.frame["cat"][before].notna().sum()
    assert out.frame["cat"][~before].equals(raw.frame["cat"][~before].astype(object))
    assert out.frame["kind"].equals(raw.frame["kind"])


def test_unseen_recodes_that_share_of_the_values_with_new_tokens(raw):
    out = _apply(raw, "unseen", 0.5, "cat")
    before = raw.before(AS_OF)
    had = before & raw.frame["cat"].notna().to_numpy()
    recoded = out.frame["cat"].astype(str).str.endswith(UNSEEN_SUFFIX).to_numpy()
    assert recoded.sum() == out.changed_rows == round(0.5 * had.sum())
    assert not recoded[~had].any()
    originals = out.frame["cat"][recoded].str.removesuffix(UNSEEN_SUFFIX)
    assert originals.equals(raw.frame["cat"][recoded].astype(object))
    loaded = load_events("e.parquet", SCHEMA, frame=out.frame, end_date="2030-01-01").frame
    assert set(loaded["cat"].astype(str)) - {"a", "b", "c", "d", "__missing__"} == {
        f"{v}{UNSEEN_SUFFIX}" for v in "abcd"
    }


def test_duplicates_are_exact_copies_that_the_loader_drops_under_policy_drop(raw):
    out = _apply(raw, "duplicates", 0.5)
    before = raw.before(AS_OF)
    assert (
        out.changed_rows == round(0.5 * before.sum()) and len(out.frame) == len(raw.frame) + out.changed_rows
    )
    assert (out.frame.iloc[len(raw.frame) :]["ts"] < AS_OF).all()
    clean = load_events("e.parquet", SCHEMA, frame=raw.frame, end_date="2030-01-01")
    doubled = load_events("e.parquet", SCHEMA, frame=out.frame, end_date="2030-01-01")
    pd.testing.assert_frame_equal(doubled.frame, clean.frame)  # every added row was an exact copy
    assert "duplicate" not in clean.report.dropped
    assert doubled.report.dropped["duplicate"] == out.changed_rows
    with pytest.raises(DataValidationError, match="duplicate"):
        load_events("e.parquet", SCHEMA, frame=out.frame, end_date="2030-01-01", policy="fail")


def test_as_of_shift_moves_the_date_and_leaves_the_events(raw):
    out = _apply(raw, "as_of_shift", -7)
    assert out.as_of == AS_OF - pd.Timedelta(days=7) and out.frame is raw.frame and out.changed_rows == 0


@pytest.mark.parametrize(
    ("kind", "field"),
    [("dropout", None), ("late_data", None), ("amount_noise", None), ("blank", "cat"), ("unseen", "cat"),
     ("duplicates", None), ("as_of_shift", None)],
)  # fmt: skip
def test_strength_zero_changes_nothing_and_a_seed_repeats_itself(raw, kind, field):
    zero = _apply(raw, kind, 0, field)
    assert zero.changed_rows == 0 and zero.as_of == AS_OF
    pd.testing.assert_frame_equal(zero.frame.reset_index(drop=True), raw.frame, check_dtype=False)
    strong = 0.3 if kind not in ("late_data", "as_of_shift") else 7
    first, again = _apply(raw, kind, strong, field), _apply(raw, kind, strong, field)
    pd.testing.assert_frame_equal(first.frame, again.frame)
    if kind in ("dropout", "amount_noise", "unseen", "duplicates"):
        assert not first.frame.equals(_apply(raw, kind, strong, field, seed=1).frame)


def test_plan_lists_every_kind_strength_and_field():
    config = PerturbationConfig(dropout=(0.1,), late_days=(), blank_fields=("cat",), unseen_share=(0.2, 0.4))
    names = [p.label for p in plan(config, SCHEMA, ["cid", "ts", "kind", "cat", "amount"])]
    assert names == [
        "dropout 0.1", "amount_noise 0.1", "amount_noise 0.3", "amount_noise 0.5", "blank cat 1",
        "unseen kind 0.2", "unseen kind 0.4", "unseen cat 0.2", "unseen cat 0.4", "duplicates 0.1",
        "duplicates 0.5", "as_of_shift -7", "as_of_shift 7",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dropout": [1.0]}, r"perturbations.dropout\[0\]=1.0: must be a number in \[0, 1\)"),
        ({"late_days": [-1]}, r"perturbations.late_days\[0\]=-1: must be an integer ≥ 0"),
        ({"unseen_share": [0.2, 2]}, r"perturbations.unseen_share\[1\]=2: must be a number in \[0, 1\]"),
        ({"noise_sigma": [-0.1]}, r"perturbations.noise_sigma\[0\]=-0.1"),
        ({"dropouts": [0.1]}, "unknown key"),
    ],
)
def test_bad_perturbation_options_are_one_line_errors(values, message):
    with pytest.raises(ConfigError, match=message) as err:
        PerturbationConfig.from_mapping(values)
    assert "\n" not in str(err.value)


# -- the study end to end ------------------------------------------------------------------------------------
SMALL = {
    "dropout": [0.0, 0.5],
    "late_days": [7, 60],
    "noise_sigma": [0.3],
    "blank_fields": ["channel"],
    "unseen_share": [0.5],
    "unseen_fields": ["category"],
    "duplicate_share": [0.5],
    "as_of_shift_days": [-7],
}


@pytest.fixture(scope="module")
def study(model, tmp_path_factory):
    """The tiny model, and a copy of it in another dir (two models), studied at its test cutoff."""
    other = tmp_path_factory.mktemp("robustness") / "copy"
    other.mkdir()
    shutil.copy(model, other / "model.pt")
    data = model.parent.parent / "data"
    _, meta = load_artifact(model)
    result = run_robustness(
        [model.parent, other / "model.pt"],
        data / "events.parquet",
        meta["data"]["test_cutoff"],
        customers_path=data / "customers.parquet",
        perturbations=SMALL,
        monitor_thresholds=MONITOR_THRESHOLDS,
        device="cpu",
        progress=False,
    )
    return result, meta


def test_the_study_holds_every_model_perturbation_and_strength(study):
    result, meta = study
    rows = pd.DataFrame(result["rows"])
    models = list(result["models"])
    assert len(models) == 2 and len(set(models)) == 2
    expected = {("clean", 0.0)} | {
        (p, float(s))
        for p, strengths in [
            ("dropout", [0.0, 0.5]), ("late_data", [7, 60]), ("amount_noise", [0.3]),
            ("blank channel", [1.0]),
            ("unseen category", [0.5]), ("duplicates", [0.5]), ("as_of_shift", [-7]),
        ]
        for s in strengths
    }  # fmt: skip
    for model in models:
        got = rows[rows["model"] == model]
        assert set(zip(got["perturbation"], got["strength"], strict=True)) == expected
        assert len(got) == len(expected)
    clean = rows[rows["kind"] == "clean"].iloc[0]
    assert clean["auroc"] == pytest.approx(meta["test_metrics"]["test/auroc"], abs=1e-3)  # as tested
    assert result["settings"]["as_of"] == meta["data"]["test_cutoff"]
    # both copies are the same model: the same figures, run for run
    first, second = (rows[rows["model"] == m].drop(columns="model").reset_index(drop=True) for m in models)
    pd.testing.assert_frame_equal(first, second)


def test_strength_zero_is_the_clean_run_and_every_customer_is_in_every_result(study):
    result, _ = study
    rows = pd.DataFrame(result["rows"])
    rows = rows[rows["model"] == rows["model"].iloc[0]]
    clean = rows[rows["kind"] == "clean"].iloc[0]
    zero = rows[(rows["kind"] == "dropout") & (rows["strength"] == 0)].iloc[0]
    for key in ("auroc", "average_precision", "high_precision", "events", "customers", "mean_probability"):
        assert zero[key] == clean[key], key
    assert zero["tier_changed"] == 0 and zero["delta_auroc"] == 0
    assert (rows["customers"] == clean["customers"]).all() and (rows["evaluated"] == clean["evaluated"]).all()
    # sixty days of late data remove some customers' whole history: they are still scored (no history)
    wiped = rows[(rows["kind"] == "late_data") & (rows["strength"] == 60)].iloc[0]
    assert wiped["lost_history"] > 0 and wiped["events"] < clean["events"]
    assert rows[rows["kind"] == "dropout"].set_index("strength").loc[0.5, "tier_changed"] > 0
    # exact copies are dropped by the loader (policy drop): the model sees the clean events
    dup = rows[rows["kind"] == "duplicates"].iloc[0]
    assert dup["changed_rows"] > 0 and dup["events"] == clean["events"] and dup["auroc"] == clean["auroc"]


def test_the_monitor_verdict_of_each_input_flags_the_late_feed(study):
    result, _ = study
    rows = pd.DataFrame(result["rows"]).set_index(["perturbation", "strength"])
    rows = rows[rows["model"] == rows["model"].iloc[0]]
    assert rows.loc[("clean", 0.0), "monitor"]["verdict"] == "ok"
    late = rows.loc[("late_data", 7.0), "monitor"]
    assert late["freshness"]["silent_days"] >= 7 and late["verdict"] != "ok"
    assert {"check": "freshness", "name": "silent_days", "level": "warn"} in [
        {k: r[k] for k in ("check", "name", "level")} for r in late["reasons"]
    ]


def test_outputs_json_plot_and_the_report_section(study, model, tmp_path):
    result, _ = study
    run_dir = tmp_path / "run"
    shutil.copytree(model.parent, run_dir)
    paths = write_outputs(result, run_dir)
    assert [p.name for p in paths] == ["robustness.json", "robustness.png", "report.html"]
    loaded = json.loads((run_dir / "robustness.json").read_text())  # strict JSON
    assert len(loaded["rows"]) == len(result["rows"])
    html = (run_dir / "report.html").read_text()
    assert "<h2>Robustness</h2>" in html and "late_data" in html and "robustness" in html
    with pytest.raises(ConfigError, match="plot_metric"):
        write_outputs(result, tmp_path / "other", metric="recall")


def test_a_table_the_contract_refuses_is_recorded_not_fatal(model, tmp_path):
    """Under policy=fail, duplicated rows are refused: that run says so, the others go on."""
    artifact = load_model(model, "cpu")
    artifact.meta["data"]["policy"] = "fail"
    data = model.parent.parent / "data"
    events = pd.read_parquet(data / "events.parquet").drop_duplicates()  # the clean file passes policy=fail
    events.to_parquet(tmp_path / "events.parquet")
    result = run_robustness(
        [artifact],
        tmp_path / "events.parquet",
        artifact.meta["data"]["test_cutoff"],
        customers_path=data / "customers.parquet",
        perturbations={
            **{k: [] for k in ("dropout", "late_days", "noise_sigma", "blank_share", "unseen_share")},
            **{"duplicate_share": [0.1], "as_of_shift_days": []},
        },
        device="cpu",
        progress=False,
    )
    clean, refused = result["rows"]
    assert clean["kind"] == "clean" and clean["auroc"] is not None and "error" not in clean
    assert refused["kind"] == "duplicates" and "duplicate" in refused["error"]
    assert "\n" not in refused["error"] and "auroc" not in refused
    run_dir = tmp_path / "run"
    shutil.copytree(model.parent, run_dir)
    write_outputs(result, run_dir)
    assert "Refused by the data contract" in (run_dir / "report.html").read_text()


def test_a_bad_option_on_the_command_line_is_one_line(model, tmp_path):
    args = [f"model_paths=[{model}]", f"events_path={model.parent.parent / 'data' / 'events.parquet'}",
            "as_of=2024-09-01", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    for bad, line in [
        ("perturbations.dropout=[0.2,1.5]", "perturbations.dropout[1]=1.5: must be a number in [0, 1)"),
        ("perturbations.blank_fields=[nope]", "perturbations.blank_fields: ['nope'] are not categorical"),
    ]:
        proc = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "robustness.py"), *args, bad],
            capture_output=True, text=True, cwd=REPO, check=False,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("churnwatch robustness: ") and line in lines[0]
