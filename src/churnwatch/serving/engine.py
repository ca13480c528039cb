"""Scoring a batch of requests as one table: what the micro-batcher's worker runs.

Requests that share `as_of`, options and columns, and no customer, are concatenated, validated once and
scored in one pass; each request then gets its own customers back, ranked among themselves. Every answer is
what scoring that request alone gives: a request some of whose rows validation dropped is validated again
alone, so its report (or its error) is its own, and a request that fails fails alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd
import pyarrow as pa

from churnwatch.data.schema import CUSTOMER_ID
from churnwatch.data.validation import ValidationReport
from churnwatch.errors import ConfigError, DataValidationError
from churnwatch.scoring.inputs import InputReader
from churnwatch.scoring.ranking import Ranker, check_each_once
from churnwatch.scoring.scorer import Scorer
from churnwatch.serving.requests import CUSTOMERS, EVENTS, ScoreRequest, Table, as_frame, n_rows

log = logging.getLogger(__name__)
USER_ERRORS = (DataValidationError, ConfigError)
"""What validation raises about a request's content: a 422, never a 500."""


@dataclass(frozen=True)
class ScoreResult:
    """One request's answer: its customers ranked among themselves, and what validation did to its rows."""

    scores: pd.DataFrame
    events: ValidationReport
    customers: ValidationReport | None
    as_of: pd.Timestamp
    json_rows: str
    """`scores` as a JSON array of row objects (`JSON_ROWS`), written once for the whole batch."""
    warnings: tuple[str, ...] = ()


Outcome = ScoreResult | Exception
JSON_ROWS = {"orient": "records", "date_format": "iso", "date_unit": "s", "force_ascii": False}
"""How the scores are written as JSON (pandas' `to_json`)."""


def score_batch(scorer: Scorer, ranker: Ranker, requests: Sequence[ScoreRequest]) -> list[Outcome]:
    """Each request's result or error, in order; one group's failure never reaches another group."""
    out: list[Outcome | None] = [None] * len(requests)
    for group in plan(requests):
        try:
            _score_group(scorer, ranker, requests, group, out)
        except Exception as exc:  # noqa: BLE001 (the app logs it and answers 500 in one line)
            for i in group:
                out[i] = out[i] or exc
    return out  # type: ignore[return-value]


def plan(requests: Sequence[ScoreRequest]) -> list[list[int]]:
    """Groups of requests scored as one table: equal `key`, and no customer in two of them (two requests
    about one customer are two different histories)."""
    groups: list[tuple[tuple, set[str], list[int]]] = []
    for i, request in enumerate(requests):
        for key, ids, members in groups:
            if key == request.key and ids.isdisjoint(request.ids):
                ids |= request.ids
                members.append(i)
                break
        else:
            groups.append((request.key, set(request.ids), [i]))
    return [members for _, _, members in groups]


