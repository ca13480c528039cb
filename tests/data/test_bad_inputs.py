"""The malformed-input corpus (tests/data/bad/, written by scripts/make_bad_inputs.py) through the loaders
under both policies, through scoring end to end and through the CLI: every case either goes through,
each input customer scored exactly once and the dropped rows counted per reason (in the loader's report
and in the scoring sidecar), or fails with one line naming the file and the column. Never a traceback,
never silent loss."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.loaders import load_customers, load_events
from churnwatch.data.validation import JoinReport
from churnwatch.errors import DataValidationError
from churnwatch.jobs.score import ScoreJob, score_file
from churnwatch.scoring.output import report_path
from churnwatch.scoring.scorer import Scorer
from churnwatch.scoring.shards import merge_shards, shard_of
from tests.helpers import BAD_INPUT_CASES, BAD_INPUTS, REPO, SCORE_OPTIONS, rewrite_model


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("make_bad_inputs", REPO / "scripts" / "make_bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def scorer(model: Path) -> Scorer:
    """The model's contract: the schemas and the policy (drop) scoring validates with."""
    return Scorer(model, device="cpu", drivers={"enabled": False})


def _paths(case: dict[str, Any]) -> tuple[Path, Path | None]:
    return BAD_INPUTS / case["events"], BAD_INPUTS / case["customers"] if case.get("customers") else None


def _load(scorer: Scorer, case: dict[str, Any], policy: str) -> tuple[Any, pd.DataFrame | None, Any]:
    """Events, then customers, validated and joined as scoring does, under `policy`."""
    events, customers = _paths(case)
    loaded = load_events(events, scorer.schema, policy=policy)
    if customers is None:
        return loaded, None, None
    frame, report = load_customers(
        customers,
        scorer.customer_schema,
        id_column=scorer.schema.customer_id,
        timezone=scorer.schema.timezone,
        policy=policy,
    )
    JoinReport.of(loaded.input_ids, frame.index).check(customers)
    return loaded, frame, report


def _assert_one_line(message: str, path: Path, match: str, column: str | None, example: bool) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert str(path) in message
    assert re.search(match, message), message
    if column is not None:
        assert column in _columns_named(message), message
    if example:
        assert re.search(r"row \d+: \{", message), message


def _columns_named(message: str) -> list[str]:
    """The columns a message names: "column 'a'" or, for a whole row (duplicates), "column 'a,b,c'"."""
    return [c for found in re.findall(r"column '([^']*)'", message) for c in found.split(",")]


def _failing_file(case: dict[str, Any]) -> Path:
    events, customers = _paths(case)
    return customers if case.get("file") == "customers" else events


def test_corpus_has_every_kind_of_case_small_and_as_the_script_writes_it(tmp_path: Path) -> None:
    assert len(BAD_INPUT_CASES) >= 25
    assert {c["outcome"] for c in BAD_INPUT_CASES.values()} == {"passes", "fails"}
    for case in BAD_INPUT_CASES.values():
        for key in ("events", "customers"):
            if case.get(key):
                assert (BAD_INPUTS / case[key]).stat().st_size < 16_000  # commit-sized
    _script().main(tmp_path)
    assert json.loads((tmp_path / "cases.json").read_text()) == BAD_INPUT_CASES
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted(
        p.relative_to(BAD_INPUTS) for p in BAD_INPUTS.rglob("*")
    )


@pytest.mark.parametrize("policy", ["drop", "fail"])
@pytest.mark.parametrize("name", sorted(BAD_INPUT_CASES))
def test_loaders_count_every_dropped_row_or_fail_in_one_line(scorer: Scorer, name: str, policy: str) -> None:
    case = BAD_INPUT_CASES[name]
    dropped = case.get("dropped", {})
    if case["outcome"] == "fails" or (policy == "fail" and any(dropped.values())):
        with pytest.raises(DataValidationError) as err:
            _load(scorer, case, policy)
        message = str(err.value)
        if case["outcome"] == "fails":
            match = case["match_fail"] if policy == "fail" and case["match_fail"] else case["match"]
            _assert_one_line(message, _failing_file(case), match, case["column"], case["example_row"])
        else:  # policy fail stops at the first invalid row: its file, column and the row itself
            table = "customers" if dropped["customers"] and not dropped["events"] else "events"
            path = _paths(case)[1] if table == "customers" else _paths(case)[0]
            assert set(case["columns"]) & set(_columns_named(message)), message
            _assert_one_line(message, path, r"set data\.policy=drop", None, example=True)
        return
    loaded, customers, customer_report = _load(scorer, case, policy)
    assert loaded.report.dropped == dropped["events"]
    assert sorted(loaded.input_ids) == case["ids"]  # every customer, even one whose rows all dropped
    assert loaded.report.rows_kept + sum(dropped["events"].values()) == loaded.report.rows_read
    if customers is not None:
        assert customer_report.dropped == dropped["customers"]
        assert sorted(set(customers.index) & set(case["ids"])) == sorted(case["joined"])


