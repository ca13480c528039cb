"""Sequence encoding: vocabularies, OOV, numeric transforms, time features, truncation, round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.loaders import load_events
from churnwatch.data.schema import TIMESTAMP, EventSchema, NumericField
from churnwatch.data.snapshots import EventLog, build_snapshot
from churnwatch.explain.drivers import owners
from churnwatch.features.encode import SequenceEncoder
from churnwatch.features.stats import OOV, PAD, Z_LIMIT, NumericStats, Vocabulary, signed_log1p
from churnwatch.features.window import VisitSpec, kept_steps, ranges
from tests.helpers import SCHEMA_CFG


def _log(rows) -> EventLog:
    frame = pd.DataFrame(rows, columns=["cid", "ts", "kind", "cat", "amount"])
    loaded = load_events("e.csv", EventSchema.from_config(SCHEMA_CFG), frame=frame, end_date="2030-01-01")
    return EventLog.from_frame(loaded.frame)


def test_vocabulary_min_count_top_k_and_oov():
    vocab = Vocabulary.fit(pd.Series(["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"]), min_count=2, max_size=4)
    assert vocab.tokens == ["<pad>", "<oov>", "a", "b"]  # b beats c on the tie by name; d is too rare
    ids = vocab.lookup(pd.Series(["a", "c", "zzz", None, "b"]))
    assert ids.tolist() == [2, OOV, OOV, OOV, 3]
    assert PAD not in ids


def test_ranges_concatenates_aranges():
    assert ranges(np.array([0, 5, 7]), np.array([2, 5, 10])).tolist() == [0, 1, 7, 8, 9]


def test_numeric_transform_signed_log1p_then_standardise():
    stats = NumericStats(EventSchema.from_config(SCHEMA_CFG).numeric).fit([np.array([0.0, np.e - 1, np.nan])])
    z = stats.transform([np.array([np.nan, np.e - 1])])
    raw = np.array([0.0, 1.0, 0.0])  # log1p with NaN filled by 0.0
    assert z[:, 0] == pytest.approx((np.array([0.0, 1.0]) - raw.mean()) / raw.std(), rel=1e-6)
    assert z.dtype == np.float32 and np.isfinite(z).all()


def test_encoding_of_a_tiny_log_by_hand():
    log = _log(
        [
            ("a", "2024-01-01 09:00", "purchase", "x", 10.0),  # Monday
            ("a", "2024-01-03 18:30", "purchase", "y", 20.0),  # Wednesday
            ("a", "2024-01-04 07:00", "complaint", None, None),  # Thursday
            ("b", "2024-01-02 12:00", "purchase", "x", 5.0),
            ("b", "2024-02-01 12:00", "purchase", "new", 5.0),  # after the cutoff: never seen
        ]
    )
    snap = build_snapshot(log, "2024-01-05", horizon_days=30)
    enc = SequenceEncoder(EventSchema.from_config(SCHEMA_CFG), max_len=2).fit(log, snap)
    seqs = enc.transform(log, snap)
    assert enc.cat_names == ["kind", "cat", "day_of_week", "hour"]
    assert enc.num_names == ["amount", "gap_days", "age_days"]
    assert seqs.lengths.tolist() == [2, 1]  # a keeps its LAST 2 events
    cat = seqs.cat
    assert cat[:2, 2].tolist() == [3, 4]  # Wednesday, Thursday (Monday = 1)
    assert cat[:2, 3].tolist() == [19, 8]  # hours 18 and 7, 1-based
    assert enc.vocabs["cat"].tokens[cat[1, 1]] == "__missing__"
    gap_col = enc.num_names.index("gap_days")
    gap = seqs.num[:, gap_col] * enc.numeric.std[gap_col] + enc.numeric.mean[gap_col]
    assert np.expm1(gap[:2]) == pytest.approx([2 + 9.5 / 24, 12.5 / 24], rel=1e-4)  # true gaps, not truncated
    age_col = enc.num_names.index("age_days")
    age = np.expm1(seqs.num[:, age_col] * enc.numeric.std[age_col] + enc.numeric.mean[age_col])
    assert age[2] == pytest.approx(2.5, rel=1e-4)  # b: 2024-01-02 12:00 → cutoff 2024-01-05
    assert seqs.label.tolist() == [1.0, 0.0]


def test_length_one_history_and_unknown_categories_at_transform_time():
    train = _log([("a", "2024-01-01", "purchase", "x", 1.0), ("a", "2024-01-02", "purchase", "x", 2.0)])
    enc = SequenceEncoder(EventSchema.from_config(SCHEMA_CFG)).fit(
        train, build_snapshot(train, "2024-01-03", 10)
    )
    other = _log([("z", "2024-01-01", "refund", "brand-new", 3.0)])
    seqs = enc.transform(other, build_snapshot(other, "2024-01-03", 10))
    assert seqs.lengths.tolist() == [1]
    assert seqs.cat[0, :2].tolist() == [OOV, OOV]
    assert np.isfinite(seqs.num).all()


def test_encoder_state_is_json_and_round_trips(loaded):
    log = EventLog.from_frame(loaded.frame)
    snap = build_snapshot(log, "2024-05-01", 30)
    enc = SequenceEncoder(EventSchema.from_config(SCHEMA_CFG), max_len=16, min_count=2).fit(log, snap)
    state = json.loads(json.dumps(enc.state()))
    again = SequenceEncoder.from_state(state, EventSchema.from_config(SCHEMA_CFG))
    a, b = enc.transform(log, snap), again.transform(log, snap)
    assert np.array_equal(a.cat, b.cat) and np.array_equal(a.num, b.num)
    assert np.array_equal(a.offsets, b.offsets)


def test_subset_keeps_rows_and_their_events(loaded):
    log = EventLog.from_frame(loaded.frame)
    snap = build_snapshot(log, "2024-05-01", 30)
    seqs = SequenceEncoder(EventSchema.from_config(SCHEMA_CFG)).fit(log, snap).transform(log, snap)
    rows = np.array([3, 0, 5])
    sub = seqs.subset(rows)
    for k, r in enumerate(rows):
        assert np.array_equal(
            sub.cat[sub.offsets[k] : sub.offsets[k + 1]], seqs.cat[seqs.offsets[r] : seqs.offsets[r + 1]]
        )
    assert sub.customer_id.tolist() == seqs.customer_id[rows].tolist()


def test_chunked_transform_equals_one_pass(loaded):
    log = EventLog.from_frame(loaded.frame)
    snap = build_snapshot(log, "2024-05-01", 30)
    enc = SequenceEncoder(EventSchema.from_config(SCHEMA_CFG), max_len=12).fit(log, snap)
    whole, chunked = enc.transform(log, snap), enc.transform(log, snap, chunk_events=7)
    assert np.array_equal(whole.cat, chunked.cat) and np.array_equal(whole.num, chunked.num)
    assert np.array_equal(whole.offsets, chunked.offsets)


VISIT_CFG = {**SCHEMA_CFG, "categorical": ["kind", "cat"], "visits": {"key": "order"}}


def _order_log(rows) -> EventLog:
    frame = pd.DataFrame(rows, columns=["cid", "ts", "order", "kind", "cat", "amount"])
    loaded = load_events("e.csv", EventSchema.from_config(VISIT_CFG), frame=frame, end_date="2030-01-01")
    return EventLog.from_frame(loaded.frame)


def test_visits_turn_order_lines_into_one_step_each_by_hand():
    """Lines of one order are one step: amounts summed, the most frequent category, the line count; the
    gap is between visits; a new day or a new order starts a visit; max_len counts visits."""
    log = _order_log(
        [
            ("a", "2024-01-01 09:00", "o1", "purchase", "x", 10.0),
            ("a", "2024-01-01 09:00", "o1", "purchase", "y", 5.0),
            ("a", "2024-01-01 09:00", "o1", "purchase", "y", 1.0),
            ("a", "2024-01-01 09:00", "o2", "purchase", "x", 2.0),  # same time, another order
            ("a", "2024-01-03 10:00", "o3", "purchase", "x", 4.0),
            ("a", "2024-01-04 23:59", "o4", "purchase", "z", 3.0),
            ("a", "2024-01-05 00:01", "o4", "purchase", "z", 3.0),  # the same order after midnight: split
            ("b", "2024-01-02 12:00", "p1", "purchase", "x", 7.0),
        ]
    )
    snap = build_snapshot(log, "2024-01-06", horizon_days=30)
    spec = VisitSpec.from_config(VISIT_CFG["visits"])
    enc = SequenceEncoder(EventSchema.from_config(VISIT_CFG), max_len=4, visits=spec).fit(log, snap)
    seqs = enc.transform(log, snap)
    assert enc.num_names == ["amount", "visit_lines", "gap_days", "age_days"]
    assert seqs.lengths.tolist() == [4, 1]  # a has 5 visits before the cutoff, keeps its last 4
    steps = kept_steps(log, snap, enc.window)
    assert (steps.stop - steps.first).tolist() == [1, 1, 1, 1, 1]  # o2, o3, o4 (Thursday), o4 (Friday), p1
    raw = kept_steps(log, snap, enc.window)
    everything = SequenceEncoder(EventSchema.from_config(VISIT_CFG), max_len=10, visits=spec).fit(log, snap)
    full = kept_steps(log, snap, everything.window)
    assert (full.stop - full.first).tolist()[:2] == [3, 1]  # o1's three lines, then o2's one
    values = everything._reduced(log, full.first, full.stop)
    assert values[0].tolist()[:3] == [16.0, 2.0, 4.0] and values[1].tolist()[:3] == [3.0, 1.0, 1.0]
    cat = everything.transform(log, snap).cat[:, everything.cat_names.index("cat")]
    vocab = everything.vocabs["cat"]
    assert vocab.tokens[cat[0]] == "y"  # o1: y twice, x once
    assert full.gap_days.tolist()[:3] == [0.0, 0.0, pytest.approx(2 + 1 / 24)]
    assert raw.gap_days.tolist()[0] == 0.0  # o2 came at the same time as o1


def test_max_span_days_keeps_only_recent_steps_and_at_least_the_last():
    log = _log(
        [
            ("a", "2024-01-01 09:00", "purchase", "x", 1.0),
            ("a", "2024-02-20 09:00", "purchase", "x", 2.0),
            ("a", "2024-02-25 09:00", "purchase", "x", 3.0),
            ("b", "2023-06-01 09:00", "purchase", "x", 4.0),  # nothing within the span: keeps its last
        ]
    )
    snap = build_snapshot(log, "2024-03-01", horizon_days=30)
    enc = SequenceEncoder(EventSchema.from_config(SCHEMA_CFG), max_len=10, max_span_days=30).fit(log, snap)
    assert enc.transform(log, snap).lengths.tolist() == [2, 1]
    state = json.loads(json.dumps(enc.state()))
    again = SequenceEncoder.from_state(state, EventSchema.from_config(SCHEMA_CFG))
    assert again.max_span_days == 30 and again.transform(log, snap).lengths.tolist() == [2, 1]


class _ShowFrame:
    """An indicator catalogue stand-in: `owners` hands back the event rows it was shown."""

    def event_columns(self) -> list[str]:
        return ["order", TIMESTAMP]  # what the test reads of the rows shown

    def event_owner(self, frame: pd.DataFrame, fields: list[str]) -> pd.DataFrame:
        return frame

    def name_owner(self, names: list[str], kind: str) -> list[str]:
        return names

    names: tuple[str, ...] = ()


@pytest.mark.parametrize(
    ("max_len", "max_span_days", "orders"),
    [(2, None, ["o4", "o4", "p1"]), (10, 3, ["o3", "o4", "o4", "p1"])],
)
def test_insights_owners_read_the_events_the_encoder_keeps(max_len, max_span_days, orders):
    """Driver owners (explain/insights.py) and the encoder follow one history-window rule: with visits on,
    for a customer with more visits than max_len, or a span that cuts them, owner row k is encoded step k."""
    log = _order_log(
        [
            ("a", "2024-01-01 09:00", "o1", "purchase", "x", 10.0),
            ("a", "2024-01-01 09:00", "o1", "purchase", "y", 5.0),
            ("a", "2024-01-01 09:00", "o2", "purchase", "x", 2.0),
            ("a", "2024-01-03 10:00", "o3", "purchase", "x", 4.0),
            ("a", "2024-01-04 23:59", "o4", "purchase", "z", 3.0),
            ("a", "2024-01-05 00:01", "o4", "purchase", "z", 3.0),
            ("a", "2024-01-07 08:00", "o5", "purchase", "z", 1.0),  # after the cutoff: never kept
            ("b", "2024-01-02 12:00", "p1", "purchase", "x", 7.0),  # outside any span: kept as the last
        ]
    )
    snap = build_snapshot(log, "2024-01-06", horizon_days=30)
    spec = VisitSpec.from_config(VISIT_CFG["visits"])
    enc = SequenceEncoder(
        EventSchema.from_config(VISIT_CFG), max_len=max_len, visits=spec, max_span_days=max_span_days
    ).fit(log, snap)
    seqs = enc.transform(log, snap)
    frame = owners(_ShowFrame(), log, snap, enc, []).event
    assert len(frame) == int(seqs.offsets[-1]) == len(orders)
    assert frame["order"].astype(str).tolist() == orders
    when = pd.DatetimeIndex(frame[TIMESTAMP])
    day_of_week, hour = (seqs.cat[:, enc.cat_names.index(name)] for name in ("day_of_week", "hour"))
    assert day_of_week.tolist() == (when.day_of_week + 1).tolist()  # Monday = 1
    assert hour.tolist() == (when.hour + 1).tolist()


def test_standardising_a_column_at_a_time_is_the_textbook_formula_and_leaves_its_inputs(caplog):
    """NumericStats.transform: fill, signed log1p, (x - mean) / std, missing → 0, ±Z_LIMIT clipped with a
    warning, float32; written into `out` when given; the caller's columns (views included) unchanged."""
    rng = np.random.default_rng(0)
    base = rng.normal(3, 2, (1000, 3))
    base[::7, 0], base[::5, 1], base[700, 2] = np.nan, np.nan, 1e300  # the outlier after the fitted rows
    columns = [base[:, 0], base[:, 1], np.ascontiguousarray(base[:, 2])]  # strided views and a copy
    before = [c.copy() for c in columns]
    fields = [
        NumericField("a", fill=-1.0, transform="none"),
        NumericField("b", transform="log1p"),
        NumericField("c", transform="none"),
    ]
    stats = NumericStats(fields).fit([c[:500] for c in columns])
    with caplog.at_level("WARNING"):
        got = stats.transform(columns)
    raw = np.column_stack(
        [np.where(np.isnan(base[:, 0]), -1.0, base[:, 0]), signed_log1p(base[:, 1]), base[:, 2]]
    )
    z = (raw - stats.mean) / stats.std
    expected = np.clip(np.where(np.isnan(z), 0.0, z), -Z_LIMIT, Z_LIMIT).astype(np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert np.isnan(expected).sum() == 0 and (got[:, 1] == 0).sum() == 200 and got[700, 2] == Z_LIMIT
    assert "clipped to ±10000 standard deviations: 1 value(s) of c" in caplog.text
    for c, b in zip(columns, before, strict=True):
        np.testing.assert_array_equal(c, b)
    into = np.full((1010, 3), 7.0, dtype=np.float32)
    stats.transform(columns, out=into[5:1005])
    assert np.array_equal(into[5:1005], expected) and (into[:5] == 7).all() and (into[1005:] == 7).all()
