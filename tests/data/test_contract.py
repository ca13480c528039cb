"""The data contract: mapping, validation policies, one-line errors, timestamp and id rules."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.loaders import load_customers, load_events, load_labels
from churnwatch.data.parsing import normalise_ids, parse_timestamps
from churnwatch.data.schema import CUSTOMER_ID, MISSING, TIMESTAMP, CustomerSchema, EventSchema
from churnwatch.errors import ConfigError, DataValidationError
from tests.helpers import SCHEMA_CFG


def _events(**overrides) -> pd.DataFrame:
    base = {
        "cid": ["a", "a", "b", "c"],
        "ts": ["2024-01-01 10:00", "2024-01-02 11:00", "2024-01-03 12:00", "2024-01-04 13:00"],
        "kind": ["purchase", "purchase", "complaint", "purchase"],
        "cat": ["x", "y", None, "x"],
        "amount": [10.0, 20.0, np.nan, 5.0],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def _load(
    frame: pd.DataFrame, policy: str = "drop", cfg: dict | None = None, end_date: str = "2025-01-01", **kw
):
    schema = EventSchema.from_config(cfg or SCHEMA_CFG)
    return load_events("shop/events.csv", schema, policy=policy, end_date=end_date, frame=frame, **kw)


def test_canonical_frame_is_sorted_typed_and_keeps_nulls_as_missing_category():
    out = _load(_events(cid=["c", "a", "b", "a"])).frame
    assert list(out.columns) == [CUSTOMER_ID, TIMESTAMP, "kind", "cat", "amount"]
    assert out[CUSTOMER_ID].astype(str).tolist() == ["a", "a", "b", "c"]
    assert (
        out[TIMESTAMP].is_monotonic_increasing
        or out.groupby(CUSTOMER_ID, observed=True)[TIMESTAMP].apply(lambda s: s.is_monotonic_increasing).all()
    )
    assert out["cat"].astype(str).tolist().count(MISSING) == 1
    assert out["amount"].isna().sum() == 1  # filled later by the encoder, explicitly


def test_missing_column_error_names_file_and_column():
    with pytest.raises(
        DataValidationError, match=r"shop/events.csv: column 'amount' \(data.numeric\) not found"
    ):
        _load(_events().drop(columns=["amount"]))


@pytest.mark.parametrize(
    ("column", "values", "reason"),
    [
        ("cid", ["a", None, "b", "c"], "null_id"),
        ("cid", ["a", "  ", "b", "c"], "null_id"),
        ("ts", ["2024-01-01", "not a date", "2024-01-03", "2024-01-04"], "bad_timestamp"),
        ("ts", ["2024-01-01", "2999-01-01", "2024-01-03", "2024-01-04"], "future"),
        ("ts", ["2024-01-01", "2024-06-01", "2024-01-03", "2024-01-04"], "future"),
        ("ts", ["2024-01-01", "1500-01-01", "2024-01-03", "2024-01-04"], "bad_timestamp"),
        ("amount", ["1", "abc", "3", "4"], "non_numeric"),
        ("amount", [1.0, np.inf, 3.0, 4.0], "non_finite"),
        ("amount", [1.0, -5.0, 3.0, 4.0], "below_min"),
    ],
)
def test_each_invalid_kind_is_dropped_and_counted_or_fails_with_one_line(column, values, reason):
    frame = _events(**{column: values})
    loaded = _load(frame, policy="drop", end_date="2024-02-01")
    assert loaded.report.dropped == {reason: 1}
    assert loaded.report.rows_kept == 3
    assert "row 1" in loaded.report.examples[reason]
    with pytest.raises(DataValidationError) as err:
        _load(frame, policy="fail", end_date="2024-02-01")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("shop/events.csv: column ")
    assert "row 1" in message


def test_nan_in_numeric_field_without_fill_is_invalid():
    cfg = {**SCHEMA_CFG, "numeric": [{"name": "amount", "min": 0}]}
    loaded = _load(_events(), cfg=cfg)
    assert loaded.report.dropped == {"missing_value": 1}
    with pytest.raises(DataValidationError, match="declares no 'fill'"):
        _load(_events(), policy="fail", cfg=cfg)


def test_exact_duplicate_rows_are_dropped_keeping_the_first():
    frame = pd.concat([_events(), _events().iloc[[0]]], ignore_index=True)
    loaded = _load(frame)
    assert loaded.report.dropped == {"duplicate": 1}
    assert len(loaded.frame) == 4


def test_unknown_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="policy"):
        _load(_events(), policy="ignore")


def test_timezone_rule_aware_converted_naive_kept():
    values = pd.Series(["2024-03-01 12:00", "2024-03-01T12:00:00+02:00", "2024-03-01T12:00:00Z", "junk"])
    parsed = parse_timestamps(values, "UTC")
    assert parsed.tolist()[:3] == [
        pd.Timestamp("2024-03-01 12:00"),
        pd.Timestamp("2024-03-01 10:00"),
        pd.Timestamp("2024-03-01 12:00"),
    ]
    assert pd.isna(parsed.iloc[3])
    local = parse_timestamps(values.iloc[:2], "Europe/Berlin")
    assert local.tolist() == [pd.Timestamp("2024-03-01 12:00"), pd.Timestamp("2024-03-01 11:00")]
    aware = pd.Series(pd.to_datetime(["2024-06-01 00:30"]).tz_localize("UTC"))
    assert parse_timestamps(aware, "America/New_York").iloc[0] == pd.Timestamp("2024-05-31 20:30")


def test_non_iso_timestamps_still_parse():
    """Online Retail's raw form: month-first, which 12/13/2010 in the same column shows."""
    parsed = parse_timestamps(pd.Series(["12/1/2010 8:26", "2010-12-01 08:26:00", "12/13/2010 9:00"]), "UTC")
    assert parsed.iloc[0] == parsed.iloc[1] == pd.Timestamp("2010-12-01 08:26")
    assert parsed.iloc[2] == pd.Timestamp("2010-12-13 09:00")
    given = parse_timestamps(pd.Series(["12/1/2010 8:26"]), "UTC", fmt="%m/%d/%Y %H:%M")
    assert given.iloc[0] == pd.Timestamp("2010-12-01 08:26")