def _score_group(
    scorer: Scorer,
    ranker: Ranker,
    requests: Sequence[ScoreRequest],
    group: list[int],
    out: list[Outcome | None],
) -> None:
    members = [requests[i] for i in group]
    reader = scorer.reader
    events = _concat([r.events for r in members])
    with_customers = [r.customers for r in members if r.customers is not None]
    customers = _concat(with_customers) if with_customers and reader.uses_customers else None
    try:
        # as a part: no log line per batch (each answer carries its report), and no valid row left is not
        # an error of the batch: the requests it concerns are validated alone below
        loaded = reader.read_events(EVENTS, events, part=True)
        attributes, customer_report = _attributes(reader, customers)
    except USER_ERRORS as exc:
        if len(group) == 1:
            out[group[0]] = exc
            return
        passed = [i for i in group if _alone(scorer, requests[i], i, out) is not None]
        # each passes alone but not together (a share-of-rows rule, say): score them one by one
        for part in [[i] for i in passed] if len(passed) == len(group) else [passed] if passed else []:
            _score_group(scorer, ranker, requests, part, out)
        return
    event_kept = _kept(loaded.frame[CUSTOMER_ID])
    # customer rows dropped: whose they were is not worth finding out (rare); each sender is checked alone
    customers_lost = customer_report is not None and bool(customer_report.dropped)
    reports = {}
    for i, request in zip(group, members, strict=True):
        whole = _count(event_kept, request.ids) == n_rows(request.events) and not (
            customers_lost and request.customers is not None
        )
        if whole:  # nothing of this request was dropped: its report is all rows read and kept
            attributes_sent = request.customers if reader.uses_customers else None
            reports[i] = (_all_kept(EVENTS, request.events), _all_kept(CUSTOMERS, attributes_sent))
        else:  # what was dropped, and why, as if it came alone (or its error)
            found = _alone(scorer, request, i, out)
            if found is not None:
                reports[i] = found
    inp = reader.prepare(loaded, attributes, members[0].as_of)
    # drivers.tiers: only the customers the request's tiers put there are explained, after the scoring
    explain_later = scorer.explain_tiers and members[0].drivers is not False
    scored = scorer.score_input(inp, progress=False, drivers=False if explain_later else members[0].drivers)
    if explain_later:
        scored = scorer.explain_tiers_of(scored, inp, max(1, len(scored)), ranker)
    # which request each scored row answers (-1: one that failed alone)
    answering = list(reports)
    ids = [list(requests[i].ids) for i in answering]
    found = pd.Index(scored[CUSTOMER_ID]).get_indexer(list(chain.from_iterable(ids)))
    owner = np.full(len(scored), -1, dtype=np.int64)
    owner[found] = np.repeat(answering, [len(x) for x in ids])
    answered = owner >= 0
    if not answered.all():
        scored, owner = scored[answered].reset_index(drop=True), owner[answered]
    # each request ranked on its own, in one pass (the cost of ranking is mostly fixed)
    ranked, bounds = ranker.rank_within(scored, owner)
    check_each_once(ranked, pa.array(list(chain.from_iterable(ids))))
    # one JSON line per row for the whole batch: writing each request's few rows costs mostly fixed time
    # (strings escape "\n" itself; split on nothing else: `splitlines` would cut at U+2028 in a text)
    lines = ranked.to_json(lines=True, **JSON_ROWS).rstrip("\n").split("\n")
    for j, i in enumerate(np.unique(owner)):
        rows = ranked.iloc[bounds[j] : bounds[j + 1]]
        rows.index = pd.RangeIndex(len(rows))
        if len(rows) != len(requests[i].ids):
            raise RuntimeError(f"scoring lost or duplicated customers of a request: {len(rows)} rows")
        event_report, customers_i = reports[i]
        out[i] = ScoreResult(
            rows,
            event_report,
            customers_i,
            members[0].as_of,
            "[" + ",".join(lines[bounds[j] : bounds[j + 1]]) + "]",
            _warnings(reader, requests[i]),
        )


def _alone(
    scorer: Scorer, request: ScoreRequest, i: int, out: list[Outcome | None]
) -> tuple[ValidationReport, ValidationReport | None] | None:
    """The request validated alone: its reports, or None with its error in `out`."""
    try:
        events = scorer.reader.read_events(EVENTS, as_frame(request.events), part=False).report
        attributes = as_frame(request.customers) if request.customers is not None else None
        customers = _attributes(scorer.reader, attributes)[1]
    except USER_ERRORS as exc:
        out[i] = exc
        return None
    return events, customers


def _attributes(
    reader: InputReader, customers: pd.DataFrame | None
) -> tuple[pd.DataFrame | None, ValidationReport | None]:
    """The attributes the model uses, validated; none sent: scored as unknown (`ScoreResult.warnings`)."""
    if customers is None or not reader.uses_customers:
        return None, None
    return reader.read_customers(CUSTOMERS, customers)


def _concat(tables: list[Table]) -> pd.DataFrame:
    """The requests' tables as one (their columns are the same: `ScoreRequest.key`). Arrow tables are
    joined in Arrow, a column's types unified as pandas would type the values together (null and int64
    widen, to string and double), and converted once, in one piece (a many-chunk column slows every step
    after); tables that do not unify (text and numbers), as frames."""
    if all(isinstance(t, pa.Table) for t in tables):
        names = tables[0].column_names
        with contextlib.suppress(pa.ArrowException):
            joined = pa.concat_tables([t.select(names) for t in tables], promote_options="permissive")
            return joined.combine_chunks().to_pandas()
    frames = [as_frame(t) for t in tables]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _kept(ids: pd.Series) -> dict[str, int]:
    """Rows per (canonical) customer id (the column is categorical, its categories the canonical text)."""
    counts = np.bincount(ids.cat.codes.to_numpy(), minlength=len(ids.cat.categories))
    present = np.flatnonzero(counts)
    return dict(zip(ids.cat.categories[present].tolist(), counts[present].tolist(), strict=True))


def _count(kept: dict[str, int], ids: frozenset[str]) -> int:
    return sum(kept.get(c, 0) for c in ids)


def _warnings(reader: InputReader, request: ScoreRequest) -> tuple[str, ...]:
    if reader.uses_customers and request.customers is None:
        columns = list(reader.customer_schema.columns)
        return (f"the model uses customer attributes {columns} and the request sent none: scored as unknown",)
    if not reader.uses_customers and request.customers is not None:
        return ("the model uses no customer attributes: the request's customers were not read",)
    return ()


def _all_kept(path: str, table: Table | None) -> ValidationReport | None:
    if table is None:
        return None
    return ValidationReport(path, rows_read=n_rows(table), rows_kept=n_rows(table))