@pytest.mark.parametrize("name", sorted(BAD_INPUT_CASES))
def test_scoring_scores_every_customer_once_and_reports_drops(model: Path, name: str, tmp_path: Path) -> None:
    case = BAD_INPUT_CASES[name]
    events, customers = _paths(case)
    out = tmp_path / "scores.parquet"
    if case["outcome"] == "fails":
        with pytest.raises(DataValidationError) as err:
            score_file(
                ScoreJob(
                    model_path=model,
                    events_path=events,
                    output_path=out,
                    customers_path=customers,
                    **SCORE_OPTIONS,
                ),
                progress=False,
            )
        _assert_one_line(
            str(err.value), _failing_file(case), case["match"], case["column"], case["example_row"]
        )
        assert not out.exists() and not report_path(out).exists()
        return
    result = score_file(
        ScoreJob(
            model_path=model, events_path=events, output_path=out, customers_path=customers, **SCORE_OPTIONS
        ),
        progress=False,
    )
    scores = pd.read_parquet(out)
    assert sorted(scores["customer_id"]) == case["ids"] and scores["customer_id"].is_unique
    assert scores["churn_probability"].between(0, 1).all()  # NaN is not between: none slipped through
    assert np.isfinite(scores["value_at_risk"]).all()
    sidecar = json.loads(report_path(out).read_text())
    assert sidecar["validation"]["events"]["dropped"] == case["dropped"]["events"]
    if customers is not None:
        assert sidecar["validation"]["customers"]["dropped"] == case["dropped"]["customers"]
    reasons = {**case["dropped"]["events"], **case["dropped"]["customers"]}
    examples = {
        **sidecar["validation"]["events"]["examples"],
        **(sidecar["validation"]["customers"] or {}).get("examples", {}),
    }
    assert set(examples) == set(reasons)  # an example row for every reason
    assert sidecar["customers"] == len(scores) == result.customers
    assert sidecar["no_history"] == int(scores["no_history"].sum())
    assert sidecar["as_of"] == str(scores["as_of"].iloc[0].date()) and sidecar["parts"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_one_customer_with_a_million_events_is_scored_once_on_its_last_max_len(
    model: Path, scorer: Scorer, tmp_path: Path
) -> None:
    case = _script().million_events(tmp_path / "big")
    out = tmp_path / "scores.parquet"
    score_file(
        ScoreJob(model_path=model, events_path=case["events"], output_path=out, **SCORE_OPTIONS),
        progress=False,
    )
    scores = pd.read_parquet(out).set_index("customer_id")
    assert sorted(scores.index) == case["ids"]
    assert scores.loc[case["big"], "n_events"] == case["big_events"]
    assert not scores.loc[case["big"], "no_history"]
    assert json.loads(report_path(out).read_text())["validation"]["events"]["dropped"] == {}
    inp = scorer.load(case["events"])
    seqs = scorer.encoder.transform(inp.log, inp.snaps, None)
    big = list(seqs.customer_id).index(case["big"])
    assert seqs.lengths[big] == scorer.encoder.max_len < case["big_events"]


def test_training_records_what_validation_dropped_in_data_report(model: Path) -> None:
    report = json.loads((model.parent / "data_report.json").read_text())
    assert [Path(r["path"]).name for r in report["validation"]] == ["events.parquet", "customers.parquet"]
    for table in report["validation"]:
        assert (
            table["rows_kept"] + sum(table["dropped"].values()) == table["rows_read"] - table["rows_filtered"]
        )
        assert set(table["examples"]) == set(table["dropped"])


@pytest.mark.parametrize("broken", ["missing_column", "missing_model"])
def test_score_cli_says_one_line_and_exits_2_without_a_traceback(
    model: Path, broken: str, tmp_path: Path
) -> None:
    case = BAD_INPUT_CASES["missing_column"]
    events = BAD_INPUTS / case["events"]
    model_path = tmp_path / "no_model.pt" if broken == "missing_model" else model
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "score.py"), f"model_path={model_path}",
         f"events_path={events}", f"output_path={tmp_path / 'scores.parquet'}", "device=cpu",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("churnwatch score: "), proc.stderr
    if broken == "missing_model":
        assert lines[0] == f"churnwatch score: {model_path}: model file not found"
    else:
        _assert_one_line(lines[0], events, case["match"], case["column"], False)
    assert not (tmp_path / "scores.parquet").exists()


