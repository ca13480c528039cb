"""Write the malformed-input corpus tests/data/bad/ and what must happen to each case, cases.json.

python scripts/make_bad_inputs.py [OUT_DIR]        (default: tests/data/bad)

Each case is a small events file (some with a customers file) in the synthetic data's schema
(conf/data/synthetic.yaml: the schema of the model tests/data/test_bad_inputs.py scores with), damaged in one
way. Its expectation is written here from what the case is, never from running churnwatch on it:
  passes: {"dropped": {table: {reason: rows}}, "columns": [...], "ids": [...], "joined": [...]}: the
          rows dropped per reason under data.policy=drop (policy=fail stops at one of `columns` instead
          with one line), every customer id the output must hold exactly once, and (with a customers
          file) the ids that get attributes;
  fails:  {"file": events|customers, "match": regex, "column": name or null, "example_row": bool}: one
          line naming that file, under either policy (`match_fail`: the line under policy=fail where it
          differs).
One case is too big to commit, one customer with 1M events: tests call `million_events` for it.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnwatch.data.synthetic.columns import AGE_BANDS, CATEGORIES, CHANNELS, INCOME_BANDS, PLANS, REGIONS

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "bad"
START = pd.Timestamp("2024-06-01 10:00:00")
KINDS = ("purchase", "visit", "survey", "complaint", "service_contact")
IDS = ["C001", "C002", "C003", "C004"]

Case = Callable[[Path], dict[str, Any]]
CASES: dict[str, Case] = {}


def case(func: Case) -> Case:
    CASES[func.__name__] = func
    return func


# ------------------------------------------------------------------------------------------ valid tables


def events(ids: list[Any], per_customer: int = 4, seed: int = 0) -> pd.DataFrame:
    """Valid events in the synthetic schema: `per_customer` for each id, days apart (no two rows alike)."""
    rng = np.random.default_rng(seed)
    n = len(ids) * per_customer
    kinds = np.array(KINDS, dtype=object)[np.arange(n) % len(KINDS)]
    step = np.tile(np.arange(per_customer), len(ids)) * 9 + np.repeat(np.arange(len(ids)), per_customer)
    return pd.DataFrame(
        {
            "customer_id": np.repeat(np.array(ids, dtype=object), per_customer),
            "timestamp": START + pd.to_timedelta(step, unit="D"),
            "event_type": kinds,
            "category": np.where(kinds == "purchase", rng.choice(CATEGORIES, n), None),
            "channel": rng.choice(CHANNELS, n),
            "outcome": np.where(kinds == "complaint", "open", None),
            "amount": np.where(kinds == "purchase", rng.gamma(2.0, 20.0, n).round(2), np.nan),
            "satisfaction": np.where(kinds == "survey", rng.integers(0, 11, n), np.nan),
            "price_delta": np.nan,
        }
    )


def customers(ids: list[Any], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return pd.DataFrame(
        {
            "customer_id": np.array(ids, dtype=object),
            "region": rng.choice(REGIONS, n),
            "age_band": rng.choice(AGE_BANDS, n),
            "income_band": rng.choice(INCOME_BANDS, n),
            "plan": rng.choice(PLANS, n),
            "signup_date": (pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D"))
            .strftime("%Y-%m-%d")
            .to_numpy(dtype=object),
        }
    )


def csv(frame: pd.DataFrame, **kwargs: Any) -> bytes:
    return frame.to_csv(index=False, **kwargs).encode()


def parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def write(folder: Path, name: str, content: bytes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
    return f"{folder.name}/{name}"


def passes(
    ids: list[str],
    events_dropped: dict[str, int] | None = None,
    customers_dropped: dict[str, int] | None = None,
    columns: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "outcome": "passes",
        "dropped": {"events": events_dropped or {}, "customers": customers_dropped or {}},
        "columns": columns or [],
        "ids": sorted(ids),
    }


def fails(
    match: str,
    column: str | None = None,
    match_fail: str | None = None,
    file: str = "events",
    example: bool = False,
) -> dict[str, Any]:
    return {
        "outcome": "fails",
        "file": file,
        "match": match,
        "column": column,
        "match_fail": match_fail,
        "example_row": example,
    }


# --------------------------------------------------------------------------------------- files and columns


@case
def missing_column(d: Path) -> dict[str, Any]:
    """The amount column is absent."""
    return {
        "events": write(d, "events.csv", csv(events(IDS).drop(columns="amount"))),
        **fails(r"column 'amount' \(data\.numeric\) not found", "amount", example=True),
    }


@case
def renamed_column(d: Path) -> dict[str, Any]:
    """The id column is called cust_id, not customer_id."""
    frame = events(IDS).rename(columns={"customer_id": "cust_id"})
    return {
        "events": write(d, "events.parquet", parquet(frame)),
        **fails(r"column 'customer_id' \(data\.customer_id\) not found", "customer_id", example=True),
    }


@case
def empty_file(d: Path) -> dict[str, Any]:
    """Zero bytes."""
    return {"events": write(d, "events.csv", b""), **fails(r"file is empty")}


@case
def header_only(d: Path) -> dict[str, Any]:
    """The header line and no rows."""
    return {"events": write(d, "events.csv", csv(events(IDS).iloc[:0])), **fails(r"no event rows")}


@case
def truncated_parquet(d: Path) -> dict[str, Any]:
    """A parquet file cut in half (its footer is gone)."""
    content = parquet(events(IDS))
    return {"events": write(d, "events.parquet", content[: len(content) // 2]), **fails(r"cannot read file")}


@case
def unsupported_type(d: Path) -> dict[str, Any]:
    """A spreadsheet, not a table file churnwatch reads."""
    return {
        "events": write(d, "events.xlsx", b"PK\x03\x04 not really a workbook"),
        **fails(r"unsupported file type \.xlsx"),
    }


@case
def bom_csv(d: Path) -> dict[str, Any]:
    """A UTF-8 byte order mark before the header (Excel's 'CSV UTF-8')."""
    return {"events": write(d, "events.csv", b"\xef\xbb\xbf" + csv(events(IDS))), **passes(IDS)}


@case
def quoted_newlines(d: Path) -> dict[str, Any]:
    """Quoted fields holding newlines, a CRLF and a comma, in categories and in an id."""
    frame = events([*IDS, "C,005"])
    frame.loc[0, "category"] = "home\nkitchen"
    frame.loc[1, "channel"] = "web\r\napp"
    frame.loc[2, "outcome"] = "open, then closed"
    return {"events": write(d, "events.csv", csv(frame)), **passes([*IDS, "C,005"])}


@case
def wrong_delimiter(d: Path) -> dict[str, Any]:
    """Semicolons, not commas: the whole header reads as one column."""
    return {
        "events": write(d, "events.csv", csv(events(IDS), sep=";")),
        **fails(r"column 'customer_id' \(data\.customer_id\) not found", "customer_id", example=True),
    }


@case
def ragged_rows(d: Path) -> dict[str, Any]:
    """Line 6 has two fields more than the header."""
    lines = csv(events(IDS)).decode().splitlines()
    lines[5] += ",extra,fields"
    return {
        "events": write(d, "events.csv", ("\n".join(lines) + "\n").encode()),
        **fails(r"cannot read file .*line 6"),
    }


@case
def latin1_encoding(d: Path) -> dict[str, Any]:
    """Written in Latin-1, not UTF-8 (an accented id)."""
    content = csv(events(["Zoé", *IDS])).decode().encode("latin-1")
    return {"events": write(d, "events.csv", content), **fails(r"cannot read file .*utf-8")}


# ------------------------------------------------------------------------------------------------- ids


@case
def null_and_blank_ids(d: Path) -> dict[str, Any]:
    """Two rows with an empty id and one with spaces only (dropped); ' C002 ' is C002, padded."""
    frame = events(IDS, per_customer=5)
    frame.loc[[0, 6], "customer_id"] = ""
    frame.loc[11, "customer_id"] = "   "
    frame.loc[7, "customer_id"] = " C002 "
    return {
        "events": write(d, "events.csv", csv(frame)),
        **passes(IDS, {"null_id": 3}, columns=["customer_id"]),
    }


UNICODE_IDS = ["Zoë", "客户-7", "😀", "Ωμέγα", "e\u0301", "\u00e9", "Ａ１"]


@case
def unicode_ids(d: Path) -> dict[str, Any]:
    """Non-ASCII ids, with é composed and decomposed: two different customers (ids are not normalised)."""
    return {"events": write(d, "events.csv", csv(events(UNICODE_IDS, per_customer=2))), **passes(UNICODE_IDS)}


LONG_IDS = ["L" * 1500, "L" * 1499 + "M", "C001"]


@case
def long_ids(d: Path) -> dict[str, Any]:
    """1,500-character ids that differ only in their last character."""
    return {
        "events": write(d, "events.parquet", parquet(events(LONG_IDS, per_customer=2))),
        **passes(LONG_IDS),
    }


NUMERIC_IDS = [1001, 1002, 1003, 1004]


@case
def numeric_events_text_customers(d: Path) -> dict[str, Any]:
    """Integer ids in the events, the same ids as text in the customers file: the same customers."""
    ids = [str(i) for i in NUMERIC_IDS]
    return {
        "events": write(d, "events.parquet", parquet(events(NUMERIC_IDS))),
        "customers": write(d, "customers.csv", csv(customers(ids))),
        **passes(ids),
        "joined": ids,
    }


@case
def text_events_numeric_customers(d: Path) -> dict[str, Any]:
    """Text ids in the events, integers in the customers file (one id, 1005, has no events)."""
    ids = [str(i) for i in NUMERIC_IDS]
    return {
        "events": write(d, "events.csv", csv(events(ids))),
        "customers": write(d, "customers.parquet", parquet(customers([*NUMERIC_IDS, 1005]))),
        **passes(ids),
        "joined": ids,
    }


@case
def float_ids(d: Path) -> dict[str, Any]:
    """Ids stored as floats (1001.0, what a null in an integer column does to pandas): ids 1001..."""
    frame = events([float(i) for i in NUMERIC_IDS])
    ids = [str(i) for i in NUMERIC_IDS]
    return {
        "events": write(d, "events.parquet", parquet(frame)),
        "customers": write(d, "customers.csv", csv(customers(ids))),
        **passes(ids),
        "joined": ids,
    }


@case
def text_float_ids(d: Path) -> dict[str, Any]:
    """Ids written as text floats ("1001.0", a spreadsheet's export) next to a text id in the customers
    file, so the column reads as text: still customers 1001...; integer ids in the events."""
    ids = [str(i) for i in NUMERIC_IDS]
    attributes = customers([f"{i}.0" for i in NUMERIC_IDS[:3]] + ["C9"])
    return {
        "events": write(d, "events.parquet", parquet(events(NUMERIC_IDS))),
        "customers": write(d, "customers.csv", csv(attributes)),
        **passes(ids),
        "joined": ids[:3],
    }


# ------------------------------------------------------------------------------------------ timestamps


@case
def unparseable_timestamps(d: Path) -> dict[str, Any]:
    """Three rows whose time is not a time; C005's only event is one of them (it is still a customer)."""
    frame = events([*IDS, "C005"]).astype({"timestamp": str})
    frame.loc[[1, 6, 19], "timestamp"] = ["not a date", "2024-13-45 10:00:00", ""]
    return {
        "events": write(d, "events.csv", csv(frame.drop(index=[16, 17, 18]))),
        **passes([*IDS, "C005"], {"bad_timestamp": 3}, columns=["timestamp"]),
    }


@case
def mixed_timezones(d: Path) -> dict[str, Any]:
    """Offsets +02:00, Z, -05:00 and +0530 next to naive times (taken to be UTC)."""
    frame = events(IDS).astype({"timestamp": str})
    frame.loc[0, "timestamp"] = "2024-06-01T10:00:00+02:00"
    frame.loc[1, "timestamp"] = "2024-06-10T10:00:00Z"
    frame.loc[4, "timestamp"] = "2024-06-02T10:00:00-05:00"
    frame.loc[9, "timestamp"] = "2024-06-03T10:00:00+0530"
    return {"events": write(d, "events.csv", csv(frame)), **passes(IDS)}


@case
def aware_parquet(d: Path) -> dict[str, Any]:
    """A time zone-aware timestamp column (Europe/Berlin) in parquet."""
    frame = events(IDS)
    frame["timestamp"] = frame["timestamp"].dt.tz_localize("Europe/Berlin")
    return {"events": write(d, "events.parquet", parquet(frame)), **passes(IDS)}


@case
def pre_1970(d: Path) -> dict[str, Any]:
    """C001 bought in the 1960s (valid); one row in 1600, before the earliest supported time (1677)."""
    frame = events(IDS).astype({"timestamp": str})
    frame.loc[[0, 1, 2], "timestamp"] = ["1965-03-01 09:00:00", "1968-07-14 12:00:00", "1969-12-31 23:59:59"]
    frame.loc[5, "timestamp"] = "1600-01-01 00:00:00"
    return {
        "events": write(d, "events.csv", csv(frame)),
        **passes(IDS, {"bad_timestamp": 1}, columns=["timestamp"]),
    }


@case
def far_future(d: Path) -> dict[str, Any]:
    """Two rows after today (years 2999 and 9999) and one in year 20000 (not a time churnwatch reads)."""
    frame = events(IDS).astype({"timestamp": str})
    frame.loc[[3, 7, 12], "timestamp"] = ["2999-01-01 00:00:00", "9999-12-31 23:59:59", "20000-01-01"]
    return {
        "events": write(d, "events.csv", csv(frame)),
        **passes(IDS, {"future": 2, "bad_timestamp": 1}, columns=["timestamp"]),
    }


@case
def epoch_timestamps(d: Path) -> dict[str, Any]:
    """Times as integer Unix seconds: numbers are not timestamps, so every row is invalid."""
    frame = events(IDS)
    frame["timestamp"] = frame["timestamp"].astype("datetime64[s]").astype("int64")
    return {
        "events": write(d, "events.parquet", parquet(frame)),
        **fails(
            r"no valid events left.*column 'timestamp'",
            "timestamp",
            r"column 'timestamp': 16 row",
            example=True,
        ),
    }


@case
def same_timestamp(d: Path) -> dict[str, Any]:
    """Every event of every customer at one instant (different events, so none is a duplicate)."""
    frame = events(IDS)
    frame["timestamp"] = pd.Timestamp("2024-09-01 12:00:00")
    return {"events": write(d, "events.parquet", parquet(frame)), **passes(IDS)}


# --------------------------------------------------------------------------------------------- numbers


@case
def nan_amounts(d: Path) -> dict[str, Any]:
    """NaN (null) amounts on three purchases and satisfaction on two surveys: the fields declare fill 0."""
    frame = events(IDS, per_customer=5)
    purchases = frame.index[frame["event_type"] == "purchase"][:3]
    surveys = frame.index[frame["event_type"] == "survey"][:2]
    frame.loc[purchases, "amount"] = np.nan
    frame.loc[surveys, "satisfaction"] = np.nan
    return {"events": write(d, "events.parquet", parquet(frame)), **passes(IDS)}


@case
def nan_text(d: Path) -> dict[str, Any]:
    """Amounts written as the words NaN, nan and NA and a decimal comma (1,5): four non-numbers (in CSV
    a null is an empty field)."""
    frame = events(IDS, per_customer=5).astype({"amount": object})
    frame.loc[[0, 5, 10, 15], "amount"] = ["NaN", "nan", "NA", "1,5"]
    return {
        "events": write(d, "events.csv", csv(frame)),
        **passes(IDS, {"non_numeric": 4}, columns=["amount"]),
    }


@case
def inf_amounts(d: Path) -> dict[str, Any]:
    """inf and -inf amounts and an inf price change; C005's only event is one of them."""
    frame = events([*IDS, "C005"])
    frame.loc[[0, 19], "amount"] = [np.inf, -np.inf]
    frame.loc[6, "price_delta"] = np.inf
    return {
        "events": write(d, "events.parquet", parquet(frame.drop(index=[16, 17, 18]))),
        **passes([*IDS, "C005"], {"non_finite": 3}, columns=["amount", "price_delta"]),
    }


@case
def huge_amounts(d: Path) -> dict[str, Any]:
    """1e308, -1e308 (finite, but sums overflow) and 1e309 (inf once parsed)."""
    frame = events(IDS, per_customer=5).astype({"amount": object})
    frame.loc[[0, 5, 10], "amount"] = ["1e308", "-1e308", "1e309"]
    return {
        "events": write(d, "events.csv", csv(frame)),
        **passes(IDS, {"non_finite": 3}, columns=["amount"]),
    }


@case
def float32_overflow(d: Path) -> dict[str, Any]:
    """Amounts and price changes of 1e38 to 1e299: inside validation's 1e300 bound, so they are kept, but
    beyond float32 (3.4e38) once standardised. They must reach the model clipped, never as inf."""
    frame = events(IDS, per_customer=5)
    frame.loc[[0, 5], "amount"] = [1e299, 1e38]
    frame.loc[[1, 6, 10], "price_delta"] = [1e299, -1e299, 1e39]
    return {"events": write(d, "events.parquet", parquet(frame)), **passes(IDS)}


@case
def negative_amounts(d: Path) -> dict[str, Any]:
    """Two amounts below the declared min 0, a satisfaction of 11 (max 10); a negative price change is
    fine (no bounds)."""
    frame = events(IDS, per_customer=5)
    frame.loc[[0, 5], "amount"] = [-3.5, -0.01]
    frame.loc[2, "satisfaction"] = 11.0
    frame.loc[3, "price_delta"] = -20.0
    return {
        "events": write(d, "events.parquet", parquet(frame)),
        **passes(IDS, {"below_min": 2, "above_max": 1}, columns=["amount", "satisfaction"]),
    }


# ------------------------------------------------------------------------------------- rows and customers


@case
def duplicate_events(d: Path) -> dict[str, Any]:
    """Row 0 three times and row 5 twice: three exact copies of an earlier row."""
    frame = events(IDS)
    frame = pd.concat([frame, frame.iloc[[0, 0, 5]]]).sample(frac=1, random_state=0)
    return {
        "events": write(d, "events.parquet", parquet(frame.reset_index(drop=True))),
        **passes(IDS, {"duplicate": 3}, columns=["customer_id"]),
    }


@case
def single_event_customers(d: Path) -> dict[str, Any]:
    """Five customers with one event each, next to one with six."""
    frame = pd.concat([events(["C001", "C002", "C003", "C004", "C005"], per_customer=1), events(["C006"], 6)])
    return {
        "events": write(d, "events.csv", csv(frame)),
        **passes(["C001", "C002", "C003", "C004", "C005", "C006"]),
    }


@case
def unseen_categories(d: Path) -> dict[str, Any]:
    """Event types, categories, channels and customer attributes the model never saw in training."""
    frame = events(IDS)
    frame.loc[[0, 4], "event_type"] = ["teleport", "refund_request"]
    frame.loc[[0, 5], "category"] = ["spaceships", "??"]
    frame.loc[1, "channel"] = "carrier pigeon"
    people = customers(IDS)
    people.loc[0, ["region", "plan"]] = ["atlantis", "platinum"]
    people.loc[1, "age_band"] = "120+"
    return {
        "events": write(d, "events.csv", csv(frame)),
        "customers": write(d, "customers.csv", csv(people)),
        **passes(IDS),
        "joined": IDS,
    }


@case
def customers_missing_column(d: Path) -> dict[str, Any]:
    """The customers file has no plan column."""
    return {
        "events": write(d, "events.csv", csv(events(IDS))),
        "customers": write(d, "customers.csv", csv(customers(IDS).drop(columns="plan"))),
        **fails(
            r"column 'plan' \(data\.customers field\) not found", "plan", file="customers", example=True
        ),
    }


@case
def customers_bad_rows(d: Path) -> dict[str, Any]:
    """Customers file: C002 three times (two repeats), one empty id, one unparseable signup date."""
    people = customers([*IDS, "C002", "C002", ""])
    people.loc[3, "signup_date"] = "yesterday"
    return {
        "events": write(d, "events.csv", csv(events(IDS))),
        "customers": write(d, "customers.csv", csv(people)),
        **passes(
            IDS,
            customers_dropped={"null_id": 1, "duplicate_id": 2, "bad_date": 1},
            columns=["customer_id", "signup_date"],
        ),
        "joined": ["C001", "C002", "C003"],
    }


@case
def customers_header_only(d: Path) -> dict[str, Any]:
    """A customers file with a header and no rows: every customer is scored without attributes."""
    return {
        "events": write(d, "events.csv", csv(events(IDS))),
        "customers": write(d, "customers.csv", csv(customers(IDS).iloc[:0])),
        **passes(IDS),
        "joined": [],
    }


# ---------------------------------------------------------------------------------- round 2 (issue 16)


@case
def day_first_dates(d: Path) -> dict[str, Any]:
    """Day-first dates (01/06/2024 ... 28/06/2024): 13 and above show the column is day-first, so 05/06 is
    5 June like every other row, not 6 May."""
    frame = events(IDS).astype({"timestamp": str})
    frame["timestamp"] = events(IDS)["timestamp"].dt.strftime("%d/%m/%Y %H:%M")
    return {"events": write(d, "events.csv", csv(frame)), **passes(IDS)}


@case
def day_and_month_first(d: Path) -> dict[str, Any]:
    """One column with 23/05/2024 (day-first) and 05/23/2024 (month-first): no single reading exists."""
    frame = events(IDS).astype({"timestamp": str})
    frame.loc[0, "timestamp"] = "23/05/2024 10:00"
    frame.loc[1, "timestamp"] = "05/23/2024 10:00"
    return {
        "events": write(d, "events.csv", csv(frame)),
        **fails(r"day-first in some rows .* month-first in others .*data\.timestamp_format", "timestamp"),
    }


@case
def ambiguous_dates(d: Path) -> dict[str, Any]:
    """Every date has day and month ≤ 12 (01/02/2024, 03/04/2024, ...): either reading is possible."""
    frame = events(IDS).astype({"timestamp": str})
    frame["timestamp"] = [f"{1 + i % 12:02d}/{1 + (i + 1) % 12:02d}/2024 10:00" for i in range(len(frame))]
    return {
        "events": write(d, "events.csv", csv(frame)),
        **fails(r"no value tells which; set data\.timestamp_format", "timestamp"),
    }


@case
def zone_names(d: Path) -> dict[str, Any]:
    """Times ending in ' UTC', ' GMT' and an hour-only offset '+02' next to naive ones."""
    frame = events(IDS).astype({"timestamp": str})
    frame.loc[0, "timestamp"] = "2024-06-01 10:00:00 UTC"
    frame.loc[1, "timestamp"] = "2024-06-10 10:00:00 GMT"
    frame.loc[4, "timestamp"] = "2024-06-02 10:00:00+02"
    frame.loc[9, "timestamp"] = "2024-06-03T10:00:00-05"
    return {"events": write(d, "events.csv", csv(frame)), **passes(IDS)}


@case
def internal_tokens(d: Path) -> dict[str, Any]:
    """Category text equal to churnwatch's own tokens: <pad>, <oov>, <other>, __missing__, and a leading
    backslash. Text is data: each is a category of its own, none is padding, unknown or null."""
    frame = events(IDS)
    frame.loc[0, "category"] = "<pad>"
    frame.loc[1, "channel"] = "<oov>"
    frame.loc[2, "category"] = "__missing__"
    frame.loc[3, "channel"] = "<other>"
    frame.loc[5, "outcome"] = "\\__missing__"
    return {"events": write(d, "events.csv", csv(frame)), **passes(IDS)}


@case
def nul_padded_ids(d: Path) -> dict[str, Any]:
    """Ids padded with NUL characters (a fixed-width export): 'C001\\0\\0' is C001, in both files."""
    frame = events(IDS)
    frame.loc[frame["customer_id"] == "C001", "customer_id"] = "C001\x00\x00"
    people = customers(IDS)
    people.loc[1, "customer_id"] = "C002\x00"
    return {
        "events": write(d, "events.parquet", parquet(frame)),
        "customers": write(d, "customers.csv", csv(people)),
        **passes(IDS),
        "joined": IDS,
    }


@case
def reserved_column(d: Path) -> dict[str, Any]:
    """An input column named like one churnwatch adds while reading (__churnwatch_file_row__)."""
    frame = events(IDS).assign(__churnwatch_file_row__=7)
    return {
        "events": write(d, "events.parquet", parquet(frame)),
        **fails(r"names starting with '__churnwatch' are churnwatch's own", "__churnwatch_file_row__"),
    }


@case
def duplicate_header(d: Path) -> dict[str, Any]:
    """The header names channel twice (the outcome column's name was overwritten)."""
    text = csv(events(IDS)).decode().replace("channel,outcome", "channel,channel", 1)
    return {
        "events": write(d, "events.csv", text.encode()),
        **fails(r"column 'channel' appears twice in the header \(columns 5 and 6\)", "channel"),
    }


@case
def ragged_first_row(d: Path) -> dict[str, Any]:
    """The first row has two fields more than the header (pandas would take them for an index)."""
    lines = csv(events(IDS)).decode().splitlines()
    lines[1] += ",x,y"
    return {
        "events": write(d, "events.csv", ("\n".join(lines) + "\n").encode()),
        **fails(r"cannot read file \(a row has more fields than the header\)"),
    }


@case
def far_future_aware_parquet(d: Path) -> dict[str, Any]:
    """Zone-aware parquet times in the years 36812 and 1 (beyond what zone rules convert) next to valid
    ones: two invalid rows, not a crash."""
    frame = events(IDS)
    seconds = frame["timestamp"].astype("datetime64[s]").astype("int64").to_numpy().copy()
    seconds[0], seconds[5] = 2**40, -62135596000  # years 36812 and 1
    stamps = pa.array(seconds, pa.timestamp("s", tz="UTC")).cast(pa.timestamp("s", tz="Europe/Berlin"))
    table = pa.Table.from_pandas(frame.drop(columns="timestamp"), preserve_index=False)
    table = table.add_column(1, "timestamp", stamps)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return {
        "events": write(d, "events.parquet", buf.getvalue()),
        **passes(IDS, {"future": 1, "bad_timestamp": 1}, columns=["timestamp"]),
    }


@case
def customers_join_nothing(d: Path) -> dict[str, Any]:
    """Integer ids in the events, zero-padded text ids (01001) in the customers file: nobody joins."""
    ids = [1001, 1002, 1003, 1004]
    people = customers([f"0{i}" for i in ids])
    return {
        "events": write(d, "events.csv", csv(events(ids))),
        "customers": write(d, "customers.csv", csv(people)),
        **fails(
            r"no customer id joins the events \(e\.g\. '01001' here, '1001' in the events\)", file="customers"
        ),
    }


@case
def customers_only_ids(d: Path) -> dict[str, Any]:
    """The customers file also lists C101 and C102, who have no events: counted, not scored."""
    return {
        "events": write(d, "events.csv", csv(events(IDS))),
        "customers": write(d, "customers.csv", csv(customers([*IDS, "C101", "C102"]))),
        **passes(IDS),
        "joined": IDS,
    }


@case
def future_signup(d: Path) -> dict[str, Any]:
    """Signup dates 9999-12-31 and 2999-01-01: after the data's end, so invalid like a future event."""
    people = customers(IDS)
    people.loc[0, "signup_date"] = "9999-12-31"
    people.loc[2, "signup_date"] = "2999-01-01"
    return {
        "events": write(d, "events.csv", csv(events(IDS))),
        "customers": write(d, "customers.csv", csv(people)),
        **passes(IDS, customers_dropped={"future_date": 2}, columns=["signup_date"]),
        "joined": ["C002", "C004"],
    }


# ------------------------------------------------------------------------------------------ 1M events


def million_events(folder: Path, n: int = 1_000_000) -> dict[str, Any]:
    """One customer with `n` events over 81 days (plus three ordinary ones), as parquet, in a second or
    two: too big to commit, so tests write it where they need it."""
    rng = np.random.default_rng(0)
    big = events(["BIG"], per_customer=len(KINDS) * 2)
    frame = big.iloc[np.arange(n) % len(big)].reset_index(drop=True)
    frame["timestamp"] = START + pd.to_timedelta(np.arange(n) * 7, unit="s")  # 7 s apart: 81 days
    frame["amount"] = np.where(frame["event_type"] == "purchase", rng.gamma(2.0, 20.0, n).round(2), np.nan)
    frame = pd.concat([frame, events(IDS[:3])], ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.parquet").write_bytes(parquet(frame))
    return {
        "events": str(folder / "events.parquet"),
        "big": "BIG",
        "big_events": n,
        **passes(["BIG", *IDS[:3]]),
    }


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cases = {}
    for name, build in CASES.items():
        cases[name] = {"what": build.__doc__.strip(), **build(out / name)}
    (out / "cases.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases → {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
