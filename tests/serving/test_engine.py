"""A micro-batch scored as one table gives every request what scoring it alone gives: its customers, its
validation report, its error; a bad request never fails the others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from churnwatch.config.schema import LimitsConfig, ServeConfig
from churnwatch.errors import DataValidationError
from churnwatch.serving.engine import ScoreResult, _concat, plan, score_batch
from churnwatch.serving.requests import RequestError, ScoreRequest, _frame, as_frame, parse_request
from churnwatch.serving.slot import ServedModel, load_served

AS_OF = pd.Timestamp("2024-11-01")


@pytest.fixture(scope="module")
def served(model: Path) -> ServedModel:
    return load_served(
        ServeConfig(model_path=str(model), device="cpu", drivers={"steps": 2}, verify_key=None)
    )


@pytest.fixture(scope="module")
def events(model: Path) -> pd.DataFrame:
    frame = pd.read_parquet(model.parent.parent / "data" / "events.parquet")
    return frame.assign(customer_id=frame["customer_id"].astype(str))


def request(rows: pd.DataFrame | list[dict], as_of: str = "2024-11-01", **query: str) -> ScoreRequest:
    body = rows if isinstance(rows, list) else json.loads(rows.to_json(orient="records", date_format="iso"))
    return parse_request(
        json.dumps({"events": body, "as_of": as_of}).encode(),
        "application/json",
        query,
        LimitsConfig(),
        "customer_id",
        AS_OF,
    )


def _whole(value: float | None) -> int | None:
    return None if value is None else round(value)


def records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def alone(served: ServedModel, req: ScoreRequest) -> ScoreResult | Exception:
    return score_batch(served.scorer, served.ranker, [req])[0]


def test_a_batch_answers_each_request_as_if_it_came_alone(served: ServedModel, events: pd.DataFrame) -> None:
    ids = sorted(events["customer_id"].unique())
    of = lambda *c: events[events["customer_id"].isin(c)]  # noqa: E731
    rows = records(of(ids[3]))
    some_bad = rows + [{**rows[0], "timestamp": "never"}, {**rows[0], "amount": "lots"}]
    requests = [
        request(of(ids[0], ids[1])),
        request(of(ids[0]).head(4)),  # the same customer, a shorter history: not in the first one's pass
        request(some_bad),  # two rows dropped: its own report
        request([{**r, "timestamp": "never"} for r in rows]),  # nothing valid: its own 422
        request(of(ids[5]), as_of="2024-10-01"),  # another date: another pass
        request(of(ids[6], ids[7]), drivers="false"),
        # a column with no value at all (Arrow's null type) joins the others' text in the batch
        request([{**r, "channel": None} for r in records(of(ids[8]))], as_of="2024-10-01"),
        # whole amounts (Arrow's int64) join the others' floats
        request([{**r, "amount": _whole(r["amount"])} for r in records(of(ids[9]))], as_of="2024-10-01"),
    ]
    # the last two join the other 2024-10-01 request in Arrow, their columns widened to its types
    assert [4, 6, 7] in plan(requests)
    assert all(isinstance(requests[i].events, pa.Table) for i in (4, 6, 7))
    assert requests[6].events.schema.field("channel").type == pa.null()
    assert requests[7].events.schema.field("amount").type == pa.int64()
    assert requests[4].events.schema.field("amount").type == pa.float64()
    joined = _concat([requests[i].events for i in (4, 6, 7)])
    alone_4 = as_frame(requests[4].events)
    assert joined.dtypes.equals(alone_4[joined.columns].dtypes)  # typed as one request is, not as objects
    together = score_batch(served.scorer, served.ranker, requests)
    assert isinstance(together[3], DataValidationError)
    assert "timestamp" in str(together[3])
    for i, (got, req) in enumerate(zip(together, requests, strict=True)):
        want = alone(served, req)
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want)
            continue
        assert isinstance(got, ScoreResult), (i, got)
        assert got.events.as_dict() == want.events.as_dict()
        pd.testing.assert_frame_equal(
            got.scores.drop(columns="churn_probability"), want.scores.drop(columns="churn_probability")
        )
        np.testing.assert_allclose(
            got.scores["churn_probability"], want.scores["churn_probability"], atol=1e-6
        )
    assert together[2].events.dropped == {"bad_timestamp": 1, "non_numeric": 1}
    assert together[0].events.rows_read == len(of(ids[0], ids[1]))
    assert not together[5].scores["driver_1"].astype(bool).any()
    assert together[0].scores["driver_1"].astype(bool).any()


def test_requests_about_one_customer_or_another_day_never_share_a_pass(events: pd.DataFrame) -> None:
    ids = sorted(events["customer_id"].unique())
    of = lambda *c: events[events["customer_id"].isin(c)]  # noqa: E731
    requests = [
        request(of(ids[0], ids[1])),
        request(of(ids[2])),
        request(of(ids[1])),  # shares ids[1] with the first
        request(of(ids[3]), as_of="2024-10-01"),
        request(of(ids[4]), drivers="false"),
        request(of(ids[5])),
    ]
    assert plan(requests) == [[0, 1, 5], [2], [3], [4]]
    # the same columns in another order share a pass
    sent = json.loads(of(ids[6]).to_json(orient="records", date_format="iso"))
    reordered = request([dict(reversed(list(r.items()))) for r in sent])
    assert plan([*requests, reordered]) == [[0, 1, 5, 6], [2], [3], [4]]


ROWS_READ_ALIKE = [
    [{"a": 1, "b": "x"}, {"a": None, "b": None}, {"a": 3}],  # ints with a null; a key left out
    [{"a": 1}, {"a": 2.5}],  # ints and floats
    [{"a": True}, {"a": None}],
    [{"a": None}, {"a": None}],
    [{"a": 2**62, "b": 1.5}],
    [{"a": float("nan"), "b": ""}],
    [{"a": "2024-01-01T10:00:00Z", "b": "é"}],
]
"""Rows whose columns each hold one plain type: Arrow reads them."""
ROWS_PANDAS_READS = [
    [{"a": 1}, {"a": "x"}],  # numbers and text in one column
    [{"a": 2**64}],  # beyond int64
    [{"a": [1, 2]}, {"a": {"b": 1}}],  # nested values
    [{"a": True}, {"a": 1}],
]
"""Rows Arrow does not hold in one plain type per column: read by pandas, as they always were."""


@pytest.mark.parametrize("rows", ROWS_READ_ALIKE + ROWS_PANDAS_READS)
def test_json_is_read_as_pandas_reads_its_values(rows: list[dict]) -> None:
    keys = dict.fromkeys(k for row in rows for k in row)
    columns = {k: [row.get(k) for row in rows] for k in keys}
    want = pd.DataFrame(columns)
    for body in (rows, columns):
        table = _frame(body, "events")
        assert isinstance(table, pa.Table) == (rows in ROWS_READ_ALIKE)
        pd.testing.assert_frame_equal(as_frame(table), want)


def test_ids_are_canonical_as_validation_writes_them() -> None:
    got = request(
        [{"customer_id": 17850.0, "timestamp": "2024-01-01"}, {"customer_id": " 17850 ", "timestamp": "x"}]
    )
    assert got.ids == frozenset({"17850"})
    with pytest.raises(RequestError, match="limits.max_customers"):
        parse_request(
            json.dumps(
                {"events": {"customer_id": ["a", "b", "c"], "timestamp": ["2024-01-01"] * 3}}
            ).encode(),
            None,
            {},
            LimitsConfig(max_customers=2),
            "customer_id",
            AS_OF,
        )


def test_with_drivers_tiers_a_request_explains_only_its_chosen_tiers(
    served: ServedModel, model: Path, events: pd.DataFrame
) -> None:
    """The service tiers each request by the probability cut-offs: only its high- and medium-tier
    customers get drivers, the ones the service without `drivers.tiers` gives them."""
    chosen = load_served(
        ServeConfig(
            model_path=str(model),
            device="cpu",
            drivers={"steps": 2, "tiers": ["high", "medium"]},
            verify_key=None,
        )
    )
    ids = sorted(events["customer_id"].unique())[:200]
    req = request(events[events["customer_id"].isin(ids)])
    full, some = alone(served, req).scores, alone(chosen, req).scores
    drivers = ["main_driver", "driver_1", "driver_2", "driver_3"]
    explained = full["risk_tier"].isin(["high", "medium"]).to_numpy()
    assert explained.any() and not explained.all()
    pd.testing.assert_frame_equal(some.loc[explained, drivers], full.loc[explained, drivers])
    assert (some.loc[~explained, drivers] == "").all().all()
    assert full.loc[~explained, "main_driver"].ne("").any()
