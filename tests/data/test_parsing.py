"""Inputs read one way, whatever they hold: a date column has one reading, text never becomes an internal
token, ids padded with NULs are the ids, headers are unambiguous, a customers file's join is reported, and
date options that are not dates fail in one line before any work (issue 16)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.loaders import load_events
from churnwatch.data.parsing import parse_day, parse_timestamps
from churnwatch.data.schema import INTERNAL_TOKENS, MISSING, EventSchema
from churnwatch.errors import ConfigError, DataValidationError
from churnwatch.features.stats import OOV, PAD, Vocabulary
from churnwatch.jobs.score import ScoreJob, score_file
from churnwatch.scoring.output import report_path
from tests.helpers import BAD_INPUT_CASES, BAD_INPUTS, REPO, SCORE_OPTIONS

SCHEMA = {"customer_id": "id", "timestamp": "ts", "categorical": ["kind"], "numeric": []}


def _events(ts: list[str], kinds: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"c{i}" for i in range(len(ts))], "ts": ts, "kind": kinds or ["a"] * len(ts)})


def _load(frame: pd.DataFrame) -> pd.DataFrame:
    return load_events("<events>", EventSchema.from_config(SCHEMA), frame=frame, end_date="2030-01-01").frame


def test_a_day_first_column_is_read_day_first_in_every_row() -> None:
    """05/06 next to 23/05: the column is day-first, so 05/06 is 5 June (a per-value parser says 6 May)."""
    frame = _load(_events(["05/06/2024 10:00", "23/05/2024 08:30", "12/01/2024"]))
    got = frame.set_index("customer_id")["timestamp"]
    assert got["c0"] == pd.Timestamp("2024-06-05 10:00")
    assert got["c1"] == pd.Timestamp("2024-05-23 08:30")
    assert got["c2"] == pd.Timestamp("2024-01-12")


def test_a_month_first_column_is_read_month_first_in_every_row() -> None:
    frame = _load(_events(["05/06/2024 10:00", "05/23/2024 08:30"]))
    assert frame.set_index("customer_id")["timestamp"]["c0"] == pd.Timestamp("2024-05-06 10:00")


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (["23/05/2024", "05/23/2024"], r"day-first in some rows \('23/05/2024'\) and month-first"),
        (["05/06/2024", "01/02/2024"], r"dates like '05/06/2024' read as day-first or month-first"),
    ],
)
def test_a_date_column_without_one_reading_fails_in_one_line_naming_it(values: list[str], match: str) -> None:
    with pytest.raises(DataValidationError, match=match) as err:
        _load(_events(values))
    message = str(err.value)
    assert "\n" not in message and message.startswith("<events>: column 'ts': ")
    assert "data.timestamp_format" in message


def test_the_same_dates_with_a_format_need_no_guess() -> None:
    schema = EventSchema.from_config({**SCHEMA, "timestamp_format": "%d/%m/%Y"})
    raw = _events(["05/06/2024", "01/02/2024"])
    frame = load_events("<e>", schema, frame=raw, end_date="2030-01-01").frame
    assert list(frame["timestamp"]) == [pd.Timestamp("2024-06-05"), pd.Timestamp("2024-02-01")]


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2024-01-18 19:25:01 UTC", "2024-01-18 19:25:01"),
        ("2024-01-18 19:25:01 GMT", "2024-01-18 19:25:01"),
        ("2024-01-18 19:25:01+02", "2024-01-18 17:25:01"),
        ("2024-01-18T19:25:01-05", "2024-01-19 00:25:01"),
        ("2024-01-18 19:25:01 +0200", "2024-01-18 17:25:01"),
        ("2024-01-18 19:25:01", "2024-01-18 19:25:01"),  # naive: already in the zone
    ],
)
def test_zone_names_and_hour_offsets_next_to_naive_times_are_converted(text: str, utc: str) -> None:
    values = pd.Series([text, "2024-01-01 00:00:00", "2024-01-02"], dtype=object)
    assert parse_timestamps(values, "UTC")[0] == pd.Timestamp(utc)


def test_aware_times_beyond_what_zone_rules_convert_stay_in_utc_for_the_range_checks() -> None:
    values = pd.Series(pd.to_datetime([0, 2**40], unit="s", utc=True).as_unit("s"))
    parsed = parse_timestamps(values, "Europe/Berlin")
    assert parsed[0] == pd.Timestamp("1970-01-01 01:00") and parsed[1].year == 36812


def test_a_time_zone_name_pandas_cannot_read_is_an_unparseable_row_not_a_crash() -> None:
    values = pd.Series(["2024-01-18 19:25:01 Europe/Berlin", "2024-01-01 00:00:00"], dtype=object)
    parsed = parse_timestamps(values, "UTC")
    assert pd.isna(parsed[0]) and parsed[1] == pd.Timestamp("2024-01-01")


def test_category_text_never_becomes_an_internal_token() -> None:
    """'<pad>', '<oov>', '<other>', '__missing__' and a backslash-led text are data: each its own category,
    none the null category, none padding or unknown once in the vocabulary; two texts never merge."""
    texts = [*sorted(INTERNAL_TOKENS), "\\<pad>", "\\\\<pad>", None]
    frame = _load(_events(["2024-01-01"] * len(texts), texts))
    kinds = frame["kind"].astype(str)
    assert kinds.nunique() == len(texts)  # nothing merged, not even the escaped forms
    assert (kinds == MISSING).sum() == 1  # only the real null
    assert not (set(kinds[:-1]) & INTERNAL_TOKENS)
    vocab = Vocabulary.fit(frame["kind"])
    assert len(set(vocab.tokens)) == len(vocab.tokens) == len(texts) + 2
    ids = vocab.lookup(frame["kind"])
    assert len(set(ids)) == len(texts) and PAD not in ids and OOV not in ids


@pytest.mark.parametrize("distinct", [50, 20_000], ids=["few-ids", "many-ids"])
def test_ids_are_categories_in_pythons_text_order_whichever_way_they_are_sorted(distinct: int) -> None:
    """Many distinct ids go through Arrow's sort and hash lookup, few through Python's: both give the
    categories Python's sorted() gives (code point order, non-ASCII and astral text too), and every row
    the category of its own normalised id."""
    from churnwatch.data.parsing import normalise_ids

    rng = np.random.default_rng(0)
    alphabet = list("aZ09 .é€ÿĀ😀")
    pool = {"".join(rng.choice(alphabet, rng.integers(1, 7))).strip() or "x" for _ in range(distinct * 2)}
    values = sorted(pool)
    ids = pd.Series(rng.choice(values, size=3 * distinct)).astype(object)
    ids[::97] = None
    got = normalise_ids(ids)
    # each value's label, normalised a few at a time (Python's way): "0.0" and " 17 " are "0" and "17"
    label = {}
    for start in range(0, len(values), 500):
        few = values[start : start + 500]
        label.update(zip(few, normalise_ids(pd.Series(few)).astype(object), strict=True))
    expected = [None if v is None else label[v] for v in ids]
    assert list(got.cat.categories) == sorted({v for v in expected if v is not None})
    assert [None if pd.isna(v) else v for v in got.astype(object)] == expected


def test_nul_padded_ids_are_the_ids() -> None:
    frame = _load(_events(["2024-01-01", "2024-01-02"]).assign(id=["C001\x00\x00", "C001"]))
    assert list(frame["customer_id"].astype(str)) == ["C001", "C001"]


def test_an_input_behind_a_symlink_loop_or_a_dangling_link_says_so(tmp_path: Path) -> None:
    (tmp_path / "a.csv").symlink_to(tmp_path / "b.csv")
    (tmp_path / "b.csv").symlink_to(tmp_path / "a.csv")
    (tmp_path / "gone.csv").symlink_to(tmp_path / "nothing.csv")
    schema = EventSchema.from_config(SCHEMA)
    with pytest.raises(DataValidationError, match=r"a\.csv: symlink loop"):
        load_events(tmp_path / "a.csv", schema)
    with pytest.raises(DataValidationError, match=r"gone\.csv: dangling symlink to '.*nothing\.csv'"):
        load_events(tmp_path / "gone.csv", schema)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("2024-13-45", r"as_of='2024-13-45': not a date \(month must be in 1\.\.12"),
        ("yesterday", r"as_of='yesterday': not a date"),
        ("2300-01-01", r"as_of='2300-01-01': outside the supported dates"),
        ("1500-01-01", r"outside the supported dates"),
    ],
)
def test_an_as_of_that_is_not_a_usable_date_is_one_config_error(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        parse_day(value, "as_of")
    assert "\n" not in str(err.value)


def test_scoring_with_a_bad_as_of_fails_before_reading_anything(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    with pytest.raises(ConfigError, match="as_of='2024-13-45'"):
        job = ScoreJob(
            model_path=model,
            events_path=tmp_path / "no_such_events.csv",
            output_path=out,
            as_of="2024-13-45",
            **SCORE_OPTIONS,
        )
        score_file(job, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("command", ["score", "monitor"])
def test_cli_with_a_bad_as_of_says_one_line_and_exits_2(model: Path, command: str, tmp_path: Path) -> None:
    events = BAD_INPUTS / BAD_INPUT_CASES["single_event_customers"]["events"]
    args = [f"model_path={model}", f"events_path={events}", "as_of=2024-13-45", "device=cpu"]
    args += [f"output_path={tmp_path / 'out.parquet'}"] if command == "score" else []
    proc = subprocess.run(
        [sys.executable, "-m", "churnwatch", command, *args, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"churnwatch {command}: as_of='2024-13-45': not a date")


def test_an_as_of_before_every_event_is_said_in_the_log(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = BAD_INPUTS / BAD_INPUT_CASES["single_event_customers"]["events"]
    with caplog.at_level(logging.WARNING):
        job = ScoreJob(
            model_path=model,
            events_path=events,
            output_path=tmp_path / "s.parquet",
            as_of="2000-01-01",
            **SCORE_OPTIONS,
        )
        score_file(job, progress=False)
    assert any("as_of 2000-01-01 is before every event" in r.getMessage() for r in caplog.records)
    assert (pd.read_parquet(tmp_path / "s.parquet")["risk_tier"] == "unknown").all()


def test_the_sidecar_reports_how_the_customers_file_joined(model: Path, tmp_path: Path) -> None:
    """Customers-only ids are counted (not scored: no events), and the join rate is there to alert on."""
    case = BAD_INPUT_CASES["customers_only_ids"]
    out = tmp_path / "scores.parquet"
    job = ScoreJob(
        model_path=model,
        events_path=BAD_INPUTS / case["events"],
        output_path=out,
        customers_path=BAD_INPUTS / case["customers"],
        **SCORE_OPTIONS,
    )
    score_file(job, progress=False)
    join = json.loads(report_path(out).read_text())["customers_join"]
    assert join == {
        "event_customers": 4,
        "with_attributes": 4,
        "join_rate": 1.0,
        "customers_only": 2,
        "examples": {"customers": "C101"},
    }
    assert sorted(pd.read_parquet(out)["customer_id"]) == case["ids"]


def test_a_day_first_file_scores_like_its_iso_twin(model: Path, tmp_path: Path) -> None:
    case = BAD_INPUT_CASES["day_first_dates"]
    iso = tmp_path / "iso.csv"
    frame = pd.read_csv(BAD_INPUTS / case["events"], dtype=str)
    stamps = pd.to_datetime(frame["timestamp"], format="%d/%m/%Y %H:%M")
    frame["timestamp"] = stamps.dt.strftime("%Y-%m-%d %H:%M")
    frame.to_csv(iso, index=False)
    common = dict(model_path=model, as_of="2024-08-01", **SCORE_OPTIONS)
    a = score_file(
        ScoreJob(events_path=BAD_INPUTS / case["events"], output_path=tmp_path / "a.parquet", **common),
        progress=False,
    )
    b = score_file(ScoreJob(events_path=iso, output_path=tmp_path / "b.parquet", **common), progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(a.output_path), pd.read_parquet(b.output_path))
    assert np.isfinite(pd.read_parquet(a.output_path)["churn_probability"]).all()