def test_a_model_whose_weights_went_nan_fails_naming_customers_and_writes_nothing(
    model: Path, tmp_path: Path
) -> None:
    """Inputs are finite by construction; a NaN probability can only come from the model. It would rank
    anywhere, so scoring stops instead, naming the customers."""
    broken = rewrite_model(  # metadata and checksum intact
        model, tmp_path / "nan_weights.pt", module=lambda net: next(net.parameters()).fill_(float("nan"))
    )
    case = BAD_INPUT_CASES["single_event_customers"]
    out = tmp_path / "scores.parquet"
    with pytest.raises(FloatingPointError) as err:
        score_file(
            ScoreJob(
                model_path=broken, events_path=BAD_INPUTS / case["events"], output_path=out, **SCORE_OPTIONS
            ),
            progress=False,
        )
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"{broken}: the model gave a non-finite churn probability"
    )
    assert re.search(r"for \d+ of \d+ customers, e\.g\. C00\d", message), message
    assert not out.exists() and not report_path(out).exists()


def _ids_in_shards(num_shards: int) -> list[list[str]]:
    candidates = np.array([f"C{i:03d}" for i in range(1, 40)])
    shards = shard_of(candidates, num_shards)
    return [list(candidates[shards == s][:3]) for s in range(num_shards)]


def test_a_shard_whose_rows_are_all_invalid_scores_its_customers_like_the_unsharded_run(
    model: Path, tmp_path: Path
) -> None:
    """Shard 1's customers have only unparseable timestamps: the unsharded run scores them without history
    (the file has valid rows), and so must the shard, so the merge equals the single run. A file with no
    valid row at all fails unsharded, and so does the merge of its shards."""
    script = _script()
    keep, broken = _ids_in_shards(2)
    frame = script.events(keep + broken).astype({"timestamp": str})
    frame.loc[frame["customer_id"].isin(broken), "timestamp"] = "not a date"
    events = tmp_path / "events.csv"
    events.write_bytes(script.csv(frame))
    common = {**SCORE_OPTIONS, "model_path": model, "events_path": events, "as_of": "2024-11-01"}
    single = pd.read_parquet(
        score_file(ScoreJob(output_path=tmp_path / "single.parquet", **common), progress=False).output_path
    )
    assert set(single.loc[single["no_history"], "customer_id"]) == set(broken)
    parts = [
        score_file(
            ScoreJob(output_path=tmp_path / f"part-{i}.parquet", shard=(2, i), **common), progress=False
        ).output_path
        for i in range(2)
    ]
    merge_shards(model, parts, tmp_path / "merged.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "merged.parquet"), single)

    frame["timestamp"] = "not a date"
    events.write_bytes(script.csv(frame))
    with pytest.raises(DataValidationError, match="no valid events left"):
        score_file(ScoreJob(output_path=tmp_path / "none.parquet", **common), progress=False)
    parts = [
        score_file(
            ScoreJob(output_path=tmp_path / f"none-{i}.parquet", shard=(2, i), **common), progress=False
        ).output_path
        for i in range(2)
    ]
    with pytest.raises(DataValidationError, match="merge: no shard kept a valid event row"):
        merge_shards(model, parts, tmp_path / "none.parquet")
    assert not (tmp_path / "none.parquet").exists()