def test_numeric_and_string_ids_are_the_same_customer():
    assert normalise_ids(pd.Series([17850.0, np.nan])).astype(object).tolist()[0] == "17850"
    assert normalise_ids(pd.Series([17850])).astype(str).tolist() == ["17850"]
    assert normalise_ids(pd.Series([" 17850 "])).astype(str).tolist() == ["17850"]
    cat = normalise_ids(pd.Series([1.0, 2.0, 1.0]).astype("category"))
    assert cat.astype(str).tolist() == ["1", "2", "1"]


def test_filter_and_derived_columns_come_from_config():
    frame = pd.DataFrame(
        {
            "Invoice": ["1", "C2", "3"],
            "cid": [1.0, 1.0, 2.0],
            "ts": ["2024-01-01", "2024-01-02", "2024-01-03"],
            "qty": [2, -1, 3],
            "price": [1.5, 1.5, 2.0],
        }
    )
    cfg = {"customer_id": "cid", "timestamp": "ts", "numeric": [{"name": "amount", "min": 0}]}
    loaded = _load(
        frame, cfg=cfg, row_filter="~Invoice.str.startswith('C')", derived={"amount": "qty * price"}
    )
    assert loaded.report.rows_filtered == 1
    assert loaded.frame["amount"].tolist() == [3.0, 6.0]
    assert loaded.input_ids.tolist() == ["1", "2"]
    only_filtered = frame.assign(cid=[1.0, 3.0, 2.0])  # customer 3 has only a cancellation
    again = _load(
        only_filtered, cfg=cfg, row_filter="~Invoice.str.startswith('C')", derived={"amount": "qty * price"}
    )
    assert again.input_ids.tolist() == ["1", "2", "3"]
    with pytest.raises(ConfigError, match="data.filter"):
        _load(frame, cfg=cfg, row_filter="no_such_column > 1")


def test_csv_with_bom_quoted_newlines_and_header_only(tmp_path: Path):
    path = tmp_path / "events.csv"
    path.write_bytes('\ufeffcid,ts,kind,cat,amount\na,2024-01-01,purchase,"multi\nline",5\n'.encode())
    schema = EventSchema.from_config(SCHEMA_CFG)
    loaded = load_events(path, schema, end_date="2025-01-01")
    assert loaded.frame["cat"].astype(str).tolist() == ["multi\nline"]
    path.write_text("cid,ts,kind,cat,amount\n")
    with pytest.raises(DataValidationError, match=re.escape(f"{path}: no event rows")):
        load_events(path, schema)
    path.write_text("")
    with pytest.raises(DataValidationError, match="empty"):
        load_events(path, schema)
    with pytest.raises(DataValidationError, match="file not found"):
        load_events(tmp_path / "nope.parquet", schema)


def test_truncated_parquet_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "events.parquet"
    _events().to_parquet(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataValidationError, match="cannot read file"):
        load_events(path, EventSchema.from_config(SCHEMA_CFG))


def test_customers_table_validation(tmp_path: Path):
    path = tmp_path / "customers.csv"
    pd.DataFrame(
        {
            "cid": ["a", "a", "b", ""],
            "region": ["n", "n", None, "s"],
            "signup": ["2023-01-01", "2023-01-01", "bad", "2023-02-01"],
        }
    ).to_csv(path, index=False)
    table, report = load_customers(
        path, CustomerSchema(categorical=("region",), dates=("signup",)), id_column="cid"
    )
    assert report.dropped == {"null_id": 1, "duplicate_id": 1, "bad_date": 1}
    assert table.index.tolist() == ["a"]
    assert table.loc["a", "signup"] == pd.Timestamp("2023-01-01")


def test_labels_table(tmp_path: Path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"cid": ["a", "b"], "cutoff": ["2024-02-01", "2024-02-01"], "churned": [1, 0]}).to_csv(
        path, index=False
    )
    labels = load_labels(path, "cid")
    assert labels["label"].tolist() == [1.0, 0.0]
    pd.DataFrame({"cid": ["a"], "cutoff": ["2024-02-01"], "churned": [2]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match="column 'churned'.*not 0/1 labels.*row 0"):
        load_labels(path, "cid")


def test_bad_numeric_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown keys"):
        EventSchema.from_config({**SCHEMA_CFG, "numeric": [{"name": "amount", "minimum": 0}]})
    with pytest.raises(ConfigError, match="distinct"):
        EventSchema.from_config({**SCHEMA_CFG, "categorical": ["kind", "kind"]})
