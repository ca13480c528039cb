"""Customer-disjoint parts of a file on disk: what streamed scoring reads instead of the whole file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.loaders import load_events
from churnwatch.data.partition import read_part, split_file
from churnwatch.data.readers import read_table
from churnwatch.data.schema import EventSchema
from churnwatch.errors import DataValidationError


def _events(n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "cid": rng.choice([f"c{i}" for i in range(40)] + ["17", "17.0", " 18 "], size=n),
            "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
            "kind": rng.choice(["buy", "visit"], size=n),
            "amount": rng.gamma(2.0, 10.0, size=n),
        }
    )


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_parts_hold_each_row_once_with_its_file_row_and_each_customer_in_one_part(tmp_path, suffix):
    frame = _events()
    path = tmp_path / f"events{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:  # dictionary-encoded ids, as pandas writes categoricals
        frame.astype({"cid": "category"}).to_parquet(path)
    parts = split_file(path, "cid", 5, tmp_path / "parts", batch_rows=128)
    assert 1 < len(parts) <= 5
    read = [read_part(p) for p in parts]
    rows = np.concatenate([r.index.to_numpy() for r in read])
    assert sorted(rows) == list(range(len(frame)))
    whole = read_table(path)
    for r in read:  # each part's rows are the file's rows at those numbers
        assert (r["cid"].astype(str).to_numpy() == whole.loc[r.index, "cid"].astype(str).to_numpy()).all()
    owners = {}
    for i, r in enumerate(read):  # "17" and "17.0" are one customer, so they share a part
        for cid in load_events(path, _schema(), end_date="2030-01-01", frame=r, part=True).input_ids:
            assert owners.setdefault(cid, i) == i
    assert "17" in owners and "18" in owners


def _schema() -> EventSchema:
    return EventSchema.from_config(
        {"customer_id": "cid", "timestamp": "ts", "categorical": ["kind"], "numeric": ["amount"]}
    )


def test_an_invalid_row_in_a_part_is_reported_with_its_row_in_the_file(tmp_path):
    frame = _events().astype({"amount": object})
    frame.loc[437, "amount"] = "lots"
    path = tmp_path / "events.csv"
    frame.to_csv(path, index=False)
    parts = split_file(path, "cid", 4, tmp_path / "parts", batch_rows=100)
    messages = []
    for p in parts:
        try:
            load_events(path, _schema(), policy="fail", end_date="2030-01-01", frame=read_part(p), part=True)
        except DataValidationError as err:
            messages.append(str(err))
    assert len(messages) == 1
    assert messages[0].startswith(f"{path}: column 'amount'") and "row 437:" in messages[0]


def test_keep_selects_rows_by_customer_and_an_empty_file_gives_no_parts(tmp_path):
    path = tmp_path / "events.parquet"
    _events().to_parquet(path)
    parts = split_file(path, "cid", 3, tmp_path / "a", keep=lambda ids: (ids == "c1").to_numpy())
    kept = pd.concat([read_part(p) for p in parts])
    assert len(kept) > 0 and set(kept["cid"]) == {"c1"}
    empty = tmp_path / "empty.csv"
    empty.write_text("cid,ts,kind,amount\n")
    assert split_file(empty, "cid", 3, tmp_path / "b") == []


def test_a_directory_of_parquet_files_reads_as_its_files_in_path_order(tmp_path):
    """Hive partition keys become columns; a column one file lacks is null there; an empty directory or a
    directory of CSV files is one line."""
    from churnwatch.data.readers import read_table

    (tmp_path / "ds" / "day=2").mkdir(parents=True)
    (tmp_path / "ds" / "day=10").mkdir(parents=True)
    pd.DataFrame({"cid": ["b", "a"], "x": [1.0, 2.0]}).to_parquet(tmp_path / "ds" / "day=2" / "p.parquet")
    pd.DataFrame({"cid": ["c"]}).to_parquet(tmp_path / "ds" / "day=10" / "p.parquet")
    frame = read_table(tmp_path / "ds")
    # path order: "day=10" sorts before "day=2"
    assert frame["cid"].tolist() == ["c", "b", "a"]
    assert frame["day"].tolist() == [10, 2, 2]
    assert frame["x"].isna().tolist() == [True, False, False]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match=r"^.*empty: directory holds no parquet files$"):
        read_table(tmp_path / "empty")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "a.csv").write_text("cid\n1\n")
    with pytest.raises(
        DataValidationError, match=r"csv: not a parquet file or a directory of parquet files \("
    ):
        read_table(tmp_path / "csv")


def test_ids_fall_into_the_range_their_bounds_give():
    """Parts that hold consecutive id ranges (a cluster's, so that parts in order hold ids in order)."""
    from churnwatch.data.partition import range_of

    ids = pd.Series(["a", "b", "c", "d", "e", None]).astype("category")
    assert range_of(ids, np.array(["c", "e"], dtype=object)).tolist() == [0, 0, 1, 1, 2, 0]
    assert range_of(ids, np.array([], dtype=object)).tolist() == [0] * 6


def test_rows_are_kept_by_their_canonical_id():
    """`among`: a row is kept when its id, normalised, is one of the wanted canonical ids (17.0 is 17);
    a null id never is."""
    from churnwatch.data.parsing import normalise_ids
    from churnwatch.data.partition import among

    ids = normalise_ids(pd.Series(["17.0", " c1 ", None, "c2", "17", "c3"], dtype=object))
    kept = among(ids, np.array(["17", "c1"], dtype=object))
    assert kept.tolist() == [True, True, False, False, True, False]
    assert not among(ids, np.array([], dtype=object)).any()
